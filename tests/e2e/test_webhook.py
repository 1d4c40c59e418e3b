"""The "Sync Person to Microsoft" webhook end to end: the ``sync_person`` function served by the local host over
real HTTP, both simulators, the state store on Azurite (issue 7)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

import function_app
from sandbox import DataverseOptions
from sync_core.core.models import Claim
from sync_core.host.server import LocalHost
from sync_core.wiring.services import services_for
from tests.e2e.conftest import CONTACT, LEAD, SECRET, World

ROUTE = "/api/marketo/sync-person"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def host(world: World) -> Iterator[httpx.Client]:
    with (
        LocalHost(function_app.app, port=0, run_timers=False) as served,
        httpx.Client(base_url=served.base_url, timeout=60) as client,
    ):
        yield client


def call(client: httpx.Client, body: Any, *, secret: str | None = SECRET, raw: bytes | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Sync-Secret"] = secret
    return client.post(ROUTE, content=raw if raw is not None else json.dumps(body).encode(), headers=headers)


def person(world: World, i: int, **values: Any) -> int:
    fields = {"email": f"web{i}@example.com", "firstName": f"Web{i}", "lastName": f"Person{i}", "company": "Acme"}
    return world.marketo.create_lead({**fields, **values})


def claims(world: World) -> list[Claim]:
    return [c for c in (world.store.get_claim(f"sync-person:{i}") for i in range(1, 200)) if c is not None]


def test_a_person_without_a_record_is_created_as_a_lead_linked_and_marked(world: World, host: httpx.Client) -> None:
    lead_id = person(world, 1, title="Buyer", phone="+1 555 0101")
    answer = call(host, {"leadId": lead_id})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["status"], body["entity"]) == ("created", "lead")
    row = world.dynamics_row(LEAD, body["dynamicsId"])
    assert row is not None
    assert (row["emailaddress1"], row["lastname"], row["companyname"]) == ("web1@example.com", "Person1", "Acme")
    assert (row["jobtitle"], row["telephone1"]) == ("Buyer", "+1 555 0101")
    assert row["subject"] == "Marketo: Sync Person to Microsoft"  # createDefaults
    marked = world.marketo.get_lead(lead_id)
    assert (marked["microsoftType"], marked["microsoftId"]) == ("Lead", body["dynamicsId"])
    assert marked["microsoftCreatedDate"]
    link = world.link_of(lead_id)
    assert link is not None
    assert (link.entity, link.dataverse_id) == (LEAD, body["dynamicsId"])
    assert link.baseline["email"] == "web1@example.com"
    # The next background cycle finds both sides at the baseline; only the record's owner (one way,
    # from Dynamics) reaches the person.
    report = world.cycle()
    assert report.outcome == "ok"
    assert report.report.written.model_dump() == {"marketo": 1, "dynamics": 0}
    assert world.marketo.get_lead(lead_id)["microsoftOwnerId"] == DataverseOptions().integration_user_id
    assert world.api_creates() == 1


def test_a_created_lead_costs_at_most_four_api_calls(world: World, host: httpx.Client) -> None:
    call(host, {"leadId": person(world, 1)})  # warms the token, schema and activity caches
    counters = services_for(world.settings).counters
    before = {service: counters.calls(service) for service in ("marketo", "dataverse")}
    assert call(host, {"leadId": person(world, 2)}).json()["status"] == "created"
    calls = {service: counters.calls(service) - before[service] for service in before}
    assert calls == {"marketo": 2, "dataverse": 2}, counters.snapshot()


def test_a_second_call_answers_exists_and_writes_nothing(world: World, host: httpx.Client) -> None:
    lead_id = person(world, 1)
    first = call(host, {"leadId": lead_id}).json()
    again = call(host, {"leadId": lead_id})
    assert again.status_code == 200
    assert again.json() == {"status": "exists", "entity": "lead", "dynamicsId": first["dynamicsId"]}
    assert world.api_creates() == 1


def test_a_matching_contact_by_email_means_exists_and_nothing_is_created(world: World, host: httpx.Client) -> None:
    contact_id = world.dynamics_contact(7, emailaddress1="web1@example.com")
    lead_id = person(world, 1)
    answer = call(host, {"leadId": lead_id}).json()
    assert answer == {"status": "exists", "entity": "contact", "dynamicsId": contact_id}
    assert world.api_creates() == 0
    assert world.marketo.get_lead(lead_id).get("microsoftId") in (None, "")  # it does nothing


def test_an_email_with_a_quote_is_escaped_in_the_existence_filter(world: World, host: httpx.Client) -> None:
    world.dynamics_lead(3, emailaddress1="o'brien@example.com")
    lead_id = person(world, 1, email="o'brien@example.com")
    # Unescaped, the quote would end the literal early and Dataverse would refuse the filter.
    assert call(host, {"leadId": lead_id}).json()["status"] == "exists"
    assert world.api_creates() == 0


def test_twenty_concurrent_calls_create_one_lead_and_all_answer_with_it(world: World, host: httpx.Client) -> None:
    lead_id = person(world, 1)
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda _: call(host, {"leadId": lead_id}), range(20)))
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
    bodies = [a.json() for a in answers]
    assert sorted(b["status"] for b in bodies) == ["created"] + ["exists"] * 19
    assert len({b["dynamicsId"] for b in bodies}) == 1
    assert world.api_creates() == 1
    assert len(world.dataverse.find("leads", emailaddress1="web1@example.com")) == 1


def test_an_abandoned_claim_does_not_block_the_person(world: World, host: httpx.Client) -> None:
    lead_id = person(world, 1)
    world.store.try_claim(f"sync-person:{lead_id}", owner="crashed", now=datetime.now(UTC) - timedelta(minutes=5))
    answer = call(host, {"leadId": lead_id})
    assert answer.json()["status"] == "created"


def test_sync_as_contact_creates_a_lead_qualified_into_a_contact(world: World, host: httpx.Client) -> None:
    lead_id = person(world, 1)
    body = call(host, {"leadId": lead_id, "syncAs": "contact"}).json()
    assert (body["status"], body["entity"]) == ("created", "contact")
    contact = world.dynamics_row(CONTACT, body["dynamicsId"])
    lead = world.dynamics_row(LEAD, body["leadId"])
    assert contact is not None
    assert lead is not None
    assert contact["emailaddress1"] == "web1@example.com"
    assert contact["_originatingleadid_value"] == body["leadId"]
    assert lead["statecode"] == 1  # qualified
    link = world.link_of(lead_id)
    assert link is not None
    assert (link.entity, link.dataverse_id, link.originating_lead_id) == (CONTACT, body["dynamicsId"], body["leadId"])
    assert world.marketo.get_lead(lead_id)["microsoftType"] == "Contact"
    report = world.cycle()
    assert report.report.written.model_dump() == {"marketo": 1, "dynamics": 0}  # the owner fields, one way
    assert world.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def test_the_owner_is_bound_on_the_created_lead(world: World, host: httpx.Client) -> None:
    owner = DataverseOptions().integration_user_id
    body = call(host, {"leadId": person(world, 1), "ownerId": owner.upper()}).json()
    row = world.dynamics_row(LEAD, body["dynamicsId"])
    assert row is not None
    assert row["_ownerid_value"] == owner.lower()


def test_a_value_dynamics_would_refuse_is_rejected_logged_and_nothing_is_created(
    world: World, host: httpx.Client
) -> None:
    lead_id = person(world, 1, title="T" * 150)
    answer = call(host, {"leadId": lead_id})
    assert answer.status_code == 422
    body = answer.json()
    assert body["status"] == "rejected"
    assert any("jobtitle" in reason for reason in body["reasons"])
    assert world.api_creates() == 0
    assert world.link_of(lead_id) is None
    [activity] = world.failure_activities(lead_id)
    assert activity["primaryAttributeValue"] == "lead"
    assert activity["attributes"] == {
        "reason": "jobtitle: longer than the 100 characters Dynamics allows",
        "direction": "to_dynamics",
    }
    # Fixed in Marketo, the next call goes through: a rejection leaves no claim behind.
    world.marketo.update_lead(lead_id, {"title": "Buyer"})
    assert call(host, {"leadId": lead_id}).json()["status"] == "created"


def test_an_unknown_lead_id_is_a_404_and_writes_nothing(world: World, host: httpx.Client) -> None:
    answer = call(host, {"leadId": 999_999})
    assert answer.status_code == 404
    assert world.api_creates() == 0
    assert claims(world) == []


@pytest.mark.parametrize(
    ("raw", "secret", "status", "reason"),
    [
        (b'{"leadId": 1,', SECRET, 400, "not valid JSON"),
        (b'{"syncAs": "lead"}', SECRET, 400, "leadId"),
        (b'{"leadId": "abc"}', SECRET, 400, "leadId"),
        (b'{"leadId": 1, "syncAs": "account"}', SECRET, 400, "syncAs"),
        (b'{"leadId": 1, "ownerId": "not-a-guid"}', SECRET, 400, "ownerId"),
        (b'{"leadId": 1, "email": "x@example.com"}', SECRET, 400, "unknown field"),
        (b'{"leadId": 1}', "wrong", 401, "X-Sync-Secret"),
        (b'{"leadId": 1}', None, 401, "X-Sync-Secret"),
        (b'{"leadId": 1, "pad": "' + b"x" * 5000 + b'"}', SECRET, 413, "larger than"),
    ],
    ids=["malformed-json", "missing-leadId", "bad-leadId", "bad-syncAs", "bad-ownerId", "unknown-field",
         "wrong-secret", "no-secret", "oversize"],
)  # fmt: skip
def test_bad_input_gets_a_4xx_with_a_reason_and_writes_nothing(
    world: World, host: httpx.Client, raw: bytes, secret: str | None, status: int, reason: str
) -> None:
    lead_id = person(world, 1)
    assert lead_id == 1
    before = world.marketo.get_lead(lead_id)
    answer = call(host, None, secret=secret, raw=raw)
    assert answer.status_code == status
    assert any(reason in r for r in answer.json()["reasons"]), answer.json()
    assert world.api_creates() == 0
    assert claims(world) == []
    assert world.link_of(lead_id) is None
    assert world.marketo.get_lead(lead_id) == before
    assert world.failure_activities(lead_id) == []


def test_dataverse_throttling_answers_503_with_retry_after_and_nothing_half_written(
    world: World, host: httpx.Client
) -> None:
    lead_id = person(world, 1)
    world.dataverse.set_faults([{"path": "", "times": -1, "action": {"status": 429, "retry_after": 30}}])
    answer = call(host, {"leadId": lead_id})
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "30"
    assert answer.json()["status"] == "unavailable"
    assert world.api_creates() == 0
    assert claims(world) == []
    assert world.link_of(lead_id) is None
    world.dataverse.clear_faults()
    assert call(host, {"leadId": lead_id}).json()["status"] == "created"


def test_marketo_down_answers_503(world: World, host: httpx.Client) -> None:
    lead_id = person(world, 1)
    world.marketo.set_faults([{"path": "leads", "times": -1, "action": {"status": 503}}])
    answer = call(host, {"leadId": lead_id})
    assert answer.status_code == 503
    assert int(answer.headers["Retry-After"]) > 0
    assert world.api_creates() == 0
    assert claims(world) == []


def test_health_is_served_by_the_host_without_a_secret(world: World, host: httpx.Client) -> None:
    answer = host.get("/api/health")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"


def test_the_host_command_serves_until_it_is_stopped(world: World) -> None:
    env = {**os.environ, **world.env}
    with subprocess.Popen(
        [sys.executable, "-m", "sync_core", "host", "--port", "0", "--no-timers"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            ready = json.loads(process.stdout.readline())
            assert "^/api/marketo/sync\\-person/?$" in ready["routes"]
            answer = httpx.post(
                ready["url"] + ROUTE,
                content=json.dumps({"leadId": person(world, 1)}),
                headers={"X-Sync-Secret": SECRET},
            )
            assert answer.json()["status"] == "created"
        finally:
            process.send_signal(signal.SIGTERM)
            _, errors = process.communicate(timeout=30)
        assert process.returncode == 0, errors


def test_no_request_url_with_person_data_reaches_the_logs_at_any_level(
    world: World, host: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    # The lookup by email goes into a Dataverse $filter (a URL) and Marketo reads into filterValues;
    # httpx logs URLs at INFO, so the wiring keeps httpx at WARNING whatever the host's level.
    lead_id = person(world, 77, email="private.person@example.com")
    with caplog.at_level(logging.DEBUG):
        assert call(host, {"leadId": lead_id}).status_code == 200
        assert call(host, {"leadId": lead_id}).json()["status"] == "exists"
    assert "private.person" not in caplog.text
    assert not [record for record in caplog.records if record.name.startswith(("httpx", "httpcore"))]
    # nor a line per Table Storage request from the Azure SDK (ids only, but a flood)
    assert not [record for record in caplog.records if record.name.endswith("http_logging_policy")]
