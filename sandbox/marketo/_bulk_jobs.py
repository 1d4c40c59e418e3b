"""Bulk extract jobs and their life cycle in simulated time: one queue for every export kind.

Owns the job records (``exportId``, owner, status times, the finished file) and the rules of
the real service's queue: Created → Queued → Processing → Completed, or Canceled / Failed;
at most ``bulk_max_processing`` jobs Processing and ``bulk_max_queued`` queued-or-processing
(1029 "Too many jobs in queue"); the daily allocation of export bytes, counted on the US Central
day a file was finished (1029 "Export daily quota …MB exceeded"); files kept 7 days, job status
30 days; a job seen only by the API user who created it.

Time is the instance's injected clock. Nothing runs in the background: ``advance()`` replays,
in time order, every start and finish due by now, and the app calls it before serving each
request (and before each in-process write), so a job's file holds the database as it was when
the job started Processing. Knows nothing of HTTP, CSV or the request envelope: what a file
holds comes from the ``build`` callable a job is created with.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sandbox.marketo._envelope import MarketoError
from sandbox.marketo._limits import central_day
from sandbox.marketo._options import MarketoOptions
from sandbox.marketo._schema import format_epoch

STATUSES = ("Created", "Queued", "Processing", "Canceled", "Completed", "Failed")
FILE_KEPT = timedelta(days=7).total_seconds()  # files, and the job lists, cover seven days
STATUS_KEPT = timedelta(days=30).total_seconds()  # status stays readable 30 days after the end
MB = 1024 * 1024

Build = Callable[[], tuple[bytes, int]]  # the file's bytes and its number of records


@dataclass
class ExportJob:
    export_id: str
    kind: str  # "leads" | "activities"
    owner: str  # the API user (client id) that created it
    format: str
    build: Build
    created_at: float
    status: str = "Created"
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    file: bytes | None = None  # set when Processing starts; readable once Completed
    records: int = 0
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The status object of ``create``/``enqueue``/``status``/``cancel`` and the job lists."""
        item: dict[str, Any] = {
            "exportId": self.export_id,
            "format": self.format,
            "status": self.status,
            "createdAt": format_epoch(self.created_at),
        }
        for name, moment in (("queuedAt", self.queued_at), ("startedAt", self.started_at)):
            if moment is not None:
                item[name] = format_epoch(moment)
        if self.status in ("Completed", "Failed") and self.finished_at is not None:
            item["finishedAt"] = format_epoch(self.finished_at)
        if self.status == "Completed" and self.file is not None:
            item["numberOfRecords"] = self.records
            item["fileSize"] = len(self.file)
            item["fileChecksum"] = "sha256:" + hashlib.sha256(self.file).hexdigest()
        if self.status == "Failed" and self.error:
            item["errorMsg"] = self.error
        return item


class ExportQueue:
    """Every export job of the instance, behind one lock."""

    def __init__(self, options: MarketoOptions, clock: Callable[[], float]) -> None:
        self._options = options
        self._clock = clock
        self._lock = threading.RLock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._jobs: dict[str, ExportJob] = {}
            self._queue: list[ExportJob] = []  # Queued, first in first out
            self._processing: list[ExportJob] = []
            self._free_since: list[float] = [float("-inf")] * self._options.bulk_max_processing

    # ---- the API's operations (each raises MarketoError the way the service answers) ------

    def create(self, kind: str, owner: str, fmt: str, build: Build) -> ExportJob:
        with self._lock:
            self.advance()
            self._check_quota()
            job = ExportJob(str(uuid.uuid4()), kind, owner, fmt, build, created_at=self._clock())
            self._jobs[job.export_id] = job
            return job

    def enqueue(self, kind: str, owner: str, export_id: str) -> ExportJob:
        with self._lock:
            self.advance()
            job = self.get(kind, owner, export_id)
            if job.status in ("Queued", "Processing"):
                raise MarketoError("1029", "Job already queued")
            if job.status != "Created":
                raise MarketoError("1003", f"Job is in '{job.status}' status and cannot be queued")
            self._check_quota()
            if len(self._queue) + len(self._processing) >= self._options.bulk_max_queued:
                raise MarketoError("1029", "Too many jobs in queue")
            job.status, job.queued_at = "Queued", self._clock()
            self._queue.append(job)  # a free slot takes it from the next request on
            return job

    def cancel(self, kind: str, owner: str, export_id: str) -> ExportJob:
        with self._lock:
            self.advance()
            job = self.get(kind, owner, export_id)
            if job.status not in ("Created", "Queued", "Processing"):
                raise MarketoError("1003", f"Job is in '{job.status}' status and cannot be canceled")
            self._stop(job, "Canceled", self._clock())
            self.advance()
            return job

    def fail(self, export_id: str, message: str = "Export failed") -> ExportJob:
        """Make a queued or processing job fail, as the real service sometimes does (tests)."""
        with self._lock:
            self.advance()
            job = self._jobs[export_id]
            if job.status not in ("Queued", "Processing"):
                raise ValueError(f"job {export_id} is {job.status}, not Queued or Processing")
            self._stop(job, "Failed", self._clock())
            job.error = message
            self.advance()
            return job

    def get(self, kind: str, owner: str, export_id: str) -> ExportJob:
        """A job this user may see; an unknown, foreign or expired one is "not found" (1003)."""
        with self._lock:
            self.advance()
            job = self._jobs.get(export_id)
            if job is None or job.kind != kind or job.owner != owner:
                raise MarketoError("1003", f"Export job '{export_id}' not found")
            return job

    def listed(self, kind: str, owner: str, statuses: set[str] | None) -> list[ExportJob]:
        """This user's jobs of ``kind`` created in the past seven days, oldest first."""
        with self._lock:
            self.advance()
            oldest = self._clock() - FILE_KEPT
            return [
                j
                for j in self._jobs.values()
                if j.kind == kind
                and j.owner == owner
                and j.created_at >= oldest
                and (statuses is None or j.status in statuses)
            ]

    def file(self, kind: str, owner: str, export_id: str) -> bytes | None:
        """The finished file, or None (unknown, foreign, not Completed, or past retention)."""
        with self._lock:
            self.advance()
            job = self._jobs.get(export_id)
            if job is None or job.kind != kind or job.owner != owner or job.status != "Completed":
                return None
            if job.finished_at is None or self._clock() - job.finished_at > FILE_KEPT:
                return None
            return job.file

    def used_today(self) -> int:
        """Export bytes finished on the current US Central day."""
        with self._lock:
            today = central_day(self._clock())
            return sum(
                len(j.file or b"")
                for j in self._jobs.values()
                if j.status == "Completed" and j.finished_at is not None and central_day(j.finished_at) == today
            )

    # ---- simulated time ------------------------------------------------------------------

    def advance(self) -> None:
        """Replay every start and finish due by now, earliest first (finishes win ties)."""
        with self._lock:
            now = self._clock()
            while True:
                finish = min(self._processing, key=self._finish_time, default=None)
                start_at = self._next_start()
                if (
                    finish is not None
                    and self._finish_time(finish) <= now
                    and (start_at is None or self._finish_time(finish) <= start_at)
                ):
                    self._stop(finish, "Completed", self._finish_time(finish))
                elif start_at is not None and start_at <= now:
                    self._start(start_at)
                else:
                    break
            self._prune(now)

    def _finish_time(self, job: ExportJob) -> float:
        assert job.started_at is not None
        return job.started_at + self._options.bulk_processing_seconds

    def _next_start(self) -> float | None:
        if not self._queue or not self._free_since:
            return None
        assert self._queue[0].queued_at is not None
        return max(self._queue[0].queued_at, min(self._free_since))

    def _start(self, when: float) -> None:
        job = self._queue.pop(0)
        self._free_since.remove(min(self._free_since))
        job.status, job.started_at = "Processing", when
        try:
            job.file, job.records = job.build()  # the database as it is when processing starts
        except Exception as exc:  # a simulator bug fails the job, as a real failure would
            self._free_since.append(when)
            job.status, job.finished_at, job.error = "Failed", when, repr(exc)
            return
        self._processing.append(job)

    def _stop(self, job: ExportJob, status: str, when: float) -> None:
        if job in self._processing:
            self._processing.remove(job)
            self._free_since.append(when)
        if job in self._queue:
            self._queue.remove(job)
        job.status = status
        if status != "Canceled":
            job.finished_at = when
        if status != "Completed":
            job.file = None

    def _prune(self, now: float) -> None:
        for export_id, job in list(self._jobs.items()):
            ended = job.finished_at if job.finished_at is not None else job.created_at
            if job.status not in ("Queued", "Processing") and now - ended > STATUS_KEPT:
                del self._jobs[export_id]

    def _check_quota(self) -> None:
        limit = self._options.bulk_daily_quota_mb
        if self._options.limits and self.used_today() >= limit * MB:
            raise MarketoError("1029", f"Export daily quota {limit}MB exceeded")
