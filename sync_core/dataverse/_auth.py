"""Dataverse bearer tokens as an ``httpx.Auth`` flow over any azure-identity style credential.

The credential (``get_token(scope) -> AccessToken``) is asked for ``{org}/.default`` only when
no token is cached or the cached one expires within the margin; a 401 drops the token, asks
once more and replays the request once. Every request it lets through is counted, credential
calls apart. The token is never logged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator

import httpx
from azure.core.credentials import TokenCredential
from azure.core.exceptions import ClientAuthenticationError

from sync_core.core.errors import ConfigError, TransientError
from sync_core.http.counters import ApiCounters

SERVICE = "dataverse"
OPERATION_KEY = "sync_core.operation"


class CredentialAuth(httpx.Auth):
    def __init__(
        self,
        credential: TokenCredential,
        *,
        scope: str,
        wall_clock: Callable[[], float],
        counters: ApiCounters | None = None,
        margin: float = 300.0,
    ) -> None:
        self._credential = credential
        self._scope = scope
        self._wall_clock = wall_clock
        self._counters = counters
        self._margin = margin
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_on = 0.0

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._current_token()
        response = yield self._stamped(request, token)
        if response.status_code != 401:
            return
        self._forget(token)
        yield self._stamped(request, self._current_token())

    def _stamped(self, request: httpx.Request, token: str) -> httpx.Request:
        request.headers["Authorization"] = f"Bearer {token}"
        if self._counters is not None:
            self._counters.record_call(SERVICE, str(request.extensions.get(OPERATION_KEY, request.url.path)))
        return request

    def _forget(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None

    def _current_token(self) -> str:
        with self._lock:
            now = self._wall_clock()
            if self._token is not None and now < self._expires_on - self._margin:
                return self._token
            if self._counters is not None:
                self._counters.record_token_call(SERVICE)
            try:
                access = self._credential.get_token(self._scope)
            except ClientAuthenticationError as err:  # includes CredentialUnavailableError
                raise ConfigError([f"Dataverse credential: {type(err).__name__} (check DATAVERSE_* settings)"]) from err
            except Exception as err:  # azure-identity raises its own (ClientAuthenticationError, ...)
                raise TransientError(f"dataverse credential failed: {type(err).__name__}", service=SERVICE) from err
            self._token = access.token
            self._expires_on = float(access.expires_on)
            return access.token
