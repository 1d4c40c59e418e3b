"""``MarketoClient``: the only code that speaks HTTP to the Marketo REST API.

It owns the token (``_marketo_auth``), the envelope (``_marketo_envelope``), a client-side
rate budget (a share of 100 calls/20 s and 10 in flight), retries through the one loop in
``_retry``, paging with loop detection, 300-record batching and the mapping of per-record
verdicts to typed results, in input order. Callers get typed pages and results; the only raw
dicts that leave are lead field values, keyed by Marketo REST field names. It does not decide
anything about syncing, and it never logs tokens, secrets or person data (only ids and counts).
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import httpx
from pydantic import SecretStr

from sync_core.core.errors import ApiError, ConfigError, RecordError, TransientError
from sync_core.core.schema import MarketoFieldMeta
from sync_core.http.counters import OPERATION_KEY, ApiCounters
from sync_core.http.ratebudget import RateBudget
from sync_core.http.retry import (
    MARKETO_RETRY,
    Failure,
    RetryableFailure,
    RetryPolicy,
    call_with_retries,
    transport_failure,
)
from sync_core.marketo._auth import MarketoTokenAuth
from sync_core.marketo._envelope import Envelope, read_envelope

log = logging.getLogger(__name__)

SERVICE = "marketo"
BATCH_SIZE = 300  # records per Lead-DB call, filterValues per query, activities per add
RATE_LIMIT_CALLS = 100  # per instance, per 20 s, shared with every other integration
RATE_LIMIT_WINDOW = 20.0
CONCURRENCY_LIMIT = 10
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

_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


# ---------------------------------------------------------------------------------------------
# Typed results


class WriteStatus(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    SKIPPED = "skipped"


class LeadOutcome(StrEnum):
    """What a per-record verdict means for the sync, from Marketo's record-level codes."""

    OK = "ok"
    NOT_FOUND = "not_found"  # 1004, 1013
    ALREADY_EXISTS = "already_exists"  # 1005
    AMBIGUOUS = "ambiguous"  # 1007: several leads match the lookup
    INVALID_VALUE = "invalid_value"  # 1001, 1003
    MISSING_VALUE = "missing_value"  # 1002
    UNKNOWN_FIELD = "unknown_field"  # 1006
    ACCESS_DENIED = "access_denied"  # 1008-1010 (partitions)
    INVALID_INPUT = "invalid_input"  # refused by this client before sending
    OTHER = "other"


OUTCOME_BY_CODE: dict[str, LeadOutcome] = {
    "1001": LeadOutcome.INVALID_VALUE,
    "1002": LeadOutcome.MISSING_VALUE,
    "1003": LeadOutcome.INVALID_VALUE,
    "1004": LeadOutcome.NOT_FOUND,
    "1005": LeadOutcome.ALREADY_EXISTS,
    "1006": LeadOutcome.UNKNOWN_FIELD,
    "1007": LeadOutcome.AMBIGUOUS,
    "1008": LeadOutcome.ACCESS_DENIED,
    "1009": LeadOutcome.ACCESS_DENIED,
    "1010": LeadOutcome.ACCESS_DENIED,
    "1013": LeadOutcome.NOT_FOUND,
}


@dataclass(frozen=True, slots=True)
class Reason:
    code: str | None
    message: str


@dataclass(frozen=True, slots=True)
class LeadWriteResult:
    """The verdict on one input record of ``sync_leads``/``delete_leads``; ``index`` is its input position."""

    index: int
    status: WriteStatus
    outcome: LeadOutcome
    id: int | None = None
    reasons: tuple[Reason, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is not WriteStatus.SKIPPED


@dataclass(frozen=True, slots=True)
class FieldChange:
    name: str
    new_value: Any
    old_value: Any


@dataclass(frozen=True, slots=True)
class LeadChange:
    """One Change Data Value (13) or New Lead (12) activity from Get Lead Changes."""

    id: int | None
    marketo_guid: str
    lead_id: int
    activity_date: datetime
    type_id: int
    fields: tuple[FieldChange, ...]
    attributes: Mapping[str, Any]  # Source, Reason, ... (our own writes say "Web service API")


@dataclass(frozen=True, slots=True)
class LeadChangesPage:
    activities: tuple[LeadChange, ...]
    next_page_token: str  # the watermark to store once this page is processed
    more_result: bool


@dataclass(frozen=True, slots=True)
class DeletedLead:
    id: int | None
    marketo_guid: str
    lead_id: int
    activity_date: datetime


@dataclass(frozen=True, slots=True)
class DeletedLeadsPage:
    deleted: tuple[DeletedLead, ...]
    next_page_token: str
    more_result: bool


@dataclass(frozen=True, slots=True)
class CustomActivity:
    """One custom activity to add to a person's activity log (e.g. ``microsoftSyncFailed``)."""

    lead_id: int
    activity_type_id: int
    primary_attribute_value: str
    attributes: Mapping[str, Any] = field(default_factory=dict)  # attribute apiName -> value
    activity_date: datetime | None = None  # None: now


class ActivityStatus(StrEnum):
    ADDED = "added"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class ActivityResult:
    index: int
    status: ActivityStatus
    outcome: LeadOutcome
    id: int | None = None
    marketo_guid: str | None = None
    reasons: tuple[Reason, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is ActivityStatus.ADDED


# ---------------------------------------------------------------------------------------------
# Small readers of Marketo's JSON (the raw dicts stop here)


def _field_names(fields: Sequence[str]) -> str:
    if isinstance(fields, str) or not fields:
        raise ValueError("fields must be a non-empty sequence of Marketo REST field names")
    for name in fields:
        if not isinstance(name, str) or not _FIELD_NAME.match(name):
            raise ValueError(f"not a Marketo field name: {name!r:.60}")
    return ",".join(dict.fromkeys(fields))


def _lead_ids(ids: Sequence[int]) -> list[int]:
    unique: dict[int, None] = {}
    for value in ids:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"not a Marketo lead id: {value!r:.40}")
        unique[value] = None
    return list(unique)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _parse_datetime(value: Any) -> datetime:
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _optional_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


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


def _activity_identity(item: Mapping[str, Any]) -> tuple[int | None, str, int, datetime, int] | None:
    """(id, marketoGUID, leadId, activityDate, activityTypeId), or None when the item is unusable."""
    activity_id = _optional_int(item.get("id"))
    guid = item.get("marketoGUID")
    guid = str(guid) if guid not in (None, "") else (str(activity_id) if activity_id is not None else None)
    lead_id = _optional_int(item.get("leadId"))
    type_id = _optional_int(item.get("activityTypeId"))
    if guid is None or lead_id is None or type_id is None:
        return None
    try:
        when = _parse_datetime(item.get("activityDate"))
    except ValueError:
        return None
    return activity_id, guid, lead_id, when, type_id


def _lead_change(item: Mapping[str, Any]) -> LeadChange | None:
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


def _deleted_lead(item: Mapping[str, Any]) -> DeletedLead | None:
    identity = _activity_identity(item)
    if identity is None:
        return None
    activity_id, guid, lead_id, when, _ = identity
    return DeletedLead(activity_id, guid, lead_id, when)


# ---------------------------------------------------------------------------------------------
# The client


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
    ) -> None:
        base = base_url.strip().rstrip("/")
        if not base.startswith(("https://", "http://")):
            raise ConfigError(["MARKETO_BASE_URL: must be an http(s) URL"])
        if not client_id:
            raise ConfigError(["MARKETO_CLIENT_ID: missing"])
        secret = client_secret if isinstance(client_secret, SecretStr) else SecretStr(client_secret)
        self._http = http
        self._base = base
        self._counters = counters
        self._sleep = sleep
        self._clock = clock
        self._retry_policy = retry_policy
        self._auth = MarketoTokenAuth(
            base_url=base, client_id=client_id, client_secret=secret, clock=clock, counters=counters
        )
        self._budget = RateBudget.share_of(
            rate_share,
            max_calls=RATE_LIMIT_CALLS,
            per_seconds=RATE_LIMIT_WINDOW,
            max_concurrent=CONCURRENCY_LIMIT,
            sleep=sleep,
            clock=clock,
        )
        self._cache_lock = threading.Lock()
        self._describe: dict[str, MarketoFieldMeta] | None = None
        self._activity_types: dict[str, tuple[int, str]] = {}

    @property
    def rate_budget(self) -> RateBudget:
        return self._budget

    def with_retry_policy(self, policy: RetryPolicy) -> MarketoClient:
        """This client with other retry rules (e.g. a webhook's short patience), sharing its token,
        rate budget, caches and counters."""
        other = copy.copy(self)
        other._retry_policy = policy
        return other

    # -- the one request path -----------------------------------------------------------------

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        timeout: httpx.Timeout = TIMEOUT_DEFAULT,
        idempotent: bool,
    ) -> Envelope:
        url = self._base + path

        def attempt() -> Envelope:
            request = self._http.build_request(
                method,
                url,
                params=params,
                json=json_body,
                data=form,
                timeout=timeout,
                extensions={OPERATION_KEY: operation},
            )
            with self._budget.slot():
                try:
                    response = self._http.send(request, auth=self._auth)
                except httpx.TransportError as err:
                    raise transport_failure(err, service=SERVICE, operation=operation) from err
                except TransientError as err:
                    # Identity was unreachable: the API request itself was never sent.
                    raise RetryableFailure(err, failure=Failure.REFUSED) from err
            envelope = read_envelope(response, operation=operation)
            if envelope.warnings:
                log.debug("marketo %s: %d warning(s)", operation, len(envelope.warnings))
            return envelope

        return call_with_retries(
            attempt,
            service=SERVICE,
            operation=operation,
            idempotent=idempotent,
            policy=self._retry_policy,
            sleep=self._sleep,
            clock=self._clock,
            counters=self._counters,
        )

    def _query_leads(
        self, operation: str, *, filter_type: str, values: Sequence[str], fields: str
    ) -> Iterator[dict[str, Any]]:
        """Get Leads by Filter Type over one chunk of values, all pages; long queries go as a form POST."""
        params: dict[str, str] = {
            "filterType": filter_type,
            "filterValues": ",".join(values),
            "fields": fields,
            "batchSize": str(BATCH_SIZE),
        }
        requested = fields.split(",")
        seen_tokens: set[str] = set()
        while True:
            long_url = len(self._base) + 20 + len(str(httpx.QueryParams(params))) > MAX_URL_CHARS
            if long_url:
                envelope = self._call(
                    operation,
                    "POST",
                    "/rest/v1/leads.json",
                    params={"_method": "GET"},
                    form=params,
                    timeout=TIMEOUT_QUERY_LEADS,
                    idempotent=True,
                )
            else:
                envelope = self._call(
                    operation, "GET", "/rest/v1/leads.json", params=params, timeout=TIMEOUT_QUERY_LEADS, idempotent=True
                )
            for record in envelope.result:
                for name in requested:
                    record.setdefault(name, None)  # Marketo may omit a requested field that is empty
                yield record
            token = envelope.next_page_token
            if not envelope.more_result or not token:
                return
            if token in seen_tokens:
                raise ApiError(f"marketo {operation}: page token repeated", service=SERVICE, code="loop")
            seen_tokens.add(token)
            params["nextPageToken"] = token

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
        if not 1 <= batch_size <= BATCH_SIZE:
            raise ValueError(f"batch_size must be 1..{BATCH_SIZE}")
        params = {"fields": _field_names(fields), "batchSize": str(batch_size)}
        seen: set[str] = set()
        for envelope, next_token, fresh in self._dedup_pages(
            "get_lead_changes", "/rest/v1/activities/leadchanges.json", token, params, _lead_change, seen
        ):
            yield LeadChangesPage(tuple(fresh), next_token, envelope.more_result)

    def iter_deleted_leads(self, token: str, *, batch_size: int = BATCH_SIZE) -> Iterator[DeletedLeadsPage]:
        """Get Deleted Leads from ``token`` (Marketo keeps them about 14 days), de-duplicated by GUID."""
        if not 1 <= batch_size <= BATCH_SIZE:
            raise ValueError(f"batch_size must be 1..{BATCH_SIZE}")
        seen: set[str] = set()
        for envelope, next_token, fresh in self._dedup_pages(
            "get_deleted_leads",
            "/rest/v1/activities/deletedleads.json",
            token,
            {"batchSize": str(batch_size)},
            _deleted_lead,
            seen,
        ):
            yield DeletedLeadsPage(tuple(fresh), next_token, envelope.more_result)

    def _dedup_pages(
        self,
        operation: str,
        path: str,
        token: str,
        params: Mapping[str, str],
        parse: Callable[[Mapping[str, Any]], Any],
        seen: set[str],
    ) -> Iterator[tuple[Envelope, str, list[Any]]]:
        if not token:
            raise ValueError("a paging token is required")
        current = token
        seen_tokens = {token}
        while True:
            envelope = self._call(operation, "GET", path, params={**params, "nextPageToken": current}, idempotent=True)
            fresh: list[Any] = []
            skipped = 0
            for item in envelope.result:
                activity = parse(item)
                if activity is None:
                    skipped += 1
                    continue
                if activity.marketo_guid in seen:
                    continue
                seen.add(activity.marketo_guid)
                fresh.append(activity)
            if skipped:
                log.warning("marketo %s: %d unreadable activit(ies) skipped", operation, skipped)
            next_token = envelope.next_page_token
            if next_token is None:
                if envelope.more_result:
                    raise ApiError(
                        f"marketo {operation}: moreResult without nextPageToken",
                        service=SERVICE,
                        request_id=envelope.request_id,
                    )
                next_token = current
            if envelope.more_result and next_token in seen_tokens and not fresh:
                raise ApiError(
                    f"marketo {operation}: nextPageToken repeated with no new activities (pagination loop)",
                    service=SERVICE,
                    code="loop",
                    request_id=envelope.request_id,
                )
            seen_tokens.add(next_token)
            yield envelope, next_token, fresh
            if not envelope.more_result:
                return
            current = next_token

    # -- leads -------------------------------------------------------------------------------------

    def get_leads(self, ids: Sequence[int], *, fields: Sequence[str]) -> list[dict[str, Any]]:
        """The leads with these ids (missing ones are simply absent), 300 ids per call."""
        field_list = _field_names(fields)
        found: list[dict[str, Any]] = []
        for chunk in _chunks(_lead_ids(ids), BATCH_SIZE):
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
        if not isinstance(field, str) or not _FIELD_NAME.match(field):
            raise ValueError(f"not a Marketo field name: {field!r:.60}")
        field_list = _field_names(fields)
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
        for chunk in _chunks(unique, BATCH_SIZE):
            for record in self._query_leads("find_leads", filter_type=field, values=chunk, fields=field_list):
                by_id.setdefault(record.get("id"), record)
        return list(by_id.values())

    def sync_leads(
        self, records: Sequence[Mapping[str, Any]], *, action: str = "updateOnly", lookup_field: str = "id"
    ) -> list[LeadWriteResult]:
        """Create/update leads, 300 per call; one result per input record, in input order.

        A record without its lookup field is refused here (``INVALID_INPUT``) and not sent.
        Only ``updateOnly``/``createOrUpdate`` calls are resent after an uncertain failure.
        """
        if action not in SYNC_ACTIONS:
            raise ValueError(f"unknown Sync Leads action: {action!r}")
        if not _FIELD_NAME.match(lookup_field):
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
        for chunk in _chunks(sendable, BATCH_SIZE):
            envelope = self._call(
                "sync_leads",
                "POST",
                "/rest/v1/leads.json",
                json_body={"action": action, "lookupField": lookup_field, "input": [dict(r) for _, r in chunk]},
                timeout=TIMEOUT_SYNC_LEADS,
                idempotent=action in IDEMPOTENT_ACTIONS,
            )
            for (index, _), item in zip(chunk, self._per_record(envelope, len(chunk), "sync_leads"), strict=True):
                results[index] = self._lead_result(index, item)
        return [results[index] for index in range(len(records))]

    def delete_leads(self, ids: Sequence[int]) -> list[LeadWriteResult]:
        """Delete leads by id, 300 per call; one result per distinct id, in input order."""
        unique = _lead_ids(ids)
        results: list[LeadWriteResult] = []
        for chunk in _chunks(unique, BATCH_SIZE):
            envelope = self._call(
                "delete_leads",
                "POST",
                "/rest/v1/leads/delete.json",
                json_body={"input": [{"id": value} for value in chunk]},
                idempotent=True,  # deleting twice only earns "not found" the second time
            )
            for item in self._per_record(envelope, len(chunk), "delete_leads"):
                results.append(self._lead_result(len(results), item))
        return results

    @staticmethod
    def _per_record(envelope: Envelope, expected: int, operation: str) -> list[dict[str, Any]]:
        if len(envelope.result) != expected:
            raise ApiError(
                f"marketo {operation}: {len(envelope.result)} results for {expected} records",
                service=SERVICE,
                request_id=envelope.request_id,
            )
        return envelope.result

    @staticmethod
    def _lead_result(index: int, item: Mapping[str, Any]) -> LeadWriteResult:
        raw_status = str(item.get("status", "")).lower()
        try:
            status = WriteStatus(raw_status)
        except ValueError:
            status = WriteStatus.SKIPPED
        reasons = _reasons(item)
        if status is WriteStatus.SKIPPED and not reasons:
            reasons = (Reason(None, f"status {raw_status or 'missing'}"),)
        outcome = LeadOutcome.OK if status is not WriteStatus.SKIPPED else _outcome(reasons)
        return LeadWriteResult(index, status, outcome, _optional_int(item.get("id")), reasons)

    # -- custom activities ---------------------------------------------------------------------------

    def add_activities(self, activities: Sequence[CustomActivity]) -> list[ActivityResult]:
        """Add custom activities, 300 per call; one result per input, in input order.

        Never resent after an uncertain failure: a second attempt would log the activity twice.
        """
        results: list[ActivityResult] = []
        now = datetime.now(UTC)
        for chunk in _chunks(list(activities), BATCH_SIZE):
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
                json_body={"input": body},
                timeout=TIMEOUT_ADD_ACTIVITIES,
                idempotent=False,
            )
            for item in self._per_record(envelope, len(chunk), "add_activities"):
                raw_status = str(item.get("status", "")).lower()
                status = ActivityStatus.ADDED if raw_status == "added" else ActivityStatus.SKIPPED
                reasons = _reasons(item)
                guid = item.get("marketoGUID")
                results.append(
                    ActivityResult(
                        index=len(results),
                        status=status,
                        outcome=LeadOutcome.OK if status is ActivityStatus.ADDED else _outcome(reasons),
                        id=_optional_int(item.get("id")),
                        marketo_guid=str(guid) if guid is not None else None,
                        reasons=reasons,
                    )
                )
        return results

    def get_activity_type_id(self, api_name: str) -> int:
        """The instance-specific id of a custom activity type (read once, cached)."""
        with self._cache_lock:
            known = self._activity_types.get(api_name)
        if known is None:
            types: dict[str, tuple[int, str]] = {}
            params: dict[str, str] = {}
            while True:
                envelope = self._call(
                    "get_activity_types",
                    "GET",
                    "/rest/v1/activities/external/types.json",
                    params=params,
                    idempotent=True,
                )
                for item in envelope.result:
                    type_id = _optional_int(item.get("id"))
                    if item.get("apiName") and type_id is not None:
                        types[str(item["apiName"])] = (type_id, str(item.get("status", "")).lower())
                if not envelope.more_result or not envelope.next_page_token:
                    break
                if params.get("nextPageToken") == envelope.next_page_token:
                    raise ApiError("marketo get_activity_types: page token repeated", service=SERVICE, code="loop")
                params = {"nextPageToken": envelope.next_page_token}
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
            described = self._read_describe2(envelope)
        except ApiError as err:
            if err.status not in (404, 405) and err.code != "610":
                raise
            # describe2 unknown here: fall back to the older describe.json.
            envelope = self._call("describe", "GET", "/rest/v1/leads/describe.json", idempotent=True)
            described = self._read_describe(envelope)
        with self._cache_lock:
            self._describe = described
        return described

    @staticmethod
    def _read_describe2(envelope: Envelope) -> dict[str, MarketoFieldMeta]:
        described: dict[str, MarketoFieldMeta] = {}
        for group in envelope.result:
            for item in group.get("fields") or []:
                if isinstance(item, dict) and item.get("name"):
                    name = str(item["name"])
                    described[name] = MarketoFieldMeta(
                        name=name,
                        data_type=str(item.get("dataType", "string")),
                        length=_optional_int(item.get("length")),
                        updateable=bool(item.get("updateable", True)),
                    )
        return described

    @staticmethod
    def _read_describe(envelope: Envelope) -> dict[str, MarketoFieldMeta]:
        described: dict[str, MarketoFieldMeta] = {}
        for item in envelope.result:
            rest = item.get("rest")
            if not isinstance(rest, dict) or not rest.get("name"):
                continue  # not usable over REST
            name = str(rest["name"])
            described[name] = MarketoFieldMeta(
                name=name,
                data_type=str(item.get("dataType", "string")),
                length=_optional_int(item.get("length")),
                updateable=not bool(rest.get("readOnly", False)),
            )
        return described

    def get_usage_today(self) -> int:
        """API calls the whole instance has used today (all integrations), from stats/usage."""
        envelope = self._call("get_usage", "GET", "/rest/v1/stats/usage.json", idempotent=True)
        total = 0
        for day in envelope.result:
            if day.get("total") is not None:
                total += int(day["total"])
            else:
                total += sum(int(user.get("numCalls", 0)) for user in day.get("users") or [])
        return total
