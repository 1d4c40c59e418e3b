"""A client-side rate budget: at most N calls per sliding window and M in flight.

Marketo refuses the 101st call in 20 s (606) and the 11th concurrent one (615), counted over
*every* integration on the instance, so this client keeps to a configurable share of both and
the refusals stay rare. The window is a deque of start times; a caller over budget sleeps until
the oldest call leaves the window. The limit (``RateLimit``) is data, like a retry policy;
``sleep`` and ``clock`` are injected so tests are instant.
It does not retry or talk HTTP: it only decides when a call may start.

``CallBudget`` is what a sender needs (``slot()``): this per-process ``RateBudget``, or the
budget every instance shares through the state store (``state.budget.SharedRateBudget``).

Priority: work run inside ``background_work()`` (chunked jobs: initial sync, backfill) may use
only ``background_share`` of each limit — of the calls in a window and of the calls in flight —
so however much bulk work is queued, the sync cycle and the webhook always find the rest free
and keep their latency. ``limit_for(limit, share)`` is that rule, in one place for both budgets.

Live first, in a process: while live work runs here (a webhook call: ``live_work()``), background
work pauses at its next API call or Table operation (``yield_to_live()``, called by both budgets'
``slot()`` and by the state store's row verbs) until the live work is done, for at most
``LIVE_FIRST_MAX_WAIT`` s each time, so the background work keeps going under a stream of
webhooks. The budgets share the limits between instances; this shares one instance's CPU (one
GIL): a host running chunks of a backfill answers a webhook almost as fast as an idle one. It
holds nothing while it waits, and it does not wait inside the shared budget's own Table writes
(made under that budget's locks, which a live call may need).
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class RateLimit:
    """At most ``max_calls`` call starts per ``per_seconds`` window and ``max_concurrent`` calls in flight."""

    max_calls: int
    per_seconds: float
    max_concurrent: int

    def __post_init__(self) -> None:
        if self.max_calls < 1 or self.max_concurrent < 1 or self.per_seconds <= 0:
            raise ValueError("a rate budget needs at least one call per window and one in flight")

    def share(self, share: float) -> RateLimit:
        """``share`` (0, 1] of this limit, rounded down, never below one."""
        if not 0 < share <= 1:
            raise ValueError("rate share must be in (0, 1]")
        return RateLimit(
            max_calls=max(1, math.floor(self.max_calls * share)),
            per_seconds=self.per_seconds,
            max_concurrent=max(1, math.floor(self.max_concurrent * share)),
        )


class CallBudget(Protocol):
    limit: RateLimit

    def slot(self) -> AbstractContextManager[None]:
        """Hold one in-flight place and one window entry for the duration of a call."""
        ...


_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("sync_background_work", default=False)


@contextmanager
def background_work() -> Iterator[None]:
    """Calls made inside (in this thread, and in threads started with its context) are background work."""
    token = _BACKGROUND.set(True)
    try:
        yield
    finally:
        _BACKGROUND.reset(token)


def is_background() -> bool:
    return _BACKGROUND.get()


LIVE_FIRST_MAX_WAIT = 1.0  # a background call or Table operation waits at most this long for live work


class LiveFirst:
    """Live work in progress in this process, and background work waiting for it to end."""

    def __init__(self, *, max_wait: float = LIVE_FIRST_MAX_WAIT, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_wait = max_wait
        self._clock = clock
        self._changed = threading.Condition()
        self._live = 0
        self._waiting = 0

    @contextmanager
    def live(self) -> Iterator[None]:
        """Background work in this process yields to the work done inside."""
        with self._changed:
            self._live += 1
        try:
            yield
        finally:
            with self._changed:
                self._live -= 1
                self._changed.notify_all()

    def yield_to_live(self) -> None:
        """From background work: wait while live work runs here (at most ``max_wait`` s). Live work
        never waits."""
        if not is_background():
            return
        with self._changed:
            if not self._live:
                return
            until = self._clock() + self.max_wait
            self._waiting += 1
            try:
                while self._live and (left := until - self._clock()) > 0:
                    self._changed.wait(left)
            finally:
                self._waiting -= 1

    @property
    def waiting(self) -> int:
        """Background callers waiting now (for tests)."""
        with self._changed:
            return self._waiting


LIVE_FIRST = LiveFirst()  # one per process: the CPU it shares out is the process's


def live_work() -> AbstractContextManager[None]:
    """Live work (a webhook call): background work in this process yields to it (see module doc)."""
    return LIVE_FIRST.live()


def yield_to_live() -> None:
    """Background work's turn: wait while live work runs in this process (see module doc)."""
    LIVE_FIRST.yield_to_live()


def limit_for(limit: RateLimit, background_share: float, *, background: bool | None = None) -> RateLimit:
    """The limit the current call (or, given ``background``, a call of that kind) may use: all of
    it, or ``background_share`` of it for background work."""
    return limit.share(background_share) if (is_background() if background is None else background) else limit


class RateBudget:
    def __init__(
        self,
        limit: RateLimit,
        *,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
        background_share: float = 1.0,
    ) -> None:
        self.limit = limit
        self.background_share = background_share
        self._sleep = sleep
        self._clock = clock
        self._starts: deque[float] = deque()
        self._lock = threading.Lock()
        self._flight = threading.Condition()
        self._in_flight = 0

    def _wait_for_window(self, limit: RateLimit) -> None:
        while True:
            with self._lock:
                now = self._clock()
                while self._starts and self._starts[0] <= now - limit.per_seconds:
                    self._starts.popleft()
                if len(self._starts) < limit.max_calls:
                    self._starts.append(now)
                    return
                # the oldest call whose leaving brings the window under this caller's cap
                wait = self._starts[len(self._starts) - limit.max_calls] + limit.per_seconds - now
            self._sleep(max(wait, 0.001))

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one in-flight place and one window entry for the duration of a call."""
        limit = limit_for(self.limit, self.background_share)
        yield_to_live()
        with self._flight:
            self._flight.wait_for(lambda: self._in_flight < limit.max_concurrent)
            self._in_flight += 1
        try:
            self._wait_for_window(limit)
            yield
        finally:
            with self._flight:
                self._in_flight -= 1
                self._flight.notify_all()

    def in_window(self) -> int:
        """Calls started within the current window (for tests and the run report)."""
        with self._lock:
            now = self._clock()
            return sum(1 for start in self._starts if start > now - self.limit.per_seconds)
