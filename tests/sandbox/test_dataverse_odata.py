"""The OData text layer of the Dataverse simulator: literals, filters, keys, Prefer headers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from sandbox.dataverse import DataverseError
from sandbox.dataverse._odata import evaluate, key_values, parse_filter, parse_key, parse_prefer, quote_literal
from sandbox.dataverse._query import resolver
from sandbox.dataverse._schema import LEAD

ROW: dict[str, Any] = {
    "emailaddress1": "Ada@Example.com",
    "firstname": "Ada",
    "lastname": None,
    "leadsourcecode": 8,
    "modifiedon": datetime(2024, 6, 1, 12, 0, tzinfo=UTC),
    "leadid": "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
}


def matches(text: str, row: dict[str, Any] = ROW) -> bool:
    node = parse_filter(text, resolver(LEAD), LEAD.odata_type)
    return evaluate(node, lambda prop: row.get(LEAD.by_prop[prop].name))


@pytest.mark.parametrize(
    "value",
    ["x' or 1 eq 1 or 'a", "o'brien@example.com", "'", "''", "a''b", "emailaddress1 eq 'Ada@Example.com'"],
)
def test_escaped_literal_is_compared_as_one_string(value: str) -> None:
    text = f"emailaddress1 eq {quote_literal(value)}"
    assert matches(text, {**ROW, "emailaddress1": value})
    assert not matches(text)  # the crafted value never reaches the row's real email


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("emailaddress1 eq 'x' or 1 eq 1 or 'a'", "must name a property"),
        ("emailaddress1 eq 'unterminated", "unterminated string literal at position 17"),
        ("emailaddress1 eq", "Expression expected at position 16"),
        ("(emailaddress1 eq 'a'", "Expression expected"),
        ("emailaddress1 = 'a'", "Syntax error"),
        ("emailaddress1 eq 'a' and", "Expression expected"),
        ("emailaddress1 eq 'a' 'b'", "Syntax error"),
        ("modifiedon ge '2024-01-01'", "Found operand types 'Edm.DateTimeOffset' and 'Edm.String'"),
        ("leadsourcecode eq 'Web'", "Found operand types 'Edm.Int32' and 'Edm.String'"),
        ("nosuch eq 1", "Could not find a property named 'nosuch' on type 'Microsoft.Dynamics.CRM.lead'."),
        ("tolower(emailaddress1) eq 'a'", "An unknown function with name 'tolower' was found."),
        ("emailaddress1 eq 'a' ; drop", "character ';' is not valid at position 21"),
    ],
)
def test_malformed_filter_is_refused_with_uri_error(text: str, message: str) -> None:
    with pytest.raises(DataverseError) as caught:
        matches(text)
    assert (caught.value.status, caught.value.code) == (400, "0x80060888")
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("emailaddress1 eq 'ada@example.COM'", True),  # SQL collation: case-insensitive
        ("emailaddress1 ne 'ada@example.com'", False),
        ("lastname eq null", True),
        ("lastname ne null", False),
        ("firstname ne null and lastname eq null", True),
        ("lastname eq 'x' or firstname eq 'ada'", True),
        ("not (firstname eq 'Ada')", False),
        ("firstname eq 'x' and lastname eq null or leadsourcecode eq 8", True),  # and binds tighter
        ("firstname eq 'x' and (lastname eq null or leadsourcecode eq 8)", False),
        ("modifiedon ge 2024-06-01T12:00:00Z", True),
        ("modifiedon gt 2024-06-01T12:00:00Z", False),
        ("modifiedon lt 2024-06-01T14:00:00+02:00", False),  # offsets are converted to UTC
        ("modifiedon le 2024-06-02", True),
        ("leadsourcecode ge 8 and leadsourcecode lt 9", True),
        ("lastname gt 'a'", False),  # null never orders
        ("contains(emailaddress1, 'EXAMPLE')", True),
        ("startswith(firstname, 'ad') and endswith(emailaddress1, '.com')", True),
        ("leadid eq 3F2504E0-4F89-11D3-9A0C-0305E82C3301", True),
    ],
)
def test_filter_semantics_follow_dataverse(text: str, expected: bool) -> None:
    assert matches(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3F2504E0-4F89-11D3-9A0C-0305E82C3301", "3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
        ("emailaddress1='o''brien@example.com'", {"emailaddress1": "o'brien@example.com"}),
        ("firstname='Joe',emailaddress1='a@b.com'", {"firstname": "Joe", "emailaddress1": "a@b.com"}),
        ("LogicalName='lead'", {"LogicalName": "lead"}),
    ],
)
def test_key_segments_parse_to_guid_or_alternate_key(text: str, expected: object) -> None:
    assert parse_key(text) == expected


@pytest.mark.parametrize("text", ["emailaddress1='a' or 1 eq 1", "emailaddress1", "='a'", "emailaddress1='a',", "x=y"])
def test_bad_key_segment_is_refused(text: str) -> None:
    with pytest.raises(DataverseError) as caught:
        parse_key(text)
    assert caught.value.status == 400


def test_prefer_header_keeps_quoted_values_whole() -> None:
    prefs = parse_prefer(
        'odata.track-changes, odata.maxpagesize=500,odata.include-annotations="a,b",return=representation'
    )
    assert prefs == {
        "odata.track-changes": "",
        "odata.maxpagesize": "500",
        "odata.include-annotations": '"a,b"',
        "return": "representation",
    }


A, B = "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "3f2504e0-4f89-11d3-9a0c-0305e82c3302"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"leadid eq {A}", {A}),
        (f"{A} eq leadid", {A}),
        (f"leadid eq {A} or leadid eq {B.upper()}", {A, B}),
        (f"(leadid eq {A} or leadid eq {B}) and firstname eq 'Ada'", {A, B}),
        (f"firstname eq 'Ada' and leadid eq {B}", {B}),
        (f"leadid eq {A} and leadid eq {B}", set()),
        (f"leadid eq {A} or firstname eq 'Ada'", None),  # the other side can match any row
        (f"leadid ne {A}", None),
        (f"not (leadid eq {A})", None),
        ("firstname eq 'Ada'", None),
        (f"_ownerid_value eq {A}", None),  # a lookup's GUID is not the row's key
    ],
)
def test_a_filter_by_primary_key_names_the_only_rows_it_can_match(text: str, expected: set[str] | None) -> None:
    found = key_values(parse_filter(text, resolver(LEAD), LEAD.odata_type), LEAD.primary_id)
    assert found == (None if expected is None else frozenset(expected))
