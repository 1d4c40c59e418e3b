"""The simulated instance's schema: person fields, their types, and the activity types.

Owns what ``describe.json``/``describe2.json``/``activities/types.json`` report and how a value
sent by a client is checked and normalised for a field type (string ≤ 255 characters, email,
boolean, integer, date, datetime, ...), the way the real service validates writes. It holds no
data and does no I/O; the lead database and the request handlers read it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

STRING_MAX = 255
TEXT_MAX_BYTES = 30_000
INT_MIN, INT_MAX = -(2**31), 2**31 - 1


class InvalidValue(ValueError):
    """A value does not fit its field's type or length."""


@dataclass(frozen=True)
class FieldDef:
    id: int
    name: str  # REST API name
    display_name: str
    data_type: str
    soap_name: str
    length: int | None = None
    read_only: bool = False
    custom: bool = False
    searchable: bool = False


def _f(id_: int, name: str, display: str, data_type: str, **kw: Any) -> FieldDef:
    length = STRING_MAX if data_type in ("string", "email", "phone", "url") else None
    soap = kw.pop("soap", None) or name[0].upper() + name[1:]
    return FieldDef(id_, name, display, data_type, soap, length=kw.pop("length", length), **kw)


# Standard person fields (REST names and display names as the real describe shows them), then
# the custom fields an admin creates for the Dynamics sync (design §7).
FIELDS: tuple[FieldDef, ...] = (
    _f(1, "id", "Id", "integer", read_only=True, searchable=True, soap="Id"),
    _f(2, "company", "Company Name", "string"),
    _f(3, "website", "Website", "url"),
    _f(4, "address", "Address", "text"),
    _f(5, "city", "City", "string"),
    _f(6, "state", "State", "string"),
    _f(7, "country", "Country", "string"),
    _f(8, "postalCode", "Postal Code", "string"),
    _f(9, "numberOfEmployees", "Num Employees", "integer"),
    _f(10, "annualRevenue", "Annual Revenue", "currency"),
    _f(11, "dateOfBirth", "Date of Birth", "date"),
    _f(12, "industry", "Industry", "string"),
    _f(27, "createdAt", "Created At", "datetime", read_only=True),
    _f(28, "updatedAt", "Updated At", "datetime", read_only=True),
    _f(29, "firstName", "First Name", "string"),
    _f(30, "middleName", "Middle Name", "string"),
    _f(31, "lastName", "Last Name", "string"),
    _f(32, "title", "Job Title", "string"),
    _f(33, "phone", "Phone Number", "phone"),
    _f(34, "mobilePhone", "Mobile Phone Number", "phone"),
    _f(48, "email", "Email Address", "email", searchable=True),
    _f(51, "leadSource", "Person Source", "string"),
    _f(52, "leadStatus", "Person Status", "string"),
    _f(54, "unsubscribed", "Unsubscribed", "boolean"),
    _f(55, "doNotCall", "Do Not Call", "boolean"),
    _f(56, "emailInvalid", "Email Invalid", "boolean"),
    _f(57, "leadScore", "Lead Score", "score"),
    _f(4001, "microsoftType", "Microsoft Type", "string", custom=True, searchable=True),
    _f(4002, "microsoftId", "Microsoft Id", "string", custom=True, searchable=True),
    _f(4003, "microsoftIsDeleted", "Microsoft Is Deleted", "boolean", custom=True),
    _f(4004, "microsoftCreatedDate", "Microsoft Created Date", "datetime", custom=True),
    _f(4005, "microsoftOwnerId", "Microsoft Owner Id", "string", custom=True, searchable=True),
    _f(4006, "microsoftOwnerName", "Microsoft Owner Name", "string", custom=True),
    _f(4007, "microsoftOwnerEmail", "Microsoft Owner Email", "email", custom=True),
    _f(4008, "microsoftAccountNumber", "Microsoft Account Number", "string", custom=True),
    # Not part of the sync's set-up: a person field an admin may add to keep persons out (sync filter tests).
    _f(4009, "syncToMicrosoft", "Sync to Microsoft", "boolean", custom=True),
)
BY_NAME: dict[str, FieldDef] = {f.name: f for f in FIELDS}
SEARCHABLE: tuple[str, ...] = tuple(f.name for f in FIELDS if f.searchable)
DEFAULT_QUERY_FIELDS = ("id", "email", "updatedAt", "createdAt", "firstName", "lastName")

_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def format_datetime(moment: datetime) -> str:
    """API output form of a datetime: UTC, seconds, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_epoch(seconds: float) -> str:
    return format_datetime(datetime.fromtimestamp(seconds, UTC))


def parse_datetime(text: str) -> datetime:
    """ISO-8601 with ``Z``, ``±hh:mm`` or ``±hhmm`` offsets (or a plain date); naive means UTC."""
    value = text.strip()
    if _DATE.match(value):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    match = re.match(r"^(.*[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)([+-]\d{2})(\d{2})$", value)
    if match:  # Marketo's own "+0000" form
        value = f"{match.group(1)}{match.group(2)}:{match.group(3)}"
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def coerce(fdef: FieldDef, value: Any) -> Any:
    """The stored form of ``value`` for ``fdef``; ``None`` (or "") clears. Raises InvalidValue."""
    if value is None or value == "":
        return None
    kind = fdef.data_type
    if kind in ("string", "email", "phone", "url", "text"):
        return _coerce_text(fdef, value)
    if kind == "boolean":
        return _coerce_bool(value)
    if kind in ("integer", "score"):
        return _coerce_int(value)
    if kind in ("float", "currency", "percent"):
        return _coerce_float(value)
    if kind == "date":
        if not isinstance(value, str) or not _DATE.match(value):
            raise InvalidValue(kind)
        try:
            date.fromisoformat(value)
        except ValueError as err:
            raise InvalidValue(kind) from err
        return value
    if kind == "datetime":
        if not isinstance(value, str):
            raise InvalidValue(kind)
        try:
            return format_datetime(parse_datetime(value))
        except ValueError as err:
            raise InvalidValue(kind) from err
    raise InvalidValue(kind)  # pragma: no cover - every type above is handled


def _coerce_text(fdef: FieldDef, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidValue(fdef.data_type)
    text = value if isinstance(value, str) else str(value)
    if fdef.data_type == "text":
        if len(text.encode("utf-8")) > TEXT_MAX_BYTES:
            raise InvalidValue("too long")
        return text
    if len(text) > (fdef.length or STRING_MAX):
        raise InvalidValue("too long")
    if fdef.data_type == "email" and (not text.isascii() or not _EMAIL.match(text)):
        raise InvalidValue("email")
    return text


def _coerce_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidValue("boolean")


def _coerce_int(value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidValue("integer")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        value = int(value)
    if not isinstance(value, int) or not INT_MIN <= value <= INT_MAX:
        raise InvalidValue("integer")
    return value


def _coerce_float(value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidValue("float")
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise InvalidValue("float") from err
    if not math.isfinite(number):
        raise InvalidValue("float")
    return number


class FieldProblem(ValueError):
    """A record-level problem with one field, as the sync reports it (code 1003/1006)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def clean_values(values: Any) -> dict[str, Any]:
    """Check every field of a write and return the stored forms; ``None`` means clear.

    Raises FieldProblem for the first unknown (1006), read-only or badly typed (1003) field.
    ``id`` is not a writable field; callers that accept it as a key remove it first.
    """
    if not isinstance(values, dict):
        raise FieldProblem("1003", "Invalid input")
    clean: dict[str, Any] = {}
    for name, value in values.items():
        fdef = BY_NAME.get(name)
        if fdef is None:
            raise FieldProblem("1006", f"Field '{name}' not found")
        if fdef.read_only:
            raise FieldProblem("1003", f"Field '{name}' is not updateable")
        try:
            clean[name] = coerce(fdef, value)
        except InvalidValue as err:
            raise FieldProblem("1003", f"Invalid value for field '{name}'") from err
    return clean


def render_value(value: Any) -> str | None:
    """How an activity shows an old/new value: text, booleans as ``true``/``false``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def describe() -> list[dict[str, Any]]:
    """``GET /rest/v1/leads/describe.json`` result."""
    items: list[dict[str, Any]] = []
    for f in FIELDS:
        item: dict[str, Any] = {"id": f.id, "displayName": f.display_name, "dataType": f.data_type}
        if f.length is not None:
            item["length"] = f.length
        item["rest"] = {"name": f.name, "readOnly": f.read_only}
        item["soap"] = {"name": f.soap_name, "readOnly": f.read_only}
        items.append(item)
    return items


def describe2() -> list[dict[str, Any]]:
    """``GET /rest/v1/leads/describe2.json`` result."""
    fields = []
    for f in FIELDS:
        item: dict[str, Any] = {"name": f.name, "displayName": f.display_name, "dataType": f.data_type}
        if f.length is not None:
            item["length"] = f.length
        item.update(updateable=not f.read_only, crmManaged=False)
        fields.append(item)
    return [{"name": "API Lead", "searchableFields": [[name] for name in SEARCHABLE], "fields": fields}]


def schema_fields() -> list[dict[str, Any]]:
    """``GET /rest/v1/leads/schema/fields.json`` result."""
    items = []
    for f in FIELDS:
        item: dict[str, Any] = {
            "displayName": f.display_name,
            "name": f.name,
            "description": None,
            "dataType": f.data_type,
        }
        if f.length is not None:
            item["length"] = f.length
        item.update(isHidden=False, isHtmlEncodingInEmail=True, isSensitive=False, isCustom=f.custom)
        items.append(item)
    return items


# ---- activity types ----------------------------------------------------------------------

NEW_LEAD, CHANGE_DATA_VALUE, MERGE_LEADS, DELETE_LEAD = 12, 13, 32, 37
SOURCE_API = "Web service API"


@dataclass(frozen=True)
class ActivityType:
    id: int
    name: str
    description: str
    primary: tuple[str, str] | None = None  # (name, dataType)
    attributes: tuple[tuple[str, str], ...] = ()

    def as_json(self) -> dict[str, Any]:
        item: dict[str, Any] = {"id": self.id, "name": self.name, "description": self.description}
        if self.primary:
            item["primaryAttribute"] = {"name": self.primary[0], "dataType": self.primary[1]}
        if self.attributes:
            item["attributes"] = [{"name": n, "dataType": t} for n, t in self.attributes]
        return item


_LEAD_ID = ("Lead ID", "integer")
ACTIVITY_TYPES: tuple[ActivityType, ...] = (
    ActivityType(1, "Visit Webpage", "User visits a web page", ("Webpage ID", "integer")),
    ActivityType(2, "Fill Out Form", "User fills out and submits a form", ("Webform ID", "integer")),
    ActivityType(6, "Send Email", "Send Marketo Email to a person", ("Mailing ID", "integer")),
    ActivityType(9, "Unsubscribe Email", "Person unsubscribes from Marketo emails", ("Mailing ID", "integer")),
    ActivityType(10, "Open Email", "User opens Marketo Email", ("Mailing ID", "integer")),
    ActivityType(11, "Click Email", "User clicks on a link in a Marketo Email", ("Mailing ID", "integer")),
    ActivityType(
        NEW_LEAD,
        "New Lead",
        "New person",
        _LEAD_ID,
        (("Created Date", "date"), ("Form Name", "string"), ("Source Type", "string")),
    ),
    ActivityType(
        CHANGE_DATA_VALUE,
        "Change Data Value",
        "Changed attribute value for a person",
        ("Attribute Name", "integer"),
        (("New Value", "text"), ("Old Value", "text"), ("Reason", "text"), ("Source", "string")),
    ),
    ActivityType(19, "Sync Lead to SFDC", "Person is synchronized to SFDC", _LEAD_ID),
    ActivityType(21, "Convert Lead", "Convert a person", _LEAD_ID),
    ActivityType(22, "Change Score", "Change a person's score", ("Score Name", "integer")),
    ActivityType(23, "Change Owner", "Changed owner for a person", _LEAD_ID),
    ActivityType(24, "Add to List", "Person is added to a list", ("List ID", "integer")),
    ActivityType(25, "Remove from List", "Person is removed from a list", ("List ID", "integer")),
    ActivityType(
        MERGE_LEADS,
        "Merge Leads",
        "Merge two or more people",
        _LEAD_ID,
        (("Merge IDs", "text"), ("Merge Source", "string"), ("Merged in Sales", "boolean")),
    ),
    ActivityType(DELETE_LEAD, "Delete Lead", "Delete a person", _LEAD_ID, (("Remove from CRM", "boolean"),)),
    ActivityType(46, "Interesting Moment", "Interesting moment", ("Milestone ID", "integer")),
    ActivityType(110, "Call Webhook", "Call a web service", ("Webhook ID", "integer")),
    ActivityType(145, "Push Lead to Marketo", "Push a person to Marketo", _LEAD_ID),
    ActivityType(300, "Sync Lead to Microsoft", "Person is synchronized to Microsoft", _LEAD_ID),
)


@dataclass(frozen=True)
class CustomAttribute:
    api_name: str
    name: str
    description: str
    data_type: str = "string"

    def as_json(self) -> dict[str, Any]:
        return {
            "apiName": self.api_name,
            "name": self.name,
            "description": self.description,
            "dataType": self.data_type,
        }


@dataclass(frozen=True)
class CustomActivityType:
    id: int
    api_name: str
    name: str
    description: str
    trigger_name: str
    filter_name: str
    primary: CustomAttribute
    attributes: tuple[CustomAttribute, ...] = field(default=())
    status: str = "approved"
    created_at: str = "2024-01-01T00:00:00Z"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "apiName": self.api_name,
            "name": self.name,
            "description": self.description,
            "triggerName": self.trigger_name,
            "filterName": self.filter_name,
            "createdAt": self.created_at,
            "updatedAt": self.created_at,
            "status": self.status,
            "primaryAttribute": self.primary.as_json(),
            "attributes": [a.as_json() for a in self.attributes],
        }

    def attribute(self, key: str) -> CustomAttribute | None:
        """An attribute by API name or display name (clients may send either)."""
        for attr in self.attributes:
            if key in (attr.api_name, attr.name):
                return attr
        return None


# The type an admin creates for the sync's failure log (design §7), already approved.
SYNC_FAILED = CustomActivityType(
    id=100001,
    api_name="microsoftSyncFailed",
    name="Microsoft Sync Failed",
    description="A record could not be synchronised with Microsoft Dynamics",
    trigger_name="Microsoft sync fails",
    filter_name="Microsoft sync failed",
    primary=CustomAttribute("entity", "Entity", "The Dynamics entity (lead or contact)"),
    attributes=(
        CustomAttribute("reason", "Reason", "Why the record was not written"),
        CustomAttribute("direction", "Direction", "Which way the sync was writing"),
    ),
)
CUSTOM_ACTIVITY_TYPES: tuple[CustomActivityType, ...] = (SYNC_FAILED,)
CUSTOM_BY_ID = {t.id: t for t in CUSTOM_ACTIVITY_TYPES}
CUSTOM_BY_API_NAME = {t.api_name: t for t in CUSTOM_ACTIVITY_TYPES}
ALL_ACTIVITY_TYPE_IDS = frozenset({t.id for t in ACTIVITY_TYPES} | set(CUSTOM_BY_ID))


def activity_types() -> list[dict[str, Any]]:
    """``GET /rest/v1/activities/types.json`` result: standard types, then approved custom ones."""
    custom = [
        {
            "id": t.id,
            "name": t.name,
            "description": t.description,
            "primaryAttribute": {"name": t.primary.name, "dataType": t.primary.data_type},
            "attributes": [{"name": a.name, "dataType": a.data_type} for a in t.attributes],
        }
        for t in CUSTOM_ACTIVITY_TYPES
        if t.status == "approved"
    ]
    return [t.as_json() for t in ACTIVITY_TYPES] + custom
