"""``MarketoClient``: the only code that speaks HTTP to the Marketo REST API.

It owns the token (``_auth``), the envelope (``_envelope``), a client-side rate budget (a share
of 100 calls/20 s and 10 in flight), retries through the one request path of
``sync_core.http.transport``, paging through the one loop of ``_paging``, 300-record batching
and the mapping of per-record verdicts to the typed results of ``_types`` (read by
``_records``), in input order. Callers get typed pages and results; the only raw dicts that
leave are lead field values, keyed by Marketo REST field names. It does not decide anything
about syncing, and it never logs tokens, secrets or person data (only ids and counts).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, Unpack

import httpx
from pydantic import SecretStr

from sync_core.core.errors import ApiError, ConfigError, RecordError
from sync_core.core.schema import MarketoFieldMeta
from sync_core.http.counters import ApiCounters
from sync_core.http.parallel import in_parallel
from sync_core.http.ratebudget import CallBudget, RateBudget, RateLimit
from sync_core.http.retry import MARKETO_RETRY, RetryPolicy
from sync_core.http.token_auth import StreamingTokenAuth
from sync_core.http.transport import RequestBody, RetryingSender
from sync_core.marketo import _bulk, _records
from sync_core.marketo._auth import MarketoTokenAuth
from sync_core.marketo._bulk import ExportJob
from sync_core.marketo._envelope import Envelope, read_envelope
from sync_core.marketo._paging import Page, pages
from sync_core.marketo._types import (
    ActivityResult,
    ActivityStatus,
    CustomActivity,
    DeletedLead,
    DeletedLeadsPage,
    FieldChange,
    LeadChange,
    LeadChangesPage,
    LeadOutcome,
    LeadWriteResult,
    Reason,
    WriteStatus,
)

__all__ = [
    "BATCH_SIZE",
    "ActivityResult",
    "ActivityStatus",
    "CustomActivity",
    "DeletedLead",
    "DeletedLeadsPage",
    "ExportJob",
    "FieldChange",
    "LeadChange",
    "LeadChangesPage",
    "LeadOutcome",
    "LeadWriteResult",
    "MarketoClient",
    "Reason",
    "WriteStatus",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE = "marketo"
BATCH_SIZE = 300  # records per Lead-DB call, filterValues per query, activities per add
# Per instance, shared with every other integration: 100 calls per 20 s, 10 in flight.
RATE_LIMIT = RateLimit(max_calls=100, per_seconds=20.0, max_concurrent=10)
MAX_URL_CHARS = 7000  # the gateway refuses URIs over 8 KB; past this a query goes as a form POST
SYNC_ACTIONS = frozenset({"createOrUpdate", "createOnly", "updateOnly", "createDuplicate"})
IDEMPOTENT_ACTIONS = frozenset({"createOrUpdate", "updateOnly"})  # the others may create twice
APPROVED_TYPE_STATUSES = frozenset({"approved", "approved with draft"})

# Read timeouts a little above Marketo's own server-side timeouts (api-protocols A6).
_CONNECT = 10.0
TIMEOUT_DEFAULT = httpx.Timeout(40.0, connect=_CONNECT)
TIMEOUT_SYNC_LEADS = httpx.Timeout(100.0, connect=_CONNECT)
TIMEOUT_QUERY_LEADS = httpx.Timeout(70.0, connect=_CONNECT)
TIMEOUT_PAGING_TOKEN = httpx.Timeout(310.0, connect=_CONNECT)
TIMEOUT_ADD_ACTIVITIES = httpx.Timeout(100.0, connect=_CONNECT)
TIMEOUT_BULK_FILE = httpx.Timeout(120.0, connect=_CONNECT)  # between bytes: the file itself may take long


class MarketoClient:
    """Marketo REST API client. Thread-safe; build one per process and share it."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        base_url: str,
        client_id: str,
        client_secret: SecretStr | str,
        rate_share: float = 0.5,
        counters: ApiCounters | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        retry_policy: RetryPolicy = MARKETO_RETRY,
        budget: CallBudget | None = None,
        background_share: float = 1.0,
    ) -> None:
        """``budget``: the calls' budget when it is shared by every instance (``state.budget``);
        None: this process's own ``rate_share`` of Marketo's limits. ``background_share``: the part
        of it background work (``http.ratebudget.background_work``) may use."""
        base = base_url.strip().rstrip("/")
        if not base.startswith(("https://", "http://")):
            raise ConfigError(["MARKETO_BASE_URL: must be an http(s) URL"])
        if not client_id:
            raise ConfigError(["MARKETO_CLIENT_ID: missing"])
        secret = client_secret if isinstance(client_secret, SecretStr) else SecretStr(client_secret)
        self._base = base
        self._budget: CallBudget = budget or RateBudget(
            RATE_LIMIT.share(rate_share), sleep=sleep, clock=clock, background_share=background_share
        )
        auth = MarketoTokenAuth(
            base_url=base, client_id=client_id, client_secret=secret, clock=clock, counters=counters
        )
        self._auth = auth
        self._sender = RetryingSender(
            http,
            auth,
            service=SERVICE,
            policy=retry_policy,
            sleep=sleep,
            clock=clock,
            counters=counters,
            budget=self._budget,
        )
        self._cache_lock = threading.Lock()
        self._describe: dict[str, MarketoFieldMeta] | None = None
        self._activity_types: dict[str, tuple[int, str]] = {}

    @property
    def rate_budget(self) -> CallBudget:
        return self._budget

    def with_retry_policy(self, policy: RetryPolicy) -> MarketoClient:
        """This client with other retry rules (e.g. a webhook's short patience), sharing its token,
        rate budget, caches and counters."""
        other = copy.copy(self)
        other._sender = self._sender.with_policy(policy)
        return other

    # -- the one request path and the one paging loop ------------------------------------------

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        idempotent: bool,
        timeout: httpx.Timeout = TIMEOUT_DEFAULT,
        **body: Unpack[RequestBody],
    ) -> Envelope:
        def read(response: httpx.Response) -> Envelope:
            envelope = read_envelope(response, operation=operation)
            if envelope.warnings:
                log.debug("marketo %s: %d warning(s)", operation, len(envelope.warnings))
            return envelope

        return self._sender.send(
            operation, method, self._base + path, read, idempotent=idempotent, timeout=timeout, **body
        )

    def _pages(
        self,
        operation: str,
        path: str,
        params: Mapping[str, str],
        *,
        key: Callable[[Mapping[str, Any]], str | None],
        token: str | None = None,
        timeout: httpx.Timeout = TIMEOUT_DEFAULT,
    ) -> Iterator[Page]:
        """Every page of a ``nextPageToken``-paged GET; one past the URL limit goes as a form POST."""

        def fetch(page_token: str | None) -> Envelope:
            page_params = {**params, "nextPageToken": page_token} if page_token else dict(params)
            if len(self._base) + len(path) + 1 + len(str(httpx.QueryParams(page_params))) > MAX_URL_CHARS:
                return self._call(
                    operation,
                    "POST",
                    path,
                    params={"_method": "GET"},
                    data=page_params,
                    timeout=timeout,
                    idempotent=True,
                )
            return self._call(operation, "GET", path, params=page_params, timeout=timeout, idempotent=True)

        return pages(fetch, operation=operation, key=key, token=token)

    # -- activities and paging tokens ------------------------------------------------------------

    def get_paging_token(self, since: datetime) -> str:
        """A paging token for activities from ``since`` (timezone-aware) on."""
        if since.tzinfo is None:
            raise ValueError("since must be timezone-aware")
        envelope = self._call(
            "get_paging_token",
            "GET",
            "/rest/v1/activities/pagingtoken.json",
            params={"sinceDatetime": since.isoformat(timespec="seconds")},
            timeout=TIMEOUT_PAGING_TOKEN,
            idempotent=True,
        )
        if not envelope.next_page_token:
            raise ApiError(
                "marketo get_paging_token: no nextPageToken", service=SERVICE, request_id=envelope.request_id
            )
        return envelope.next_page_token

    def iter_lead_changes(
        self, token: str, *, fields: Sequence[str], batch_size: int = BATCH_SIZE
    ) -> Iterator[LeadChangesPage]:
        """Get Lead Changes from ``token``: every page, activities de-duplicated by ``marketoGUID``."""
        params = {"fields": _records.field_names(fields), "batchSize": str(_batch_size(batch_size))}
        operation = "get_lead_changes"
        for page in self._activity_pages(operation, "/rest/v1/activities/leadchanges.json", params, token):
            changes = _read_activities(operation, page, _records.lead_change)
            yield LeadChangesPage(tuple(changes), page.watermark, page.more_result)

    def iter_deleted_leads(self, token: str, *, batch_size: int = BATCH_SIZE) -> Iterator[DeletedLeadsPage]:
        """Get Deleted Leads from ``token`` (Marketo keeps them about 14 days), de-duplicated by GUID."""
        params = {"batchSize": str(_batch_size(batch_size))}
        operation = "get_deleted_leads"
        for page in self._activity_pages(operation, "/rest/v1/activities/deletedleads.json", params, token):
            deleted = _read_activities(operation, page, _records.deleted_lead)
            yield DeletedLeadsPage(tuple(deleted), page.watermark, page.more_result)

    def _activity_pages(self, operation: str, path: str, params: Mapping[str, str], token: str) -> Iterator[Page]:
        if not token:
            raise ValueError("a paging token is required")
        return self._pages(operation, path, params, key=_records.activity_guid, token=token)

    # -- leads -------------------------------------------------------------------------------------

    def get_leads(self, ids: Sequence[int], *, fields: Sequence[str]) -> list[dict[str, Any]]:
        """The leads with these ids (missing ones are simply absent), 300 ids per call."""
        field_list = _records.field_names(fields)
        found: list[dict[str, Any]] = []
        for chunk in _records.chunks(_records.lead_ids(ids), BATCH_SIZE):
            found.extend(
                self._query_leads(
                    "get_leads", filter_type="id", values=[str(value) for value in chunk], fields=field_list
                )
            )
        return found

    def find_leads(self, field: str, values: Sequence[str], *, fields: Sequence[str]) -> list[dict[str, Any]]:
        """Leads whose ``field`` (a searchable field: email, microsoftId, ...) equals one of ``values``.

        Marketo's ``filterValues`` is a comma-separated list with no escaping, so a value holding
        a comma cannot be expressed: it is refused with a ``RecordError`` (never split into two
        values, which would widen the query). Blank values are refused too.
        """
        if not isinstance(field, str) or not _records.FIELD_NAME.match(field):
            raise ValueError(f"not a Marketo field name: {field!r:.60}")
        field_list = _records.field_names(fields)
        if isinstance(values, str):
            raise TypeError("values must be a sequence of strings, not one string")
        problems = []
        for position, value in enumerate(values):
            if not isinstance(value, str):
                problems.append(f"value #{position} for {field} is not a string")
            elif "," in value:
                problems.append(f"value #{position} for {field} contains a comma, which Marketo filters cannot express")
            elif not value.strip():
                problems.append(f"value #{position} for {field} is blank")
        if problems:
            raise RecordError(problems, code="invalid_filter_value")
        unique = list(dict.fromkeys(values))
        by_id: dict[Any, dict[str, Any]] = {}
        for chunk in _records.chunks(unique, BATCH_SIZE):
            for record in self._query_leads("find_leads", filter_type=field, values=chunk, fields=field_list):
                by_id.setdefault(record.get("id"), record)
        return list(by_id.values())

    def _query_leads(
        self, operation: str, *, filter_type: str, values: Sequence[str], fields: str
    ) -> Iterator[dict[str, Any]]:
        """Get Leads by Filter Type over one chunk of values, all pages."""
        params = {
            "filterType": filter_type,
            "filterValues": ",".join(values),
            "fields": fields,
            "batchSize": str(BATCH_SIZE),
        }
        requested = fields.split(",")
        for page in self._pages(operation, "/rest/v1/leads.json", params, key=_lead_key, timeout=TIMEOUT_QUERY_LEADS):
            for record in page.items:
                for name in requested:
                    record.setdefault(name, None)  # Marketo may omit a requested field that is empty
                yield record

    def sync_leads(
        self, records: Sequence[Mapping[str, Any]], *, action: str = "updateOnly", lookup_field: str = "id"
    ) -> list[LeadWriteResult]:
        """Create/update leads, 300 per call; one result per input record, in input order.

        A record without its lookup field is refused here (``INVALID_INPUT``) and not sent.
        Only ``updateOnly``/``createOrUpdate`` calls are resent after an uncertain failure.
        """
        if action not in SYNC_ACTIONS:
            raise ValueError(f"unknown Sync Leads action: {action!r}")
        if not _records.FIELD_NAME.match(lookup_field):
            raise ValueError(f"not a Marketo field name: {lookup_field!r:.60}")
        results: dict[int, LeadWriteResult] = {}
        sendable: list[tuple[int, Mapping[str, Any]]] = []
        for index, record in enumerate(records):
            if record.get(lookup_field) in (None, ""):
                results[index] = LeadWriteResult(
                    index,
                    WriteStatus.SKIPPED,
                    LeadOutcome.INVALID_INPUT,
                    reasons=(Reason(None, f"missing lookup field '{lookup_field}'"),),
                )
            else:
                sendable.append((index, record))

        def send(chunk: Sequence[tuple[int, Mapping[str, Any]]]) -> list[LeadWriteResult]:
            envelope = self._call(
                "sync_leads",
                "POST",
                "/rest/v1/leads.json",
                json={"action": action, "lookupField": lookup_field, "input": [dict(r) for _, r in chunk]},
                timeout=TIMEOUT_SYNC_LEADS,
                idempotent=action in IDEMPOTENT_ACTIONS,
            )
            items = _per_record(envelope, len(chunk), "sync_leads")
            return [_records.lead_result(index, item) for (index, _), item in zip(chunk, items, strict=True)]

        # Chunks go side by side up to this app's in-flight share (the rate budget holds each call to
        # it and to the calls-per-20-s window).
        chunks = list(_records.chunks(sendable, BATCH_SIZE))
        for written in in_parallel(send, chunks, workers=self.rate_budget.limit.max_concurrent, name="marketo-sync"):
            for result in written:
                results[result.index] = result
        return [results[index] for index in range(len(records))]

    def delete_leads(self, ids: Sequence[int]) -> list[LeadWriteResult]:
        """Delete leads by id, 300 per call; one result per distinct id, in input order."""
        results: list[LeadWriteResult] = []
        for chunk in _records.chunks(_records.lead_ids(ids), BATCH_SIZE):
            envelope = self._call(
                "delete_leads",
                "POST",
                "/rest/v1/leads/delete.json",
                json={"input": [{"id": value} for value in chunk]},
                idempotent=True,  # deleting twice only earns "not found" the second time
            )
            for item in _per_record(envelope, len(chunk), "delete_leads"):
                results.append(_records.lead_result(len(results), item))
        return results

    # -- Bulk Lead Extract (api-protocols §A11) ------------------------------------------------------

    def create_lead_export(self, fields: Sequence[str], *, created_from: datetime, created_to: datetime) -> ExportJob:
        """A bulk export job of persons created in ``[created_from, created_to]`` (≤ 31 days), CSV."""
        body = _bulk.window_body(_records.field_names(fields).split(","), created_from, created_to)
        envelope = self._call(
            "bulk_export_create", "POST", "/bulk/v1/leads/export/create.json", json=body, idempotent=False
        )
        return self._export_job("bulk_export_create", envelope)

    def enqueue_lead_export(self, export_id: str) -> ExportJob:
        """Queue a created job (at most 10 queued, 2 processing per instance; 1029 past that)."""
        path = _bulk.export_path(export_id, "enqueue.json")
        return self._export_job("bulk_export_enqueue", self._call("bulk_export_enqueue", "POST", path, idempotent=True))

    def get_lead_export(self, export_id: str) -> ExportJob:
        """A job's status (Marketo refreshes it at most once a minute)."""
        path = _bulk.export_path(export_id, "status.json")
        return self._export_job("bulk_export_status", self._call("bulk_export_status", "GET", path, idempotent=True))

    def read_lead_export(self, export_id: str, sink: Callable[[Iterator[dict[str, str | None]]], T]) -> T:
        """``sink(rows)`` over a Completed job's file, streamed: the file is never held in memory.

        Rows are ``{field: value}`` with ``None`` for empty. A connection that breaks mid-file is
        retried from the start, so ``sink`` must tolerate seeing rows again (e.g. upsert by id)."""
        url = self._base + _bulk.export_path(export_id, "file.json")

        def read(response: httpx.Response) -> T:
            _bulk.check_file_answer(response, export_id)
            return sink(_bulk.iter_csv_rows(response))

        sender = dataclasses.replace(self._sender, auth=StreamingTokenAuth(self._auth))
        return sender.send(
            "bulk_export_file", "GET", url, read, idempotent=True, timeout=TIMEOUT_BULK_FILE, stream=True
        )

    def _export_job(self, operation: str, envelope: Envelope) -> ExportJob:
        if len(envelope.result) != 1:
            raise ApiError(
                f"marketo {operation}: {len(envelope.result)} jobs in the answer",
                service=SERVICE,
                request_id=envelope.request_id,
            )
        return ExportJob.of(envelope.result[0])

    # -- custom activities ---------------------------------------------------------------------------

    def add_activities(self, activities: Sequence[CustomActivity]) -> list[ActivityResult]:
        """Add custom activities, 300 per call; one result per input, in input order.

        Never resent after an uncertain failure: a second attempt would log the activity twice.
        """
        results: list[ActivityResult] = []
        now = datetime.now(UTC)
        for chunk in _records.chunks(list(activities), BATCH_SIZE):
            body = [
                {
                    "leadId": activity.lead_id,
                    "activityDate": (activity.activity_date or now).isoformat(timespec="seconds"),
                    "activityTypeId": activity.activity_type_id,
                    "primaryAttributeValue": activity.primary_attribute_value,
                    "attributes": [{"apiName": name, "value": value} for name, value in activity.attributes.items()],
                }
                for activity in chunk
            ]
            envelope = self._call(
                "add_activities",
                "POST",
                "/rest/v1/activities/external.json",
                json={"input": body},
                timeout=TIMEOUT_ADD_ACTIVITIES,
                idempotent=False,
            )
            for item in _per_record(envelope, len(chunk), "add_activities"):
                results.append(_records.activity_result(len(results), item))
        return results

    def get_activity_type_id(self, api_name: str) -> int:
        """The instance-specific id of a custom activity type (read once, cached)."""
        with self._cache_lock:
            known = self._activity_types.get(api_name)
        if known is None:
            types: dict[str, tuple[int, str]] = {}
            for page in self._pages(
                "get_activity_types", "/rest/v1/activities/external/types.json", {}, key=_activity_type_key
            ):
                for item in page.items:
                    type_id = _records.optional_int(item.get("id"))
                    if item.get("apiName") and type_id is not None:
                        types[str(item["apiName"])] = (type_id, str(item.get("status", "")).lower())
            with self._cache_lock:
                self._activity_types.update(types)
                known = self._activity_types.get(api_name)
        if known is None:
            raise ConfigError([f"Marketo custom activity type '{api_name}' does not exist (create and approve it)"])
        type_id, status = known
        if status and status not in APPROVED_TYPE_STATUSES:
            raise ConfigError([f"Marketo custom activity type '{api_name}' is {status}, not approved"])
        return type_id

    # -- schema and usage ----------------------------------------------------------------------------

    def describe(self, *, refresh: bool = False) -> dict[str, MarketoFieldMeta]:
        """Every person field usable over REST, by REST name (read once and cached; ``refresh``
        reads it again, e.g. after Marketo refused a field name)."""
        with self._cache_lock:
            if self._describe is not None and not refresh:
                return self._describe
        try:
            envelope = self._call("describe", "GET", "/rest/v1/leads/describe2.json", idempotent=True)
            described = _records.describe2_fields(envelope.result)
        except ApiError as err:
            if err.status not in (404, 405) and err.code != "610":
                raise
            # describe2 unknown here: fall back to the older describe.json.
            envelope = self._call("describe", "GET", "/rest/v1/leads/describe.json", idempotent=True)
            described = _records.describe_fields(envelope.result)
        with self._cache_lock:
            self._describe = described
        return described

    def get_usage_today(self) -> int:
        """API calls the whole instance has used today (all integrations), from stats/usage.

        Each day of the answer has ``total`` and ``users: [{"userId", "count"}]`` (Marketo's
        Get Daily Usage); without a ``total`` the users' ``count`` values are summed."""
        envelope = self._call("get_usage", "GET", "/rest/v1/stats/usage.json", idempotent=True)
        total = 0
        for day in envelope.result:
            if day.get("total") is not None:
                total += int(day["total"])
            else:
                total += sum(int(user.get("count") or 0) for user in day.get("users") or [])
        return total


def _batch_size(batch_size: int) -> int:
    if not 1 <= batch_size <= BATCH_SIZE:
        raise ValueError(f"batch_size must be 1..{BATCH_SIZE}")
    return batch_size


def _lead_key(record: Mapping[str, Any]) -> str | None:
    return str(record["id"]) if record.get("id") is not None else None


def _activity_type_key(item: Mapping[str, Any]) -> str | None:
    return str(item["apiName"]) if item.get("apiName") else None


def _per_record(envelope: Envelope, expected: int, operation: str) -> list[dict[str, Any]]:
    if len(envelope.result) != expected:
        raise ApiError(
            f"marketo {operation}: {len(envelope.result)} results for {expected} records",
            service=SERVICE,
            request_id=envelope.request_id,
        )
    return envelope.result


def _read_activities(operation: str, page: Page, parse: Callable[[Mapping[str, Any]], T | None]) -> list[T]:
    """The page's items that ``parse`` can read; the others are counted in the log and skipped."""
    read = [parse(item) for item in page.items]
    found = [activity for activity in read if activity is not None]
    if len(found) < len(read):
        log.warning("marketo %s: %d unreadable activit(ies) skipped", operation, len(read) - len(found))
    return found
