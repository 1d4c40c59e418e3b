"""The files bulk extract jobs write: CSV, TSV or SSV, and the rows of leads and activities.

Owns the file format the docs show: a header row (REST field names, or the job's
``columnHeaderNames``), one row per record, an empty value written as the literal ``null``, a
value holding the separator, a double quote or a line break enclosed in double quotes with
inner quotes doubled, UTF-8, ``\\n`` line ends. Values are written as the REST API shows the
same field (booleans ``true``/``false``, numbers as JSON numbers, datetimes
``2024-01-01T00:00:00Z``); an activity's ``attributes`` cell is one compact JSON object of
name → value, as in the docs' example. Reads the database under its lock; no HTTP here.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sandbox.marketo._db import Activity, LeadDatabase

SEPARATORS = {"CSV": ",", "TSV": "\t", "SSV": " "}
ACTIVITY_FIELDS = (
    "marketoGUID",
    "leadId",
    "activityDate",
    "activityTypeId",
    "campaignId",
    "primaryAttributeValueId",
    "primaryAttributeValue",
    "attributes",
)
ACTIVITY_EXTRA_FIELDS = ("actionResult",)  # only when asked for
NULL = "null"


def cell(value: Any) -> str:
    """One value as the file shows it."""
    if value is None or value == "":
        return NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False) if value else NULL
    return str(value)


def render(headers: Sequence[str], rows: Iterable[Sequence[Any]], fmt: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=SEPARATORS[fmt], quotechar='"', lineterminator="\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow([cell(v) for v in row])
    return out.getvalue().encode("utf-8")


def headers_for(fields: Sequence[str], names: Mapping[str, str]) -> list[str]:
    return [names.get(f, f) for f in fields]


def lead_rows(db: LeadDatabase, fields: Sequence[str], accept: Any) -> list[list[Any]]:
    """``fields`` of every lead ``accept(record)`` keeps, in id order, read in one step."""
    with db.lock:
        rows = []
        for lead_id in db.lead_ids():
            record = db.get(lead_id)
            if record is not None and accept(record):
                rows.append([record.get(f) for f in fields])
        return rows


def activity_value(a: Activity, name: str) -> Any:
    if name == "marketoGUID":
        return str(a.id)
    if name == "leadId":
        return a.lead_id
    if name == "activityDate":
        return a.activity_date
    if name == "activityTypeId":
        return a.type_id
    if name == "campaignId":
        return None  # API writes run in no smart campaign
    if name == "primaryAttributeValueId":
        return a.primary_id
    if name == "primaryAttributeValue":
        return a.primary_value
    if name == "attributes":
        return dict(a.attributes)
    if name == "actionResult":
        return "succeeded"
    raise KeyError(name)  # pragma: no cover - fields are checked when the job is created


def activity_rows(activities: Iterable[Activity], fields: Sequence[str]) -> list[list[Any]]:
    return [[activity_value(a, f) for f in fields] for a in activities]
