"""An API call budget every instance shares (design §6), kept in one Table row per service.

N instances each with its own ``http.ratebudget.RateBudget`` could spend N times Marketo's 100
calls per 20 s. ``SharedRateBudget`` keeps the two limits for all of them in the row
``{prefix}state`` / PK ``budget`` / RK service, without a Table round trip on a call's path:
each process *leases* from the row, in one ETag-conditional replace, a small block of call starts
and in-flight places, and its calls spend from that block in memory.

The row holds two maps:

- ``grants``: blocks of call starts, ``{grant id: [count, last start, background, issued]}``. A grant may
  be spent for ``VALIDITY`` seconds (at most a quarter of the window) after it is written, so its
  starts lie before ``last start``; it counts against the window until ``last start`` + window +
  ``CLOCK_SKEW`` has passed. A grant is written at its full size and lowered to what was spent
  (``last start`` to the last real one) once no call can spend from it any more: superseded by a
  newer grant, or past its time. A new block is granted only if the counted grants leave room
  for it, so in every sliding window the real starts of all instances are at most the limit (a
  window holding a start of a grant holds only starts of grants counted when it was written).
- ``holders``: in-flight places, ``{holder id: [places, lease until, background]}``. A process's
  calls start only on places it holds and only within ``VALIDITY`` of the write that last renewed
  them, and every write sets ``lease until`` to now + ``lease_seconds`` (longer than the longest
  call plus ``VALIDITY``): a call always ends while its place is still counted.

Priority: each process has a pool for live calls (the cycle, the webhook) and one for background
work (``http.ratebudget.background_work``). Background grants and places count against
``background_share`` of each limit (``http.ratebudget.limit_for``), all of them against the whole
limit, so live calls always find the rest (unlike the per-process ``RateBudget``, live calls beyond
that rest do not shut background work out of its share); and background starts are paced, at most a
quarter of their share granted per quarter window (counted by when each grant was issued, so the
pace lets the share through: counted by last start, with the clock skew and a block's validity on
top, three hosts' backfill ran at a third of its share), so a backfill that starts first does not
spend its whole share in one burst and live calls arriving seconds later still find most of the
window. A live pool
keeps a tenth of the in-flight limit leased while it is busy (none of Marketo's 5 at share 0.5,
none of Dataverse's 4), and a thread of its own renews a busy pool's block before it runs out
(``_tend``): a live call normally takes a start and a place under a lock and sends nothing to Table
Storage. Places above that reserve go back after ``LINGER`` s unused (a webhook's second Marketo
call finds the first one's place), a spent grant is lowered in passing with the pool's next write
(by a write of its own once the pool is quiet), and ``close()`` (``Services.close``, and at exit)
returns everything.

Costs. A busy pool: one Table write per half block (Marketo at share 0.5: blocks of 5; Dataverse:
100), from the renewal thread, off the calls' path; a read only when another instance wrote
since. A live Marketo call after ``LINGER`` s without one in its process: one write for a place (a
read and a second write when another instance wrote since). ``tests/test_shared_budget.py``
counts these; ``bench/bench_backfill_live.py`` measures live latency while a backfill runs.

Worst case. Never above the limits, whatever the timing, as long as the instances' clocks agree to
within ``CLOCK_SKEW``: a grant's starts and a place's calls happen only in the process that holds
them, within what the row counted when they were written. Capacity given up: each pool's unspent
starts until they are lowered (at most a block and a half per busy pool), ``CLOCK_SKEW`` per
window, places lingering ``LINGER`` s, and a dead instance's places until their lease ends
(``lease_seconds``, 320 s, as when every call had its own lease; only the places in use, lingering
or a busy live pool's reserve: a process holds no others) and its unspent starts until their window
has passed (``VALIDITY`` + window + ``CLOCK_SKEW``). A live call waits for a Table write when its
process holds no free place or its block ran out before the renewal thread refilled it, and, like
any budget, for the window when the limit is reached. Nothing here knows what a call is.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sync_core.core.errors import StateConflictError
from sync_core.core.models import StoreCounters
from sync_core.http.ratebudget import RateLimit, is_background, limit_for, yield_to_live
from sync_core.state._rows import Rows

_LOG = logging.getLogger(__name__)

BUDGET = "budget"
LEASE_SECONDS = 320.0  # longer than the longest call (Marketo's paging token, 310 s) plus VALIDITY
VALIDITY = 5.0  # a lease's starts and places may begin calls this long after its write (at most a quarter window)
LINGER = 0.25  # a place above the reserve goes back after this long unused (a webhook's calls reuse it)
CLOCK_SKEW = 1.0  # how far instances' clocks may disagree; a grant counts this much longer
BLOCK_SHARE = 0.1  # a lease takes at most this share of a limit (starts; a live pool's reserve)
_POLL = 0.05  # seconds between looks when the row has no room for a live lease
_BACKGROUND_POLL = 0.25  # the same for background work: its waiters leave the row to live leases
_MAX_WAIT = 1.0
_TICK = LINGER / 2  # the renewal thread's look at the pools (no Table operation unless one is due)
_TRIES = 20  # conflicting writes in a row before a lease gives up this round

# grant id -> [count, last start, background, issued]; holder id -> [places, lease until, background]
# (a grant written before ``issued`` was kept has three entries: its last start stands for it)
_Entry = list[Any]
_State = tuple[dict[str, _Entry], dict[str, _Entry]]


@dataclass
class _Grant:
    key: str
    count: int
    issued: float
    used: int = 0
    last_start: float = 0.0


@dataclass
class _Pool:
    """What one process holds for its live calls, or for its background calls."""

    key: str
    background: bool
    current: _Grant | None = None  # the grant calls spend from, until ``deadline``
    spent: list[_Grant] = field(default_factory=list)  # no longer spendable, to be lowered in the row
    deadline: float = 0.0  # calls may start on this pool's places and current grant until then
    places: int = 0  # held in the row
    busy: int = 0  # of those, in use
    wanting: int = 0  # callers waiting for a start or a place
    last_take: float = 0.0
    last_release: float = 0.0
    leasing: bool = False  # one caller of this pool writes at a time, the others wait

    def take(self, now: float) -> bool:
        grant = self.current
        if grant is None or now >= self.deadline or grant.used >= grant.count or self.busy >= self.places:
            return False
        grant.used += 1
        grant.last_start = now
        self.busy += 1
        self.last_take = now
        return True

    def left(self) -> int:
        return 0 if self.current is None else self.current.count - self.current.used


@dataclass(frozen=True)
class _Due:
    """A pool's wish for its next write, taken under the pools' lock."""

    pool: _Pool
    need_start: bool  # a new block (a caller has none left, or a busy pool's block runs low)
    starved: bool  # a caller has no start left: without room it waits
    need_place: bool  # a caller finds every held place in use
    held: int  # places the row holds for the pool now
    keep: int  # places to keep when nothing more is needed (fewer: the idle ones go back)
    target: int  # places in use and asked for
    lowered: list[_Grant]  # spent grants to lower to what they spent


class SharedRateBudget:
    """A ``CallBudget`` whose window and in-flight places live in the state store (see module doc)."""

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
        renew_in_background: bool = True,
    ) -> None:
        self.limit = limit
        self.background_share = background_share
        self._rows = rows
        self._table = table
        self._service = service
        self._sleep = sleep
        self._clock = clock
        self._lease_seconds = lease_seconds
        self._renew_in_background = renew_in_background
        self._validity = min(VALIDITY, limit.per_seconds / 4)
        holder = uuid.uuid4().hex[:12]
        self._pools = {False: _Pool(f"{holder}l", False), True: _Pool(f"{holder}b", True)}
        self._serial = itertools.count()
        self._lock = threading.Lock()  # the pools
        self._changed = threading.Condition(self._lock)  # a lease written, a place freed
        self._exchange_lock = threading.Lock()  # this process's row writes one at a time
        self._cached: tuple[_State, str] | None = None  # the last version this process read or wrote
        self._tender: threading.Thread | None = None
        self._closed = False
        full = limit.max_calls
        self._block = max(1, min(math.floor(full * BLOCK_SHARE), math.floor(full * self._validity / limit.per_seconds)))
        self._reserve = math.floor(limit.max_concurrent * BLOCK_SHARE)  # a live pool's places kept while busy
        # A block above 1/20 of the window (Marketo's) goes back as soon as its pool is quiet for
        # LINGER s: held by every quiet instance it would eat the window. Dataverse's stay their time.
        self._scarce = self._block * 20 > full

    @property
    def counters(self) -> StoreCounters:
        """Table operations this budget has sent (its own, apart from the state store's)."""
        return self._rows.counters

    @contextmanager
    def slot(self) -> Iterator[None]:
        pool = self._pools[is_background()]
        yield_to_live()  # background calls wait while live work runs in this process
        self._take(pool)
        try:
            yield
        finally:
            with self._changed:
                pool.busy -= 1
                pool.last_release = self._clock()
                self._changed.notify_all()

    def close(self) -> None:
        """Give every unused start and place back to the row (process exit); calls may still follow."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        for pool in self._pools.values():
            self._exchange(pool, need=False, closing=True)

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception:  # Table Storage out of reach at exit: the leases expire by themselves
            return

    # -- a call's place -------------------------------------------------------------------------
    def _take(self, pool: _Pool) -> None:
        self._start_tender()
        with self._changed:
            if pool.take(self._clock()):
                return  # the common case: no Table round trip
            pool.wanting += 1
        try:
            while True:
                with self._changed:
                    if pool.take(self._clock()):
                        return
                    if pool.leasing:  # another caller of this pool is writing: wait for its lease
                        self._changed.wait(_MAX_WAIT)
                        continue
                    pool.leasing = True
                try:
                    wait = self._exchange(pool, need=True)
                finally:
                    with self._changed:
                        pool.leasing = False
                        self._changed.notify_all()
                if wait:
                    self._sleep(min(max(wait, 0.01), _MAX_WAIT) * random.uniform(1.0, 1.2))  # noqa: S311 (jitter)
        finally:
            with self._changed:
                pool.wanting -= 1

    # -- the row --------------------------------------------------------------------------------
    def _current(self) -> tuple[_State, str | None]:
        if self._cached is not None:
            return self._cached
        row = self._rows.get_row(self._table, BUDGET, self._service)
        if row is None:
            return ({}, {}), None
        state = (json.loads(row.props.get("grants") or "{}"), json.loads(row.props.get("holders") or "{}"))
        self._cached = (state, row.etag)
        return state, row.etag

    def _write(self, state: _State, etag: str | None) -> bool:
        grants, holders = state
        props: dict[str, Any] = {
            "grants": json.dumps(grants, separators=(",", ":")),
            "holders": json.dumps(holders, separators=(",", ":")),
        }
        try:
            if etag is None:
                new_etag = self._rows.insert_row(self._table, BUDGET, self._service, props)
            else:
                new_etag = self._rows.replace_row(self._table, BUDGET, self._service, props, etag=etag)
        except StateConflictError:
            self._cached = None  # another instance wrote: read again
            return False
        self._cached = (state, new_etag)
        return True

    def _counted(self, state: _State, now: float) -> _State:
        """The grants still in the window and the places still leased (the row's own are dropped)."""
        grants, holders = state
        oldest = now - self.limit.per_seconds - CLOCK_SKEW
        return (
            {key: list(entry) for key, entry in grants.items() if entry[1] > oldest},
            {key: list(entry) for key, entry in holders.items() if entry[1] > now},
        )

    # -- leasing and giving back ------------------------------------------------------------------
    def _exchange(self, pool: _Pool, *, need: bool, closing: bool = False) -> float:
        """Bring ``pool``'s entries in the row up to date in one conditional write: spent grants
        lowered, unused places given back, and when a caller ``need``s a start or a place (or a busy
        pool is due for renewal) a new block. Returns 0, or how long to wait before asking again."""
        for _ in range(_TRIES):
            with self._exchange_lock:
                due = self._due(pool, need=need, closing=closing)
                if due is None:
                    return 0.0  # nothing to write: no Table round trip
                fresh = self._cached is None
                state, etag = self._current()
                now = self._clock()
                grants, holders = self._counted(state, now)
                wait, grant, places = self._plan(due, grants, holders, now)
                if grant is None and places == due.held and not any(g.used < g.count for g in due.lowered):
                    if wait:
                        self._cached = None  # full as this process last saw it: read it again
                        if not fresh:
                            continue
                    return wait  # nothing changes: nothing to write
                if self._write((grants, holders), etag):
                    self._commit(pool, grant, places, due.lowered, now)
                    return wait
                with self._changed:
                    pool.places = due.held  # the write lost: the row still holds the old count
        return _POLL

    def _due(self, pool: _Pool, *, need: bool, closing: bool) -> _Due | None:
        """What ``pool`` should change in the row, from its own state alone; None: nothing."""
        now = self._clock()
        with self._changed:
            idle = closing or (not pool.wanting and now - max(pool.last_release, pool.last_take) >= LINGER)
            quiet = idle and not pool.busy and self._scarce
            if pool.current is not None and (now >= pool.deadline or closing or quiet):
                pool.spent.append(pool.current)  # past its time, or quiet: nothing spends from it any more
                pool.current = None
            active = not closing and now - pool.last_take < self._validity
            renew = (
                active
                and pool.current is not None
                and (pool.deadline - now < self._validity / 2 or pool.left() * 2 < self._block)
            )
            keep = pool.busy if closing or pool.background or not active else max(pool.busy, self._reserve)
            due = _Due(
                pool=pool,
                need_start=(need and pool.left() == 0) or renew,
                starved=need and pool.left() == 0,
                need_place=need and pool.busy >= pool.places,
                held=pool.places,
                keep=keep if idle and pool.places > keep else pool.places,
                target=pool.busy + pool.wanting,
                lowered=list(pool.spent),
            )
        # Spent grants are lowered in passing with the next lease; by a write of their own only when
        # the pool has gone quiet with starts unspent (a busy pool's next renewal comes soon).
        unused = (quiet or not active) and any(grant.used < grant.count for grant in due.lowered)
        if not (due.need_start or due.need_place or due.keep < due.held or unused):
            return None
        if due.keep < due.held:
            with self._changed:
                pool.places = due.keep  # fewer places before the write (none of them in use), more only after it
        return due

    def _plan(
        self, due: _Due, grants: dict[str, _Entry], holders: dict[str, _Entry], now: float
    ) -> tuple[float, _Grant | None, int]:
        """Changes ``grants`` and ``holders`` to what ``due.pool`` should hold: (wait, new grant, places).
        ``wait`` > 0: the caller's start or place did not fit (the rest is still written)."""
        pool = due.pool
        for spent in due.lowered:
            if spent.key in grants:
                if spent.used:
                    grants[spent.key] = [spent.used, spent.last_start, pool.background, spent.issued]
                else:
                    del grants[spent.key]
        cap = limit_for(self.limit, self.background_share, background=pool.background)  # not this thread's kind
        wait = 0.0
        grant: _Grant | None = None
        if due.need_start:
            counted = list(grants.values())
            room = self.limit.max_calls - sum(entry[0] for entry in counted)
            if pool.background:
                room = min(room, cap.max_calls - sum(entry[0] for entry in counted if entry[2]))
                # paced: a quarter of its share per quarter window, so live calls arriving after a
                # backfill started still find most of the window free
                paced = self._paced(counted, now)
                room = min(room, _pace(cap) - sum(entry[0] for entry in paced))
            if room >= 1:
                grant = _Grant(f"{pool.key}{next(self._serial)}", min(self._block, room), issued=now)
                grants[grant.key] = [grant.count, now + self._validity, pool.background, now]
            elif due.starved:
                wait = self._window_wait(counted, cap, now)  # for the oldest grants to leave the window
                if pool.background:
                    wait = max(wait, self._pace_wait(counted, cap, now))
        places = due.keep
        if due.need_place and not (due.starved and grant is None):  # a place without a start waits for one
            others = [entry for key, entry in holders.items() if key != pool.key]
            room = self.limit.max_concurrent - sum(entry[0] for entry in others)
            if pool.background:
                room = min(room, cap.max_concurrent - sum(entry[0] for entry in others if entry[2]))
            reserve = 0 if pool.background else self._reserve
            places = max(due.held, min(max(due.target, reserve, due.held + 1), room))
            if places <= due.held:
                wait = wait or (_BACKGROUND_POLL if pool.background else _POLL)  # for a place to come back
        if grant is not None and places == 0:  # no place to start it on: leave the starts to pools with one
            del grants[grant.key]
            grant = None
        if places > 0:
            holders[pool.key] = [places, now + self._lease_seconds, pool.background]
        else:
            holders.pop(pool.key, None)
        return wait, grant, places

    def _window_wait(self, counted: list[_Entry], cap: RateLimit, now: float) -> float:
        """Until enough of the oldest grants leave the window for one more start under ``cap``."""
        span = self.limit.per_seconds + CLOCK_SKEW
        return _until_room(counted, cap.max_calls, lambda entry: float(entry[1]), span, now, otherwise=_POLL)

    def _paced(self, counted: list[_Entry], now: float) -> list[_Entry]:
        """The background grants issued within the last quarter window (a soft pace, no skew)."""
        recent = now - self.limit.per_seconds / 4
        return [entry for entry in counted if entry[2] and _issued(entry) > recent]

    def _pace_wait(self, counted: list[_Entry], cap: RateLimit, now: float) -> float:
        """Until enough background grants leave the pace's quarter window for one more start."""
        paced = self._paced(counted, now)
        return _until_room(paced, _pace(cap), _issued, self.limit.per_seconds / 4, now, otherwise=0.0)

    def _commit(self, pool: _Pool, grant: _Grant | None, places: int, lowered: list[_Grant], now: float) -> None:
        done = {id(spent) for spent in lowered}
        with self._changed:
            pool.spent = [spent for spent in pool.spent if id(spent) not in done]
            if grant is not None:
                if pool.current is not None:
                    pool.spent.append(pool.current)
                pool.current = grant
                pool.deadline = now + self._validity
            pool.places = places
            self._changed.notify_all()

    # -- renewing ahead of need -------------------------------------------------------------------
    def _start_tender(self) -> None:
        if not self._renew_in_background or self._tender is not None:
            return
        with self._lock:
            if self._tender is not None:
                return
            self._tender = threading.Thread(target=self._tend_forever, name=f"budget-{self._service}", daemon=True)
        self._tender.start()
        atexit.register(self._close_at_exit)

    def _tend_forever(self) -> None:
        while True:
            with self._changed:
                if self._closed:
                    return
                self._changed.wait(_TICK)
                if self._closed:
                    return
            try:
                self._tend()
            except Exception as err:  # a failed renewal leaves the next call to lease: never die
                _LOG.warning("API budget %s: renewal failed (%s)", self._service, type(err).__name__)
                time.sleep(_TICK)

    def _tend(self) -> None:
        """Renew each busy pool's block before it runs out, lower spent grants, give back idle places."""
        for pool in self._pools.values():
            with self._changed:
                if pool.leasing:
                    continue
                pool.leasing = True
            try:
                self._exchange(pool, need=False)
            finally:
                with self._changed:
                    pool.leasing = False
                    self._changed.notify_all()


def _issued(entry: _Entry) -> float:
    """When a grant was written (its last start for a grant written without it)."""
    return float(entry[3] if len(entry) > 3 else entry[1])


def _pace(cap: RateLimit) -> int:
    """Background starts granted per quarter window: a quarter of their share."""
    return max(1, cap.max_calls // 4)


def _until_room(
    entries: list[_Entry], limit: int, time_of: Callable[[_Entry], float], span: float, now: float, *, otherwise: float
) -> float:
    """Seconds until enough of ``entries`` (oldest by ``time_of`` first) have been out of a window
    of ``span`` for their counts to leave room for one more under ``limit``; ``otherwise`` when
    leaving them all would not."""
    over = sum(entry[0] for entry in entries) - limit + 1
    for entry in sorted(entries, key=time_of):
        over -= entry[0]
        if over <= 0:
            return time_of(entry) + span - now
    return otherwise
