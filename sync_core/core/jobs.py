"""A chunked job's records (design §6): the job and its chunks, as small typed models.

A job is long work (initial sync, field backfill) cut into chunks that workers on any instance
process one queue message at a time; the state store keeps one row per job and one per chunk.
A chunk moves ``pending`` → ``running`` (claimed by one worker until ``lease_until``) → ``done``
(its result stored with the mark). A running chunk whose lease has passed may be claimed again:
its worker died. Pure: no I/O, no clock.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class JobState(StrEnum):
    RUNNING = "running"  # chunks are being processed
    DONE = "done"  # every chunk done and the kind's completion ran


class ChunkState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


class JobRecord(BaseModel):
    """One job: its kind (the registry key), its parameters and how many chunks it was cut into."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str
    params: dict[str, Any] = Field(default_factory=dict)
    chunks: int = 0
    planned: bool = False  # every chunk written and enqueued; only then can the job complete
    state: JobState = JobState.RUNNING
    created_at: AwareDatetime
    finished_at: AwareDatetime | None = None
    result: dict[str, Any] = Field(default_factory=dict)
    etag: str | None = None


class ChunkRecord(BaseModel):
    """One unit of a job's work: ``payload`` says what (e.g. the Marketo ids it covers)."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    index: int = Field(ge=0)
    payload: dict[str, Any] = Field(default_factory=dict)
    state: ChunkState = ChunkState.PENDING
    owner: str | None = None
    lease_until: AwareDatetime | None = None
    attempts: int = 0  # claims so far (a redelivered or retried chunk is claimed again)
    error: str | None = None  # the last attempt's failure, for the status view
    result: dict[str, Any] = Field(default_factory=dict)
    done_at: AwareDatetime | None = None
    etag: str | None = None

    def claimable(self, now: datetime) -> bool:
        """Pending, or running under a lease that has passed (its worker died)."""
        if self.state is ChunkState.PENDING:
            return True
        return self.state is ChunkState.RUNNING and (self.lease_until is None or self.lease_until <= now)


class JobProgress(BaseModel):
    """Chunks per state, and the sum of the done chunks' numeric results."""

    job: JobRecord
    pending: int = 0
    running: int = 0
    done: int = 0
    totals: dict[str, int] = Field(default_factory=dict)
    errors: list[str] = Field(default_factory=list)  # last error of chunks not done (a few)

    @property
    def complete(self) -> bool:
        return self.job.planned and self.done >= self.job.chunks
