"""Bulk extract jobs over real HTTP: the life cycle in simulated time, the queue and quota
limits, file retention and per-user visibility (docs MKT-BULK, MKT-BLE, MKT-BAE)."""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Iterator

import pytest

from sandbox import marketo as marketo_module
from sandbox.marketo import MarketoOptions
from sandbox.marketo import _bulk_jobs as bulk_jobs
from tests.sandbox._bulk_support import around, create, create_id, file, job, state
from tests.sandbox._marketo_support import FakeClock, Marketo, error_code

DAY = 86_400.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_750_000_000.0)  # 2025-06-15T15:06:40Z, a Sunday morning in Chicago


@pytest.fixture
def marketo(clock: FakeClock) -> Iterator[Marketo]:
    options = MarketoOptions(
        seed_leads=3, bulk_processing_seconds=30, extra_api_users={"etl-tool": "etl-secret"}, token_ttl=100 * 86_400
    )
    with Marketo.running(options, clock=clock) as m:
        yield m


def test_created_then_queued_then_processing_then_completed_with_every_status_field(
    marketo: Marketo, clock: FakeClock
) -> None:
    export_id = create_id(marketo, clock)
    created = state(marketo, export_id)
    clock.advance(5)
    queued = job(marketo, export_id, "enqueue")["result"][0]
    clock.advance(1)
    processing = state(marketo, export_id)
    clock.advance(28)
    still = state(marketo, export_id)
    clock.advance(1)
    done = state(marketo, export_id)
    data = file(marketo, export_id).content

    assert created == {"exportId": export_id, "format": "CSV", "status": "Created", "createdAt": "2025-06-15T15:06:40Z"}
    assert (queued["status"], queued["queuedAt"]) == ("Queued", "2025-06-15T15:06:45Z")
    assert (processing["status"], processing["startedAt"]) == ("Processing", "2025-06-15T15:06:45Z")
    assert still["status"] == "Processing"
    assert "finishedAt" not in still
    assert done == {
        **queued,
        "status": "Completed",
        "startedAt": "2025-06-15T15:06:45Z",
        "finishedAt": "2025-06-15T15:07:15Z",
        "numberOfRecords": 3,
        "fileSize": len(data),
        "fileChecksum": "sha256:" + hashlib.sha256(data).hexdigest(),
    }


def test_two_jobs_process_at_once_and_the_next_starts_when_one_finishes(marketo: Marketo, clock: FakeClock) -> None:
    ids = [create_id(marketo, clock) for _ in range(3)]
    for export_id in ids:
        job(marketo, export_id, "enqueue")
    clock.advance(1)

    assert [state(marketo, i)["status"] for i in ids] == ["Processing", "Processing", "Queued"]
    clock.advance(30)
    third = state(marketo, ids[2])
    assert [state(marketo, i)["status"] for i in ids[:2]] == ["Completed", "Completed"]
    assert third["status"] == "Processing"
    assert third["startedAt"] == state(marketo, ids[0])["finishedAt"]  # replayed in simulated time
    clock.advance(3600)
    assert state(marketo, ids[2])["status"] == "Completed"


def test_ten_jobs_queued_or_processing_at_most_then_1029(marketo: Marketo, clock: FakeClock) -> None:
    ids = [create_id(marketo, clock, kind="leads" if i % 2 else "activities") for i in range(11)]
    for i, export_id in enumerate(ids[:10]):
        assert job(marketo, export_id, "enqueue", "leads" if i % 2 else "activities")["success"]

    refused = job(marketo, ids[10], "enqueue", "activities")  # the queue is shared by leads and activities

    assert error_code(refused) == "1029"
    assert refused["errors"][0]["message"] == "Too many jobs in queue"
    clock.advance(31)  # two finished: room again
    assert job(marketo, ids[10], "enqueue", "activities")["result"][0]["status"] == "Queued"


def test_enqueue_twice_is_1029_job_already_queued_and_a_finished_job_cannot_be_queued(
    marketo: Marketo, clock: FakeClock
) -> None:
    export_id = create_id(marketo, clock)
    job(marketo, export_id, "enqueue")

    again = job(marketo, export_id, "enqueue")
    clock.advance(60)
    finished = job(marketo, export_id, "enqueue")

    assert (error_code(again), again["errors"][0]["message"]) == ("1029", "Job already queued")
    assert error_code(finished) == "1003"


@pytest.mark.parametrize("when", ["Created", "Queued", "Processing"])
def test_cancel_in_each_cancelable_state(marketo: Marketo, clock: FakeClock, when: str) -> None:
    blockers = [create_id(marketo, clock) for _ in range(2)] if when == "Queued" else []
    for export_id in blockers:
        job(marketo, export_id, "enqueue")
    export_id = create_id(marketo, clock)
    if when != "Created":
        job(marketo, export_id, "enqueue")
    clock.advance(1)
    assert state(marketo, export_id)["status"] == when

    canceled = job(marketo, export_id, "cancel")["result"][0]
    clock.advance(60)

    assert canceled["status"] == "Canceled"
    assert state(marketo, export_id)["status"] == "Canceled"
    assert file(marketo, export_id).status_code == 404
    assert error_code(job(marketo, export_id, "cancel")) == "1003"


def test_canceling_a_processing_job_frees_its_slot_at_once(marketo: Marketo, clock: FakeClock) -> None:
    ids = [create_id(marketo, clock) for _ in range(3)]
    for export_id in ids:
        job(marketo, export_id, "enqueue")
    clock.advance(10)

    job(marketo, ids[0], "cancel")

    assert state(marketo, ids[2])["status"] == "Processing"
    assert state(marketo, ids[2])["startedAt"] == "2025-06-15T15:06:50Z"


def test_a_failed_job_reports_failed_and_has_no_file(marketo: Marketo, clock: FakeClock) -> None:
    export_id = create_id(marketo, clock)
    job(marketo, export_id, "enqueue")
    clock.advance(1)

    marketo.sandbox.fail_export(export_id, "Internal error")
    failed = state(marketo, export_id)

    assert (failed["status"], failed["errorMsg"]) == ("Failed", "Internal error")
    assert failed["finishedAt"] == "2025-06-15T15:06:41Z"
    assert file(marketo, export_id).status_code == 404
    with pytest.raises(ValueError, match="Failed"):
        marketo.sandbox.fail_export(export_id)


def test_the_file_holds_the_database_as_processing_started(marketo: Marketo, clock: FakeClock) -> None:
    export_id = create_id(marketo, clock, fields=["id", "firstName"])
    marketo.sandbox.update_lead(1, {"firstName": "Before"})
    job(marketo, export_id, "enqueue")
    clock.advance(1)
    marketo.sandbox.update_lead(1, {"firstName": "During"})  # after the start: not in this file
    clock.advance(30)

    assert file(marketo, export_id).text.splitlines()[1] == "1,Before"


def test_daily_quota_1029_once_the_day_s_files_reach_it_until_midnight_central(
    marketo: Marketo, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk_jobs, "MB", 50)
    marketo.sandbox.options.bulk_daily_quota_mb = 1  # 50 bytes of files a day
    first, waiting = create_id(marketo, clock), create_id(marketo, clock)
    job(marketo, first, "enqueue")
    clock.advance(31)
    assert state(marketo, first)["fileSize"] >= 50

    refused_create = create(marketo, "leads", {"fields": ["id"], "filter": {"createdAt": around(clock)}})
    refused_enqueue = job(marketo, waiting, "enqueue")
    clock.advance(DAY)  # a new day in Chicago

    for refused in (refused_create, refused_enqueue):
        assert (error_code(refused), refused["errors"][0]["message"]) == ("1029", "Export daily quota 1MB exceeded")
    assert job(marketo, waiting, "enqueue")["success"]


def test_no_limits_lifts_the_export_quota(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk_jobs, "MB", 1)
    with Marketo.running(MarketoOptions(seed_leads=3, limits=False, bulk_daily_quota_mb=1), clock=clock) as m:
        first = create_id(m, clock)
        job(m, first, "enqueue")
        clock.advance(5)
        assert state(m, first)["status"] == "Completed"
        assert create(m, "leads", {"fields": ["id"], "filter": {"createdAt": around(clock)}})["success"]


def test_files_are_kept_seven_days_and_status_thirty(marketo: Marketo, clock: FakeClock) -> None:
    export_id = create_id(marketo, clock)
    job(marketo, export_id, "enqueue")
    clock.advance(7 * DAY)
    assert file(marketo, export_id).status_code == 200
    assert [j["exportId"] for j in marketo.get("/bulk/v1/leads/export.json")["result"]] == [export_id]

    clock.advance(60)
    assert file(marketo, export_id).status_code == 404
    assert marketo.get("/bulk/v1/leads/export.json")["result"] == []  # the lists cover seven days
    assert state(marketo, export_id)["status"] == "Completed"
    clock.advance(23 * DAY)
    assert error_code(job(marketo, export_id, "status")) == "1003"


def test_jobs_are_seen_only_by_the_api_user_that_created_them(marketo: Marketo, clock: FakeClock) -> None:
    export_id = create_id(marketo, clock)
    job(marketo, export_id, "enqueue")
    clock.advance(60)
    other = marketo.http.get(
        "/identity/oauth/token",
        params={"grant_type": "client_credentials", "client_id": "etl-tool", "client_secret": "etl-secret"},
    ).json()
    headers = {"Authorization": f"Bearer {other['access_token']}"}

    status = marketo.http.get(f"/bulk/v1/leads/export/{export_id}/status.json", headers=headers).json()
    listed = marketo.http.get("/bulk/v1/leads/export.json", headers=headers).json()
    stolen = marketo.http.get(f"/bulk/v1/leads/export/{export_id}/file.json", headers=headers)
    cancel = marketo.http.post(f"/bulk/v1/leads/export/{export_id}/cancel.json", headers=headers).json()

    assert other["scope"] == "etl-tool@example.com"
    assert error_code(status) == "1003"
    assert error_code(cancel) == "1003"
    assert listed["result"] == []
    assert (stolen.status_code, stolen.headers["content-type"]) == (404, "text/plain;charset=UTF-8")
    assert state(marketo, export_id)["status"] == "Completed"  # still there for its owner


def test_job_list_filters_by_status_and_pages(marketo: Marketo, clock: FakeClock) -> None:
    ids = [create_id(marketo, clock) for _ in range(3)]
    job(marketo, ids[0], "enqueue")
    clock.advance(60)
    activity_id = create_id(marketo, clock, kind="activities")

    every = marketo.get("/bulk/v1/leads/export.json")
    done = marketo.get("/bulk/v1/leads/export.json", status="Completed,Failed")
    created = marketo.get("/bulk/v1/leads/export.json", status="Created", batchSize=1)
    page2 = marketo.get(
        "/bulk/v1/leads/export.json", status="Created", batchSize=1, nextPageToken=created["nextPageToken"]
    )
    activities = marketo.get("/bulk/v1/activities/export.json")

    assert [j["exportId"] for j in every["result"]] == ids
    assert "nextPageToken" not in every
    assert [(j["exportId"], j["status"]) for j in done["result"]] == [(ids[0], "Completed")]
    assert [j["exportId"] for j in created["result"] + page2["result"]] == ids[1:]
    assert "nextPageToken" not in page2
    assert [j["exportId"] for j in activities["result"]] == [activity_id]
    assert error_code(marketo.get("/bulk/v1/leads/export.json", status="Done")) == "1003"
    assert error_code(marketo.get("/bulk/v1/leads/export.json", nextPageToken="nonsense!")) == "1003"


def test_unknown_export_ids_and_the_wrong_kind_are_1003_or_a_plain_404(marketo: Marketo, clock: FakeClock) -> None:
    lead_job = create_id(marketo, clock)

    for action in ("status", "enqueue", "cancel"):
        assert error_code(job(marketo, "no-such-job", action)) == "1003"
    assert error_code(job(marketo, lead_job, "status", kind="activities")) == "1003"
    missing = file(marketo, "no-such-job")
    assert (missing.status_code, missing.headers["content-type"]) == (404, "text/plain;charset=UTF-8")
    assert file(marketo, lead_job).status_code == 404  # not completed


def test_bulk_options_come_from_the_command_line() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-limits", action="store_true")
    parser.add_argument("--seed-leads", type=int, default=0)
    marketo_module.add_arguments(parser)

    options = marketo_module.options_from_args(
        parser.parse_args(
            [
                *("--marketo-bulk-processing-seconds", "300", "--marketo-bulk-daily-quota-mb", "1000"),
                *("--marketo-bulk-unsupported-filter", "updatedAt", "--marketo-bulk-unsupported-filter", "smartListId"),
            ]
        )
    )
    defaults = marketo_module.options_from_args(parser.parse_args([]))

    assert (options.bulk_processing_seconds, options.bulk_daily_quota_mb) == (300.0, 1000)
    assert options.bulk_unsupported_filters == ["updatedAt", "smartListId"]
    assert (defaults.bulk_processing_seconds, defaults.bulk_daily_quota_mb, defaults.bulk_max_queued) == (2.0, 500, 10)
