"""``DataverseClient``: the only code that speaks HTTP to the Dataverse Web API (v9.2).

It owns bearer tokens (``_dataverse_auth``), the standard OData headers, retries through the
one loop in ``_retry`` (429 by ``Retry-After``; 502/503/504 and dropped connections only for
idempotent requests), change-tracking reads with ``$deletedEntity`` rows and nextLink loop
detection, escaped ``$filter`` look-ups (``_odata``), single-record writes, bulk
``UpdateMultiple``/``UpsertMultiple``/``CreateMultiple`` with rejected batches re-sent as a
``$batch`` with continue-on-error so one bad record cannot stop the others, and cached table
metadata. Callers get typed pages and outcomes; rows are plain dicts keyed by column logical
names. It makes no sync decisions and never logs tokens or row values (only ids and counts).
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from azure.core.credentials import TokenCredential

from sync_core.core.errors import (
    ApiError,
    ConfigError,
    DeltaTokenExpiredError,
    RateLimitedError,
    RecordError,
    TransientError,
)
from sync_core.core.schema import AttributeMeta, EntityMeta, RequiredLevel
from sync_core.dataverse import odata as _odata
from sync_core.dataverse._auth import CredentialAuth
from sync_core.dataverse._batch import BatchPart, PartResponse, build_batch, read_batch
from sync_core.http.counters import OPERATION_KEY, ApiCounters
from sync_core.http.retry import (
    DATAVERSE_RETRY,
    Failure,
    RetryableFailure,
    RetryPolicy,
    call_with_retries,
    parse_retry_after,
    transport_failure,
)

log = logging.getLogger(__name__)

SERVICE = "dataverse"
API_PATH = "/api/data/v9.2"
MAX_BATCH_SIZE = 1000  # records per bulk message and requests per $batch
MAX_PAGE_SIZE = 5000  # odata.maxpagesize ceiling
FILTER_MAX_VALUES = 100  # values per "or" filter, and
FILTER_MAX_CHARS = 6000  # characters per filter, to keep URLs well under the limits
RETRYABLE_STATUS = frozenset({502, 503, 504})
RECORD_LEVEL_STATUS = frozenset({400, 404, 409, 412, 413})  # this record's fault, not the call's
SCHEMA_ERROR_CODES = frozenset({"0x80060888"})  # unknown property/segment: field map or schema drift
EXPIRED_VERSION_STAMP = "0x80044352"  # ExpiredVersionStamp: the delta token is too old
_EXPIRED_TEXT = re.compile(r"version stamp|expired|full sync", re.IGNORECASE)
_ENTITY_ID = re.compile(r"\(([0-9a-fA-F-]{36})\)\s*$")

TIMEOUT_READ = httpx.Timeout(120.0, connect=10.0)
TIMEOUT_WRITE = httpx.Timeout(180.0, connect=10.0)  # bulk messages run plug-ins for every record

BASE_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}


@dataclass(frozen=True, slots=True)
class DeltaPage:
    """One page of a change-tracking read. ``delta_link`` is set on the last page only."""

    rows: list[dict[str, Any]]
    deleted_ids: list[str]
    delta_link: str | None = None


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """The verdict on one input row of a bulk write; ``index`` is its position in the input."""

    index: int
    ok: bool
    id: str | None = None
    status: int | None = None
    code: str | None = None
    message: str | None = None

    @property
    def transient(self) -> bool:
        """Failed for a reason a later attempt may not meet (throttled, outage)."""
        return not self.ok and self.status is not None and (self.status == 429 or self.status >= 500)


class _Write(StrEnum):
    CREATE = "CreateMultiple"
    UPDATE = "UpdateMultiple"
    UPSERT = "UpsertMultiple"


@dataclass(frozen=True)
class _EntityRef:
    logical_name: str
    entity_set: str
    primary_id: str


@dataclass(frozen=True)
class _Target:
    """One input row of a bulk write: its values, how to address it alone, and its position."""

    index: int
    values: dict[str, Any]  # columns to write (key columns of an upsert left to the address)
    segment: str | None  # leads(<guid>) or leads(emailaddress1='…'); None for a create
    row_id: str | None  # primary key when known

    @classmethod
    def of(
        cls, kind: _Write, ref: _EntityRef, index: int, row: Mapping[str, Any], key: tuple[str, ...] | None
    ) -> _Target:
        values = {name: value for name, value in row.items() if not name.startswith("@")}
        if kind is _Write.CREATE:
            return cls(index, values, None, None)
        row_id: str | None
        if key is None:
            if not row.get(ref.primary_id):
                raise ValueError(f"row has no {ref.primary_id}")
            row_id = _odata.guid_literal(str(row[ref.primary_id]))
            segment = _odata.key_segment(ref.entity_set, {"": row_id})
            key_columns: tuple[str, ...] = (ref.primary_id,)
        else:
            missing = [column for column in key if row.get(column) in (None, "")]
            if missing:
                raise ValueError(f"row has no value for key column(s) {', '.join(missing)}")
            segment = _odata.key_segment(ref.entity_set, {column: row[column] for column in key})
            row_id = _odata.guid_literal(str(row[ref.primary_id])) if row.get(ref.primary_id) else None
            key_columns = key
        # The address carries the key; the service refuses (or ignores) it repeated in the record.
        values = {name: value for name, value in values.items() if name not in key_columns}
        return cls(index, values, segment, row_id)

    def message_body(self, kind: _Write, ref: _EntityRef) -> dict[str, Any]:
        """This row as a target of CreateMultiple / UpdateMultiple / UpsertMultiple."""
        body: dict[str, Any] = {"@odata.type": f"Microsoft.Dynamics.CRM.{ref.logical_name}", **self.values}
        if kind is _Write.UPDATE:
            body[ref.primary_id] = self.row_id
        elif kind is _Write.UPSERT:
            body["@odata.id"] = self.segment
        return body

    def failed(self, status: int | None, code: str | None, message: str) -> WriteOutcome:
        return WriteOutcome(self.index, False, id=self.row_id, status=status, code=code, message=message)

    def answered(self, answer: PartResponse) -> WriteOutcome:
        """The outcome from this row's own answer inside a $batch."""
        if answer.status < 300:
            match = _ENTITY_ID.search(answer.headers.get("odata-entityid", ""))
            new_id = match.group(1).lower() if match else self.row_id
            return WriteOutcome(self.index, True, id=new_id, status=answer.status)
        error = answer.body.get("error") if isinstance(answer.body, dict) else None
        code = str(error.get("code")) if isinstance(error, dict) and error.get("code") else None
        message = str(error.get("message", ""))[:500] if isinstance(error, dict) else f"HTTP {answer.status}"
        return self.failed(answer.status, code, message)


def _error_detail(response: httpx.Response) -> tuple[str | None, str]:
    try:
        body = response.json()
    except ValueError:
        return None, response.reason_phrase or ""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, response.reason_phrase or ""
    code = error.get("code")
    return (str(code) if code else None), str(error.get("message", ""))[:500]


def _request_id(response: httpx.Response) -> str | None:
    value = response.headers.get("REQ_ID") or response.headers.get("x-ms-service-request-id")
    return str(value) if value else None


def _strip_annotations(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if not key.startswith("@")}


def _is_deleted_entity(item: Mapping[str, Any]) -> bool:
    context = str(item.get("@odata.context", ""))
    return context.endswith("$deletedEntity") or (item.get("reason") == "deleted" and "id" in item)


def _is_expired_token(err: ApiError) -> bool:
    if err.status not in (400, 410):
        return False
    if err.status == 410 or (err.code or "").lower() == EXPIRED_VERSION_STAMP:
        return True
    return bool(_EXPIRED_TEXT.search(str(err.args[0]) if err.args else ""))


def _record_error(err: ApiError) -> RecordError:
    return RecordError([str(err.args[0]) if err.args else "rejected"], code=err.code or str(err.status))


class DataverseClient:
    """Dataverse Web API client. Thread-safe; build one per process and share it."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        base_url: str,
        credential: TokenCredential,
        batch_size: int = MAX_BATCH_SIZE,
        counters: ApiCounters | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        retry_policy: RetryPolicy = DATAVERSE_RETRY,
    ) -> None:
        org = base_url.strip().rstrip("/")
        if not org.startswith(("https://", "http://")):
            raise ConfigError(["DATAVERSE_URL: must be an http(s) URL"])
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ConfigError([f"DATAVERSE_BATCH_SIZE: must be 1..{MAX_BATCH_SIZE}"])
        self._http = http
        self._api = org + API_PATH
        self._api_url = httpx.URL(self._api)
        self.batch_size = batch_size
        self._counters = counters
        self._sleep = sleep
        self._clock = clock
        self._retry_policy = retry_policy
        self._auth = CredentialAuth(credential, scope=f"{org}/.default", wall_clock=wall_clock, counters=counters)
        self._cache_lock = threading.Lock()
        self._metadata: dict[str, EntityMeta] = {}
        self._refs: dict[str, _EntityRef] = {}  # by logical name and by entity set

    def with_retry_policy(self, policy: RetryPolicy) -> DataverseClient:
        """This client with other retry rules (e.g. a webhook's short patience), sharing its
        credential, caches and counters."""
        other = copy.copy(self)
        other._retry_policy = policy
        return other

    # -- the one request path -----------------------------------------------------------------

    def _send(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        idempotent: bool,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout = TIMEOUT_READ,
    ) -> httpx.Response:
        """Send with the standard headers and retries; a 2xx answer, or a typed error."""
        all_headers = dict(BASE_HEADERS)
        if method == "GET":
            all_headers["If-None-Match"] = "null"  # never a cached expansion
        all_headers.update(headers or {})

        def attempt() -> httpx.Response:
            request = self._http.build_request(
                method,
                url,
                params=params,
                json=json_body,
                content=content,
                headers=all_headers,
                timeout=timeout,
                extensions={OPERATION_KEY: operation},
            )
            try:
                response = self._http.send(request, auth=self._auth)
            except httpx.TransportError as err:
                raise transport_failure(err, service=SERVICE, operation=operation) from err
            except TransientError as err:  # the credential failed: nothing was sent
                raise RetryableFailure(err, failure=Failure.REFUSED) from err
            status = response.status_code
            if status < 300:
                return response
            code, message = _error_detail(response)
            request_id = _request_id(response)
            summary = f"dataverse {operation}: HTTP {status}" + (f" {code}" if code else "")
            if status == 429:
                # Service protection refused the request before running it: safe to resend anything.
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                raise RetryableFailure(
                    RateLimitedError(summary, service=SERVICE, retry_after=retry_after, request_id=request_id),
                    failure=Failure.REFUSED,
                    retry_after=retry_after,
                )
            if status in RETRYABLE_STATUS:
                raise RetryableFailure(
                    TransientError(summary, service=SERVICE, request_id=request_id), failure=Failure.UNCERTAIN
                )
            raise ApiError(
                f"dataverse {operation}: {message}" if message else summary,
                service=SERVICE,
                status=status,
                code=code,
                request_id=request_id,
            )

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

    def _url(self, relative: str) -> str:
        return f"{self._api}/{relative}"

    def _own_link(self, link: str) -> str:
        """A nextLink/deltaLink, checked to point at this organisation's API (the token goes with it)."""
        url = self._api_url.join(link)
        if (url.scheme, url.host, url.port) != (self._api_url.scheme, self._api_url.host, self._api_url.port) or not (
            url.path.startswith(self._api_url.path + "/")
        ):
            raise ApiError("dataverse: a paging/delta link points outside the organisation's API", service=SERVICE)
        return str(url)

    # -- reads ---------------------------------------------------------------------------------

    def iter_changes(
        self, entity_set: str, *, select: Sequence[str], delta_link: str | None, page_size: int = MAX_PAGE_SIZE
    ) -> Iterator[DeltaPage]:
        """Rows changed since ``delta_link`` (or every row, when it is ``None``), page by page.

        The last page carries the new delta link; store it only after the pages are processed.
        An expired link raises ``DeltaTokenExpiredError`` (re-read with ``delta_link=None``); a
        table without change tracking raises ``ApiError`` saying so.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
        headers = {"Prefer": f"odata.track-changes,odata.maxpagesize={page_size}"}
        params: dict[str, str] | None
        if delta_link:
            url, params = self._own_link(delta_link), None
        else:
            url, params = self._url(_odata.identifier(entity_set)), {"$select": _odata.select_clause(select)}
        seen_links: set[str] = set()
        first = True
        while True:
            try:
                response = self._send("get_changes", "GET", url, params=params, headers=headers, idempotent=True)
            except ApiError as err:
                if delta_link and _is_expired_token(err):
                    raise DeltaTokenExpiredError(
                        f"dataverse change-tracking token for {entity_set} expired; re-read the table",
                        service=SERVICE,
                        status=err.status,
                        code=err.code,
                        request_id=err.request_id,
                    ) from err
                raise
            body = response.json()
            next_link = body.get("@odata.nextLink")
            new_delta = body.get("@odata.deltaLink")
            applied = response.headers.get("Preference-Applied", "").lower()
            tracking = new_delta is not None or "odata.track-changes" in applied
            if (first and not delta_link and not tracking) or (next_link is None and new_delta is None):
                raise ApiError(
                    f"dataverse: {entity_set} answered without change tracking; enable change tracking on the table",
                    service=SERVICE,
                    status=response.status_code,
                    request_id=_request_id(response),
                )
            rows: list[dict[str, Any]] = []
            deleted: list[str] = []
            for item in body.get("value") or []:
                if _is_deleted_entity(item):
                    deleted.append(str(item["id"]))
                else:
                    rows.append(_strip_annotations(item))
            if next_link is not None:
                if next_link in seen_links:
                    raise ApiError(f"dataverse: nextLink of {entity_set} repeated (paging loop)", service=SERVICE)
                seen_links.add(next_link)
                yield DeltaPage(rows, deleted, None)
                url, params, first = self._own_link(next_link), None, False
                continue
            yield DeltaPage(rows, deleted, str(new_delta))
            return

    def _get_all(self, operation: str, url: str, params: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """Every row of a query, following nextLinks (with loop detection)."""
        headers = {"Prefer": f"odata.maxpagesize={MAX_PAGE_SIZE}"}
        seen_links: set[str] = set()
        next_params: Mapping[str, str] | None = params
        while True:
            body = self._send(operation, "GET", url, params=next_params, headers=headers, idempotent=True).json()
            for item in body.get("value") or []:
                yield _strip_annotations(item)
            next_link = body.get("@odata.nextLink")
            if not next_link:
                return
            if next_link in seen_links:
                raise ApiError(f"dataverse {operation}: nextLink repeated (paging loop)", service=SERVICE)
            seen_links.add(next_link)
            url, next_params = self._own_link(next_link), None

    def get_rows(
        self, entity_set: str | EntityMeta, ids: Sequence[str], *, select: Sequence[str]
    ) -> list[dict[str, Any]]:
        """The rows with these primary keys (absent ones, and ids that are not GUIDs, are simply missing)."""
        ref = self._ref(entity_set, by_set=True)
        literals: list[str] = []
        invalid = 0
        for value in dict.fromkeys(ids):
            try:
                literals.append(_odata.guid_literal(value))
            except ValueError:
                invalid += 1
        if invalid:
            log.warning("dataverse get_rows: %d id(s) are not GUIDs and cannot match", invalid)
        columns = _odata.select_clause([ref.primary_id, *select])
        rows: list[dict[str, Any]] = []
        for condition in _odata.chunked_any_of(
            ref.primary_id, literals, max_values=FILTER_MAX_VALUES, max_chars=FILTER_MAX_CHARS
        ):
            rows.extend(
                self._get_all("get_rows", self._url(ref.entity_set), {"$select": columns, "$filter": condition})
            )
        return rows

    def find_by_emails(
        self, entity_set: str, emails: Sequence[str], *, select: Sequence[str], attribute: str = "emailaddress1"
    ) -> list[dict[str, Any]]:
        """Rows whose ``attribute`` equals one of ``emails`` (each an escaped literal: a quote cannot widen it)."""
        if isinstance(emails, str):
            raise TypeError("emails must be a sequence of strings, not one string")
        literals = [_odata.quote_literal(email) for email in dict.fromkeys(emails) if email]
        columns = _odata.select_clause([attribute, *select])
        url = self._url(_odata.identifier(entity_set))
        rows: list[dict[str, Any]] = []
        for condition in _odata.chunked_any_of(
            attribute, literals, max_values=FILTER_MAX_VALUES // 2, max_chars=FILTER_MAX_CHARS
        ):
            rows.extend(self._get_all("find_by_emails", url, {"$select": columns, "$filter": condition}))
        return rows

    def query_batch(self, queries: Sequence[tuple[str, Mapping[str, str]]]) -> list[list[dict[str, Any]]]:
        """Several small queries (``(entity_set, {"$select": …, "$filter": …, "$top": …})``) in one
        ``$batch`` call: one list of rows per query, in order (first page only: keep them small).

        Filters must be built with ``_odata`` literals, as everywhere. A query the service refuses
        raises ``ApiError`` (a throttled part raises ``RateLimitedError``)."""
        if not queries:
            return []
        if len(queries) > MAX_BATCH_SIZE:
            raise ValueError(f"at most {MAX_BATCH_SIZE} queries per $batch")
        api_path = self._api_url.path
        parts = [
            BatchPart("GET", f"{api_path}/{_odata.identifier(entity_set)}?{urlencode(params, quote_via=quote)}")
            for entity_set, params in queries
        ]
        answers = self._send_batch("query_batch", parts, idempotent=True, timeout=TIMEOUT_READ)
        if len(answers) != len(queries):
            raise ApiError(f"dataverse $batch: {len(answers)} answers for {len(queries)} queries", service=SERVICE)
        results: list[list[dict[str, Any]]] = []
        for answer in answers:
            if answer.status == 429:
                raise RateLimitedError(
                    "dataverse $batch: a query was throttled",
                    service=SERVICE,
                    retry_after=parse_retry_after(answer.headers.get("retry-after")),
                )
            body = answer.body if isinstance(answer.body, dict) else {}
            if answer.status >= 400:
                error = body.get("error") or {}
                raise ApiError(
                    f"dataverse $batch query refused: {error.get('message') or answer.status}",
                    service=SERVICE,
                    status=answer.status,
                    code=error.get("code"),
                )
            results.append([_strip_annotations(row) for row in body.get("value") or []])
        return results

    # -- single-record writes --------------------------------------------------------------------

    def create(self, entity_set: str, values: Mapping[str, Any], *, return_id: bool = True) -> str:
        """Create one row; its GUID (from ``OData-EntityId``). Never resent once it may have landed.

        A row the service rejects (validation, duplicate key) raises ``RecordError``.
        """
        try:
            response = self._send(
                "create",
                "POST",
                self._url(_odata.identifier(entity_set)),
                json_body=dict(values),
                idempotent=False,
                timeout=TIMEOUT_WRITE,
            )
        except ApiError as err:
            if err.status in RECORD_LEVEL_STATUS and err.code not in SCHEMA_ERROR_CODES:
                raise _record_error(err) from err
            raise
        entity_id = response.headers.get("OData-EntityId", "")
        match = _ENTITY_ID.search(entity_id)
        if match is None:
            if return_id:
                raise ApiError(
                    "dataverse create: no OData-EntityId in the answer",
                    service=SERVICE,
                    status=response.status_code,
                    request_id=_request_id(response),
                )
            return ""
        return match.group(1).lower()

    def update(self, entity_set: str, row_id: str, values: Mapping[str, Any]) -> None:
        """Update one existing row (``If-Match: *``: never an accidental create). A missing row raises
        ``RecordError`` with code 0x80040217."""
        url = self._url(_odata.key_segment(entity_set, {"": row_id}))
        try:
            self._send(
                "update",
                "PATCH",
                url,
                json_body=dict(values),
                headers={"If-Match": "*"},
                idempotent=True,
                timeout=TIMEOUT_WRITE,
            )
        except ApiError as err:
            if err.status in RECORD_LEVEL_STATUS and err.code not in SCHEMA_ERROR_CODES:
                raise _record_error(err) from err
            raise

    def delete(self, entity_set: str, row_id: str) -> bool:
        """Delete one row; ``False`` when it was already gone."""
        url = self._url(_odata.key_segment(entity_set, {"": row_id}))
        try:
            self._send("delete", "DELETE", url, idempotent=True)
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True

    def qualify_lead(self, lead_id: str, *, status: int = 3) -> str:
        """QualifyLead into a contact only (no account, no opportunity); the new contact's GUID.

        Never resent once it may have run (a second run answers "the lead is already closed").
        A lead the service refuses to qualify raises ``RecordError``."""
        url = self._url(f"{_odata.key_segment('leads', {'': lead_id})}/Microsoft.Dynamics.CRM.QualifyLead")
        body = {"CreateAccount": False, "CreateContact": True, "CreateOpportunity": False, "Status": status}
        try:
            response = self._send("qualify_lead", "POST", url, json_body=body, idempotent=False, timeout=TIMEOUT_WRITE)
        except ApiError as err:
            if err.status in RECORD_LEVEL_STATUS and err.code not in SCHEMA_ERROR_CODES:
                raise _record_error(err) from err
            raise
        for item in (response.json() or {}).get("value") or []:
            if str(item.get("@odata.type", "")).endswith("contact") and item.get("contactid"):
                return str(item["contactid"]).lower()
        raise ApiError(
            "dataverse QualifyLead: no contact in the answer",
            service=SERVICE,
            status=response.status_code,
            request_id=_request_id(response),
        )

    # -- bulk writes -------------------------------------------------------------------------------

    def update_multiple(self, entity: EntityMeta | str, rows: Sequence[Mapping[str, Any]]) -> list[WriteOutcome]:
        """Update existing rows (each with its primary key), ``batch_size`` per UpdateMultiple call."""
        return self._write_multiple(_Write.UPDATE, self._ref(entity), rows, key=None)

    def upsert_multiple(
        self, entity: EntityMeta | str, rows: Sequence[Mapping[str, Any]], *, key: Sequence[str] | None = None
    ) -> list[WriteOutcome]:
        """Create-or-update rows by primary key (``key=None``) or by an alternate key's columns."""
        return self._write_multiple(_Write.UPSERT, self._ref(entity), rows, key=tuple(key) if key else None)

    def create_multiple(self, entity: EntityMeta | str, rows: Sequence[Mapping[str, Any]]) -> list[WriteOutcome]:
        """Create rows, ``batch_size`` per CreateMultiple call; each outcome carries the new GUID."""
        return self._write_multiple(_Write.CREATE, self._ref(entity), rows, key=None)

    def _write_multiple(
        self, kind: _Write, ref: _EntityRef, rows: Sequence[Mapping[str, Any]], *, key: tuple[str, ...] | None
    ) -> list[WriteOutcome]:
        outcomes: dict[int, WriteOutcome] = {}
        ready: list[_Target] = []
        for index, row in enumerate(rows):
            try:
                ready.append(_Target.of(kind, ref, index, row, key))
            except ValueError as err:
                outcomes[index] = WriteOutcome(index, False, code="invalid_input", message=str(err))
        for start in range(0, len(ready), self.batch_size):
            for outcome in self._write_chunk(kind, ref, ready[start : start + self.batch_size]):
                outcomes[outcome.index] = outcome
        failed = sum(1 for outcome in outcomes.values() if not outcome.ok)
        if failed:
            log.warning("dataverse %s %s: %d of %d row(s) failed", kind.value, ref.entity_set, failed, len(rows))
        return [outcomes[index] for index in range(len(rows))]

    def _write_chunk(self, kind: _Write, ref: _EntityRef, chunk: Sequence[_Target]) -> list[WriteOutcome]:
        try:
            response = self._send(
                kind.value.lower(),
                "POST",
                self._url(f"{ref.entity_set}/Microsoft.Dynamics.CRM.{kind.value}"),
                json_body={"Targets": [target.message_body(kind, ref) for target in chunk]},
                idempotent=kind is not _Write.CREATE,
                timeout=TIMEOUT_WRITE,
            )
        except ApiError as err:
            if err.status not in RECORD_LEVEL_STATUS or err.code in SCHEMA_ERROR_CODES:
                raise
            if len(chunk) == 1:
                return [chunk[0].failed(err.status, err.code, str(err.args[0]))]
            if err.status == 413:  # too large as a whole: halve it
                middle = len(chunk) // 2
                return self._write_chunk(kind, ref, chunk[:middle]) + self._write_chunk(kind, ref, chunk[middle:])
            # Standard tables roll the whole message back on one bad record, so nothing landed:
            # send the rows again one by one in a $batch that carries on past failures.
            log.info(
                "dataverse %s %s: batch of %d rejected (%s); isolating with $batch",
                kind.value,
                ref.entity_set,
                len(chunk),
                err.code or err.status,
            )
            return self._isolate(kind, ref, chunk)
        if kind is _Write.CREATE:
            ids = (response.json() or {}).get("Ids") or []
            if len(ids) != len(chunk):
                raise ApiError(
                    f"dataverse CreateMultiple: {len(ids)} ids for {len(chunk)} rows",
                    service=SERVICE,
                    status=response.status_code,
                    request_id=_request_id(response),
                )
            return [WriteOutcome(t.index, True, id=str(new_id)) for t, new_id in zip(chunk, ids, strict=True)]
        return [WriteOutcome(t.index, True, id=t.row_id) for t in chunk]

    def _isolate(self, kind: _Write, ref: _EntityRef, chunk: Sequence[_Target]) -> list[WriteOutcome]:
        api_path = self._api_url.path
        parts: list[BatchPart] = []
        for target in chunk:
            if kind is _Write.CREATE:
                parts.append(BatchPart("POST", f"{api_path}/{ref.entity_set}", target.values))
            elif kind is _Write.UPDATE:
                parts.append(BatchPart("PATCH", f"{api_path}/{target.segment}", target.values, {"If-Match": "*"}))
            else:  # upsert: a PATCH without If-Match creates the row when the key finds none
                parts.append(BatchPart("PATCH", f"{api_path}/{target.segment}", target.values))
        try:
            answers = self._send_batch("batch", parts, idempotent=kind is not _Write.CREATE, timeout=TIMEOUT_WRITE)
        except ApiError as err:
            # Without continue-on-error honoured the service stops at the first failure and says 400
            # with that one answer; what follows it was not attempted.
            if err.status != 400:
                raise
            answers = []
        return [
            target.answered(answers[position])
            if position < len(answers)
            else target.failed(None, "not_attempted", "the $batch stopped before this record")
            for position, target in enumerate(chunk)
        ]

    def _send_batch(
        self, operation: str, parts: Sequence[BatchPart], *, idempotent: bool, timeout: httpx.Timeout
    ) -> list[PartResponse]:
        """One ``$batch`` of independent parts with continue-on-error; the parts' answers in order."""
        content_type, payload = build_batch(parts)
        response = self._send(
            operation,
            "POST",
            self._url("$batch"),
            content=payload,
            headers={"Content-Type": content_type, "Prefer": "odata.continue-on-error"},
            idempotent=idempotent,
            timeout=timeout,
        )
        try:
            return read_batch(response.headers.get("Content-Type", ""), response.content)
        except ValueError as err:
            raise ApiError("dataverse $batch: unreadable answer", service=SERVICE) from err

    # -- metadata ----------------------------------------------------------------------------------

    def _ref(self, entity: EntityMeta | str, *, by_set: bool = False) -> _EntityRef:
        """Logical name, entity set and primary key of a table, from metadata given or read once."""
        if isinstance(entity, EntityMeta):
            return _EntityRef(entity.logical_name, entity.entity_set, entity.primary_id)
        name = _odata.identifier(entity)
        with self._cache_lock:
            known = self._refs.get(name)
        if known is not None:
            return known
        column = "EntitySetName" if by_set else "LogicalName"
        body = self._send(
            "get_entity_definition",
            "GET",
            self._url("EntityDefinitions"),
            params={
                "$select": "LogicalName,EntitySetName,PrimaryIdAttribute",
                "$filter": _odata.eq(column, _odata.quote_literal(name)),
            },
            idempotent=True,
        ).json()
        found = body.get("value") or []
        if not found:
            raise ConfigError([f"Dataverse table '{name}' does not exist"])
        ref = _EntityRef(
            str(found[0]["LogicalName"]), str(found[0]["EntitySetName"]), str(found[0]["PrimaryIdAttribute"])
        )
        with self._cache_lock:
            self._refs[ref.logical_name] = ref
            self._refs[ref.entity_set] = ref
        return ref

    def get_entity_metadata(self, logical_name: str, *, refresh: bool = False) -> EntityMeta:
        """Columns of a table with their types, required levels, lengths, formats and options
        (cached; ``refresh`` reads them again, e.g. after the service refused a column)."""
        name = _odata.identifier(logical_name)
        with self._cache_lock:
            if name in self._metadata and not refresh:
                return self._metadata[name]
        definition = self._url(f"EntityDefinitions(LogicalName={_odata.quote_literal(name)})")
        entity = self._send(
            "get_entity_metadata",
            "GET",
            definition,
            params={"$select": "LogicalName,EntitySetName,PrimaryIdAttribute,ChangeTrackingEnabled"},
            idempotent=True,
        ).json()
        attributes: dict[str, dict[str, Any]] = {}
        for item in (
            self._send(
                "get_entity_metadata",
                "GET",
                f"{definition}/Attributes",
                params={"$select": "LogicalName,AttributeType,RequiredLevel,IsValidForCreate,IsValidForUpdate"},
                idempotent=True,
            )
            .json()
            .get("value")
            or []
        ):
            attributes[str(item["LogicalName"])] = {
                "logical_name": str(item["LogicalName"]),
                "attribute_type": str(item.get("AttributeType", "")),
                "required_level": _required_level(item.get("RequiredLevel")),
                "is_valid_for_create": item.get("IsValidForCreate") is not False,
                "is_valid_for_update": item.get("IsValidForUpdate") is not False,
            }
        for item in (
            self._send(
                "get_entity_metadata",
                "GET",
                f"{definition}/Attributes/Microsoft.Dynamics.CRM.StringAttributeMetadata",
                params={"$select": "LogicalName,MaxLength,Format"},
                idempotent=True,
            )
            .json()
            .get("value")
            or []
        ):
            if item.get("LogicalName") in attributes:
                attributes[item["LogicalName"]]["max_length"] = item.get("MaxLength")
                attributes[item["LogicalName"]]["format"] = item.get("Format")
        for item in (
            self._send(
                "get_entity_metadata",
                "GET",
                f"{definition}/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
                params={"$select": "LogicalName", "$expand": "OptionSet"},
                idempotent=True,
            )
            .json()
            .get("value")
            or []
        ):
            if item.get("LogicalName") in attributes:
                attributes[item["LogicalName"]]["options"] = _options(item.get("OptionSet"))
        meta = EntityMeta(
            logical_name=str(entity["LogicalName"]),
            entity_set=str(entity["EntitySetName"]),
            primary_id=str(entity["PrimaryIdAttribute"]),
            attributes={key: AttributeMeta(**values) for key, values in attributes.items()},
        )
        if entity.get("ChangeTrackingEnabled") is False:
            log.warning("dataverse: change tracking is off for %s; delta reads will fail", meta.logical_name)
        with self._cache_lock:
            self._metadata[name] = meta
            ref = _EntityRef(meta.logical_name, meta.entity_set, meta.primary_id)
            self._refs[meta.logical_name] = ref
            self._refs[meta.entity_set] = ref
        return meta


def _required_level(value: Any) -> RequiredLevel:
    raw = value.get("Value") if isinstance(value, dict) else value
    try:
        return RequiredLevel(str(raw))
    except ValueError:
        return RequiredLevel.NONE


def _options(option_set: Any) -> dict[int, str]:
    options: dict[int, str] = {}
    for option in (option_set or {}).get("Options") or []:
        value = option.get("Value")
        label = ((option.get("Label") or {}).get("UserLocalizedLabel") or {}).get("Label")
        if value is not None:
            options[int(value)] = str(label) if label is not None else str(value)
    return options
