"""Counters of API calls per service and per operation, for the run report.

The figure of merit of the whole sync is API calls per synced change (design §6), so every
request a client sends is counted here: API calls per operation, token calls apart (Marketo's
identity calls do not count toward its quota), retries and throttling answers. Thread-safe,
no I/O; ``snapshot()`` gives a plain dict a run report can serialise.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from typing import Any

OPERATION_KEY = "sync_core.operation"  # request extension naming the operation, for the counters


class ApiCounters:
    """Counts what the API clients send; one instance per run (or per process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._token_calls: Counter[str] = Counter()
        self._retries: Counter[str] = Counter()
        self._throttled: Counter[str] = Counter()

    def record_call(self, service: str, operation: str) -> None:
        """One API request sent (every attempt counts: the service counts it too)."""
        with self._lock:
            self._calls[service][operation] += 1

    def record_token_call(self, service: str) -> None:
        with self._lock:
            self._token_calls[service] += 1

    def record_retry(self, service: str) -> None:
        with self._lock:
            self._retries[service] += 1

    def record_throttled(self, service: str) -> None:
        """The service answered "too many" (Marketo 606/615, Dataverse 429)."""
        with self._lock:
            self._throttled[service] += 1

    def calls(self, service: str, operation: str | None = None) -> int:
        """API calls (not token calls) to ``service``, for one operation or all."""
        with self._lock:
            per_op = self._calls.get(service, Counter())
            return per_op[operation] if operation is not None else sum(per_op.values())

    def token_calls(self, service: str) -> int:
        with self._lock:
            return self._token_calls[service]

    def snapshot(self) -> dict[str, Any]:
        """``{service: {"calls", "token_calls", "retries", "throttled", "by_operation": {op: n}}}``."""
        with self._lock:
            services = set(self._calls) | set(self._token_calls) | set(self._retries) | set(self._throttled)
            return {
                service: {
                    "calls": sum(self._calls[service].values()),
                    "token_calls": self._token_calls[service],
                    "retries": self._retries[service],
                    "throttled": self._throttled[service],
                    "by_operation": dict(sorted(self._calls[service].items())),
                }
                for service in sorted(services)
            }
