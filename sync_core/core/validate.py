"""Validation before writing (design B7, §3 step 5): would the other side accept this record?

``dataverse_problems`` checks a Dynamics-bound payload (column -> wire value) against the
table's metadata: the column exists and may be written, text fits ``MaxLength``, an Email column
holds an address, a value has the column's type, an option is one of the option set's, and a
required column is not emptied (nor, on a create, left out). ``marketo_problems`` checks a
Marketo-bound payload against ``describe``: the field exists and is updateable, text fits its
length. ``drift`` lists mapped fields that one side no longer has.

Pure functions; each problem is a sentence that names the field and the rule, never the value,
because reasons end up in the status page, the failures table and the person's activity log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sync_core.core.fieldmap import FieldMap, FieldType, FieldValueError
from sync_core.core.models import EntityType
from sync_core.core.schema import AttributeMeta, EntityMeta, MarketoFieldMeta, RequiredLevel

# local@domain.tld, ASCII, no spaces: what Dataverse's Email format and the usual plug-ins accept.
EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$")
REQUIRED_LEVELS = frozenset({RequiredLevel.APPLICATION_REQUIRED, RequiredLevel.SYSTEM_REQUIRED})
# Set by the platform on create (key, owner, state): never "missing" from a create payload.
PLATFORM_COLUMNS = frozenset({"ownerid", "statecode", "statuscode", "createdon", "modifiedon"})
MARKETO_TEXT_TYPES = frozenset({"string", "email", "phone", "url", "text"})
_TEXT = frozenset({"String", "Memo"})
_WHOLE = frozenset({"Integer", "BigInt"})
_NUMBER = frozenset({"Decimal", "Double", "Money"})
_OPTIONS = frozenset({"Picklist", "State", "Status"})


def dataverse_problems(meta: EntityMeta, payload: Mapping[str, Any], *, creating: bool) -> list[str]:
    """What Dataverse would refuse in ``payload`` (empty: nothing)."""
    problems: list[str] = []
    for column, value in payload.items():
        attribute = meta.attributes.get(column)
        if attribute is None:
            problems.append(f"{column}: no such column on {meta.logical_name}")
            continue
        if not (attribute.is_valid_for_create if creating else attribute.is_valid_for_update):
            problems.append(f"{column}: Dynamics does not allow it to be {'set on create' if creating else 'updated'}")
            continue
        if value is None:
            if attribute.required_level in REQUIRED_LEVELS:
                problems.append(f"{column}: required by Dynamics ({attribute.required_level.value}) but empty")
            continue
        problem = _value_problem(attribute, value)
        if problem:
            problems.append(f"{column}: {problem}")
    if creating:
        for column, attribute in meta.attributes.items():
            if (
                attribute.required_level is RequiredLevel.APPLICATION_REQUIRED
                and column not in payload
                and column not in PLATFORM_COLUMNS
                and column != meta.primary_id
                and attribute.is_valid_for_create
            ):
                problems.append(f"{column}: required by Dynamics ({attribute.required_level.value}) but missing")
    return problems


def _value_problem(attribute: AttributeMeta, value: Any) -> str | None:
    kind = attribute.attribute_type
    if kind in _TEXT:
        if not isinstance(value, str):
            return "expected text"
        if attribute.max_length is not None and len(value) > attribute.max_length:
            return f"longer than the {attribute.max_length} characters Dynamics allows"
        if attribute.format == "Email" and not EMAIL.match(value):
            return "not a valid email address"
        return None
    if kind == "Boolean":
        return None if isinstance(value, bool) else "expected true or false"
    if kind in _WHOLE:
        return None if isinstance(value, int) and not isinstance(value, bool) else "expected a whole number"
    if kind in _NUMBER:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "expected a number"
    if kind in _OPTIONS:
        if isinstance(value, bool) or not isinstance(value, int):
            return "expected an option value"
        if attribute.options and value not in attribute.options:
            return f"not one of the {len(attribute.options)} options of the option set"
        return None
    if kind == "DateTime":
        return None if isinstance(value, str) else "expected a date or datetime"
    return None


def marketo_problems(described: Mapping[str, MarketoFieldMeta], payload: Mapping[str, Any]) -> list[str]:
    """What Marketo would refuse in ``payload`` (empty: nothing). Unknown fields are drift, reported too."""
    problems: list[str] = []
    for name, value in payload.items():
        field = described.get(name)
        if field is None:
            problems.append(f"{name}: no such Marketo person field")
        elif not field.updateable:
            problems.append(f"{name}: not updateable in Marketo")
        elif (
            isinstance(value, str)
            and field.data_type in MARKETO_TEXT_TYPES
            and field.length is not None
            and len(value) > field.length
        ):
            problems.append(f"{name}: longer than the {field.length} characters Marketo allows")
        elif field.data_type == "email" and isinstance(value, str) and not EMAIL.match(value):
            problems.append(f"{name}: not a valid email address")
    return problems


def conversion_problems(field_map: FieldMap, entity: EntityType, values: Mapping[str, Any], *, to: str) -> list[str]:
    """Canonical values (by key) that cannot be expressed on the ``to`` side (``marketo``/``dynamics``)."""
    problems: list[str] = []
    for mapping in field_map.for_entity(entity):
        if mapping.key not in values:
            continue
        try:
            if to == "marketo":
                mapping.to_marketo(values[mapping.key])
            else:
                mapping.to_dataverse(values[mapping.key])
        except FieldValueError as err:
            problems.append(str(err) if str(err).startswith(mapping.key) else f"{mapping.key}: {err}")
    return problems


@dataclass(frozen=True)
class DriftItem:
    """A mapped field one side does not have (any more): reported, and left out of the sync."""

    side: str  # "marketo" or "dynamics"
    entity: EntityType | None  # the Dataverse table, for side "dynamics"
    name: str  # the missing field or column
    keys: tuple[str, ...]  # the field-map keys that stop syncing
    detail: str

    def as_report(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "entity": self.entity.value if self.entity else None,
            "name": self.name,
            "fields": list(self.keys),
            "detail": self.detail,
        }


def drift(
    field_map: FieldMap,
    *,
    described: Mapping[str, MarketoFieldMeta] | None,
    metadata: Mapping[EntityType, EntityMeta],
) -> list[DriftItem]:
    """Mapped fields missing from Marketo's describe or from a table's metadata (None: not checked)."""
    items: list[DriftItem] = []
    for mapping in field_map.fields:
        if described is not None and mapping.marketo not in described:
            items.append(
                DriftItem("marketo", None, mapping.marketo, (mapping.key,), "not a Marketo person field (any more)")
            )
        for entity, meta in metadata.items():
            column = mapping.column(entity)
            if column is not None and column not in meta.attributes:
                items.append(
                    DriftItem(
                        "dynamics", entity, column, (mapping.key,), f"no column {column} on {entity.value} (any more)"
                    )
                )
    return items


# Per field-map type: the Dataverse attribute types and Marketo data types that can hold it.
_COMPATIBLE: dict[FieldType, tuple[frozenset[str], frozenset[str]]] = {
    FieldType.STRING: (_TEXT, MARKETO_TEXT_TYPES | {"textarea", "reference"}),
    FieldType.EMAIL: (_TEXT, frozenset({"email", "string"})),
    FieldType.PHONE: (_TEXT, frozenset({"phone", "string"})),
    FieldType.BOOLEAN: (frozenset({"Boolean"}), frozenset({"boolean"})),
    FieldType.INTEGER: (_WHOLE, frozenset({"integer", "score"})),
    FieldType.DECIMAL: (_NUMBER | _WHOLE, frozenset({"float", "currency", "integer", "percent"})),
    FieldType.DATE: (frozenset({"DateTime"}), frozenset({"date", "datetime"})),
    FieldType.DATETIME: (frozenset({"DateTime"}), frozenset({"datetime"})),
    FieldType.OPTIONSET: (_OPTIONS, frozenset({"string", "text"})),
}


def type_problems(
    field_map: FieldMap,
    *,
    described: Mapping[str, MarketoFieldMeta],
    metadata: Mapping[EntityType, EntityMeta],
) -> tuple[list[str], list[str]]:
    """Mapped fields present on both sides: (types that cannot hold the mapped type, text lengths
    that differ so values over the shorter one fail record by record). Missing fields are ``drift``."""
    wrong: list[str] = []
    shorter: list[str] = []
    for mapping in field_map.fields:
        columns, marketo_types = _COMPATIBLE[mapping.type]
        field = described.get(mapping.marketo)
        if field is not None and field.data_type not in marketo_types:
            wrong.append(f"{mapping.marketo}: Marketo type {field.data_type} cannot hold a {mapping.type.value}")
        for entity, meta in metadata.items():
            column = mapping.column(entity)
            attribute = meta.attributes.get(column) if column else None
            if attribute is None:
                continue
            if attribute.attribute_type not in columns:
                wrong.append(
                    f"{mapping.marketo}: {entity.value}.{column} is {attribute.attribute_type}, "
                    f"which cannot hold a {mapping.type.value}"
                )
            elif (
                field is not None
                and field.length is not None
                and attribute.max_length is not None
                and field.length != attribute.max_length
                and attribute.attribute_type in _TEXT
            ):
                shorter.append(f"{mapping.marketo} ({field.length}) / {entity.value}.{column} ({attribute.max_length})")
    return wrong, shorter
