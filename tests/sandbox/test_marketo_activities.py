"""Marketo simulator activity log: what writes log, paging tokens, lead changes, custom activities."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from sandbox.marketo import MarketoOptions
from tests.sandbox._marketo_support import FakeClock, Marketo, error_code

SINCE = "2000-01-01T00:00:00Z"
CUSTOM = 100001


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def marketo(clock: FakeClock) -> Iterator[Marketo]:
    with Marketo.running(MarketoOptions(limits=False), clock=clock) as m:
        yield m


def _token(marketo: Marketo, since: str = SINCE) -> str:
    return str(marketo.get("/rest/v1/activities/pagingtoken.json", sinceDatetime=since)["nextPageToken"])


def _read_all(marketo: Marketo, path: str, token: str, **params: Any) -> tuple[list[list[dict[str, Any]]], str]:
    """Every page until moreResult is false; the pages and the final token (the watermark)."""
    pages = []
    while True:
        body = marketo.get(path, nextPageToken=token, **params)
        assert body["success"] is True, body
        pages.append(body.get("result", []))
        token = body["nextPageToken"]
        if not body["moreResult"]:
            return pages, token


# ---- what writes log ---------------------------------------------------------------------


def test_api_create_logs_new_lead_with_source_web_service_api(marketo: Marketo) -> None:
    marketo.post("/rest/v1/leads.json", {"input": [{"email": "ada@example.com", "firstName": "Ada"}]})

    (new_lead,) = marketo.sandbox.activities(lead_id=1)
    assert new_lead["activityTypeId"] == 12
    assert new_lead["primaryAttributeValueId"] == 1
    assert new_lead["primaryAttributeValue"] == "Ada"
    assert {"name": "Source Type", "value": "Web service API"} in new_lead["attributes"]


def test_api_update_logs_one_change_data_value_per_changed_field_and_none_for_unchanged(marketo: Marketo) -> None:
    lead_id = marketo.sandbox.create_lead({"email": "ada@example.com", "firstName": "Ada", "title": "Analyst"})
    update = {"email": "ada@example.com", "firstName": "Ada", "title": "Countess", "phone": "+44 1"}

    marketo.post("/rest/v1/leads.json", {"input": [update]})

    changes = marketo.sandbox.activities(lead_id=lead_id, type_id=13)
    assert [(c["fields"][0]["name"], c["fields"][0]["oldValue"], c["fields"][0]["newValue"]) for c in changes] == [
        ("title", "Analyst", "Countess"),
        ("phone", None, "+44 1"),
    ]
    for change in changes:
        assert {"name": "Source", "value": "Web service API"} in change["attributes"]
        assert {"name": "Reason", "value": "Web service API"} in change["attributes"]


def test_in_process_edit_logs_the_given_source_not_web_service_api(marketo: Marketo) -> None:
    lead_id = marketo.sandbox.create_lead({"email": "ada@example.com"})

    marketo.sandbox.update_lead(lead_id, {"firstName": "Ada"}, source="Person Details Page")

    (change,) = marketo.sandbox.activities(lead_id=lead_id, type_id=13)
    assert {"name": "Source", "value": "Person Details Page"} in change["attributes"]
    assert {"name": "Reason", "value": "Person Details Page"} in change["attributes"]


def test_delete_logs_delete_lead_and_deleted_leads_lists_it(marketo: Marketo) -> None:
    lead_id = marketo.sandbox.create_lead({"email": "ada@example.com", "firstName": "Ada", "lastName": "King"})
    marketo.post("/rest/v1/leads/delete.json", {"input": [{"id": lead_id}]})

    pages, _ = _read_all(marketo, "/rest/v1/activities/deletedleads.json", _token(marketo))

    (deleted,) = [item for page in pages for item in page]
    assert deleted["activityTypeId"] == 37
    assert deleted["leadId"] == lead_id
    assert deleted["primaryAttributeValue"] == "Ada King"
    assert deleted["marketoGUID"] == str(deleted["id"])


def test_deleted_leads_older_than_14_days_are_pruned(marketo: Marketo, clock: FakeClock) -> None:
    old, recent = (
        marketo.sandbox.create_lead({"email": "a@example.com"}),
        marketo.sandbox.create_lead({"email": "b@x.io"}),
    )
    marketo.sandbox.delete_lead(old)
    clock.advance(10 * 86400)
    marketo.sandbox.delete_lead(recent)
    clock.advance(5 * 86400)

    pages, _ = _read_all(marketo, "/rest/v1/activities/deletedleads.json", _token(marketo))

    assert [item["leadId"] for page in pages for item in page] == [recent]


# ---- paging tokens and lead changes ----------------------------------------------------------


def test_paging_token_is_base32_of_datetime_and_last_activity_id(marketo: Marketo) -> None:
    token = _token(marketo, "2014-10-06T13:22:17-08:00")

    assert base64.b32decode(token).decode() == "2014-10-06T21:22:17.000+0000,0"


def test_lead_changes_require_fields(marketo: Marketo) -> None:
    assert error_code(marketo.get("/rest/v1/activities/leadchanges.json", nextPageToken=_token(marketo))) == "701"


def test_lead_changes_page_through_new_leads_and_changes_and_the_last_token_is_a_watermark(
    marketo: Marketo, clock: FakeClock
) -> None:
    ids = [marketo.sandbox.create_lead({"email": f"p{i}@example.com"}) for i in range(4)]
    for lead_id in ids:
        clock.advance(1)
        marketo.sandbox.update_lead(lead_id, {"firstName": f"First{lead_id}", "title": "ignored: not asked for"})

    pages, watermark = _read_all(
        marketo, "/rest/v1/activities/leadchanges.json", _token(marketo), fields="firstName,email", batchSize=3
    )
    marketo.sandbox.update_lead(ids[0], {"firstName": "Later"})
    later, _ = _read_all(marketo, "/rest/v1/activities/leadchanges.json", watermark, fields="firstName")

    items = [item for page in pages for item in page]
    assert all(len(page) <= 3 for page in pages)
    assert len(pages) >= 3
    assert [i["activityTypeId"] for i in items] == [12] * 4 + [13] * 4
    assert len({i["marketoGUID"] for i in items}) == 8
    assert items[4]["fields"] == [{"id": 29, "name": "firstName", "newValue": "First1", "oldValue": None}]
    assert [i["fields"][0]["newValue"] for page in later for i in page] == ["Later"]


def test_an_activity_committed_late_is_passed_by_a_read_and_seen_only_from_an_earlier_token(
    marketo: Marketo, clock: FakeClock
) -> None:
    lead_id = marketo.sandbox.create_lead({"email": "late@example.com"})
    start = _token(marketo)
    clock.advance(1)
    marketo.sandbox.update_lead(lead_id, {"title": "Late"}, visible_after=90)
    clock.advance(1)
    marketo.sandbox.update_lead(lead_id, {"firstName": "Visible"})
    path = "/rest/v1/activities/leadchanges.json"

    pages, watermark = _read_all(marketo, path, start, fields="title,firstName")
    seen = [item["fields"][0]["name"] for page in pages for item in page if item["activityTypeId"] == 13]
    assert seen == ["firstName"]  # the late one is not visible yet, and the watermark is past it

    clock.advance(90)
    after, _ = _read_all(marketo, path, watermark, fields="title,firstName")
    assert [item for page in after for item in page] == []  # lost to a reader that only moves on
    again, _ = _read_all(marketo, path, start, fields="title,firstName")
    changes = [item["fields"][0]["newValue"] for page in again for item in page if item["activityTypeId"] == 13]
    assert changes == ["Late", "Visible"]  # a reader that reads an overlap again finds it


def test_lead_changes_filter_by_lead_ids(marketo: Marketo) -> None:
    first, second = marketo.sandbox.create_lead({"email": "a@x.io"}), marketo.sandbox.create_lead({"email": "b@x.io"})
    marketo.sandbox.update_lead(second, {"firstName": "B"})

    pages, _ = _read_all(
        marketo, "/rest/v1/activities/leadchanges.json", _token(marketo), fields="firstName", leadIds=str(second)
    )

    assert {item["leadId"] for page in pages for item in page} == {second} != {first}


def test_sincedatetime_after_the_activities_reads_nothing(marketo: Marketo, clock: FakeClock) -> None:
    marketo.sandbox.create_lead({"email": "a@x.io"})
    clock.advance(60)
    since = datetime.fromtimestamp(clock.now - 30, UTC).isoformat()

    body = marketo.get("/rest/v1/activities/leadchanges.json", nextPageToken=_token(marketo, since), fields="email")

    assert body["moreResult"] is False
    assert "result" not in body
    assert body["nextPageToken"]


def test_an_unreadable_paging_token_answers_1003(marketo: Marketo) -> None:
    body = marketo.get("/rest/v1/activities/leadchanges.json", nextPageToken="not-a-token", fields="email")

    assert error_code(body) == "1003"


@pytest.mark.parametrize(
    "params", [{"activityTypeIds": "13,37"}, {"activityTypeIds": ["13", "37"]}], ids=["comma", "repeated"]
)
def test_activities_by_type_show_change_data_value_as_attributes(marketo: Marketo, params: dict[str, Any]) -> None:
    lead_id = marketo.sandbox.create_lead({"email": "a@x.io"})
    marketo.sandbox.update_lead(lead_id, {"microsoftIsDeleted": True}, source="Web service API")

    pages, _ = _read_all(marketo, "/rest/v1/activities.json", _token(marketo), **params)

    (change,) = [item for page in pages for item in page]
    assert change["activityTypeId"] == 13
    assert change["primaryAttributeValueId"] == 4003
    assert change["primaryAttributeValue"] == "Microsoft Is Deleted"
    assert {"name": "New Value", "value": "true"} in change["attributes"]
    assert {"name": "Old Value", "value": None} in change["attributes"]


def test_activity_types_include_the_standard_ones_and_the_sync_custom_type(marketo: Marketo) -> None:
    types = {t["id"]: t["name"] for t in marketo.get("/rest/v1/activities/types.json")["result"]}

    assert types[12] == "New Lead"
    assert types[13] == "Change Data Value"
    assert types[32] == "Merge Leads"
    assert types[37] == "Delete Lead"
    assert types[CUSTOM] == "Microsoft Sync Failed"


# ---- custom activities ----------------------------------------------------------------------


def test_custom_activity_type_is_listed_approved_and_described(marketo: Marketo) -> None:
    (listed,) = marketo.get("/rest/v1/activities/external/types.json")["result"]
    (described,) = marketo.get("/rest/v1/activities/external/type/microsoftSyncFailed/describe.json")["result"]

    assert listed["apiName"] == "microsoftSyncFailed"
    assert listed["status"] == "approved"
    assert described["primaryAttribute"]["apiName"] == "entity"
    assert [a["apiName"] for a in described["attributes"]] == ["reason", "direction"]
    unknown = marketo.get("/rest/v1/activities/external/type/nope/describe.json")
    assert error_code(unknown) == "1013"


def _custom(lead_id: int, **overrides: Any) -> dict[str, Any]:
    return {
        "leadId": lead_id,
        "activityDate": "2024-03-01T10:00:00+01:00",
        "activityTypeId": CUSTOM,
        "primaryAttributeValue": "lead",
        "attributes": [
            {"apiName": "reason", "value": "lastname too long"},
            {"name": "Direction", "value": "toDynamics"},
        ],
        **overrides,
    }


def test_custom_activity_round_trip(marketo: Marketo) -> None:
    lead_id = marketo.sandbox.create_lead({"email": "a@x.io"})

    (added,) = marketo.post("/rest/v1/activities/external.json", {"input": [_custom(lead_id)]})["result"]
    pages, _ = _read_all(marketo, "/rest/v1/activities.json", _token(marketo), activityTypeIds=str(CUSTOM))

    assert added == {"id": added["id"], "marketoGUID": str(added["id"]), "status": "added"}
    (item,) = [i for page in pages for i in page]
    assert item["activityDate"] == "2024-03-01T09:00:00Z"
    assert item["primaryAttributeValue"] == "lead"
    assert item["attributes"] == [
        {"name": "Reason", "value": "lastname too long"},
        {"name": "Direction", "value": "toDynamics"},
    ]
    assert marketo.sandbox.custom_activities(lead_id)[0]["attributes"] == {
        "reason": "lastname too long",
        "direction": "toDynamics",
    }


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"leadId": 999}, "1004"),
        ({"activityTypeId": 12}, "1003"),
        ({"activityDate": "soon"}, "1003"),
        ({"primaryAttributeValue": None}, "1003"),
        ({"attributes": [{"apiName": "color", "value": "red"}]}, "1006"),
        ({"attributes": [{"apiName": "reason", "value": "x" * 256}]}, "1003"),
    ],
    ids=["no-lead", "not-custom-type", "bad-date", "no-primary", "unknown-attribute", "reason-over-255"],
)
def test_custom_activity_problems_skip_the_record_with_errors(
    marketo: Marketo, overrides: dict[str, Any], code: str
) -> None:
    lead_id = marketo.sandbox.create_lead({"email": "a@x.io"})

    body = marketo.post(
        "/rest/v1/activities/external.json", {"input": [_custom(lead_id, **overrides), _custom(lead_id)]}
    )

    skipped, added = body["result"]
    assert skipped["status"] == "skipped"
    assert skipped["errors"][0]["code"] == code
    assert "reasons" not in skipped
    assert added["status"] == "added"
    assert len(marketo.sandbox.custom_activities(lead_id)) == 1
