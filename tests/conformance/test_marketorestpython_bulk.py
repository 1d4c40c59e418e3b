"""The real ``marketorestpython`` client's bulk export methods, unmodified, against the sandbox.

Create, enqueue, poll the status, download the file, cancel and list jobs, for leads and for
activities. The library does not poll by itself; the test polls it the way its README shows,
moving the sandbox's injected clock instead of waiting out the processing time.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from marketorestpython.client import MarketoClient
from marketorestpython.helper.exceptions import MarketoException

from sandbox._http import HttpServer
from sandbox.marketo import GZIP_MIN, MarketoOptions, MarketoSandbox
from tests.sandbox._marketo_support import FakeClock

pytestmark = pytest.mark.conformance

TRICKY = {"lastName": 'O\'Brien, "Junior"\nsecond line', "firstName": "Zoë 東京", "unsubscribed": True}


class Peer:
    def __init__(self, sandbox: MarketoSandbox, client: MarketoClient, clock: FakeClock) -> None:
        self.sandbox, self.client, self.clock = sandbox, client, clock

    def range(self) -> dict[str, str]:
        now = datetime.fromtimestamp(self.clock.now, UTC)
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        return {"startAt": (now - timedelta(days=1)).strftime(fmt), "endAt": (now + timedelta(days=1)).strftime(fmt)}

    def wait(self, kind: str, export_id: str) -> dict[str, Any]:
        """Poll the status until the job ends, a simulated minute between polls."""
        for _ in range(10):
            (status,) = self.client.execute(method=f"get_{kind}_export_job_status", job_id=export_id)
            if status["status"] in ("Completed", "Failed", "Canceled"):
                return dict(status)
            self.clock.advance(60)
        raise AssertionError(f"{export_id} never finished")


@pytest.fixture
def peer() -> Iterator[Peer]:
    clock = FakeClock()
    options = MarketoOptions(seed_leads=5, bulk_processing_seconds=120)
    sandbox = MarketoSandbox(options, clock=clock)
    sandbox.update_lead(3, TRICKY)
    with HttpServer(sandbox.handle, service="marketo", gzip_min=GZIP_MIN) as server:
        client = MarketoClient("123-ABC-456", options.client_id, options.client_secret, requests_timeout=(3, 10))
        client.host = server.base_url
        yield Peer(sandbox, client, clock)


def test_lead_export_end_to_end_with_every_seeded_lead(peer: Peer) -> None:
    fields = ["id", "email", "firstName", "lastName", "company", "phone", "unsubscribed", "updatedAt"]
    (created,) = peer.client.execute(
        method="create_leads_export_job",
        fields=fields,
        filters={"createdAt": peer.range()},
        columnHeaderNames={"id": "Marketo Id"},
    )
    (queued,) = peer.client.execute(method="enqueue_leads_export_job", job_id=created["exportId"])
    done = peer.wait("leads", created["exportId"])
    data = peer.client.execute(method="get_leads_export_job_file", job_id=created["exportId"])
    listed = peer.client.execute(method="get_leads_export_jobs_list")

    assert (created["status"], queued["status"], done["status"]) == ("Created", "Queued", "Completed")
    assert done["numberOfRecords"] == 5
    assert done["fileSize"] == len(data)
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    for row in rows:
        lead = peer.sandbox.get_lead(int(row.pop("Marketo Id")))
        assert lead is not None
        expected = {f: lead.get(f) for f in fields if f != "id"}
        expected["unsubscribed"] = "true" if expected["unsubscribed"] else None
        assert {k: (None if v == "null" else v) for k, v in row.items()} == expected
    assert [int(r["Marketo Id"]) for r in csv.DictReader(io.StringIO(data.decode()))] == [1, 2, 3, 4, 5]
    assert [j["exportId"] for j in listed] == [created["exportId"]]


def test_activity_export_end_to_end_with_every_activity(peer: Peer) -> None:
    (created,) = peer.client.execute(
        method="create_activities_export_job", filters={"createdAt": peer.range(), "activityTypeIds": [12, 13]}
    )
    peer.client.execute(method="enqueue_activities_export_job", job_id=created["exportId"])
    done = peer.wait("activities", created["exportId"])
    data = peer.client.execute(method="get_activities_export_job_file", job_id=created["exportId"])
    listed = peer.client.execute(method="get_activities_export_jobs_list")

    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    expected = peer.sandbox.activities(type_id=12) + peer.sandbox.activities(type_id=13)
    assert done["numberOfRecords"] == len(expected) == 5 + 3  # five New Lead, three changed fields
    by_guid = {r["marketoGUID"]: r for r in rows}
    for activity in expected:
        row = by_guid[activity["marketoGUID"]]
        assert int(row["leadId"]) == activity["leadId"]
        assert int(row["activityTypeId"]) == activity["activityTypeId"]
        assert row["activityDate"] == activity["activityDate"]
        assert row["primaryAttributeValue"] == activity["primaryAttributeValue"]
        assert json.loads(row["attributes"]) == {a["name"]: a["value"] for a in activity["attributes"]}
    assert [j["status"] for j in listed] == ["Completed"]


def test_cancel_and_the_404_of_an_unfinished_file(peer: Peer) -> None:
    (created,) = peer.client.execute(
        method="create_leads_export_job", fields=["id"], filters={"updatedAt": peer.range()}
    )
    peer.client.execute(method="enqueue_leads_export_job", job_id=created["exportId"])

    # On a non-200 file answer the library reads ``result['result']`` from the requests
    # Response: the documented plain-text 404 surfaces as its TypeError.
    with pytest.raises(TypeError, match="not subscriptable"):
        peer.client.execute(method="get_leads_export_job_file", job_id=created["exportId"])
    (canceled,) = peer.client.execute(method="cancel_leads_export_job", job_id=created["exportId"])
    with pytest.raises(Exception) as again:  # noqa: PT011 - execute() re-raises the error as a bare Exception
        peer.client.execute(method="enqueue_leads_export_job", job_id=created["exportId"])

    assert canceled["status"] == "Canceled"
    assert again.value.args[0]["code"] == "1003"


def test_the_daily_quota_error_is_fatal_for_the_client(peer: Peer) -> None:
    peer.sandbox.options.bulk_daily_quota_mb = 0

    with pytest.raises(Exception) as refused:  # noqa: PT011 - execute() re-raises the error as a bare Exception
        peer.client.execute(method="create_leads_export_job", fields=["id"], filters={"createdAt": peer.range()})

    # One try only: the client's backoff gives up at once on "Export daily quota" (1029 otherwise retries).
    assert refused.value.args[0] == {"message": "Export daily quota 0MB exceeded", "code": "1029"}
    assert not isinstance(refused.value, MarketoException)
