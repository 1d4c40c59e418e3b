"""Lead-database endpoints: get by id, query by filter type, sync, delete, merge, describe.

Each handler takes a ``Call`` and returns the envelope's payload (``result``, ``moreResult``,
``nextPageToken``...) or raises ``MarketoError`` for a response-level error; record-level
problems go into each result item (``status`` + ``reasons``) in input order, like the real
service. Writes through the API are logged with Source/Reason "Web service API".
"""

from __future__ import annotations

from typing import Any

from sandbox.marketo import _schema as schema
from sandbox.marketo._call import MAX_BATCH, Call
from sandbox.marketo._envelope import MarketoError, blank
from sandbox.marketo._schema import SOURCE_API, FieldProblem
from sandbox.marketo._tokens import decode_lead_offset, encode_lead_offset

MAX_FILTER_VALUES = 300
MAX_QUERY_MATCHES = 1000
MAX_MERGE = 25
ACTIONS = ("createOrUpdate", "createOnly", "updateOnly", "createDuplicate")


def _fields(call: Call) -> list[str]:
    names = call.params.items("fields") or list(schema.DEFAULT_QUERY_FIELDS)
    for name in names:
        if name not in schema.BY_NAME:
            raise MarketoError("1006", f"Field '{name}' not found")
    return names


def _render(record: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    # ``id`` always comes back; a requested field with no value comes back as null.
    out: dict[str, Any] = {"id": record["id"]}
    out.update((name, record.get(name)) for name in fields if name != "id")
    return out


def get_lead(call: Call) -> dict[str, Any]:
    fields = _fields(call)
    record = call.db.get(int(call.match["id"]))
    return {"result": [] if record is None else [_render(record, fields)]}


def query_leads(call: Call) -> dict[str, Any]:
    params = call.params
    filter_type = params.first("filterType")
    if not filter_type:
        raise blank("filterType")
    values = params.items("filterValues")
    if not values:
        raise blank("filterValues")
    if filter_type not in schema.BY_NAME:
        raise MarketoError("1006", f"Field '{filter_type}' not found")
    if filter_type not in schema.SEARCHABLE:
        raise MarketoError("1011", f"Field '{filter_type}' not supported for filterType")
    if len(values) > MAX_FILTER_VALUES:
        raise MarketoError("1003", f"Number of filterValues exceeds the limit of {MAX_FILTER_VALUES}")
    fields = _fields(call)
    batch = call.batch_size()
    after = 0
    token = params.first("nextPageToken")
    if token:
        try:
            after = decode_lead_offset(token)
        except ValueError as err:
            raise MarketoError("1003", "Invalid nextPageToken") from err
    with call.db.lock:
        ids = call.db.lookup_many(filter_type, values)
        if len(ids) > MAX_QUERY_MATCHES:
            raise MarketoError("1003", "Too many results match the filter")
        remaining = [i for i in ids if i > after]
        page = [call.db.get(i) for i in remaining[:batch]]
    payload: dict[str, Any] = {"result": [_render(r, fields) for r in page if r is not None]}
    if len(remaining) > batch:
        payload["moreResult"] = True
        payload["nextPageToken"] = encode_lead_offset(remaining[batch - 1])
    return payload


def sync_leads(call: Call) -> dict[str, Any]:
    body = call.json_body()
    if not isinstance(body, dict):
        raise blank("input")
    records = body.get("input")
    if not isinstance(records, list) or not records:
        raise blank("input")
    if len(records) > MAX_BATCH:
        raise MarketoError("1003", f"Input array size exceeds the limit of {MAX_BATCH}")
    action = body.get("action") or "createOrUpdate"
    if action not in ACTIONS:
        raise MarketoError("1003", f"Invalid action '{action}'")
    lookup = body.get("lookupField") or "email"
    if lookup not in schema.BY_NAME:
        raise MarketoError("1006", f"Field '{lookup}' not found")
    if lookup not in schema.SEARCHABLE:
        raise MarketoError("1011", f"Field '{lookup}' not supported for lookupField")
    with call.db.lock:  # a batch is applied as one unit, in input order
        return {"result": [_sync_one(call, record, action, lookup) for record in records]}


def _skipped(code: str, message: str) -> dict[str, Any]:
    return {"status": "skipped", "reasons": [{"code": code, "message": message}]}


def _sync_one(call: Call, record: Any, action: str, lookup: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        return _skipped("1003", "Invalid input")
    values = dict(record)
    lead_id = values.pop("id", None)
    if lead_id is not None and action != "updateOnly":
        return _skipped("1003", f"Field 'id' not allowed for action '{action}'")
    try:
        clean = schema.clean_values(values)
    except FieldProblem as problem:
        return _skipped(problem.code, problem.message)
    key = "id" if lead_id is not None else lookup
    key_value = lead_id if lead_id is not None else clean.get(lookup)
    db = call.db
    if action == "createDuplicate":
        return {"id": db.create(clean, source=SOURCE_API), "status": "created"}
    if key_value is None or key_value == "":
        return _skipped("1003", f"Value for required field '{key}' not specified")
    matches = db.lookup(key, key_value)
    if len(matches) > 1 and action != "createOnly":
        return _skipped("1007", "Multiple lead match lookup criteria")
    if matches and action == "createOnly":
        return _skipped("1005", "Lead already exists")
    if not matches:
        if action == "updateOnly":
            return _skipped("1004", "Lead not found")
        return {"id": db.create(clean, source=SOURCE_API), "status": "created"}
    db.update(matches[0], clean, source=SOURCE_API)
    return {"id": matches[0], "status": "updated"}


def delete_leads(call: Call) -> dict[str, Any]:
    body = call.json_body()
    if body is not None:
        items = body.get("input") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise blank("input")
    else:
        items = [{"id": i} for i in call.params.items("id")]
    if not items:
        raise blank("input")
    if len(items) > MAX_BATCH:
        raise MarketoError("1003", f"Input array size exceeds the limit of {MAX_BATCH}")
    results: list[dict[str, Any]] = []
    with call.db.lock:
        for item in items:
            raw = item.get("id") if isinstance(item, dict) else None
            try:
                lead_id = int(raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                results.append(_skipped("1003", "Invalid lead id"))
                continue
            if call.db.delete(lead_id):
                results.append({"id": lead_id, "status": "deleted"})
            else:
                results.append({"id": lead_id, **_skipped("1004", "Lead not found")})
    return {"result": results}


def merge_leads(call: Call) -> dict[str, Any]:
    winner = int(call.match["id"])
    losers = call.params.integers("leadIds") or call.params.integers("leadId")
    if not losers:
        raise blank("leadId")
    if len(losers) > MAX_MERGE:
        raise MarketoError("1080", f"Merge is not allowed for more than {MAX_MERGE} leads")
    if winner in losers:
        raise MarketoError("1003", "Winning lead cannot be in the list of losing leads")
    with call.db.lock:
        for lead_id in (winner, *losers):
            if not call.db.exists(lead_id):
                raise MarketoError("1004", f"Lead '{lead_id}' not found")
        call.db.merge(winner, sorted(set(losers)), source=SOURCE_API)
    return {}  # the real answer has no result: just requestId and success


def describe(call: Call) -> dict[str, Any]:
    missing = set(call.options.missing_fields)
    return {"result": [item for item in schema.describe() if item["rest"]["name"] not in missing]}


def describe2(call: Call) -> dict[str, Any]:
    missing = set(call.options.missing_fields)
    return {
        "result": [
            {**group, "fields": [item for item in group["fields"] if item["name"] not in missing]}
            for group in schema.describe2()
        ]
    }


def schema_fields(call: Call) -> dict[str, Any]:
    return {"result": schema.schema_fields()}
