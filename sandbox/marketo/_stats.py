"""Counts of what the simulator did, for tests that assert "no duplicate writes".

Served calls per endpoint (``"POST /rest/v1/leads.json"``, with ``{id}`` placeholders), identity
calls, calls refused by a limit or a bad token (by error code) and injected faults. Unlike the
daily usage counter these count every call that reached an endpoint, charged or not.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._endpoints: Counter[str] = Counter()
            self._rejected: Counter[str] = Counter()
            self._faults = 0

    def served(self, key: str) -> None:
        with self._lock:
            self._endpoints[key] += 1

    def rejected(self, code: str) -> None:
        with self._lock:
            self._rejected[code] += 1

    def fault(self) -> None:
        with self._lock:
            self._faults += 1

    def as_json(self) -> dict[str, Any]:
        with self._lock:
            endpoints = dict(sorted(self._endpoints.items()))
            identity = sum(n for k, n in endpoints.items() if k.endswith(" /identity/oauth/token"))
            return {
                "total": sum(endpoints.values()),
                "identity": identity,
                "rest": sum(endpoints.values()) - identity,
                "endpoints": endpoints,
                "rejected": dict(sorted(self._rejected.items())),
                "faults": self._faults,
            }
