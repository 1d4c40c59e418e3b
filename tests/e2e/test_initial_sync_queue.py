"""Go-live on the job queue end to end: ``initial-sync --plan``, then ``--apply`` with a queue
configured (Azurite's Queue and Table services, both simulators over real HTTP). The apply puts its
chunks on the queue and follows them; this test is the worker: it takes the messages and hands
each to the queue trigger's one call (``worker.process_job_message``), delivering every third one a
second time. One chunk of person creations is run by a "worker" that dies after creating the
persons and before their links and its done mark are written; its message then runs it again as
resumed. The outcome is the in-process apply's (tests/e2e/test_initial_sync.py): the plan's numbers
happened, every pair linked once, every one-sided record has one person, no duplicate person."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sync_core.core.golive import JOB_CURSOR, JobState, JobStatus
from sync_core.core.jobs import ChunkState
from sync_core.core.jobs import JobState as QueueJobState
from sync_core.core.models import EntityType
from sync_core.golive import queued
from sync_core.state.queue import AzureJobQueue
from sync_core.status.view import build_status
from sync_core.wiring.services import services_from_env
from sync_core.worker import process_job_message
from tests.e2e.conftest import World

pytestmark = pytest.mark.azurite

ROOT = Path(__file__).resolve().parents[2]
PAIRS_LEAD, PAIRS_CONTACT, BY_ID = 120, 60, 5
ONLY_LEADS, ONLY_CONTACTS, ONLY_PERSONS = 50, 30, 40
AMBIGUOUS = 5
CHUNK = 50


def _seed(world: World) -> dict[str, Any]:
    m, d = world.marketo, world.dataverse
    seeded: dict[str, Any] = {"lead_pairs": {}, "contact_pairs": {}, "only_persons": []}
    for i in range(PAIRS_LEAD):
        lead = d.create(
            "leads",
            {
                "emailaddress1": f"pl{i}@example.com",
                "firstname": f"Dyn{i}" if i % 5 == 0 else f"First{i}",
                "lastname": f"Last{i}",
                "companyname": f"Co{i}",
                "subject": "seed",
            },
        )
        person = m.create_lead(
            {
                "email": f"PL{i}@Example.com" if i % 10 == 0 else f"pl{i}@example.com",
                "firstName": f"First{i}",
                "lastName": f"Last{i}",
                "company": f"Co{i}",
            }
        )
        seeded["lead_pairs"][person] = lead
    for i in range(PAIRS_CONTACT):
        contact = d.create(
            "contacts",
            {
                "emailaddress1": f"pc{i}@example.com",
                "lastname": f"Last{i}",
                "jobtitle": f"Dyn{i}" if i % 3 == 0 else None,
            },
        )
        person = m.create_lead(
            {"email": f"pc{i}@example.com", "lastName": f"Last{i}", "title": f"Mkt{i}" if i % 3 == 0 else None}
        )
        seeded["contact_pairs"][person] = contact
    for i in range(BY_ID):
        lead = d.create(
            "leads", {"emailaddress1": f"old{i}@example.com", "lastname": f"Id{i}", "companyname": "C", "subject": "s"}
        )
        person = m.create_lead(
            {"email": f"new{i}@example.com", "lastName": f"Id{i}", "microsoftId": lead, "microsoftType": "Lead"}
        )
        seeded["lead_pairs"][person] = lead
    for i in range(ONLY_LEADS):
        d.create(
            "leads", {"emailaddress1": f"ol{i}@example.com", "lastname": f"O{i}", "companyname": "C", "subject": "s"}
        )
    for i in range(ONLY_CONTACTS):
        d.create("contacts", {"emailaddress1": f"oc{i}@example.com", "lastname": f"O{i}"})
    for i in range(ONLY_PERSONS):
        seeded["only_persons"].append(
            m.create_lead({"email": f"om{i}@example.com", "lastName": f"M{i}", "company": "C"})
        )
    for i in range(AMBIGUOUS):
        m.create_lead({"email": f"am{i}@example.com", "lastName": "A"})
        m.create_lead({"email": f"am{i}@example.com", "lastName": "B"})
        d.create("leads", {"emailaddress1": f"am{i}@example.com", "lastname": "A", "companyname": "C", "subject": "s"})
        m.create_lead({"email": f"ad{i}@example.com", "lastName": "A"})
        d.create("contacts", {"emailaddress1": f"ad{i}@example.com", "lastname": "A"})
        d.create("leads", {"emailaddress1": f"ad{i}@example.com", "lastname": "B", "companyname": "C", "subject": "s"})
    return seeded


def _command(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sync_core", "initial-sync", *args],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _job(world: World) -> JobState | None:
    cursor = world.store.get_cursor(JOB_CURSOR)
    return JobState.model_validate_json(cursor.value) if cursor else None


@pytest.mark.parametrize("via", ["process", "queue"])
def test_go_live_applied_through_the_job_queue_equals_the_in_process_apply(
    via: str, world_factory: Any, queue_connection: str, tmp_path: Path
) -> None:
    queue_name = "q" + uuid.uuid4().hex[:12]
    queue = {"SYNC_QUEUE_CONNECTION": queue_connection, "SYNC_JOBS_QUEUE": queue_name} if via == "queue" else {}
    world: World = world_factory(SYNC_INITIAL_MARKETO_ONLY="create-lead", **queue)
    seeded = _seed(world)
    instances = ["--instances", "2"] if via == "queue" else []
    plan_run = _command(
        world.env, "--plan", "--dir", str(tmp_path), "--chunk-size", str(CHUNK), "--poll-seconds", "0.2", *instances
    )
    out, err = plan_run.communicate(timeout=120)
    assert plan_run.returncode == 0, err
    plan = json.loads(out)
    assert plan["link"] == {"contact": PAIRS_CONTACT, "lead": PAIRS_LEAD + BY_ID}
    assert plan["create_persons"] == {"contact": ONLY_CONTACTS, "lead": ONLY_LEADS}
    assert plan["create_leads"] == ONLY_PERSONS
    assert plan["ambiguous"]["groups"] == 2 * AMBIGUOUS
    pairs = PAIRS_LEAD + BY_ID + PAIRS_CONTACT
    calls = plan["api_calls"]
    # With a queue the plan counts the apply's calls on it: each part's records read again by id.
    assert ("apply_queue" in calls) is (via == "queue")
    if via == "queue":
        assert calls["queue_reread"]["marketo"] >= -(-(pairs + ONLY_PERSONS) // 300)
        assert calls["queue_reread"]["dataverse"] >= -(-(pairs + ONLY_LEADS + ONLY_CONTACTS) // 100)
        assert calls["apply_queue"]["marketo"] == calls["apply"]["marketo"] + calls["queue_reread"]["marketo"]
        # and its ETA there: the parts (plan chunks of 50: one part each) on the instances it was told
        assert (plan["eta_queue"]["instances"], plan["eta_queue"]["parts"]) == (2, plan["chunks"])
        assert plan["eta_queue"]["chunks_in_flight"] == 2 * 4  # host.json's batchSize an instance
        assert plan["eta_queue"]["eta_seconds"] > 0
    else:
        assert plan["eta_queue"] == {}
    assert world.api_creates() == 0

    services = services_from_env(world.env)
    if via == "queue":
        result = _apply_on_queue(world, services, queue_connection, queue_name, plan)
    else:
        apply_run = _command(world.env, "--apply")
        out, err = apply_run.communicate(timeout=60)
        assert apply_run.returncode == 0, err
        result = json.loads(out)
        assert "queue" not in result
    assert result["status"] == "done"
    for name, figures in result["against_plan"].items():
        assert figures["planned"] == figures["done"], (name, figures)
    done = _job(world)
    assert done is not None
    assert done.status is JobStatus.DONE

    # Every planned pair linked once, to the planned record; every one-sided record has one person,
    # every Marketo-only person one lead; no duplicate person.
    links = list(world.store.iter_links())
    by_person = {link.marketo_id: link for link in links}
    assert len(by_person) == len(links)
    for pairs_of, kind in ((seeded["lead_pairs"], EntityType.LEAD), (seeded["contact_pairs"], EntityType.CONTACT)):
        for person, dataverse_id in pairs_of.items():
            link = by_person[person]
            assert (link.entity, link.dataverse_id) == (kind, dataverse_id.lower())
    for person in seeded["only_persons"]:
        assert by_person[person].entity is EntityType.LEAD
    assert len(links) == pairs + ONLY_LEADS + ONLY_CONTACTS + ONLY_PERSONS
    db = world.marketo.db
    emails = Counter(str((db.get(i) or {}).get("email")).lower() for i in db.lead_ids())
    assert {email for email, n in emails.items() if n > 1} == {f"am{i}@example.com" for i in range(AMBIGUOUS)}
    # First contact: Marketo's firstName on the lead, Dynamics' title on the person.
    first = next(iter(seeded["lead_pairs"]))
    assert world.dynamics_row(EntityType.LEAD, seeded["lead_pairs"][first])["firstname"] == "First0"  # type: ignore[index]
    contact_person = next(iter(seeded["contact_pairs"]))
    assert (db.get(contact_person) or {}).get("title") == "Dyn0"

    # The status view shows the job done (on the queue). The next cycle writes nothing: it reads the
    # leads made for Marketo-only persons through the delta feed, and the job wrote those persons what
    # the cycle would (their lead's owner fields too) and recorded it in their baselines.
    status = build_status(world.store, now=datetime.now(UTC), queue=services.queue)
    assert status.initial_sync is not None
    assert (status.initial_sync.queue_job, status.initial_sync.percent) == (done.queue_job, 100.0)
    assert (done.queue_job is not None) is (via == "queue")
    report = world.cycle()
    assert report.report.written.marketo == 0
    assert report.report.written.dynamics == 0


def _apply_on_queue(
    world: World, services: Any, queue_connection: str, queue_name: str, plan: dict[str, Any]
) -> dict[str, Any]:
    """``--apply`` in its own process, this test as the queue's worker (with a worker that dies in
    a chunk, and every third message delivered twice); the apply's JSON."""
    apply_run = _command(world.env, "--apply")
    queue = AzureJobQueue.from_connection_string(queue_connection, queue_name)
    services = services_from_env(world.env)
    deadline = time.monotonic() + 40
    state = _job(world)
    while (state is None or state.queue_job is None or world.store.get_job(state.queue_job) is None) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
        state = _job(world)
    assert state is not None
    assert state.queue_job is not None
    assert state.status is JobStatus.APPLYING
    record = world.store.get_job(state.queue_job)
    while record is not None and not record.planned and time.monotonic() < deadline:
        time.sleep(0.05)
        record = world.store.get_job(state.queue_job)
    assert record is not None
    assert record.planned
    assert record.kind == queued.KIND
    chunks = list(world.store.iter_chunks(record.id))
    assert len(chunks) == plan["chunks"]  # plan chunks of 50 are one part each
    for chunk in chunks:  # ids and counts only: no person data in a chunk row
        text = json.dumps(chunk.payload)
        assert "@" not in text
        assert "First" not in text
        assert "Last" not in text

    # A worker takes a chunk of person creations, creates the persons, and dies before their links
    # and its done mark are written (its lease then passes).
    dying = next(c for c in chunks if c.payload["kind"] == "person")
    claimed = world.store.put_chunk(
        dying.model_copy(
            update={
                "state": ChunkState.RUNNING,
                "owner": "dead-worker",
                "attempts": 1,
                "lease_until": datetime.now(UTC) - timedelta(seconds=1),
            }
        )
    )
    queued.run_chunk(services, record, claimed)
    entity = EntityType(dying.payload["entity"])
    made = world.store.get_links_by_dataverse_ids(entity, dying.payload["dataverse_ids"])
    assert len(made) == len(dying.payload["dataverse_ids"])
    world.store.delete_links(list(made.values()))

    outcomes: Counter[str] = Counter()
    seen = 0
    while apply_run.poll() is None and time.monotonic() < deadline:
        messages = queue.receive(max_messages=16, visibility_timeout=60)
        for message in messages:
            outcomes[process_job_message(world.env, message.body)] += 1
            seen += 1
            if seen % 3 == 0:  # at-least-once: the same message again
                outcomes[process_job_message(world.env, message.body)] += 1
            queue.delete(message)
        if not messages:
            time.sleep(0.1)
    out, err = apply_run.communicate(timeout=30)
    assert apply_run.returncode == 0, err
    # This process's parts share its look-ups (``queued._work``): the records' owner and the calling
    # user's row were read once each, not once a part.
    assert len(chunks) > 2
    assert sum(world.dataverse.stats.to_json()["calls"]["systemusers"].values()) <= 2
    assert outcomes["done"] == len(chunks)
    assert outcomes["duplicate"] >= len(chunks) // 3
    result = json.loads(out)
    assert result["status"] == "done"
    assert result["queue"]["chunks"] == len(chunks)
    assert result["outcome"]["chunks_resumed"] == 1  # the dead worker's chunk, run again as resumed
    finished = world.store.get_job(record.id)
    assert finished is not None
    assert finished.state is QueueJobState.DONE
    assert queue.poison_count() == 0
    return dict(result)
