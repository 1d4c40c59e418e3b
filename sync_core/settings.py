"""Every setting the app reads, read in one place (design §7), validated at start-up.

``Settings.from_env`` takes a mapping (``os.environ`` in production, a dict in tests) and either
returns a complete, typed ``Settings`` or raises one ``ConfigError`` naming *every* missing or
malformed setting, so an admin fixes them all in one deployment rather than one per restart.
Secrets are ``SecretStr``: they never appear in a ``repr``, a log line or a run report.
Nothing else in ``sync_core`` reads the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from sync_core.core.errors import ConfigError
from sync_core.core.retention import DEFAULT_CLAIM_DAYS, DEFAULT_COLLISION_DAYS, DEFAULT_RUN_REPORT_DAYS, Retention

DEFAULT_SCHEDULE = "0 */5 * * * *"
DEFAULT_WEBHOOK_DEADLINE = 20.0  # seconds; Marketo waits 30 s for a webhook
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class DynamicsDeletePolicy(StrEnum):
    """What a delete in Dynamics does to the linked Marketo person."""

    FLAG = "flag"  # set microsoftIsDeleted and unlink (the native behaviour, default)
    IGNORE = "ignore"  # leave the person as it is, unlink only


class MarketoDeletePolicy(StrEnum):
    """What a delete in Marketo does to the linked Dynamics record."""

    IGNORE = "ignore"  # not sent to Dynamics; the link is dropped (the native behaviour, default)
    DELETE = "delete"  # delete the linked Dynamics lead/contact too


# Setting name -> field name. The names are a fixed interface (design §7); the extras below the
# blank line go beyond §7 and all have defaults.
ENV_NAMES: dict[str, str] = {
    "MARKETO_BASE_URL": "marketo_base_url",
    "MARKETO_CLIENT_ID": "marketo_client_id",
    "MARKETO_CLIENT_SECRET": "marketo_client_secret",
    "DATAVERSE_URL": "dataverse_url",
    "DATAVERSE_TENANT_ID": "dataverse_tenant_id",
    "DATAVERSE_CLIENT_ID": "dataverse_client_id",
    "DATAVERSE_CLIENT_SECRET": "dataverse_client_secret",
    "DATAVERSE_STATIC_TOKEN": "dataverse_static_token",
    "AzureWebJobsStorage": "azure_webjobs_storage",
    "SYNC_TABLES_CONNECTION": "tables_connection",
    "SYNC_TABLES_ENDPOINT": "tables_endpoint",
    "SYNC_SCHEDULE": "schedule",
    "SYNC_FIELD_MAP": "field_map",
    "WEBHOOK_SHARED_SECRET": "webhook_shared_secret",
    #
    "SYNC_DYNAMICS_DELETES": "dynamics_delete_policy",
    "SYNC_MARKETO_DELETES": "marketo_delete_policy",
    "SYNC_TABLE_PREFIX": "table_prefix",
    "MARKETO_RATE_SHARE": "marketo_rate_share",
    "MARKETO_DAILY_QUOTA": "marketo_daily_quota",
    "DATAVERSE_BATCH_SIZE": "dataverse_batch_size",
    "DATAVERSE_MAX_PARALLEL": "dataverse_max_parallel",
    "SYNC_LEASE_SECONDS": "lease_seconds",
    "WEBHOOK_DEADLINE_SECONDS": "webhook_deadline_seconds",
    # retention (README "What the sync keeps"): days an append-style row is kept
    "SYNC_RETENTION_RUN_REPORTS_DAYS": "retention_run_reports_days",
    "SYNC_RETENTION_COLLISIONS_DAYS": "retention_collisions_days",
    "SYNC_RETENTION_CLAIMS_DAYS": "retention_claims_days",
}
FIELD_TO_ENV = {field: env for env, field in ENV_NAMES.items()}


def _is_connection_string(value: str) -> bool:
    return value.strip() == "UseDevelopmentStorage=true" or "AccountName=" in value or "TableEndpoint=" in value


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    marketo_base_url: str
    marketo_client_id: str = Field(min_length=1)
    marketo_client_secret: SecretStr
    dataverse_url: str
    dataverse_tenant_id: str | None = None
    dataverse_client_id: str | None = None
    dataverse_client_secret: SecretStr | None = None
    dataverse_static_token: SecretStr | None = None
    azure_webjobs_storage: SecretStr | None = None
    tables_connection: SecretStr | None = None
    tables_endpoint: str | None = None
    schedule: str = DEFAULT_SCHEDULE
    field_map: str | None = None
    webhook_shared_secret: SecretStr | None = None

    dynamics_delete_policy: DynamicsDeletePolicy = DynamicsDeletePolicy.FLAG
    marketo_delete_policy: MarketoDeletePolicy = MarketoDeletePolicy.IGNORE
    table_prefix: str = Field(default="sync", pattern=r"^[A-Za-z][A-Za-z0-9]{0,30}$")
    marketo_rate_share: float = Field(default=0.5, gt=0, le=1)
    marketo_daily_quota: int = Field(default=50_000, gt=0)
    dataverse_batch_size: int = Field(default=1000, ge=1, le=1000)
    # Bulk messages in flight at once: Dataverse's x-ms-dop-hint, capped by this (52 per user is the
    # service's concurrency limit, shared with the webhook and anything else using the same user).
    dataverse_max_parallel: int = Field(default=8, ge=1, le=52)
    # The cycle lease: renewed every third of this while a cycle runs, so a crashed cycle blocks
    # the next one for at most this long (well inside one schedule period).
    lease_seconds: int = Field(default=90, ge=3, le=3600)
    # The webhook answers by then (503 + Retry-After if its work cannot finish); under Marketo's 30 s.
    webhook_deadline_seconds: float = Field(default=DEFAULT_WEBHOOK_DEADLINE, ge=1, le=25)
    # retention, in days (README "What the sync keeps")
    retention_run_reports_days: int = Field(default=DEFAULT_RUN_REPORT_DAYS, ge=1, le=3650)
    retention_collisions_days: int = Field(default=DEFAULT_COLLISION_DAYS, ge=1, le=3650)
    retention_claims_days: int = Field(default=DEFAULT_CLAIM_DAYS, ge=1, le=3650)

    @property
    def retention(self) -> Retention:
        return Retention(
            run_reports=timedelta(days=self.retention_run_reports_days),
            collisions=timedelta(days=self.retention_collisions_days),
            claims=timedelta(days=self.retention_claims_days),
        )

    @field_validator("marketo_base_url", "dataverse_url", "tables_endpoint")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("marketo_base_url", "dataverse_url")
    @classmethod
    def _https(cls, value: str) -> str:
        # Tokens and secrets travel to these: plain http only to this machine (the sandbox).
        host = (urlsplit(value).hostname or "").lower()
        if not value.startswith("https://") and host not in _LOOPBACK:
            raise ValueError("must be an https:// URL (plain http only for a loopback sandbox)")
        if not host:
            raise ValueError("must be a URL with a host name")
        return value

    @field_validator("schedule")
    @classmethod
    def _ncrontab(cls, value: str) -> str:
        if len(value.split()) != 6:
            raise ValueError("must be a six-field NCRONTAB expression (second minute hour day month weekday)")
        return value

    @property
    def tables_connection_string(self) -> str | None:
        """The Table Storage connection string to use, if any (else: endpoint + managed identity)."""
        if self.tables_connection is not None:
            return self.tables_connection.get_secret_value()
        if self.azure_webjobs_storage is not None and _is_connection_string(
            self.azure_webjobs_storage.get_secret_value()
        ):
            return self.azure_webjobs_storage.get_secret_value()
        return None

    @property
    def dataverse_uses_client_secret(self) -> bool:
        return self.dataverse_client_secret is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        values: dict[str, Any] = {}
        for env, field in ENV_NAMES.items():
            raw = environ.get(env)
            if raw is not None and raw.strip() != "":
                values[field] = raw.strip()
        problems: list[str] = []
        settings: Settings | None = None
        try:
            settings = cls(**values)
        except ValidationError as err:
            for issue in err.errors():
                field = str(issue["loc"][0]) if issue["loc"] else "?"
                name = FIELD_TO_ENV.get(field, field)
                problems.append(f"{name}: {'missing' if issue['type'] == 'missing' else issue['msg']}")
        problems += _cross_field_problems(values)
        if problems:
            raise ConfigError(sorted(set(problems)))
        assert settings is not None
        return settings


def _cross_field_problems(values: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    has_connection = "tables_connection" in values or (
        "azure_webjobs_storage" in values and _is_connection_string(_plain(values["azure_webjobs_storage"]))
    )
    if not has_connection and "tables_endpoint" not in values:
        problems.append(
            "SYNC_TABLES_CONNECTION / SYNC_TABLES_ENDPOINT: missing (set a Table Storage connection string, "
            "or an endpoint used with the managed identity)"
        )
    secret_parts = ["dataverse_tenant_id", "dataverse_client_id", "dataverse_client_secret"]
    present = [part for part in secret_parts if part in values]
    if "dataverse_client_secret" in values and len(present) != len(secret_parts):
        missing = [FIELD_TO_ENV[part] for part in secret_parts if part not in values]
        problems.append(f"{', '.join(missing)}: missing (needed with DATAVERSE_CLIENT_SECRET)")
    return problems


def _plain(value: Any) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


# Where telemetry goes (README "Operating: Telemetry"). Read apart from ``Settings``: telemetry is
# set up when the process starts, before (and whether or not) the sync's own settings are valid, so
# a configuration error is itself seen in Application Insights.
TELEMETRY_ENV_NAMES: dict[str, str] = {
    # set by the Bicep (and by the Functions platform); the exporter signs in with the identity
    # named in APPLICATIONINSIGHTS_AUTHENTICATION_STRING (local auth is off)
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "connection_string",
    # local only: spans, metrics and events printed on stderr
    "SYNC_TELEMETRY_CONSOLE": "console",
}


class TelemetrySettings(BaseModel):
    """Where this process sends its telemetry: Application Insights, the console, or nowhere."""

    model_config = ConfigDict(frozen=True)

    connection_string: str | None = None
    console: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TelemetrySettings:
        values = {
            field: raw.strip()
            for env, field in TELEMETRY_ENV_NAMES.items()
            if (raw := environ.get(env)) is not None and raw.strip() != ""
        }
        try:
            return cls(**values)
        except ValidationError as err:
            names = {field: env for env, field in TELEMETRY_ENV_NAMES.items()}
            raise ConfigError(
                sorted(f"{names.get(str(issue['loc'][0]), '?')}: {issue['msg']}" for issue in err.errors())
            ) from err
