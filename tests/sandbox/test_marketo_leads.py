"""Marketo simulator Lead-database endpoints: get, query, sync, delete, merge, describe."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.marketo import MarketoOptions
from tests.sandbox._marketo_support import Marketo, error_code

SYNC = "/rest/v1/leads.json"


@pytest.fixture
def marketo() -> Iterator[Marketo]:
    with Marketo.running(MarketoOptions(limits=False, seed_leads=5)) as m:
        yield m


# ---- get by id ------------------------------------------------------------------------


def test_get_lead_by_id_returns_the_default_fields() -> None:
    with Marketo.running(MarketoOptions(limits=False, seed_leads=1)) as marketo:
        body = marketo.get("/rest/v1/lead/1.json")

    (lead,) = body["result"]
    assert set(lead) == {"id", "email", "updatedAt", "createdAt", "firstName", "lastName"}
    assert lead["email"] == "seed.lead.1@example.com"
    assert lead["firstName"] == "Seed1"


@pytest.mark.parametrize(
    "params",
    [{"fields": "email,title,mobilePhone"}, {"fields": ["email", "title", "mobilePhone"]}],
    ids=["comma", "repeated"],
)
def test_get_lead_fields_can_be_comma_joined_or_repeated_and_empty_ones_are_null(
    marketo: Marketo, params: dict[str, Any]
) -> None:
    (lead,) = marketo.get("/rest/v1/lead/2.json", **params)["result"]

    assert lead == {"id": 2, "email": "seed.lead.2@example.com", "title": "Buyer", "mobilePhone": None}


def test_get_unknown_lead_is_success_with_an_empty_result(marketo: Marketo) -> None:
    body = marketo.get("/rest/v1/lead/999.json")

    assert body["success"] is True
    assert body["result"] == []


def test_get_lead_with_an_unknown_field_answers_1006(marketo: Marketo) -> None:
    assert error_code(marketo.get("/rest/v1/lead/1.json", fields="email,shoeSize")) == "1006"


# ---- query by filter type ---------------------------------------------------------------


def test_filter_by_email_matches_without_regard_to_case(marketo: Marketo) -> None:
    body = marketo.get(SYNC, filterType="email", filterValues="SEED.LEAD.2@example.com,seed.lead.4@example.com,x@y.io")

    assert [lead["id"] for lead in body["result"]] == [2, 4]
    assert "moreResult" not in body


def test_filter_query_as_post_with_method_get_form_body(marketo: Marketo) -> None:
    form = {
        "_method": "GET",
        "filterType": "email",
        "filterValues": "seed.lead.3@example.com",
        "fields": ["email", "company"],
    }

    response = marketo.request("POST", SYNC, data=form)

    assert response.json()["result"] == [{"id": 3, "email": "seed.lead.3@example.com", "company": "Seed Co 3"}]
    assert marketo.sandbox.stats()["endpoints"] == {"GET /identity/oauth/token": 1, "GET /rest/v1/leads.json": 1}


def test_filter_query_pages_with_batch_size_and_next_page_token(marketo: Marketo) -> None:
    for lead_id in (1, 2, 3, 5):
        marketo.sandbox.update_lead(lead_id, {"microsoftType": "Lead"})
    pages, token = [], None
    while True:
        params = {"filterType": "microsoftType", "filterValues": "Lead", "batchSize": 3, "fields": "id"}
        body = marketo.get(SYNC, **params, **({"nextPageToken": token} if token else {}))
        pages.append([lead["id"] for lead in body["result"]])
        if not body.get("moreResult"):
            assert "nextPageToken" not in body
            break
        token = body["nextPageToken"]

    assert pages == [[1, 2, 3], [5]]


def test_filter_matching_more_than_1000_leads_answers_1003() -> None:
    with Marketo.running(MarketoOptions(limits=False)) as marketo:
        for i in range(1001):
            marketo.sandbox.create_lead({"email": f"p{i}@example.com", "microsoftType": "Contact"})

        body = marketo.get(SYNC, filterType="microsoftType", filterValues="Contact")

    assert error_code(body) == "1003"
    assert body["errors"][0]["message"] == "Too many results match the filter"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"filterType": "email", "filterValues": ",".join(f"a{i}@x.io" for i in range(301))}, "1003"),
        ({"filterType": "firstName", "filterValues": "Seed1"}, "1011"),
        ({"filterType": "shoeSize", "filterValues": "9"}, "1006"),
        ({"filterType": "email", "filterValues": "a@x.io", "fields": "email,shoeSize"}, "1006"),
    ],
    ids=["301-values", "not-searchable", "unknown-filter-field", "unknown-output-field"],
)
def test_bad_filter_queries_answer_the_real_codes(marketo: Marketo, params: dict[str, str], code: str) -> None:
    response = marketo.request("POST", SYNC, data={"_method": "GET", **params})

    assert error_code(response.json()) == code


def test_describe2_searchable_fields_are_exactly_the_ones_filters_accept(marketo: Marketo) -> None:
    (schema,) = marketo.get("/rest/v1/leads/describe2.json")["result"]

    assert schema["searchableFields"] == [["id"], ["email"], ["microsoftType"], ["microsoftId"], ["microsoftOwnerId"]]
    for (name,) in schema["searchableFields"]:
        assert marketo.get(SYNC, filterType=name, filterValues="1")["success"] is True


# ---- sync -------------------------------------------------------------------------------


def _sync(marketo: Marketo, records: list[Any], **options: Any) -> list[dict[str, Any]]:
    body = marketo.post(SYNC, {"input": records, **options})
    assert body["success"] is True, body
    result: list[dict[str, Any]] = body["result"]
    return result


@pytest.mark.parametrize(
    ("action", "record", "expected"),
    [
        ("createOrUpdate", {"email": "new@example.com"}, {"id": 6, "status": "created"}),
        ("createOrUpdate", {"email": "seed.lead.1@example.com", "title": "CEO"}, {"id": 1, "status": "updated"}),
        ("createOnly", {"email": "new@example.com"}, {"id": 6, "status": "created"}),
        ("createOnly", {"email": "seed.lead.1@example.com"}, ("1005", "Lead already exists")),
        ("updateOnly", {"email": "seed.lead.1@example.com", "title": "CEO"}, {"id": 1, "status": "updated"}),
        ("updateOnly", {"email": "nobody@example.com"}, ("1004", "Lead not found")),
        ("updateOnly", {"id": 2, "title": "CTO"}, {"id": 2, "status": "updated"}),
        ("createDuplicate", {"email": "seed.lead.1@example.com"}, {"id": 6, "status": "created"}),
        ("createOrUpdate", {"id": 2, "email": "seed.lead.2@example.com"}, ("1003", None)),
        ("createOrUpdate", {"firstName": "No Email"}, ("1003", "Value for required field 'email' not specified")),
        ("createOrUpdate", {"email": "seed.lead.1@example.com", "shoeSize": 9}, ("1006", "Field 'shoeSize' not found")),
        ("createOrUpdate", {"email": "seed.lead.1@example.com", "updatedAt": "2024-01-01"}, ("1003", None)),
    ],
    ids=[
        "upsert-creates",
        "upsert-updates",
        "create-only-creates",
        "create-only-existing-1005",
        "update-only-updates",
        "update-only-missing-1004",
        "update-only-by-id",
        "create-duplicate",
        "id-outside-update-only-1003",
        "missing-lookup-value-1003",
        "unknown-field-1006",
        "read-only-field-1003",
    ],
)
def test_sync_action_semantics(
    marketo: Marketo, action: str, record: dict[str, Any], expected: dict[str, Any] | tuple[str, str | None]
) -> None:
    (result,) = _sync(marketo, [record], action=action)

    if isinstance(expected, dict):
        assert result == expected
    else:
        code, message = expected
        assert result["status"] == "skipped"
        assert result["reasons"][0]["code"] == code
        if message:
            assert result["reasons"][0]["message"] == message


def test_sync_results_are_in_input_order_and_a_lookup_matching_two_leads_is_1007(marketo: Marketo) -> None:
    marketo.sandbox.create_lead({"email": "seed.lead.1@example.com"})  # a duplicate of lead 1 (id 6)

    results = _sync(
        marketo,
        [
            {"email": "fresh@example.com"},
            {"email": "seed.lead.1@example.com", "title": "CEO"},
            {"email": "not an email"},
            {"email": "seed.lead.2@example.com", "title": "CFO"},
        ],
    )

    assert results[0] == {"id": 7, "status": "created"}
    assert results[1]["reasons"][0] == {"code": "1007", "message": "Multiple lead match lookup criteria"}
    assert results[2]["reasons"][0]["code"] == "1003"
    assert results[3] == {"id": 2, "status": "updated"}


def test_sync_by_a_custom_lookup_field(marketo: Marketo) -> None:
    marketo.sandbox.update_lead(3, {"microsoftId": "6f1c2a4e-0000-4000-8000-000000000003"})

    (result,) = _sync(
        marketo, [{"microsoftId": "6F1C2A4E-0000-4000-8000-000000000003", "title": "Owner"}], lookupField="microsoftId"
    )

    assert result == {"id": 3, "status": "updated"}
    assert marketo.sandbox.get_lead(3)["title"] == "Owner"  # type: ignore[index]


@pytest.mark.parametrize(
    ("field", "value", "stored"),
    [
        ("firstName", "x" * 255, "x" * 255),
        ("firstName", 42, "42"),
        ("unsubscribed", "true", True),
        ("microsoftIsDeleted", 1, True),
        ("numberOfEmployees", "12", 12),
        ("annualRevenue", "12.5", 12.5),
        ("dateOfBirth", "1990-05-01", "1990-05-01"),
        ("microsoftCreatedDate", "2024-01-02T03:04:05+01:00", "2024-01-02T02:04:05Z"),
        ("microsoftCreatedDate", "2024-01-02T03:04:05Z", "2024-01-02T03:04:05Z"),
    ],
)
def test_sync_accepts_values_of_the_field_type(marketo: Marketo, field: str, value: Any, stored: Any) -> None:
    (result,) = _sync(marketo, [{"email": "seed.lead.1@example.com", field: value}])

    assert result["status"] == "updated"
    assert marketo.sandbox.get_lead(1)[field] == stored  # type: ignore[index]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("firstName", "x" * 256),
        ("firstName", True),
        ("phone", "5" * 256),
        ("unsubscribed", "maybe"),
        ("numberOfEmployees", 1.5),
        ("numberOfEmployees", 2**31),
        ("annualRevenue", "lots"),
        ("dateOfBirth", "2024-02-30"),
        ("dateOfBirth", "01/05/1990"),
        ("microsoftCreatedDate", "yesterday"),
        ("email", "é@example.com"),
    ],
)
def test_sync_skips_values_that_do_not_fit_the_field_with_1003(marketo: Marketo, field: str, value: Any) -> None:
    before = marketo.sandbox.get_lead(1)

    (result,) = _sync(marketo, [{"email": "seed.lead.1@example.com", field: value}])

    assert result == {
        "status": "skipped",
        "reasons": [{"code": "1003", "message": f"Invalid value for field '{field}'"}],
    }
    assert marketo.sandbox.get_lead(1) == before


def test_sync_null_clears_a_field(marketo: Marketo) -> None:
    (result,) = _sync(marketo, [{"email": "seed.lead.1@example.com", "lastName": None}], action="updateOnly")
    (lead,) = marketo.get("/rest/v1/lead/1.json", fields="lastName")["result"]

    assert result["status"] == "updated"
    assert lead == {"id": 1, "lastName": None}


def test_sync_of_more_than_300_records_answers_1003_and_writes_nothing(marketo: Marketo) -> None:
    body = marketo.post(SYNC, {"input": [{"email": f"p{i}@example.com"} for i in range(301)]})

    assert error_code(body) == "1003"
    assert len(marketo.sandbox.find_leads("email", "p0@example.com")) == 0


def test_sync_with_an_unsearchable_lookup_field_answers_1011(marketo: Marketo) -> None:
    assert error_code(marketo.post(SYNC, {"input": [{"firstName": "A"}], "lookupField": "firstName"})) == "1011"


# ---- delete and merge ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/rest/v1/leads/delete.json", {"json": {"input": [{"id": 2}, {"id": 99}]}}),
        ("POST", "/rest/v1/leads/delete.json", {"params": {"id": "2,99"}}),
        ("POST", SYNC, {"params": {"_method": "DELETE"}, "json": {"input": [{"id": 2}, {"id": 99}]}}),
        ("DELETE", SYNC, {"json": {"input": [{"id": 2}, {"id": 99}]}}),
    ],
    ids=["delete-json-body", "delete-id-param", "method-delete-override", "http-delete"],
)
def test_delete_in_each_accepted_form(marketo: Marketo, method: str, path: str, kwargs: dict[str, Any]) -> None:
    body = marketo.request(method, path, **kwargs).json()

    assert body["result"] == [
        {"id": 2, "status": "deleted"},
        {"id": 99, "status": "skipped", "reasons": [{"code": "1004", "message": "Lead not found"}]},
    ]
    assert marketo.sandbox.get_lead(2) is None


@pytest.mark.parametrize("params", [{"leadId": "4"}, {"leadIds": "4,5"}], ids=["leadId", "leadIds"])
def test_merge_keeps_the_winner_removes_the_losers_and_logs_merge_leads(
    marketo: Marketo, params: dict[str, str]
) -> None:
    body = marketo.post("/rest/v1/leads/3/merge.json", **params)

    assert body["success"] is True
    assert "result" not in body
    assert marketo.sandbox.get_lead(3)["email"] == "seed.lead.3@example.com"  # type: ignore[index]
    assert marketo.sandbox.get_lead(4) is None
    (merge,) = marketo.sandbox.activities(lead_id=3, type_id=32)
    assert {"name": "Merge IDs", "value": params.get("leadIds", "4")} in merge["attributes"]


def test_merge_with_an_unknown_lead_answers_1004_and_changes_nothing(marketo: Marketo) -> None:
    assert error_code(marketo.post("/rest/v1/leads/3/merge.json", leadIds="4,77")) == "1004"
    assert marketo.sandbox.get_lead(4) is not None


# ---- describe -------------------------------------------------------------------------------


def test_describe_reports_types_lengths_and_the_sync_custom_fields(marketo: Marketo) -> None:
    fields = {f["rest"]["name"]: f for f in marketo.get("/rest/v1/leads/describe.json")["result"]}

    assert fields["email"]["dataType"] == "email"
    assert fields["firstName"]["length"] == 255
    assert fields["title"]["displayName"] == "Job Title"
    assert fields["id"]["rest"]["readOnly"] is True
    assert {name: fields[name]["dataType"] for name in ("microsoftType", "microsoftId", "microsoftIsDeleted")} == {
        "microsoftType": "string",
        "microsoftId": "string",
        "microsoftIsDeleted": "boolean",
    }
    assert fields["microsoftCreatedDate"]["dataType"] == "datetime"
    assert "length" not in fields["microsoftIsDeleted"]
