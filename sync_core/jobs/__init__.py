"""Chunked jobs over the job queue (design §6): long work split into chunks any instance may run.

The API, small on purpose (initial sync and field backfill plug into it):

- ``JobKind(name, run_chunk, complete=None)`` and ``register(kind)``: a kind of job. ``run_chunk(
  services, job, chunk) -> dict[str, int]`` does one chunk's work and returns its counts; it must
  be **idempotent** (a chunk whose worker died after writing is run again) and should take well
  under the host's ``functionTimeout`` (a chunk is a few API calls of bulk work). ``complete(
  services, job, progress)`` runs once, after the last chunk is done. Kinds register at import;
  ``sync_core.worker`` imports every kind.
- ``start_job(services, kind, params, payloads, now=…)``: writes the job row, one chunk row per
  payload (a JSON object ≤ 64 KiB, e.g. the ids the chunk covers) and one queue message per chunk
  (``{"job": id, "chunk": index}``); returns the job. The queue is ``services.queue``.
- ``process_message(services, body, owner=…)``: what the queue trigger calls for each message.
  Claims the chunk (an ETag-conditional replace: ``pending``, or ``running`` under a lease that
  has passed → ``running``, owner, lease), runs it, then writes ``done`` with its result under the
  claim's ETag. So a chunk is marked done exactly once: a second delivery of its message finds it
  done and is dropped; one that finds it running under a live lease is sent again for when the
  lease ends (``deferred``); a worker that died mid-chunk leaves a lease that passes, and the
  redelivered message (visibility timeout) claims it again. The work of a chunk may thus run
  twice only if a worker dies between its writes and its mark, which idempotent work makes
  harmless. A chunk that raises is released (``pending``, with the error) and the error re-raised,
  so the host retries it and, after ``maxDequeueCount`` (host.json), moves it to the poison queue.
  Except a chunk a service throttled beyond its client's patience (``RateLimitedError``: 429, 606,
  615; ``QuotaExceededError``: Marketo's daily quota): released the same way, but its message is
  sent again for when the service asks (``Retry-After``, or ``THROTTLED_WAIT`` /
  ``QUOTA_WAIT``) and the delivery ends well (``throttled``), so waiting for a service never uses
  up the deliveries that send a broken chunk to the poison queue.
- ``job_progress(store, job_id)``, ``finish_if_complete(services, job_id)`` (what the worker of the
  last chunk does; a follower calls it too, in case that worker died before it),
  ``resume_job(services, job_id, now=…)`` (enqueue again every chunk not done and not held: after
  poison or a lost message), ``run_inline(services, job_id)`` (no queue: run the chunks in this
  process, the same ``process_message`` path), ``follow(services, job_id, show=…)`` (what a command
  does while the queue works: ``show`` each progress until the job is done, or until chunks went to
  the poison queue and none runs any more).

It does not know what any kind does, and messages and rows carry ids and counts, never person data.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sync_core.core.errors import QuotaExceededError, RateLimitedError, StateConflictError
from sync_core.core.jobs import ChunkRecord, ChunkState, JobProgress, JobRecord, JobState
from sync_core.state import StateStore
from sync_core.state.queue import JobQueue
from sync_core.wiring.services import Services

__all__ = [
    "CHUNK_LEASE",
    "JobKind",
    "JobProgress",
    "finish_if_complete",
    "follow",
    "job_progress",
    "kinds",
    "process_message",
    "register",
    "resume_job",
    "run_inline",
    "start_job",
]

log = logging.getLogger(__name__)

CHUNK_LEASE = timedelta(minutes=10)  # a chunk's claim; well inside functionTimeout (30 min)
_WRITE_BATCH = 100  # chunk rows per transaction, messages sent after their rows exist
_ERROR_CHARS = 300
THROTTLED_WAIT = 30  # seconds before a throttled chunk's next try when the service gave no Retry-After
QUOTA_WAIT = 3600  # the same after Marketo's daily quota ran out (it resets at midnight, US Central)

RunChunk = Callable[[Services, JobRecord, ChunkRecord], Mapping[str, int]]
Complete = Callable[[Services, JobRecord, JobProgress], None]


@dataclass(frozen=True)
class JobKind:
    name: str
    run_chunk: RunChunk
    complete: Complete | None = None


_KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    """Make ``kind`` known to ``process_message`` (registering the same name again replaces it)."""
    _KINDS[kind.name] = kind
    return kind


def kinds() -> dict[str, JobKind]:
    return dict(_KINDS)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def message_body(job_id: str, index: int) -> str:
    return json.dumps({"job": job_id, "chunk": index}, separators=(",", ":"))


def start_job(
    services: Services,
    kind: str,
    params: Mapping[str, Any],
    payloads: Iterable[Mapping[str, Any]],
    *,
    now: datetime | None = None,
    job_id: str | None = None,
    enqueue: bool = True,
) -> JobRecord:
    """Write the job, its chunks and (``enqueue``) their messages; the job, ``planned``."""
    if kind not in _KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    if enqueue and services.queue is None:
        raise ValueError("no job queue is configured (SYNC_QUEUE_CONNECTION / SYNC_QUEUE_ENDPOINT)")
    store = services.store
    job = store.put_job(
        JobRecord(id=job_id or uuid.uuid4().hex, kind=kind, params=dict(params), created_at=now or _utcnow())
    )
    count = 0
    batch: list[ChunkRecord] = []

    def flush() -> None:
        store.add_chunks(batch)
        if enqueue and services.queue is not None:
            for chunk in batch:
                services.queue.send(message_body(job.id, chunk.index))
        batch.clear()

    for payload in payloads:
        batch.append(ChunkRecord(job_id=job.id, index=count, payload=dict(payload)))
        count += 1
        if len(batch) >= _WRITE_BATCH:
            flush()
    flush()
    job = store.put_job(job.model_copy(update={"chunks": count, "planned": True}))
    log.info("job %s (%s): %d chunks %s", job.id, kind, count, "enqueued" if enqueue else "written")
    if count == 0:
        finish_if_complete(services, job.id, now=now or _utcnow())
        job = store.get_job(job.id) or job
    return job


def process_message(
    services: Services,
    body: str | bytes,
    *,
    owner: str,
    now: Callable[[], datetime] = _utcnow,
    lease: timedelta = CHUNK_LEASE,
) -> str:
    """Handle one chunk message: ``done``, ``duplicate`` (done already), ``deferred`` (held by a live
    worker: sent again for when its lease ends), ``throttled`` (a service asked to wait: released and
    sent again for then) or ``unknown`` (no such job or chunk: dropped). Raises what the chunk's
    work raised otherwise (or when there is no queue to send it to), after releasing the chunk."""
    try:
        message = json.loads(body)
        job_id, index = str(message["job"]), int(message["chunk"])
    except (ValueError, KeyError, TypeError):
        log.error("job message dropped: not a chunk message")
        return "unknown"
    store = services.store
    job = store.get_job(job_id)
    chunk = store.get_chunk(job_id, index)
    if job is None or chunk is None or job.kind not in _KINDS:
        log.error("job message dropped: job %s chunk %d unknown (or kind not registered)", job_id, index)
        return "unknown"
    if chunk.state is ChunkState.DONE:
        return "duplicate"
    started = now()
    if not chunk.claimable(started):
        return _defer(services, chunk, started)
    try:
        claimed = store.put_chunk(
            chunk.model_copy(
                update={
                    "state": ChunkState.RUNNING,
                    "owner": owner,
                    "lease_until": started + lease,
                    "attempts": chunk.attempts + 1,
                }
            )
        )
    except StateConflictError:  # another worker claimed it between our read and our write
        current = store.get_chunk(job_id, index)
        if current is None or current.state is ChunkState.DONE:
            return "duplicate"
        return _defer(services, current, started)
    try:
        counts = dict(_KINDS[job.kind].run_chunk(services, job, claimed))
    except (RateLimitedError, QuotaExceededError) as err:
        if services.queue is None:
            _release(store, claimed, err)
            raise
        return _throttled(services.queue, store, claimed, err)
    except Exception as err:
        _release(store, claimed, err)
        raise
    try:
        store.put_chunk(
            claimed.model_copy(
                update={
                    "state": ChunkState.DONE,
                    "result": counts,
                    "done_at": now(),
                    "error": None,
                    "lease_until": None,
                }
            )
        )
    except StateConflictError:
        # Our lease passed and another worker claimed the chunk: it will mark it (the work is idempotent).
        log.warning("job %s chunk %d: lease lost before the done mark; left to its new owner", job_id, index)
        return "deferred"
    finish_if_complete(services, job_id, now=now())
    return "done"


def _defer(services: Services, chunk: ChunkRecord, now: datetime) -> str:
    wait = 1 if chunk.lease_until is None else max(1, int((chunk.lease_until - now).total_seconds()) + 1)
    if services.queue is not None:
        services.queue.send(message_body(chunk.job_id, chunk.index), delay_seconds=wait)
    return "deferred"


def _throttled(
    queue: JobQueue, store: StateStore, claimed: ChunkRecord, err: RateLimitedError | QuotaExceededError
) -> str:
    if isinstance(err, QuotaExceededError):
        wait = QUOTA_WAIT
    else:
        wait = THROTTLED_WAIT if err.retry_after is None else max(1, math.ceil(err.retry_after))
    _release(store, claimed, err, note=f"sent again in {wait} s")
    queue.send(message_body(claimed.job_id, claimed.index), delay_seconds=wait)
    return "throttled"


def _release(store: StateStore, claimed: ChunkRecord, err: Exception, *, note: str = "") -> None:
    text = f"{type(err).__name__}: {err}"[: _ERROR_CHARS - len(note) - 2] + (f"; {note}" if note else "")
    with suppress(StateConflictError):  # taken over already
        store.put_chunk(
            claimed.model_copy(update={"state": ChunkState.PENDING, "owner": None, "lease_until": None, "error": text})
        )
    log.warning("job %s chunk %d failed (attempt %d): %s", claimed.job_id, claimed.index, claimed.attempts, text)


def job_progress(store: StateStore, job_id: str, *, max_errors: int = 5) -> JobProgress | None:
    job = store.get_job(job_id)
    if job is None:
        return None
    progress = JobProgress(job=job)
    for chunk in store.iter_chunks(job_id):
        if chunk.state is ChunkState.DONE:
            progress.done += 1
            for name, value in chunk.result.items():
                if isinstance(value, int):
                    progress.totals[name] = progress.totals.get(name, 0) + value
        elif chunk.state is ChunkState.RUNNING:
            progress.running += 1
        else:
            progress.pending += 1
        if chunk.state is not ChunkState.DONE and chunk.error and len(progress.errors) < max_errors:
            progress.errors.append(f"chunk {chunk.index}: {chunk.error}")
    return progress


def finish_if_complete(services: Services, job_id: str, *, now: datetime | None = None) -> None:
    """After a chunk's done mark: if every chunk is done, mark the job done (once, by ETag) and run
    its kind's completion."""
    progress = job_progress(services.store, job_id)
    if progress is None or not progress.complete or progress.job.state is JobState.DONE:
        return
    try:
        job = services.store.put_job(
            progress.job.model_copy(
                update={"state": JobState.DONE, "finished_at": now or _utcnow(), "result": progress.totals}
            )
        )
    except StateConflictError:
        return  # another worker's last chunk completed it
    kind = _KINDS.get(job.kind)
    if kind is not None and kind.complete is not None:
        kind.complete(services, job, progress)
    log.info("job %s (%s) done: %d chunks", job.id, job.kind, job.chunks)


def resume_job(services: Services, job_id: str, *, now: datetime | None = None) -> int:
    """Enqueue again every chunk that is not done and not held by a live worker; how many."""
    if services.queue is None:
        raise ValueError("no job queue is configured (SYNC_QUEUE_CONNECTION / SYNC_QUEUE_ENDPOINT)")
    at = now or _utcnow()
    sent = 0
    for chunk in services.store.iter_chunks(job_id):
        if chunk.state is not ChunkState.DONE and chunk.claimable(at):
            services.queue.send(message_body(job_id, chunk.index))
            sent += 1
    finish_if_complete(services, job_id, now=at)
    return sent


def run_inline(services: Services, job_id: str, *, owner: str = "inline") -> JobProgress | None:
    """Run the job's claimable chunks in this process (no queue), through ``process_message``."""
    for chunk in list(services.store.iter_chunks(job_id)):
        if chunk.state is not ChunkState.DONE:
            process_message(services, message_body(job_id, chunk.index), owner=owner)
    return job_progress(services.store, job_id)


def follow(
    services: Services,
    job_id: str,
    *,
    show: Callable[[JobProgress], None],
    poll: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> JobProgress:
    """``show`` the job's progress every ``poll`` seconds until every chunk is done (then the job is
    finished here if the last chunk's worker died before it), or until chunks went to the poison
    queue and none is running any more (the progress returned is then not ``complete``)."""
    poisoned_before = _poisoned(services)
    while True:
        progress = job_progress(services.store, job_id)
        if progress is None:
            raise ValueError(f"job {job_id!r} is not in the state store")
        show(progress)
        if progress.complete:
            if progress.job.state is not JobState.DONE:  # the last chunk's worker is finishing it (or died)
                finish_if_complete(services, job_id)
                continue
            return progress
        if progress.running == 0 and progress.errors and _poisoned(services) > poisoned_before:
            return progress
        sleep(poll)


def _poisoned(services: Services) -> int:
    return 0 if services.queue is None else services.queue.poison_count()
