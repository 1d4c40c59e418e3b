"""Rows a status view test puts into a state store: an hour of cycles every 5 minutes (one
failed), open failures (one with hostile text, one due for retry), collisions (one older than a
day) and a drift report. Times are relative to ``now``: ``NOW`` for unit tests, the real clock
for the browser test (the HTTP function reads the clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sync_core.core.models import Collision, Direction, EntityType, RecordFailure, RunReport
from sync_core.state import StateStore

NOW = datetime(2025, 3, 14, 12, 2, 30, tzinfo=UTC)
HOSTILE_REASON = "<script>alert('x')</script> jobtitle longer than 100 characters & more"
CYCLES = 12
FAILED_CYCLE = 4  # index, newest first, of the cycle that ended with a transient error


def cycle_report(index: int, now: datetime = NOW) -> RunReport:
    """The ``index``-th newest cycle: every 5 minutes, the newest started 30 s before ``now``."""
    started = now - timedelta(minutes=5 * index, seconds=30)
    to_dynamics, to_marketo = 40 + 13 * (index % 5), 25 + 7 * (index % 3)
    report: dict[str, Any] = {
        "seconds": 2.5 + index / 10,
        "pulled": {"marketo": to_dynamics + 3, "dynamics": to_marketo + 2},
        "written": {"marketo": to_marketo, "dynamics": to_dynamics},
        "created": index % 3,
        "linked": 1,
        "unlinked": 0,
        "flagged_deleted": 0,
        "qualified": index % 2,
        "collisions": 1 if index < 4 else 0,
        "failures": 1 if index == 0 else 0,
        "drift": [{"side": "dynamics", "entity": "lead", "name": "jobtitle", "fields": ["title"]}],
        "api_calls": {"marketo": 3 + index % 4, "dataverse": 2 + index % 3, "by_operation": {"get_lead_changes": 1}},
        "token_calls": 0,
        "table_transactions": 4,
        "backlog": {"marketo": 120, "dynamics": 40},
    }
    outcome = "ok"
    if index == FAILED_CYCLE:
        outcome, report = "transient", {"seconds": 31.0, "error": "TransientError"}
    return RunReport(
        run_id=f"run-{index:02d}",
        started_at=started,
        finished_at=started + timedelta(seconds=report["seconds"]),
        outcome=outcome,
        report=report,
    )


def failures(now: datetime = NOW) -> list[RecordFailure]:
    return [
        RecordFailure(
            key="to_dynamics:lead:1001",
            direction=Direction.TO_DYNAMICS,
            entity=EntityType.LEAD,
            marketo_id=1001,
            reasons=[HOSTILE_REASON],
            code="length",
            fields=["title"],
            attempts=2,
            first_failed_at=now - timedelta(minutes=20),
            last_failed_at=now - timedelta(minutes=2),
            next_retry_at=now + timedelta(minutes=13),
        ),
        RecordFailure(
            key="to_marketo:contact:abc",
            direction=Direction.TO_MARKETO,
            entity=EntityType.CONTACT,
            marketo_id=2002,
            dataverse_id="6f1c2d4e-0000-4000-8000-000000000002",
            reasons=["Marketo 1003: email field is invalid"],
            code="1003",
            fields=["email"],
            attempts=1,
            first_failed_at=now - timedelta(minutes=30),
            last_failed_at=now - timedelta(minutes=30),
            next_retry_at=now - timedelta(minutes=25),
        ),
    ]


def collisions(now: datetime = NOW) -> list[Collision]:
    return [
        Collision(
            id=f"c{index}",
            at=now - timedelta(minutes=5 * index + 1),
            run_id=f"run-{index:02d}",
            marketo_id=3000 + index,
            entity=EntityType.LEAD if index % 2 == 0 else EntityType.CONTACT,
            dataverse_id=f"6f1c2d4e-0000-4000-8000-00000000300{index}",
            field="phone" if index % 2 == 0 else "lastName",
            marketo_value="secret-marketo-value@example.com",
            dynamics_value="Secret Dynamics Name",
            baseline_value="old",
            winner="marketo" if index % 2 == 0 else "dynamics",
            rule="lead: Marketo wins" if index % 2 == 0 else "contact: Dynamics wins",
        )
        for index in range(4)
    ] + [
        Collision(
            id="c-old",
            at=now - timedelta(days=2),
            run_id="run-old",
            marketo_id=3999,
            entity=EntityType.LEAD,
            dataverse_id="6f1c2d4e-0000-4000-8000-000000003999",
            field="title",
            winner="marketo",
            rule="lead: Marketo wins",
        )
    ]


def fill(store: StateStore, now: datetime = NOW, *, cycles: int = CYCLES) -> None:
    for index in range(cycles):
        store.add_run_report(cycle_report(index, now))
    store.upsert_failures(failures(now))
    store.add_collisions(collisions(now))
