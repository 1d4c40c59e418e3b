"""Live first in a process (http.ratebudget.live_work / yield_to_live): while a webhook call runs,
background work (a backfill's chunks) waits at its next API call or Table operation, for a bounded
time; live work never waits, and the shared budget's own Table writes never do.

A gate whose clock raises shows that a caller *would* wait (waiting reads the clock first), so
nothing here depends on timing."""

from __future__ import annotations

import threading

import pytest
from azure.data.tables import TableServiceClient

from sync_core.http import ratebudget
from sync_core.http.ratebudget import LiveFirst, RateBudget, RateLimit, background_work, live_work, yield_to_live
from sync_core.state._memory import MemoryRows
from sync_core.state._table import TableStateStore
from sync_core.state.budget import SharedRateBudget
from sync_core.webhook import handler

LIMIT = RateLimit(max_calls=10, per_seconds=20, max_concurrent=4)


class Waited(Exception):
    """A caller began to wait for live work."""


def waits(_: object = None) -> float:
    raise Waited


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> LiveFirst:
    """The process's gate, replaced by one on which any wait raises ``Waited``."""
    gate = LiveFirst(clock=waits)
    monkeypatch.setattr(ratebudget, "LIVE_FIRST", gate)
    return gate


def test_background_work_waits_while_live_work_runs(gate: LiveFirst) -> None:
    with live_work(), background_work(), pytest.raises(Waited):
        yield_to_live()


def test_live_work_never_waits(gate: LiveFirst) -> None:
    with live_work():
        yield_to_live()  # not background: returns at once


def test_background_work_goes_on_when_no_live_work_runs(gate: LiveFirst) -> None:
    with background_work():
        yield_to_live()


def test_background_work_goes_on_after_the_longest_wait() -> None:
    ticks = iter([0.0, 1.0])  # the wait starts at 0 s; at the next look max_wait (1 s) has passed
    gate = LiveFirst(max_wait=1.0, clock=lambda: next(ticks))
    with gate.live(), background_work():
        gate.yield_to_live()  # no ``wait`` past the deadline: it returns with live work still running
    assert gate.waiting == 0


def test_a_waiting_background_call_starts_when_the_live_work_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = LiveFirst(max_wait=600.0)
    monkeypatch.setattr(ratebudget, "LIVE_FIRST", gate)
    budget = RateBudget(LIMIT, sleep=waits, clock=lambda: 0.0)
    started = threading.Event()

    def background_call() -> None:
        with background_work(), budget.slot():
            started.set()

    with live_work():
        thread = threading.Thread(target=background_call)
        thread.start()
        while gate.waiting == 0 and thread.is_alive():
            threading.Event().wait(0.01)
        assert gate.waiting == 1
        assert not started.is_set()
    thread.join(timeout=60)
    assert started.is_set()


@pytest.mark.parametrize("shared", [False, True], ids=["per-process budget", "shared budget"])
def test_a_background_api_call_waits_for_live_work_and_a_live_one_does_not(gate: LiveFirst, shared: bool) -> None:
    budget = (
        SharedRateBudget(MemoryRows(), "state", "marketo", LIMIT, renew_in_background=False)
        if shared
        else RateBudget(LIMIT, sleep=waits, clock=lambda: 0.0)
    )
    with live_work():
        with budget.slot():
            pass
        with background_work(), pytest.raises(Waited), budget.slot():
            pass


def test_background_table_operations_wait_for_live_work(gate: LiveFirst) -> None:
    rows = MemoryRows()
    with live_work():
        assert rows.get_row("state", "p", "r") is None  # live: at once
        with background_work():
            for operation in (
                lambda: rows.get_row("state", "p", "r"),
                lambda: rows.insert_row("state", "p", "r", {"a": 1}),
                lambda: rows.query_rows("state", "p", ["r"]),
                lambda: list(rows.scan_rows("state", partition="p")),
                lambda: rows.transact("state", "p", []),
            ):
                with pytest.raises(Waited):
                    operation()


@pytest.mark.azurite
def test_the_shared_budgets_rows_never_wait(gate: LiveFirst, azurite_connection_string: str, table_prefix: str) -> None:
    """Its writes run under its locks, which a live call may need: they go on."""
    store = TableStateStore(TableServiceClient.from_connection_string(azurite_connection_string), prefix=table_prefix)
    rows = store.separate_rows()
    with live_work(), background_work():
        assert rows.get_row(store.tables.state, "budget", "marketo") is None


def test_a_webhook_call_is_live_work(gate: LiveFirst, monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(*args: object, **kwargs: object) -> handler.Answer:
        with background_work():
            yield_to_live()  # a chunk's call in the same process, while the webhook is being answered
        return handler.Answer(200, {"status": "created"})

    monkeypatch.setattr(handler, "_answer", answer)
    with pytest.raises(Waited):
        handler.handle_sync_person({}, body=b"{}", headers={})
