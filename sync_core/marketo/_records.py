"""Readers of Marketo's per-record JSON into the typed results, and checks on what goes out.

The raw dicts of ``result`` stop here: per-record verdicts become ``LeadWriteResult`` /
``ActivityResult``, activities ``LeadChange`` / ``DeletedLead``, describe answers
``MarketoFieldMeta``. Field names and lead ids are checked before they reach a URL. Pure
functions: no I/O, no retries, no logging (the client counts what was skipped).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sync_core.core.schema import MarketoFieldMeta
from sync_core.marketo._types import (
    OUTCOME_BY_CODE,
    ActivityResult,
    ActivityStatus,
    DeletedLead,
    FieldChange,
    LeadChange,
    LeadOutcome,
    LeadWriteResult,
    Reason,
    WriteStatus,
)

FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


def field_names(fields: Sequence[str]) -> str:
    """The ``fields`` parameter: Marketo REST field names, checked, de-duplicated, comma-joined."""
    if isinstance(fields, str) or not fields:
        raise ValueError("fields must be a non-empty sequence of Marketo REST field names")
    for name in fields:
        if not isinstance(name, str) or not FIELD_NAME.match(name):
            raise ValueError(f"not a Marketo field name: {name!r:.60}")
    return ",".join(dict.fromkeys(fields))


def lead_ids(ids: Sequence[int]) -> list[int]:
    """Positive integer lead ids, de-duplicated in order; anything else is refused."""
    unique: dict[int, None] = {}
    for value in ids:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"not a Marketo lead id: {value!r:.40}")
        unique[value] = None
    return list(unique)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def optional_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _parse_datetime(value: Any) -> datetime:
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _reasons(item: Mapping[str, Any]) -> tuple[Reason, ...]:
    # Sync Leads puts them under "reasons", Add Custom Activities under "errors": read both.
    found: list[Reason] = []
    for key in ("reasons", "errors"):
        for reason in item.get(key) or []:
            if isinstance(reason, dict):
                code = reason.get("code")
                found.append(Reason(str(code) if code is not None else None, str(reason.get("message", ""))))
            else:
                found.append(Reason(None, str(reason)))
    return tuple(found)


def _outcome(reasons: Sequence[Reason]) -> LeadOutcome:
    for reason in reasons:
        if reason.code in OUTCOME_BY_CODE:
            return OUTCOME_BY_CODE[reason.code]
    return LeadOutcome.OTHER


def lead_result(index: int, item: Mapping[str, Any]) -> LeadWriteResult:
    """The verdict of Sync Leads / Delete Leads on the record at ``index``."""
    raw_status = str(item.get("status", "")).lower()
    try:
        status = WriteStatus(raw_status)
    except ValueError:
        status = WriteStatus.SKIPPED
    reasons = _reasons(item)
    if status is WriteStatus.SKIPPED and not reasons:
        reasons = (Reason(None, f"status {raw_status or 'missing'}"),)
    outcome = LeadOutcome.OK if status is not WriteStatus.SKIPPED else _outcome(reasons)
    return LeadWriteResult(index, status, outcome, optional_int(item.get("id")), reasons)


def activity_result(index: int, item: Mapping[str, Any]) -> ActivityResult:
    """The verdict of Add Custom Activities on the activity at ``index``."""
    added = str(item.get("status", "")).lower() == "added"
    reasons = _reasons(item)
    guid = item.get("marketoGUID")
    return ActivityResult(
        index=index,
        status=ActivityStatus.ADDED if added else ActivityStatus.SKIPPED,
        outcome=LeadOutcome.OK if added else _outcome(reasons),
        id=optional_int(item.get("id")),
        marketo_guid=str(guid) if guid is not None else None,
        reasons=reasons,
    )


def activity_guid(item: Mapping[str, Any]) -> str | None:
    """An activity's identity across pages: its ``marketoGUID``, else its id."""
    guid = item.get("marketoGUID")
    if guid not in (None, ""):
        return str(guid)
    activity_id = optional_int(item.get("id"))
    return str(activity_id) if activity_id is not None else None


def _activity_identity(item: Mapping[str, Any]) -> tuple[int | None, str, int, datetime, int] | None:
    """(id, marketoGUID, leadId, activityDate, activityTypeId), or None when the item is unusable."""
    guid = activity_guid(item)
    lead_id = optional_int(item.get("leadId"))
    type_id = optional_int(item.get("activityTypeId"))
    if guid is None or lead_id is None or type_id is None:
        return None
    try:
        when = _parse_datetime(item.get("activityDate"))
    except ValueError:
        return None
    return optional_int(item.get("id")), guid, lead_id, when, type_id


def lead_change(item: Mapping[str, Any]) -> LeadChange | None:
    """A Change Data Value / New Lead activity, or None when the item is unusable."""
    identity = _activity_identity(item)
    if identity is None:
        return None
    activity_id, guid, lead_id, when, type_id = identity
    changes = tuple(
        FieldChange(str(change.get("name")), change.get("newValue"), change.get("oldValue"))
        for change in item.get("fields") or []
        if isinstance(change, dict) and change.get("name")
    )
    attributes = {
        str(attr.get("name")): attr.get("value")
        for attr in item.get("attributes") or []
        if isinstance(attr, dict) and attr.get("name")
    }
    return LeadChange(activity_id, guid, lead_id, when, type_id, changes, attributes)


def deleted_lead(item: Mapping[str, Any]) -> DeletedLead | None:
    """A Delete Lead activity, or None when the item is unusable."""
    identity = _activity_identity(item)
    if identity is None:
        return None
    activity_id, guid, lead_id, when, _ = identity
    return DeletedLead(activity_id, guid, lead_id, when)


def describe2_fields(result: Sequence[Mapping[str, Any]]) -> dict[str, MarketoFieldMeta]:
    """Fields from ``leads/describe2.json`` (groups of fields, REST names)."""
    described: dict[str, MarketoFieldMeta] = {}
    for group in result:
        for item in group.get("fields") or []:
            if isinstance(item, dict) and item.get("name"):
                name = str(item["name"])
                described[name] = _field_meta(name, item, updateable=bool(item.get("updateable", True)))
    return described


def describe_fields(result: Sequence[Mapping[str, Any]]) -> dict[str, MarketoFieldMeta]:
    """Fields from the older ``leads/describe.json`` (only those usable over REST)."""
    described: dict[str, MarketoFieldMeta] = {}
    for item in result:
        rest = item.get("rest")
        if not isinstance(rest, dict) or not rest.get("name"):
            continue  # not usable over REST
        name = str(rest["name"])
        described[name] = _field_meta(name, item, updateable=not bool(rest.get("readOnly", False)))
    return described


def _field_meta(name: str, item: Mapping[str, Any], *, updateable: bool) -> MarketoFieldMeta:
    return MarketoFieldMeta(
        name=name,
        data_type=str(item.get("dataType", "string")),
        length=optional_int(item.get("length")),
        updateable=updateable,
    )
