"""Table metadata read from ``EntityDefinitions`` and cached: how to address a table and its columns.

``Catalog`` holds, per client (and its retry-policy copies), the logical name / entity set /
primary key of each table (``EntityRef``, read with one call the first time a table is named)
and the full ``EntityMeta`` (columns with types, required levels, lengths, formats and options,
read on request and again on ``refresh``). It reads through ``WebApi`` and builds the core's
schema types; it writes nothing and knows nothing of syncing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sync_core.core.errors import ConfigError
from sync_core.core.schema import AttributeMeta, EntityMeta, RequiredLevel
from sync_core.dataverse import odata as _odata
from sync_core.dataverse._api import WebApi

log = logging.getLogger(__name__)

OPERATION = "get_entity_metadata"


@dataclass(frozen=True)
class EntityRef:
    logical_name: str
    entity_set: str
    primary_id: str


class Catalog:
    """Cached table metadata; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metadata: dict[str, EntityMeta] = {}
        self._refs: dict[str, EntityRef] = {}  # by logical name and by entity set

    def ref(self, api: WebApi, entity: EntityMeta | str, *, by_set: bool = False) -> EntityRef:
        """Logical name, entity set and primary key of a table, from metadata given or read once."""
        if isinstance(entity, EntityMeta):
            return EntityRef(entity.logical_name, entity.entity_set, entity.primary_id)
        name = _odata.identifier(entity)
        with self._lock:
            known = self._refs.get(name)
        if known is not None:
            return known
        column = "EntitySetName" if by_set else "LogicalName"
        body = api.send(
            "get_entity_definition",
            "GET",
            api.url("EntityDefinitions"),
            params={
                "$select": "LogicalName,EntitySetName,PrimaryIdAttribute",
                "$filter": _odata.eq(column, _odata.quote_literal(name)),
            },
            idempotent=True,
        ).json()
        found = body.get("value") or []
        if not found:
            raise ConfigError([f"Dataverse table '{name}' does not exist"])
        ref = EntityRef(
            str(found[0]["LogicalName"]), str(found[0]["EntitySetName"]), str(found[0]["PrimaryIdAttribute"])
        )
        self._remember(ref)
        return ref

    def entity(self, api: WebApi, logical_name: str, *, refresh: bool = False) -> EntityMeta:
        """Columns of a table with their types, required levels, lengths, formats and options
        (cached; ``refresh`` reads them again)."""
        name = _odata.identifier(logical_name)
        with self._lock:
            if name in self._metadata and not refresh:
                return self._metadata[name]
        definition = api.url(f"EntityDefinitions(LogicalName={_odata.quote_literal(name)})")

        def read(path: str, params: Mapping[str, str]) -> Any:
            return api.send(OPERATION, "GET", definition + path, params=params, idempotent=True).json()

        entity = read("", {"$select": "LogicalName,EntitySetName,PrimaryIdAttribute,ChangeTrackingEnabled"})
        attributes: dict[str, dict[str, Any]] = {}
        select = "LogicalName,AttributeType,RequiredLevel,IsValidForCreate,IsValidForUpdate"
        for item in read("/Attributes", {"$select": select}).get("value") or []:
            attributes[str(item["LogicalName"])] = {
                "logical_name": str(item["LogicalName"]),
                "attribute_type": str(item.get("AttributeType", "")),
                "required_level": _required_level(item.get("RequiredLevel")),
                "is_valid_for_create": item.get("IsValidForCreate") is not False,
                "is_valid_for_update": item.get("IsValidForUpdate") is not False,
            }
        strings = read(
            "/Attributes/Microsoft.Dynamics.CRM.StringAttributeMetadata", {"$select": "LogicalName,MaxLength,Format"}
        )
        for item in strings.get("value") or []:
            if item.get("LogicalName") in attributes:
                attributes[item["LogicalName"]]["max_length"] = item.get("MaxLength")
                attributes[item["LogicalName"]]["format"] = item.get("Format")
        picklists = read(
            "/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
            {"$select": "LogicalName", "$expand": "OptionSet"},
        )
        for item in picklists.get("value") or []:
            if item.get("LogicalName") in attributes:
                attributes[item["LogicalName"]]["options"] = _options(item.get("OptionSet"))
        meta = EntityMeta(
            logical_name=str(entity["LogicalName"]),
            entity_set=str(entity["EntitySetName"]),
            primary_id=str(entity["PrimaryIdAttribute"]),
            attributes={key: AttributeMeta(**values) for key, values in attributes.items()},
        )
        if entity.get("ChangeTrackingEnabled") is False:
            log.warning("dataverse: change tracking is off for %s; delta reads will fail", meta.logical_name)
        with self._lock:
            self._metadata[name] = meta
        self._remember(EntityRef(meta.logical_name, meta.entity_set, meta.primary_id))
        return meta

    def _remember(self, ref: EntityRef) -> None:
        with self._lock:
            self._refs[ref.logical_name] = ref
            self._refs[ref.entity_set] = ref


def _required_level(value: Any) -> RequiredLevel:
    raw = value.get("Value") if isinstance(value, dict) else value
    try:
        return RequiredLevel(str(raw))
    except ValueError:
        return RequiredLevel.NONE


def _options(option_set: Any) -> dict[int, str]:
    options: dict[int, str] = {}
    for option in (option_set or {}).get("Options") or []:
        value = option.get("Value")
        label = ((option.get("Label") or {}).get("UserLocalizedLabel") or {}).get("Label")
        if value is not None:
            options[int(value)] = str(label) if label is not None else str(value)
    return options
