"""Metadata the way the Web API serves it (reference B10): ``EntityDefinitions`` (by key or
filtered), their ``Attributes`` (plain, cast to a derived type such as
``Microsoft.Dynamics.CRM.StringAttributeMetadata``, or one by ``LogicalName``), option sets via
``$expand=OptionSet``, alternate ``Keys``; and the ``sdkmessagefilters`` rows a client probes
to learn that CreateMultiple/UpdateMultiple/UpsertMultiple are supported.

Everything is derived from ``_schema`` so metadata and the data API agree. ``$select`` and
``$filter`` go through the same parser as data queries, with property types read off the
metadata objects; the base ``AttributeMetadata`` type does not have ``MaxLength`` and friends,
as on the real service, so those need the cast. Read-only; no state.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from sandbox.dataverse import _errors as err
from sandbox.dataverse._odata import evaluate, parse_filter, parse_key, parse_select, split_segment
from sandbox.dataverse._schema import TABLES, Column, Table

NS = "Microsoft.Dynamics.CRM."

_DERIVED = {
    "guid": "UniqueIdentifierAttributeMetadata",
    "string": "StringAttributeMetadata",
    "picklist": "PicklistAttributeMetadata",
    "state": "StateAttributeMetadata",
    "status": "StatusAttributeMetadata",
    "lookup": "LookupAttributeMetadata",
    "datetime": "DateTimeAttributeMetadata",
    "bigint": "BigIntAttributeMetadata",
    "boolean": "BooleanAttributeMetadata",
    "integer": "IntegerAttributeMetadata",
    "money": "MoneyAttributeMetadata",
}
_EXPANDABLE = ("OptionSet", "GlobalOptionSet")
_MESSAGES = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")


def _label(text: str) -> dict[str, Any]:
    localized = {
        "Label": text,
        "LanguageCode": 1033,
        "IsManaged": True,
        "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-dataverse/label/{text}")),
        "HasChanged": None,
    }
    return {"LocalizedLabels": [localized], "UserLocalizedLabel": localized}


def entity_metadata(table: Table, *, change_tracking: bool = True) -> dict[str, Any]:
    return {
        "MetadataId": table.metadata_id,
        "LogicalName": table.logical,
        "SchemaName": table.schema_name,
        "EntitySetName": table.entity_set,
        "LogicalCollectionName": table.entity_set,
        "CollectionSchemaName": table.schema_name + "s",
        "PrimaryIdAttribute": table.primary_id,
        "PrimaryNameAttribute": table.primary_name,
        "ObjectTypeCode": table.object_type_code,
        "OwnershipType": table.ownership,
        "ChangeTrackingEnabled": change_tracking,
        "IsPrivate": False,
        "IsCustomEntity": False,
        "IsActivity": False,
        "IsManaged": True,
        "IsValidForAdvancedFind": True,
        "DisplayName": _label(table.display),
        "DisplayCollectionName": _label(table.display + "s"),
    }


def _attribute_type(column: Column) -> str:
    if column.name == "ownerid":
        return "Owner"
    if column.nav_per_target:
        return "Customer"
    return {
        "guid": "Uniqueidentifier",
        "string": "String",
        "picklist": "Picklist",
        "state": "State",
        "status": "Status",
        "lookup": "Lookup",
        "datetime": "DateTime",
        "bigint": "BigInt",
        "boolean": "Boolean",
        "integer": "Integer",
        "money": "Money",
    }[column.kind]


def _base_attribute(table: Table, column: Column) -> dict[str, Any]:
    return {
        "@odata.type": "#" + NS + _DERIVED[column.kind],
        "MetadataId": column.metadata_id,
        "LogicalName": column.name,
        "SchemaName": column.name,
        "EntityLogicalName": table.logical,
        "AttributeType": _attribute_type(column),
        "AttributeTypeName": {"Value": _attribute_type(column) + "Type"},  # StringType, OwnerType, ...
        "RequiredLevel": {
            "Value": column.required,
            "CanBeChanged": column.required != "SystemRequired",
            "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
        },
        "IsValidForCreate": column.create,
        "IsValidForUpdate": column.update,
        "IsValidForRead": True,
        "IsPrimaryId": column.name == table.primary_id,
        "IsPrimaryName": column.name == table.primary_name,
        "IsCustomAttribute": column.name.startswith("new_"),
        "IsLogical": False,
        "AttributeOf": None,
        "DisplayName": _label(column.display),
    }


def _derived_properties(column: Column) -> dict[str, Any]:
    if column.kind == "string":
        return {
            "MaxLength": column.max_length,
            "DatabaseLength": (column.max_length or 0) * 2,
            "Format": column.fmt or "Text",
            "FormatName": {"Value": column.fmt or "Text"},
            "IsLocalizable": False,
            "YomiOf": None,
        }
    if column.kind in ("picklist", "state", "status"):
        return {"DefaultFormValue": column.options[0].value if column.kind == "picklist" else None}
    if column.kind == "lookup":
        return {"Targets": list(column.targets), "Format": None}
    if column.kind == "datetime":
        return {"Format": "DateAndTime", "DateTimeBehavior": {"Value": "UserLocal"}}
    if column.kind == "bigint":
        return {"MaxValue": 9223372036854775807, "MinValue": -9223372036854775808}
    if column.kind == "boolean":
        return {"DefaultValue": bool(column.default), "FormulaDefinition": None}
    if column.kind == "integer":
        low, high = column.bounds or (-2147483648, 2147483647)
        return {"MinValue": int(low), "MaxValue": int(high), "Format": "None"}
    if column.kind == "money":
        low, high = column.bounds or (-922337203685477, 922337203685477)
        return {"MinValue": float(low), "MaxValue": float(high), "Precision": 2, "PrecisionSource": 2}
    return {}


def _boolean_option_set(table: Table, column: Column) -> dict[str, Any]:
    """A Two Options column's ``BooleanOptionSetMetadata``: its false and true options."""

    def option(value: int) -> dict[str, Any]:
        return {
            "Value": value,
            "Color": None,
            "IsManaged": False,
            "ExternalValue": None,
            "ParentValues": [],
            "Label": _label(column.label_of(value) or ""),
            "Description": _label(""),
        }

    return {
        "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-dataverse/optionset/{table.logical}/{column.name}")),
        "Name": f"{table.logical}_{column.name}",
        "IsGlobal": False,
        "OptionSetType": "Boolean",
        "FalseOption": option(0),
        "TrueOption": option(1),
    }


def _option_set(table: Table, column: Column) -> dict[str, Any]:
    if column.kind == "boolean":
        return _boolean_option_set(table, column)
    options = []
    for option in column.options:
        item: dict[str, Any] = {
            "Value": option.value,
            "Color": None,
            "IsManaged": True,
            "ExternalValue": None,
            "ParentValues": [],
            "Label": _label(option.label),
            "Description": _label(""),
        }
        if column.kind == "status":
            item["State"] = option.state
        if column.kind == "state":
            item["DefaultStatus"] = option.default_status
            item["InvariantName"] = option.label
        options.append(item)
    kind = {"picklist": "Picklist", "state": "State", "status": "Status"}[column.kind]
    return {
        "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-dataverse/optionset/{table.logical}/{column.name}")),
        "Name": f"{table.logical}_{column.name}",
        "IsGlobal": False,
        "OptionSetType": kind,
        "Options": options,
    }


def _derived_of(text: str) -> str | None:
    name = text[len(NS) :] if text.startswith(NS) else None
    return name if name in _DERIVED.values() else None


class Metadata:
    def __init__(self, api: str, *, untracked: frozenset[str] = frozenset()) -> None:
        self.api = api
        self.untracked = untracked  # tables with change tracking off

    def entity_definitions(self, segments: list[str], query: dict[str, list[str]]) -> dict[str, Any]:
        """``segments[0]`` is ``EntityDefinitions`` or ``EntityDefinitions(<key>)``."""
        _, key = split_segment(segments[0])
        if key is None:
            if len(segments) > 1:
                raise err.no_segment(segments[1])
            items = self._entities(list(TABLES), query)
            return self._collection(items, query, "EntityDefinitions", "EntityMetadata")
        table = self._table(key)
        if len(segments) == 1:
            [item] = self._entities([table], query)
            return self._single(item, query, "EntityDefinitions", "EntityMetadata")
        if segments[1] == "Keys" and len(segments) == 2:
            keys = [
                {
                    "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-dataverse/key/{name}")),
                    "LogicalName": name,
                    "SchemaName": name,
                    "EntityLogicalName": table.logical,
                    "KeyAttributes": list(columns),
                    "EntityKeyIndexStatus": "Active",
                    "DisplayName": _label(name),
                }
                for name, columns in table.alternate_keys
            ]
            return self._collection(keys, query, f"EntityDefinitions({table.metadata_id})/Keys", "EntityKeyMetadata")
        name, attr_key = split_segment(segments[1])
        if name != "Attributes":
            raise err.no_segment(segments[1])
        return self._attributes(table, attr_key, segments[2:], query)

    def _entities(self, tables: list[Table], query: dict[str, list[str]]) -> list[dict[str, Any]]:
        """Entity metadata, with ``Attributes`` when ``$expand=Attributes[($select=…)]`` asks for them."""
        items = [entity_metadata(t, change_tracking=t.logical not in self.untracked) for t in tables]
        for name, selected in _expand_parts((query.get("$expand") or [""])[0]):
            if name != "Attributes":
                raise err.bad_query(f"Could not find a property named '{name}' on type '{NS}EntityMetadata'.")
            for item, table in zip(items, tables, strict=True):
                attributes = [{**_base_attribute(table, c), **_derived_properties(c)} for c in table.columns]
                if selected is not None:
                    base = set(_base_attribute(table, table.columns[0]))
                    unknown = [n for n in selected if n not in base]
                    if unknown:
                        raise err.bad_query(
                            f"Could not find a property named '{unknown[0]}' on type '{NS}AttributeMetadata'."
                        )
                    attributes = [Metadata._shape(a, selected, set()) for a in attributes]
                item["Attributes"] = attributes
        return items

    def _table(self, key: str) -> Table:
        parsed = parse_key(key)
        for table in TABLES:
            if parsed == table.metadata_id or (isinstance(parsed, dict) and parsed == {"LogicalName": table.logical}):
                return table
        shown = parsed.get("LogicalName") if isinstance(parsed, dict) else parsed
        raise err.DataverseError(404, err.OBJECT_DOES_NOT_EXIST, f"Could not find entity with LogicalName '{shown}'.")

    def _attributes(
        self, table: Table, key: str | None, rest: list[str], query: dict[str, list[str]]
    ) -> dict[str, Any]:
        cast = None
        if rest:
            cast = _derived_of(rest[0])
            if cast is None or len(rest) > 1:
                raise err.no_segment(rest[0])
        columns = [c for c in table.columns if cast is None or _DERIVED[c.kind] == cast]
        base_path = f"EntityDefinitions({table.metadata_id})/Attributes"
        type_name = cast or "AttributeMetadata"
        if key is not None:
            parsed = parse_key(key)
            found = [
                c
                for c in table.columns
                if parsed == c.metadata_id or (isinstance(parsed, dict) and parsed == {"LogicalName": c.name})
            ]
            if not found:
                raise err.DataverseError(
                    404, err.OBJECT_DOES_NOT_EXIST, f"Could not find attribute '{key}' on {table.logical}."
                )
            column = found[0]
            if cast is not None and _DERIVED[column.kind] != cast:
                raise err.no_segment(rest[0])
            full = {**_base_attribute(table, column), **_derived_properties(column)}
            allowed = set(_base_attribute(table, column)) | (set(_derived_properties(column)) if cast else set(full))
            expanded = self._expansions(table, [column], query, cast)
            item = {**full, **expanded[0]}
            return self._single(item, query, base_path, type_name, allowed=allowed)
        items = []
        for column in columns:
            item = _base_attribute(table, column)
            item.update(_derived_properties(column))
            items.append(item)
        # The base type lacks MaxLength & co.; a cast collection has its derived type's properties,
        # even when this table has no column of that type (contact has no Picklist): the type's
        # properties come from a column of that type on any table.
        prototype = (
            items[:1]
            or [
                {**_base_attribute(t, c), **_derived_properties(c)}
                for t in TABLES
                for c in t.columns
                if cast is not None and _DERIVED[c.kind] == cast
            ][:1]
        )
        allowed = set(prototype[0]) if cast is not None and prototype else set(_base_attribute(table, table.columns[0]))
        for item, extra in zip(items, self._expansions(table, columns, query, cast), strict=True):
            item.update(extra)
        suffix = f"/{NS}{cast}" if cast else ""
        return self._collection(items, query, base_path + suffix, type_name, allowed=allowed, prototype=prototype)

    def _expansions(
        self, table: Table, columns: list[Column], query: dict[str, list[str]], cast: str | None
    ) -> list[dict[str, Any]]:
        text = (query.get("$expand") or [""])[0]
        if not text:
            return [{} for _ in columns]
        wanted: dict[str, list[str] | None] = {}
        picklists = (
            "PicklistAttributeMetadata",
            "StateAttributeMetadata",
            "StatusAttributeMetadata",
            "BooleanAttributeMetadata",
        )
        for name, selected in _expand_parts(text):
            if name not in _EXPANDABLE or cast not in picklists:
                raise err.bad_query(
                    f"Could not find a property named '{name}' on type '{NS}{cast or 'AttributeMetadata'}'."
                )
            wanted[name] = selected
        out = []
        for column in columns:
            extra: dict[str, Any] = {}
            if "OptionSet" in wanted:
                option_set = _option_set(table, column)
                selected = wanted["OptionSet"]
                if selected is not None:
                    unknown = [s for s in selected if s not in option_set]
                    if unknown:
                        raise err.bad_query(
                            f"Could not find a property named '{unknown[0]}' on type '{NS}OptionSetMetadata'."
                        )
                    option_set = {k: v for k, v in option_set.items() if k in selected}
                extra["OptionSet"] = option_set
            if "GlobalOptionSet" in wanted:
                extra["GlobalOptionSet"] = None
            out.append(extra)
        return out

    def message_filters(
        self, query: dict[str, list[str]], supported: Callable[[str, str], bool] = lambda table, message: True
    ) -> dict[str, Any]:
        """``sdkmessagefilters``: which bulk messages each table supports (all three on both, unless
        ``supported(table, message)`` says otherwise)."""
        items = [
            {
                "sdkmessagefilterid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-dataverse/filter/{t.logical}/{m}")),
                "primaryobjecttypecode": t.logical,
                "isvisible": True,
                "sdkmessageid": {"name": m},
            }
            for t in TABLES
            for m in _MESSAGES
            if supported(t.logical, m)
        ]
        hidden = {"sdkmessageid"}  # a navigation property: filterable by path, not returned
        result = self._collection(items, query, "sdkmessagefilters", "sdkmessagefilter", hidden=hidden)
        return result

    # ------------------------------------------------------------------ shared plumbing

    def _collection(
        self,
        items: list[dict[str, Any]],
        query: dict[str, list[str]],
        path: str,
        type_name: str,
        *,
        allowed: set[str] | None = None,
        hidden: set[str] | None = None,
        prototype: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        types = _property_types(items or prototype or [])
        allowed = set(types) if allowed is None else allowed

        def resolve(name: str) -> str:
            root = name.split("/")[0]
            if root not in allowed or name not in types:
                raise err.bad_query(f"Could not find a property named '{name}' on type '{NS}{type_name}'.")
            return types[name]

        filter_text = (query.get("$filter") or [""])[0]
        if filter_text:
            node = parse_filter(filter_text, resolve, NS + type_name)
            items = [i for i in items if evaluate(node, partial(_walk, i))]
        select_text = (query.get("$select") or [""])[0]
        select = parse_select(select_text, resolve) if select_text else None
        shaped = [self._shape(i, select, hidden or set()) for i in items]
        context = f"{self.api}/$metadata#{path}" + (f"({','.join(select)})" if select else "")
        return {"@odata.context": context, "value": shaped}

    def _single(
        self,
        item: dict[str, Any],
        query: dict[str, list[str]],
        path: str,
        type_name: str,
        *,
        allowed: set[str] | None = None,
    ) -> dict[str, Any]:
        allowed = set(item) if allowed is None else allowed
        select_text = (query.get("$select") or [""])[0]

        def resolve(name: str) -> str:
            if name not in allowed:
                raise err.bad_query(f"Could not find a property named '{name}' on type '{NS}{type_name}'.")
            return "Edm.String"

        select = parse_select(select_text, resolve) if select_text else None
        context = f"{self.api}/$metadata#{path}" + (f"({','.join(select)})" if select else "") + "/$entity"
        return {"@odata.context": context, **self._shape(item, select, set())}

    @staticmethod
    def _shape(item: dict[str, Any], select: list[str] | None, hidden: set[str]) -> dict[str, Any]:
        if select is None:
            return {k: v for k, v in item.items() if k not in hidden}
        keep = {"@odata.type", "MetadataId", *select, *_EXPANDABLE, "Attributes"}
        return {k: v for k, v in item.items() if k in keep}


def _walk(item: dict[str, Any], path: str) -> Any:
    value: Any = item
    for part in path.split("/"):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _property_types(items: list[dict[str, Any]]) -> dict[str, str]:
    types: dict[str, str] = {}

    def visit(prefix: str, obj: dict[str, Any]) -> None:
        for name, value in obj.items():
            path = prefix + name
            if isinstance(value, dict):
                types.setdefault(path, "Edm.Complex")
                visit(path + "/", value)
            elif isinstance(value, bool):
                types[path] = "Edm.Boolean"
            elif isinstance(value, int):
                types[path] = "Edm.Int32"
            elif isinstance(value, str) or path not in types:
                types[path] = "Edm.String"

    for item in items:
        visit("", item)
    return types


def _expand_parts(text: str) -> list[tuple[str, list[str] | None]]:
    """``A($select=x,y),B`` -> [("A", ["x", "y"]), ("B", None)]; only ``$select`` may nest."""
    parts: list[tuple[str, list[str] | None]] = []
    for part in _split_top(text):
        name, options = split_segment(part.strip())
        selected = None
        if options:
            option, _, value = options.partition("=")
            if option.strip() != "$select":
                raise err.bad_query(f"The sandbox supports only $select inside $expand, not '{options}'.")
            selected = [v.strip() for v in value.split(",")]
        parts.append((name, selected))
    return parts


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses (``$expand=A($select=x,y),B``)."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]
