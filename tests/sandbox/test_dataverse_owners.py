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


# ---------------------------------------------------------------------------- accounts


def test_a_contact_binds_its_parent_account_and_accounts_are_tracked(org: Org) -> None:
    tracked = org.http.get(
        "accounts",
        params={"$select": "name,numberofemployees,revenue,industrycode"},
        headers={"Prefer": "odata.track-changes"},
    )
    assert tracked.status_code == 200
    delta_link = tracked.json()["@odata.deltaLink"]
    created = org.http.post(
        "accounts",
        json={
            "name": "Contoso",
            "websiteurl": "https://contoso.example",
            "industrycode": 7,
            "numberofemployees": 250,
            "revenue": 1500000.5,
            "accountnumber": "AC-1",
        },
    )
    assert created.status_code == 204
    account = created.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    contact = org.http.post(
        "contacts",
        json={"lastname": "C", "parentcustomerid_account@odata.bind": f"/accounts({account})"},
        headers={"Prefer": "return=representation"},
    ).json()["contactid"]
    row = org.http.get(
        f"contacts({contact})", params={"$select": "_parentcustomerid_value"}, headers=ANNOTATIONS
    ).json()
    assert row["_parentcustomerid_value"] == account
    assert row["_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "account"
    assert (
        row["_parentcustomerid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"] == "parentcustomerid_account"
    )
    assert row["_parentcustomerid_value@OData.Community.Display.V1.FormattedValue"] == "Contoso"
    linked = org.http.get(
        "contacts", params={"$select": "contactid", "$filter": f"_parentcustomerid_value eq {account}"}
    ).json()["value"]
    assert [r["contactid"] for r in linked] == [contact]
    org.sandbox.update("account", account, {"numberofemployees": 300})
    changes = org.http.get(delta_link, headers=ANNOTATIONS).json()["value"]
    assert [(c["accountid"], c["numberofemployees"], c["revenue"]) for c in changes] == [(account, 300, 1500000.5)]
    assert changes[0]["industrycode@OData.Community.Display.V1.FormattedValue"] == "Consulting"
    definition = org.http.get(
        "EntityDefinitions(LogicalName='contact')/Attributes(LogicalName='parentcustomerid')",
        params={"$select": "LogicalName,AttributeType"},
    ).json()
    assert definition["AttributeType"] == "Customer"


def test_account_refusals_write_nothing(org: Org) -> None:
    account = org.sandbox.create("account", {"name": "Contoso"})
    contact = org.sandbox.create("contact", {"lastname": "C"})
    missing = str(uuid.uuid4())
    cases = [
        ({"parentcustomerid_account@odata.bind": f"/accounts({missing})"}, 404, "0x80040217"),
        ({"parentcustomerid_account@odata.bind": f"/contacts({contact})"}, 400, "0x80048d19"),
        ({"parentcustomerid@odata.bind": f"/accounts({account})"}, 400, "0x80060888"),
    ]
    for body, status, code in cases:
        answer = org.http.patch(f"contacts({contact})", json=body, headers={"If-Match": "*"})
        assert error_of(answer)[:2] == (status, code), body
    assert org.sandbox.get("contact", contact)["_parentcustomerid_value"] is None  # type: ignore[index]
    for body, message in [
        ({"numberofemployees": "many"}, "Cannot convert the literal 'many' to the expected type 'Edm.Int32'."),
        ({"numberofemployees": 2.5}, "Cannot convert the literal '2.5' to the expected type 'Edm.Int32'."),
        ({"revenue": -1}, "outside the valid range"),
        ({"industrycode": 99}, "outside the valid range"),
    ]:
        answer = org.http.patch(f"accounts({account})", json=body, headers={"If-Match": "*"})
        assert error_of(answer)[0] == 400
        assert message in error_of(answer)[2]
    assert org.sandbox.get("account", account)["numberofemployees"] is None  # type: ignore[index]


def test_deleting_an_account_deletes_its_contacts(org: Org) -> None:
    account = org.sandbox.create("account", {"name": "Contoso"})
    kept = org.sandbox.create("contact", {"lastname": "Elsewhere"})
    children = [
        org.sandbox.create(
            "contact", {"lastname": f"C{i}", "parentcustomerid_account@odata.bind": f"/accounts({account})"}
        )
        for i in range(2)
    ]
    delta_link = org.http.get(
        "contacts", params={"$select": "lastname"}, headers={"Prefer": "odata.track-changes"}
    ).json()["@odata.deltaLink"]
    assert org.http.delete(f"accounts({account})").status_code == 204
    gone = org.http.get(delta_link).json()["value"]
    assert sorted(item["id"] for item in gone if item.get("reason") == "deleted") == sorted(children)
    assert [r["contactid"] for r in org.sandbox.rows("contact")] == [kept]
