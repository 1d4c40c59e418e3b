"""Configuration errors, caught before any work and told in one line (design §7).

Every command (``run-once``, ``status``, ``host``) and the timer answer a configuration error
with one JSON line ``{"error", "setting", "hint"}`` (commands: on stderr, exit 2; the timer: in
its log, and the execution fails). ``check_config`` finds what the settings alone show (missing
or malformed values, a non-https ``DATAVERSE_URL``, a broken field map, a malformed Table
connection string) without I/O; ``check_reachable`` then makes one call to each service a
command uses, so what only shows on first use (a wrong Marketo secret, an unreachable Table
endpoint, a ``DATAVERSE_URL`` that is not a Dataverse organisation) is a ``ConfigError`` naming
the setting, not a traceback from deep inside a cycle. The probes use a wiring of their own,
closed afterwards, so a command's API-call counts are its own.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import httpx

from sync_core.core.errors import ApiError, ConfigError, RateLimitedError, SyncError, TransientError
from sync_core.core.fieldmap import load_field_map
from sync_core.http.retry import RetryPolicy
from sync_core.settings import ENV_NAMES, Settings
from sync_core.wiring.services import build_services
from sync_core.wiring.state import build_state_store

_HINTS: dict[str, str] = {
    "MARKETO_BASE_URL": "the REST base URL from Marketo Admin > Web Services, e.g. https://123-ABC-456.mktorest.com",
    "MARKETO_CLIENT_ID": "the client id and secret of the custom service (Admin > LaunchPoint > View Details)",
    "MARKETO_CLIENT_SECRET": "the client id and secret of the custom service (Admin > LaunchPoint > View Details)",
    "DATAVERSE_URL": "the environment URL from the Power Platform admin center, e.g. https://contoso.crm.dynamics.com "
    "(https; plain http only for a loopback sandbox)",
    "DATAVERSE_TENANT_ID": "the app registration's tenant, client id and secret, or none of them for managed identity",
    "DATAVERSE_CLIENT_ID": "the app registration's tenant, client id and secret, or none of them for managed identity",
    "DATAVERSE_CLIENT_SECRET": "the app registration's tenant, client id and secret, or none of them for managed "
    "identity; the app user needs a security role in the environment",
    "SYNC_TABLES_CONNECTION": "a Table Storage connection string (Azurite: UseDevelopmentStorage=true) that this "
    "machine can reach",
    "SYNC_TABLES_ENDPOINT": "https://<account>.table.core.windows.net, with the identity granted "
    "Storage Table Data Contributor",
    "AzureWebJobsStorage": "a Table Storage connection string that this machine can reach",
    "SYNC_FIELD_MAP": "a path to, or inline JSON of, a field map; see sync_core/fieldmap.default.json",
    "SYNC_SCHEDULE": 'six NCRONTAB fields, e.g. "0 */5 * * * *"',
    "DATAVERSE_SYNC_FILTER_FIELD": "the logical name of a Two Options column on lead and contact (only No "
    "excludes a record), or empty to filter on no column; see README 'Which records sync'",
    "MARKETO_SYNC_FILTER_FIELD": "the REST API name of a boolean person field (only false excludes a person); "
    "see README 'Which records sync'",
    "DATAVERSE_SYNC_FILTER": "a condition such as statecode eq 0 and not endswith(emailaddress1,'@test.example.com'): "
    "name op value joined by and/or/not; see README 'Which records sync'",
    "MARKETO_SYNC_FILTER": "a condition such as leadSource ne 'Partner' and not contains(email,'+test'): "
    "name op value joined by and/or/not; see README 'Which records sync'",
}
KEY_VAULT_PREFIX = "@Microsoft.KeyVault("
KEY_VAULT_HINT = (
    "the app setting is still a Key Vault reference, so the platform could not resolve it: grant the function "
    "app's identity 'Key Vault Secrets User' on the vault, check the secret URI (SecretUri=... or "
    "VaultName=...;SecretName=...) and the vault's network access; the portal's Environment variables page "
    "shows each reference's status"
)
_KEY_VAULT_PROBLEM = "an unresolved Key Vault reference"
_PROBE_RETRY = RetryPolicy(max_attempts=2, initial_delay=0.25, max_delay=1.0, max_retry_after=2.0, max_total_wait=3.0)
_DEFAULT_HINT = "fix the setting named and run the command again; `python -m sync_core check` tests the whole setup"
_NAMES = sorted(ENV_NAMES, key=len, reverse=True)  # longest first: DATAVERSE_CLIENT_ID before ..._ID
_KEYWORDS = (("Dataverse credential", "DATAVERSE_CLIENT_SECRET"), ("Dataverse table", "DATAVERSE_URL"))


def _settings_named(problem: str) -> list[str]:
    head = problem.split(":", 1)[0]
    found = [name for name in _NAMES if re.search(rf"(?<![A-Za-z_]){re.escape(name)}(?![A-Za-z_])", head)]
    if not found:
        found = [name for keyword, name in _KEYWORDS if keyword in problem]
    return sorted(found, key=lambda name: head.find(name) if name in head else 0)


def config_error_payload(err: ConfigError) -> dict[str, Any]:
    """``{"error", "setting", "hint"}`` for ``err``: every problem, the settings they name, a fix."""
    names: list[str] = []
    for problem in err.problems:
        names += [name for name in _settings_named(problem) if name not in names]
    if any(_KEY_VAULT_PROBLEM in problem for problem in err.problems):
        hint = KEY_VAULT_HINT
    else:
        hint = _HINTS.get(names[0], _DEFAULT_HINT) if names else _DEFAULT_HINT
    return {
        "error": "; ".join(err.problems) or "invalid configuration",
        "setting": ", ".join(names) if names else None,
        "hint": hint,
    }


def config_error_line(err: ConfigError) -> str:
    """The one JSON line for ``err``: every problem in ``error``, the settings they name in ``setting``."""
    return json.dumps(config_error_payload(err), ensure_ascii=False)


def unresolved_references(environ: Mapping[str, str]) -> list[str]:
    """App settings whose value is still ``@Microsoft.KeyVault(...)``: in Azure the platform swaps a
    resolved reference for the secret before the process starts, so one seen here did not resolve."""
    return sorted(name for name, value in environ.items() if value.strip().startswith(KEY_VAULT_PREFIX))


def check_config(environ: Mapping[str, str]) -> Settings:
    """What the settings alone show (no I/O): ``ConfigError`` naming each problem. A setting that
    is an unresolved Key Vault reference is told as such, not as a wrong value."""
    unresolved = unresolved_references(environ)
    if unresolved:
        raise ConfigError([f"{name}: {_KEY_VAULT_PROBLEM} (the value is not the secret)" for name in unresolved])
    settings = Settings.from_env(environ)
    load_field_map(settings.field_map)
    build_state_store(settings)  # a malformed connection string fails here
    return settings


def _tables_setting(settings: Settings) -> str:
    if settings.tables_connection is not None:
        return "SYNC_TABLES_CONNECTION"
    if settings.tables_connection_string is not None:
        return "AzureWebJobsStorage"
    return "SYNC_TABLES_ENDPOINT"


def _unreachable(err: BaseException) -> bool:
    """A transport failure (refused, DNS, TLS, timeout), not an answer from the service."""
    while err is not None:
        if isinstance(err, (httpx.TransportError, OSError)):
            return True
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    return False


def check_reachable(settings: Settings, *, tables: bool = True, marketo: bool = True, dataverse: bool = True) -> None:
    """One call to each service named: a ``ConfigError`` naming the setting when it cannot be used."""
    services = build_services(settings)
    quiet = logging.getLogger("sync_core")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # a probe's retries and warnings would only repeat the error told below
    try:
        if tables:
            setting = _tables_setting(settings)
            try:
                services.store.get_cursor("preflight")
            except ConfigError:
                raise
            except Exception as err:  # the SDK's own errors too (e.g. a credential it cannot get)
                raise ConfigError([f"{setting}: Table Storage cannot be used ({type(err).__name__}: {err})"]) from err
        if marketo:
            try:
                services.marketo.with_retry_policy(_PROBE_RETRY).get_usage_today()
            except (ConfigError, RateLimitedError):
                raise
            except TransientError as err:
                if not _unreachable(err):
                    raise
                raise ConfigError([f"MARKETO_BASE_URL: {settings.marketo_base_url} cannot be reached"]) from err
            except SyncError as err:
                raise ConfigError(
                    [f"MARKETO_BASE_URL: {settings.marketo_base_url} does not answer as Marketo's REST API ({err})"]
                ) from err
        if dataverse:
            try:
                services.dataverse.with_retry_policy(_PROBE_RETRY).get_entity_metadata("lead")
            except (ConfigError, RateLimitedError):
                raise
            except TransientError as err:
                if not _unreachable(err):
                    raise
                raise ConfigError([f"DATAVERSE_URL: {settings.dataverse_url} cannot be reached"]) from err
            except ApiError as err:
                if err.status not in (401, 403):
                    raise ConfigError(
                        [f"DATAVERSE_URL: {settings.dataverse_url} does not answer as a Dataverse organisation ({err})"]
                    ) from err
                raise ConfigError(
                    [
                        f"Dataverse credential refused by {settings.dataverse_url} ({err.status}): check DATAVERSE_* "
                        "settings and that the application user exists in this environment"
                    ]
                ) from err
            except Exception as err:  # an answer that is not the Dataverse Web API's
                raise ConfigError(
                    [
                        f"DATAVERSE_URL: {settings.dataverse_url} does not answer as a Dataverse organisation "
                        f"({type(err).__name__}: {err})"
                    ]
                ) from err
    finally:
        quiet.setLevel(level)
        services.close()
