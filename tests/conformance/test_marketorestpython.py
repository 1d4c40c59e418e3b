"""The real ``marketorestpython`` client (PyPI, unmodified) against the Marketo simulator.

Only its ``host`` is pointed at the sandbox; everything else is the library as users run it,
including its own 5-calls-a-second throttle, so these tests keep their call counts small.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from marketorestpython.client import MarketoClient
from marketorestpython.helper.exceptions import MarketoException

from sandbox._http import HttpServer, Request, Response
from sandbox.marketo import GZIP_MIN, MarketoOptions, MarketoSandbox

pytestmark = pytest.mark.conformance

SINCE = "2000-01-01T00:00:00Z"


@dataclass
class Peer:
    sandbox: MarketoSandbox
    client: MarketoClient
    seen: list[tuple[str, str, str | None]]  # (method, path, Authorization header) of every call


@contextmanager
def _peer(options: MarketoOptions, *, max_retry_time: int = 30) -> Iterator[Peer]:
    sandbox = MarketoSandbox(options)
    seen: list[tuple[str, str, str | None]] = []

    def app(request: Request) -> Response:
        seen.append((request.method, request.path, request.header("Authorization")))
        return sandbox.handle(request)

    with HttpServer(app, service="marketo", gzip_min=GZIP_MIN) as server:
        client = MarketoClient(
            "123-ABC-456",
            options.client_id,
            options.client_secret,
            max_retry_time=max_retry_time,
            requests_timeout=(3, 10),
        )
        client.host = server.base_url
        yield Peer(sandbox, client, seen)


@pytest.fixture
def peer() -> Iterator[Peer]:
    with _peer(MarketoOptions(seed_leads=3)) as p:
        yield p


def test_token_and_get_lead_by_id(peer: Peer) -> None:
    leads = peer.client.execute(method="get_lead_by_id", id=2, fields=["email", "firstName", "mobilePhone"])

    assert leads == [{"id": 2, "email": "seed.lead.2@example.com", "firstName": "Seed2", "mobilePhone": None}]
    assert peer.client.token.endswith(":int")
    assert peer.client.scope == "sandbox-api@example.com"
    assert peer.seen[1] == ("GET", "/rest/v1/lead/2.json", f"Bearer {peer.client.token}")


def test_create_or_update(peer: Peer) -> None:
    leads = [{"email": "ada@example.com", "firstName": "Ada"}, {"email": "seed.lead.1@example.com", "title": "CEO"}]

    result = peer.client.execute(
        method="create_update_leads", leads=leads, action="createOrUpdate", lookupField="email"
    )

    assert result == [{"id": 4, "status": "created"}, {"id": 1, "status": "updated"}]
    assert peer.sandbox.get_lead(1)["title"] == "CEO"  # type: ignore[index]
    (change,) = peer.sandbox.activities(lead_id=1, type_id=13)
    assert {"name": "Source", "value": "Web service API"} in change["attributes"]


def test_filter_query_uses_the_method_get_form_and_pages(peer: Peer) -> None:
    leads = peer.client.execute(
        method="get_multiple_leads_by_filter_type",
        filterType="email",
        filterValues=["seed.lead.1@example.com", "SEED.LEAD.3@example.com"],
        fields=["email", "company"],
        batchSize=1,
    )

    assert leads == [
        {"id": 1, "email": "seed.lead.1@example.com", "company": "Seed Co 1"},
        {"id": 3, "email": "seed.lead.3@example.com", "company": "Seed Co 3"},
    ]
    assert [(m, p) for m, p, _ in peer.seen[1:]] == [("POST", "/rest/v1/leads.json")] * 2
    assert peer.sandbox.stats()["endpoints"]["GET /rest/v1/leads.json"] == 2


def test_paging_token_and_lead_changes_over_several_pages() -> None:
    with _peer(MarketoOptions()) as p:
        ids = [p.sandbox.create_lead({"email": f"p{i}@example.com"}) for i in range(5)]
        for lead_id in ids:
            p.sandbox.update_lead(lead_id, {"firstName": f"First{lead_id}"})

        pages = list(
            p.client.execute(method="get_lead_changes_yield", fields=["firstName"], sinceDatetime=SINCE, batchSize=4)
        )

    items = [item for page in pages for item in page]
    assert [len(page) for page in pages] == [4, 4, 2]
    assert [i["activityTypeId"] for i in items] == [12] * 5 + [13] * 5
    assert len({i["marketoGUID"] for i in items}) == 10
    assert items[5]["fields"][0]["newValue"] == "First1"


def test_deleted_leads(peer: Peer) -> None:
    deleted = peer.client.execute(method="delete_lead", id=[1, 3])

    found = peer.client.execute(method="get_deleted_leads", sinceDatetime=SINCE)

    assert deleted == [{"id": 1, "status": "deleted"}, {"id": 3, "status": "deleted"}]
    assert [(d["leadId"], d["activityTypeId"], d["primaryAttributeValue"]) for d in found] == [
        (1, 37, "Seed1 Lead1"),
        (3, 37, "Seed3 Lead3"),
    ]


def test_describe(peer: Peer) -> None:
    fields = {f["rest"]["name"]: f for f in peer.client.execute(method="describe")}
    (schema,) = peer.client.execute(method="describe2")

    assert fields["microsoftId"]["dataType"] == "string"
    assert fields["microsoftIsDeleted"]["dataType"] == "boolean"
    assert ["microsoftId"] in schema["searchableFields"]


def test_custom_activity_round_trip(peer: Peer) -> None:
    (ctype,) = peer.client.execute(method="get_custom_activity_types")
    activity: dict[str, Any] = {
        "leadId": 2,
        "activityDate": "2024-03-01T10:00:00Z",
        "activityTypeId": ctype["id"],
        "primaryAttributeValue": "lead",
        "attributes": [{"apiName": "reason", "value": "lastname too long"}, {"apiName": "direction", "value": "out"}],
    }

    (added,) = peer.client.execute(method="add_custom_activities", input=[activity])
    read = peer.client.execute(method="get_lead_activities", activityTypeIds=[str(ctype["id"])], sinceDatetime=SINCE)

    assert ctype["apiName"] == "microsoftSyncFailed"
    assert added["status"] == "added"
    assert [(a["marketoGUID"], a["leadId"], a["primaryAttributeValue"]) for a in read] == [
        (added["marketoGUID"], 2, "lead")
    ]
    assert {"name": "Reason", "value": "lastname too long"} in read[0]["attributes"]


def test_606_is_retried_without_the_authorization_header_and_fails_on_601() -> None:
    """Its known behaviour: backoff re-sends the same args after the token was popped from them."""
    options = MarketoOptions(faults=[{"path": "leadchanges", "times": 1, "action": {"marketo_error": "606"}}])
    with _peer(options, max_retry_time=5) as p:
        with pytest.raises(MarketoException) as caught:
            list(p.client.execute(method="get_lead_changes_yield", fields=["email"], sinceDatetime=SINCE))
        calls = [(auth is not None) for _, path, auth in p.seen if path.endswith("leadchanges.json")]
        rejected = p.sandbox.stats()["rejected"]

    assert caught.value.code == "601"
    assert calls == [True, False]  # the first call carried the token, the retry after 606 did not
    assert rejected == {"601": 1}
