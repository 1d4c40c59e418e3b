"""Marketo's three API limits and the usage counter the sync reads to stay inside them.

Owns the sliding-window rate limit (100 calls / 20 s → 606), the in-flight limit (10 → 615) and
the daily quota (→ 607, days reset at midnight US Central), each reserving a slot when a call is
admitted and giving it back when the call ends in a response-level error, because such calls are
not charged. The daily counter is also what ``stats/usage.json`` reports. Clock injected, so a
20-second window is tested without waiting. Knows nothing of HTTP or routes.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

try:
    _CENTRAL: timezone | ZoneInfo = ZoneInfo("America/Chicago")
except ZoneInfoNotFoundError:  # no tz database: standard time is close enough for a sandbox
    _CENTRAL = timezone(timedelta(hours=-6))


def central_day(epoch: float) -> date:
    return datetime.fromtimestamp(epoch, UTC).astimezone(_CENTRAL).date()


class RateLimiter:
    """At most ``calls`` admitted calls in any ``window`` seconds."""

    def __init__(self, calls: int, window: float, clock: Callable[[], float]) -> None:
        self.calls = calls
        self.window = window
        self._clock = clock
        self._admitted: deque[float] = deque()
        self._lock = threading.Lock()

    def admit(self) -> float | None:
        """The admission time (a receipt for ``refund``), or None when the window is full."""
        with self._lock:
            now = self._clock()
            while self._admitted and self._admitted[0] <= now - self.window:
                self._admitted.popleft()
            if len(self._admitted) >= self.calls:
                return None
            self._admitted.append(now)
            return now

    def refund(self, receipt: float) -> None:
        with self._lock, contextlib.suppress(ValueError):  # already slid out of the window
            self._admitted.remove(receipt)

    def reset(self) -> None:
        with self._lock:
            self._admitted.clear()


class ConcurrencyGate:
    """Counts calls in flight; ``enter`` fails when ``limit`` are already being served."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self._in_flight >= self.limit:
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        return self._in_flight


class DailyUsage:
    """Calls charged per (US Central) day; admission fails at ``quota``. Keeps the last 7 days."""

    def __init__(self, quota: int, clock: Callable[[], float]) -> None:
        self.quota = quota
        self._clock = clock
        self._days: dict[date, int] = {}
        self._lock = threading.Lock()

    def today(self) -> date:
        return central_day(self._clock())

    def admit(self, *, enforce: bool) -> date | None:
        """Charge one call to today; None (nothing charged) when enforcing and the quota is used up."""
        with self._lock:
            day = self.today()
            used = self._days.get(day, 0)
            if enforce and used >= self.quota:
                return None
            self._days[day] = used + 1
            for old in [d for d in self._days if d < day - timedelta(days=7)]:
                del self._days[old]
            return day

    def refund(self, day: date) -> None:
        with self._lock:
            if self._days.get(day):
                self._days[day] -= 1

    def count(self, day: date) -> int:
        with self._lock:
            return self._days.get(day, 0)

    def reset(self) -> None:
        with self._lock:
            self._days.clear()
