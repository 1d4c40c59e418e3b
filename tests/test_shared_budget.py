"""The API budget every instance shares (state.budget.SharedRateBudget): instances (budgets over
one row store, as processes over one Table) lease blocks of call starts and in-flight places and
spend them without a Table round trip, together keep the window and the in-flight limit,
background work gets only its share and live calls the rest, unused places and starts go back,
and a dead instance's come back after their lease."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from azure.data.tables import TableServiceClient

from sync_core.http.ratebudget import RateBudget, RateLimit, background_work
from sync_core.state._memory import MemoryRows
from sync_core.state._rows import Rows
from sync_core.state._table import AzureRows
from sync_core.state.budget import CLOCK_SKEW, LINGER, VALIDITY, SharedRateBudget

LIMIT = RateLimit(max_calls=10, per_seconds=20, max_concurrent=4)  # blocks of one start, no reserve
WIDE = RateLimit(max_calls=100, per_seconds=20, max_concurrent=10)  # blocks of ten starts, one place kept


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


class Stuck(Exception):
    pass


def stuck(seconds: float) -> None:
    raise Stuck


def instances(
    clock: Clock,
    n: int = 2,
    *,
    limit: RateLimit = LIMIT,
    share: float = 1.0,
    sleep: object = None,
    lease_seconds: float = 320.0,
) -> list[SharedRateBudget]:
    """``n`` budgets over one row store, their renewal left to the test (``_tend``)."""
    rows = MemoryRows()
    return [
        SharedRateBudget(
            rows,
            "syncstate",
            "marketo",
            limit,
            background_share=share,
            sleep=sleep or clock.sleep,
            clock=clock,
            lease_seconds=lease_seconds,
            renew_in_background=False,
        )
        for _ in range(n)
    ]


def table_ops(budget: SharedRateBudget) -> int:
    return budget.counters.reads + budget.counters.writes


def counted(budget: SharedRateBudget) -> tuple[int, int]:
    """(starts counted in the window, places leased) as the row says now."""
    budget._cached = None
    state, _ = budget._current()
    grants, holders = budget._counted(state, budget._clock())
    return sum(entry[0] for entry in grants.values()), sum(entry[0] for entry in holders.values())


def test_two_instances_together_start_no_more_calls_than_the_window_allows() -> None:
    clock = Clock()
    first, second = instances(clock)
    starts: list[float] = []
    for i in range(35):
        with (first if i % 2 else second).slot():
            starts.append(clock.now)
            clock.now += 0.1
    for start in starts:  # every sliding window of 20 s holds at most 10 starts
        assert sum(1 for other in starts if start <= other < start + LIMIT.per_seconds) <= LIMIT.max_calls
    assert clock.slept > 0  # the 11th call waited


def test_a_live_call_spends_from_its_leased_block_without_a_table_round_trip() -> None:
    clock = Clock()
    [budget] = instances(clock, 1, limit=WIDE)
    with budget.slot():  # the first call leases a block: one read (no row yet) and one write
        pass
    assert (budget.counters.reads, budget.counters.writes) == (1, 1)
    for _ in range(9):  # the other nine starts of the block, on the place it keeps
        before = table_ops(budget)
        with budget.slot():
            clock.now += 0.1
        assert table_ops(budget) == before
    for _ in range(40):  # the renewal (the budget's own thread in production) runs ahead of the calls
        budget._tend()
        before = table_ops(budget)
        with budget.slot():
            clock.now += 0.1
        assert table_ops(budget) == before
    assert budget.counters.writes <= 1 + 40 // 5  # a write per half block at most
    assert budget.counters.reads == 1  # its own last write is the current version


def test_in_flight_places_are_shared_between_instances_and_an_idle_one_goes_back() -> None:
    clock = Clock()
    first, second = instances(clock, sleep=stuck)
    with ExitStack() as held:
        for _ in range(LIMIT.max_concurrent):
            held.enter_context(first.slot())
        with pytest.raises(Stuck), second.slot():  # the fifth place is nowhere: it waits
            pass
    assert counted(first)[1] == LIMIT.max_concurrent  # given back locally, still leased: a call would reuse them
    clock.now += LINGER
    first._tend()  # unused for LINGER: back to the row
    assert counted(first)[1] == 0
    with second.slot():  # there is room again
        pass


def test_background_work_gets_only_its_share_of_the_places() -> None:
    clock = Clock()
    [budget] = instances(clock, 1, limit=WIDE, share=0.5, sleep=stuck)
    with ExitStack() as held:
        with background_work():
            for _ in range(5):  # half of 10 in flight
                held.enter_context(budget.slot())
            with pytest.raises(Stuck), budget.slot():
                pass
        for _ in range(5):  # the cycle and the webhook still find the other half
            held.enter_context(budget.slot())


def calls_until_stuck(budget: SharedRateBudget) -> int:
    calls = 0
    try:
        while calls <= WIDE.max_calls:
            with budget.slot():
                calls += 1
    except Stuck:
        return calls
    raise AssertionError("more calls than the whole window allows")


def test_background_starts_are_paced_and_live_calls_find_the_rest_of_the_window() -> None:
    clock = Clock()
    bulk, live = instances(clock, limit=WIDE, share=0.5, sleep=stuck)
    with background_work():
        assert calls_until_stuck(bulk) == 50 // 4  # a quarter of its share in a quarter window
    assert calls_until_stuck(live) == WIDE.max_calls - 50 // 4  # live: the rest of the window at once


def test_the_background_pace_opens_again_a_quarter_window_after_its_grants_were_issued() -> None:
    clock = Clock()
    [budget] = instances(clock, 1, limit=WIDE, share=0.5, sleep=stuck)
    with background_work():
        assert calls_until_stuck(budget) == 50 // 4
        clock.now += WIDE.per_seconds / 4 + 0.01  # the pace counts grants by when they were issued
        with budget.slot():  # no skew, no validity on top: 25 calls per 20 s get through, not a third
            pass


def test_a_background_pool_without_a_place_takes_no_starts_from_the_pace() -> None:
    clock = Clock()
    holder, waiter = instances(clock, limit=WIDE, share=0.5, sleep=stuck)
    with background_work(), ExitStack() as held:
        for _ in range(5):  # every background place (half of 10), on one instance
            held.enter_context(holder.slot())
        granted = counted(holder)[0]
        with pytest.raises(Stuck), waiter.slot():  # no place for it: it waits
            pass
        assert counted(holder)[0] == granted  # and took no starts it could not spend


def test_background_work_spends_its_share_of_the_window_spread_over_it() -> None:
    clock = Clock()
    [budget] = instances(clock, 1, limit=WIDE, share=0.5)
    starts: list[float] = []
    with background_work():
        for _ in range(120):
            with budget.slot():
                starts.append(clock.now)
                clock.now += 0.05
            budget._tend()
    for start in starts:
        assert sum(1 for other in starts if start <= other < start + 20) <= 50  # its share of the window
        assert sum(1 for other in starts if start <= other < start + 5) <= 50 // 4  # a quarter per quarter
    assert len(starts) / (starts[-1] - starts[0]) >= 0.6 * 50 / WIDE.per_seconds  # not much below its share


def test_background_calls_stop_at_their_share_of_the_window() -> None:
    clock = Clock()
    budget = RateBudget(LIMIT, sleep=clock.sleep, clock=clock, background_share=0.5)
    with background_work():
        for _ in range(5):
            with budget.slot():
                pass
    assert clock.slept == 0
    for _ in range(5):  # foreground: the other half is free at once
        with budget.slot():
            pass
    assert clock.slept == 0
    with background_work(), budget.slot():
        pass
    assert clock.slept > 0


def test_a_dead_instances_places_come_back_after_their_lease() -> None:
    clock = Clock()
    dead, alive = instances(clock, lease_seconds=30)
    held = ExitStack()
    for _ in range(LIMIT.max_concurrent):
        held.enter_context(dead.slot())  # taken, never given back: the instance died mid-call
    with alive.slot():
        pass
    assert 30 <= clock.slept < 32


def test_a_spent_blocks_unused_starts_go_back_and_a_dead_instances_leave_with_the_window() -> None:
    clock = Clock()
    done, dead, other = instances(clock, 3, limit=WIDE)
    with done.slot():
        pass
    with dead.slot():
        pass
    assert counted(other)[0] == 20  # two blocks of ten, one start of each spent
    clock.now += VALIDITY  # past their time
    done._tend()  # lowered to the one start it spent
    assert counted(other)[0] == 11
    clock.now += WIDE.per_seconds + CLOCK_SKEW - VALIDITY  # the spent start has left the window
    assert counted(other)[0] == 10  # the dead instance's block counts until its last possible start has
    clock.now += VALIDITY
    assert counted(other)[0] == 0


def test_a_quiet_process_gives_its_unspent_starts_back_and_its_reserve_once_no_longer_busy() -> None:
    clock = Clock()
    budget, other = instances(clock, limit=WIDE)
    for _ in range(3):
        with budget.slot():
            pass
    assert counted(other) == (10, 1)  # a block of ten, the one place a busy live pool keeps
    clock.now += LINGER
    budget._tend()
    assert counted(other) == (3, 1)  # quiet: the seven unspent starts are back
    clock.now += VALIDITY
    budget._tend()
    assert counted(other) == (3, 0)  # no longer busy: the reserve too


def test_close_gives_every_unused_start_and_place_back() -> None:
    clock = Clock()
    budget, other = instances(clock, limit=WIDE)
    for _ in range(3):
        with budget.slot():
            pass
    assert counted(other) == (10, 1)
    budget.close()
    assert counted(other) == (3, 0)


@pytest.fixture(params=["memory", "azurite"])
def rows(request: pytest.FixtureRequest) -> Iterator[Rows]:
    if request.param == "memory":
        yield MemoryRows()
    else:
        connection = request.getfixturevalue("azurite_connection_string")
        yield AzureRows(TableServiceClient.from_connection_string(connection))


class ThreadClock:
    """``time.time``, remembering per thread the last reading: inside ``slot()``, the one its start was taken at."""

    def __init__(self) -> None:
        self._last = threading.local()

    def __call__(self) -> float:
        self._last.value = time.time()
        return float(self._last.value)

    def last(self) -> float:
        return float(self._last.value)


@pytest.mark.azurite
def test_threads_of_three_instances_keep_both_limits_and_background_its_share(rows: Rows, table_prefix: str) -> None:
    """Real time, real renewal threads: 3 instances, 4 threads each (half of them background) spend
    48 calls under a limit of 40 starts per 4 s and 3 in flight; each start (as the budget took it) is recorded."""
    limit = RateLimit(max_calls=40, per_seconds=4, max_concurrent=3)
    clock = ThreadClock()
    budgets = [
        SharedRateBudget(rows, table_prefix, "marketo", limit, background_share=0.5, clock=clock) for _ in range(3)
    ]
    lock = threading.Lock()
    starts: list[tuple[float, bool]] = []
    flight = {False: 0, True: 0}
    peak = {False: 0, True: 0, "all": 0}

    def calls(budget: SharedRateBudget, background: bool) -> None:
        with ExitStack() as work:
            if background:
                work.enter_context(background_work())
            for _ in range(4):
                with budget.slot():
                    started = clock.last()
                    with lock:
                        starts.append((started, background))
                        flight[background] += 1
                        peak[background] = max(peak[background], flight[background])
                        peak["all"] = max(peak["all"], flight[False] + flight[True])
                    time.sleep(0.01)
                    with lock:
                        flight[background] -= 1

    threads = [threading.Thread(target=calls, args=(b, i % 2 == 0)) for i, b in enumerate(budgets * 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for budget in budgets:
        budget.close()
    assert len(starts) == 48
    assert peak["all"] <= limit.max_concurrent
    assert peak[True] <= 1  # half of 3, rounded down
    for at, _ in starts:  # every sliding window of 4 s: at most 40 starts, 20 of them background
        window = [bg for other, bg in starts if at <= other < at + limit.per_seconds]
        assert len(window) <= limit.max_calls
        assert sum(window) <= limit.max_calls // 2
    assert max(at for at, _ in starts) - min(at for at, _ in starts) > limit.per_seconds  # the limit did bind
