"""Service protection (reference B9): per-user request count, combined execution time and
requests in flight, each over a sliding window, answered with 429, ``Retry-After`` and the
real codes and messages.

Limits are kept per user, as the real service does (every token of one app user shares one
budget). The window runs on the options' clock so tests can move time; execution time is the
real time a request spent in the simulator (fault delays included, which is how a test makes
a request "slow"). It knows nothing of routes: the app asks ``admit`` before serving.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sandbox.dataverse import _errors as err


@dataclass
class _UserWindow:
    requests: deque[float] = field(default_factory=deque)
    executions: deque[tuple[float, float]] = field(default_factory=deque)  # (started, ms)
    execution_ms: float = 0.0
    in_flight: int = 0


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,}"


class ServiceProtection:
    def __init__(
        self,
        *,
        max_requests: int,
        window_seconds: float,
        max_concurrent: int,
        max_execution_ms: float,
        clock: Callable[[], float],
    ) -> None:
        self.max_requests = max_requests
        self.window = window_seconds
        self.max_concurrent = max_concurrent
        self.max_execution_ms = max_execution_ms
        self.clock = clock
        self._users: dict[str, _UserWindow] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._users.clear()

    @contextmanager
    def admit(self, user: str) -> Iterator[list[tuple[str, str]]]:
        """Let one request of ``user`` in (or raise the 429), yield the rate-limit debug headers."""
        now = self.clock()
        with self._lock:
            state = self._users.setdefault(user, _UserWindow())
            self._forget(state, now)
            self._refuse_if_over(state, now)
            state.requests.append(now)
            state.in_flight += 1
            headers = [
                ("x-ms-ratelimit-burst-remaining-xrm-requests", str(self.max_requests - len(state.requests))),
                ("x-ms-ratelimit-time-remaining-xrm-requests", str(int(self.max_execution_ms - state.execution_ms))),
            ]
        started = time.perf_counter()
        try:
            yield headers
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            with self._lock:
                state.in_flight -= 1
                state.executions.append((now, elapsed_ms))
                state.execution_ms += elapsed_ms

    def _forget(self, state: _UserWindow, now: float) -> None:
        horizon = now - self.window
        while state.requests and state.requests[0] <= horizon:
            state.requests.popleft()
        while state.executions and state.executions[0][0] <= horizon:
            state.execution_ms -= state.executions.popleft()[1]
        if not state.executions:
            state.execution_ms = 0.0

    def _refuse_if_over(self, state: _UserWindow, now: float) -> None:
        if state.in_flight >= self.max_concurrent:
            raise _too_many(
                err.CONCURRENCY_LIMIT, f"Number of concurrent requests exceeded the limit of {self.max_concurrent}.", 1
            )
        if len(state.requests) >= self.max_requests:
            wait = state.requests[0] + self.window - now
            raise _too_many(
                err.REQUESTS_LIMIT,
                f"Number of requests exceeded the limit of {self.max_requests} over time window of "
                f"{_number(self.window)} seconds.",
                wait,
            )
        if state.execution_ms >= self.max_execution_ms:
            remaining = state.execution_ms
            wait = 1.0
            for started, ms in state.executions:
                remaining -= ms
                if remaining < self.max_execution_ms:
                    wait = started + self.window - now
                    break
            raise _too_many(
                err.EXECUTION_TIME_LIMIT,
                f"Combined execution time of incoming requests exceeded limit of {_number(self.max_execution_ms)} "
                f"milliseconds over time window of {_number(self.window)} seconds. Decrease number of concurrent "
                "requests or reduce the duration of requests and try again later.",
                wait,
            )


def _too_many(code: str, message: str, wait: float) -> err.DataverseError:
    seconds = max(1, math.ceil(wait))
    return err.DataverseError(429, code, message, headers=[("Retry-After", str(seconds))])


def throttled(retry_after: float) -> err.DataverseError:
    """The request-count 429 with a given Retry-After, for fault injection."""
    return _too_many(
        err.REQUESTS_LIMIT,
        "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
        retry_after,
    )
