"""The Dataverse Web API as the client sends to it: one organisation, standard headers, typed errors.

``WebApi`` owns what every Dataverse call shares: the organisation's API root (and the check
that a nextLink/deltaLink points back at it before the token goes there), the OData headers,
the mapping of an answer to a typed error (429 ``RateLimitedError`` by ``Retry-After``;
502/503/504 uncertain, resent only when idempotent; anything else ``ApiError`` with code and
request id), the one ``@odata.nextLink`` paging loop with loop detection, and ``$batch``. It
sends through the shared ``RetryingSender``; it knows no tables and makes no sync decisions, and
never logs tokens or row values.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Unpack

import httpx

from sync_core.core.errors import ApiError, RateLimitedError, RecordError, TransientError
from sync_core.dataverse._batch import BatchPart, PartResponse, build_batch, read_batch
from sync_core.http.retry import Failure, RetryableFailure, RetryPolicy, parse_retry_after
from sync_core.http.transport import RequestBody, RetryingSender

SERVICE = "dataverse"
DOP_HINT_HEADER = "x-ms-dop-hint"
API_PATH = "/api/data/v9.2"
MAX_PAGE_SIZE = 5000  # odata.maxpagesize ceiling
RETRYABLE_STATUS = frozenset({502, 503, 504})
RECORD_LEVEL_STATUS = frozenset({400, 404, 409, 412, 413})  # this record's fault, not the call's
SCHEMA_ERROR_CODES = frozenset({"0x80060888"})  # unknown property/segment: field map or schema drift

TIMEOUT_READ = httpx.Timeout(120.0, connect=10.0)
TIMEOUT_WRITE = httpx.Timeout(180.0, connect=10.0)  # bulk messages run plug-ins for every record

BASE_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}


def request_id(response: httpx.Response) -> str | None:
    value = response.headers.get("REQ_ID") or response.headers.get("x-ms-service-request-id")
    return str(value) if value else None


# Prefer preference asking for formatted values (option labels, lookup names) beside the raw ones.
FORMATTED_VALUES = 'odata.include-annotations="OData.Community.Display.V1.FormattedValue"'


def strip_annotations(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if not key.startswith("@")}


def is_record_level(err: ApiError) -> bool:
    """The service refused this record (validation, duplicate, missing row), not the call or the schema."""
    return err.status in RECORD_LEVEL_STATUS and err.code not in SCHEMA_ERROR_CODES


def record_error(err: ApiError) -> RecordError:
    return RecordError([str(err.args[0]) if err.args else "rejected"], code=err.code or str(err.status))


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


def _checked(response: httpx.Response, operation: str) -> httpx.Response:
    """A 2xx answer as it is; any other as the typed error (or retryable failure) it stands for."""
    status = response.status_code
    if status < 300:
        return response
    code, message = _error_detail(response)
    req_id = request_id(response)
    summary = f"dataverse {operation}: HTTP {status}" + (f" {code}" if code else "")
    if status == 429:
        # Service protection refused the request before running it: safe to resend anything.
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise RetryableFailure(
            RateLimitedError(summary, service=SERVICE, retry_after=retry_after, request_id=req_id),
            failure=Failure.REFUSED,
            retry_after=retry_after,
        )
    if status in RETRYABLE_STATUS:
        raise RetryableFailure(TransientError(summary, service=SERVICE, request_id=req_id), failure=Failure.UNCERTAIN)
    raise ApiError(
        f"dataverse {operation}: {message}" if message else summary,
        service=SERVICE,
        status=status,
        code=code,
        request_id=req_id,
    )


def _page_body(response: httpx.Response, operation: str, *, empty_ok: bool) -> dict[str, Any]:
    """The JSON object of a page; an empty answer is ``{}`` when ``empty_ok``, else unreadable."""
    if empty_ok and not response.content.strip():
        return {}
    try:
        body = response.json()
    except ValueError as err:
        raise ApiError(
            f"dataverse {operation}: the answer is not JSON",
            service=SERVICE,
            status=response.status_code,
            request_id=request_id(response),
        ) from err
    if not isinstance(body, dict):
        raise ApiError(f"dataverse {operation}: the answer is not a JSON object", service=SERVICE)
    return body


class _DopHint:
    """``x-ms-dop-hint``: the number of requests in parallel Dataverse recommends for this
    organisation (Microsoft's "send parallel requests" guidance); shared by copies of a client."""

    def __init__(self) -> None:
        self.value: int | None = None

    def note(self, response: httpx.Response) -> None:
        raw = response.headers.get(DOP_HINT_HEADER, "")
        if raw.strip().isdigit() and int(raw) >= 1:
            self.value = int(raw)


class WebApi:
    """One organisation's Web API behind one ``RetryingSender``; thread-safe."""

    def __init__(self, org: str, sender: RetryingSender) -> None:
        self.root = org + API_PATH
        self.root_url = httpx.URL(self.root)
        self._sender = sender
        self._dop = _DopHint()

    @property
    def dop_hint(self) -> int | None:
        """The degree of parallelism the service last suggested (``x-ms-dop-hint``), if any."""
        return self._dop.value

    def with_policy(self, policy: RetryPolicy) -> WebApi:
        """This API with other retry rules, sharing its client, credential and counters."""
        other = copy.copy(self)
        other._sender = self._sender.with_policy(policy)
        return other

    def url(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def own_link(self, link: str) -> str:
        """A nextLink/deltaLink, checked to point at this organisation's API (the token goes with it)."""
        url = self.root_url.join(link)
        root = self.root_url
        if (url.scheme, url.host, url.port) != (root.scheme, root.host, root.port) or not (
            url.path.startswith(root.path + "/")
        ):
            raise ApiError("dataverse: a paging/delta link points outside the organisation's API", service=SERVICE)
        return str(url)

    def send(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        idempotent: bool,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout = TIMEOUT_READ,
        **body: Unpack[RequestBody],
    ) -> httpx.Response:
        """Send with the standard headers and retries; a 2xx answer, or a typed error."""
        all_headers = dict(BASE_HEADERS)
        if method == "GET":
            all_headers["If-None-Match"] = "null"  # never a cached expansion
        all_headers.update(headers or {})

        def read(response: httpx.Response) -> httpx.Response:
            self._dop.note(response)
            return _checked(response, operation)

        return self._sender.send(
            operation, method, url, read, idempotent=idempotent, timeout=timeout, headers=all_headers, **body
        )

    def pages(
        self, operation: str, url: str, params: Mapping[str, str] | None, *, prefer: str, empty_ok: bool = False
    ) -> Iterator[tuple[httpx.Response, dict[str, Any]]]:
        """Every page of a GET, following ``@odata.nextLink`` (checked to stay on this API); a link
        that comes back is a paging loop and raises before its page is handed out. With
        ``empty_ok`` an answer without a body is a page of nothing (``{}``) instead of an error."""
        headers = {"Prefer": prefer}
        seen_links: set[str] = set()
        while True:
            response = self.send(operation, "GET", url, params=params, headers=headers, idempotent=True)
            body = _page_body(response, operation, empty_ok=empty_ok)
            next_link = body.get("@odata.nextLink")
            if next_link:
                if next_link in seen_links:
                    raise ApiError(f"dataverse {operation}: nextLink repeated (paging loop)", service=SERVICE)
                seen_links.add(next_link)
            yield response, body
            if not next_link:
                return
            url, params = self.own_link(next_link), None

    def rows(
        self, operation: str, url: str, params: Mapping[str, str], *, formatted: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Every row of a query, all pages (``formatted``: with each value's formatted text, e.g. an
        option's label, as ``<column>@OData.Community.Display.V1.FormattedValue``)."""
        prefer = f"odata.maxpagesize={MAX_PAGE_SIZE}" + (f",{FORMATTED_VALUES}" if formatted else "")
        for _, body in self.pages(operation, url, params, prefer=prefer):
            for item in body.get("value") or []:
                yield strip_annotations(item)

    def send_batch(
        self, operation: str, parts: Sequence[BatchPart], *, idempotent: bool, timeout: httpx.Timeout
    ) -> list[PartResponse]:
        """One ``$batch`` of independent parts with continue-on-error; the parts' answers in order."""
        content_type, payload = build_batch(parts)
        response = self.send(
            operation,
            "POST",
            self.url("$batch"),
            content=payload,
            headers={"Content-Type": content_type, "Prefer": "odata.continue-on-error"},
            idempotent=idempotent,
            timeout=timeout,
        )
        try:
            return read_batch(response.headers.get("Content-Type", ""), response.content)
        except ValueError as err:
            raise ApiError("dataverse $batch: unreadable answer", service=SERVICE) from err
