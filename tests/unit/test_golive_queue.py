"""The initial sync on the job queue, its small parts: a chunk's payload is ids only and fits one
chunk row (64 KiB) at the part size used, the plan's chunks are cut into parts (a chunk started
in-process goes as resumed parts), what the re-reads cost, and the status view counting the queue
job's chunks."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sync_core.core.golive import (
    JOB_CURSOR,
    QUEUE_CHUNK,
    JobState,
    JobStatus,
    WorkKind,
    chunk_cost,
    reread_cost,
)
from sync_core.core.jobs import ChunkRecord, ChunkState, JobRecord
from sync_core.core.models import Cursor
from sync_core.golive.apply import chunk_payload
from sync_core.golive.queued import part_costs, payloads, queue_calls
from sync_core.golive.snapshot import Snapshot, WorkItem
from sync_core.state import MemoryStateStore
from sync_core.state._keys import MAX_PROPERTY_BYTES, to_json
from sync_core.status.text import render_text
from sync_core.status.view import build_status

NOW = datetime(2025, 1, 1, tzinfo=UTC)
BIGGEST_ID = 2**31 - 1  # Marketo ids are 32-bit integers: the longest a payload can get


def _person(i: int) -> dict[str, str]:
    return {"id": str(i), "email": f"person{i}@example.com", "firstName": f"Ada{i}", "lastName": f"Lovelace{i}"}


def _record(did: str, i: int) -> dict[str, str]:
    return {"leadid": did, "emailaddress1": f"person{i}@example.com", "firstname": f"Ada{i}", "lastname": "Lovelace"}


def _items(kind: WorkKind, n: int) -> list[WorkItem]:
    items = []
    for i in range(n):
        mid = BIGGEST_ID - i if kind is not WorkKind.PERSON else None
        did = str(uuid.uuid4()) if kind is not WorkKind.LEAD else None
        person = _person(mid) if mid is not None else None
        record = _record(did, i) if did is not None else None
        items.append(WorkItem(kind.value, "lead", mid, did, person, record))
    return items


@pytest.mark.parametrize("kind", list(WorkKind))
def test_a_queue_chunk_payload_is_ids_only_and_fits_a_chunk_row(kind: WorkKind) -> None:
    items = _items(kind, QUEUE_CHUNK)
    payload = chunk_payload(items, plan_chunk=12345, resumed=True)
    text = to_json(payload, what="payload")
    assert len(text.encode("utf-16-le")) <= MAX_PROPERTY_BYTES  # Table Storage counts strings as UTF-16
    assert "@" not in text
    assert "Ada" not in text
    assert "Lovelace" not in text
    assert set(payload) <= {"kind", "entity", "marketo_ids", "dataverse_ids", "plan_chunk", "resumed"}
    if kind is not WorkKind.PERSON:
        assert payload["marketo_ids"] == [item.marketo_id for item in items]
    if kind is not WorkKind.LEAD:
        assert payload["dataverse_ids"] == [item.dataverse_id for item in items]
    # The store's own size check (what Azure Table Storage would refuse) lets it through.
    MemoryStateStore().add_chunks([ChunkRecord(job_id="j", index=0, payload=payload)])


def _snapshot(path: Path) -> Snapshot:
    """Chunk 0: 1,300 links (700 updating Dynamics); chunk 1: 250 persons (200 with an email)."""
    snapshot = Snapshot(path)
    links = [(0, "link", "lead", 1000 + i, str(uuid.uuid4()), int(i < 700)) for i in range(1300)]
    persons = [(1, "person", "contact", None, str(uuid.uuid4()), int(i < 200)) for i in range(250)]
    snapshot.add_work([*links, *persons])
    return snapshot


def test_plan_chunks_go_as_parts_and_a_chunk_started_in_process_goes_resumed(tmp_path: Path) -> None:
    with _snapshot(tmp_path / "s.sqlite") as snapshot:
        state = JobState(job_id="j", snapshot="s", chunks=2).with_started(1)
        parts = list(payloads(state, snapshot))
        assert [(p["plan_chunk"], len(p.get("marketo_ids", p.get("dataverse_ids", [])))) for p in parts] == [
            (0, 600),
            (0, 600),
            (0, 100),
            (1, 250),
        ]
        assert [p.get("resumed", False) for p in parts] == [False, False, False, True]
        assert all(len(p["marketo_ids"]) == len(p["dataverse_ids"]) for p in parts[:3])
        # A chunk done in-process before the queue took over is not enqueued.
        assert [p["plan_chunk"] for p in payloads(state.with_done(0, {}, 1.0), snapshot)] == [1]


def test_queue_calls_are_the_parts_writes_plus_their_rereads(tmp_path: Path) -> None:
    with _snapshot(tmp_path / "s.sqlite") as snapshot:
        calls = queue_calls(part_costs(snapshot, batch_size=1000))
    # Links: parts of 600 (600 updating), 600 (100 updating), 100; persons: one part of 250.
    parts = [(WorkKind.LINK, 600, 600), (WorkKind.LINK, 600, 100), (WorkKind.LINK, 100, 0), (WorkKind.PERSON, 250, 200)]
    writes = [chunk_cost(kind, n, flagged, batch_size=1000) for kind, n, flagged in parts]
    reads = [reread_cost(kind, n) for kind, n, _ in parts]
    assert calls["queue_reread"] == {"marketo": 2 + 2 + 1, "dataverse": 6 + 6 + 1 + 3}
    assert calls["queue_reread"] == {
        "marketo": sum(r.marketo_calls for r in reads),
        "dataverse": sum(r.dataverse_calls for r in reads),
    }
    assert calls["apply_queue"] == {
        "marketo": sum(w.marketo_calls for w in writes) + calls["queue_reread"]["marketo"],
        "dataverse": sum(w.dataverse_calls for w in writes) + calls["queue_reread"]["dataverse"],
    }


@pytest.mark.parametrize(
    ("kind", "items", "marketo", "dataverse"),
    [
        (WorkKind.LINK, 600, 2, 6),
        (WorkKind.LINK, 301, 2, 4),
        (WorkKind.PERSON, 600, 0, 6),
        (WorkKind.LEAD, 600, 2, 0),
        (WorkKind.LEAD, 0, 0, 0),
    ],
)
def test_reread_cost(kind: WorkKind, items: int, marketo: int, dataverse: int) -> None:
    cost = reread_cost(kind, items)
    assert (cost.marketo_calls, cost.dataverse_calls) == (marketo, dataverse)


def test_status_counts_the_queue_jobs_chunks_while_it_applies() -> None:
    store = MemoryStateStore()
    job = store.put_job(JobRecord(id="initial-sync-x", kind="initial-sync", created_at=NOW))
    store.add_chunks([ChunkRecord(job_id=job.id, index=i, payload={}) for i in range(4)])
    store.put_job(job.model_copy(update={"chunks": 4, "planned": True}))
    first = store.get_chunk(job.id, 0)
    assert first is not None
    store.put_chunk(first.model_copy(update={"state": ChunkState.DONE, "result": {"linked": 600}}))
    second = store.get_chunk(job.id, 1)
    assert second is not None
    store.put_chunk(second.model_copy(update={"state": ChunkState.RUNNING, "owner": "w", "lease_until": NOW}))
    state = JobState(
        job_id="x", snapshot="s", chunks=2, status=JobStatus.APPLYING, queue_job=job.id, outcome={"linked": 100}
    )
    store.put_cursor(Cursor(name=JOB_CURSOR, value=state.model_dump_json()))
    view = build_status(store, now=NOW).initial_sync
    assert view is not None
    assert (view.chunks_done, view.chunks, view.running, view.percent) == (1, 4, 1, 25.0)
    assert view.outcome == {"linked": 700}
    assert "Initial sync x: applying on the job queue (1 running), 25.0 % (1/4 chunks)" in render_text(
        build_status(store, now=NOW)
    )
    assert json.loads(view.model_dump_json())["queue_job"] == job.id
