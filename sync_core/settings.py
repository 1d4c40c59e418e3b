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
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from sync_core.core.errors import ConfigError
from sync_core.core.golive import InitialPolicy, MarketoOnlyPolicy
from sync_core.core.retention import DEFAULT_CLAIM_DAYS, DEFAULT_COLLISION_DAYS, DEFAULT_RUN_REPORT_DAYS, Retention
from sync_core.core.syncfilter import (
    DEFAULT_DATAVERSE_FIELD,
    FilterSyntaxError,
    SyncFilter,
    check_field_name,
    parse_condition,
)

DEFAULT_SCHEDULE = "0 */5 * * * *"
DEFAULT_JOBS_QUEUE = "sync-jobs"
DEFAULT_WEBHOOK_DEADLINE = 20.0  # seconds; Marketo waits 30 s for a webhook
DEFAULT_CYCLE_BUDGET = 1200  # seconds: 2/3 of host.json functionTimeout (30 min), room left to commit
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
    "SYNC_CYCLE_BUDGET_SECONDS": "cycle_budget_seconds",
    "WEBHOOK_DEADLINE_SECONDS": "webhook_deadline_seconds",
    # the initial sync (README "Go-live"): first-contact winners, Marketo-only persons, its API share
    "SYNC_INITIAL_LEAD_WINNER": "initial_lead_winner",
    "SYNC_INITIAL_CONTACT_WINNER": "initial_contact_winner",
    "SYNC_INITIAL_MARKETO_ONLY": "initial_marketo_only",
    "SYNC_INITIAL_API_SHARE": "initial_api_share",
    # chunked jobs on a queue, and the API budget shared by every instance (README "Scale-out")
    "SYNC_QUEUE_CONNECTION": "queue_connection",
    "SYNC_QUEUE_ENDPOINT": "queue_endpoint",
    "SYNC_JOBS_QUEUE": "jobs_queue",
    "SYNC_SHARED_BUDGET": "shared_budget",
    "SYNC_BACKGROUND_SHARE": "background_share",
    # retention (README "What the sync keeps"): days an append-style row is kept
    "SYNC_RETENTION_RUN_REPORTS_DAYS": "retention_run_reports_days",
    "SYNC_RETENTION_COLLISIONS_DAYS": "retention_collisions_days",
    "SYNC_RETENTION_CLAIMS_DAYS": "retention_claims_days",
    # which records sync (README "Which records sync"): a filter per side
    "DATAVERSE_SYNC_FILTER_FIELD": "dataverse_sync_filter_field",
    "DATAVERSE_SYNC_FILTER": "dataverse_sync_filter",
    "MARKETO_SYNC_FILTER_FIELD": "marketo_sync_filter_field",
    "MARKETO_SYNC_FILTER": "marketo_sync_filter",
}
# Settings where an empty value means "off" rather than "the default".
_EMPTY_IS_OFF = frozenset({"DATAVERSE_SYNC_FILTER_FIELD"})
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
    # A cycle stops taking new work after this long, commits what it finished and the next tick
    # continues: well inside host.json's functionTimeout (30 min), leaving time to commit.
    cycle_budget_seconds: int = Field(default=DEFAULT_CYCLE_BUDGET, ge=10, le=86_400)
    # The webhook answers by then (503 + Retry-After if its work cannot finish); under Marketo's 30 s.
    webhook_deadline_seconds: float = Field(default=DEFAULT_WEBHOOK_DEADLINE, ge=1, le=25)
    # The initial sync: who wins a field both sides hold differently when a pair is first linked
    # (defaults as B2), whether Marketo-only persons get a lead (default: left alone, as B8), and
    # the share of this app's API budget the job takes (the cycle and the webhook keep the rest).
    initial_lead_winner: Literal["marketo", "dynamics"] = "marketo"
    initial_contact_winner: Literal["marketo", "dynamics"] = "dynamics"
    initial_marketo_only: MarketoOnlyPolicy = MarketoOnlyPolicy.LEAVE
    initial_api_share: float = Field(default=0.5, gt=0, le=1)
    # Chunked jobs: their queue (a connection string, else an endpoint used with the managed identity,
    # else AzureWebJobsStorage when it is a connection string that reaches a queue service).
    queue_connection: SecretStr | None = None
    queue_endpoint: str | None = None
    jobs_queue: str = Field(default=DEFAULT_JOBS_QUEUE, pattern=r"^[a-z0-9](?:-?[a-z0-9]){2,55}$")
    # The API budget (Marketo's calls per 20 s and in flight, Dataverse's per 5 min and in flight) kept
    # in the state store for every instance, instead of per process; and the share of it jobs may use.
    shared_budget: bool = False
    background_share: float = Field(default=0.5, gt=0, le=1)
    # retention, in days (README "What the sync keeps")
    retention_run_reports_days: int = Field(default=DEFAULT_RUN_REPORT_DAYS, ge=1, le=3650)
    retention_collisions_days: int = Field(default=DEFAULT_COLLISION_DAYS, ge=1, le=3650)
    retention_claims_days: int = Field(default=DEFAULT_CLAIM_DAYS, ge=1, le=3650)
    # which records sync: a boolean field per side (only an explicit No excludes) and a condition
    dataverse_sync_filter_field: str | None = DEFAULT_DATAVERSE_FIELD  # "" (set empty): off
    dataverse_sync_filter: str | None = None
    marketo_sync_filter_field: str | None = None
    marketo_sync_filter: str | None = None

    @property
    def initial_policy(self) -> InitialPolicy:
        return InitialPolicy(
            lead_winner=self.initial_lead_winner,
            contact_winner=self.initial_contact_winner,
            marketo_only=self.initial_marketo_only,
        )

    @property
    def retention(self) -> Retention:
        return Retention(
            run_reports=timedelta(days=self.retention_run_reports_days),
            collisions=timedelta(days=self.retention_collisions_days),
            claims=timedelta(days=self.retention_claims_days),
        )

    @property
    def sync_filter(self) -> SyncFilter:
        """Both sides' record filters, parsed (they were checked when these settings were read)."""
        return SyncFilter.of(
            dynamics_field=self.dataverse_sync_filter_field or None,
            dynamics_condition=self.dataverse_sync_filter,
            marketo_field=self.marketo_sync_filter_field,
            marketo_condition=self.marketo_sync_filter,
        )

    @field_validator("dataverse_sync_filter_field", "marketo_sync_filter_field")
    @classmethod
    def _filter_field(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return value
        try:
            return check_field_name(value)
        except FilterSyntaxError as err:
            raise ValueError(str(err)) from None

    @field_validator("dataverse_sync_filter_field")
    @classmethod
    def _dataverse_logical_name(cls, value: str | None) -> str | None:
        if value and value != value.lower():
            raise ValueError("must be the column's logical name, which is lower case (e.g. new_synctomkto)")
        return value

    @field_validator("dataverse_sync_filter", "marketo_sync_filter")
    @classmethod
    def _condition(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parse_condition(value)
        except FilterSyntaxError as err:
            raise ValueError(f"not a filter condition: {err}") from None
        return value

    @field_validator("dataverse_sync_filter")
    @classmethod
    def _condition_columns(cls, value: str | None) -> str | None:
        upper = [name for name in parse_condition(value).fields if name != name.lower()] if value else []
        if upper:
            raise ValueError(f"{upper[0]}: a column's logical name is lower case")
        return value

    @field_validator("marketo_base_url", "dataverse_url", "tables_endpoint", "queue_endpoint")
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
    def queue_connection_string(self) -> str | None:
        """The Queue Storage connection string to use, if any (else: ``queue_endpoint`` + managed identity)."""
        if self.queue_connection is not None:
            return self.queue_connection.get_secret_value()
        if self.azure_webjobs_storage is not None:
            value = self.azure_webjobs_storage.get_secret_value()
            if _reaches_queues(value):
                return value
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
            elif raw is not None and env in _EMPTY_IS_OFF:
                values[field] = ""
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


def _reaches_queues(value: str) -> bool:
    """A connection string that names a queue service: explicit ``QueueEndpoint``, the emulator, or an
    account without explicit endpoints (whose queue URL the SDK derives)."""
    if "QueueEndpoint=" in value or value.strip() == "UseDevelopmentStorage=true":
        return True
    return "AccountName=" in value and "Endpoint=" not in value.replace("DefaultEndpointsProtocol=", "")


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
