"""The API budget every instance shares (state.budget.SharedRateBudget): two "instances" (two
budgets over one row store, as two processes over one Table) together keep the window and the
in-flight limit, background work gets only its share, and a dead instance's place comes back."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from sync_core.http.ratebudget import RateBudget, RateLimit, background_work
from sync_core.state._memory import MemoryRows
from sync_core.state.budget import SharedRateBudget

LIMIT = RateLimit(max_calls=10, per_seconds=20, max_concurrent=4)


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


def instances(clock: Clock, n: int = 2, *, share: float = 1.0, sleep: object = None) -> list[SharedRateBudget]:
    rows = MemoryRows()
    return [
        SharedRateBudget(
            rows, "syncstate", "marketo", LIMIT, background_share=share, sleep=sleep or clock.sleep, clock=clock
        )
        for _ in range(n)
    ]


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


def test_in_flight_places_are_shared_between_instances() -> None:
    clock = Clock()

    def stuck(seconds: float) -> None:
        raise Stuck

    first, second = instances(clock, sleep=stuck)
    with ExitStack() as held:
        for _ in range(LIMIT.max_concurrent):
            held.enter_context(first.slot())
        with pytest.raises(Stuck), second.slot():  # the fifth place is nowhere: it waits
            pass
    with second.slot():  # given back: there is room again
        pass


def test_background_work_gets_only_its_share_of_each_limit() -> None:
    clock = Clock()

    def stuck(seconds: float) -> None:
        raise Stuck

    [budget] = instances(clock, 1, share=0.5, sleep=stuck)
    with ExitStack() as held:
        with background_work():
            for _ in range(2):  # half of 4 in flight
                held.enter_context(budget.slot())
            with pytest.raises(Stuck), budget.slot():
                pass
        held.enter_context(budget.slot())  # the cycle and the webhook still find a place
        held.enter_context(budget.slot())


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


def test_a_dead_instances_place_comes_back_after_its_lease() -> None:
    clock = Clock()
    rows = MemoryRows()
    dead = SharedRateBudget(rows, "syncstate", "marketo", LIMIT, sleep=clock.sleep, clock=clock, lease_seconds=30)
    alive = SharedRateBudget(rows, "syncstate", "marketo", LIMIT, sleep=clock.sleep, clock=clock, lease_seconds=30)
    for _ in range(LIMIT.max_concurrent):
        dead._acquire(f"lost-{_}", LIMIT)  # taken, never given back: the instance died mid-call
    with alive.slot():
        pass
    assert 30 <= clock.slept < 32


def test_one_call_costs_about_two_table_writes_when_alone() -> None:
    clock = Clock()
    [budget] = instances(clock, 1)
    for _ in range(5):
        with budget.slot():
            clock.now += 0.5
    counters = budget.counters
    assert counters.writes == 10  # a replace to take the place, one to give it back
    assert counters.reads <= 1  # only the first look: afterwards its own last write is current


def test_a_place_is_given_back_even_when_the_cached_row_predates_it() -> None:
    clock = Clock()
    [budget, other] = instances(clock)
    with budget.slot():
        pass
    older = budget._cached  # a version without the lease below
    budget._acquire("taken", LIMIT)
    # A read that raced this process's own write sets the cache late, to a version before the lease.
    budget._cached = older
    budget._release("taken")
    (_, flight), _ = other._current(fresh=True)
    assert "taken" not in flight
