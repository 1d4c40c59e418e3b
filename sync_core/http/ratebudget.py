"""A client-side rate budget: at most N calls per sliding window and M in flight.

Marketo refuses the 101st call in 20 s (606) and the 11th concurrent one (615), counted over
*every* integration on the instance, so this client keeps to a configurable share of both and
the refusals stay rare. The window is a deque of start times; a caller over budget sleeps until
the oldest call leaves the window. The limit (``RateLimit``) is data, like a retry policy;
``sleep`` and ``clock`` are injected so tests are instant.
It does not retry or talk HTTP: it only decides when a call may start.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


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


class RateBudget:
    def __init__(self, limit: RateLimit, *, sleep: Callable[[float], None], clock: Callable[[], float]) -> None:
        self.limit = limit
        self._sleep = sleep
        self._clock = clock
        self._starts: deque[float] = deque()
        self._lock = threading.Lock()
        self._in_flight = threading.BoundedSemaphore(limit.max_concurrent)

    def _wait_for_window(self) -> None:
        while True:
            with self._lock:
                now = self._clock()
                while self._starts and self._starts[0] <= now - self.limit.per_seconds:
                    self._starts.popleft()
                if len(self._starts) < self.limit.max_calls:
                    self._starts.append(now)
                    return
                wait = self._starts[0] + self.limit.per_seconds - now
            self._sleep(max(wait, 0.001))

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one in-flight place and one window entry for the duration of a call."""
        with self._in_flight:
            self._wait_for_window()
            yield

    def in_window(self) -> int:
        """Calls started within the current window (for tests and the run report)."""
        with self._lock:
            now = self._clock()
            return sum(1 for start in self._starts if start > now - self.limit.per_seconds)
