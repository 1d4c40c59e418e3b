"""OData literal escaping and filter building: a value can never change the shape of a query."""

from __future__ import annotations

import re

import pytest

from sync_core.dataverse import odata as _odata

CRAFTED_EMAIL = "x' or 1 eq 1 or 'a"
_LITERAL = re.compile(r"'(?:[^']|'')*'")


def _outside_literals(text: str) -> str:
    """The filter with every string literal blanked: what the OData parser sees as syntax."""
    return _LITERAL.sub("<lit>", text)


def _decoded_literals(text: str) -> list[str]:
    return [match[1:-1].replace("''", "'") for match in _LITERAL.findall(text)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ada@example.com", "'ada@example.com'"),
        ("o'brien@example.com", "'o''brien@example.com'"),
        (CRAFTED_EMAIL, "'x'' or 1 eq 1 or ''a'"),
        ("''", "''''''"),
        ("", "''"),
        ("a%27b", "'a%27b'"),  # URL-encoding is httpx's job, not the literal's
    ],
)
def test_quote_literal_doubles_embedded_quotes(value: str, expected: str) -> None:
    assert _odata.quote_literal(value) == expected


def test_quote_literal_refuses_non_strings() -> None:
    with pytest.raises(TypeError):
        _odata.quote_literal(5)  # type: ignore[arg-type]


def test_crafted_email_stays_one_literal_in_an_or_filter() -> None:
    built = _odata.any_of("emailaddress1", [_odata.quote_literal(CRAFTED_EMAIL), _odata.quote_literal("b@c.d")])
    assert built == "(emailaddress1 eq 'x'' or 1 eq 1 or ''a' or emailaddress1 eq 'b@c.d')"
    # The syntax around the literals is exactly two equality tests joined by one "or".
    assert _outside_literals(built) == "(emailaddress1 eq <lit> or emailaddress1 eq <lit>)"
    assert _decoded_literals(built) == [CRAFTED_EMAIL, "b@c.d"]


@pytest.mark.parametrize(
    "value",
    ["00000000-0000-0000-0000-000000000000) or (x", "1 eq 1", "not-a-guid", "'7eb682f1-ca75-e511-80d4-00155d2a68d1'"],
)
def test_guid_literal_refuses_anything_but_a_guid(value: str) -> None:
    with pytest.raises(ValueError, match="not a GUID"):
        _odata.guid_literal(value)


def test_guid_literal_is_canonical_lower_case() -> None:
    assert _odata.guid_literal("7EB682F1-CA75-E511-80D4-00155D2A68D1") == "7eb682f1-ca75-e511-80d4-00155d2a68d1"


@pytest.mark.parametrize("name", ["lead id", "leads'", "a/b", "", "1abc", "x)or(y", "emailaddress1 eq 'a'"])
def test_identifier_refuses_anything_but_a_plain_name(name: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        _odata.identifier(name)


def test_select_clause_deduplicates_in_order() -> None:
    assert _odata.select_clause(["leadid", "firstname", "leadid", "lastname"]) == "leadid,firstname,lastname"


@pytest.mark.parametrize(("max_values", "max_chars"), [(3, 10_000), (100, 120), (1, 10)])
def test_chunked_any_of_keeps_every_value_once_within_limits(max_values: int, max_chars: int) -> None:
    literals = [_odata.quote_literal(f"user{n}@example.com") for n in range(10)]
    filters = list(_odata.chunked_any_of("emailaddress1", literals, max_values=max_values, max_chars=max_chars))
    decoded = [value for text in filters for value in _decoded_literals(text)]
    assert decoded == [f"user{n}@example.com" for n in range(10)]
    for text in filters:
        assert len(_decoded_literals(text)) <= max_values
        if len(_decoded_literals(text)) > 1:
            assert len(text) <= max_chars


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ({"": "7EB682F1-CA75-E511-80D4-00155D2A68D1"}, "leads(7eb682f1-ca75-e511-80d4-00155d2a68d1)"),
        ({"emailaddress1": CRAFTED_EMAIL}, "leads(emailaddress1='x'' or 1 eq 1 or ''a')"),
        ({"firstname": "Joe", "emailaddress1": "a@b.c"}, "leads(firstname='Joe',emailaddress1='a@b.c')"),
        ({"new_number": 5}, "leads(new_number=5)"),
    ],
)
def test_key_segment_writes_typed_escaped_literals(key: dict[str, object], expected: str) -> None:
    assert _odata.key_segment("leads", key) == expected


def test_key_segment_refuses_a_primary_key_that_is_not_a_guid() -> None:
    with pytest.raises(ValueError, match="not a GUID"):
        _odata.key_segment("leads", {"": "1) or (1 eq 1"})
