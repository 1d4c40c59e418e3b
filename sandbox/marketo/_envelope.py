"""The Marketo response envelope: ``requestId``, ``success``, string error codes, HTTP 200.

Owns the shape every ``/rest`` answer takes (empty ``errors``/``warnings`` omitted, as real
Lead-database responses do), the service's error texts, and the exception handlers raise for a
response-level error. It decides nothing about when an error happens.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from sandbox._http import Response

# Texts the real service sends (codes are what clients key on; texts are for people).
MESSAGES: dict[str, str] = {
    "601": "Access token invalid",
    "602": "Access token expired",
    "603": "Access denied",
    "604": "Request time-out",
    "605": "Request method '{method}' not supported",
    "606": "Max rate limit '{calls}' exceeded with in '{window}' secs",
    "607": "Daily quota reached",
    "608": "API Temporarily Unavailable",
    "609": "Invalid JSON",
    "610": "Requested resource not found",
    "611": "System error",
    "612": "Invalid Content Type",
    "613": "Invalid Multipart Request",
    "614": "Invalid Subscription",
    "615": "Concurrent access limit '{limit}' reached",
    "616": "Invalid subscription type",
    "701": "{name} cannot be blank",
    "702": "No data found for given search scenario",
    "703": "The feature is not enabled for the subscription",
    "704": "Invalid date format",
    "709": "Business Rule Violation",
    "710": "Parent Folder Not Found",
    "711": "Incompatible Folder Type",
    "712": "Merge operation invalid to converted lead",
    "713": "Transient Error",
    "714": "Unable to find the default record type",
    "718": "ExternalSalesPersonID not found",
    "719": "Lock wait timeout exception",
    "1003": "Invalid data",
    "1004": "Lead not found",
    "1005": "Lead already exists",
    "1006": "Field not found",
    "1007": "Multiple lead match lookup criteria",
    "1013": "Object not found",
    "1029": "Too many jobs in queue",
}
DEFAULTS = {"method": "GET", "calls": "100", "window": "20", "limit": "10", "name": "Value"}


def message_for(code: str, **values: Any) -> str:
    template = MESSAGES.get(code, "Error")
    return template.format(**{**DEFAULTS, **{k: str(v) for k, v in values.items()}})


class MarketoError(Exception):
    """A response-level error: the handler stops and the envelope carries ``success:false``."""

    def __init__(self, code: str, message: str | None = None) -> None:
        super().__init__(message or message_for(code))
        self.code = code
        self.message = message or message_for(code)

    @property
    def counted(self) -> bool:
        # The 6xx/7xx response-level errors are not charged to the rate limit or the quota.
        return not self.code.startswith(("6", "7"))


def blank(name: str) -> MarketoError:
    return MarketoError("701", message_for("701", name=name))


class RequestIds:
    """``<hex>#<hex>`` ids like ``e42b#14272d07d78``: a counter, then epoch milliseconds."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counter = itertools.count(random.randrange(0x1000, 0xFFFF))
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            n = next(self._counter)
        return f"{n:x}#{int(self._clock() * 1000):x}"


def success(request_id: str, payload: dict[str, Any]) -> Response:
    body: dict[str, Any] = {"requestId": request_id}
    body.update((k, v) for k, v in payload.items() if not (k in ("errors", "warnings") and not v))
    body["success"] = True
    return Response.json(body)


def failure(request_id: str, code: str, message: str) -> Response:
    return Response.json({"requestId": request_id, "success": False, "errors": [{"code": code, "message": message}]})
