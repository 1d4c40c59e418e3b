"""The Dataverse simulator: HTTP routing, the admin API and the in-process Python API.

``DataverseSandbox.handle`` takes every request in order: admin routes (no auth, not counted),
fault rules, the token endpoint, the bearer check, service protection, then the Web API under
``/api/data/v9.2/`` with the store lock held. Reads go to ``_query``/``_metadata``, writes to
``_records``, ``$batch`` wire work to ``_batch``. Every API answer carries ``OData-Version``,
``REQ_ID`` and ``x-ms-service-request-id``; every refusal is a ``DataverseError`` rendered as
``{"error":{"code","message"}}``. Tests and demos act as a Dynamics user through the Python API
or the admin HTTP API, so their writes show up in change tracking like a person's edits.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, unquote

from sandbox._faults import FaultAction, FaultBook, FaultControls, admin_faults, status_response
from sandbox._http import DropConnection, Request, Response
from sandbox.dataverse import _errors as err
from sandbox.dataverse._auth import Tokens
from sandbox.dataverse._batch import ChangeSet, Operation, build_response, parse_batch, resolve_references, to_request
from sandbox.dataverse._errors import DataverseError
from sandbox.dataverse._latency import Meter
from sandbox.dataverse._limits import ServiceProtection, throttled
from sandbox.dataverse._marketing import ADD_ITEM_CAMPAIGN, ADD_MEMBER, LIST_ACTIONS, MarketingLists
from sandbox.dataverse._metadata import Metadata
from sandbox.dataverse._odata import parse_key, parse_prefer, parse_select, quote_literal, split_path, split_segment
from sandbox.dataverse._options import DELTA_ANSWERS, FAULT_ACTIONS, DataverseOptions, bulk_disabled
from sandbox.dataverse._query import OrderCache, Query, resolver
from sandbox.dataverse._records import Records, render
from sandbox.dataverse._schema import (
    BUSINESS_UNIT_ID,
    BY_SET,
    CAMPAIGN,
    CONTACT,
    LEAD,
    MARKETING_LIST,
    ORGANIZATION_ID,
    TABLES,
    Table,
    table_named,
)
from sandbox.dataverse._stats import Stats
from sandbox.dataverse._store import Row, Store

API_PATH = "/api/data/v9.2/"
JSON_TYPE = "application/json; odata.metadata=minimal"
_TOKEN_PATH = re.compile(r"/([^/]+)/oauth2/v2\.0/token")
_DISCOVERY_PATH = re.compile(r"/([^/]+)/v2\.0/\.well-known/openid-configuration")
_MULTIPLE = {f"Microsoft.Dynamics.CRM.{m}": m for m in ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")}
_QUALIFY = "Microsoft.Dynamics.CRM.QualifyLead"
_PRIVILEGES = "Microsoft.Dynamics.CRM.RetrieveUserPrivileges"
_ACTIONS = ("Create", "Read", "Write", "Delete", "Append", "AppendTo", "Assign")
_MULTIPLE_NEEDS = {"CreateMultiple": ("Create",), "UpdateMultiple": ("Write",), "UpsertMultiple": ("Create", "Write")}
_HEADER_SAFE = "/:@!$&'()*+,;=-._~?"
Key = str | dict[str, Any]


class _Rollback(Exception):
    """Ends a change set: its writes are undone and ``response`` stands for the whole set."""

    def __init__(self, content_id: str | None, response: Response) -> None:
        super().__init__(response.status)
        self.content_id = content_id
        self.response = response


def _json(payload: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response.json(payload, status, content_type=JSON_TYPE, headers=headers)


def _error(exc: DataverseError) -> Response:
    return _decorate(_json(exc.body(), exc.status, exc.headers))


def _status_error(status: int) -> Response:
    """An OData error for a bare status (fault injection)."""
    code = err.UNEXPECTED if status >= 500 else ""
    return _json({"error": {"code": code, "message": HTTPStatus(status).phrase}}, status)


def _decorate(response: Response) -> Response:
    request_id = str(uuid.uuid4())
    response.headers += [("OData-Version", "4.0"), ("REQ_ID", request_id), ("x-ms-service-request-id", request_id)]
    return response


def _header_value(url: str) -> str:
    return quote(url, safe=_HEADER_SAFE)


class DataverseSandbox(FaultControls):
    """A Dataverse org with ``leads`` and ``contacts``; ``handle`` serves it over HTTP."""

    def __init__(self, options: DataverseOptions | None = None, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options or DataverseOptions()
        self._sleep = sleep
        self.store = Store(self.options.clock)
        self.lock = self.store.lock
        self.stats = Stats(self.store)
        self.records = Records(self.store, self.stats, self.options.plugin_rules, self.options.ui_user_id)
        self.lists = MarketingLists(self.store, self.stats)
        self.tokens = Tokens(self.options)
        self.limits = ServiceProtection(
            max_requests=self.options.max_requests,
            window_seconds=self.options.window_seconds,
            max_concurrent=self.options.max_concurrent,
            max_execution_ms=self.options.max_execution_ms,
            clock=self.options.clock,
        )
        self.meter = Meter(self.options.profile, sleep)
        self._faults = FaultBook(self.options.faults, extra_actions=FAULT_ACTIONS)
        self._order_cache = OrderCache()
        self._seed()

    # ================================================================== HTTP entry

    def handle(self, request: Request) -> Response:
        if request.path == "/_sandbox" or request.path.startswith("/_sandbox/"):
            return self._admin(request)
        self.stats.count("requests")
        discovery = _DISCOVERY_PATH.fullmatch(request.path)
        if discovery is not None:  # MSAL (azure-identity) reads this before asking for a token
            return self.tokens.discovery(request, discovery.group(1))
        token_path = _TOKEN_PATH.fullmatch(request.path)
        if token_path is not None:
            fault = self._apply_fault(self._take_fault(request))
            if fault is not None:
                return fault
            response = self.tokens.issue(request, token_path.group(1))
            if response.status == 200:
                self.stats.count("tokens_issued")
            return response
        if (request.path + "/").startswith(API_PATH):
            response = self._org(request)
        else:
            first = split_path(unquote(request.path))
            response = _error(err.no_segment(first[0] if first else "/"))
        # Every answer of the org says how many requests to send in parallel (send-parallel-requests).
        response.headers.append(("x-ms-dop-hint", str(self.options.profile.dop_hint)))
        return response

    def _org(self, request: Request) -> Response:
        principal = self.tokens.principal(request)
        if principal is None:
            self.stats.count("unauthorized")
            return _decorate(self.tokens.challenge(request, had_token=request.header("Authorization") is not None))
        # Faults act on authenticated calls; a delay runs inside the limits, so it holds a
        # concurrency slot and adds to execution time like a slow request would. So does the
        # profile's simulated service time (meter.wait).
        action = self._take_fault(request)
        self.meter.start()
        if not self.options.limits:
            response = self._serve(request, action)
            self.meter.wait()
            return response
        try:
            with self.limits.admit(principal) as limit_headers:
                response = self._serve(request, action)
                self.meter.wait()
        except DataverseError as exc:
            self.stats.count("throttled")
            return _error(exc)
        response.headers += limit_headers
        return response

    def _take_fault(self, request: Request) -> FaultAction | None:
        action = self._faults.take(request.method, request.path)
        if action is not None:
            self.stats.count("faults")
        return action

    def _apply_fault(self, action: FaultAction | None) -> Response | None:
        if action is None:
            return None
        if action.delay is not None:
            self._sleep(action.delay)
        if action.drop:
            raise DropConnection
        if action.status is None:
            return None  # a delay alone: then served normally
        if action.status == 429 and action.body is None:
            return _error(throttled(action.retry_after or 1))  # the real service-protection answer
        return _decorate(status_response(action, _status_error))

    def _serve(self, request: Request, action: FaultAction | None) -> Response:
        if action is not None and action.kind == "delta_answer":
            return self._delta_answer(request, action)
        fault = self._apply_fault(action)
        if fault is not None:
            return fault
        return self._call(request, in_batch=False)

    def _delta_answer(self, request: Request, action: FaultAction) -> Response:
        """A delta read answered with an empty body (``empty``) or without its new delta link
        (``no_link``); any other request is served normally."""
        if action.value not in DELTA_ANSWERS:
            return _error(err.bad_argument(f"fault delta_answer must be one of {', '.join(DELTA_ANSWERS)}"))
        if action.delay is not None:
            self._sleep(action.delay)
        response = self._call(request, in_batch=False)
        if request.method != "GET" or request.arg("$deltatoken") is None or response.status != 200:
            return response
        if action.value == "empty":
            response.body = b""
            response.content_type = None
            return response
        payload = json.loads(response.body)
        payload.pop("@odata.deltaLink", None)
        response.body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        return response

    def _call(self, request: Request, *, in_batch: bool) -> Response:
        try:
            with self.store.lock:
                return _decorate(self._api(request, in_batch=in_batch))
        except DataverseError as exc:
            return _error(exc)

    # ================================================================== Web API routing

    def _api(self, request: Request, *, in_batch: bool) -> Response:
        path = unquote(request.path)
        segments = split_path(path[len(API_PATH) :] if path.startswith(API_PATH) else "")
        api = request.base_url + API_PATH.rstrip("/")
        method = request.method
        if not segments:
            self._only(method, ("GET",), path)
            return _json(
                {
                    "@odata.context": f"{api}/$metadata",
                    "value": [{"name": t.entity_set, "kind": "EntitySet", "url": t.entity_set} for t in TABLES],
                }
            )
        name, key_text = split_segment(segments[0])
        if name == "$batch" and len(segments) == 1:
            self._only(method, ("POST",), path)
            if in_batch:
                raise err.bad_argument("A $batch request cannot contain another $batch request.")
            self._op("$batch", "POST")
            return self._batch(request)
        if name == "EntityDefinitions":
            self._only(method, ("GET",), path)
            self._op("EntityDefinitions", "GET", in_batch=in_batch)
            untracked = frozenset(self.options.change_tracking_off)
            return _json(Metadata(api, untracked=untracked).entity_definitions(segments, request.query))
        if name == "sdkmessagefilters" and key_text is None and len(segments) == 1:
            self._only(method, ("GET",), path)
            self._op("sdkmessagefilters", "GET", in_batch=in_batch)
            return _json(Metadata(api).message_filters(request.query, self._bulk_enabled))
        if name == "WhoAmI" and len(segments) == 1 and key_text in (None, ""):
            self._only(method, ("GET",), path)
            self._op("WhoAmI", "GET", in_batch=in_batch)
            return _json(
                {
                    "@odata.context": f"{api}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                    "BusinessUnitId": BUSINESS_UNIT_ID,
                    "UserId": self.options.integration_user_id,
                    "OrganizationId": ORGANIZATION_ID,
                }
            )
        if name == "systemusers" and len(segments) == 2 and segments[1].removesuffix("()") == _PRIVILEGES:
            self._only(method, ("GET",), path)
            self._op("systemusers", _PRIVILEGES, in_batch=in_batch)
            return self._user_privileges(key_text, api)
        table = BY_SET.get(name)
        if table is None:
            raise err.no_segment(name)
        user = self.options.integration_user_id
        bypass = self._bypass_plugins(request)
        if table.read_only and method != "GET":  # listmember: AddMemberList/RemoveMemberList only
            raise err.message_not_supported({"POST": "Create", "PATCH": "Update"}.get(method, method), table.logical)
        if key_text is None:
            if len(segments) == 1:
                self._only(method, ("GET", "POST"), path)
                self._need(table, "Read" if method == "GET" else "Create")
                if method == "GET":
                    self._op(
                        table.entity_set,
                        "query" if request.arg("$deltatoken") is None else "delta",
                        in_batch=in_batch,
                        records=0,  # charged by the rows of the page, in _query
                    )
                    return self._query(table, request, api)
                self._op(table.entity_set, "create", in_batch=in_batch)
                return self._create(table, request, api, user, bypass)
            message = _MULTIPLE.get(segments[1])
            if message is None or len(segments) > 2:
                raise err.no_segment(segments[1])
            self._only(method, ("POST",), path)
            for action in _MULTIPLE_NEEDS[message]:
                self._need(table, action)
            self._op(table.entity_set, message, in_batch=in_batch, records=0)  # charged per target
            return self._multiple(table, message, request, api, user, bypass)
        key = self._key(table, key_text)
        if len(segments) == 1:
            self._only(method, ("GET", "PATCH", "DELETE"), path)
            self._need(table, {"GET": "Read", "PATCH": "Write", "DELETE": "Delete"}[method])
            if method == "GET":
                self._op(table.entity_set, "retrieve", in_batch=in_batch)
                return self._retrieve(table, key, request, api)
            if method == "PATCH":
                operation = "update" if request.header("If-Match") else "upsert"
                self._op(table.entity_set, operation, in_batch=in_batch)
                return self._patch(table, key, request, api, user, bypass)
            self._op(table.entity_set, "delete", in_batch=in_batch)
            return self._delete(table, key, request, user)
        if len(segments) == 2 and segments[1] == _QUALIFY and table is LEAD:
            self._only(method, ("POST",), path)
            self._need(table, "Write")
            self._need(CONTACT, "Create")
            self._op(table.entity_set, "QualifyLead", in_batch=in_batch)
            return self._qualify(key, request, api, user)
        if len(segments) == 2 and segments[1] in LIST_ACTIONS and table is MARKETING_LIST:
            self._only(method, ("POST",), path)
            self._need(table, "Write")
            if segments[1] == ADD_ITEM_CAMPAIGN:
                self._need(CAMPAIGN, "AppendTo")
            self._op(table.entity_set, segments[1].rsplit(".", 1)[-1], in_batch=in_batch)
            return self._list_action(key, segments[1], request, api)
        column = table.by_prop.get(segments[1]) if len(segments) == 2 else None
        if column is None:
            raise err.no_segment(segments[-1] if len(segments) > 2 else segments[1])
        self._only(method, ("GET", "DELETE"), path)
        self._need(table, "Read" if method == "GET" else "Write")
        row = self.records.get_or_raise(table, key)
        if method == "GET":
            self._op(table.entity_set, "retrieve", in_batch=in_batch)
            value = render(table, row, [column.prop])[column.prop]
            if value is None:
                return Response(status=204)
            return _json(
                {"@odata.context": f"{api}/$metadata#{table.entity_set}({row.id})/{column.prop}", "value": value}
            )
        if column.kind == "lookup" or not column.update:
            raise err.bad_argument(f"The column '{column.prop}' cannot be cleared.")
        self._op(table.entity_set, "update", in_batch=in_batch)
        self.records.update(table, row, {column.name: None}, user=user, bypass_plugins=bypass)
        return Response(status=204)

    def _privileges(self) -> list[str]:
        """What the integration user's role grants (at organisation depth): every table privilege
        on the tables it writes, Read on users and teams, but those ``denied_privileges`` takes away."""
        denied = set(self.options.denied_privileges)
        names = [
            f"prv{action}{table.privilege_name}"
            for table in TABLES
            for action in (_ACTIONS if table.api_writes else ("Read",))
        ]
        return [name for name in names if name not in denied]

    def _need(self, table: Table, action: str) -> None:
        """Refuse (403 PrivilegeDenied) a request the user's role has no privilege for."""
        privilege = f"prv{action}{table.privilege_name}"
        if privilege in self.options.denied_privileges or (action != "Read" and not table.api_writes):
            raise err.privilege_denied(privilege, self.options.integration_user_id)

    def _user_privileges(self, key_text: str | None, api: str) -> Response:
        """``systemusers(<id>)/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()``: the privileges the
        user holds through their roles (RetrieveUserPrivilegesResponse.RolePrivileges)."""
        user_id = str(parse_key(key_text or "")).strip("{}").lower()
        if user_id != self.options.integration_user_id.lower():
            raise err.not_found("systemuser", user_id)
        privileges = [
            {
                "Depth": "Global",
                "PrivilegeId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-dataverse/privilege/{name}")),
                "BusinessUnitId": BUSINESS_UNIT_ID,
                "PrivilegeName": name,
            }
            for name in self._privileges()
        ]
        return _json(
            {
                "@odata.context": f"{api}/$metadata#Microsoft.Dynamics.CRM.RetrieveUserPrivilegesResponse",
                "RolePrivileges": privileges,
            }
        )

    def _op(self, resource: str, operation: str, *, in_batch: bool = False, records: int = 1) -> None:
        """Count an operation and charge its simulated service time."""
        self.stats.call(resource, operation, in_batch=in_batch)
        self.meter.charge(operation, records)

    @staticmethod
    def _only(method: str, allowed: tuple[str, ...], path: str) -> None:
        if method not in allowed:
            raise err.method_not_allowed(method, path)

    @staticmethod
    def _bypass_plugins(request: Request) -> bool:
        if (request.header("MSCRM.BypassCustomPluginExecution") or "").lower() == "true":
            return True
        return "customsync" in (request.header("MSCRM.BypassBusinessLogicExecution") or "").lower()

    @staticmethod
    def _key(table: Table, text: str) -> Key:
        key = parse_key(text)
        if isinstance(key, dict) and set(key) == {table.primary_id} and isinstance(key[table.primary_id], str):
            return key[table.primary_id].lower()
        return key

    @staticmethod
    def _entity_url(api: str, table: Table, key: Key) -> str:
        if isinstance(key, str):
            return f"{api}/{table.entity_set}({key})"
        parts = ",".join(f"{k}={quote_literal(v) if isinstance(v, str) else v}" for k, v in key.items())
        return f"{api}/{table.entity_set}({parts})"

    @staticmethod
    def _body(request: Request, table: Table) -> Any:
        if not request.body.strip():
            raise err.bad_payload(table.entity_set, "The request body is empty; a JSON object was expected.")
        try:
            return request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise err.bad_payload(table.entity_set, f"Invalid JSON. {exc}") from exc

    @staticmethod
    def _select(table: Table, request: Request) -> list[str] | None:
        """``$select`` checked up front, so a bad one refuses a write before anything is written."""
        text = request.arg("$select")
        return parse_select(text, resolver(table)) if text else None

    @staticmethod
    def _representation(
        table: Table, row: Row, select: list[str] | None, api: str, status: int, headers: list[tuple[str, str]]
    ) -> Response:
        shape = f"{table.entity_set}({','.join(select)})" if select else table.entity_set
        body = {"@odata.context": f"{api}/$metadata#{shape}/$entity", **render(table, row, select)}
        return _json(body, status, [*headers, ("Preference-Applied", "return=representation")])

    # ================================================================== handlers

    def _query(self, table: Table, request: Request, api: str) -> Response:
        prefs = parse_prefer(request.header("Prefer"))
        delta = request.arg("$deltatoken") is not None or "odata.track-changes" in prefs
        if delta and table.logical in self.options.change_tracking_off:
            raise err.change_tracking_off(table.logical)
        query = Query(
            self.store,
            table,
            request,
            prefs,
            api=api,
            max_page=self.options.max_page_size,
            retention=self.options.change_retention,
            cache=self._order_cache,
        )
        payload = query.run()
        self.meter.charge("query", len(payload.get("value", ())))
        headers = [("Preference-Applied", ",".join(query.applied))] if query.applied else []
        return _json(payload, headers=headers)

    def _retrieve(self, table: Table, key: Key, request: Request, api: str) -> Response:
        if request.arg("$expand") is not None:
            raise err.bad_query("The sandbox does not simulate $expand on leads or contacts.")
        select = self._select(table, request)
        row = self.records.get_or_raise(table, key)
        etag = f'W/"{row.version}"'
        if request.header("If-None-Match") == etag:
            return Response(status=304, headers=[("ETag", etag)])
        annotations = "odata.include-annotations" in parse_prefer(request.header("Prefer"))
        shape = f"{table.entity_set}({','.join(select)})" if select else table.entity_set
        body = {
            "@odata.context": f"{api}/$metadata#{shape}/$entity",
            **render(table, row, select, annotations=annotations, store=self.store),
        }
        return _json(body, headers=[("ETag", etag)])

    def _create(self, table: Table, request: Request, api: str, user: str, bypass: bool) -> Response:
        select = self._select(table, request)
        row = self.records.create(table, self._body(request, table), user=user, bypass_plugins=bypass)
        if "return" in parse_prefer(request.header("Prefer")):
            return self._representation(table, row, select, api, 201, [])
        return Response(status=204, headers=[("OData-EntityId", _header_value(self._entity_url(api, table, row.id)))])

    def _patch(self, table: Table, key: Key, request: Request, api: str, user: str, bypass: bool) -> Response:
        select = self._select(table, request)
        body = self._body(request, table)
        if_match = request.header("If-Match")
        if_none_match = request.header("If-None-Match")
        row = self.records.find(table, key)
        if if_none_match == "*" and row is not None:
            raise err.duplicate_record()
        if if_match is not None:
            if row is None:
                raise err.not_found(table.logical, key) if isinstance(key, str) else err.key_not_found(table.logical)
            if if_match.strip() != "*" and if_match.strip() != f'W/"{row.version}"':
                raise err.version_mismatch()
        if row is not None:
            if isinstance(body, dict) and "ownerid@odata.bind" in body:  # a new owner of a record: an assignment
                self._need(table, "Assign")
            row = self.records.update(
                table, row, body, user=user, bypass_plugins=bypass, strip_keys=isinstance(key, dict)
            )
            status = 200
        elif isinstance(key, str):
            row = self.records.create(table, body, user=user, bypass_plugins=bypass, record_id=key)
            status = 201
        else:
            row = self.records.create(table, body, user=user, bypass_plugins=bypass, key=key)
            status = 201
        entity = [("OData-EntityId", _header_value(self._entity_url(api, table, key)))]
        if "return" in parse_prefer(request.header("Prefer")):
            return self._representation(table, row, select, api, status, entity)
        return Response(status=204, headers=entity)

    def _delete(self, table: Table, key: Key, request: Request, user: str) -> Response:
        row = self.records.get_or_raise(table, key)
        if_match = (request.header("If-Match") or "*").strip()
        if if_match != "*" and if_match != f'W/"{row.version}"':
            raise err.version_mismatch()
        self.records.delete(table, row, user=user)
        self.lists.record_deleted(row.id)
        return Response(status=204)

    def _bulk_enabled(self, logical: str, message: str) -> bool:
        # The bulk messages are simulated on the sync's two tables only (the flow steps' tables are written one by one).
        return logical in (LEAD.logical, CONTACT.logical) and not bulk_disabled(
            self.options.bulk_disabled, logical, message
        )

    def _multiple(self, table: Table, message: str, request: Request, api: str, user: str, bypass: bool) -> Response:
        if not self._bulk_enabled(table.logical, message):
            raise err.message_not_supported(message, table.logical)
        data = self._body(request, table)
        targets = data.get("Targets") if isinstance(data, dict) else None
        if not isinstance(targets, list) or not targets or not all(isinstance(t, dict) for t in targets):
            raise err.bad_argument(f"{message} needs 'Targets': a non-empty list of {table.logical} records.")
        self.meter.charge(message, len(targets))
        request.notes["records"] = len(targets)  # the request log's: a benchmark's call floor per table
        ids: list[str] = []
        with self.store.atomic():  # standard tables: one bad target and nothing is written
            for target in targets:
                kind = target.get("@odata.type")
                if not isinstance(kind, str):
                    raise err.bad_payload(
                        "",
                        f"A type must be given for every target of {message}: '@odata.type' is missing "
                        f"(e.g. '{table.odata_type}').",
                    )
                if kind.lstrip("#") != table.odata_type:
                    raise err.bad_argument(
                        f"The target type '{kind}' does not match the entity set '{table.entity_set}' of {message}."
                    )
                if message == "CreateMultiple":
                    ids.append(self.records.create(table, target, user=user, bypass_plugins=bypass).id)
                elif message == "UpdateMultiple":
                    record_id = target.get(table.primary_id)
                    if not isinstance(record_id, str):
                        raise err.bad_argument(
                            f"Entity Id must be specified for Update: '{table.primary_id}' is missing."
                        )
                    row = self.records.get_or_raise(table, record_id.lower())
                    self.records.update(table, row, target, user=user, bypass_plugins=bypass)
                else:
                    self._upsert_target(table, target, user, bypass)
        if message == "CreateMultiple":
            return _json(
                {"@odata.context": f"{api}/$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse", "Ids": ids}
            )
        return Response(status=204)

    def _upsert_target(self, table: Table, target: dict[str, Any], user: str, bypass: bool) -> None:
        body = {k: v for k, v in target.items() if k != "@odata.id"}
        odata_id = target.get("@odata.id")
        key: Key
        if isinstance(odata_id, str):
            name, key_text = split_segment(odata_id.rstrip("/").rsplit("/", 1)[-1])
            if name != table.entity_set or key_text is None:
                raise err.bad_argument(f"'@odata.id' '{odata_id}' does not name a {table.logical} record by key.")
            key = self._key(table, key_text)
        elif isinstance(target.get(table.primary_id), str):
            key = str(target[table.primary_id]).lower()
        else:
            raise err.bad_argument("UpsertMultiple needs '@odata.id' (a key) or the primary key on every target.")
        row = self.records.find(table, key)
        if row is not None:
            self.records.update(table, row, body, user=user, bypass_plugins=bypass, strip_keys=isinstance(key, dict))
        elif isinstance(key, str):
            self.records.create(table, body, user=user, bypass_plugins=bypass, record_id=key)
        else:
            # Reproduces PowerPlatform-DataverseClient-Python PR #127: on the create path the real service
            # answers 400 when a key column is both in '@odata.id' and in the body (the update path strips it).
            repeated = sorted(set(key) & set(body))
            if repeated:
                raise err.bad_argument(
                    f"The alternate key attribute '{repeated[0]}' is specified both in '@odata.id' and in the "
                    "record; remove it from the record."
                )
            self.records.create(table, body, user=user, bypass_plugins=bypass, key=key)

    def _qualify(self, key: Key, request: Request, api: str, user: str) -> Response:
        data = self._body(request, LEAD)
        if not isinstance(data, dict):
            raise err.bad_argument("QualifyLead needs a JSON object of parameters.")
        for name in ("CreateAccount", "CreateContact", "CreateOpportunity"):
            if not isinstance(data.get(name), bool):
                raise err.bad_argument(f"QualifyLead needs the Boolean parameter '{name}'.")
        status = data.get("Status")
        if isinstance(status, bool) or not isinstance(status, int):
            raise err.bad_argument("QualifyLead needs the Int32 parameter 'Status' (3 = Qualified).")
        if data["CreateAccount"] or data["CreateOpportunity"]:
            raise err.bad_argument(
                "The sandbox does not create accounts or opportunities when qualifying: send CreateAccount=false "
                "and CreateOpportunity=false."
            )
        lead = self.records.get_or_raise(LEAD, key)
        contact = self.records.qualify(lead, status=status, create_contact=data["CreateContact"], user=user)
        value = [{"@odata.type": "#Microsoft.Dynamics.CRM.contact", "contactid": contact.id}] if contact else []
        return _json(
            {"@odata.context": f"{api}/$metadata#Collection(Microsoft.Dynamics.CRM.crmbaseentity)", "value": value}
        )

    def _list_action(self, key: Key, action: str, request: Request, api: str) -> Response:
        marketing_list = self.records.get_or_raise(MARKETING_LIST, key)
        data = self._body(request, MARKETING_LIST)
        if action == ADD_MEMBER:
            member_id = self.lists.add_member(marketing_list, data)
            return _json(
                {"@odata.context": f"{api}/$metadata#Microsoft.Dynamics.CRM.AddMemberListResponse", "Id": member_id}
            )
        if action == ADD_ITEM_CAMPAIGN:
            item_id = self.lists.add_item_campaign(marketing_list, data)
            return _json({"@odata.context": f"{api}/$metadata#campaignitems/$entity", "campaignitemid": item_id})
        self.lists.remove_member(marketing_list, data)
        return Response(status=204)

    # ================================================================== $batch

    def _batch(self, request: Request) -> Response:
        items = parse_batch(request.body, request.header("Content-Type") or "")
        total = sum(len(i.operations) if isinstance(i, ChangeSet) else 1 for i in items)
        if total > self.options.max_batch_requests:
            raise err.bad_argument(
                f"Number of requests in a batch exceeded the limit of {self.options.max_batch_requests}."
            )
        keep_going = "odata.continue-on-error" in parse_prefer(request.header("Prefer"))
        results: list[Any] = []
        for item in items:
            if isinstance(item, ChangeSet):
                result: Any = self._change_set(item, request)
                failed = isinstance(result, tuple)
            else:
                response = self._batch_operation(item, {}, request)
                result = (item.content_id, response)
                failed = response.status >= 400
            if failed and not keep_going:
                return build_response([result], 400)
            results.append(result)
        response = build_response(results, 200)
        if keep_going:
            response.headers.append(("Preference-Applied", "odata.continue-on-error"))
        return response

    def _batch_operation(self, operation: Operation, entities: dict[str, str], outer: Request) -> Response:
        try:
            url, body = resolve_references(operation, entities)
            resolved = Operation(operation.method, url, operation.headers, body, operation.content_id)
            inner = to_request(resolved, url, outer.base_url, API_PATH)
        except DataverseError as exc:
            return _error(exc)
        return self._call(inner, in_batch=True)

    def _change_set(
        self, change_set: ChangeSet, outer: Request
    ) -> list[tuple[str | None, Response]] | tuple[str | None, Response]:
        entities: dict[str, str] = {}
        done: list[tuple[str | None, Response]] = []
        try:
            with self.store.atomic():
                for operation in change_set.operations:
                    if operation.method == "GET":
                        refusal = _error(err.bad_argument("A change set cannot contain GET requests."))
                        raise _Rollback(operation.content_id, refusal)
                    response = self._batch_operation(operation, entities, outer)
                    if response.status >= 400:
                        raise _Rollback(operation.content_id, response)
                    entity = dict(response.headers).get("OData-EntityId")
                    if operation.content_id is not None and entity:
                        entities[operation.content_id] = entity
                    done.append((operation.content_id, response))
        except _Rollback as failure:
            return (failure.content_id, failure.response)
        return done

    # ================================================================== admin HTTP API (no auth, not counted)

    def _admin(self, request: Request) -> Response:
        try:
            return self._admin_route(request)
        except DataverseError as exc:
            return _error(exc)
        except ValueError as exc:  # bad JSON (UnicodeDecodeError and JSONDecodeError are ValueErrors) or fault rule
            return Response.json({"error": {"code": "sandbox", "message": str(exc)}}, 400)

    def _admin_route(self, request: Request) -> Response:
        path = unquote(request.path)[len("/_sandbox/") :]
        method = request.method
        if path == "faults":
            answer = admin_faults(self._faults, method, request.json() if request.body.strip() else None)
            if answer is None:
                raise err.method_not_allowed(method, request.path)
            return answer
        if path == "reset" and method == "POST":
            self.reset()
            return Response.json({"reset": True})
        if path == "stats" and method == "GET":
            return Response.json(self.stats.to_json())
        if path == "expire-change-tracking" and method == "POST":
            self.expire_change_tracking()
            return Response.json({"expired": True})
        segments = split_path(path)
        if not segments:
            raise err.no_segment("/_sandbox/")
        name, key_text = split_segment(segments[0])
        table = BY_SET.get(name)
        if table is None:
            raise err.no_segment(name)
        if key_text is None and len(segments) == 1:
            if method == "GET":
                return Response.json({"value": self.rows(table.entity_set)})
            if method == "POST":
                record_id = self.create(table.entity_set, request.json())
                return Response.json(self.get(table.entity_set, record_id), 201)
        if key_text is not None:
            key = self._key(table, key_text)
            if not isinstance(key, str):
                raise err.bad_argument("The admin API addresses records by GUID.")
            record_id = key
            if len(segments) == 1:
                if method == "GET":
                    found = self.get(table.entity_set, record_id)
                    if found is None:
                        raise err.not_found(table.logical, record_id)
                    return Response.json(found)
                if method == "PATCH":
                    self.update(table.entity_set, record_id, request.json())
                    return Response.json(self.get(table.entity_set, record_id))
                if method == "DELETE":
                    self.delete(table.entity_set, record_id)
                    return Response(status=204)
            if segments[1:] == ["qualify"] and table is LEAD and method == "POST":
                data = request.json() if request.body.strip() else {}
                contact_id = self.qualify_lead(record_id, status=int(data.get("status", 3)))
                return Response.json({"contactid": contact_id})
        raise err.method_not_allowed(method, request.path)

    # ================================================================== Python API (acts as a Dynamics user)

    def _table(self, entity: str) -> Table:
        table = table_named(entity)
        if table is None:
            raise err.no_segment(entity)
        return table

    def create(self, entity: str, values: dict[str, Any], *, bypass_plugins: bool = False) -> str:
        """Create a record as a Dynamics user; returns its GUID. Raises ``DataverseError`` like the API would."""
        table = self._table(entity)
        with self.lock:
            return self.records.create(table, values, user=self.options.ui_user_id, bypass_plugins=bypass_plugins).id

    def update(self, entity: str, record_id: str, values: dict[str, Any], *, bypass_plugins: bool = False) -> None:
        table = self._table(entity)
        with self.lock:
            row = self.records.get_or_raise(table, record_id.lower())
            self.records.update(table, row, values, user=self.options.ui_user_id, bypass_plugins=bypass_plugins)

    def delete(self, entity: str, record_id: str) -> None:
        table = self._table(entity)
        with self.lock:
            row = self.records.get_or_raise(table, record_id.lower())
            self.records.delete(table, row, user=self.options.ui_user_id)
            self.lists.record_deleted(row.id)

    def get(self, entity: str, record_id: str) -> dict[str, Any] | None:
        """The record as the Web API renders it (all columns), or None."""
        table = self._table(entity)
        with self.lock:
            row = self.records.table_store(table).get(record_id)
            return render(table, row) if row is not None else None

    def find(self, entity: str, **equals: Any) -> list[dict[str, Any]]:
        """Records whose columns equal the given values (text compared case-insensitively, like Dataverse)."""
        table = self._table(entity)
        for name in equals:
            resolver(table)(name)

        def same(a: Any, b: Any) -> bool:
            return a.casefold() == b.casefold() if isinstance(a, str) and isinstance(b, str) else bool(a == b)

        with self.lock:
            rows = self.records.table_store(table).rows.values()
            return [
                render(table, r)
                for r in rows
                if all(same(r.values.get(table.by_prop[k].name), v) for k, v in equals.items())
            ]

    def rows(self, entity: str) -> list[dict[str, Any]]:
        table = self._table(entity)
        with self.lock:
            return [render(table, r) for r in self.records.table_store(table).rows.values()]

    def list_members(self, list_id: str) -> list[str]:
        """The ids of a marketing list's members."""
        with self.lock:
            return self.lists.members(list_id.lower())

    def add_list_member(self, list_id: str, entity_id: str) -> str:
        """AddMemberList as a Dynamics user; the list member's id."""
        with self.lock:
            marketing_list = self.records.get_or_raise(MARKETING_LIST, list_id.lower())
            return self.lists.add_member(marketing_list, {"EntityId": entity_id})

    def campaign_lists(self, campaign_id: str) -> list[str]:
        """The ids of the marketing lists added to a campaign (AddItemCampaign)."""
        with self.lock:
            return self.lists.campaign_lists(campaign_id)

    def qualify_lead(self, lead_id: str, *, status: int = 3) -> str:
        """QualifyLead as a Dynamics user: a contact from the lead; returns the contact's GUID."""
        with self.lock:
            lead = self.records.get_or_raise(LEAD, lead_id.lower())
            contact = self.records.qualify(lead, status=status, create_contact=True, user=self.options.ui_user_id)
            assert contact is not None
            return contact.id

    def expire_change_tracking(self) -> None:
        """Every delta token handed out so far answers ExpiredVersionStamp from now on."""
        with self.lock:
            self.store.expire_tokens()

    def reset(self) -> None:
        """Empty both tables (re-seeded per the options), clear faults, counters and limits; old delta tokens expire."""
        with self.lock:
            for tables in self.store.tables.values():
                tables.clear()
            self.lists.clear()
            self.store.expire_tokens()
            self.stats.reset()
            self.limits.reset()
            self._faults.clear()
            self._seed()

    def _seed(self) -> None:
        user = self.options.ui_user_id

        def lead(i: int) -> dict[str, Any]:
            return {
                "emailaddress1": f"seed.lead.{i}@example.com",
                "firstname": f"Seed{i}",
                "lastname": f"Lead{i}",
                "companyname": f"Seed Co {i % 50}",
                "jobtitle": "Buyer",
                "telephone1": f"+1 555 01{i:04d}",
                "subject": "Seeded lead",
            }

        def contact(i: int) -> dict[str, Any]:
            return {
                "emailaddress1": f"seed.contact.{i}@example.com",
                "firstname": f"Seed{i}",
                "lastname": f"Contact{i}",
            }

        with self.lock:
            self.records.seed_users(self.options.integration_user_id, user)
            self.records.seed(LEAD, self.options.seed_leads, lead, user)
            self.records.seed(CONTACT, self.options.seed_contacts, contact, user)
