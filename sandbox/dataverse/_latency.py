"""The simulated service time of each Dataverse request, from the profile (``sandbox._profile``).

The app charges each operation as it serves it (a create, an UpdateMultiple of n targets, a
page of n rows …), on the thread serving the request, $batch parts included; ``wait`` then
sleeps the request's total (the per-request overhead plus the charges) on that thread. The app
calls ``wait`` inside service protection, so the sleep holds a concurrency slot and counts as
execution time, as a slow request does on the real service. Never holds a lock while sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from sandbox._profile import DataverseProfile


class Meter:
    def __init__(self, profile: DataverseProfile, sleep: Callable[[float], None]) -> None:
        self.profile = profile
        self._sleep = sleep
        self._local = threading.local()
        p = profile
        self._per_record = {
            "create": p.create_ms_per_record,
            "update": p.update_ms_per_record,
            "upsert": p.update_ms_per_record,
            "delete": p.update_ms_per_record,
            "retrieve": p.read_ms_per_record,
            "query": p.read_ms_per_record,
            "delta": p.read_ms_per_record,
            "CreateMultiple": p.create_multiple_ms_per_record,
            "UpdateMultiple": p.update_multiple_ms_per_record,
            "UpsertMultiple": p.upsert_multiple_ms_per_record,
            "QualifyLead": p.qualify_ms,
        }

    def start(self) -> None:
        """A new request on this thread: its service time starts at the per-request overhead."""
        self._local.ms = self.profile.request_overhead_ms

    def charge(self, operation: str, records: int = 1) -> None:
        """Add ``records`` * the per-record cost of ``operation`` to this thread's request."""
        if hasattr(self._local, "ms"):
            self._local.ms += records * self._per_record.get(operation, 0.0)

    def wait(self) -> float:
        """Sleep this thread's request's service time (scaled); the seconds slept."""
        seconds = self.profile.scaled(getattr(self._local, "ms", 0.0)) / 1000.0
        self._local.__dict__.pop("ms", None)
        if seconds > 0:
            self._sleep(seconds)
        return seconds
