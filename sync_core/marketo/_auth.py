"""Marketo's 2-legged OAuth as an ``httpx.Auth`` flow: one token per process, shared by all calls.

On the shared plumbing of ``sync_core.http.token_auth`` (caching, lock, counting, one replay),
the flow fetches a token from ``/identity/oauth/token`` (client credentials) only when it has
none or the one it has is about to expire, stamps ``Authorization: Bearer`` on the request, and
reads the answer: Marketo reports a bad or expired token as HTTP 200 with error 601/602, so on
those the token is dropped, fetched again once, and the request replayed once. Every request
it lets through is counted (token calls apart). It never logs or exposes the token or secret.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from typing import Any

import httpx
from pydantic import SecretStr

from sync_core.core.errors import ApiError, ConfigError, TransientError
from sync_core.http.counters import ApiCounters
from sync_core.http.token_auth import CachedTokenAuth

SERVICE = "marketo"
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


class MarketoTokenAuth(CachedTokenAuth):
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
        super().__init__(service=SERVICE, clock=clock, counters=counters)
        self._identity_url = f"{base_url}/identity/oauth/token"
        self._client_id = client_id
        self._client_secret = client_secret
        self._margin = margin

    def _refused(self, response: httpx.Response) -> bool:
        return token_error_code(response) is not None

    def _fetch(self, now: float) -> Generator[httpx.Request, httpx.Response, tuple[str, float]]:
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
        # Identity hands back the *same* token with its remaining lifetime until it expires,
        # so a short remaining lifetime is used to the end (a 602 then triggers one refresh)
        # instead of asking identity again on every call.
        if expires_in > 2 * self._margin:
            return token, now + expires_in - self._margin
        return token, now + max(0.0, expires_in - 1.0)


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
