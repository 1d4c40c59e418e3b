"""Choosing and wiring the Table store from the settings, and how service failures surface.

``build_state_store`` runs with a fake credential (no network); the endpoint path is also shown
working end to end on Azurite with a named-key credential, the same code path as a managed identity.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from azure.core.credentials import AccessToken, AzureNamedKeyCredential
from azure.data.tables import TableServiceClient

from sandbox.azurite import DEV_ACCOUNT, DEV_KEY, connection_string, free_port
from sync_core.core.errors import ConfigError, TransientError
from sync_core.core.models import Cursor
from sync_core.settings import Settings
from sync_core.state import TableStateStore
from sync_core.wiring.state import build_state_store

BASE = {
    "MARKETO_BASE_URL": "https://123-ABC-456.mktorest.com",
    "MARKETO_CLIENT_ID": "cid",
    "MARKETO_CLIENT_SECRET": "secret",
    "DATAVERSE_URL": "https://contoso.crm.dynamics.com",
}
AZURITE = connection_string(10002)


class FakeCredential:
    """A TokenCredential that is never asked for a token in these tests."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise AssertionError("no request should be sent")


class Factory:
    def __init__(self) -> None:
        self.made: list[FakeCredential] = []

    def __call__(self) -> FakeCredential:
        self.made.append(FakeCredential())
        return self.made[-1]


@pytest.mark.parametrize(
    "env",
    [
        {"SYNC_TABLES_CONNECTION": AZURITE},
        {"AzureWebJobsStorage": AZURITE, "SYNC_TABLES_ENDPOINT": "https://other.table.core.windows.net"},
    ],
)
def test_connection_string_wins_and_needs_no_credential(env: dict[str, str]) -> None:
    factory = Factory()
    store = build_state_store(
        Settings.from_env({**BASE, **env, "SYNC_TABLE_PREFIX": "demo"}), credential_factory=factory
    )
    assert isinstance(store, TableStateStore)
    assert store.service.url.startswith("http://127.0.0.1:10002/devstoreaccount1")
    assert isinstance(store.service.credential, AzureNamedKeyCredential)
    assert store.tables.links == "demolinks"
    assert factory.made == []


def test_endpoint_alone_uses_the_injected_token_credential() -> None:
    factory = Factory()
    settings = Settings.from_env({**BASE, "SYNC_TABLES_ENDPOINT": "https://acct.table.core.windows.net/"})
    store = build_state_store(settings, credential_factory=factory)
    assert store.service.url.startswith("https://acct.table.core.windows.net")
    assert len(factory.made) == 1
    assert store.service.credential is factory.made[0]
    assert store.tables.state == "syncstate"


def test_a_token_over_plain_http_is_a_config_error_naming_the_setting() -> None:
    settings = Settings.from_env({**BASE, "SYNC_TABLES_ENDPOINT": "http://127.0.0.1:10002/devstoreaccount1"})
    with pytest.raises(ConfigError, match="SYNC_TABLES_ENDPOINT"):
        build_state_store(settings, credential_factory=Factory())


@pytest.mark.parametrize("prefix", ["1abc", "a-b", "", "a" * 54])
def test_a_prefix_that_cannot_name_a_table_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match="table prefix"):
        TableStateStore.from_connection_string(AZURITE, prefix=prefix)


@pytest.mark.azurite
def test_endpoint_with_a_credential_reaches_the_tables(azurite_connection_string: str, table_prefix: str) -> None:
    endpoint = TableServiceClient.from_connection_string(azurite_connection_string).url.rstrip("/")
    store = TableStateStore.from_endpoint(endpoint, AzureNamedKeyCredential(DEV_ACCOUNT, DEV_KEY), prefix=table_prefix)
    store.put_cursor(Cursor(name="marketo", value="t1"))
    other = TableStateStore.from_connection_string(azurite_connection_string, prefix=table_prefix)
    cursor = other.get_cursor("marketo")
    assert cursor is not None
    assert cursor.value == "t1"


def test_an_unreachable_table_service_is_a_transient_error() -> None:
    service = TableServiceClient.from_connection_string(connection_string(free_port()), retry_total=0)
    store = TableStateStore(service, prefix="sync")
    with pytest.raises(TransientError) as err:
        store.try_claim("k", owner="o", now=datetime(2026, 1, 1, tzinfo=UTC))
    assert err.value.service == "tables"
