"""``initial-sync --apply`` on the job queue: the plan's chunks as an ``initial-sync`` job (``jobs``).

When a job queue is configured the apply does not work through the chunks itself: it cuts every
plan chunk not done yet into parts of ``core.golive.QUEUE_CHUNK`` work items and starts one job of
this kind, a chunk row and a queue message per part, which the queue trigger ``job_chunk`` works
through on every instance. The snapshot stays on the planning machine: a part's payload carries
ids only (``apply.chunk_payload``: its kind, entity, Marketo ids and Dataverse ids; never a value,
≤ 64 KiB), and its worker reads those records again by id from both services
(``apply.read_items``) and does the same work as the in-process apply (``ChunkWork.apply_chunk``),
with the values as they are now. A part claimed before (``attempts`` > 1: its worker died or lost
its lease) or cut from a plan chunk started in-process runs as *resumed*: what it did already is
looked up first, so nothing is created twice; the framework's claim marks it done once however
many times its message comes. The calls are background work (``SYNC_BACKGROUND_SHARE``), as a
backfill's. When the last part is done, ``complete`` marks the go-live job row done with the summed
outcome and sets the cycle's Marketo cursor back to the plan's moment (``apply.rewind_marketo_changes``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sync_core import jobs
from sync_core.core.golive import (
    QUEUE_CHUNK,
    ChunkCost,
    InitialPolicy,
    JobState,
    JobStatus,
    MarketoOnlyPolicy,
    WorkKind,
    chunk_cost,
    reread_cost,
)
from sync_core.core.jobs import ChunkRecord, JobProgress, JobRecord
from sync_core.cycle.engine import MARKETO_CHANGES
from sync_core.golive.apply import Checkpoints, ChunkWork, JobConflictError, chunk_payload, rewind_marketo_changes
from sync_core.golive.snapshot import Snapshot
from sync_core.http.ratebudget import background_work
from sync_core.jobs import JobKind
from sync_core.wiring.services import Services

__all__ = ["KIND", "PartCost", "part_costs", "payloads", "queue_calls", "queue_job_id", "queue_params"]

log = logging.getLogger(__name__)

KIND = "initial-sync"
_TRIES = 5


def queue_job_id(state: JobState) -> str:
    """The queue job of a go-live job: one per plan, named before it is written (so an apply that
    dies while writing it finds it again, never starts a second one)."""
    return f"initial-sync-{state.job_id}"


def queue_params(state: JobState, snapshot: Snapshot) -> dict[str, Any]:
    """What every part's worker needs besides its ids: the go-live job, its policy, the Marketo
    paging token of the plan's moment (for the rewind at the end). No person data."""
    stored = snapshot.meta("policy") or {}
    return {
        "golive_job": state.job_id,
        "policy": {
            "lead_winner": stored.get("SYNC_INITIAL_LEAD_WINNER", "marketo"),
            "contact_winner": stored.get("SYNC_INITIAL_CONTACT_WINNER", "dynamics"),
            "marketo_only": stored.get("SYNC_INITIAL_MARKETO_ONLY", "leave"),
        },
        "marketo_changes": (snapshot.meta("cursors") or {}).get(MARKETO_CHANGES),
    }


def payloads(state: JobState, snapshot: Snapshot, *, part: int = QUEUE_CHUNK) -> Iterator[dict[str, Any]]:
    """One payload per ``part`` work items of every plan chunk not done yet, in order; the parts of a
    chunk started in-process (and not done) are marked ``resumed``."""
    for number in range(state.chunks):
        if state.is_done(number):
            continue
        items = snapshot.chunk(number)
        resumed = state.is_started(number)
        for start in range(0, len(items), part):
            extra: dict[str, Any] = {"plan_chunk": number}
            if resumed:
                extra["resumed"] = True
            yield chunk_payload(items[start : start + part], **extra)


@dataclass(frozen=True)
class PartCost:
    """A queued part's calls: its plan chunk's writes for its own items, as their own batches, and
    its records read again by id (Marketo 300 a call, Dataverse 100 a ``$filter``)."""

    writes: ChunkCost
    reads: ChunkCost

    @property
    def total(self) -> ChunkCost:
        both = ChunkCost()
        both.add(self.writes)
        both.add(self.reads)
        return both


def part_costs(snapshot: Snapshot, *, batch_size: int, part: int = QUEUE_CHUNK) -> list[PartCost]:
    """Every part the queued apply would send, in order (every plan chunk cut into ``part`` items)."""
    query = (
        "SELECT kind, count(*), coalesce(sum(writes_dynamics), 0) FROM (SELECT chunk, kind, writes_dynamics, "
        "(row_number() OVER (PARTITION BY chunk ORDER BY seq) - 1) / ? AS part FROM work) GROUP BY chunk, part"
    )
    return [
        PartCost(
            chunk_cost(WorkKind(kind), int(items), int(flagged), batch_size=batch_size),
            reread_cost(WorkKind(kind), int(items)),
        )
        for kind, items, flagged in snapshot.db.execute(query, (part,))
    ]


def queue_calls(parts: Iterable[PartCost]) -> dict[str, dict[str, int]]:
    """The apply's calls on the job queue (``apply_queue``: the parts' writes plus their re-reads)
    and the re-reads alone (``queue_reread``)."""
    apply = {"marketo": 0, "dataverse": 0}
    reread = {"marketo": 0, "dataverse": 0}
    for cost in parts:
        reread["marketo"] += cost.reads.marketo_calls
        reread["dataverse"] += cost.reads.dataverse_calls
        apply["marketo"] += cost.writes.marketo_calls + cost.reads.marketo_calls
        apply["dataverse"] += cost.writes.dataverse_calls + cost.reads.dataverse_calls
    return {"apply_queue": apply, "queue_reread": reread}


def _policy(params: Mapping[str, Any]) -> InitialPolicy:
    stored = params.get("policy") or {}
    return InitialPolicy(
        lead_winner=stored.get("lead_winner", "marketo"),
        contact_winner=stored.get("contact_winner", "dynamics"),
        marketo_only=MarketoOnlyPolicy(stored.get("marketo_only", "leave")),
    )


# The go-live jobs' ``ChunkWork`` in this process, by go-live job id: the parts an instance runs
# share one, as the in-process apply's chunks do, so the calling user, the owners and accounts
# looked up and the open failures are read once an instance, not once a part. A few jobs at most
# (one runs at a time; an older one is dropped first).
_WORKS: dict[str, ChunkWork] = {}
_WORKS_LOCK = threading.Lock()
_WORKS_KEPT = 4


def _work(services: Services, job: JobRecord) -> ChunkWork:
    key = str(job.params["golive_job"])
    with _WORKS_LOCK:
        work = _WORKS.pop(key, None)
        if work is None or work.services is not services:
            work = ChunkWork(services, job_id=key, policy=_policy(job.params))
        while len(_WORKS) >= _WORKS_KEPT:
            del _WORKS[next(iter(_WORKS))]
        _WORKS[key] = work  # the most recent last
        return work


def run_chunk(services: Services, job: JobRecord, chunk: ChunkRecord) -> Mapping[str, int]:
    """One part: its records read again by id, then the in-process apply's chunk work (this
    instance's ``ChunkWork`` for the job)."""
    payload = chunk.payload
    resumed = chunk.attempts > 1 or bool(payload.get("resumed"))
    work = _work(services, job)
    with background_work():
        return work.apply_chunk(f"q{chunk.index}", payload, resumed=resumed)


def complete(services: Services, job: JobRecord, progress: JobProgress) -> None:
    """Every part done: the go-live job row is done, with the outcome; Marketo changes are re-read."""
    rewind_marketo_changes(services, job.params.get("marketo_changes"))
    for _ in range(_TRIES):
        checkpoints = Checkpoints(services)
        state = checkpoints.load()
        if state is None or state.queue_job != job.id or state.status is JobStatus.DONE:
            return
        outcome = dict(state.outcome)
        for key, value in progress.totals.items():
            outcome[key] = outcome.get(key, 0) + value
        try:
            checkpoints.save(
                state.model_copy(
                    update={"status": JobStatus.DONE, "outcome": outcome, "finished_at": datetime.now(UTC).isoformat()}
                )
            )
        except JobConflictError:
            continue  # the apply command wrote the row meanwhile: read it again
        log.info("initial sync %s: done on the job queue (%d chunks)", state.job_id, job.chunks)
        return


jobs.register(JobKind(KIND, run_chunk, complete))
