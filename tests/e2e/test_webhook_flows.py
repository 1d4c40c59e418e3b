"""The flow-step webhooks end to end (issue 20): Create Task, Add to / Remove from Microsoft Campaign
and Change Owner served by the local host over real HTTP, both simulators, the state store on
Azurite. Each: created/exists, 422 with a reason (and the person's activity log), 401, 400, and
concurrent retries that make one result."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

import function_app
from sync_core.core.models import CampaignMember, EntityType
from sync_core.host.server import LocalHost
from tests.e2e.conftest import SECRET, World

UNKNOWN = "0b0b0b0b-0000-4000-8000-000000000001"


@pytest.fixture
def host(world: World) -> Iterator[httpx.Client]:
    with (
        LocalHost(function_app.app, port=0, run_timers=False) as served,
        httpx.Client(base_url=served.base_url, timeout=60) as client,
    ):
        yield client


def call(client: httpx.Client, step: str, body: Any, *, secret: str | None = SECRET) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Sync-Secret"] = secret
    return client.post(f"/api/marketo/{step}", content=json.dumps(body).encode(), headers=headers)


def person(world: World, i: int) -> int:
    return int(
        world.marketo.create_lead(
            {"email": f"flow{i}@example.com", "firstName": f"Flow{i}", "lastName": f"Person{i}", "company": "Acme"}
        )
    )


def at_once(client: httpx.Client, step: str, body: Any, times: int = 8) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=times) as pool:
        return list(pool.map(lambda _: call(client, step, body), range(times)))


def failures(world: World, lead_id: int) -> list[str]:
    return [a["attributes"]["reason"] for a in world.failure_activities(lead_id)]


def test_create_task_syncs_first_creates_once_per_request_and_refuses_bad_input(
    world: World, host: httpx.Client
) -> None:
    lead_id = person(world, 1)
    body = {
        "leadId": lead_id,
        "subject": "Call about pricing",
        "description": "Visited the pricing page",
        "status": "In Progress",
        "requestId": "run-1",
    }
    # Marketo's call and its retries, all at once, before the person is in Dynamics: the person is
    # synced first once, one task is created, every answer names it.
    answers = at_once(host, "create-task", body)
    assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
    assert sorted(r.json()["status"] for r in answers) == ["created"] + ["exists"] * 7
    assert len({(r.json()["taskId"], r.json()["dynamicsId"]) for r in answers}) == 1
    created = answers[0].json()
    assert created["entity"] == "lead"
    task = world.dataverse.get("tasks", created["taskId"])
    assert task is not None
    assert (task["subject"], task["description"], task["statuscode"], task["statecode"]) == (
        "Call about pricing",
        "Visited the pricing page",
        3,
        0,
    )
    assert task["_regardingobjectid_value"] == created["dynamicsId"]
    assert task["scheduledend"] > task["createdon"]  # due in 5 days by default
    link = world.link_of(lead_id)  # the person was synced first, as Sync Person does
    assert link is not None
    assert link.dataverse_id == created["dynamicsId"]
    assert len(world.dataverse.rows("leads")) == 1

    # Another request id is another task.
    again = call(host, "create-task", {**body, "requestId": "run-2"}).json()
    assert (again["status"], again["taskId"] != created["taskId"]) == ("created", True)
    assert len(world.dataverse.rows("tasks")) == 2

    refused = call(host, "create-task", {**body, "status": "Sleeping"})
    assert refused.status_code == 400
    assert "status reason" in refused.json()["reasons"][0]
    assert call(host, "create-task", {"leadId": lead_id}).status_code == 400  # subject is required
    assert call(host, "create-task", body, secret="wrong").status_code == 401
    # An owner Dynamics does not know: 422 with its reason, on the person's activity log too.
    rejected = call(host, "create-task", {**body, "requestId": "run-3", "status": "Completed", "ownerId": UNKNOWN})
    assert rejected.status_code == 422, rejected.text
    assert UNKNOWN in rejected.json()["reasons"][0]
    assert any(UNKNOWN in reason for reason in failures(world, lead_id))
    assert len(world.dataverse.rows("tasks")) == 2


def test_add_to_campaign_keeps_one_list_per_campaign_and_type_and_remove_takes_only_what_we_added(
    world: World, host: httpx.Client
) -> None:
    campaign = world.dataverse.create("campaigns", {"name": "Spring webinar"})
    ours, theirs = person(world, 1), person(world, 2)
    # The first call and its retries at once: one list, one membership.
    answers = at_once(host, "add-to-campaign", {"leadId": ours, "campaignId": campaign})
    assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
    assert sorted(r.json()["status"] for r in answers) == ["added"] + ["exists"] * 7
    added = answers[0].json()
    list_id = added["listId"]
    marketing_list = world.dataverse.get("lists", list_id)
    assert marketing_list is not None
    assert (marketing_list["listname"], marketing_list["createdfromcode"]) == ("Mkto-leads-Spring webinar", 4)
    assert world.dataverse.campaign_lists(campaign) == [list_id]
    assert world.dataverse.list_members(list_id) == [added["dynamicsId"]]
    assert len(world.dataverse.rows("lists")) == 1

    # A Dynamics user puts another person's lead on the same list by hand.
    synced = call(host, "sync-person", {"leadId": theirs}).json()["dynamicsId"]
    world.dataverse.add_list_member(list_id, synced)
    assert call(host, "add-to-campaign", {"leadId": theirs, "campaignId": campaign}).json() == {
        "status": "exists",
        "entity": "lead",
        "dynamicsId": synced,
        "campaignId": campaign,
        "listId": list_id,
        "addedBySync": False,
    }
    # Remove takes off only what this sync added.
    kept = call(host, "remove-from-campaign", {"leadId": theirs, "campaignId": campaign})
    assert kept.json()["status"] == "not-added"
    removed = at_once(host, "remove-from-campaign", {"leadId": ours, "campaignId": campaign}, times=4)
    assert sorted(r.json()["status"] for r in removed) == ["not-added", "not-added", "not-added", "removed"]
    assert world.dataverse.list_members(list_id) == [synced]

    # Unknown and inactive campaigns are refused with the reason, logged on the person.
    unknown = call(host, "add-to-campaign", {"leadId": ours, "campaignId": UNKNOWN})
    assert unknown.status_code == 422
    assert UNKNOWN in unknown.json()["reasons"][0]
    world.dataverse.update("campaigns", campaign, {"statecode": 1})
    inactive = call(host, "add-to-campaign", {"leadId": ours, "campaignId": campaign})
    assert inactive.status_code == 422
    assert "inactive" in inactive.json()["reasons"][0]
    assert any("inactive" in reason for reason in failures(world, ours))
    assert world.dataverse.list_members(list_id) == [synced]
    assert call(host, "add-to-campaign", {"leadId": ours, "campaignId": "spring"}).status_code == 400
    assert call(host, "remove-from-campaign", {"leadId": ours, "campaignId": campaign}, secret=None).status_code == 401


def test_the_status_view_has_a_row_per_webhook(world: World, host: httpx.Client) -> None:
    lead_id = person(world, 1)
    call(host, "create-task", {"leadId": lead_id, "subject": "Follow up"})
    call(host, "create-task", {"leadId": lead_id, "subject": "Follow up"})
    call(host, "create-task", {"leadId": lead_id}, secret="wrong")
    status = host.get("/api/status", params={"format": "json"}).json()
    rows = {row["name"]: row for row in status["webhooks"]}
    assert rows["create-task"]["calls"] == 3
    assert rows["create-task"]["outcomes"] == {"created": 1, "exists": 1, "refused": 1}
    assert rows["create-task"]["p50_ms"] is not None
    assert rows["sync-person"]["calls"] == 0  # every webhook has its row, called or not


def test_every_flow_step_has_a_route_and_the_same_front_door(world: World, host: httpx.Client) -> None:
    for step in ("change-owner", "create-task", "add-to-campaign", "remove-from-campaign"):
        too_big = host.post(
            f"/api/marketo/{step}",
            content=b" " * 5000,
            headers={"X-Sync-Secret": SECRET, "Content-Type": "application/json"},
        )
        assert too_big.status_code == 413, step
        assert call(host, step, {"leadId": "7"}).status_code == 400, step
    assert world.api_creates() == 0


def test_change_owner_syncs_first_assigns_a_user_or_team_and_refuses_an_unknown_owner(
    world: World, host: httpx.Client
) -> None:
    ada = world.dataverse.create(
        "systemuser", {"firstname": "Ada", "lastname": "Owner", "domainname": "ada@example.com"}
    )
    team = world.dataverse.create("team", {"name": "EMEA Sales"})
    lead_id = person(world, 1)
    # Marketo's call and its retries at once, before the person is in Dynamics: synced first, once.
    answers = at_once(host, "change-owner", {"leadId": lead_id, "ownerId": ada})
    assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
    assert sorted(r.json()["status"] for r in answers) == ["changed"] + ["unchanged"] * 7
    assert len({r.json()["dynamicsId"] for r in answers}) == 1
    record = answers[0].json()["dynamicsId"]
    assert len(world.dataverse.rows("leads")) == 1
    assert world.dataverse.get("leads", record)["_ownerid_value"] == ada
    assert call(host, "change-owner", {"leadId": lead_id, "ownerId": ada}).json()["status"] == "unchanged"

    to_team = call(host, "change-owner", {"leadId": lead_id, "ownerId": team, "ownerType": "team"}).json()
    assert (to_team["status"], to_team["previousOwnerId"]) == ("changed", ada)
    assert world.dataverse.get("leads", record)["_ownerid_value"] == team

    unknown = call(host, "change-owner", {"leadId": lead_id, "ownerId": UNKNOWN})
    assert unknown.status_code == 422
    assert f"systemuser With Id = {UNKNOWN} Does Not Exist" in unknown.json()["reasons"][0]
    assert any(UNKNOWN in reason for reason in failures(world, lead_id))
    assert world.dataverse.get("leads", record)["_ownerid_value"] == team

    assert call(host, "change-owner", {"leadId": lead_id}).status_code == 400  # ownerId is required
    assert call(host, "change-owner", {"leadId": lead_id, "ownerId": "ada"}).status_code == 400
    assert call(host, "change-owner", {"leadId": lead_id, "ownerId": ada}, secret="x").status_code == 401


def test_add_to_campaign_makes_good_a_failure_between_its_steps(world: World, host: httpx.Client) -> None:
    campaign = world.dataverse.create("campaigns", {"name": "Autumn"})
    lead_id = person(world, 1)
    body = {"leadId": lead_id, "campaignId": campaign}
    # The list is made, then Dataverse is down when it is added to the campaign (both attempts).
    world.dataverse.set_faults([{"method": "POST", "path": "AddItemCampaign", "times": 2, "action": {"status": 503}}])
    assert call(host, "add-to-campaign", body).status_code == 503
    assert len(world.dataverse.rows("lists")) == 1
    assert world.dataverse.campaign_lists(campaign) == []
    # Then AddMemberList is: the list joins the campaign, the person is not added, nor recorded as ours.
    world.dataverse.set_faults([{"method": "POST", "path": "AddMemberList", "times": 2, "action": {"status": 503}}])
    assert call(host, "add-to-campaign", body).status_code == 503
    list_id = world.dataverse.rows("lists")[0]["listid"]
    assert world.dataverse.campaign_lists(campaign) == [list_id]
    assert world.dataverse.list_members(list_id) == []
    # Marketo's next call adds them: "added", not "exists".
    added = call(host, "add-to-campaign", body).json()
    assert (added["status"], added["listId"]) == ("added", list_id)
    assert len(world.dataverse.list_members(list_id)) == 1
    assert len(world.dataverse.rows("lists")) == 1


def test_add_to_campaign_adds_a_member_a_stopped_call_recorded_but_never_sent(world: World, host: httpx.Client) -> None:
    campaign = world.dataverse.create("campaigns", {"name": "Summer"})
    first, second = person(world, 1), person(world, 2)
    list_id = call(host, "add-to-campaign", {"leadId": first, "campaignId": campaign}).json()["listId"]
    record_id = call(host, "sync-person", {"leadId": second}).json()["dynamicsId"]
    # What a call killed between recording the membership and AddMemberList leaves behind.
    world.store.add_campaign_member(
        CampaignMember(
            campaign_id=campaign,
            list_id=list_id,
            entity=EntityType.LEAD,
            dataverse_id=record_id,
            marketo_id=second,
            added_at=datetime.now(UTC),
            confirmed=False,
        )
    )
    assert record_id not in world.dataverse.list_members(list_id)
    added = call(host, "add-to-campaign", {"leadId": second, "campaignId": campaign}).json()
    assert added["status"] == "added"  # not "exists": it was never on the list
    assert record_id in world.dataverse.list_members(list_id)
    recorded = world.store.get_campaign_member(list_id, record_id)
    assert recorded is not None
    assert recorded.confirmed
    assert call(host, "add-to-campaign", {"leadId": second, "campaignId": campaign}).json()["status"] == "exists"
    removed = call(host, "remove-from-campaign", {"leadId": second, "campaignId": campaign}).json()
    assert record_id not in world.dataverse.list_members(list_id), removed


def test_add_to_campaign_makes_the_list_again_when_a_dynamics_user_deleted_it(world: World, host: httpx.Client) -> None:
    campaign = world.dataverse.create("campaigns", {"name": "Winter"})
    first, second = person(world, 1), person(world, 2)
    list_id = call(host, "add-to-campaign", {"leadId": first, "campaignId": campaign}).json()["listId"]
    world.dataverse.delete("lists", list_id)
    added = call(host, "add-to-campaign", {"leadId": second, "campaignId": campaign})
    assert added.status_code == 200, added.text
    assert (added.json()["status"], added.json()["listId"]) == ("added", list_id)
    assert world.dataverse.get("lists", list_id) is not None
    assert world.dataverse.list_members(list_id) == [added.json()["dynamicsId"]]
    assert list_id in world.dataverse.campaign_lists(campaign)


def test_remove_from_campaign_takes_off_the_lead_a_contact_was_qualified_from(world: World, host: httpx.Client) -> None:
    campaign = world.dataverse.create("campaigns", {"name": "Spring webinar"})
    lead_id = person(world, 1)
    body = {"leadId": lead_id, "campaignId": campaign}
    added = call(host, "add-to-campaign", body).json()
    lead_list = added["listId"]
    # Qualified in Dynamics; the cycle moves the person's link to the contact.
    contact_id = world.dataverse.qualify_lead(added["dynamicsId"])
    assert world.cycle().report.qualified == 1
    assert world.link_of(lead_id).dataverse_id == contact_id  # type: ignore[union-attr]
    removed = call(host, "remove-from-campaign", body)
    assert removed.status_code == 200, removed.text
    assert (removed.json()["status"], removed.json()["entity"], removed.json()["listId"]) == (
        "removed",
        "lead",
        lead_list,
    )
    assert world.dataverse.list_members(lead_list) == []
    again = call(host, "remove-from-campaign", body).json()
    assert (again["status"], again["entity"]) == ("not-added", "contact")
    # As a contact the person goes on the campaign's second list: one per campaign and type.
    as_contact = call(host, "add-to-campaign", body).json()
    assert (as_contact["status"], as_contact["entity"], as_contact["dynamicsId"]) == ("added", "contact", contact_id)
    contact_list = world.dataverse.get("lists", as_contact["listId"])
    assert contact_list is not None
    assert (contact_list["listname"], contact_list["createdfromcode"]) == ("Mkto-contacts-Spring webinar", 2)
    assert sorted(world.dataverse.campaign_lists(campaign)) == sorted([lead_list, as_contact["listId"]])
    assert call(host, "remove-from-campaign", body).json()["status"] == "removed"
    assert world.dataverse.list_members(as_contact["listId"]) == []
    world.dataverse.update("campaigns", campaign, {"statecode": 1})
    inactive = call(host, "remove-from-campaign", body)
    assert inactive.status_code == 422
    assert "inactive" in inactive.json()["reasons"][0]
