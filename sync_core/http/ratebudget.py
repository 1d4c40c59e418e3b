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
"""

from __future__ import annotations

import contextvars
import math
import threading
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
