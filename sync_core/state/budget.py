"""An API call budget every instance shares (design §6), kept in one Table row per service.

Each Function instance used to keep its own ``http.ratebudget.RateBudget``, so N instances could
spend N times Marketo's 100 calls per 20 s. ``SharedRateBudget`` keeps the same two limits for
all of them in the row ``{prefix}state`` / PK ``budget`` / RK service:

- ``calls``: call starts per whole second of wall-clock time (``{second: count}``), a sliding
  window by buckets. A bucket counts until its *end* has left the window, so the count is never
  below the true one (the budget gives up at most one second of capacity, never exceeds).
- ``flight``: the calls in flight as leases (``{lease id: expires at}``); a lease whose instance
  died expires after ``lease_seconds`` (longer than any call's read timeout), so a crash costs a
  place for that long and never forever.

A call takes its place with one ETag-conditional replace of that row (read first only when the
last version this process saw is stale: a lost condition re-reads and tries again) and gives it
back with another; so a call costs about 2 Table transactions when one instance is busy and more
under contention (``tests/test_shared_budget.py`` counts the first; ``bench/bench_backfill_live.py``
measures live latency while a backfill contends). Background work takes only
``background_share`` of each limit (``http.ratebudget.limit_for``), so the cycle and the webhook
always find the rest. Instances' clocks must agree to within a second or so (Azure keeps them
NTP-synchronised). Nothing here knows what a call is.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sync_core.core.errors import StateConflictError
from sync_core.core.models import StoreCounters
from sync_core.http.ratebudget import RateLimit, is_background, limit_for
from sync_core.state._rows import Rows

BUDGET = "budget"
LEASE_SECONDS = 320.0  # longer than the longest read timeout of any call (Marketo's paging token, 310 s)
_POLL = 0.05  # seconds between looks when every place in flight is taken
_BACKGROUND_POLL = 0.25  # the same for background work: its waiters leave the row to live calls
_MAX_WAIT = 1.0
_RELEASE_TRIES = 20

_State = tuple[dict[int, int], dict[str, float]]


class SharedRateBudget:
    """A ``CallBudget`` whose window and in-flight count live in the state store (see module doc)."""

    def __init__(
        self,
        rows: Rows,
        table: str,
        service: str,
        limit: RateLimit,
        *,
        background_share: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.limit = limit
        self.background_share = background_share
        self._rows = rows
        self._table = table
        self._service = service
        self._sleep = sleep
        self._clock = clock
        self._lease_seconds = lease_seconds
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # this process's writes one at a time, the cache after each in order
        self._cached: tuple[_State, str] | None = None  # the last version this process read or wrote

    @property
    def counters(self) -> StoreCounters:
        """Table operations this budget has sent (its own, apart from the state store's)."""
        return self._rows.counters

    @contextmanager
    def slot(self) -> Iterator[None]:
        lease = uuid.uuid4().hex[:16]
        self._acquire(lease, limit_for(self.limit, self.background_share))
        try:
            yield
        finally:
            self._release(lease)

    # -- the row --------------------------------------------------------------------------------
    def _current(self, *, fresh: bool = False) -> tuple[_State, str | None]:
        with self._lock:
            cached = None if fresh else self._cached
        if cached is not None:
            return cached
        row = self._rows.get_row(self._table, BUDGET, self._service)
        if row is None:
            return ({}, {}), None
        calls = {int(second): int(count) for second, count in json.loads(row.props.get("calls") or "{}").items()}
        flight = {str(lease): float(until) for lease, until in json.loads(row.props.get("flight") or "{}").items()}
        state = (calls, flight)
        with self._lock:
            self._cached = (state, row.etag)
        return state, row.etag

    def _write(self, state: _State, etag: str | None) -> bool:
        calls, flight = state
        props: dict[str, Any] = {
            "calls": json.dumps({str(second): count for second, count in calls.items()}, separators=(",", ":")),
            "flight": json.dumps(flight, separators=(",", ":")),
        }
        with self._write_lock:
            try:
                if etag is None:
                    new_etag = self._rows.insert_row(self._table, BUDGET, self._service, props)
                else:
                    new_etag = self._rows.replace_row(self._table, BUDGET, self._service, props, etag=etag)
            except StateConflictError:
                with self._lock:
                    self._cached = None  # another instance wrote: read again
                return False
            with self._lock:
                self._cached = (state, new_etag)
        return True

    def _pruned(self, state: _State, now: float) -> _State:
        calls, flight = state
        oldest = now - self.limit.per_seconds - 1  # a bucket counts until its end leaves the window
        return (
            {second: count for second, count in calls.items() if second > oldest},
            {lease: until for lease, until in flight.items() if until > now},
        )

    # -- taking and giving back a place ------------------------------------------------------------
    def _acquire(self, lease: str, limit: RateLimit) -> None:
        while True:
            state, etag = self._current()
            now = self._clock()
            calls, flight = self._pruned(state, now)
            used = sum(calls.values())
            if used < limit.max_calls and len(flight) < limit.max_concurrent:
                second = int(now)
                calls[second] = calls.get(second, 0) + 1
                flight[lease] = now + self._lease_seconds
                if self._write((calls, flight), etag):
                    return
                continue
            if used >= limit.max_calls:
                # until enough of the oldest buckets have left the window to bring it under the cap
                over = used - limit.max_calls + 1
                seconds = sorted(calls)
                leaving = seconds[-1]
                for second in seconds:
                    over -= calls[second]
                    if over <= 0:
                        leaving = second
                        break
                wait = leaving + 1 + self.limit.per_seconds - now
            else:
                wait = _BACKGROUND_POLL if is_background() else _POLL
            with self._lock:
                self._cached = None  # what we saw is full: look again after the wait
            self._sleep(min(max(wait, 0.01), _MAX_WAIT) * random.uniform(1.0, 1.2))  # noqa: S311 (jitter)

    def _release(self, lease: str) -> None:
        for _ in range(_RELEASE_TRIES):
            state, etag = self._current()
            calls, flight = state
            if lease not in flight:
                # A version cached by a read that raced this process's writes may predate the lease:
                # only the row itself says it is gone (else the place would be lost for the lease time).
                state, etag = self._current(fresh=True)
                calls, flight = state
            if lease not in flight or etag is None:
                return
            remaining = {key: until for key, until in flight.items() if key != lease}
            if self._write(self._pruned((dict(calls), remaining), self._clock()), etag):
                return
        # Still contended after many tries: the lease expires by itself after ``lease_seconds``.
