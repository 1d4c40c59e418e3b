"""Both sides' schema, as far as the sync needs it, kept in the state store for an hour.

Validation and drift need Dataverse metadata (4 calls per table) and Marketo's describe (1 call).
The API clients cache them per process, but a Functions instance is often new (Flex Consumption
scales to zero), so every busy cycle of a fresh instance would pay 9 calls again. This keeps the
part the sync uses (mapped, required and sync-filter columns, mapped Marketo fields) in one state row, good
for ``TTL``; an older or incomplete row is read again from the services. A service refusing a
column or field makes the engine refresh at once, so a deleted field is never trusted for long.
It must not decide anything about drift or validity: it only remembers what the services said.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, ValidationError

from sync_core.core.errors import RecordError, StateConflictError
from sync_core.core.fieldmap import COMPANY_FIELDS, OWNER_FIELDS, FieldMap
from sync_core.core.models import Cursor, EntityType
from sync_core.core.schema import EntityMeta, MarketoFieldMeta, RequiredLevel
from sync_core.core.validate import DriftItem, drift
from sync_core.dataverse.client import DataverseClient
from sync_core.marketo.client import MarketoClient
from sync_core.state import StateStore

log = logging.getLogger(__name__)

ROW = "schema.v1"
TTL = timedelta(hours=1)
ONE_WAY = (*OWNER_FIELDS, *COMPANY_FIELDS)  # Dynamics-owned person fields (core.oneway), asked about too


def _asked(field_map: FieldMap) -> list[str]:
    return list(dict.fromkeys([*field_map.marketo_fields, *ONE_WAY]))


class Schema(BaseModel):
    model_config = ConfigDict(frozen=True)

    fetched_at: datetime
    metadata: dict[EntityType, EntityMeta]
    described: dict[str, MarketoFieldMeta]
    asked_marketo: tuple[str, ...] = ()  # the fields and columns this answers for
    asked_columns: dict[EntityType, tuple[str, ...]] = {}

    def covers(self, field_map: FieldMap, extra_columns: Sequence[str] = ()) -> bool:
        """Whether every mapped field (and extra column) was asked about when this was read (present or
        found missing)."""
        return set(_asked(field_map)) <= set(self.asked_marketo) and all(
            {*field_map.columns(entity), *extra_columns} <= set(self.asked_columns.get(entity, ()))
            for entity in EntityType
        )


def trimmed(
    field_map: FieldMap,
    metadata: dict[EntityType, EntityMeta],
    described: dict[str, MarketoFieldMeta],
    *,
    now: datetime,
    extra_columns: Sequence[str] = (),
) -> Schema:
    """What the sync uses of the full schema: mapped, required or ``extra`` columns (the sync
    filter's), mapped and Dynamics-owned Marketo fields."""
    kept: dict[EntityType, EntityMeta] = {}
    for entity, meta in metadata.items():
        wanted = set(field_map.columns(entity)) | set(extra_columns) | {meta.primary_id}
        attributes = {
            name: attribute
            for name, attribute in meta.attributes.items()
            if name in wanted or attribute.required_level is not RequiredLevel.NONE
        }
        kept[entity] = meta.model_copy(update={"attributes": attributes})
    return Schema(
        fetched_at=now,
        metadata=kept,
        described={name: described[name] for name in _asked(field_map) if name in described},
        asked_marketo=tuple(_asked(field_map)),
        asked_columns={
            entity: tuple(dict.fromkeys([*field_map.columns(entity), *extra_columns])) for entity in EntityType
        },
    )


def load(store: StateStore, field_map: FieldMap, *, now: datetime, extra_columns: Sequence[str] = ()) -> Schema | None:
    """The stored schema if it is fresh and covers the map (and ``extra_columns``), else None."""
    cursor = store.get_cursor(ROW)
    if cursor is None:
        return None
    try:
        schema = Schema.model_validate_json(cursor.value)
    except ValidationError:
        return None
    if now - schema.fetched_at > TTL or not schema.covers(field_map, extra_columns):
        return None
    return schema


def save(store: StateStore, schema: Schema) -> None:
    """Remember ``schema``; losing a race with another writer is fine (theirs is as fresh)."""
    current = store.get_cursor(ROW)
    value = json.dumps(schema.model_dump(mode="json"), separators=(",", ":"))
    try:
        store.put_cursor(Cursor(name=ROW, value=value, etag=current.etag if current else None))
    except (StateConflictError, RecordError) as err:  # a concurrent writer, or too large for one row
        log.info("schema not cached: %s", type(err).__name__)


@dataclass(frozen=True)
class ActiveSchema:
    """Both sides' schema and what follows from it for the configured map."""

    metadata: dict[EntityType, EntityMeta]
    described: dict[str, MarketoFieldMeta]
    drift: list[DriftItem]
    field_map: FieldMap  # the map in force: configured, minus drifted fields, with option labels


def active_schema(
    store: StateStore,
    marketo: MarketoClient,
    dataverse: DataverseClient,
    configured: FieldMap,
    *,
    now: datetime,
    refresh: bool = False,
    extra_columns: Sequence[str] = (),
) -> ActiveSchema:
    """The schema from the hour-long cache, else from the services (and cached); ``refresh``: a
    service refused a field, so read both again. ``extra_columns``: columns kept beside the mapped
    ones (the sync filter's), so that whether a table has them is known."""
    cached = None if refresh else load(store, configured, now=now, extra_columns=extra_columns)
    if cached is None:
        metadata = {entity: dataverse.get_entity_metadata(entity.value, refresh=refresh) for entity in EntityType}
        cached = trimmed(configured, metadata, marketo.describe(refresh=refresh), now=now, extra_columns=extra_columns)
        save(store, cached)
    metadata = dict(cached.metadata)
    described = dict(cached.described)
    drifted = drift(configured, described=described, metadata=metadata)
    if drifted:
        log.warning("field map drift: %d field(s) missing on one side; they are not synced", len(drifted))
    active = configured.without([(item.entity, key) for item in drifted for key in item.keys])
    options: dict[str, dict[int, str]] = {}
    for mapping in active.fields:
        for entity in EntityType:
            column = mapping.column(entity)
            attribute = metadata[entity].attributes.get(column) if column else None
            if attribute is not None and attribute.options and mapping.key not in options:
                options[mapping.key] = dict(attribute.options)
    return ActiveSchema(metadata, described, drifted, active.with_options(options))
