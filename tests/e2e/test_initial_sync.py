"""Go-live end to end: ``initial-sync --plan`` then ``--apply`` on the simulators and Azurite, with
overlapping, ambiguous and one-sided records; the apply is killed midway (SIGKILL, in its own
process) and resumed; the plan's numbers are checked against what happened, and every pair ends
linked once with no duplicate person."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sync_core.core.golive import CHUNKS_IN_FLIGHT, JOB_CURSOR, JobState, JobStatus
from sync_core.core.models import EntityType
from tests.e2e.conftest import World

ROOT = Path(__file__).resolve().parents[2]
PAIRS_LEAD, PAIRS_CONTACT = 500, 300
ONLY_LEADS, ONLY_CONTACTS, ONLY_PERSONS = 250, 150, 200
AMBIGUOUS = 10  # emails with two persons and one lead, and as many with one person, a lead and a contact
BY_ID = 10  # persons naming their lead by microsoftId, under another email
CHUNK = 100


def _seed(world: World) -> dict[str, Any]:
    m, d = world.marketo, world.dataverse
    seeded: dict[str, Any] = {"lead_pairs": {}, "contact_pairs": {}}
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
                "title": f"Title{i}" if i % 4 == 0 else None,
            }
        )
        seeded["lead_pairs"][person] = lead
    for i in range(PAIRS_CONTACT):
        contact = d.create(
            "contacts",
            {
                "emailaddress1": f"pc{i}@example.com",
                "firstname": f"First{i}",
                "lastname": f"Last{i}",
                "jobtitle": f"DynTitle{i}" if i % 3 == 0 else None,
            },
        )
        person = m.create_lead(
            {
                "email": f"pc{i}@example.com",
                "firstName": f"First{i}",
                "lastName": f"Last{i}",
                "title": f"MktTitle{i}" if i % 3 == 0 else None,
            }
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
        m.create_lead({"email": f"om{i}@example.com", "lastName": f"M{i}"})
    for i in range(AMBIGUOUS):
        m.create_lead({"email": f"am{i}@example.com", "lastName": "A"})
        m.create_lead({"email": f"am{i}@example.com", "lastName": "B"})
        d.create("leads", {"emailaddress1": f"am{i}@example.com", "lastname": "A", "companyname": "C", "subject": "s"})
        m.create_lead({"email": f"ad{i}@example.com", "lastName": "A"})
        d.create("contacts", {"emailaddress1": f"ad{i}@example.com", "lastname": "A"})
        d.create("leads", {"emailaddress1": f"ad{i}@example.com", "lastname": "B", "companyname": "C", "subject": "s"})
    return seeded


def _command(world: World, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **world.env, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "sync_core", "initial-sync", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _job(world: World) -> JobState | None:
    cursor = world.store.get_cursor(JOB_CURSOR)
    return JobState.model_validate_json(cursor.value) if cursor else None


def _interrupted(job: JobState) -> list[int]:
    """The chunks started and not done."""
    return [number for number in range(job.chunks) if job.is_started(number) and not job.is_done(number)]


def test_go_live_plan_apply_killed_and_resumed(world: World, tmp_path: Path) -> None:
    seeded = _seed(world)
    plan_run = _command(world, "--plan", "--dir", str(tmp_path), "--chunk-size", str(CHUNK), "--poll-seconds", "0.2")
    out, err = plan_run.communicate(timeout=120)
    assert plan_run.returncode == 0, err
    plan = json.loads(out)
    assert plan["link"] == {"contact": PAIRS_CONTACT, "lead": PAIRS_LEAD + BY_ID}
    assert plan["link_by_id"] == BY_ID
    assert plan["create_persons"] == {"contact": ONLY_CONTACTS, "lead": ONLY_LEADS}
    assert plan["marketo_only_left"] == ONLY_PERSONS
    assert plan["ambiguous"]["groups"] == 2 * AMBIGUOUS
    shown = plan["ambiguous"]["shown"]
    assert sorted((len(g["marketo_ids"]), len(g["leads"]), len(g["contacts"])) for g in shown) == sorted(
        [(2, 1, 0)] * AMBIGUOUS + [(1, 1, 1)] * AMBIGUOUS
    )
    # First contact: lead firstName differs on every fifth pair and email in case on every tenth and on
    # the pairs linked by id (Marketo wins); contact title on every third (Dynamics wins); a title only
    # Marketo holds is no conflict.
    assert plan["conflicts"] == {
        "lead": {"firstName": {"marketo": PAIRS_LEAD // 5}, "email": {"marketo": PAIRS_LEAD // 10 + BY_ID}},
        "contact": {"title": {"dynamics": PAIRS_CONTACT // 3}},
    }
    assert plan["api_calls"]["apply"]["marketo"] >= plan["api_calls"]["apply_floor"]["marketo"]
    assert _job(world) is not None
    assert _job(world).status is JobStatus.PLANNED
    assert world.api_creates() == 0
    assert world.store.get_cursor("marketo.leadchanges") is None

    # Apply in its own process, slowed a little (each Marketo write waits 0.15 s in the simulator), and
    # kill it inside a chunk of person creations: the persons are being created, their links not written.
    world.marketo.add_faults(
        [{"method": "POST", "path": r"^/rest/v1/leads\.json$", "times": -1, "action": {"delay": 0.15}}]
    )
    persons_from = plan["chunks"] - 4  # the last chunks create persons (250 + 150 by 100)
    apply_run = _command(world, "--apply")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = _job(world)
        if job is not None and any(number >= persons_from for number in _interrupted(job)):
            break
        time.sleep(0.01)
    apply_run.send_signal(signal.SIGKILL)
    apply_run.communicate(timeout=30)
    killed = _job(world)
    assert killed is not None
    assert killed.status is JobStatus.APPLYING
    # Up to CHUNKS_IN_FLIGHT chunks were being applied at the kill: each is started, not done.
    interrupted = _interrupted(killed)
    assert 1 <= len(interrupted) <= CHUNKS_IN_FLIGHT
    assert any(number >= persons_from for number in interrupted)
    assert killed.done_count < killed.chunks
    world.marketo.clear_faults()
    # The timer is on meanwhile: a cycle runs from the plan's cursors (set when the apply began), not
    # from the beginning, and writes nothing to records the job has not reached.
    planned_token = world.store.get_cursor("marketo.leadchanges")
    assert planned_token is not None
    during = world.cycle()
    assert during.report.written.dynamics == 0
    moved = world.store.get_cursor("marketo.leadchanges")
    assert moved is not None
    assert moved.value != planned_token.value

    resume = _command(world, "--apply")
    out, err = resume.communicate(timeout=120)
    assert resume.returncode == 0, err
    result = json.loads(out)
    assert result["status"] == "done"
    assert result["outcome"]["chunks_resumed"] == len(interrupted)
    for name, figures in result["against_plan"].items():
        assert figures["planned"] == figures["done"], (name, figures)
    done = _job(world)
    assert done is not None
    assert done.status is JobStatus.DONE
    assert done.done_count == done.chunks

    # Every planned pair linked once, to the planned record; every one-sided record has exactly one person.
    links = list(world.store.iter_links())
    by_person = {link.marketo_id: link for link in links}
    assert len(by_person) == len(links)
    for pairs, entity in ((seeded["lead_pairs"], EntityType.LEAD), (seeded["contact_pairs"], EntityType.CONTACT)):
        for person, record in pairs.items():
            link = by_person[person]
            assert (link.entity, link.dataverse_id) == (entity, record.lower())
    assert len(links) == PAIRS_LEAD + BY_ID + PAIRS_CONTACT + ONLY_LEADS + ONLY_CONTACTS
    db = world.marketo.db
    emails = Counter(str((db.get(i) or {}).get("email")).lower() for i in db.lead_ids())
    duplicates = {email for email, n in emails.items() if n > 1}
    assert duplicates == {f"am{i}@example.com" for i in range(AMBIGUOUS)}
    # The first-contact values landed: Marketo's firstName on the lead, Dynamics' title on the person.
    person = next(iter(seeded["lead_pairs"]))
    assert world.dynamics_row(EntityType.LEAD, seeded["lead_pairs"][person])["firstname"] == "First0"  # type: ignore[index]
    # Once all is linked, Marketo's changes are read again from the plan's moment (what the cycle read
    # meanwhile for persons not linked yet is applied now); read again, they write nothing twice.
    rewound = world.store.get_cursor("marketo.leadchanges")
    assert rewound is not None
    assert rewound.value == planned_token.value
    report = world.cycle()
    assert report.report.written.marketo == 0
    assert report.report.written.dynamics == 0
