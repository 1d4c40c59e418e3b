from __future__ import annotations

from datetime import timedelta

import pytest

from sync_core.core.errors import ConfigError
from sync_core.cycle.engine import CycleOptions
from sync_core.settings import ENV_NAMES, DynamicsDeletePolicy, Settings

MINIMAL = {
    "MARKETO_BASE_URL": "https://123-ABC-456.mktorest.com/",
    "MARKETO_CLIENT_ID": "cid",
    "MARKETO_CLIENT_SECRET": "s3cret-marketo",
    "DATAVERSE_URL": "https://contoso.crm.dynamics.com",
    "SYNC_TABLES_CONNECTION": "UseDevelopmentStorage=true",
}


def test_minimal_settings_use_defaults() -> None:
    settings = Settings.from_env(MINIMAL)
    assert settings.marketo_base_url == "https://123-ABC-456.mktorest.com"
    assert settings.schedule == "0 */5 * * * *"
    assert settings.dynamics_delete_policy is DynamicsDeletePolicy.FLAG
    assert settings.tables_connection_string == "UseDevelopmentStorage=true"


def test_every_problem_is_named_at_once() -> None:
    env = {"MARKETO_BASE_URL": "ftp://nope", "SYNC_SCHEDULE": "*/5 * * * *", "DATAVERSE_BATCH_SIZE": "5000"}
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    text = str(err.value)
    for name in [
        "MARKETO_BASE_URL",
        "MARKETO_CLIENT_ID",
        "MARKETO_CLIENT_SECRET",
        "DATAVERSE_URL",
        "SYNC_SCHEDULE",
        "DATAVERSE_BATCH_SIZE",
        "SYNC_TABLES_CONNECTION",
    ]:
        assert name in text


def test_secrets_never_show_in_repr_or_errors() -> None:
    settings = Settings.from_env({**MINIMAL, "WEBHOOK_SHARED_SECRET": "hook-secret-value"})
    assert "s3cret-marketo" not in repr(settings)
    assert "hook-secret-value" not in repr(settings)
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**MINIMAL, "DATAVERSE_CLIENT_SECRET": "dv-secret-value"})
    assert "dv-secret-value" not in str(err.value)
    assert "DATAVERSE_TENANT_ID" in str(err.value)
    assert "DATAVERSE_CLIENT_ID" in str(err.value)


def test_endpoint_alone_is_enough_for_tables() -> None:
    env = {k: v for k, v in MINIMAL.items() if k != "SYNC_TABLES_CONNECTION"}
    settings = Settings.from_env({**env, "SYNC_TABLES_ENDPOINT": "https://acct.table.core.windows.net"})
    assert settings.tables_connection_string is None
    assert settings.tables_endpoint == "https://acct.table.core.windows.net"


def test_identity_based_host_storage_is_not_taken_for_a_connection_string() -> None:
    env = {k: v for k, v in MINIMAL.items() if k != "SYNC_TABLES_CONNECTION"}
    with pytest.raises(ConfigError):
        Settings.from_env({**env, "AzureWebJobsStorage": "not-a-connection-string"})


def test_design_section_7_names_are_all_read() -> None:
    for name in [
        "MARKETO_BASE_URL",
        "MARKETO_CLIENT_ID",
        "MARKETO_CLIENT_SECRET",
        "DATAVERSE_URL",
        "DATAVERSE_TENANT_ID",
        "DATAVERSE_CLIENT_ID",
        "DATAVERSE_CLIENT_SECRET",
        "DATAVERSE_STATIC_TOKEN",
        "AzureWebJobsStorage",
        "SYNC_TABLES_CONNECTION",
        "SYNC_TABLES_ENDPOINT",
        "SYNC_SCHEDULE",
        "SYNC_FIELD_MAP",
        "WEBHOOK_SHARED_SECRET",
    ]:
        assert name in ENV_NAMES


@pytest.mark.parametrize(("value", "seconds"), [(None, 1200), ("420", 420), ("10", 10)])
def test_the_cycle_budget_reaches_the_engine(value: str | None, seconds: int) -> None:
    env = MINIMAL if value is None else {**MINIMAL, "SYNC_CYCLE_BUDGET_SECONDS": value}
    assert CycleOptions.from_settings(Settings.from_env(env)).budget == timedelta(seconds=seconds)


@pytest.mark.parametrize("value", ["0", "9", "-5", "soon", "86401"])
def test_a_cycle_budget_out_of_range_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigError, match="SYNC_CYCLE_BUDGET_SECONDS"):
        Settings.from_env({**MINIMAL, "SYNC_CYCLE_BUDGET_SECONDS": value})
