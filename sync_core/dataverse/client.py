"""``DataverseClient``: the only code that speaks HTTP to the Dataverse Web API (v9.2).

It owns bearer tokens (``_auth``) and the organisation's Web API (``_api``: standard OData
headers, typed errors, retries through the shared request path, the one nextLink paging loop,
``$batch``). On that it offers change-tracking reads with ``$deletedEntity`` rows, escaped
``$filter`` look-ups (``odata``), single-record writes, bulk writes (``_bulk``) and cached table
metadata (``_metadata``). Callers get typed pages and outcomes (``_types``); rows are plain dicts
keyed by column logical names. It makes no sync decisions and never logs tokens or row values
(only ids and counts).
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from azure.core.credentials import TokenCredential

from sync_core.core.errors import ApiError, ConfigError, DeltaTokenExpiredError, RateLimitedError
from sync_core.core.schema import EntityMeta
from sync_core.dataverse import _setup
from sync_core.dataverse import odata as _odata
from sync_core.dataverse._api import (
    FORMATTED_VALUES,
    MAX_PAGE_SIZE,
    SCHEMA_ERROR_CODES,
    SERVICE,
    TIMEOUT_READ,
    TIMEOUT_WRITE,
    WebApi,
    is_record_level,
    record_error,
    request_id,
    strip_annotations,
)
from sync_core.dataverse._auth import CredentialAuth
from sync_core.dataverse._batch import BatchPart
from sync_core.dataverse._bulk import ENTITY_ID, BulkSupport, Write, message_sizes, write_multiple
from sync_core.dataverse._metadata import Catalog, EntityRef
from sync_core.dataverse._types import DeltaPage, WriteOutcome
from sync_core.http.counters import ApiCounters
from sync_core.http.ratebudget import CallBudget, RateLimit
from sync_core.http.retry import DATAVERSE_RETRY, RetryPolicy, parse_retry_after
from sync_core.http.transport import RetryingSender

__all__ = ["SCHEMA_ERROR_CODES", "DataverseClient", "DeltaPage", "WriteOutcome"]

log = logging.getLogger(__name__)

MAX_BATCH_SIZE = 1000  # records per bulk message and requests per $batch
FILTER_MAX_VALUES = 100  # values per "or" filter, and
FILTER_MAX_CHARS = 6000  # characters per filter, to keep URLs well under the limits
DUPLICATE_RECORD = "0x80040237"  # a row with this key exists (a create-only upsert found it)
EXPIRED_VERSION_STAMP = "0x80044352"  # ExpiredVersionStamp: the delta token is too old
_EXPIRED_TEXT = re.compile(r"version stamp|expired|full sync", re.IGNORECASE)


def _is_deleted_entity(item: Mapping[str, Any]) -> bool:
    context = str(item.get("@odata.context", ""))
    return context.endswith("$deletedEntity") or (item.get("reason") == "deleted" and "id" in item)


def _is_expired_token(err: ApiError) -> bool:
    if err.status not in (400, 410):
        return False
    if err.status == 410 or (err.code or "").lower() == EXPIRED_VERSION_STAMP:
        return True
    return bool(_EXPIRED_TEXT.search(str(err.args[0]) if err.args else ""))


def _delta_page(
    entity_set: str,
    response: httpx.Response,
    body: Mapping[str, Any],
    *,
    check_tracking: bool,
    kept_link: str | None,
) -> DeltaPage:
    """One page of a change-tracking read, refused when the answer shows change tracking is off.

    A read from a delta link (``kept_link``) whose last answer has no new delta link (an empty
    body, or rows without one) keeps that link: the next read repeats the window, which the merge
    makes harmless, instead of failing the table or losing its place."""
    next_link = body.get("@odata.nextLink")
    new_delta = body.get("@odata.deltaLink")
    applied = response.headers.get("Preference-Applied", "").lower()
    tracking = new_delta is not None or "odata.track-changes" in applied
    if not next_link and new_delta is None and kept_link is not None:
        log.warning("dataverse get_changes %s: no new delta link in the answer; keeping the old one", entity_set)
        new_delta = kept_link
    if (check_tracking and not tracking) or (not next_link and new_delta is None):
        raise ApiError(
            f"dataverse: {entity_set} answered without change tracking; enable change tracking on the table",
            service=SERVICE,
            status=response.status_code,
            request_id=request_id(response),
        )
    rows: list[dict[str, Any]] = []
    deleted: list[str] = []
    for item in body.get("value") or []:
        if _is_deleted_entity(item):
            deleted.append(str(item["id"]))
        else:
            rows.append(strip_annotations(item))
    return DeltaPage(rows, deleted, None if next_link else str(new_delta))


def service_protection_limit(
    *, requests: int, window_seconds: float, concurrent: int, execution_seconds: float
) -> RateLimit:
    """The limit a budget over Dataverse keeps, from its service protection limits per user and
    window. A request executes only while it is in flight, so at most ``execution_seconds ÷
    window_seconds`` requests in flight (over every instance: the shared budget) never meet the
    combined execution-time limit (429 ``0x80072321``), which bulk messages, each seconds long,
    reach long before the concurrency limit: the in-flight limit is the smaller of the two."""
    by_execution = max(1, math.floor(execution_seconds / window_seconds))
    return RateLimit(max_calls=requests, per_seconds=window_seconds, max_concurrent=min(concurrent, by_execution))


# Per user, per 5-minute window (api-protocols Part B): 6,000 requests, 52 at once, 1,200 s of
# combined execution time; so 4 in flight.
RATE_LIMIT = service_protection_limit(requests=6000, window_seconds=300.0, concurrent=52, execution_seconds=1200.0)


class DataverseClient:
    """Dataverse Web API client. Thread-safe; build one per process and share it."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        base_url: str,
        credential: TokenCredential,
        batch_size: int = MAX_BATCH_SIZE,
        max_parallel: int = 1,
        counters: ApiCounters | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        retry_policy: RetryPolicy = DATAVERSE_RETRY,
        budget: CallBudget | None = None,
    ) -> None:
        """``budget``: a call budget shared by every instance (``state.budget``, over ``RATE_LIMIT``);
        None: none kept here (the service's 429 + Retry-After pace the calls)."""
        org = base_url.strip().rstrip("/")
        if not org.startswith(("https://", "http://")):
            raise ConfigError(["DATAVERSE_URL: must be an http(s) URL"])
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ConfigError([f"DATAVERSE_BATCH_SIZE: must be 1..{MAX_BATCH_SIZE}"])
        if max_parallel < 1:
            raise ConfigError(["DATAVERSE_MAX_PARALLEL: must be at least 1"])
        self.batch_size = batch_size
        self.max_parallel = max_parallel
        auth = CredentialAuth(credential, scope=f"{org}/.default", wall_clock=wall_clock, counters=counters)
        sender = RetryingSender(
            http,
            auth,
            service=SERVICE,
            policy=retry_policy,
            sleep=sleep,
            clock=clock,
            counters=counters,
            budget=budget,
        )
        self._api = WebApi(org, sender)
        self._catalog = Catalog()
        self._bulk_support = BulkSupport()

    def with_retry_policy(self, policy: RetryPolicy) -> DataverseClient:
        """This client with other retry rules (e.g. a webhook's short patience), sharing its
        credential, caches and counters."""
        other = copy.copy(self)
        other._api = self._api.with_policy(policy)
        return other

    # -- reads ---------------------------------------------------------------------------------

    def iter_changes(
        self,
        entity_set: str,
        *,
        select: Sequence[str],
        delta_link: str | None,
        page_size: int = MAX_PAGE_SIZE,
        formatted: bool = False,
    ) -> Iterator[DeltaPage]:
        """Rows changed since ``delta_link`` (or every row, when it is ``None``), page by page.

        The last page carries the new delta link; store it only after the pages are processed. A
        delta read answered without a new link (an empty body, or rows without one) ends with
        ``delta_link`` itself, so the stored link is kept. An expired link raises
        ``DeltaTokenExpiredError`` (re-read with ``delta_link=None``); a table without change
        tracking raises ``ApiError`` saying so. ``formatted``: rows carry each value's formatted text
        too (``<column>@OData.Community.Display.V1.FormattedValue``, e.g. an option's label).
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
        params: dict[str, str] | None
        if delta_link:
            url, params = self._api.own_link(delta_link), None
        else:
            url = self._api.url(_odata.identifier(entity_set))
            params = {"$select": _odata.select_clause(select)}
        prefer = f"odata.track-changes,odata.maxpagesize={page_size}" + (f",{FORMATTED_VALUES}" if formatted else "")
        pages = self._api.pages("get_changes", url, params, prefer=prefer, empty_ok=bool(delta_link))
        try:
            for number, (response, body) in enumerate(pages):
                yield _delta_page(
                    entity_set,
                    response,
                    body,
                    check_tracking=number == 0 and not delta_link,
                    kept_link=delta_link or None,
                )
        except ApiError as err:
            if delta_link and _is_expired_token(err):  # only a sent request's error can say so
                raise DeltaTokenExpiredError(
                    f"dataverse change-tracking token for {entity_set} expired; re-read the table",
                    service=SERVICE,
                    status=err.status,
                    code=err.code,
                    request_id=err.request_id,
                ) from err
            raise

    def get_rows(
        self, entity_set: str | EntityMeta, ids: Sequence[str], *, select: Sequence[str], formatted: bool = False
    ) -> list[dict[str, Any]]:
        """The rows with these primary keys (absent ones, and ids that are not GUIDs, are simply missing);
        ``formatted`` as for ``iter_changes``."""
        ref = self._ref(entity_set, by_set=True)
        return list(
            self._rows_where("get_rows", ref.entity_set, ref.primary_id, ids, [ref.primary_id, *select], formatted)
        )

    def iter_by_lookup(
        self, entity_set: str, column: str, ids: Sequence[str], *, select: Sequence[str]
    ) -> Iterator[dict[str, Any]]:
        """Every row whose lookup ``column`` (``_<name>_value``) points at one of ``ids``, page by page
        as they are read (e.g. the contacts of some accounts: ``contacts``, ``_parentcustomerid_value``)."""
        return self._rows_where("find_by_lookup", entity_set, column, ids, [column, *select], False)

    def _rows_where(
        self, operation: str, entity_set: str, column: str, ids: Sequence[str], select: Sequence[str], formatted: bool
    ) -> Iterator[dict[str, Any]]:
        """Rows whose GUID ``column`` equals one of ``ids``, 100 to a filter (ids that are not GUIDs cannot match)."""
        literals: list[str] = []
        invalid = 0
        for value in dict.fromkeys(ids):
            try:
                literals.append(_odata.guid_literal(value))
            except ValueError:
                invalid += 1
        if invalid:
            log.warning("dataverse %s: %d id(s) are not GUIDs and cannot match", operation, invalid)
        columns = _odata.select_clause(select)
        url = self._api.url(_odata.identifier(entity_set))
        for condition in _odata.chunked_any_of(
            column, literals, max_values=FILTER_MAX_VALUES, max_chars=FILTER_MAX_CHARS
        ):
            yield from self._api.rows(operation, url, {"$select": columns, "$filter": condition}, formatted=formatted)

    def find_by_emails(
        self, entity_set: str, emails: Sequence[str], *, select: Sequence[str], attribute: str = "emailaddress1"
    ) -> list[dict[str, Any]]:
        """Rows whose ``attribute`` equals one of ``emails`` (each an escaped literal: a quote cannot widen it)."""
        if isinstance(emails, str):
            raise TypeError("emails must be a sequence of strings, not one string")
        literals = [_odata.quote_literal(email) for email in dict.fromkeys(emails) if email]
        columns = _odata.select_clause([attribute, *select])
        url = self._api.url(_odata.identifier(entity_set))
        rows: list[dict[str, Any]] = []
        for condition in _odata.chunked_any_of(
            attribute, literals, max_values=FILTER_MAX_VALUES // 2, max_chars=FILTER_MAX_CHARS
        ):
            rows.extend(self._api.rows("find_by_emails", url, {"$select": columns, "$filter": condition}))
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
        api_path = self._api.root_url.path
        parts = [
            BatchPart("GET", f"{api_path}/{_odata.identifier(entity_set)}?{urlencode(params, quote_via=quote)}")
            for entity_set, params in queries
        ]
        answers = self._api.send_batch("query_batch", parts, idempotent=True, timeout=TIMEOUT_READ)
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
            results.append([strip_annotations(row) for row in body.get("value") or []])
        return results

    # -- single-record writes --------------------------------------------------------------------

    def create(self, entity_set: str, values: Mapping[str, Any], *, return_id: bool = True) -> str:
        """Create one row; its GUID (from ``OData-EntityId``). Never resent once it may have landed.

        A row the service rejects (validation, duplicate key) raises ``RecordError``.
        """
        url = self._api.url(_odata.identifier(entity_set))
        response = self._write_one("create", "POST", url, dict(values), idempotent=False)
        entity_id = response.headers.get("OData-EntityId", "")
        match = ENTITY_ID.search(entity_id)
        if match is None:
            if return_id:
                raise ApiError(
                    "dataverse create: no OData-EntityId in the answer",
                    service=SERVICE,
                    status=response.status_code,
                    request_id=request_id(response),
                )
            return ""
        return match.group(1).lower()

    def update(self, entity_set: str, row_id: str, values: Mapping[str, Any]) -> None:
        """Update one existing row (``If-Match: *``: never an accidental create). A missing row raises
        ``RecordError`` with code 0x80040217."""
        url = self._api.url(_odata.key_segment(entity_set, {"": row_id}))
        self._write_one("update", "PATCH", url, dict(values), idempotent=True, headers={"If-Match": "*"})

    def _write_one(
        self,
        operation: str,
        method: str,
        url: str,
        body: Mapping[str, Any],
        *,
        idempotent: bool,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One single-record write; the service refusing this record raises ``RecordError``."""
        try:
            return self._api.send(
                operation, method, url, json=body, idempotent=idempotent, headers=headers, timeout=TIMEOUT_WRITE
            )
        except ApiError as err:
            if is_record_level(err):
                raise record_error(err) from err
            raise

    def delete(self, entity_set: str, row_id: str) -> bool:
        """Delete one row; ``False`` when it was already gone."""
        url = self._api.url(_odata.key_segment(entity_set, {"": row_id}))
        try:
            self._api.send("delete", "DELETE", url, idempotent=True)
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True

    def qualify_lead(self, lead_id: str, *, status: int = 3) -> str:
        """QualifyLead into a contact only (no account, no opportunity); the new contact's GUID.

        Never resent once it may have run (a second run answers "the lead is already closed").
        A lead the service refuses to qualify raises ``RecordError``."""
        url = self._api.url(f"{_odata.key_segment('leads', {'': lead_id})}/Microsoft.Dynamics.CRM.QualifyLead")
        body = {"CreateAccount": False, "CreateContact": True, "CreateOpportunity": False, "Status": status}
        response = self._write_one("qualify_lead", "POST", url, body, idempotent=False)
        for item in (response.json() or {}).get("value") or []:
            if str(item.get("@odata.type", "")).endswith("contact") and item.get("contactid"):
                return str(item["contactid"]).lower()
        raise ApiError(
            "dataverse QualifyLead: no contact in the answer",
            service=SERVICE,
            status=response.status_code,
            request_id=request_id(response),
        )

    # -- the flow steps' writes (tasks, marketing lists, campaigns) --------------------------------

    def create_if_absent(self, entity_set: str, row_id: str, values: Mapping[str, Any]) -> bool:
        """Create the row with this primary key unless it exists: ``PATCH set(id)`` with
        ``If-None-Match: *`` (the Web API's "create, never update" upsert). True when this call
        created it, False when it was there already (412 DuplicateRecord). Safe to resend, so a
        retried or concurrent call never makes a second row. Other refusals raise ``RecordError``."""
        url = self._api.url(_odata.key_segment(entity_set, {"": row_id}))
        try:
            self._api.send(
                "create_if_absent",
                "PATCH",
                url,
                json=dict(values),
                idempotent=True,
                headers={"If-None-Match": "*"},
                timeout=TIMEOUT_WRITE,
            )
        except ApiError as err:
            if err.status == 412 and (err.code or "").lower() == DUPLICATE_RECORD:
                return False
            if is_record_level(err):
                raise record_error(err) from err
            raise
        return True

    def add_list_member(self, list_id: str, member_id: str) -> str:
        """``lists(id)/AddMemberList``: the record joins the marketing list (once: a member already
        there keeps its membership); the list member's id. An unknown list or record raises ``RecordError``."""
        url = self._api.url(f"{_odata.key_segment('lists', {'': list_id})}/Microsoft.Dynamics.CRM.AddMemberList")
        response = self._write_one("add_list_member", "POST", url, {"EntityId": member_id}, idempotent=True)
        return str((response.json() or {}).get("Id") or "").lower()

    def remove_list_member(self, list_id: str, member_id: str) -> None:
        """``lists(id)/RemoveMemberList``: the record leaves the marketing list (not a member: nothing happens)."""
        url = self._api.url(f"{_odata.key_segment('lists', {'': list_id})}/Microsoft.Dynamics.CRM.RemoveMemberList")
        self._write_one("remove_list_member", "POST", url, {"EntityId": member_id}, idempotent=True)

    def add_list_to_campaign(self, list_id: str, campaign_id: str) -> None:
        """``lists(id)/AddItemCampaign``: the marketing list becomes one of the campaign's (once)."""
        url = self._api.url(f"{_odata.key_segment('lists', {'': list_id})}/Microsoft.Dynamics.CRM.AddItemCampaign")
        body = {"Campaign": {"@odata.type": "Microsoft.Dynamics.CRM.campaign", "campaignid": campaign_id}}
        self._write_one("add_list_to_campaign", "POST", url, body, idempotent=True)

    def is_list_member(self, list_id: str, member_id: str) -> bool:
        """Whether the record is on the marketing list (``listmembers`` by list and record)."""
        condition = " and ".join(
            [
                _odata.eq("_listid_value", _odata.guid_literal(list_id)),
                _odata.eq("_entityid_value", _odata.guid_literal(member_id)),
            ]
        )
        params = {"$select": "listmemberid", "$filter": condition, "$top": "1"}
        return any(True for _ in self._api.rows("is_list_member", self._api.url("listmembers"), params))

    # -- bulk writes -------------------------------------------------------------------------------

    def update_multiple(self, entity: EntityMeta | str, rows: Sequence[Mapping[str, Any]]) -> list[WriteOutcome]:
        """Update existing rows (each with its primary key), ``batch_size`` per UpdateMultiple call."""
        return self.update_tables([(entity, rows)])[0]

    def update_tables(
        self,
        tables: Sequence[tuple[EntityMeta | str, Sequence[Mapping[str, Any]]]],
        *,
        fill_places: bool = False,
        on_written: Callable[[int, Sequence[WriteOutcome]], None] | None = None,
    ) -> list[list[WriteOutcome]]:
        """``update_multiple`` of several tables at once: their UpdateMultiple calls (the same ones
        as table by table) share the ``parallelism`` places, so one table's last short message
        does not wait for the other's. With ``fill_places``, the messages are those of
        ``messages_for``: an unfilled last wave is spread over more, smaller messages. Per table,
        its outcomes in input order. ``on_written(table position, outcomes)``: called as each
        message is answered, while the others may still be in flight (``write_multiple``)."""
        return self._write_multiple(Write.UPDATE, tables, key=None, fill_places=fill_places, on_written=on_written)

    def messages_for(self, counts: Sequence[int], *, fill_places: bool) -> int:
        """The bulk messages ``update_tables(..., fill_places=…)`` sends for tables of these row counts now."""
        places = self.parallelism if fill_places else 1
        return sum(len(sizes) for sizes in message_sizes(counts, batch_size=self.batch_size, places=places))

    def upsert_multiple(
        self, entity: EntityMeta | str, rows: Sequence[Mapping[str, Any]], *, key: Sequence[str] | None = None
    ) -> list[WriteOutcome]:
        """Create-or-update rows by primary key (``key=None``) or by an alternate key's columns."""
        return self._write_multiple(Write.UPSERT, [(entity, rows)], key=tuple(key) if key else None)[0]

    def create_multiple(self, entity: EntityMeta | str, rows: Sequence[Mapping[str, Any]]) -> list[WriteOutcome]:
        """Create rows, ``batch_size`` per CreateMultiple call; each outcome carries the new GUID."""
        return self._write_multiple(Write.CREATE, [(entity, rows)], key=None)[0]

    def _write_multiple(
        self,
        kind: Write,
        tables: Sequence[tuple[EntityMeta | str, Sequence[Mapping[str, Any]]]],
        *,
        key: tuple[str, ...] | None,
        fill_places: bool = False,
        on_written: Callable[[int, Sequence[WriteOutcome]], None] | None = None,
    ) -> list[list[WriteOutcome]]:
        return write_multiple(
            self._api,
            kind,
            [(self._ref(entity), rows) for entity, rows in tables],
            key=key,
            batch_size=self.batch_size,
            support=self._bulk_support,
            parallel=self.parallelism,
            fill_places=fill_places,
            on_written=on_written,
        )

    @property
    def parallelism(self) -> int:
        """How many bulk messages may be in flight at once: the service's ``x-ms-dop-hint``, capped by
        ``max_parallel`` (``DATAVERSE_MAX_PARALLEL``); one until the service has suggested a number."""
        return max(1, min(self.max_parallel, self._api.dop_hint or 1))

    @property
    def bulk_fallbacks(self) -> dict[str, str]:
        """Bulk messages the service said are not enabled on a table, which this client therefore
        sends as ``$batch``: ``{"<entity set>/<message>": reason}`` (remembered for the process)."""
        return self._bulk_support.fallbacks()

    # -- metadata ----------------------------------------------------------------------------------

    def _ref(self, entity: EntityMeta | str, *, by_set: bool = False) -> EntityRef:
        return self._catalog.ref(self._api, entity, by_set=by_set)

    def get_entity_metadata(self, logical_name: str, *, refresh: bool = False) -> EntityMeta:
        """Columns of a table with their types, required levels, lengths, formats and options
        (cached; ``refresh`` reads them again, e.g. after the service refused a column)."""
        return self._catalog.entity(self._api, logical_name, refresh=refresh)

    # -- setup facts (``python -m sync_core check``; reads only) -------------------------------------

    def who_am_i(self) -> str:
        """The calling user's ``systemuserid`` (``WhoAmI``)."""
        return _setup.who_am_i(self._api)

    def user_privileges(self, user_id: str) -> dict[str, str]:
        """The privileges ``user_id`` holds through roles and teams, name -> depth (``RetrieveUserPrivileges``)."""
        return _setup.user_privileges(self._api, user_id)

    def change_tracking_enabled(self, logical_name: str) -> bool:
        """Whether the table has change tracking on (``EntityMetadata.ChangeTrackingEnabled``)."""
        return _setup.change_tracking_enabled(self._api, logical_name)
