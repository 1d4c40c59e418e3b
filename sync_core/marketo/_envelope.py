"""Marketo's response envelope, read once: ``success:false`` and HTTP failures become typed errors.

Marketo answers almost everything with HTTP 200 and puts the verdict in the body
(``{"requestId","success","errors":[{"code","message"}],"result","moreResult","nextPageToken"}``),
so this is where the fatal / retriable / skippable split happens: throttling and outages become
``RetryableFailure`` (for the one retry loop), the daily quota ``QuotaExceededError``, anything
else ``ApiError`` with code and request id. Record-level verdicts inside ``result`` are left to
the caller. Missing ``result``, missing ``errors`` and plain-string warnings are tolerated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from sync_core.core.errors import ApiError, QuotaExceededError, RateLimitedError, TransientError
from sync_core.http.retry import Failure, RetryableFailure, parse_retry_after

SERVICE = "marketo"
RATE_WINDOW_SECONDS = 20.0

# Response-level codes worth another attempt, and whether the service acted on the request.
RETRYABLE_CODES: dict[str, Failure] = {
    "606": Failure.REFUSED,  # > 100 calls in 20 s
    "615": Failure.REFUSED,  # > 10 calls in flight
    "608": Failure.REFUSED,  # API temporarily unavailable
    "614": Failure.REFUSED,  # subscription temporarily unreachable
    "604": Failure.UNCERTAIN,  # request timed out inside Marketo
    "611": Failure.UNCERTAIN,  # system error
    "713": Failure.UNCERTAIN,  # transient
}
THROTTLE_CODES = frozenset({"606", "615"})
QUOTA_CODE = "607"
NO_DATA_CODE = "702"
RETRYABLE_STATUS = frozenset({500, 502, 503, 504})


@dataclass(frozen=True)
class Envelope:
    request_id: str | None
    result: list[dict[str, Any]]
    more_result: bool
    next_page_token: str | None
    warnings: tuple[str, ...]


def _errors(body: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for error in body.get("errors") or []:
        if isinstance(error, dict):
            found.append((str(error.get("code", "")), str(error.get("message", ""))))
        else:
            found.append(("", str(error)))
    return found


def read_envelope(response: httpx.Response, *, operation: str) -> Envelope:
    """The envelope of a Marketo REST answer, or the typed error it stands for."""
    status = response.status_code
    where = f"marketo {operation}"
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise RetryableFailure(
            RateLimitedError(f"{where}: HTTP 429", service=SERVICE, retry_after=retry_after),
            failure=Failure.REFUSED,
            retry_after=retry_after,
        )
    if status in RETRYABLE_STATUS:
        raise RetryableFailure(TransientError(f"{where}: HTTP {status}", service=SERVICE), failure=Failure.UNCERTAIN)
    if status != 200:
        raise ApiError(f"{where}: HTTP {status}", service=SERVICE, status=status)
    try:
        body = json.loads(response.content)
    except ValueError as err:
        # A gateway page instead of JSON: the request may or may not have reached Marketo.
        raise RetryableFailure(
            TransientError(f"{where}: answer is not JSON", service=SERVICE), failure=Failure.UNCERTAIN
        ) from err
    if not isinstance(body, dict):
        raise ApiError(f"{where}: answer is not a JSON object", service=SERVICE, status=status)
    request_id = body.get("requestId")
    request_id = str(request_id) if request_id is not None else None
    if body.get("success") is False:
        errors = _errors(body)
        code, message = errors[0] if errors else ("", "success:false without errors")
        summary = f"{where}: {code} {message}".rstrip()
        if code == NO_DATA_CODE:
            return Envelope(request_id, [], False, body.get("nextPageToken"), ())
        if code == QUOTA_CODE:
            raise QuotaExceededError(summary, service=SERVICE, request_id=request_id)
        failure = RETRYABLE_CODES.get(code)
        if failure is not None:
            if code in THROTTLE_CODES:
                # 606 means the 20 s window is full: waiting less than the window only earns another 606.
                retry_after = RATE_WINDOW_SECONDS if code == "606" else None
                error: TransientError = RateLimitedError(
                    summary, service=SERVICE, retry_after=retry_after, request_id=request_id
                )
                raise RetryableFailure(error, failure=failure, retry_after=retry_after)
            raise RetryableFailure(TransientError(summary, service=SERVICE, request_id=request_id), failure=failure)
        raise ApiError(summary, service=SERVICE, status=status, code=code or None, request_id=request_id)
    result = body.get("result")
    if result is None:
        result = []  # activity endpoints may omit it, even with moreResult:true
    if not isinstance(result, list):
        raise ApiError(f"{where}: 'result' is not a list", service=SERVICE, status=status, request_id=request_id)
    warnings = tuple(w if isinstance(w, str) else json.dumps(w, sort_keys=True) for w in body.get("warnings") or [])
    token = body.get("nextPageToken")
    return Envelope(
        request_id=request_id,
        result=[item for item in result if isinstance(item, dict)],
        more_result=bool(body.get("moreResult", False)),
        next_page_token=str(token) if token else None,
        warnings=warnings,
    )
