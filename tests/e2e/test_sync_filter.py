"""The sync filter end to end (issue 19): both simulators over real HTTP, the state store on Azurite,
the timer function and the webhook. Dynamics side: the native Two Options column ``new_synctomkto``
(on by default); Marketo side: a boolean person field. Both transitions on both sides."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

import function_app
from sync_core.core.syncfilter import Side
from sync_core.host.server import LocalHost
from sync_core.status.view import get_status_page
from tests.e2e.conftest import LEAD, SECRET, World

MARKETO_FILTER = {"MARKETO_SYNC_FILTER_FIELD": "syncToMicrosoft", "MARKETO_SYNC_FILTER": "leadSource ne 'Partner'"}


@pytest.fixture
def filtered(world_factory: object) -> World:
    return world_factory(**MARKETO_FILTER)  # type: ignore[operator]


def test_dynamics_no_to_yes_creates_the_person_and_yes_to_no_keeps_both_records(world: World) -> None:
    lead_id = world.dynamics_lead(1, new_synctomkto=False)
    report = world.cycle().report
    assert (report.filtered.dynamics, report.created, report.failures) == (1, 0, 0)
    assert world.marketo.find_leads("email", "lead1@example.com") == []

    world.dataverse.update("leads", lead_id, {"new_synctomkto": True})  # No → Yes: as a new record
    report = world.cycle().report
    assert (report.filtered.dynamics, report.created) == (0, 1)
    person = world.person_of(lead_id)

    world.dataverse.update("leads", lead_id, {"new_synctomkto": False, "jobtitle": "CFO"})  # Yes → No
    world.marketo.update_lead(int(person["id"]), {"firstName": "Marketo edit"})
    report = world.cycle().report
    assert (report.filtered.dynamics, report.written.marketo, report.written.dynamics) == (1, 0, 0)
    row = world.dynamics_row(LEAD, lead_id)
    assert row is not None
    assert row["firstname"] == "Lead1"  # not written
    assert world.marketo.get_lead(int(person["id"])).get("title") is None  # not written
    link = world.link_of(int(person["id"]))
    assert link is not None
    assert link.filtered_out == (Side.DYNAMICS,)  # both records and the link stay

    page = get_status_page(world.env, accept="application/json", query={})
    assert json.loads(page.body)["cycles"][0]["filtered"] == {"marketo": 0, "dynamics": 1}


def test_marketo_false_keeps_a_person_out_and_true_resumes_it(filtered: World) -> None:
    world = filtered
    lead_id = world.dynamics_lead(1)
    world.cycle()
    person = int(world.person_of(lead_id)["id"])

    world.marketo.update_lead(person, {"syncToMicrosoft": False, "title": "CMO"})  # Yes → No
    world.dataverse.update("leads", lead_id, {"firstname": "Dynamics edit"})
    report = world.cycle().report
    assert (report.filtered.marketo, report.written.dynamics, report.written.marketo, report.failures) == (1, 0, 0, 0)
    row = world.dynamics_row(LEAD, lead_id)
    assert row is not None
    assert row["jobtitle"] is None
    assert world.marketo.get_lead(person)["firstName"] == "Lead1"

    world.marketo.update_lead(person, {"syncToMicrosoft": True})  # No → Yes: resumes both ways
    report = world.cycle().report
    assert report.filtered.marketo == 0
    row = world.dynamics_row(LEAD, lead_id)
    assert row is not None
    assert row["jobtitle"] == "CMO"
    assert world.marketo.get_lead(person)["firstName"] == "Dynamics edit"


def test_a_partner_person_admitted_later_links_to_the_lead_with_their_email(filtered: World) -> None:
    world = filtered
    partner = world.marketo.create_lead({"email": "o'brien@example.com", "lastName": "OBrien", "leadSource": "Partner"})
    lead_id = world.dynamics_lead(1, emailaddress1="o'brien@example.com")
    report = world.cycle().report
    assert (report.filtered.marketo, report.linked, report.created) == (1, 0, 0)
    assert world.link_of(partner) is None

    world.marketo.update_lead(partner, {"leadSource": "Web"})  # No → Yes
    report = world.cycle().report
    assert (report.linked, report.created, report.failures) == (1, 0, 0)
    link = world.link_of(partner)
    assert link is not None
    assert link.dataverse_id == lead_id
    assert world.marketo.get_lead(partner)["microsoftId"] == lead_id
    assert world.api_creates() == 0


@pytest.fixture
def host(filtered: World) -> Iterator[httpx.Client]:
    with (
        LocalHost(function_app.app, port=0, run_timers=False) as served,
        httpx.Client(base_url=served.base_url, timeout=60) as client,
    ):
        yield client


def test_the_webhook_answers_filtered_for_a_person_kept_out_and_writes_nothing(
    filtered: World, host: httpx.Client
) -> None:
    world = filtered
    partner = world.marketo.create_lead(
        {"email": "p@example.com", "lastName": "P", "company": "Acme", "leadSource": "Partner"}
    )
    headers = {"Content-Type": "application/json", "X-Sync-Secret": SECRET}
    answer = host.post("/api/marketo/sync-person", content=json.dumps({"leadId": partner}), headers=headers)
    assert answer.status_code == 200
    assert answer.json()["status"] == "filtered"
    assert world.api_creates() == 0
    assert world.link_of(partner) is None
    assert world.store.get_claim(f"sync-person:{partner}") is None  # nothing left behind
    world.marketo.update_lead(partner, {"leadSource": "Web"})  # admitted now: the webhook creates it
    again = host.post("/api/marketo/sync-person", content=json.dumps({"leadId": partner}), headers=headers)
    assert again.json()["status"] == "created"
    assert world.api_creates() == 1
