"""The Dataverse simulator over real HTTP on 127.0.0.1: reads, writes, validation, bulk
messages, QualifyLead and metadata. Also home of the small harness the other Dataverse
sandbox tests share (``FakeClock``, ``Org``, ``running``)."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from sandbox._http import HttpServer
from sandbox.dataverse import INTEGRATION_USER_ID, UI_USER_ID, DataverseOptions, DataverseSandbox

LEAD_TYPE = "Microsoft.Dynamics.CRM.lead"
_TLS = ssl.create_default_context()  # built once: httpx would load the CA store for every client (~0.1 s)


class FakeClock:
    """Wall clock the tests move by hand (token expiry, change retention, limit windows)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Org:
    sandbox: DataverseSandbox
    root: str  # the org URL (DATAVERSE_URL)
    http: httpx.Client  # base_url = the Web API root, static bearer token
    clock: FakeClock
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"{self.root}/api/data/v9.2"

    def lead(self, **values: Any) -> str:
        """Create a lead as a Dynamics user (valid for the default plug-in rules)."""
        return self.sandbox.create("lead", {"lastname": "Lovelace", "companyname": "Analytical", **values})


@contextmanager
def running(*, sleep: Callable[[float], None] = time.sleep, **options: Any) -> Iterator[Org]:
    clock = FakeClock()
    sandbox = DataverseSandbox(DataverseOptions(clock=clock, **options), sleep=sleep)
    with HttpServer(sandbox.handle, service="dataverse") as server:
        headers = {"Authorization": "Bearer sandbox-token", "Accept": "application/json", "OData-Version": "4.0"}
        with httpx.Client(
            base_url=f"{server.base_url}/api/data/v9.2/", headers=headers, timeout=10, verify=_TLS
        ) as http:
            yield Org(sandbox, server.base_url, http, clock)


@pytest.fixture
def org() -> Iterator[Org]:
    with running(seed_leads=10) as org:
        yield org


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["message"]


# ---------------------------------------------------------------------------- reading


def test_responses_carry_odata_version_and_request_ids(org: Org) -> None:
    response = org.http.get("leads", params={"$select": "firstname"})
    assert response.status_code == 200
    assert response.headers["OData-Version"] == "4.0"
    assert response.headers["REQ_ID"] == response.headers["x-ms-service-request-id"]
    assert response.headers["Content-Type"].startswith("application/json")
    row = response.json()["value"][0]
    assert set(row) == {"@odata.etag", "firstname", "leadid"}
    assert row["@odata.etag"] == f'W/"{org.sandbox.get("lead", row["leadid"])["versionnumber"]}"'  # type: ignore[index]


def test_paging_follows_absolute_next_links_until_every_row_is_seen(org: Org) -> None:
    prefer = {"Prefer": "odata.maxpagesize=3"}
    response = org.http.get("leads", params={"$select": "emailaddress1"}, headers=prefer)
    assert response.headers["Preference-Applied"] == "odata.maxpagesize=3"
    seen: list[str] = []
    pages = 0
    while True:
        body = response.json()
        pages += 1
        assert len(body["value"]) <= 3
        seen += [row["emailaddress1"] for row in body["value"]]
        if "@odata.nextLink" not in body:
            break
        assert body["@odata.nextLink"].startswith(org.api + "/leads?")
        assert "$skiptoken=" in body["@odata.nextLink"]
        response = org.http.get(body["@odata.nextLink"], headers=prefer)
    assert pages == 4
    assert sorted(seen) == sorted(f"seed.lead.{i}@example.com" for i in range(1, 11))


def test_paging_keeps_its_place_when_rows_change_between_pages(org: Org) -> None:
    prefer = {"Prefer": "odata.maxpagesize=4"}
    first = org.http.get("leads", params={"$select": "leadid", "$orderby": "leadid"}, headers=prefer).json()
    first_ids = [row["leadid"] for row in first["value"]]
    org.sandbox.delete("lead", first_ids[0])  # shifts an offset-based pager; a keyset pager does not care
    rest: list[str] = []
    link = first.get("@odata.nextLink")
    while link:
        body = org.http.get(link, headers=prefer).json()
        rest += [row["leadid"] for row in body["value"]]
        link = body.get("@odata.nextLink")
    assert len(first_ids) + len(rest) == 10
    assert not set(first_ids) & set(rest)


def test_top_limits_rows_without_paging_and_orderby_sorts(org: Org) -> None:
    body = org.http.get("leads", params={"$select": "firstname", "$orderby": "firstname desc", "$top": "3"}).json()
    assert [row["firstname"] for row in body["value"]] == ["Seed9", "Seed8", "Seed7"]
    assert "@odata.nextLink" not in body


@pytest.mark.parametrize(("direction", "first"), [("asc", None), ("desc", "Zed")])
def test_orderby_sorts_nulls_lowest_across_pages(org: Org, direction: str, first: str | None) -> None:
    org.sandbox.update("lead", org.sandbox.rows("lead")[4]["leadid"], {"jobtitle": None})
    org.sandbox.update("lead", org.sandbox.rows("lead")[5]["leadid"], {"jobtitle": "Zed"})
    prefer = {"Prefer": "odata.maxpagesize=4"}
    body = org.http.get(
        "leads", params={"$select": "jobtitle", "$orderby": f"jobtitle {direction}"}, headers=prefer
    ).json()
    titles = [row["jobtitle"] for row in body["value"]]
    while "@odata.nextLink" in body:
        body = org.http.get(body["@odata.nextLink"], headers=prefer).json()
        titles += [row["jobtitle"] for row in body["value"]]
    assert titles[0] == first
    assert len(titles) == 10
    assert sorted(titles, key=lambda t: (t is not None, t), reverse=direction == "desc") == titles


def test_count_and_annotations_on_request(org: Org) -> None:
    body = org.http.get(
        "leads",
        params={"$select": "statuscode,_ownerid_value", "$count": "true", "$top": "1"},
        headers={"Prefer": 'odata.include-annotations="*"'},
    ).json()
    assert body["@odata.count"] == 10
    [row] = body["value"]
    assert row["statuscode@OData.Community.Display.V1.FormattedValue"] == "New"
    assert row["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "systemuser"


def test_filter_on_modifiedon_returns_rows_changed_since(org: Org) -> None:
    org.clock.advance(60)
    since = datetime.fromtimestamp(org.clock.now - 30, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    new_id = org.lead(emailaddress1="new@example.com")
    body = org.http.get("leads", params={"$select": "emailaddress1", "$filter": f"modifiedon ge {since}"}).json()
    assert [row["leadid"] for row in body["value"]] == [new_id]


def test_crafted_literal_in_filter_matches_nothing(org: Org) -> None:
    crafted = "x'' or 1 eq 1 or ''a"  # properly escaped: one string value
    body = org.http.get("leads", params={"$filter": f"emailaddress1 eq '{crafted}'"}).json()
    assert body["value"] == []
    unescaped = org.http.get("leads", params={"$filter": "emailaddress1 eq 'x' or 1 eq 1 or 'a'"})
    assert unescaped.status_code == 400


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"$select": "firstname,x"}, "Could not find a property named 'x' on type 'Microsoft.Dynamics.CRM.lead'."),
        ({"$filter": "x eq 1"}, "Could not find a property named 'x' on type 'Microsoft.Dynamics.CRM.lead'."),
        ({"$orderby": "x desc"}, "Could not find a property named 'x' on type 'Microsoft.Dynamics.CRM.lead'."),
        ({"$filter": "firstname eq 'a"}, "There is an unterminated string literal at position 13"),
        ({"$skip": "10"}, "The query parameter $skip is not supported"),
    ],
)
def test_bad_query_options_are_400_with_uri_error(org: Org, params: dict[str, str], message: str) -> None:
    status, code, text = error_of(org.http.get("leads", params=params))
    assert (status, code) == (400, "0x80060888")
    assert message in text


def test_unknown_entity_set_is_404_resource_not_found(org: Org) -> None:
    assert error_of(org.http.get("opportunities")) == (
        404,
        "0x80060888",
        "Resource not found for the segment 'opportunities'.",
    )


def test_get_by_guid_and_by_alternate_key_with_an_escaped_quote(org: Org) -> None:
    lead_id = org.lead(emailaddress1="o'brien@example.com")
    by_id = org.http.get(f"leads({lead_id})", params={"$select": "emailaddress1"})
    assert by_id.json()["emailaddress1"] == "o'brien@example.com"
    assert by_id.json()["@odata.context"] == f"{org.api}/$metadata#leads(emailaddress1)/$entity"
    by_key = org.http.get("leads(emailaddress1='O''Brien@example.com')", params={"$select": "leadid"})
    assert by_key.json()["leadid"] == lead_id
    unchanged = org.http.get(f"leads({lead_id})", headers={"If-None-Match": by_id.json()["@odata.etag"]})
    assert unchanged.status_code == 304


def test_missing_rows_are_404_with_the_real_codes(org: Org) -> None:
    missing = "00000000-0000-0000-0000-000000000001"
    assert error_of(org.http.get(f"leads({missing})")) == (
        404,
        "0x80040217",
        f"lead With Id = {missing} Does Not Exist",
    )
    assert error_of(org.http.get("leads(emailaddress1='nobody@example.com')")) == (
        404,
        "0x80060891",
        "A record with the specified key values does not exist in lead entity",
    )
    status, _, text = error_of(org.http.get("leads(firstname='Seed1')"))
    assert status == 400
    assert "The key in the request URI is not valid for resource 'Microsoft.Dynamics.CRM.lead'" in text


# ---------------------------------------------------------------------------- writing


def test_create_answers_204_with_odata_entity_id_and_records_the_integration_user(org: Org) -> None:
    response = org.http.post("leads", json={"lastname": "Hopper", "companyname": "Navy", "subject": "Marketo"})
    assert response.status_code == 204
    entity = response.headers["OData-EntityId"]
    assert entity.startswith(f"{org.api}/leads(")
    created = org.sandbox.get("lead", entity[-37:-1])
    assert created is not None
    assert created["_modifiedby_value"] == created["_ownerid_value"] == INTEGRATION_USER_ID
    assert (created["statecode"], created["statuscode"], created["fullname"]) == (0, 1, "Hopper")


def test_create_with_return_representation_answers_201_with_the_row(org: Org) -> None:
    response = org.http.post(
        "leads",
        params={"$select": "lastname,statuscode"},
        json={"lastname": "Hopper", "companyname": "Navy"},
        headers={"Prefer": "return=representation"},
    )
    assert response.status_code == 201
    assert response.headers["Preference-Applied"] == "return=representation"
    assert "OData-EntityId" not in response.headers
    body = response.json()
    assert body["@odata.context"] == f"{org.api}/$metadata#leads(lastname,statuscode)/$entity"
    assert (body["lastname"], body["statuscode"]) == ("Hopper", 1)


def test_bad_select_on_a_write_refuses_it_before_anything_is_written(org: Org) -> None:
    response = org.http.post(
        "leads",
        params={"$select": "nosuch"},
        json={"lastname": "Hopper", "companyname": "Navy"},
        headers={"Prefer": "return=representation"},
    )
    assert error_of(response)[:2] == (400, "0x80060888")
    assert len(org.sandbox.rows("lead")) == 10


def test_patch_with_if_match_star_updates_and_refuses_a_missing_row(org: Org) -> None:
    lead_id = org.lead()
    assert org.http.patch(f"leads({lead_id})", json={"jobtitle": "CTO"}, headers={"If-Match": "*"}).status_code == 204
    assert org.sandbox.get("lead", lead_id)["jobtitle"] == "CTO"  # type: ignore[index]
    missing = "00000000-0000-0000-0000-0000000000ff"
    response = org.http.patch(f"leads({missing})", json={"jobtitle": "x"}, headers={"If-Match": "*"})
    assert error_of(response) == (404, "0x80040217", f"lead With Id = {missing} Does Not Exist")
    assert org.sandbox.get("lead", missing) is None


def test_patch_with_a_stale_etag_is_412_and_changes_nothing(org: Org) -> None:
    lead_id = org.lead()
    etag = org.http.get(f"leads({lead_id})").json()["@odata.etag"]
    org.sandbox.update("lead", lead_id, {"jobtitle": "moved on"})
    response = org.http.patch(f"leads({lead_id})", json={"jobtitle": "stale"}, headers={"If-Match": etag})
    assert error_of(response) == (
        412,
        "0x80060882",
        "The version of the existing record doesn't match the RowVersion property provided.",
    )
    assert org.sandbox.get("lead", lead_id)["jobtitle"] == "moved on"  # type: ignore[index]


def test_patch_without_if_match_upserts_by_guid(org: Org) -> None:
    new_id = "2b7c1f3e-0a4d-4e55-9a51-6c1e2f7d8a90"
    prefer = {"Prefer": "return=representation"}
    created = org.http.patch(f"leads({new_id})", json={"lastname": "New", "companyname": "c"}, headers=prefer)
    assert created.status_code == 201
    updated = org.http.patch(f"leads({new_id})", json={"jobtitle": "Boss"}, headers=prefer)
    assert updated.status_code == 200
    assert updated.json()["jobtitle"] == "Boss"
    assert updated.headers["OData-EntityId"] == f"{org.api}/leads({new_id})"


def test_if_none_match_star_creates_only(org: Org) -> None:
    key = "leads(emailaddress1='seed.lead.1@example.com')"
    response = org.http.patch(key, json={"jobtitle": "x"}, headers={"If-None-Match": "*"})
    assert error_of(response) == (412, "0x80040237", "A record with matching key values already exists.")
    fresh = org.http.patch(
        "leads(emailaddress1='fresh@example.com')",
        json={"lastname": "Fresh", "companyname": "c"},
        headers={"If-None-Match": "*"},
    )
    assert fresh.status_code == 204


def test_upsert_by_alternate_key_creates_then_updates_and_answers_the_key_form(org: Org) -> None:
    url = "leads(emailaddress1='o''hara@example.com')"
    created = org.http.patch(url, json={"lastname": "OHara", "companyname": "c"})
    assert created.status_code == 204
    assert created.headers["OData-EntityId"] == f"{org.api}/leads(emailaddress1='o''hara@example.com')"
    [row] = org.sandbox.find("lead", emailaddress1="o'hara@example.com")  # key copied from the URL
    updated = org.http.patch(url, json={"jobtitle": "Chief", "emailaddress1": "ignored@example.com"})
    assert updated.status_code == 204
    after = org.sandbox.get("lead", row["leadid"])
    assert after is not None
    assert (after["jobtitle"], after["emailaddress1"]) == ("Chief", "o'hara@example.com")  # key column stripped


def test_create_that_violates_the_email_key_is_412_case_insensitively(org: Org) -> None:
    response = org.http.post(
        "leads", json={"lastname": "Dup", "companyname": "c", "emailaddress1": "SEED.LEAD.1@example.com"}
    )
    status, code, text = error_of(response)
    assert (status, code) == (412, "0x80060892")
    assert text.startswith("Entity Key lead_emailaddress1_key violated. A record with the same value for emailaddress1")
    assert len(org.sandbox.rows("lead")) == 10


def test_delete_answers_204_then_404(org: Org) -> None:
    lead_id = org.lead()
    assert org.http.delete(f"leads({lead_id})").status_code == 204
    assert error_of(org.http.delete(f"leads({lead_id})"))[:2] == (404, "0x80040217")


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (
            {"firstname": "x" * 51},
            400,
            "0x80044331",
            "A validation error occurred.  The length of the 'firstname' attribute of the 'lead' entity exceeded the "
            "maximum allowed length of '50'.",
        ),
        (
            {"subject": "s" * 301},
            400,
            "0x80044331",
            "A validation error occurred.  The length of the 'subject' attribute of the 'lead' entity exceeded the "
            "maximum allowed length of '300'.",
        ),
        (
            {"leadsourcecode": 99},
            400,
            "0x8004431A",
            "A validation error occurred. The value 99 of 'leadsourcecode' on record of type 'lead' is outside the "
            "valid range. Accepted Values: 1,2,3,4,5,6,7,8,9,10",
        ),
        (
            {"statuscode": 42},
            400,
            "0x8004431A",
            "A validation error occurred. The value 42 of 'statuscode' on record of type 'lead' is outside the valid "
            "range. Accepted Values: 1,2",
        ),
        ({"statecode": 7}, 400, "0x8004431A", "The value 7 of 'statecode' on record of type 'lead'"),
        ({"statuscode": 3}, 400, "0x80040203", "3 is not a valid status code for state code LeadState.Open"),
        ({"jobtitle": 5}, 400, "0x80048d19", "Cannot convert the literal '5' to the expected type 'Edm.String'."),
        (
            {"leadsourcecode": "Web"},
            400,
            "0x80048d19",
            "Cannot convert the literal 'Web' to the expected type 'Edm.Int32'.",
        ),
        (
            {"nosuch": 1},
            400,
            "0x80060888",
            "The property 'nosuch' does not exist on type 'Microsoft.Dynamics.CRM.lead'. Make sure to only use "
            "property names that are defined by the type.",
        ),
        ({"_ownerid_value": INTEGRATION_USER_ID}, 400, "0x80060888", "The property '_ownerid_value' does not exist"),
        ({"lastname": None}, 400, "0x80040265", "Validation plug-in: lastname is required on lead."),
        ({"companyname": "  "}, 400, "0x80040265", "Validation plug-in: companyname is required on lead."),
        (
            {"emailaddress1": "not-an-email"},
            400,
            "0x80040265",
            "Validation plug-in: emailaddress1 on lead is not a valid email address.",
        ),
    ],
)
def test_invalid_write_is_refused_with_the_real_error(
    org: Org, body: dict[str, Any], status: int, code: str, message: str
) -> None:
    base = {"lastname": "Valid", "companyname": "Valid Co"}
    response = org.http.post("leads", json={**base, **body})
    got_status, got_code, got_message = error_of(response)
    assert (got_status, got_code) == (status, code)
    assert message in got_message
    assert len(org.sandbox.rows("lead")) == 10  # nothing written


def test_update_checks_plug_in_rules_only_for_changed_columns(org: Org) -> None:
    lead_id = org.sandbox.create("lead", {"firstname": "No last name"}, bypass_plugins=True)
    assert org.http.patch(f"leads({lead_id})", json={"jobtitle": "x"}, headers={"If-Match": "*"}).status_code == 204
    emptied = org.http.patch(f"leads({lead_id})", json={"firstname": "a", "lastname": ""}, headers={"If-Match": "*"})
    assert error_of(emptied)[:2] == (400, "0x80040265")


def test_application_required_subject_is_not_enforced_by_the_web_api(org: Org) -> None:
    assert org.http.post("leads", json={"lastname": "NoTopic", "companyname": "c"}).status_code == 204


def test_plug_in_rules_can_be_turned_off_or_bypassed() -> None:
    with running(plugin_rules=[]) as bare:
        assert bare.http.post("leads", json={"emailaddress1": "bad"}).status_code == 204
    with running() as strict:
        bypass = {"MSCRM.BypassCustomPluginExecution": "true"}
        assert strict.http.post("leads", json={"firstname": "only"}, headers=bypass).status_code == 204
        assert strict.http.post("contacts", json={"firstname": "only"}).status_code == 400


# ---------------------------------------------------------------------------- bulk messages


def test_create_multiple_returns_ids_in_input_order(org: Org) -> None:
    targets = [{"@odata.type": LEAD_TYPE, "lastname": f"Bulk{i}", "companyname": "c"} for i in range(3)]
    response = org.http.post("leads/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
    assert response.status_code == 200
    body = response.json()
    assert body["@odata.context"] == f"{org.api}/$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse"
    assert [org.sandbox.get("lead", i)["lastname"] for i in body["Ids"]] == ["Bulk0", "Bulk1", "Bulk2"]  # type: ignore[index]


def test_a_bulk_message_not_enabled_on_a_table_is_refused_and_missing_from_the_probe() -> None:
    with running(seed_leads=1, bulk_disabled=["lead/UpdateMultiple", "contact"]) as org:
        [lead] = org.sandbox.rows("lead")
        target = {"@odata.type": LEAD_TYPE, "leadid": lead["leadid"], "lastname": "Changed"}
        refused = org.http.post("leads/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": [target]})
        assert error_of(refused) == (
            400,
            "0x80040800",
            "The 'UpdateMultiple' method does not support entities of type 'lead'. "
            "MessageProcessorCache returned MessageProcessor.Empty.",
        )
        assert org.sandbox.get("lead", lead["leadid"])["lastname"] != "Changed"  # type: ignore[index]
        created = org.http.post(
            "leads/Microsoft.Dynamics.CRM.CreateMultiple",
            json={"Targets": [{"@odata.type": LEAD_TYPE, "lastname": "New", "companyname": "c"}]},
        )
        assert created.status_code == 200  # only UpdateMultiple is off on lead
        contact = org.http.post(
            "contacts/Microsoft.Dynamics.CRM.CreateMultiple",
            json={"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.contact", "lastname": "C"}]},
        )
        assert error_of(contact)[:2] == (400, "0x80040800")
        probe = org.http.get("sdkmessagefilters", params={"$select": "primaryobjecttypecode"}).json()["value"]
        listed = sorted(row["primaryobjecttypecode"] for row in probe if row["primaryobjecttypecode"] != "account")
        assert listed == ["lead", "lead"]  # CreateMultiple and UpsertMultiple on lead; nothing on contact
        patched = org.http.patch(f"leads({lead['leadid']})", json={"lastname": "One"}, headers={"If-Match": "*"})
        assert patched.status_code == 204  # the single-record path ($batch parts too) still works


@pytest.mark.parametrize(
    ("bad", "status", "code"),
    [
        ({"@odata.type": LEAD_TYPE, "lastname": "x" * 51, "companyname": "c"}, 400, "0x80044331"),
        ({"@odata.type": LEAD_TYPE, "companyname": "c"}, 400, "0x80040265"),
        (
            {
                "@odata.type": LEAD_TYPE,
                "lastname": "Dup",
                "companyname": "c",
                "emailaddress1": "seed.lead.2@example.com",
            },
            412,
            "0x80060892",
        ),
        ({"lastname": "Untyped", "companyname": "c"}, 400, "0x80048d19"),
    ],
)
def test_create_multiple_is_all_or_nothing(org: Org, bad: dict[str, Any], status: int, code: str) -> None:
    good = {"@odata.type": LEAD_TYPE, "lastname": "Good", "companyname": "c"}
    response = org.http.post("leads/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": [good, bad, good]})
    assert error_of(response)[:2] == (status, code)
    assert len(org.sandbox.rows("lead")) == 10
    assert org.http.get(f"{org.root}/_sandbox/stats").json()["writes"] == {}


def test_update_multiple_with_a_missing_record_rolls_back_every_update(org: Org) -> None:
    ids = [row["leadid"] for row in org.sandbox.rows("lead")[:2]]
    targets = [{"@odata.type": LEAD_TYPE, "leadid": i, "jobtitle": "Bulk"} for i in ids]
    targets.append({"@odata.type": LEAD_TYPE, "leadid": "00000000-0000-0000-0000-00000000000a", "jobtitle": "Bulk"})
    response = org.http.post("leads/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": targets})
    assert error_of(response)[:2] == (404, "0x80040217")
    assert [org.sandbox.get("lead", i)["jobtitle"] for i in ids] == ["Buyer", "Buyer"]  # type: ignore[index]
    ok = org.http.post("leads/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": targets[:2]})
    assert ok.status_code == 204
    assert [org.sandbox.get("lead", i)["jobtitle"] for i in ids] == ["Bulk", "Bulk"]  # type: ignore[index]


def test_upsert_multiple_creates_and_updates_by_key(org: Org) -> None:
    targets = [
        {"@odata.type": LEAD_TYPE, "@odata.id": "leads(emailaddress1='seed.lead.3@example.com')", "jobtitle": "Up"},
        {
            "@odata.type": LEAD_TYPE,
            "@odata.id": "leads(emailaddress1='n''ew@example.com')",
            "lastname": "N",
            "companyname": "c",
        },
    ]
    response = org.http.post("leads/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": targets})
    assert response.status_code == 204
    assert org.sandbox.find("lead", emailaddress1="seed.lead.3@example.com")[0]["jobtitle"] == "Up"
    assert org.sandbox.find("lead", emailaddress1="n'ew@example.com")[0]["lastname"] == "N"


def test_upsert_multiple_refuses_the_key_column_in_body_on_the_create_path_only(org: Org) -> None:
    def target(email: str) -> dict[str, Any]:
        key = f"leads(emailaddress1='{email}')"
        return {"@odata.type": LEAD_TYPE, "@odata.id": key, "emailaddress1": email, "lastname": "K", "companyname": "c"}

    existing = org.http.post(
        "leads/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": [target("seed.lead.4@example.com")]}
    )
    assert existing.status_code == 204  # update path: the server strips the key column
    new = org.http.post(
        "leads/Microsoft.Dynamics.CRM.UpsertMultiple", json={"Targets": [target("brand.new@example.com")]}
    )
    status, _, message = error_of(new)
    assert status == 400
    assert "emailaddress1" in message
    assert org.sandbox.find("lead", emailaddress1="brand.new@example.com") == []


# ---------------------------------------------------------------------------- QualifyLead


def test_qualify_lead_creates_a_contact_and_closes_the_lead(org: Org) -> None:
    lead_id = org.lead(firstname="Grace", emailaddress1="grace@example.com", jobtitle="RADM")
    response = org.http.post(
        f"leads({lead_id})/Microsoft.Dynamics.CRM.QualifyLead",
        json={"CreateAccount": False, "CreateContact": True, "CreateOpportunity": False, "Status": 3},
    )
    assert response.status_code == 200
    [created] = response.json()["value"]
    assert created["@odata.type"] == "#Microsoft.Dynamics.CRM.contact"
    contact = org.sandbox.get("contact", created["contactid"])
    assert contact is not None
    assert contact["_originatingleadid_value"] == lead_id
    assert (contact["firstname"], contact["lastname"], contact["emailaddress1"]) == (
        "Grace",
        "Lovelace",
        "grace@example.com",
    )
    lead = org.sandbox.get("lead", lead_id)
    assert lead is not None
    assert (lead["statecode"], lead["statuscode"]) == (1, 3)
    again = org.http.post(
        f"leads({lead_id})/Microsoft.Dynamics.CRM.QualifyLead",
        json={"CreateAccount": False, "CreateContact": True, "CreateOpportunity": False, "Status": 3},
    )
    assert error_of(again)[::2] == (400, "The lead is already closed.")


def test_python_api_qualify_acts_as_a_dynamics_user(org: Org) -> None:
    lead_id = org.lead(emailaddress1="user.qualified@example.com")
    contact_id = org.sandbox.qualify_lead(lead_id)
    contact = org.sandbox.get("contact", contact_id)
    assert contact is not None
    assert contact["_modifiedby_value"] == UI_USER_ID
    assert org.sandbox.stats.to_json()["user_writes"]["leads"]["qualify"] == 1


# ---------------------------------------------------------------------------- metadata and probes


def test_entity_definitions_resolve_a_table_by_logical_name(org: Org) -> None:
    body = org.http.get(
        "EntityDefinitions",
        params={"$select": "LogicalName,EntitySetName,PrimaryIdAttribute", "$filter": "LogicalName eq 'contact'"},
    ).json()
    [entity] = body["value"]
    assert {k: entity[k] for k in ("LogicalName", "EntitySetName", "PrimaryIdAttribute")} == {
        "LogicalName": "contact",
        "EntitySetName": "contacts",
        "PrimaryIdAttribute": "contactid",
    }
    single = org.http.get("EntityDefinitions(LogicalName='lead')", params={"$select": "ChangeTrackingEnabled"}).json()
    assert single["ChangeTrackingEnabled"] is True


def test_attribute_metadata_gives_required_levels_and_lengths_only_through_the_cast(org: Org) -> None:
    attributes = org.http.get(
        "EntityDefinitions(LogicalName='lead')/Attributes",
        params={
            "$select": "LogicalName,RequiredLevel",
            "$filter": "RequiredLevel/Value eq Microsoft.Dynamics.CRM.AttributeRequiredLevel'ApplicationRequired'",
        },
    ).json()["value"]
    assert sorted(a["LogicalName"] for a in attributes) == ["lastname", "subject"]
    no_cast = org.http.get(
        "EntityDefinitions(LogicalName='lead')/Attributes", params={"$select": "LogicalName,MaxLength"}
    )
    assert (
        error_of(no_cast)[2]
        == "Could not find a property named 'MaxLength' on type 'Microsoft.Dynamics.CRM.AttributeMetadata'."
    )
    strings = org.http.get(
        "EntityDefinitions(LogicalName='lead')/Attributes/Microsoft.Dynamics.CRM.StringAttributeMetadata",
        params={"$select": "LogicalName,MaxLength,Format"},
    ).json()["value"]
    by_name = {a["LogicalName"]: (a["MaxLength"], a["Format"]) for a in strings}
    assert by_name["emailaddress1"] == (100, "Email")
    assert by_name["telephone1"] == (50, "Phone")
    assert by_name["subject"] == (300, "Text")


def test_entity_definition_expands_its_attributes_in_one_call(org: Org) -> None:
    body = org.http.get(
        "EntityDefinitions(LogicalName='contact')",
        params={"$select": "LogicalName", "$expand": "Attributes($select=LogicalName,AttributeType,IsValidForCreate)"},
    ).json()
    by_name = {a["LogicalName"]: a for a in body["Attributes"]}
    assert by_name["originatingleadid"]["AttributeType"] == "Lookup"
    assert by_name["createdon"]["IsValidForCreate"] is False
    assert "MaxLength" not in by_name["lastname"]
    refused = org.http.get("EntityDefinitions(LogicalName='contact')", params={"$expand": "Relationships"})
    assert error_of(refused)[:2] == (400, "0x80060888")


def test_picklist_metadata_expands_option_labels(org: Org) -> None:
    body = org.http.get(
        "EntityDefinitions(LogicalName='lead')/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
        params={"$select": "LogicalName", "$expand": "OptionSet($select=Options)"},
    ).json()
    [source] = body["value"]
    options = {o["Value"]: o["Label"]["UserLocalizedLabel"]["Label"] for o in source["OptionSet"]["Options"]}
    assert options[8] == "Web"
    assert len(options) == 10
    status = org.http.get(
        "EntityDefinitions(LogicalName='lead')/Attributes/Microsoft.Dynamics.CRM.StatusAttributeMetadata",
        params={"$expand": "OptionSet"},
    ).json()["value"][0]
    assert {o["Value"]: o["State"] for o in status["OptionSet"]["Options"]}[3] == 1


def test_bulk_message_probe_and_who_am_i(org: Org) -> None:
    probe = org.http.get(
        "sdkmessagefilters",
        params={
            "$select": "sdkmessagefilterid",
            "$filter": "sdkmessageid/name eq 'UpsertMultiple' and primaryobjecttypecode eq 'lead'",
        },
    ).json()["value"]
    assert len(probe) == 1
    assert set(probe[0]) == {"sdkmessagefilterid"}
    assert org.http.get("WhoAmI").json()["UserId"] == INTEGRATION_USER_ID


def test_filter_by_primary_keys_reads_those_rows_and_applies_the_rest(org: Org) -> None:
    ada = org.lead(firstname="Ada")
    bob = org.lead(firstname="Bob")
    org.lead(firstname="Ada")  # matches the other condition, not the keys
    absent = "00000000-0000-0000-0000-000000000001"
    keys = f"(leadid eq {ada} or leadid eq {bob.upper()} or leadid eq {absent})"
    both = org.http.get("leads", params={"$select": "firstname", "$filter": keys}).json()["value"]
    assert sorted(row["leadid"] for row in both) == sorted([ada, bob])
    only = org.http.get("leads", params={"$select": "firstname", "$filter": f"{keys} and firstname eq 'ada'"}).json()
    assert [row["leadid"] for row in only["value"]] == [ada]
