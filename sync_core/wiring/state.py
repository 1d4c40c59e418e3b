"""The Table state store the settings describe (connection string or endpoint + Entra credential).

Wiring, not storage: ``state/`` knows Table Storage, this module knows the settings that point at it.
"""

from __future__ import annotations

from collections.abc import Callable

from azure.core.credentials import TokenCredential

from sync_core.core.errors import ConfigError
from sync_core.settings import Settings
from sync_core.state import TableStateStore


def default_credential() -> TokenCredential:
    # Imported here: azure-identity is only needed when there is no connection string, and it is
    # slow to import. DefaultAzureCredential picks up a user-assigned identity from AZURE_CLIENT_ID.
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def build_state_store(
    settings: Settings, *, credential_factory: Callable[[], TokenCredential] = default_credential
) -> TableStateStore:
    """The Table store the settings describe: a connection string if there is one, else the
    endpoint with ``credential_factory()`` (``DefaultAzureCredential`` unless a test injects one)."""
    connection_string = settings.tables_connection_string
    if connection_string is not None:
        try:
            return TableStateStore.from_connection_string(
                connection_string, prefix=settings.table_prefix, retention=settings.retention
            )
        except (ValueError, TypeError) as err:  # the SDK's "blank or malformed", a key that is not base64
            name = "SYNC_TABLES_CONNECTION" if settings.tables_connection is not None else "AzureWebJobsStorage"
            raise ConfigError([f"{name}: not a usable Table Storage connection string ({err})"]) from err
    if settings.tables_endpoint is not None:
        try:
            return TableStateStore.from_endpoint(
                settings.tables_endpoint,
                credential_factory(),
                prefix=settings.table_prefix,
                retention=settings.retention,
            )
        except ValueError as err:  # e.g. the SDK refuses a token over plain http
            raise ConfigError([f"SYNC_TABLES_ENDPOINT: {err}"]) from err
    raise ConfigError(["SYNC_TABLES_CONNECTION / SYNC_TABLES_ENDPOINT: missing"])
