"""Validation against each side's schema, and drift of the field map."""

from __future__ import annotations

from typing import Any

import pytest

from sync_core.core.fieldmap import load_field_map
from sync_core.core.models import EntityType
from sync_core.core.schema import AttributeMeta, EntityMeta, MarketoFieldMeta, RequiredLevel
from sync_core.core.validate import dataverse_problems, drift, marketo_problems

META = EntityMeta(
    logical_name="lead",
    entity_set="leads",
    primary_id="leadid",
    attributes={
        "leadid": AttributeMeta(logical_name="leadid", attribute_type="Uniqueidentifier", is_valid_for_update=False),
        "subject": AttributeMeta(
            logical_name="subject",
            attribute_type="String",
            max_length=300,
            required_level=RequiredLevel.APPLICATION_REQUIRED,
        ),
        "lastname": AttributeMeta(
            logical_name="lastname",
            attribute_type="String",
            max_length=50,
            required_level=RequiredLevel.APPLICATION_REQUIRED,
        ),
        "ownerid": AttributeMeta(
            logical_name="ownerid", attribute_type="Owner", required_level=RequiredLevel.SYSTEM_REQUIRED
        ),
        "donotemail": AttributeMeta(logical_name="donotemail", attribute_type="Boolean"),
        "revenue": AttributeMeta(logical_name="revenue", attribute_type="Money"),
        "numberofemployees": AttributeMeta(logical_name="numberofemployees", attribute_type="Integer"),
        "fullname": AttributeMeta(
            logical_name="fullname", attribute_type="String", is_valid_for_create=False, is_valid_for_update=False
        ),
    },
)


@pytest.mark.parametrize(
    ("payload", "problems"),
    [
        ({"lastname": "Ada"}, []),
        ({"nickname": "x"}, ["nickname: no such column on lead"]),
        ({"fullname": "x"}, ["fullname: Dynamics does not allow it to be updated"]),
        ({"donotemail": "yes"}, ["donotemail: expected true or false"]),
        ({"revenue": "12"}, ["revenue: expected a number"]),
        ({"numberofemployees": 1.5}, ["numberofemployees: expected a whole number"]),
        ({"lastname": None}, ["lastname: required by Dynamics (ApplicationRequired) but empty"]),
    ],
)
def test_update_payloads(payload: dict[str, Any], problems: list[str]) -> None:
    assert dataverse_problems(META, payload, creating=False) == problems


def test_a_create_must_carry_every_application_required_column_but_not_the_platform_ones() -> None:
    assert dataverse_problems(META, {"lastname": "Ada"}, creating=True) == [
        "subject: required by Dynamics (ApplicationRequired) but missing"
    ]
    assert dataverse_problems(META, {"lastname": "Ada", "subject": "Marketo"}, creating=True) == []


def test_marketo_payloads() -> None:
    described = {
        "title": MarketoFieldMeta(name="title", data_type="string", length=10),
        "email": MarketoFieldMeta(name="email", data_type="email", length=255),
        "createdAt": MarketoFieldMeta(name="createdAt", data_type="datetime", updateable=False),
    }
    payload = {"title": "x" * 11, "email": "nope", "createdAt": "2026-01-01T00:00:00Z", "shoeSize": 9}
    assert marketo_problems(described, payload) == [
        "title: longer than the 10 characters Marketo allows",
        "email: not a valid email address",
        "createdAt: not updateable in Marketo",
        "shoeSize: no such Marketo person field",
    ]


def test_drift_names_each_missing_field_and_the_side_it_is_missing_on() -> None:
    field_map = load_field_map(None)
    described = {
        name: MarketoFieldMeta(name=name, data_type="string") for name in field_map.marketo_fields if name != "title"
    }
    columns = ["emailaddress1", "firstname", "lastname", "jobtitle", "companyname"]
    lead = META.model_copy(
        update={"attributes": {c: AttributeMeta(logical_name=c, attribute_type="String") for c in columns}}
    )
    items = drift(field_map, described=described, metadata={EntityType.LEAD: lead})
    assert [(i.side, i.entity, i.name, i.keys) for i in items] == [
        ("marketo", None, "title", ("title",)),
        ("dynamics", EntityType.LEAD, "telephone1", ("phone",)),
    ]
    assert items[1].as_report() == {
        "side": "dynamics",
        "entity": "lead",
        "name": "telephone1",
        "fields": ["phone"],
        "detail": "no column telephone1 on lead (any more)",
    }
