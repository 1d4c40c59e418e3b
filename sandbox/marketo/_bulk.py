"""Bulk Extract endpoints (``/bulk/v1/{leads|activities}/export/…``): requests in, jobs out.

Owns what ``create.json`` accepts (fields, ``format``, ``columnHeaderNames``, the filters and
their date-range rules, with the errors the service answers), the status object every job
endpoint returns, the job lists with their ``status`` filter and paging, and ``file.json``:
the file with ``Range`` support (206 + ``Content-Range``), or 404 with a plain-text body for a
job that is unknown, another user's, not Completed or past retention. The queue itself lives
in ``_bulk_jobs``; the file format in ``_bulk_csv``.

Where the docs give no error text, the texts here are the simulator's own (code 1003, "Invalid
data", for a malformed request; 701 for a missing required member; 1006 for an unknown field).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sandbox._http import Response
from sandbox.marketo import _bulk_csv as files
from sandbox.marketo import _schema as schema
from sandbox.marketo._bulk_jobs import STATUSES, Build, ExportJob
from sandbox.marketo._call import Call
from sandbox.marketo._db import Activity
from sandbox.marketo._envelope import MarketoError, blank

MAX_RANGE = timedelta(days=31)
LEAD_FILTERS = ("createdAt", "updatedAt", "staticListId", "staticListName", "smartListId", "smartListName")
MAX_PRIMARY_VALUES = 50
# Activity types whose primary attribute can be filtered on, by asset group (docs table).
PRIMARY_GROUPS = (frozenset({13, 22}), frozenset({24, 25}), frozenset({2}), frozenset({104}))
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}:\d{2}(?:Z|[+-]\d{2}:?\d{2})?)?$")


# ---- create ----------------------------------------------------------------------------


def create_leads(call: Call) -> dict[str, Any]:
    body = _body(call)
    fields = body.get("fields")
    if not fields:
        raise blank("fields")
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise MarketoError("1003", "Invalid value for 'fields'")
    for name in fields:
        if name not in schema.BY_NAME:
            raise MarketoError("1006", f"Field '{name}' not found")
    fmt, headers = _format(body, fields)
    accept = _lead_filter(call, body.get("filter"))
    db = call.db

    def build() -> tuple[bytes, int]:
        rows = files.lead_rows(db, fields, accept)
        return files.render(headers, rows, fmt), len(rows)

    return _created(call, "leads", fmt, build)


def create_activities(call: Call) -> dict[str, Any]:
    body = _body(call)
    fields = body.get("fields") or list(files.ACTIVITY_FIELDS)
    allowed = files.ACTIVITY_FIELDS + files.ACTIVITY_EXTRA_FIELDS
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise MarketoError("1003", "Invalid value for 'fields'")
    for name in fields:
        if name not in allowed:
            raise MarketoError("1006", f"Field '{name}' not found")
    fmt, headers = _format(body, fields)
    accept = _activity_filter(body.get("filter"))
    db = call.db

    def build() -> tuple[bytes, int]:
        rows = files.activity_rows(db.activities(accept), fields)
        return files.render(headers, rows, fmt), len(rows)

    return _created(call, "activities", fmt, build)


def _body(call: Call) -> dict[str, Any]:
    body = call.json_body()
    if body is None:
        raise blank("filter")
    if not isinstance(body, dict):
        raise MarketoError("1003", "Invalid request body")
    return body


def _format(body: dict[str, Any], fields: list[str]) -> tuple[str, list[str]]:
    fmt = body.get("format") or "CSV"
    if not isinstance(fmt, str) or fmt.upper() not in files.SEPARATORS:
        raise MarketoError("1003", f"Invalid format '{fmt}': accepts one of CSV, TSV, SSV")
    names = body.get("columnHeaderNames") or {}
    if not isinstance(names, dict) or not all(isinstance(v, str) and v for v in names.values()):
        raise MarketoError("1003", "Invalid value for 'columnHeaderNames'")
    for key in names:
        if key not in fields:
            raise MarketoError("1003", f"Column header '{key}' is not a field of the export")
    return fmt.upper(), files.headers_for(fields, names)


def _created(call: Call, kind: str, fmt: str, build: Build) -> dict[str, Any]:
    job = call.bulk.create(kind, call.user, fmt, build)
    return {"result": [job.as_json()]}


def _date_range(name: str, value: Any) -> tuple[datetime, datetime]:
    if not isinstance(value, dict) or "startAt" not in value or "endAt" not in value:
        raise MarketoError("1003", f"Invalid value for filter '{name}': startAt and endAt are required")
    moments = []
    for member in ("startAt", "endAt"):
        text = value[member]
        if not isinstance(text, str) or not _ISO.match(text.strip()):
            raise MarketoError("1003", f"Invalid date format for '{name}.{member}': ISO-8601 without milliseconds")
        try:
            moments.append(schema.parse_datetime(text))
        except ValueError as err:
            raise MarketoError("1003", f"Invalid date for '{name}.{member}'") from err
    start, end = moments
    if end < start:
        raise MarketoError("1003", f"Invalid date range for '{name}': endAt is before startAt")
    if end - start > MAX_RANGE:
        raise MarketoError("1003", f"Date range for '{name}' exceeds 31 days")
    return start, end


def _lead_filter(call: Call, raw: Any) -> Callable[[dict[str, Any]], bool]:
    if not raw:
        raise blank("filter")
    if not isinstance(raw, dict):
        raise MarketoError("1003", "Invalid value specified for attribute 'filter'")
    for name in raw:
        if name not in LEAD_FILTERS:
            raise MarketoError("1003", f"Invalid filter type '{name}'")
    if len(raw) != 1:
        raise MarketoError("1003", "Only one filter type may be specified per export job")
    ((name, value),) = raw.items()
    if name in call.options.bulk_unsupported_filters:
        raise MarketoError("1035", f"Unsupported filter type for target subscription: {name}")
    if name in ("createdAt", "updatedAt"):
        start, end = (schema.format_datetime(m) for m in _date_range(name, value))
        return lambda record: start <= record[name] <= end  # both "YYYY-MM-DDTHH:MM:SSZ" UTC
    wanted = int if name.endswith("Id") else str
    if isinstance(value, bool) or not isinstance(value, wanted) or value == "":
        raise MarketoError("1003", f"Invalid value for filter '{name}'")
    kind = "Smart list" if name.startswith("smart") else "Static list"
    raise MarketoError("1013", f"{kind} not found")  # the sandbox has no lists


def _activity_filter(raw: Any) -> Callable[[Activity], bool]:
    if not raw:
        raise blank("filter")
    if not isinstance(raw, dict):
        raise MarketoError("1003", "Invalid value specified for attribute 'filter'")
    known = ("createdAt", "activityTypeIds", "primaryAttributeValueIds", "primaryAttributeValues")
    for name in raw:
        if name not in known:
            raise MarketoError("1003", f"Invalid filter type '{name}'")
    if "createdAt" not in raw:
        raise blank("createdAt")
    start, end = (m.timestamp() for m in _date_range("createdAt", raw["createdAt"]))
    types = _activity_types(raw.get("activityTypeIds"))
    primary = _primary_filter(raw, types)

    def accept(a: Activity) -> bool:
        return (
            start <= a.logged_at <= end
            and a.type_id != schema.DELETE_LEAD
            and (types is None or a.type_id in types)
            and (primary is None or primary(a))
        )

    return accept


def _activity_types(raw: Any) -> frozenset[int] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
        raise MarketoError("1003", "Invalid value for filter 'activityTypeIds'")
    if schema.DELETE_LEAD in raw:
        raise MarketoError("1003", "Activity type 37 (Delete Lead) is not supported; use Get Deleted Leads")
    unknown = sorted(set(raw) - schema.ALL_ACTIVITY_TYPE_IDS)
    if unknown:
        raise MarketoError("1003", f"Invalid activityTypeIds {unknown}")
    return frozenset(raw)


def _primary_filter(raw: dict[str, Any], types: frozenset[int] | None) -> Callable[[Activity], bool] | None:
    by_id, by_name = raw.get("primaryAttributeValueIds"), raw.get("primaryAttributeValues")
    if by_id is None and by_name is None:
        return None
    if by_id is not None and by_name is not None:
        raise MarketoError("1003", "primaryAttributeValueIds and primaryAttributeValues cannot be used together")
    name = "primaryAttributeValueIds" if by_id is not None else "primaryAttributeValues"
    values = by_id if by_id is not None else by_name
    item_type = int if by_id is not None else str
    if not isinstance(values, list) or not values or not all(isinstance(v, item_type) for v in values):
        raise MarketoError("1003", f"Invalid value for filter '{name}'")
    if len(values) > MAX_PRIMARY_VALUES:
        raise MarketoError("1003", f"Number of {name} exceeds the limit of {MAX_PRIMARY_VALUES}")
    if types is None or not any(types <= group for group in PRIMARY_GROUPS):
        raise MarketoError("1003", f"{name} needs activityTypeIds of one asset group")
    wanted = frozenset(values)
    if by_id is not None:
        return lambda a: a.primary_id in wanted
    return lambda a: a.primary_value in wanted


# ---- the job endpoints ------------------------------------------------------------------


def _kind(call: Call) -> str:
    return call.request.path.split("/")[3]  # /bulk/v1/<kind>/export/...


def enqueue(call: Call) -> dict[str, Any]:
    return _one(call.bulk.enqueue(_kind(call), call.user, call.match["export_id"]))


def status(call: Call) -> dict[str, Any]:
    return _one(call.bulk.get(_kind(call), call.user, call.match["export_id"]))


def cancel(call: Call) -> dict[str, Any]:
    return _one(call.bulk.cancel(_kind(call), call.user, call.match["export_id"]))


def _one(job: ExportJob) -> dict[str, Any]:
    return {"result": [job.as_json()]}


def jobs(call: Call) -> dict[str, Any]:
    wanted = call.params.items("status")
    for name in wanted:
        if name not in STATUSES:
            raise MarketoError("1003", f"Invalid status '{name}'")
    size = call.batch_size()
    offset = _offset(call.params.first("nextPageToken"))
    found = call.bulk.listed(_kind(call), call.user, set(wanted) or None)
    page = found[offset : offset + size]
    payload: dict[str, Any] = {"result": [j.as_json() for j in page]}
    if offset + size < len(found):
        payload["nextPageToken"] = base64.b32encode(f"J,{offset + size}".encode("ascii")).decode("ascii")
    return payload


def _offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        kind, _, offset = base64.b32decode(token + "=" * (-len(token) % 8)).decode("ascii").partition(",")
        if kind != "J":
            raise ValueError(token)
        return int(offset)
    except ValueError as err:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise MarketoError("1003", "Invalid nextPageToken") from err


# ---- file.json ---------------------------------------------------------------------------


def file(call: Call) -> Response:
    data = call.bulk.file(_kind(call), call.user, call.match["export_id"])
    if data is None:
        return Response(status=404, body=b"Not Found", content_type="text/plain;charset=UTF-8", compress=False)
    headers = [("Accept-Ranges", "bytes")]
    requested = _range(call.request.header("Range"), len(data))
    if requested is None:
        return Response(body=data, headers=headers, content_type=_CSV, compress=False)
    if requested == _UNSATISFIABLE:
        headers.append(("Content-Range", f"bytes */{len(data)}"))
        return Response(status=416, body=b"Requested Range Not Satisfiable", headers=headers, compress=False)
    first, last = requested
    headers.append(("Content-Range", f"bytes {first}-{last}/{len(data)}"))
    return Response(status=206, body=data[first : last + 1], headers=headers, content_type=_CSV, compress=False)


_CSV = "text/csv;charset=UTF-8"
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


_UNSATISFIABLE = (-1, -1)


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """One byte range (RFC 7233): None for the whole file (no, several or malformed ranges)."""
    match = _RANGE.match(header or "")
    if match is None or match[1] == match[2] == "":
        return None
    if match[1] == "":  # the last N bytes
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            return _UNSATISFIABLE
        return max(0, size - suffix), size - 1
    first = int(match[1])
    last = int(match[2]) if match[2] else size - 1
    if match[2] and last < first:
        return None  # syntactically invalid: ignored
    if first >= size:
        return _UNSATISFIABLE
    return first, min(last, size - 1)
