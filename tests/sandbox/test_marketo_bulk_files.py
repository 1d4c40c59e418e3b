"""Bulk extract requests and files over real HTTP: create's errors (701/1003/1006/1013/1035,
609/612), the file format (header, ``null``, quoting, separators, REST value types) and
``Range`` answers (docs MKT-BULK, MKT-BLE, MKT-BAE)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.marketo import MarketoOptions
from tests.sandbox._bulk_support import around, create, create_id, file, job
from tests.sandbox._marketo_support import FakeClock, Marketo, error_code

TRICKY = 'Smith, "Jr."\nLine two — Zoë Łódź 東京'


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_750_000_000.0)


@pytest.fixture
def marketo(clock: FakeClock) -> Iterator[Marketo]:
    options = MarketoOptions(seed_leads=2, bulk_processing_seconds=1, bulk_unsupported_filters=["smartListName"])
    with Marketo.running(options, clock=clock) as m:
        yield m


def _finished(marketo: Marketo, clock: FakeClock, kind: str = "leads", **body: Any) -> str:
    export_id = create_id(marketo, clock, kind=kind, **body)
    job(marketo, export_id, "enqueue", kind)
    clock.advance(5)
    return export_id


# ---- create's errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"filter": {"createdAt": "RANGE"}}, "701"),  # no fields
        ({"fields": ["id"]}, "701"),  # no filter
        ({"fields": ["id", "nope"], "filter": {"createdAt": "RANGE"}}, "1006"),
        ({"fields": "id", "filter": {"createdAt": "RANGE"}}, "1003"),
        ({"fields": ["id"], "format": "XLS", "filter": {"createdAt": "RANGE"}}, "1003"),
        ({"fields": ["id"], "columnHeaderNames": {"email": "E"}, "filter": {"createdAt": "RANGE"}}, "1003"),
        ({"fields": ["id"], "filter": {"createdAt": "RANGE", "updatedAt": "RANGE"}}, "1003"),
        ({"fields": ["id"], "filter": {"modifiedAt": "RANGE"}}, "1003"),
        ({"fields": ["id"], "filter": {"createdAt": {"startAt": "2025-06-01T00:00:00Z"}}}, "1003"),
        ({"fields": ["id"], "filter": {"createdAt": {"startAt": "1 June", "endAt": "2025-06-02T00:00:00Z"}}}, "1003"),
        (
            {"fields": ["id"], "filter": {"createdAt": {"startAt": "2025-06-01T00:00:00.000Z", "endAt": "2025-06-02"}}},
            "1003",  # ISO-8601 without milliseconds
        ),
        ({"fields": ["id"], "filter": {"createdAt": {"startAt": "2025-06-02", "endAt": "2025-06-01"}}}, "1003"),
        (
            {"fields": ["id"], "filter": {"updatedAt": {"startAt": "2025-05-01", "endAt": "2025-06-01T00:00:01Z"}}},
            "1003",
        ),
        ({"fields": ["id"], "filter": {"staticListId": "12"}}, "1003"),
        ({"fields": ["id"], "filter": {"staticListId": 12}}, "1013"),  # the sandbox has no lists
        ({"fields": ["id"], "filter": {"smartListId": 7}}, "1013"),
        ({"fields": ["id"], "filter": {"smartListName": "Hot"}}, "1035"),  # unavailable on this subscription
    ],
    ids=[
        "no-fields",
        "no-filter",
        "unknown-field",
        "fields-not-a-list",
        "bad-format",
        "header-for-a-field-not-exported",
        "two-filters",
        "unknown-filter",
        "no-endAt",
        "not-iso",
        "milliseconds",
        "end-before-start",
        "over-31-days",
        "list-id-not-integer",
        "unknown-static-list",
        "unknown-smart-list",
        "unsupported-filter-1035",
    ],
)
def test_create_lead_export_errors(marketo: Marketo, clock: FakeClock, body: dict[str, Any], code: str) -> None:
    text = json.dumps(body).replace('"RANGE"', json.dumps(around(clock)))

    answer = marketo._json(
        marketo.request(
            "POST", "/bulk/v1/leads/export/create.json", content=text, headers={"Content-Type": "application/json"}
        )
    )

    assert error_code(answer) == code
    if code == "1035":
        assert answer["errors"][0]["message"] == "Unsupported filter type for target subscription: smartListName"


def test_exactly_31_days_is_allowed_and_plain_dates_are_iso(marketo: Marketo) -> None:
    answer = create(
        marketo,
        "leads",
        {"fields": ["id"], "filter": {"updatedAt": {"startAt": "2025-05-01", "endAt": "2025-06-01T00:00:00+00:00"}}},
    )

    assert answer["result"][0]["status"] == "Created"


def test_create_needs_a_json_body(marketo: Marketo) -> None:
    form = marketo.request("POST", "/bulk/v1/leads/export/create.json", data={"fields": "id"})
    broken = marketo.request(
        "POST", "/bulk/v1/leads/export/create.json", content=b"{", headers={"Content-Type": "application/json"}
    )

    assert error_code(form.json()) == "612"
    assert error_code(broken.json()) == "609"


@pytest.mark.parametrize(
    ("filter_", "code"),
    [
        ({}, "701"),
        ({"activityTypeIds": [12]}, "701"),  # createdAt is required
        ({"createdAt": "RANGE", "activityTypeIds": [37]}, "1003"),  # Delete Lead: use deletedleads.json
        ({"createdAt": "RANGE", "activityTypeIds": [99999]}, "1003"),
        ({"createdAt": "RANGE", "activityTypeIds": "12"}, "1003"),
        ({"createdAt": "RANGE", "leadIds": [1]}, "1003"),
        ({"createdAt": "RANGE", "primaryAttributeValueIds": [29]}, "1003"),  # needs activityTypeIds
        (
            {
                "createdAt": "RANGE",
                "activityTypeIds": [13],
                "primaryAttributeValueIds": [29],
                "primaryAttributeValues": ["x"],
            },
            "1003",
        ),
        ({"createdAt": "RANGE", "activityTypeIds": [13], "primaryAttributeValueIds": list(range(51))}, "1003"),
        ({"createdAt": {"startAt": "2025-01-01", "endAt": "2025-03-01"}}, "1003"),
    ],
    ids=[
        "empty",
        "no-createdAt",
        "delete-lead",
        "unknown-type",
        "types-not-a-list",
        "unknown-filter",
        "primary-without-types",
        "both-primary-filters",
        "over-50-primary-ids",
        "over-31-days",
    ],
)
def test_create_activity_export_errors(marketo: Marketo, clock: FakeClock, filter_: dict[str, Any], code: str) -> None:
    body = {"filter": {k: around(clock) if v == "RANGE" else v for k, v in filter_.items()}}

    assert error_code(create(marketo, "activities", body)) == code


def test_unknown_activity_field_is_1006(marketo: Marketo, clock: FakeClock) -> None:
    body = {"fields": ["leadId", "email"], "filter": {"createdAt": around(clock)}}

    assert error_code(create(marketo, "activities", body)) == "1006"


# ---- the file ------------------------------------------------------------------------------


def test_lead_file_header_null_quoting_and_non_ascii(marketo: Marketo, clock: FakeClock) -> None:
    marketo.sandbox.update_lead(1, {"lastName": TRICKY, "unsubscribed": True, "numberOfEmployees": 42})
    marketo.sandbox.update_lead(2, {"annualRevenue": 1500.5, "company": None})
    fields = ["id", "lastName", "company", "unsubscribed", "numberOfEmployees", "annualRevenue", "createdAt"]
    export_id = _finished(marketo, clock, fields=fields, columnHeaderNames={"id": "Marketo Id", "lastName": "Last"})

    data = file(marketo, export_id).content
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))

    created = marketo.sandbox.get_lead(1)["createdAt"]  # type: ignore[index]
    assert data.startswith(b"Marketo Id,Last,company,unsubscribed,numberOfEmployees,annualRevenue,createdAt\n1,")
    assert b'"Smith, ""Jr.""\nLine two' in data  # RFC 4180 quoting, inner quotes doubled
    assert rows[1] == ["1", TRICKY, "Seed Co 1", "true", "42", "null", created]
    assert rows[2] == ["2", "Lead2", "null", "null", "null", "1500.5", created]
    assert len(rows) == 3


@pytest.mark.parametrize(("fmt", "separator"), [("TSV", "\t"), ("SSV", " "), ("csv", ",")])
def test_tsv_and_ssv_use_their_separator(marketo: Marketo, clock: FakeClock, fmt: str, separator: str) -> None:
    marketo.sandbox.update_lead(1, {"company": f"A{separator}B"})
    export_id = _finished(marketo, clock, fields=["id", "company"], format=fmt)

    text = file(marketo, export_id).text

    assert text.splitlines()[:2] == [f"id{separator}company", f'1{separator}"A{separator}B"']


def test_updated_at_filter_selects_by_the_last_change(marketo: Marketo, clock: FakeClock) -> None:
    clock.advance(3 * 86_400)
    marketo.sandbox.update_lead(2, {"title": "CTO"})
    export_id = _finished(marketo, clock, fields=["id", "title"], filter={"updatedAt": around(clock, 1, 1)})

    assert file(marketo, export_id).text == "id,title\n2,CTO\n"


def test_created_at_filter_leaves_out_leads_outside_the_range(marketo: Marketo, clock: FakeClock) -> None:
    clock.advance(2 * 86_400)
    new = marketo.sandbox.create_lead({"email": "new@example.com"})
    export_id = _finished(marketo, clock, fields=["id", "email"], filter={"createdAt": around(clock, 1, 1)})

    assert file(marketo, export_id).text == f"id,email\n{new},new@example.com\n"


def test_activity_file_default_columns_and_attributes_json(marketo: Marketo, clock: FakeClock) -> None:
    marketo.sandbox.update_lead(2, {"firstName": TRICKY})
    export_id = _finished(
        marketo, clock, kind="activities", filter={"createdAt": around(clock), "activityTypeIds": [13]}
    )

    rows = list(csv.DictReader(io.StringIO(file(marketo, export_id, kind="activities").text)))

    (change,) = marketo.sandbox.activities(lead_id=2, type_id=13)
    assert list(rows[0]) == [
        "marketoGUID",
        "leadId",
        "activityDate",
        "activityTypeId",
        "campaignId",
        "primaryAttributeValueId",
        "primaryAttributeValue",
        "attributes",
    ]
    assert [r["marketoGUID"] for r in rows] == [str(change["id"])]
    assert rows[0] | {"attributes": ""} == {
        "marketoGUID": str(change["id"]),
        "leadId": "2",
        "activityDate": change["activityDate"],
        "activityTypeId": "13",
        "campaignId": "null",
        "primaryAttributeValueId": "29",
        "primaryAttributeValue": "First Name",
        "attributes": "",
    }
    assert json.loads(rows[0]["attributes"]) == {a["name"]: a["value"] for a in change["attributes"]}


def test_activity_fields_subset_action_result_and_primary_filter(marketo: Marketo, clock: FakeClock) -> None:
    marketo.sandbox.update_lead(1, {"firstName": "A", "title": "B"})
    marketo.sandbox.delete_lead(2)  # Delete Lead never appears in a bulk activity file
    body = {
        "fields": ["leadId", "activityTypeId", "actionResult"],
        "filter": {"createdAt": around(clock), "activityTypeIds": [13], "primaryAttributeValues": ["Job Title"]},
    }
    export_id = _finished(marketo, clock, kind="activities", **body)
    every = _finished(marketo, clock, kind="activities")

    assert file(marketo, export_id, kind="activities").text == "leadId,activityTypeId,actionResult\n1,13,succeeded\n"
    assert ",37," not in file(marketo, every, kind="activities").text


# ---- Range -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "status", "part"),
    [
        ("bytes=0-9", 206, slice(0, 10)),
        ("bytes=10-", 206, slice(10, None)),
        ("bytes=-5", 206, slice(-5, None)),
        ("bytes=5-100000", 206, slice(5, None)),
        ("bytes=0-0", 206, slice(0, 1)),
        ("items=0-9", 200, slice(None)),  # not bytes: ignored
        ("bytes 0-9", 200, slice(None)),  # malformed: ignored (RFC 7233)
        ("bytes=9-3", 200, slice(None)),
    ],
)
def test_range_requests(marketo: Marketo, clock: FakeClock, header: str, status: int, part: slice) -> None:
    export_id = _finished(marketo, clock, fields=["id", "email", "firstName"])
    whole = file(marketo, export_id)

    answer = file(marketo, export_id, Range=header)

    body = whole.content[part]
    assert (answer.status_code, answer.content) == (status, body)
    assert answer.headers["Accept-Ranges"] == "bytes"
    assert answer.headers["Content-Length"] == str(len(body))
    assert "content-encoding" not in answer.headers  # never gzipped: lengths and ranges stay exact
    if status == 206:
        size = len(whole.content)
        first = part.start % size if part.start is not None else 0
        assert answer.headers["Content-Range"] == f"bytes {first}-{first + len(body) - 1}/{size}"


def test_range_past_the_end_is_416(marketo: Marketo, clock: FakeClock) -> None:
    export_id = _finished(marketo, clock, fields=["id"])
    size = len(file(marketo, export_id).content)

    answer = file(marketo, export_id, Range=f"bytes={size}-")

    assert (answer.status_code, answer.headers["Content-Range"]) == (416, f"bytes */{size}")


def test_resuming_a_download_with_ranges_rebuilds_the_file(marketo: Marketo, clock: FakeClock) -> None:
    marketo.sandbox.seed(50)
    export_id = _finished(marketo, clock, fields=["id", "email", "lastName"])
    whole = file(marketo, export_id).content

    parts, start = [], 0
    while start < len(whole):
        parts.append(file(marketo, export_id, Range=f"bytes={start}-{start + 724}").content)
        start += 725

    assert b"".join(parts) == whole
