"""Marketing lists, campaigns and tasks in the Dataverse simulator, over the Web API: a list made
with ``PATCH`` + ``If-None-Match: *`` (412 the second time), ``AddMemberList`` / ``RemoveMemberList``
/ ``AddItemCampaign`` bound to the list, ``listmembers`` read-only and queryable, the 404s for
unknown ids, the cascades when a list or a member is deleted; and a task made once, regarding a
lead through its per-target navigation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.sandbox.test_dataverse_api import Org, error_of, running

ACTION = "lists({list})/Microsoft.Dynamics.CRM.{name}"


@pytest.fixture
def org() -> Iterator[Org]:
    with running(seed_leads=3) as org:
        yield org


def _list(org: Org, list_id: str, member_type: int = 4) -> int:
    body = {"listname": "Mkto-leads-Spring", "createdfromcode": member_type}
    return org.http.patch(f"lists({list_id})", json=body, headers={"If-None-Match": "*"}).status_code


def _members(org: Org, list_id: str) -> list[str]:
    rows = org.http.get("listmembers", params={"$filter": f"_listid_value eq {list_id}"}).json()["value"]
    return sorted(row["_entityid_value"] for row in rows)


def test_a_list_is_made_once_and_takes_members_of_its_type(org: Org) -> None:
    list_id = str(uuid.uuid4())
    assert _list(org, list_id) == 204
    again = org.http.patch(f"lists({list_id})", json={"listname": "x"}, headers={"If-None-Match": "*"})
    assert again.status_code == 412
    lead = org.lead(lastname="Member")
    added = org.http.post(ACTION.format(list=list_id, name="AddMemberList"), json={"EntityId": lead})
    assert added.status_code == 200
    assert uuid.UUID(added.json()["Id"])
    twice = org.http.post(ACTION.format(list=list_id, name="AddMemberList"), json={"EntityId": lead})
    assert twice.json()["Id"] == added.json()["Id"]  # one membership
    assert _members(org, list_id) == [lead]
    contact = org.sandbox.create("contacts", {"lastname": "Not a lead"})
    wrong_type = org.http.post(ACTION.format(list=list_id, name="AddMemberList"), json={"EntityId": contact})
    assert error_of(wrong_type)[:2] == (404, "0x80040217")  # the list takes leads: no lead has that id
    missing = str(uuid.uuid4())
    unknown_list = org.http.post(ACTION.format(list=missing, name="AddMemberList"), json={"EntityId": lead})
    assert error_of(unknown_list)[:2] == (404, "0x80040217")
    assert org.http.post("listmembers", json={"_listid_value": list_id}).status_code >= 400  # read-only
    removed = org.http.post(ACTION.format(list=list_id, name="RemoveMemberList"), json={"EntityId": lead})
    assert removed.status_code == 204
    assert _members(org, list_id) == []


def test_a_list_joins_a_campaign_once(org: Org) -> None:
    list_id = str(uuid.uuid4())
    _list(org, list_id)
    campaign = org.sandbox.create("campaigns", {"name": "Spring"})
    body = {"Campaign": {"@odata.type": "Microsoft.Dynamics.CRM.campaign", "campaignid": campaign}}
    for _ in range(2):
        assert org.http.post(ACTION.format(list=list_id, name="AddItemCampaign"), json=body).status_code == 200
    assert org.sandbox.campaign_lists(campaign) == [list_id]
    unknown = {"Campaign": {"campaignid": str(uuid.uuid4())}}
    assert error_of(org.http.post(ACTION.format(list=list_id, name="AddItemCampaign"), json=unknown))[0] == 404


def test_deleting_a_list_or_a_member_removes_the_memberships(org: Org) -> None:
    list_id = str(uuid.uuid4())
    _list(org, list_id)
    campaign = org.sandbox.create("campaigns", {"name": "Spring"})
    org.http.post(ACTION.format(list=list_id, name="AddItemCampaign"), json={"Campaign": {"campaignid": campaign}})
    kept, gone = org.lead(lastname="Kept"), org.lead(lastname="Gone")
    for lead in (kept, gone):
        org.http.post(ACTION.format(list=list_id, name="AddMemberList"), json={"EntityId": lead})
    assert org.http.delete(f"leads({gone})").status_code == 204
    assert _members(org, list_id) == [kept]
    assert org.http.delete(f"lists({list_id})").status_code == 204
    assert _members(org, list_id) == []
    assert org.sandbox.campaign_lists(campaign) == []
    assert _list(org, list_id) == 204  # made again: empty, on no campaign
    assert _members(org, list_id) == []
    assert org.sandbox.campaign_lists(campaign) == []


def test_a_task_regards_a_lead_through_its_per_target_navigation_and_is_made_once(org: Org) -> None:
    lead = org.lead(lastname="Regarded")
    task_id = str(uuid.uuid4())
    body = {
        "subject": "Follow up",
        "scheduledend": "2026-12-09T10:30:00Z",
        "regardingobjectid_lead_task@odata.bind": f"/leads({lead})",
        "statecode": 0,
        "statuscode": 3,
    }
    made = org.http.patch(f"tasks({task_id})", json=body, headers={"If-None-Match": "*"})
    assert made.status_code == 204, made.text
    again = org.http.patch(f"tasks({task_id})", json={**body, "subject": "Other"}, headers={"If-None-Match": "*"})
    assert again.status_code == 412
    task = org.http.get(f"tasks({task_id})", params={"$select": "subject,_regardingobjectid_value,statuscode"}).json()
    assert (task["subject"], task["_regardingobjectid_value"], task["statuscode"]) == ("Follow up", lead, 3)
    missing = str(uuid.uuid4())
    unknown = {**body, "regardingobjectid_lead_task@odata.bind": f"/leads({missing})"}
    refused = org.http.patch(f"tasks({uuid.uuid4()})", json=unknown, headers={"If-None-Match": "*"})
    assert error_of(refused)[:2] == (404, "0x80040217")
    bad_status = org.http.patch(
        f"tasks({uuid.uuid4()})", json={**body, "statuscode": 5}, headers={"If-None-Match": "*"}
    )  # Completed is not a status of an open task
    assert bad_status.status_code == 400
