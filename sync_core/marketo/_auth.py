"""Marketo's 2-legged OAuth as an ``httpx.Auth`` flow: one token per process, shared by all calls.

The flow fetches a token from ``/identity/oauth/token`` (client credentials) only when it has
none or the one it has is about to expire, stamps ``Authorization: Bearer`` on the request, and
reads the answer: Marketo reports a bad or expired token as HTTP 200 with error 601/602, so on
those the token is dropped, fetched again once, and the request replayed once. Every request
it lets through is counted (token calls apart). It never logs or exposes the token or secret.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Generator
from typing import Any

import httpx
from pydantic import SecretStr

from sync_core.core.errors import ApiError, ConfigError, TransientError
from sync_core.http.counters import ApiCounters

SERVICE = "marketo"
OPERATION_KEY = "sync_core.operation"  # request extension naming the operation, for the counters
TOKEN_ERROR_CODES = frozenset({"601", "602"})
IDENTITY_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


def token_error_code(response: httpx.Response) -> str | None:
    """``"601"``/``"602"`` when Marketo says the token is invalid/expired, else ``None``."""
    if response.status_code != 200:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("success") is not False:
        return None
    for error in body.get("errors") or []:
        code = str(error.get("code")) if isinstance(error, dict) else None
        if code in TOKEN_ERROR_CODES:
            return code
    return None


class MarketoTokenAuth(httpx.Auth):
    requires_response_body = True  # 601/602 arrive in the body of a 200

    def __init__(
        self,
        *,
        base_url: str,
        client_id: str,
        client_secret: SecretStr,
        clock: Callable[[], float],
        counters: ApiCounters | None = None,
        margin: float = 60.0,
    ) -> None:
        self._identity_url = f"{base_url}/identity/oauth/token"
        self._client_id = client_id
        self._client_secret = client_secret
        self._clock = clock
        self._counters = counters
        self._margin = margin
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = yield from self._current_token()
        response = yield self._stamped(request, token)
        if token_error_code(response) is None:
            return
        self._forget(token)
        token = yield from self._current_token()
        yield self._stamped(request, token)

    def _stamped(self, request: httpx.Request, token: str) -> httpx.Request:
        request.headers["Authorization"] = f"Bearer {token}"
        if self._counters is not None:
            self._counters.record_call(SERVICE, str(request.extensions.get(OPERATION_KEY, request.url.path)))
        return request

    def _forget(self, token: str) -> None:
        with self._lock:
            if self._token == token:  # another thread may have refreshed already
                self._token = None

    def _current_token(self) -> Generator[httpx.Request, httpx.Response, str]:
        # The lock is held across the identity request so concurrent callers wait for one token
        # instead of each fetching their own; httpx closes the flow (releasing it) on any error.
        with self._lock:
            now = self._clock()
            if self._token is not None and now < self._refresh_at:
                return self._token
            if self._counters is not None:
                self._counters.record_token_call(SERVICE)
            response = yield httpx.Request(
                "GET",
                self._identity_url,
                params={
                    "grant_type": "client_credentials",
                    "client_id": self._client_id,
                    "client_secret": self._client_secret.get_secret_value(),
                },
                extensions={"timeout": IDENTITY_TIMEOUT.as_dict()},
            )
            token, expires_in = _read_token(response)
            self._token = token
            # Identity hands back the *same* token with its remaining lifetime until it expires,
            # so a short remaining lifetime is used to the end (a 602 then triggers one refresh)
            # instead of asking identity again on every call.
            if expires_in > 2 * self._margin:
                self._refresh_at = now + expires_in - self._margin
            else:
                self._refresh_at = now + max(0.0, expires_in - 1.0)
            return token


def _read_token(response: httpx.Response) -> tuple[str, float]:
    status = response.status_code
    body: Any
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if status in (400, 401, 403):
        error = body.get("error") if isinstance(body, dict) else None
        raise ConfigError(
            [f"MARKETO_CLIENT_ID / MARKETO_CLIENT_SECRET: rejected by Marketo identity (HTTP {status}, {error})"]
        )
    if status >= 500 or status == 429:
        raise TransientError(f"marketo identity answered HTTP {status}", service=SERVICE)
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
        raise ApiError("marketo identity answered without an access token", service=SERVICE, status=status)
    try:
        expires_in = float(body.get("expires_in", 0))
    except (TypeError, ValueError):
        expires_in = 0.0
    return body["access_token"], expires_in
