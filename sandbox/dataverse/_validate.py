"""Checks a write body the way a real org does, plus configurable "plug-in" rules.

Platform checks (reference B8): unknown properties (0x80060888), JSON types (0x80048d19),
text length (0x80044331), option-set values (0x8004431A), lookups bound with ``@odata.bind``.
``ApplicationRequired`` is *not* enforced here: the real Web API does not enforce it (B2).
"Plug-in" rules stand for the synchronous validation plug-ins customers register; a failing
rule answers 400 0x80040265 with the rule's message, like ``InvalidPluginExecutionException``.
This module turns JSON into typed column values and says no; it never writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sandbox.dataverse import _errors as err
from sandbox.dataverse._odata import GUID_RE, split_segment
from sandbox.dataverse._schema import BY_SET, Column, Table

_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_IGNORED_ANNOTATIONS = ("@odata.type", "@odata.etag", "@odata.context", "@odata.id")


@dataclass(frozen=True)
class PluginRule:
    """A synchronous validation plug-in on Create/Update of ``entity`` (``*`` = every table).

    kinds: ``required`` (the column may not be missing on create nor emptied on update) and
    ``email_format`` (a non-empty value must look like ``local@domain.tld``).
    """

    kind: str
    entity: str
    column: str
    message: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("required", "email_format"):
            raise ValueError(f"unknown plug-in rule kind {self.kind!r} (required, email_format)")

    def applies_to(self, logical: str) -> bool:
        return self.entity in ("*", logical)

    def violated(self, merged: dict[str, Any], changed: dict[str, Any], creating: bool) -> bool:
        if self.column not in changed and not creating:
            return False
        value = merged.get(self.column)
        if self.kind == "required":
            return value is None or (isinstance(value, str) and not value.strip())
        return isinstance(value, str) and bool(value.strip()) and not _EMAIL_RE.fullmatch(value.strip())

    def text(self, logical: str) -> str:
        if self.message:
            return self.message
        if self.kind == "required":
            return f"Validation plug-in: {self.column} is required on {logical}."
        return f"Validation plug-in: {self.column} on {logical} is not a valid email address."

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PluginRule:
        return cls(str(data["kind"]), str(data.get("entity", "*")), str(data["column"]), data.get("message"))


def default_plugin_rules() -> list[PluginRule]:
    """Defaults: last name on leads and contacts, company name on leads, email format on both."""
    return [
        PluginRule("required", "lead", "lastname"),
        PluginRule("required", "lead", "companyname"),
        PluginRule("required", "contact", "lastname"),
        PluginRule("email_format", "*", "emailaddress1"),
    ]


def check_plugins(
    rules: list[PluginRule], table: Table, merged: dict[str, Any], changed: dict[str, Any], *, creating: bool
) -> None:
    for rule in rules:
        if rule.applies_to(table.logical) and rule.violated(merged, changed, creating):
            raise err.plugin_abort(rule.text(table.logical))


def coerce_body(table: Table, body: Any, *, creating: bool) -> dict[str, Any]:
    """A JSON write body as {logical column: typed value}; the first problem raises."""
    if not isinstance(body, dict):
        raise err.bad_payload(table.entity_set, "The request body must be a JSON object describing one record.")
    values: dict[str, Any] = {}
    for name, raw in body.items():
        if name in _IGNORED_ANNOTATIONS or (name.startswith("@") and not name.endswith("@odata.bind")):
            continue
        if name.endswith("@odata.bind"):
            nav = name[: -len("@odata.bind")]
            column = table.navigations.get(nav)
            if column is None or not column.writable:
                raise err.no_body_property(nav, table.logical)
            values[column.name], values[column.type_key] = _bind(table, column, nav, raw)
            continue
        if "@" in name:
            continue  # instance annotations on a property (e.g. FormattedValue) are ignored on write
        column = table.by_name.get(name)
        if column is None or column.kind == "lookup":
            raise err.no_body_property(name, table.logical)
        if not (column.create if creating else column.update) and column.kind != "guid":
            continue  # read-only system columns are ignored, as the platform does
        values[name] = coerce_value(table, column, raw)
    return values


def coerce_value(table: Table, column: Column, raw: Any) -> Any:
    if raw is None:
        return None
    if column.kind == "string":
        if not isinstance(raw, str):
            raise err.bad_payload(
                table.entity_set, f"Cannot convert the literal '{_literal(raw)}' to the expected type 'Edm.String'."
            )
        if column.max_length is not None and len(raw) > column.max_length:
            raise err.too_long(column.name, table.logical, column.max_length)
        return raw
    if column.kind in ("picklist", "state", "status"):
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise err.bad_payload(
                table.entity_set, f"Cannot convert the literal '{_literal(raw)}' to the expected type 'Edm.Int32'."
            )
        if column.kind == "picklist" and raw not in column.option_values():
            raise err.out_of_range(raw, column.name, table.logical, column.option_values())
        return raw
    if column.kind == "boolean":
        if not isinstance(raw, bool):
            raise err.bad_payload(
                table.entity_set, f"Cannot convert the literal '{_literal(raw)}' to the expected type 'Edm.Boolean'."
            )
        return raw
    if column.kind in ("integer", "money"):
        edm = column.edm
        whole = column.kind == "integer"
        if isinstance(raw, bool) or not isinstance(raw, int | float) or (whole and not float(raw).is_integer()):
            raise err.bad_payload(
                table.entity_set, f"Cannot convert the literal '{_literal(raw)}' to the expected type '{edm}'."
            )
        low, high = column.bounds or (float("-inf"), float("inf"))
        if not low <= raw <= high:
            raise err.out_of_bounds(raw, column.name, table.logical, low, high)
        return int(raw) if whole else round(float(raw), 2)
    if column.kind == "guid":
        if not isinstance(raw, str) or not GUID_RE.fullmatch(raw):
            raise err.bad_payload(
                table.entity_set, f"Cannot convert the literal '{_literal(raw)}' to the expected type 'Edm.Guid'."
            )
        return raw.lower()
    return raw


def _bind(table: Table, column: Column, nav: str, raw: Any) -> tuple[str | None, str | None]:
    """``"/leads(<guid>)"`` (or an absolute URL ending so) -> (the GUID, the target's logical name);
    the entity set must be one the navigation property ``nav`` can point at."""
    if raw is None:
        return None, None
    allowed = column.navigations[nav]
    text = str(raw).rstrip("/")
    segment = text.rsplit("/", 1)[-1]
    entity_set, key = split_segment(segment)
    target = BY_SET.get(entity_set)
    if target is None or target.logical not in allowed or key is None or not GUID_RE.fullmatch(key):
        raise err.bad_payload(
            table.entity_set,
            f"The value '{text}' of '{nav}@odata.bind' is not a URL of a {' or '.join(allowed)} record.",
        )
    return key.lower(), target.logical


def _literal(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return str(raw)
