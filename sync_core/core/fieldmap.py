"""The field map (design B6): which Marketo person field syncs with which Dataverse column, and
how a value is converted on the way.

Owns the map's model and its loading (``SYNC_FIELD_MAP``: a path or inline JSON; default: the
``fieldmap.default.json`` shipped beside this module) and the conversion of values between each
side's wire form and one *canonical* form, the form baselines are stored and compared in:

    string, phone   str, or None for empty ("" and None are the same value)
    email           str as written (case kept), or None
    boolean         bool, or None
    integer         int;  decimal: float (an integral float equals its int)
    date            "YYYY-MM-DD"
    datetime        "YYYY-MM-DDTHH:MM:SSZ", in UTC, to the second (Marketo's precision)
    optionset       the Dataverse option value (int); Marketo holds its label

A value that cannot be read as its type is not guessed at: ``from_marketo`` returns
``Unreadable`` (the merge sees a change, validation refuses to send it), the other conversions
raise ``FieldValueError``. Pure: no I/O, no clock; errors name fields, never values.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sync_core.core.errors import ConfigError
from sync_core.core.models import EntityType

DEFAULT_PATH = Path(__file__).with_name("fieldmap.default.json")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
# The Marketo fields the sync itself owns (design §7); a field map may not map them.
MICROSOFT_FIELDS = ("microsoftType", "microsoftId", "microsoftIsDeleted", "microsoftCreatedDate")
# Person fields filled from Dynamics only (``core.oneway``): the record's owner on every linked
# person, the parent account's on a contact's person. A map may not map the first at all, nor
# the second for contacts (for leads, ``company`` ↔ ``companyname`` is the default map's).
OWNER_FIELDS = ("microsoftOwnerId", "microsoftOwnerName", "microsoftOwnerEmail")
COMPANY_FIELDS = ("company", "website", "industry", "numberOfEmployees", "annualRevenue", "microsoftAccountNumber")
Winner = Literal["marketo", "dynamics"]


class FieldType(StrEnum):
    STRING = "string"
    EMAIL = "email"
    PHONE = "phone"
    BOOLEAN = "boolean"
    INTEGER = "integer"
    DECIMAL = "decimal"
    DATE = "date"
    DATETIME = "datetime"
    OPTIONSET = "optionset"


class FieldValueError(ValueError):
    """A value does not fit its field's type; the message names the field and the type only."""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A Marketo value that could not be read as its field's type (kept so validation can say why)."""

    reason: str


class FieldMapping(BaseModel):
    """One synced field: its Marketo name, its column on each Dataverse table, its type."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    marketo: str
    lead: str | None = None  # column on lead; None: not synced for leads
    contact: str | None = None  # column on contact; None: not synced for contacts
    type: FieldType = FieldType.STRING
    # optionset: Dataverse value -> Marketo label. Empty: the labels Dataverse's metadata gives.
    options: dict[int, str] = Field(default_factory=dict)
    # Who wins a collision on this field, whatever the entity (default: lead Marketo, contact Dynamics).
    winner: Winner | None = None

    @field_validator("marketo", "lead", "contact")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError("must be a plain field name (letters, digits, underscore)")
        return value

    @model_validator(mode="after")
    def _mapped_somewhere(self) -> FieldMapping:
        if self.lead is None and self.contact is None:
            raise ValueError(f"{self.marketo}: map it to a lead or a contact column (or both)")
        if self.marketo in MICROSOFT_FIELDS:
            raise ValueError(f"{self.marketo}: owned by the sync itself, it cannot be mapped")
        if self.marketo in OWNER_FIELDS:
            raise ValueError(f"{self.marketo}: filled from the record's owner in Dynamics, it cannot be mapped")
        if self.marketo in COMPANY_FIELDS and self.contact is not None:
            raise ValueError(
                f"{self.marketo}: filled from a contact's parent account in Dynamics; map it for leads only"
            )
        if self.options and self.type is not FieldType.OPTIONSET:
            raise ValueError(f"{self.marketo}: options are only for type optionset")
        return self

    @property
    def key(self) -> str:
        """The name this field has in baselines, collisions and failures: its Marketo name."""
        return self.marketo

    def column(self, entity: EntityType) -> str | None:
        return self.lead if entity is EntityType.LEAD else self.contact

    def with_options(self, options: Mapping[int, str]) -> FieldMapping:
        """This mapping with the labels Dataverse reports, when the map gave none of its own."""
        if self.type is not FieldType.OPTIONSET or self.options or not options:
            return self
        return self.model_copy(update={"options": dict(options)})

    # -- conversions ------------------------------------------------------------------------

    def from_marketo(self, raw: Any) -> Any:
        """Canonical value of what Marketo holds (a lead field, or a change's ``newValue`` text)."""
        try:
            if self.type is FieldType.OPTIONSET:
                return self._option_from_label(raw)
            return _canonical(self.type, raw)
        except FieldValueError as err:
            return Unreadable(str(err))

    def from_dataverse(self, raw: Any) -> Any:
        if self.type is FieldType.OPTIONSET:
            if raw is None or raw == "":
                return None
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise FieldValueError(f"{self.key}: Dataverse sent a non-integer option value")
            return raw
        return _canonical(self.type, raw)

    def to_marketo(self, value: Any) -> Any:
        """What to send Marketo for a canonical value (``None`` clears the field)."""
        if value is None:
            return None
        if self.type is FieldType.OPTIONSET:
            label = self.options.get(value)
            if label is None:
                raise FieldValueError(f"{self.key}: option value {value} has no Marketo label in the field map")
            return label
        return value

    def to_dataverse(self, value: Any) -> Any:
        """What to send Dataverse for a canonical value (``None`` clears the column)."""
        if isinstance(value, Unreadable):
            raise FieldValueError(value.reason)
        return value

    def _option_from_label(self, raw: Any) -> int | None:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        if isinstance(raw, str):
            wanted = raw.strip().casefold()
            for value, label in self.options.items():
                if label.casefold() == wanted:
                    return value
        raise FieldValueError(f"{self.key}: not one of the option labels of the field map")


def canonical(kind: FieldType, raw: Any) -> Any:
    """The canonical form of ``raw`` for a field of type ``kind`` (not optionset); raises ``FieldValueError``."""
    return _canonical(kind, raw)


def _canonical(kind: FieldType, raw: Any) -> Any:
    if raw is None or (isinstance(raw, str) and raw == ""):
        return None
    if kind in (FieldType.STRING, FieldType.EMAIL, FieldType.PHONE):
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            raise FieldValueError(f"expected text for a {kind.value} field")
        return raw if isinstance(raw, str) else str(raw)
    if kind is FieldType.BOOLEAN:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):
            return bool(raw)
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.strip().lower() in ("true", "1", "yes")
        raise FieldValueError("expected true or false")
    if kind is FieldType.INTEGER:
        if isinstance(raw, bool):
            raise FieldValueError("expected a whole number")
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+\s*", raw):
            return int(raw)
        if isinstance(raw, int):
            return raw
        raise FieldValueError("expected a whole number")
    if kind is FieldType.DECIMAL:
        if isinstance(raw, bool):
            raise FieldValueError("expected a number")
        try:
            number = float(raw)
        except (TypeError, ValueError) as err:
            raise FieldValueError("expected a number") from err
        if not math.isfinite(number):
            raise FieldValueError("expected a finite number")
        return int(number) if number.is_integer() else number
    if kind is FieldType.DATE:
        if not isinstance(raw, str) or not _DATE.match(raw.strip()):
            raise FieldValueError("expected a date (YYYY-MM-DD)")
        text = raw.strip()
        if len(text) > 10:  # a datetime: the date it is in UTC
            return _utc(text).date().isoformat()
        try:
            return date.fromisoformat(text).isoformat()
        except ValueError as err:
            raise FieldValueError("expected a date (YYYY-MM-DD)") from err
    if kind is FieldType.DATETIME:
        if not isinstance(raw, str):
            raise FieldValueError("expected an ISO-8601 datetime")
        return _utc(raw.strip()).strftime("%Y-%m-%dT%H:%M:%SZ")
    raise FieldValueError(f"unknown field type {kind}")  # pragma: no cover - every type is handled above


def _utc(text: str) -> datetime:
    value = text.replace(" ", "T", 1)
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    match = re.match(r"^(.*T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)([+-]\d{2})(\d{2})$", value)
    if match:  # Marketo's "+0000" offsets
        value = f"{match.group(1)}{match.group(2)}:{match.group(3)}"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as err:
        raise FieldValueError("expected an ISO-8601 datetime") from err
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


class FieldMap(BaseModel):
    """The whole map: the fields, and the columns set on records the webhook creates."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    fields: tuple[FieldMapping, ...]
    # Columns every record created in Dynamics gets, per entity (e.g. a lead's required Topic).
    create_defaults: dict[EntityType, dict[str, Any]] = Field(default_factory=dict, alias="createDefaults")

    @model_validator(mode="after")
    def _unique(self) -> FieldMap:
        problems: list[str] = []
        seen: set[str] = set()
        for mapping in self.fields:
            if mapping.marketo in seen:
                problems.append(f"{mapping.marketo}: mapped twice")
            seen.add(mapping.marketo)
        for entity in EntityType:
            columns = [m.column(entity) for m in self.fields if m.column(entity)]
            for column in {c for c in columns if columns.count(c) > 1}:
                problems.append(f"{entity.value}.{column}: the target of two Marketo fields")
        if not any(m.type is FieldType.EMAIL for m in self.fields):
            problems.append("no field of type email: persons could not be matched by email")
        if problems:
            raise ValueError("; ".join(sorted(problems)))
        return self

    def for_entity(self, entity: EntityType) -> tuple[FieldMapping, ...]:
        return tuple(m for m in self.fields if m.column(entity) is not None)

    def columns(self, entity: EntityType) -> list[str]:
        return [column for m in self.fields if (column := m.column(entity)) is not None]

    @property
    def marketo_fields(self) -> list[str]:
        return [m.marketo for m in self.fields]

    def email_field(self, entity: EntityType | None = None) -> FieldMapping | None:
        """The mapping persons are matched by (the first of type email, for that entity); None when
        there is none for it (e.g. the email field drifted away: match by ``microsoftId`` alone)."""
        fields = self.fields if entity is None else self.for_entity(entity)
        return next((mapping for mapping in fields if mapping.type is FieldType.EMAIL), None)

    def without(self, dropped: Iterable[tuple[EntityType | None, str]]) -> FieldMap:
        """This map with some fields left out: ``(None, key)`` everywhere, ``(entity, key)`` on one table.

        How schema drift is absorbed: a field missing on one side stops syncing, the others go on."""
        drop = set(dropped)
        kept: list[FieldMapping] = []
        for mapping in self.fields:
            if (None, mapping.key) in drop:
                continue
            update = {entity.value: None for entity in EntityType if (entity, mapping.key) in drop}
            if update and all(update.get(e.value, mapping.column(e)) is None for e in EntityType):
                continue
            kept.append(mapping.model_copy(update=update) if update else mapping)
        return FieldMap.model_construct(fields=tuple(kept), create_defaults=self.create_defaults)

    def with_options(self, options: Mapping[str, Mapping[int, str]]) -> FieldMap:
        """Option-set mappings without labels of their own take Dataverse's (``key -> {value: label}``)."""
        fields = tuple(m.with_options(options.get(m.key, {})) for m in self.fields)
        return FieldMap.model_construct(fields=fields, create_defaults=self.create_defaults)


def load_field_map(spec: str | None) -> FieldMap:
    """The map ``SYNC_FIELD_MAP`` names: inline JSON (starts with ``{``), a path, or the default."""
    if spec is None or not spec.strip():
        text, where = DEFAULT_PATH.read_text(encoding="utf-8"), str(DEFAULT_PATH.name)
    elif spec.lstrip().startswith("{"):
        text, where = spec, "inline JSON"
    else:
        path = Path(spec.strip())
        try:
            text, where = path.read_text(encoding="utf-8"), str(path)
        except OSError as err:
            raise ConfigError([f"SYNC_FIELD_MAP: cannot read {path}: {err.strerror or err}"]) from err
    try:
        return FieldMap.model_validate(json.loads(text))
    except json.JSONDecodeError as err:
        raise ConfigError([f"SYNC_FIELD_MAP ({where}): not valid JSON at line {err.lineno}"]) from err
    except ValidationError as err:
        problems = []
        for issue in err.errors():
            where_in = ".".join(str(part) for part in issue["loc"]) or "map"
            problems.append(f"SYNC_FIELD_MAP {where_in}: {issue['msg']}")
        raise ConfigError(problems) from err


def canonical_values(mappings: Sequence[FieldMapping], values: Mapping[str, Any], *, side: str) -> dict[str, Any]:
    """Canonical values by key from one side's record, for the mappings whose field it holds.

    ``side`` is ``marketo`` (keys are Marketo names) or a Dataverse entity (``lead``/``contact``,
    keys are its columns). A Dataverse value that does not fit its type raises ``FieldValueError``."""
    out: dict[str, Any] = {}
    for mapping in mappings:
        if side == "marketo":
            if mapping.marketo in values:
                out[mapping.key] = mapping.from_marketo(values[mapping.marketo])
        else:
            column = mapping.column(EntityType(side))
            if column is not None and column in values:
                out[mapping.key] = mapping.from_dataverse(values[column])
    return out
