"""Dataverse bearer tokens as an ``httpx.Auth`` flow over any azure-identity style credential.

On the shared plumbing of ``sync_core.http.token_auth`` (caching, lock, counting, one replay),
the credential (``get_token(scope) -> AccessToken``) is asked for ``{org}/.default`` only when
no token is cached or the cached one expires within the margin; a 401 drops the token, asks
once more and replays the request once. Every request it lets through is counted, credential
calls apart. The token is never logged.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import httpx
from azure.core.credentials import TokenCredential
from azure.core.exceptions import ClientAuthenticationError

from sync_core.core.errors import ConfigError, TransientError
from sync_core.http.counters import ApiCounters
from sync_core.http.token_auth import CachedTokenAuth

SERVICE = "dataverse"


class CredentialAuth(CachedTokenAuth):
    def __init__(
        self,
        credential: TokenCredential,
        *,
        scope: str,
        wall_clock: Callable[[], float],
        counters: ApiCounters | None = None,
        margin: float = 300.0,
    ) -> None:
        super().__init__(service=SERVICE, clock=wall_clock, counters=counters)
        self._credential = credential
        self._scope = scope
        self._margin = margin

    def _refused(self, response: httpx.Response) -> bool:
        return response.status_code == 401

    def _fetch(self, now: float) -> Generator[httpx.Request, httpx.Response, tuple[str, float]]:
        yield from ()  # the credential does its own I/O: no request goes through this flow
        try:
            access = self._credential.get_token(self._scope)
        except ClientAuthenticationError as err:  # includes CredentialUnavailableError
            raise ConfigError([f"Dataverse credential: {type(err).__name__} (check DATAVERSE_* settings)"]) from err
        except Exception as err:  # azure-identity raises its own (ClientAuthenticationError, ...)
            raise TransientError(f"dataverse credential failed: {type(err).__name__}", service=SERVICE) from err
        return access.token, float(access.expires_on) - self._margin
