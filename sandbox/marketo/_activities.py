"""Activity endpoints: paging tokens, lead changes, activities, deleted leads, custom activities.

Pages hold at most ``batchSize`` (≤ 300) items; ``nextPageToken`` is always returned (it is the
reader's watermark) and ``moreResult`` says whether to call again; a page may hold fewer items
than asked for. Also the usage statistics (``stats/usage.json``), which read the same daily
counter that enforces the quota.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sandbox.marketo import _schema as schema
from sandbox.marketo._call import MAX_BATCH, Call
from sandbox.marketo._db import Activity, Position
from sandbox.marketo._envelope import MarketoError, blank
from sandbox.marketo._schema import CHANGE_DATA_VALUE, DELETE_LEAD, NEW_LEAD
from sandbox.marketo._tokens import decode_position, encode_position

MAX_LEAD_IDS = 30
MAX_TYPE_IDS = 10
DELETED_LEADS_KEPT = timedelta(days=14).total_seconds()


def paging_token(call: Call) -> dict[str, Any]:
    since = call.params.first("sinceDatetime")
    if not since:
        raise blank("sinceDatetime")
    try:
        moment = schema.parse_datetime(since)
    except ValueError as err:
        raise MarketoError("1003", f"Invalid value '{since}' for sinceDatetime") from err
    return {"nextPageToken": encode_position(Position(since=moment.timestamp(), last_id=0))}


def _position(call: Call) -> Position:
    token = call.params.first("nextPageToken")
    if not token:
        raise blank("nextPageToken")
    try:
        return decode_position(token)
    except ValueError as err:
        raise MarketoError("1003", "Invalid nextPageToken") from err


def _lead_filter(call: Call) -> set[int] | None:
    if call.params.first("listId"):
        raise MarketoError("1013", "Static list not found")  # the sandbox has no lists
    lead_ids = call.params.integers("leadIds")
    if len(lead_ids) > MAX_LEAD_IDS:
        raise MarketoError("1003", f"Number of leadIds exceeds the limit of {MAX_LEAD_IDS}")
    return set(lead_ids) or None


def _page(
    call: Call, accept: Callable[[Activity], bool], render: Callable[[Activity], dict[str, Any]]
) -> dict[str, Any]:
    position = _position(call)
    found, after, more = call.db.page(position, call.batch_size(), accept)
    payload: dict[str, Any] = {"nextPageToken": encode_position(after), "moreResult": more}
    if found:  # like the real service, an empty page may have no ``result`` at all
        payload["result"] = [render(a) for a in found]
    return payload


def lead_changes(call: Call) -> dict[str, Any]:
    fields = set(call.params.items("fields"))
    if not fields:
        raise blank("fields")
    for name in fields:
        if name not in schema.BY_NAME:
            raise MarketoError("1006", f"Field '{name}' not found")
    leads = _lead_filter(call)

    def accept(a: Activity) -> bool:
        if leads is not None and a.lead_id not in leads:
            return False
        return a.type_id == NEW_LEAD or (
            a.type_id == CHANGE_DATA_VALUE and a.change is not None and a.change[0].name in fields
        )

    return _page(call, accept, render_change)


def activities(call: Call) -> dict[str, Any]:
    type_ids = set(call.params.integers("activityTypeIds"))
    if not type_ids:
        raise blank("activityTypeIds")
    if len(type_ids) > MAX_TYPE_IDS:
        raise MarketoError("1003", f"Number of activityTypeIds exceeds the limit of {MAX_TYPE_IDS}")
    unknown = type_ids - schema.ALL_ACTIVITY_TYPE_IDS
    if unknown:
        raise MarketoError("1003", f"Invalid activityTypeIds {sorted(unknown)}")
    leads = _lead_filter(call)

    def accept(a: Activity) -> bool:
        return a.type_id in type_ids and (leads is None or a.lead_id in leads)

    return _page(call, accept, render_activity)


def deleted_leads(call: Call) -> dict[str, Any]:
    oldest = call.clock() - DELETED_LEADS_KEPT  # older deletions are pruned by the service

    def accept(a: Activity) -> bool:
        return a.type_id == DELETE_LEAD and a.logged_at >= oldest

    return _page(call, accept, render_activity)


def render_activity(a: Activity) -> dict[str, Any]:
    """An item of ``activities.json`` / ``deletedleads.json``."""
    item: dict[str, Any] = {
        "id": a.id,
        "marketoGUID": str(a.id),
        "leadId": a.lead_id,
        "activityDate": a.activity_date,
        "activityTypeId": a.type_id,
    }
    if a.primary_id is not None:
        item["primaryAttributeValueId"] = a.primary_id
    if a.primary_value is not None:
        item["primaryAttributeValue"] = a.primary_value
    item["attributes"] = [{"name": n, "value": v} for n, v in a.attributes]
    return item


def render_change(a: Activity) -> dict[str, Any]:
    """An item of ``leadchanges.json``: New Lead as is, a change with its ``fields`` entry."""
    if a.change is None:
        return render_activity(a)
    fdef, old, new = a.change
    attributes = [{"name": n, "value": v} for n, v in a.attributes if n in ("Reason", "Source")]
    return {
        "id": a.id,
        "marketoGUID": str(a.id),
        "leadId": a.lead_id,
        "activityDate": a.activity_date,
        "activityTypeId": a.type_id,
        "fields": [
            {
                "id": fdef.id,
                "name": fdef.name,
                "newValue": schema.render_value(new),
                "oldValue": schema.render_value(old),
            }
        ],
        "attributes": [*attributes, {"name": "Lead ID", "value": a.lead_id}],
    }


def _missing_type_ids(call: Call) -> set[int]:
    """Custom activity types this instance is told not to have (``missing_activity_types``)."""
    return {t.id for t in schema.CUSTOM_ACTIVITY_TYPES if t.api_name in call.options.missing_activity_types}


def activity_types(call: Call) -> dict[str, Any]:
    missing = _missing_type_ids(call)
    return {"result": [item for item in schema.activity_types() if item["id"] not in missing]}


def custom_types(call: Call) -> dict[str, Any]:
    missing = _missing_type_ids(call)
    return {"result": [t.as_json() for t in schema.CUSTOM_ACTIVITY_TYPES if t.id not in missing]}


def describe_custom_type(call: Call) -> dict[str, Any]:
    ctype = schema.CUSTOM_BY_API_NAME.get(call.match["api_name"])
    if ctype is None or ctype.id in _missing_type_ids(call):
        raise MarketoError("1013", f"Activity type '{call.match['api_name']}' not found")
    return {"result": [ctype.as_json()]}


def add_custom(call: Call) -> dict[str, Any]:
    body = call.json_body()
    items = body.get("input") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise blank("input")
    if len(items) > MAX_BATCH:
        raise MarketoError("1003", f"Input array size exceeds the limit of {MAX_BATCH}")
    with call.db.lock:
        return {"result": [_add_one(call, item) for item in items]}


def _custom_skipped(code: str, message: str) -> dict[str, Any]:
    # Custom activities report problems under ``errors``, not ``reasons``.
    return {"status": "skipped", "errors": [{"code": code, "message": message}]}


def _add_one(call: Call, item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        return _custom_skipped("1003", "Invalid input")
    for name in ("leadId", "activityDate", "activityTypeId", "primaryAttributeValue"):
        if item.get(name) in (None, ""):
            return _custom_skipped("1003", f"{name} cannot be blank")
    ctype = schema.CUSTOM_BY_ID.get(item["activityTypeId"]) if isinstance(item["activityTypeId"], int) else None
    if ctype is None or ctype.status != "approved" or ctype.id in _missing_type_ids(call):
        return _custom_skipped("1003", f"Invalid activityTypeId '{item['activityTypeId']}'")
    lead_id = item["leadId"]
    if isinstance(lead_id, bool) or not isinstance(lead_id, int) or not call.db.exists(lead_id):
        return _custom_skipped("1004", "Lead not found")
    try:
        activity_date = schema.coerce(schema.FieldDef(0, "activityDate", "", "datetime", ""), item["activityDate"])
    except schema.InvalidValue:
        return _custom_skipped("1003", "Invalid value for activityDate")
    primary = item["primaryAttributeValue"]
    if not isinstance(primary, str | int | float) or len(str(primary)) > schema.STRING_MAX:
        return _custom_skipped("1003", "Invalid value for primaryAttributeValue")
    attributes: dict[str, Any] = {}
    raw_attributes = item.get("attributes") or []
    if not isinstance(raw_attributes, list):
        return _custom_skipped("1003", "Invalid attributes")
    for raw in raw_attributes:
        key = raw.get("apiName") or raw.get("name") if isinstance(raw, dict) else None
        attr = ctype.attribute(key) if isinstance(key, str) else None
        if attr is None:
            return _custom_skipped("1006", f"Attribute '{key}' not found")
        try:
            attributes[attr.api_name] = schema.coerce(
                schema.FieldDef(0, attr.api_name, attr.name, attr.data_type, ""), raw.get("value")
            )
        except schema.InvalidValue:
            return _custom_skipped("1003", f"Invalid value for attribute '{attr.api_name}'")
    new_id = call.db.add_custom(
        lead_id, ctype, activity_date=activity_date, primary_value=str(primary), attributes=attributes
    )
    return {"id": new_id, "marketoGUID": str(new_id), "status": "added"}


def _usage_day(call: Call, days_ago: int) -> dict[str, Any]:
    day = call.usage.today() - timedelta(days=days_ago)
    count = call.usage.count(day)
    users = [{"userId": call.options.scope, "count": count}] if count else []
    return {"date": f"{day.isoformat()}T00:00:00Z", "total": count, "users": users}


def usage_today(call: Call) -> dict[str, Any]:
    return {"result": [_usage_day(call, 0)]}


def usage_last7days(call: Call) -> dict[str, Any]:
    return {"result": [_usage_day(call, n) for n in range(7)]}
