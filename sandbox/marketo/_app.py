"""``MarketoSandbox``: the request pipeline of the simulated instance, and its in-process API.

A call goes through, in order: the admin endpoints (``/_sandbox/…``, no auth, never counted);
the size limits (413/414); the in-flight gate (615); scripted faults; identity (never counted);
routing (610/605); the bearer check (601/602); the rate window (606) and daily quota (607);
then its handler. Calls refused with a 6xx/7xx code give back their rate and quota slot, since
the real service does not charge them. Tests and demos act as a Marketo user through the Python
methods (``create_lead``, ``update_lead`` …) or the admin endpoints; both log activities with
the given source instead of "Web service API". Bulk extract jobs (``_bulk``) advance in
simulated time before each request and each in-process write.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import IO, Any

from sandbox._faults import FaultAction, FaultBook, FaultControls, admin_faults, status_response
from sandbox._http import DropConnection, HttpServer, Request, Response
from sandbox.marketo import _activities, _bulk, _leads
from sandbox.marketo import _schema as schema
from sandbox.marketo._bulk_jobs import ExportJob, ExportQueue
from sandbox.marketo._call import Call, Params
from sandbox.marketo._db import LeadDatabase
from sandbox.marketo._envelope import MarketoError, RequestIds, failure, message_for, success
from sandbox.marketo._limits import ConcurrencyGate, DailyUsage, RateLimiter
from sandbox.marketo._options import FAULT_ACTIONS, MarketoOptions
from sandbox.marketo._stats import Stats
from sandbox.marketo._tokens import AccessTokens

IDENTITY_PATH = "/identity/oauth/token"
LEADS_PATH = "/rest/v1/leads.json"  # query, sync or delete, by the (effective) method
PROGRAMS_PATH = "/rest/asset/v1/programs.json"  # the Asset API probe clients make first
GZIP_MIN = 1024  # the real service compresses bodies of 1 KiB and more when the client accepts gzip
MAX_BODY = 1024 * 1024
MAX_URI = 8 * 1024
UI_SOURCE = "Marketo UI"
SEED_SOURCE = "List import"

Handler = Callable[[Call], dict[str, Any] | Response]  # a Response is sent as is (file.json)


@dataclass(frozen=True)
class Route:
    methods: tuple[str, ...]
    pattern: re.Pattern[str]
    template: str  # the stats key, e.g. /rest/v1/lead/{id}.json
    handler: Handler | None  # None: answered in the pipeline (leads.json by method, programs.json)


def _route(methods: str, template: str, handler: Handler | None) -> Route:
    regex = re.escape(template).replace(r"\{id\}", r"(?P<id>\d+)").replace(r"\{apiName\}", r"(?P<api_name>[^/]+)")
    regex = regex.replace(r"\{exportId\}", r"(?P<export_id>[^/]+)")
    return Route(tuple(methods.split()), re.compile(regex), template, handler)


ROUTES: tuple[Route, ...] = (
    _route("GET", "/rest/v1/lead/{id}.json", _leads.get_lead),
    _route("GET POST DELETE", LEADS_PATH, None),
    _route("POST", "/rest/v1/leads/delete.json", _leads.delete_leads),
    _route("POST", "/rest/v1/leads/{id}/merge.json", _leads.merge_leads),
    _route("GET", "/rest/v1/leads/describe.json", _leads.describe),
    _route("GET", "/rest/v1/leads/describe2.json", _leads.describe2),
    _route("GET", "/rest/v1/leads/schema/fields.json", _leads.schema_fields),
    _route("GET", "/rest/v1/activities/types.json", _activities.activity_types),
    _route("GET", "/rest/v1/activities/pagingtoken.json", _activities.paging_token),
    _route("GET", "/rest/v1/activities/leadchanges.json", _activities.lead_changes),
    _route("GET", "/rest/v1/activities.json", _activities.activities),
    _route("GET", "/rest/v1/activities/deletedleads.json", _activities.deleted_leads),
    _route("GET", "/rest/v1/activities/external/types.json", _activities.custom_types),
    _route("GET", "/rest/v1/activities/external/type/{apiName}/describe.json", _activities.describe_custom_type),
    _route("POST", "/rest/v1/activities/external.json", _activities.add_custom),
    _route("GET", "/rest/v1/stats/usage.json", _activities.usage_today),
    _route("GET", "/rest/v1/stats/usage/last7days.json", _activities.usage_last7days),
    _route("GET", PROGRAMS_PATH, None),
    _route("POST", "/bulk/v1/leads/export/create.json", _bulk.create_leads),
    _route("POST", "/bulk/v1/activities/export/create.json", _bulk.create_activities),
    *(
        route
        for kind in ("leads", "activities")
        for route in (
            _route("GET", f"/bulk/v1/{kind}/export.json", _bulk.jobs),
            _route("POST", f"/bulk/v1/{kind}/export/{{exportId}}/enqueue.json", _bulk.enqueue),
            _route("GET", f"/bulk/v1/{kind}/export/{{exportId}}/status.json", _bulk.status),
            _route("POST", f"/bulk/v1/{kind}/export/{{exportId}}/cancel.json", _bulk.cancel),
            _route("GET", f"/bulk/v1/{kind}/export/{{exportId}}/file.json", _bulk.file),
        )
    ),
)
_LEADS_BY_METHOD: dict[str, Handler] = {
    "GET": _leads.query_leads,
    "POST": _leads.sync_leads,
    "DELETE": _leads.delete_leads,
}


class MarketoSandbox(FaultControls):
    """One simulated Marketo instance. ``handle`` serves HTTP; the other methods act in-process."""

    def __init__(
        self,
        options: MarketoOptions | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.options = options or MarketoOptions()
        self.clock = clock
        self._sleep = sleep
        self.db = LeadDatabase(clock)
        self._ids = RequestIds(clock)
        users = {self.options.client_id: self.options.client_secret, **self.options.extra_api_users}
        self._secrets = users
        self._tokens = {client: AccessTokens(self.options.token_ttl, clock) for client in users}
        self.bulk = ExportQueue(self.options, clock)
        self._rate = RateLimiter(self.options.rate_limit_calls, self.options.rate_limit_window, clock)
        self._gate = ConcurrencyGate(self.options.max_concurrent)
        self._usage = DailyUsage(self.options.daily_quota, clock)
        self._faults = FaultBook(self.options.faults, extra_actions=FAULT_ACTIONS)
        self._stats = Stats()
        self.seed(self.options.seed_leads)

    # ---- HTTP ----------------------------------------------------------------------------

    def serve(
        self, *, port: int = 0, request_log: IO[str] | None = None, tls: ssl.SSLContext | None = None
    ) -> HttpServer:
        """An (unstarted) loopback server for this instance; use as a context manager."""
        return HttpServer(
            self.handle, service="marketo", port=port, request_log=request_log, gzip_min=GZIP_MIN, tls=tls
        )

    def handle(self, request: Request) -> Response:
        if request.path.startswith("/_sandbox/"):
            return self._admin(request)
        if len(request.raw_target) > MAX_URI:
            return _nginx(414)
        if len(request.body) > MAX_BODY:
            return _nginx(413)
        gated = self.options.limits and request.path != IDENTITY_PATH
        if gated and not self._gate.enter():
            self._stats.rejected("615")
            return failure(self._ids.next(), "615", self._message("615"))
        try:
            return self._serve(request)
        finally:
            if gated:
                self._gate.leave()

    def _serve(self, request: Request) -> Response:
        self.bulk.advance()
        action = self._faults.take(request.method, request.path)
        if action is not None:
            self._stats.fault()
            faulted = self._apply_fault(action)
            if faulted is not None:
                return faulted
        if request.path == IDENTITY_PATH:
            if request.method not in ("GET", "POST"):
                return failure(self._ids.next(), "605", message_for("605", method=request.method))
            self._stats.served(f"{request.method} {IDENTITY_PATH}")
            self._pause(f"{request.method} {IDENTITY_PATH}")
            return self._identity(request)
        request_id = self._ids.next()
        route, match = self._find_route(request.path)
        if route is None or match is None:
            return failure(request_id, "610", message_for("610"))
        method = request.method
        try:
            form = request.form() if request.content_type == "application/x-www-form-urlencoded" else {}
        except UnicodeDecodeError:
            return failure(request_id, "609", "Invalid form body")
        params = Params(request.query, form)
        override = (params.first("_method") or "").upper()
        if method == "POST" and route.template == LEADS_PATH and override in ("GET", "DELETE"):
            method = override  # the 414 work-around: POST ...?_method=GET with the query as a form body
        if method not in route.methods:
            return failure(request_id, "605", message_for("605", method=request.method))
        try:
            user = self._authenticate(request)
        except MarketoError as err:
            self._stats.rejected(err.code)
            return failure(request_id, err.code, err.message)
        call = Call(request, params, match, self.db, self._usage, self.options, self.clock, self.bulk, user)
        return self._charged(request_id, route, method, call)

    def _charged(self, request_id: str, route: Route, method: str, call: Call) -> Response:
        receipt = None
        if self.options.limits:
            receipt = self._rate.admit()
            if receipt is None:
                self._stats.rejected("606")
                return failure(request_id, "606", self._message("606"))
        day = self._usage.admit(enforce=self.options.limits)
        if day is None:
            if receipt is not None:
                self._rate.refund(receipt)
            self._stats.rejected("607")
            return failure(request_id, "607", self._message("607"))
        endpoint = f"{method} {route.template}"
        self._stats.served(endpoint)
        if route.template == PROGRAMS_PATH:
            # The Asset API keeps empty lists and uses plain-string warnings.
            body = {"success": True, "errors": [], "requestId": request_id, "warnings": [_NO_ASSETS]}
            self._pause(endpoint)
            return Response.json(body)
        handler = route.handler or _LEADS_BY_METHOD[method]
        try:
            payload = handler(call)
        except MarketoError as err:
            if not err.counted:
                if receipt is not None:
                    self._rate.refund(receipt)
                self._usage.refund(day)
            return failure(request_id, err.code, err.message)
        if isinstance(payload, Response):
            self._pause(endpoint)
            return payload
        self._pause(endpoint, len(payload.get("result") or ()))
        return success(request_id, payload)

    def _pause(self, endpoint: str, records: int = 0) -> None:
        """The profile's service time for a served call, slept on this thread: the call stays in
        flight (the 615 gate is held by ``handle``) and holds no lock meanwhile."""
        seconds = self.options.profile.call_seconds(endpoint, records)
        if seconds > 0:
            self._sleep(seconds)

    @staticmethod
    def _find_route(path: str) -> tuple[Route | None, re.Match[str] | None]:
        for route in ROUTES:
            match = route.pattern.fullmatch(path)
            if match:
                return route, match
        return None, None

    def _identity(self, request: Request) -> Response:
        form = request.form() if request.method == "POST" and request.content_type.endswith("urlencoded") else {}
        params = Params(request.query, form)
        headers = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]
        grant = params.first("grant_type")
        body: dict[str, str]
        if not grant:
            body = {"error": "invalid_request", "error_description": "Missing grant type"}
            return Response.json(body, 400, headers=headers)
        if grant != "client_credentials":
            body = {"error": "unsupported_grant_type", "error_description": f"Unsupported grant type: {grant}"}
            return Response.json(body, 400, headers=headers)
        client = params.first("client_id") or ""
        if client not in self._secrets or params.first("client_secret") != self._secrets[client]:
            body = {"error": "invalid_client", "error_description": "Bad client credentials"}
            return Response.json(body, 401, headers=headers)
        token, expires_in = self._tokens[client].issue()
        scope = self.options.scope if client == self.options.client_id else f"{client}@example.com"
        granted = {"access_token": token, "token_type": "bearer", "expires_in": expires_in, "scope": scope}
        return Response.json(granted, headers=headers)

    def _authenticate(self, request: Request) -> str:
        """The API user (client id) whose token the request carries; MarketoError otherwise."""
        header = request.header("Authorization")
        if header is not None:
            scheme, _, token = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise MarketoError("601")
        else:
            token = request.arg("access_token") or ""
            if not token:
                raise MarketoError("601", "Access token not specified")
            if not self.options.allow_query_token:
                raise MarketoError("601")  # the query parameter has been retired
        for client, tokens in self._tokens.items():
            problem = tokens.check(token.strip())
            if problem is None:
                return client
            if problem != "601":  # issued to this user, but expired
                raise MarketoError(problem)
        raise MarketoError("601")

    def _apply_fault(self, action: FaultAction) -> Response | None:
        if action.delay is not None:
            self._sleep(action.delay)
        if action.drop:
            raise DropConnection
        if action.kind == "marketo_error" and action.value is not None:
            return failure(self._ids.next(), action.value, action.message or self._message(action.value))
        if action.status is None:
            return None  # a delay alone: then served normally
        return status_response(action, _nginx)  # the gateway's page, as the real one answers 5xx

    def _message(self, code: str) -> str:
        o = self.options
        return message_for(code, calls=o.rate_limit_calls, window=f"{o.rate_limit_window:g}", limit=o.max_concurrent)

    # ---- admin HTTP API (loopback tool: no auth, not counted) ----------------------------

    def _admin(self, request: Request) -> Response:
        path, method = request.path[len("/_sandbox") :], request.method
        try:
            body = json.loads(request.body.decode("utf-8")) if request.body.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            return Response.json({"error": "body is not valid JSON"}, 400)
        source = request.arg("source") or UI_SOURCE
        try:
            if path == "/faults":
                answer = admin_faults(self._faults, method, body)
                return answer or Response.json({"error": "method not allowed"}, 405)
            if path == "/reset" and method == "POST":
                self.reset(seed=(request.arg("seed") or "").lower() in ("1", "true", "yes"))
                return Response.json({"reset": True, "leads": self.db.count()})
            if path == "/stats" and method == "GET":
                return Response.json(self.stats())
            if path == "/leads" and method == "POST":
                if not isinstance(body, dict):
                    return Response.json({"error": "expected a JSON object of field values"}, 400)
                return Response.json({"id": self.create_lead(body, source=source)}, 201)
            match = re.fullmatch(r"/leads/(\d+)", path)
            if match:
                return self._admin_lead(int(match[1]), method, body, source)
        except ValueError as err:  # bad fault rule or field value: say what, change nothing
            return Response.json({"error": str(err)}, 400)
        return Response.json({"error": f"no admin endpoint {method} {request.path}"}, 404)

    def _admin_lead(self, lead_id: int, method: str, body: Any, source: str) -> Response:
        if method == "GET":
            record = self.get_lead(lead_id)
            return Response.json(record) if record else Response.json({"error": "lead not found"}, 404)
        if method == "DELETE":
            return (
                Response.json({"deleted": True})
                if self.delete_lead(lead_id)
                else Response.json({"error": "lead not found"}, 404)
            )
        if method == "PATCH":
            if not isinstance(body, dict):
                return Response.json({"error": "expected a JSON object of field values"}, 400)
            try:
                changed = self.update_lead(lead_id, body, source=source)
            except KeyError:
                return Response.json({"error": "lead not found"}, 404)
            return Response.json({"id": lead_id, "changed": changed})
        return Response.json({"error": "method not allowed"}, 405)

    # ---- in-process API (a Marketo user or admin acting on the instance) -----------------

    @property
    def lock(self) -> Any:
        """The database lock: hold it to make several calls below one atomic step."""
        return self.db.lock

    def create_lead(self, values: Mapping[str, Any], *, source: str = UI_SOURCE) -> int:
        """A new person, validated like an API write (ValueError); logs New Lead with ``source``."""
        self.bulk.advance()
        return self.db.create(schema.clean_values(dict(values)), source=source)

    def update_lead(
        self, lead_id: int, values: Mapping[str, Any], *, source: str = UI_SOURCE, visible_after: float = 0.0
    ) -> list[str]:
        """Edit a person; one Change Data Value per changed field with Source/Reason ``source``.

        ``visible_after`` seconds makes the activities show up that late in reads (committed late:
        a paging token issued meanwhile is already past them). Returns the changed field names;
        KeyError if there is no such lead, ValueError on bad values.
        """
        clean = schema.clean_values(dict(values))
        self.bulk.advance()
        with self.db.lock:
            if not self.db.exists(lead_id):
                raise KeyError(lead_id)
            return self.db.update(lead_id, clean, source=source, visible_after=visible_after)

    def delete_lead(self, lead_id: int) -> bool:
        self.bulk.advance()
        return self.db.delete(lead_id)

    def get_lead(self, lead_id: int) -> dict[str, Any] | None:
        return self.db.get(lead_id)

    def find_leads(self, field: str, value: Any) -> list[dict[str, Any]]:
        with self.db.lock:
            return [r for r in (self.db.get(i) for i in self.db.lookup(field, value)) if r is not None]

    def activities(self, lead_id: int | None = None, type_id: int | None = None) -> list[dict[str, Any]]:
        """The log as ``activities.json`` shows it; Change Data Value items also carry ``fields``."""
        found = self.db.activities(
            lambda a: (lead_id is None or a.lead_id == lead_id) and (type_id is None or a.type_id == type_id)
        )
        out = []
        for a in found:
            item = _activities.render_activity(a)
            if a.change is not None:
                item["fields"] = _activities.render_change(a)["fields"]
            out.append(item)
        return out

    def custom_activities(self, lead_id: int | None = None) -> list[dict[str, Any]]:
        """Custom activities, with attributes keyed by API name."""
        found = self.db.activities(lambda a: a.custom is not None and (lead_id is None or a.lead_id == lead_id))
        return [
            {
                "id": a.id,
                "leadId": a.lead_id,
                "activityTypeId": a.type_id,
                "apiName": schema.CUSTOM_BY_ID[a.type_id].api_name,
                "activityDate": a.activity_date,
                "primaryAttributeValue": a.primary_value,
                "attributes": dict(a.custom or {}),
            }
            for a in found
        ]

    def seed(self, count: int) -> list[int]:
        """Seeded person i (1-based, counting from the current size) matches the Dataverse seed."""
        with self.db.lock:
            start = self.db.count()
            ids = []
            for i in range(start + 1, start + count + 1):
                ids.append(self.db.create(seed_values(i), source=SEED_SOURCE))
            return ids

    def reset(self, *, seed: bool = False) -> None:
        """Empty database and counters; options, armed faults and issued tokens stay."""
        self.db.clear()
        self.bulk.clear()
        self._rate.reset()
        self._usage.reset()
        self._stats.reset()
        if seed:
            self.seed(self.options.seed_leads)

    def fail_export(self, export_id: str, message: str = "Export failed") -> ExportJob:
        """Make a Queued or Processing bulk export job Failed (ValueError if it is neither)."""
        return self.bulk.fail(export_id, message)

    def stats(self) -> dict[str, Any]:
        out = self._stats.as_json()
        out["usageToday"] = self._usage.count(self._usage.today())
        out["inFlight"] = self._gate.in_flight
        return out


def seed_values(i: int) -> dict[str, Any]:
    """The values of seeded person ``i``; the Dataverse simulator seeds the same people."""
    return {
        "email": f"seed.lead.{i}@example.com",
        "firstName": f"Seed{i}",
        "lastName": f"Lead{i}",
        "company": f"Seed Co {i % 50}",
        "title": "Buyer",
        "phone": f"+1 555 01{i:04d}",
    }


_NO_ASSETS = "No assets found for the given search criteria."


def _nginx(status: int) -> Response:
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    title = f"{status} {phrase}".strip()
    page = f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
    page += "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    return Response(status=status, body=page.encode("utf-8"), content_type="text/html")
