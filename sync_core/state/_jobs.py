"""The job half of ``RowStateStore``: a chunked job's rows (``core.jobs``) in ``{prefix}jobs``.

    jobs    PK job / RK {job id}                   one row per job; ETag-conditional updates
            PK {job id} / RK {chunk index:07d}     one row per chunk: a job's chunks are one
                                                   partition, read a page (1,000) at a time

A chunk's claim and its done mark are ETag-conditional replaces, so of two workers holding the
same chunk only one writes each (``StateConflictError`` for the other). Payloads and results are
JSON in one property (≤ 64 KiB). It decides nothing about what a job does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import unquote

from sync_core.core.jobs import ChunkRecord, ChunkState, JobRecord, JobState
from sync_core.state._keys import RowOp, as_utc, check_entity, encode_key, to_json
from sync_core.state._layout import PAGE, RowPlumbing, page_size
from sync_core.state._rows import StoredRow

JOB = "job"
_CHUNK_DIGITS = 7  # up to 10 million chunks a job; keys sort by index


def _chunk_key(index: int) -> str:
    return f"{index:0{_CHUNK_DIGITS}d}"


class JobRows(RowPlumbing):
    """Jobs and their chunks (see the module docstring)."""

    def put_job(self, job: JobRecord) -> JobRecord:
        """Create the job (``etag`` None; conflict if it exists) or replace it if its ETag still matches."""
        row = encode_key(job.id)
        props = {
            "kind": job.kind,
            "state": job.state.value,
            "created_at": job.created_at,
            "finished_at": job.finished_at,
            "data": to_json(job.model_dump(mode="json", exclude={"etag"}), what=f"job {job.id!r}"),
        }
        check_entity(JOB, row, props, what=f"job {job.id!r}")
        if job.etag is None:
            etag = self._rows.insert_row(self.tables.jobs, JOB, row, props)
        else:
            etag = self._rows.replace_row(self.tables.jobs, JOB, row, props, etag=job.etag)
        return job.model_copy(update={"etag": etag})

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._rows.get_row(self.tables.jobs, JOB, encode_key(job_id))
        return None if row is None else _job_from(row)

    def list_jobs(self, *, limit: int = 20) -> list[JobRecord]:
        """Jobs, newest first (at most one page of them is read per call)."""
        rows = self._rows.scan_rows(self.tables.jobs, partition=JOB, page_size=PAGE, max_pages=1)
        jobs = [_job_from(row) for row in rows]
        return sorted(jobs, key=lambda job: job.created_at, reverse=True)[: page_size(limit)]

    def add_chunks(self, chunks: Sequence[ChunkRecord]) -> None:
        """Write new chunks (upsert: adding the same chunk again changes nothing), ≤ 100 a transaction."""
        by_job: dict[str, list[list[RowOp]]] = {}
        for chunk in chunks:
            row = _chunk_key(chunk.index)
            props = _chunk_props(chunk)
            check_entity(chunk.job_id, row, props, what=f"chunk {chunk.index} of job {chunk.job_id!r}")
            by_job.setdefault(chunk.job_id, []).append([RowOp("upsert", row, props)])
        for job_id, groups in by_job.items():
            self._transact(self.tables.jobs, encode_key(job_id), groups)

    def get_chunk(self, job_id: str, index: int) -> ChunkRecord | None:
        row = self._rows.get_row(self.tables.jobs, encode_key(job_id), _chunk_key(index))
        return None if row is None else _chunk_from(row)

    def put_chunk(self, chunk: ChunkRecord) -> ChunkRecord:
        """Replace a stored chunk only if its ETag still matches (``StateConflictError`` otherwise)."""
        if chunk.etag is None:
            raise ValueError("put_chunk needs the chunk the store returned (with its ETag)")
        row = _chunk_key(chunk.index)
        props = _chunk_props(chunk)
        check_entity(chunk.job_id, row, props, what=f"chunk {chunk.index} of job {chunk.job_id!r}")
        etag = self._rows.replace_row(self.tables.jobs, encode_key(chunk.job_id), row, props, etag=chunk.etag)
        return chunk.model_copy(update={"etag": etag})

    def iter_chunks(self, job_id: str) -> Iterator[ChunkRecord]:
        """Every chunk of the job in index order, a page at a time."""
        for row in self._rows.scan_rows(self.tables.jobs, partition=encode_key(job_id), page_size=PAGE):
            yield _chunk_from(row)


def _chunk_props(chunk: ChunkRecord) -> dict[str, Any]:
    return {
        "state": chunk.state.value,
        "owner": chunk.owner,
        "lease_until": chunk.lease_until,
        "attempts": chunk.attempts,
        "error": chunk.error,
        "done_at": chunk.done_at,
        "payload": to_json(chunk.payload, what=f"payload of chunk {chunk.index}"),
        "result": to_json(chunk.result, what=f"result of chunk {chunk.index}"),
    }


def _job_from(row: StoredRow) -> JobRecord:
    data = json.loads(row.props["data"])
    return JobRecord.model_validate({**data, "state": JobState(row.props["state"]), "etag": row.etag})


def _chunk_from(row: StoredRow) -> ChunkRecord:
    props = row.props
    lease_until, done_at = props.get("lease_until"), props.get("done_at")
    return ChunkRecord(
        job_id=_job_id_of(row),
        index=int(row.row),
        payload=json.loads(props["payload"]),
        state=ChunkState(props["state"]),
        owner=props.get("owner"),
        lease_until=None if lease_until is None else as_utc(lease_until),
        attempts=int(props.get("attempts", 0)),
        error=props.get("error"),
        result=json.loads(props.get("result") or "{}"),
        done_at=None if done_at is None else as_utc(done_at),
        etag=row.etag,
    )


def _job_id_of(row: StoredRow) -> str:
    return unquote(row.partition)  # the partition is encode_key(job id)
