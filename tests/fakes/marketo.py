"""A fake Marketo REST API: persons, the activity log that feeds Get Lead Changes, custom activities.

Answers what ``MarketoClient`` calls in a cycle: identity, ``activities/pagingtoken.json``,
``activities/leadchanges.json`` (New Lead, and one Change Data Value per field that really
changed, like the service), ``activities/deletedleads.json``, ``leads.json`` (Get Leads by
filter type, and Sync Leads with ``createOnly``/``updateOnly``/``createOrUpdate``),
``leads/describe2.json``, the custom activity types and Add Custom Activities. Paging tokens
are positions in the activity log; ``pagingtoken.json`` finds the first activity at or after
``sinceDatetime``. Errors come as HTTP 200 with ``success:false``, as Marketo sends them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx

from tests.fakes.clock import Clock

NEW_LEAD, CHANGE_DATA_VALUE, DELETE_LEAD = 12, 13, 37
SYNC_FAILED_TYPE_ID = 100001
TOKEN = "mkto-unit-token"

# REST name -> (dataType, length, updateable)
FIELDS: dict[str, tuple[str, int | None, bool]] = {
    "id": ("integer", None, False),
    "email": ("email", 255, True),
    "firstName": ("string", 255, True),
    "lastName": ("string", 255, True),
    "title": ("string", 255, True),
    "phone": ("phone", 255, True),
    "company": ("string", 255, True),
    "city": ("string", 255, True),
    "leadSource": ("string", 255, True),
    "syncToMicrosoft": ("boolean", None, True),  # a custom field for the sync filter's tests
    "microsoftType": ("string", 255, True),
    "microsoftId": ("string", 255, True),
    "microsoftIsDeleted": ("boolean", None, True),
    "microsoftCreatedDate": ("datetime", None, True),
    "microsoftOwnerId": ("string", 255, True),
    "microsoftOwnerName": ("string", 255, True),
    "microsoftOwnerEmail": ("email", 255, True),
    "website": ("url", 255, True),
    "industry": ("string", 255, True),
    "numberOfEmployees": ("integer", None, True),
    "annualRevenue": ("currency", None, True),
    "microsoftAccountNumber": ("string", 255, True),
}


@dataclass
class Activity:
    id: int
    type_id: int
    lead_id: int
    at: datetime
    field: str | None = None
    old: Any = None
    new: Any = None
    visible_at: datetime | None = None  # committed late: readers pass its place without seeing it until then


@dataclass
class FakeMarketo:
    clock: Clock
    leads: dict[int, dict[str, Any]] = field(default_factory=dict)
    log: list[Activity] = field(default_factory=list)
    custom: list[dict[str, Any]] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    _next_id: int = 1001
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- acting as a Marketo user -------------------------------------------------------------

    def create_person(self, **values: Any) -> int:
        lead_id = self._next_id
        self._next_id += 1
        self.leads[lead_id] = {name: value for name, value in values.items() if value is not None}
        self._append(NEW_LEAD, lead_id)
        return lead_id

    def edit(self, lead_id: int, **values: Any) -> None:
        lead = self.leads[lead_id]
        for name, new in values.items():
            old = lead.get(name)
            if old == new:
                continue
            if new is None:
                lead.pop(name, None)
            else:
                lead[name] = new
            self._append(CHANGE_DATA_VALUE, lead_id, name, old, new)

    def edit_late(self, lead_id: int, seconds: float, **values: Any) -> None:
        """An edit whose activities become visible ``seconds`` after their date (Marketo commits some
        activities late): a read in between passes their place in the log without returning them."""
        first = len(self.log)
        self.edit(lead_id, **values)
        for activity in self.log[first:]:
            activity.visible_at = activity.at + timedelta(seconds=seconds)

    def delete(self, lead_id: int) -> None:
        del self.leads[lead_id]
        self._append(DELETE_LEAD, lead_id)

    def person(self, lead_id: int) -> dict[str, Any]:
        return {"id": lead_id, **self.leads[lead_id]}

    def find(self, name: str, value: Any) -> list[dict[str, Any]]:
        return [self.person(i) for i, lead in self.leads.items() if lead.get(name) == value]

    def failure_activities(self, lead_id: int) -> list[dict[str, Any]]:
        return [a for a in self.custom if a["leadId"] == lead_id and a["activityTypeId"] == SYNC_FAILED_TYPE_ID]

    def calls(self, path: str, method: str | None = None) -> int:
        return sum(1 for r in self.requests if r.url.path.endswith(path) and method in (None, r.method))

    def _append(self, type_id: int, lead_id: int, name: str | None = None, old: Any = None, new: Any = None) -> None:
        self.log.append(Activity(len(self.log) + 1, type_id, lead_id, self.clock(), name, old, new))

    # -- the REST API -----------------------------------------------------------------------------

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:  # the client sends chunks of a large write in parallel
            return self._answer(request)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/identity/oauth/token":
            return httpx.Response(200, json={"access_token": TOKEN, "token_type": "bearer", "expires_in": 3600})
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _fail("601", "Access token invalid")
        params = {key: request.url.params[key] for key in request.url.params}
        if request.method == "POST" and params.get("_method") == "GET":
            params.update({k: v[0] for k, v in parse_qs(request.content.decode()).items()})
            return _ok(self._get_leads(params))
        body = json.loads(request.content) if request.method == "POST" and request.content else {}
        route = (request.method, path.removeprefix("/rest/v1/"))
        if route == ("GET", "activities/pagingtoken.json"):
            since = datetime.fromisoformat(params["sinceDatetime"])
            start = next((a.id - 1 for a in self.log if a.at >= since), len(self.log))
            return _ok(None, nextPageToken=f"p{start}")
        if route == ("GET", "activities/leadchanges.json"):
            wanted = set(params["fields"].split(","))
            unknown = sorted(wanted - FIELDS.keys())
            if unknown:
                return _fail("1006", f"Field '{unknown[0]}' not found")
            return self._page(params, lambda a: a.type_id == NEW_LEAD or a.field in wanted)
        if route == ("GET", "activities/deletedleads.json"):
            return self._page(params, lambda a: a.type_id == DELETE_LEAD)
        if route == ("GET", "leads.json"):
            return _ok(self._get_leads(params))
        if route == ("POST", "leads.json"):
            return _ok([self._sync_one(body["action"], body["lookupField"], item) for item in body["input"]])
        if route == ("GET", "leads/describe2.json"):
            described = [
                {"name": name, "dataType": kind, "length": length, "updateable": updateable}
                for name, (kind, length, updateable) in FIELDS.items()
            ]
            return _ok([{"name": "API Lead", "searchableFields": [["email"], ["id"]], "fields": described}])
        if route == ("GET", "activities/external/types.json"):
            return _ok([{"id": SYNC_FAILED_TYPE_ID, "apiName": "microsoftSyncFailed", "status": "approved"}])
        if route == ("POST", "activities/external.json"):
            return _ok([self._add_activity(item) for item in body["input"]])
        return httpx.Response(404)

    def _page(self, params: Mapping[str, str], accept: Any) -> httpx.Response:
        position = int(params["nextPageToken"].removeprefix("p"))
        size = int(params.get("batchSize", 300))
        found: list[Activity] = []
        now = self.clock()
        while position < len(self.log) and len(found) < size:
            activity = self.log[position]
            visible = activity.visible_at is None or activity.visible_at <= now
            if visible and accept(activity):
                found.append(activity)
            position += 1
        more = position < len(self.log)
        return _ok([_render(a) for a in found] or None, nextPageToken=f"p{position}", moreResult=more)

    def _get_leads(self, params: Mapping[str, str]) -> list[dict[str, Any]]:
        kind, values = params["filterType"], params["filterValues"].split(",")
        fields = params["fields"].split(",")
        if kind == "id":
            ids = [int(v) for v in values if int(v) in self.leads]
        else:
            wanted = {v.casefold() for v in values}
            ids = [i for i, lead in self.leads.items() if str(lead.get(kind, "")).casefold() in wanted]
        return [{n: v for n, v in self.person(i).items() if n in fields or n == "id"} for i in ids]

    def _sync_one(self, action: str, lookup: str, record: Mapping[str, Any]) -> dict[str, Any]:
        unknown = [name for name in record if name not in FIELDS]
        if unknown:
            return _skipped("1006", f"Field '{unknown[0]}' not found")
        key = record[lookup]
        if lookup == "id":
            matches = [key] if key in self.leads else []
        else:
            matches = [
                i for i, lead in self.leads.items() if str(lead.get(lookup, "")).casefold() == str(key).casefold()
            ]
        values = {name: value for name, value in record.items() if name != "id"}
        if len(matches) > 1:
            return _skipped("1007", "Multiple lead match lookup criteria")
        if matches:
            if action == "createOnly":
                return _skipped("1005", "Lead already exists")
            self.edit(matches[0], **values)
            return {"id": matches[0], "status": "updated"}
        if action == "updateOnly":
            return _skipped("1004", "Lead not found")
        return {"id": self.create_person(**values), "status": "created"}

    def _add_activity(self, item: Mapping[str, Any]) -> dict[str, Any]:
        if item["leadId"] not in self.leads:
            return {"status": "skipped", "errors": [{"code": "1004", "message": "Lead not found"}]}
        activity = {**item, "attributes": {a["apiName"]: a["value"] for a in item["attributes"]}}
        self.custom.append(activity)
        return {"id": len(self.custom), "marketoGUID": str(len(self.custom)), "status": "added"}


def _render(a: Activity) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": a.id,
        "marketoGUID": str(a.id),
        "leadId": a.lead_id,
        "activityDate": a.at.isoformat().replace("+00:00", "Z"),
        "activityTypeId": a.type_id,
        "attributes": [],
    }
    if a.type_id == CHANGE_DATA_VALUE:
        item["fields"] = [{"id": 1, "name": a.field, "newValue": a.new, "oldValue": a.old}]
    return item


def _ok(result: list[dict[str, Any]] | None, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"requestId": "unit#1", "success": True, **extra}
    if result is not None:
        body["result"] = result
    return httpx.Response(200, json=body)


def _fail(code: str, message: str) -> httpx.Response:
    return httpx.Response(
        200, json={"requestId": "unit#1", "success": False, "errors": [{"code": code, "message": message}]}
    )


def _skipped(code: str, message: str) -> dict[str, Any]:
    return {"status": "skipped", "reasons": [{"code": code, "message": message}]}
