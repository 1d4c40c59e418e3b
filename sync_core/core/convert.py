"""One path from canonical values to each side's wire payload, validated (design §3 step 5, B7).

Every write the sync makes goes through here: the cycle's updates (``merge.plan``), the persons
it creates for new Dynamics records, and the webhook's lead. ``to_dataverse``/``to_marketo`` take
canonical values by field-map key, convert each through its mapping and say what the receiving
side would refuse (Dataverse metadata, Marketo describe) — as reasons that name the field, never
its value. A payload with problems must not be sent. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sync_core.core.fieldmap import FieldMap, FieldValueError
from sync_core.core.models import EntityType
from sync_core.core.schema import EntityMeta, MarketoFieldMeta
from sync_core.core.validate import dataverse_problems, marketo_problems


@dataclass
class Conversion:
    """A wire payload and what the receiving side would refuse in it (empty: it may be sent)."""

    payload: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _why(err: FieldValueError, key: str) -> str:
    text = str(err)
    return text[len(key) + 2 :] if text.startswith(f"{key}: ") else text


def to_dataverse(
    field_map: FieldMap,
    entity: EntityType,
    values: Mapping[str, Any],
    *,
    metadata: EntityMeta | None,
    creating: bool = False,
) -> Conversion:
    """The columns of ``entity`` for ``values`` (field-map key → canonical value).

    Updating, ``None`` clears a column; creating, it is left out and the map's ``createDefaults``
    for the entity come first. ``metadata`` None: not validated here."""
    by_key = {mapping.key: mapping for mapping in field_map.for_entity(entity)}
    out = Conversion(dict(field_map.create_defaults.get(entity, {})) if creating else {})
    for key, value in values.items():
        mapping = by_key.get(key)
        column = mapping.column(entity) if mapping is not None else None
        if mapping is None or column is None or (creating and value is None):
            continue
        try:
            out.payload[column] = mapping.to_dataverse(value)
        except FieldValueError as err:
            out.problems.append(f"{column}: {_why(err, key)}")
    if metadata is not None and out.payload:
        out.problems += dataverse_problems(metadata, out.payload, creating=creating)
    return out


def to_marketo(
    field_map: FieldMap,
    entity: EntityType,
    values: Mapping[str, Any],
    *,
    described: Mapping[str, MarketoFieldMeta] | None,
    creating: bool = False,
) -> Conversion:
    """The person fields for ``values`` of a record of ``entity``; ``None`` clears a field, except
    when creating (left out). ``described`` None: not validated here."""
    by_key = {mapping.key: mapping for mapping in field_map.for_entity(entity)}
    out = Conversion()
    for key, value in values.items():
        mapping = by_key.get(key)
        if mapping is None or (creating and value is None):
            continue
        try:
            out.payload[mapping.marketo] = mapping.to_marketo(value)
        except FieldValueError as err:
            out.problems.append(f"{mapping.marketo}: {_why(err, key)}")
    if described is not None and out.payload:
        out.problems += marketo_problems(described, out.payload)
    return out
