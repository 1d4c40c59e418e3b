"""The field map: loading (default, path, inline JSON), its checks, and conversions both ways."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sync_core.core.errors import ConfigError
from sync_core.core.fieldmap import (
    FieldMapping,
    FieldType,
    FieldValueError,
    Unreadable,
    canonical_values,
    load_field_map,
)
from sync_core.core.models import EntityType


def test_default_map_is_the_design_one() -> None:
    field_map = load_field_map(None)
    pairs = [(m.marketo, m.lead, m.contact) for m in field_map.fields]
    assert pairs == [
        ("email", "emailaddress1", "emailaddress1"),
        ("firstName", "firstname", "firstname"),
        ("lastName", "lastname", "lastname"),
        ("title", "jobtitle", "jobtitle"),
        ("phone", "telephone1", "telephone1"),
        ("company", "companyname", None),
    ]
    assert field_map.columns(EntityType.CONTACT) == ["emailaddress1", "firstname", "lastname", "jobtitle", "telephone1"]
    assert field_map.create_defaults[EntityType.LEAD] == {"subject": "Marketo: Sync Person to Microsoft"}


def test_map_loads_from_a_path_and_from_inline_json(tmp_path: Path) -> None:
    spec = {"fields": [{"marketo": "email", "lead": "emailaddress1", "type": "email"}]}
    path = tmp_path / "map.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    assert load_field_map(str(path)).marketo_fields == ["email"]
    assert load_field_map(json.dumps(spec)).marketo_fields == ["email"]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("{not json", "not valid JSON"),
        ({"fields": [{"marketo": "email", "type": "email"}]}, "map it to a lead or a contact column"),
        ({"fields": [{"marketo": "email", "lead": "emailaddress1", "type": "email"}] * 2}, "mapped twice"),
        ({"fields": [{"marketo": "firstName", "lead": "firstname"}]}, "no field of type email"),
        ({"fields": [{"marketo": "microsoftId", "lead": "x", "type": "email"}]}, "owned by the sync"),
        ({"fields": [{"marketo": "a b", "lead": "x", "type": "email"}]}, "plain field name"),
        ({"fields": [{"marketo": "email", "lead": "emailaddress1", "type": "email", "typo": 1}]}, "Extra inputs"),
        (
            {
                "fields": [
                    {"marketo": "email", "lead": "emailaddress1", "type": "email"},
                    {"marketo": "email2", "lead": "emailaddress1"},
                ]
            },
            "target of two Marketo fields",
        ),
    ],
)
def test_a_broken_map_is_refused_with_the_reason(spec: Any, problem: str) -> None:
    text = spec if isinstance(spec, str) else json.dumps(spec)
    with pytest.raises(ConfigError) as caught:
        load_field_map(text)
    assert problem in str(caught.value)


def test_a_missing_map_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_field_map(str(tmp_path / "absent.json"))


@pytest.mark.parametrize(
    ("kind", "raw", "canonical"),
    [
        (FieldType.STRING, "Ada", "Ada"),
        (FieldType.STRING, "", None),
        (FieldType.STRING, None, None),
        (FieldType.STRING, 42, "42"),
        (FieldType.EMAIL, "Ada@Example.com", "Ada@Example.com"),
        (FieldType.BOOLEAN, "true", True),
        (FieldType.BOOLEAN, False, False),
        (FieldType.BOOLEAN, "0", False),
        (FieldType.INTEGER, "12", 12),
        (FieldType.INTEGER, 12.0, 12),
        (FieldType.DECIMAL, "12.50", 12.5),
        (FieldType.DECIMAL, "3", 3),
        (FieldType.DATE, "2026-01-31", "2026-01-31"),
        (FieldType.DATE, "2026-01-31T23:30:00-02:00", "2026-02-01"),
        (FieldType.DATETIME, "2026-01-31 10:00:00", "2026-01-31T10:00:00Z"),
        (FieldType.DATETIME, "2026-01-31T10:00:00+0100", "2026-01-31T09:00:00Z"),
        (FieldType.DATETIME, "2026-01-31T10:00:00.123Z", "2026-01-31T10:00:00Z"),
    ],
)
def test_values_become_one_canonical_form_from_either_side(kind: FieldType, raw: Any, canonical: Any) -> None:
    mapping = FieldMapping(marketo="f", lead="f", type=kind)
    assert mapping.from_marketo(raw) == canonical
    assert mapping.from_dataverse(raw) == canonical


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        (FieldType.BOOLEAN, "maybe"),
        (FieldType.INTEGER, "1.5"),
        (FieldType.DECIMAL, "nan"),
        (FieldType.DATE, "31/01/2026"),
        (FieldType.DATETIME, "yesterday"),
        (FieldType.STRING, ["a"]),
    ],
)
def test_an_unreadable_value_is_kept_as_such_from_marketo_and_refused_from_dataverse(kind: FieldType, raw: Any) -> None:
    mapping = FieldMapping(marketo="f", lead="f", type=kind)
    assert isinstance(mapping.from_marketo(raw), Unreadable)
    with pytest.raises(FieldValueError):
        mapping.from_dataverse(raw)


def test_option_sets_travel_as_values_in_dynamics_and_labels_in_marketo() -> None:
    mapping = FieldMapping(marketo="leadSource", lead="leadsourcecode", type=FieldType.OPTIONSET, options={8: "Web"})
    assert mapping.from_marketo("web") == 8
    assert mapping.from_dataverse(8) == 8
    assert mapping.to_marketo(8) == "Web"
    assert mapping.to_dataverse(8) == 8
    assert isinstance(mapping.from_marketo("Fax"), Unreadable)
    with pytest.raises(FieldValueError, match="no Marketo label"):
        mapping.to_marketo(9)


def test_option_labels_come_from_dataverse_when_the_map_has_none() -> None:
    mapping = FieldMapping(marketo="leadSource", lead="leadsourcecode", type=FieldType.OPTIONSET)
    assert mapping.with_options({7: "Trade Show"}).from_marketo("Trade Show") == 7
    own = mapping.model_copy(update={"options": {7: "Show"}})
    assert own.with_options({7: "Trade Show"}).options == {7: "Show"}


def test_drifted_fields_are_left_out_per_table_or_everywhere() -> None:
    field_map = load_field_map(None)
    reduced = field_map.without([(None, "title"), (EntityType.CONTACT, "phone"), (EntityType.LEAD, "company")])
    assert "title" not in reduced.marketo_fields
    assert "company" not in reduced.marketo_fields  # company was lead-only: nothing left of it
    phone = next(m for m in reduced.fields if m.key == "phone")
    assert (phone.lead, phone.contact) == ("telephone1", None)


def test_canonical_values_read_one_side_by_key() -> None:
    mappings = load_field_map(None).for_entity(EntityType.LEAD)
    row = {"emailaddress1": "a@b.co", "jobtitle": "", "unrelated": 1}
    assert canonical_values(mappings, row, side="lead") == {"email": "a@b.co", "title": None}
    assert canonical_values(mappings, {"email": "a@b.co", "phone": None}, side="marketo") == {
        "email": "a@b.co",
        "phone": None,
    }
