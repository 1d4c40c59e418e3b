"""Users and teams in the Dataverse simulator: ``systemusers``/``teams`` read over the Web API,
``ownerid`` bound to either with ``@odata.bind``, its lookup annotations, and the refusals for
an unknown id, a wrong entity set and a write the integration role may not make."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from sandbox.dataverse import INTEGRATION_USER_ID, UI_USER_ID
from tests.sandbox.test_dataverse_api import Org, error_of, running

ANNOTATIONS = {"Prefer": 'odata.include-annotations="*"'}


@pytest.fixture
def org() -> Iterator[Org]:
    with running(seed_leads=10) as org:
        yield org


def _user(org: Org, first: str, last: str, email: str) -> str:
    return org.sandbox.create(
        "systemuser", {"firstname": first, "lastname": last, "internalemailaddress": email, "domainname": email}
    )


def test_users_and_teams_are_read_over_the_web_api(org: Org) -> None:
    seeded = org.http.get("systemusers", params={"$select": "fullname"}).json()["value"]
    assert {u["systemuserid"] for u in seeded} == {INTEGRATION_USER_ID, UI_USER_ID}
    ada = _user(org, "Ada", "Owner", "ada.owner@contoso.example")
    team = org.sandbox.create("team", {"name": "EMEA Sales"})
    found = org.http.get(
        "systemusers",
        params={
            "$select": "fullname,internalemailaddress",
            "$filter": "internalemailaddress eq 'ADA.OWNER@contoso.example'",
        },
    ).json()["value"]
    assert [(u["systemuserid"], u["fullname"]) for u in found] == [(ada, "Ada Owner")]
    one = org.http.get(f"teams({team})", params={"$select": "name,teamtype"}).json()
    assert (one["name"], one["teamtype"]) == ("EMEA Sales", 0)  # an owner team unless told otherwise
    missing = str(uuid.uuid4())
    assert error_of(org.http.get(f"systemusers({missing})")) == (
        404,
        "0x80040217",
        f"systemuser With Id = {missing} Does Not Exist",
    )
    definition = org.http.get(
        "EntityDefinitions(LogicalName='lead')/Attributes(LogicalName='ownerid')",
        params={"$select": "LogicalName,AttributeType"},
    ).json()
    assert definition["AttributeType"] == "Owner"


def test_ownerid_binds_to_a_user_or_a_team_and_reads_back_with_annotations(org: Org) -> None:
    team = org.sandbox.create("team", {"name": "EMEA Sales"})
    created = org.http.post(
        "leads",
        json={"lastname": "L", "companyname": "C", "ownerid@odata.bind": f"/teams({team})"},
        headers={"Prefer": "return=representation"},
        params={"$select": "_ownerid_value"},
    )
    assert created.status_code == 201
    lead = created.json()["leadid"]
    row = org.http.get(f"leads({lead})", params={"$select": "_ownerid_value"}, headers=ANNOTATIONS).json()
    assert row["_ownerid_value"] == team
    assert row["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "team"
    assert row["_ownerid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"] == "ownerid"
    assert row["_ownerid_value@OData.Community.Display.V1.FormattedValue"] == "EMEA Sales"

    ada = _user(org, "Ada", "Owner", "ada.owner@contoso.example")
    tracked = org.http.get("leads", params={"$select": "_ownerid_value"}, headers={"Prefer": "odata.track-changes"})
    delta_link = tracked.json()["@odata.deltaLink"]
    patched = org.http.patch(
        f"leads({lead})", json={"ownerid@odata.bind": f"/systemusers({ada.upper()})"}, headers={"If-Match": "*"}
    )
    assert patched.status_code == 204
    changes = org.http.get(delta_link, headers=ANNOTATIONS).json()["value"]
    assert [(c["leadid"], c["_ownerid_value"]) for c in changes] == [(lead, ada)]
    assert changes[0]["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "systemuser"
    assert changes[0]["_ownerid_value@OData.Community.Display.V1.FormattedValue"] == "Ada Owner"
    mine = org.http.get("leads", params={"$select": "leadid", "$filter": f"_ownerid_value eq {ada}"}).json()
    assert [r["leadid"] for r in mine["value"]] == [lead]
    # a record created without an owner belongs to the user who created it
    contact = org.http.post("contacts", json={"lastname": "C"}, headers={"Prefer": "return=representation"}).json()
    assert contact["_ownerid_value"] == INTEGRATION_USER_ID


def test_an_owner_that_does_not_exist_or_is_no_principal_is_refused_and_nothing_written(org: Org) -> None:
    lead = org.lead()
    before = org.sandbox.get("lead", lead)
    missing = str(uuid.uuid4())
    unknown_user = org.http.patch(
        f"leads({lead})", json={"ownerid@odata.bind": f"/systemusers({missing})"}, headers={"If-Match": "*"}
    )
    assert error_of(unknown_user) == (404, "0x80040217", f"systemuser With Id = {missing} Does Not Exist")
    unknown_team = org.http.post(
        "leads", json={"lastname": "L", "companyname": "C", "ownerid@odata.bind": f"/teams({missing})"}
    )
    assert error_of(unknown_team)[:3] == (404, "0x80040217", f"team With Id = {missing} Does Not Exist")
    not_a_principal = org.http.patch(
        f"leads({lead})", json={"ownerid@odata.bind": f"/leads({lead})"}, headers={"If-Match": "*"}
    )
    status, code, message = error_of(not_a_principal)
    assert (status, code) == (400, "0x80048d19")
    assert "is not a URL of a systemuser or team record" in message
    cleared = org.http.patch(f"leads({lead})", json={"ownerid@odata.bind": None}, headers={"If-Match": "*"})
    assert error_of(cleared)[:2] == (400, "0x80040203")
    assert org.sandbox.get("lead", lead) == before
    assert len(org.sandbox.rows("lead")) == 11


def test_the_integration_role_reads_users_and_teams_but_does_not_write_them(org: Org) -> None:
    refused = org.http.post("teams", json={"name": "From the API"})
    assert error_of(refused)[:2] == (403, "0x80040220")
    assert "prvCreateTeam" in error_of(refused)[2]
    patched = org.http.patch(f"systemusers({UI_USER_ID})", json={"firstname": "X"}, headers={"If-Match": "*"})
    assert error_of(patched)[:2] == (403, "0x80040220")
    privileges = org.http.get(
        f"systemusers({INTEGRATION_USER_ID})/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()"
    ).json()["RolePrivileges"]
    names = {p["PrivilegeName"] for p in privileges}
    assert {"prvReadUser", "prvReadTeam", "prvWriteLead"} <= names
    assert not names & {"prvCreateUser", "prvWriteTeam"}
    assert org.sandbox.rows("team") == []
