"""A backlog worked off by cycles cut short by their time budget (issue 17), end to end: both
simulators over real HTTP, the state store on Azurite, the real wiring.

The engine's clock advances one second per API call made (``CallClock``), so the budget is spent
by the work done and the ticks cut at the same points on any machine; everything else is the
production path. The Dataverse delta is read in pages of ``PAGE`` rows so that a tick can stop
inside a table. What the ticks must do together is what one uninterrupted cycle does: every
edit reaches the other side (nothing lost), each record is written once (nothing twice).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sandbox import DataverseOptions, MarketoOptions
from sync_core.core.models import RunReport
from sync_core.cycle import carry, engine
from sync_core.cycle.engine import CycleOptions, SyncEngine
from sync_core.http.counters import ApiCounters
from sync_core.wiring.services import services_for
from tests.e2e.conftest import World

N = 1000  # leads and contacts each: 2,000 changes (1,000 each way)
PAGE = 200  # rows per Dataverse delta page
BUDGET = timedelta(seconds=8)  # 8 API calls' worth (CallClock)
MAX_TICKS = 80


class CallClock:
    """Time that moves one second per API call made (and a minute per tick, as the timer would).
    It starts two hours back so that it stays behind the simulators' own clock (Marketo's first
    paging token is taken for the cycle's start: a start ahead of the edits would skip them)."""

    def __init__(self, counters: ApiCounters) -> None:
        self._counters = counters
        self._base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)

    def tick(self) -> None:
        self._base += timedelta(minutes=1)

    def __call__(self) -> datetime:
        calls = sum(service["calls"] for service in self._counters.snapshot().values())
        return self._base + timedelta(seconds=calls)


def edit_backlog(world: World) -> dict[str, dict[str, str]]:
    """A quarter of the persons edited in Marketo (title), another quarter of the records in Dynamics
    (jobtitle); the values each record must end with."""
    marketo, dataverse = world.marketo, world.dataverse
    tag = uuid.uuid4().hex[:6]
    person_of = {}
    for lead_id in marketo.db.lead_ids():
        person = marketo.get_lead(lead_id)
        if person and person.get("microsoftId"):
            person_of[person["microsoftId"]] = lead_id
    expected: dict[str, dict[str, str]] = {"leads": {}, "contacts": {}}
    half = N // 2
    for entity_set, key in (("leads", "leadid"), ("contacts", "contactid")):
        ids = [row[key] for row in dataverse.rows(entity_set)]
        assert len(ids) == N
        for record_id in ids[:half]:
            title = f"m-{tag}-{record_id[:8]}"
            marketo.update_lead(person_of[record_id], {"title": title})
            expected[entity_set][record_id] = title
        for record_id in ids[half:]:
            title = f"d-{tag}-{record_id[:8]}"
            dataverse.update(entity_set, record_id, {"jobtitle": title})
            expected[entity_set][record_id] = title
    return expected


@pytest.mark.timeout(900)
def test_a_backlog_over_successive_cut_ticks_ends_as_one_uninterrupted_cycle(
    world_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    world: World = world_factory(
        marketo=MarketoOptions(limits=False, seed_leads=N),
        dataverse=DataverseOptions(limits=False, seed_leads=N, seed_contacts=N),
        DATAVERSE_BATCH_SIZE="100",
    )
    monkeypatch.setattr(engine, "DATAVERSE_PAGE", PAGE)
    services = services_for(world.settings)
    clock = CallClock(services.counters)

    def cycle(budget: timedelta | None) -> RunReport:
        clock.tick()
        options = replace(CycleOptions.from_settings(services.settings), budget=budget)
        return SyncEngine(
            marketo=services.marketo,
            dataverse=services.dataverse,
            store=services.store,
            field_map=services.field_map,
            counters=services.counters,
            options=options,
            clock=clock,
        ).run_cycle()

    for _ in range(6):  # link the seeded records, read the echoes back
        settled = cycle(None)
        assert settled.outcome == "ok"
        if not (settled.report.written.marketo or settled.report.written.dynamics or settled.report.pulled.marketo):
            break
    expected = edit_backlog(world)

    reports: list[RunReport] = []
    while len(reports) < MAX_TICKS:
        reports.append(cycle(BUDGET))
        assert reports[-1].outcome in ("ok", "partial"), reports[-1].report.error
        if reports[-1].report.left is None:
            break
    cut = [r.report.left for r in reports if r.report.left is not None]
    assert reports[-1].outcome == "ok"
    assert len(cut) >= 3, [left.step for left in cut]
    assert any(left.step == "dataverse leads" or left.step == "dataverse contacts" for left in cut)
    assert any(left.persons for left in cut)
    assert world.store.get_cursor(carry.CARRY) is None

    # Nothing lost: every record holds its edit on both sides.
    persons = {}
    for lead_id in world.marketo.db.lead_ids():
        person = world.marketo.get_lead(lead_id)
        if person and person.get("microsoftId"):
            persons[person["microsoftId"]] = person
    for entity_set, titles in expected.items():
        for record_id, title in titles.items():
            row = world.dataverse.get(entity_set, record_id)
            assert row is not None
            assert (row["jobtitle"], persons[record_id]["title"]) == (title, title), (entity_set, record_id)
    # Nothing twice: each edit written once to the other side, over all the ticks.
    written_dynamics = sum(r.report.written.dynamics or 0 for r in reports)
    written_marketo = sum(r.report.written.marketo or 0 for r in reports)
    assert (written_dynamics, written_marketo) == (N, N)
    assert sum(r.report.failures or 0 for r in reports) == 0
    # And the tick after has nothing left to write.
    after = cycle(BUDGET)
    assert (after.outcome, after.report.written.marketo, after.report.written.dynamics) == ("ok", 0, 0)
