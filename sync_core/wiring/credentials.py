"""Where the Dataverse bearer tokens come from: one choice, made from the settings.

``build_dataverse_credential`` returns anything with ``get_token(scope) -> AccessToken``:
a ``StaticTokenCredential`` when ``DATAVERSE_STATIC_TOKEN`` is set (the sandbox), azure-identity's
``ClientSecretCredential`` for an app registration, else ``DefaultAzureCredential`` (the Function
App's managed identity in Azure). azure-identity is imported only when needed, so the sandbox
path and the unit tests never load MSAL. Tokens are never logged; caching lives in the client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from azure.core.credentials import AccessToken, TokenCredential
from pydantic import SecretStr

from sync_core.settings import Settings

log = logging.getLogger(__name__)


class StaticTokenCredential:
    """A fixed bearer token, re-issued with a rolling expiry; for the sandbox, never for a real tenant."""

    def __init__(self, token: SecretStr | str, *, lifetime: int = 3600, clock: Callable[[], float] = time.time) -> None:
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        if not self._token.get_secret_value():
            raise ValueError("a static token cannot be empty")
        self._lifetime = lifetime
        self._clock = clock

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        return AccessToken(self._token.get_secret_value(), int(self._clock()) + self._lifetime)

    def close(self) -> None:
        """Nothing to release; present so callers can treat every credential alike."""

    def __repr__(self) -> str:
        return "StaticTokenCredential(token=**********)"


def build_dataverse_credential(settings: Settings) -> TokenCredential:
    """The credential the settings ask for (design §7): static token, client secret, or managed identity."""
    if settings.dataverse_static_token is not None:
        log.warning("Dataverse: using DATAVERSE_STATIC_TOKEN (meant for the sandbox only)")
        return StaticTokenCredential(settings.dataverse_static_token)
    if settings.dataverse_client_secret is not None:
        # Settings already insists that tenant and client id come with the secret.
        from azure.identity import ClientSecretCredential

        assert settings.dataverse_tenant_id is not None
        assert settings.dataverse_client_id is not None
        return ClientSecretCredential(
            settings.dataverse_tenant_id,
            settings.dataverse_client_id,
            settings.dataverse_client_secret.get_secret_value(),
        )
    from azure.identity import DefaultAzureCredential

    # Without a secret, DATAVERSE_CLIENT_ID (if set) names the user-assigned managed identity to use.
    if settings.dataverse_client_id:
        return DefaultAzureCredential(managed_identity_client_id=settings.dataverse_client_id)
    return DefaultAzureCredential()
