"""The status view's typed model: what ``status.view`` builds from the state store and what the
JSON, text and HTML renderings read. Data only: no I/O, no rendering."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from sync_core.core.report import ApiCalls, PerSide


class HealthLevel(StrEnum):
    OK = "ok"
    WARNING = "warning"
    FAILING = "failing"


class Health(BaseModel):
    model_config = ConfigDict(frozen=True)

    level: HealthLevel
    headline: str  # "OK", "Failures open", "Last cycle failed", "No cycle for …", …
    details: list[str]


class Cycle(BaseModel):
    """One sync cycle, from its run report. For ``written`` the key is the side written to:
    ``dynamics`` is the records that went Marketo → Dynamics. ``None``: the report did not say."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    failed: bool
    # why a cycle did not complete (transient: retries by itself; error), or what a cycle cut short
    # by its time budget left for the next tick
    reason: str | None = None
    seconds: float | None
    pulled: PerSide
    written: PerSide
    api_calls: ApiCalls
    token_calls: int | None
    table_transactions: int | None
    created: int | None
    linked: int | None
    unlinked: int | None
    flagged_deleted: int | None
    qualified: int | None
    collisions: int | None
    failures: int | None
    filtered: PerSide = PerSide()  # records each side's sync filter kept out (not failures)


class Backlog(BaseModel):
    """Changes not yet synced, as estimated by the latest cycle that reported one."""

    model_config = ConfigDict(frozen=True)

    known: bool
    total: int | None = None
    parts: dict[str, int] = {}  # e.g. per side or per table, as the engine reported it
    run_id: str | None = None
    as_of: datetime | None = None


class Total(BaseModel):
    model_config = ConfigDict(frozen=True)

    count: int
    at_least: bool = False  # the count hit TOTAL_CAP: there are at least this many


class Totals(BaseModel):
    model_config = ConfigDict(frozen=True)

    failures_open: Total
    failures_due: Total
    collisions_24h: Total
    links: dict[str, int] | None = None  # linked records per entity, when asked for (a full scan)


class LastPrune(BaseModel):
    """The last prune that removed rows (``more``: it left expired rows for the next cycles)."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    removed: dict[str, int]
    more: bool


class StateSize(BaseModel):
    """What the state store holds: records per table (a link or collision once, counted up to
    ``TOTAL_CAP``), the retention per kind in days, and the last prune."""

    model_config = ConfigDict(frozen=True)

    tables: dict[str, Total]
    retention_days: dict[str, int]
    last_prune: LastPrune | None = None


class CollisionView(BaseModel):
    """A collision without its values (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    run_id: str
    entity: str
    field: str
    winner: str
    rule: str
    marketo_id: int
    dataverse_id: str


class FailureView(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    direction: str
    entity: str
    marketo_id: int | None
    dataverse_id: str | None
    reasons: list[str]
    code: str | None
    fields: list[str]
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    next_retry_at: datetime
    due: bool


class DriftItem(BaseModel):
    """A mapped field one side does not have (any more): the cycle skips it and syncs the rest."""

    model_config = ConfigDict(frozen=True)

    side: str | None = None  # "marketo" | "dynamics": where the field is missing
    entity: str | None = None  # None on the Marketo side: the person field serves both
    field: str | None = None  # the field's name on that side
    keys: list[str] = []  # the field-map keys skipped because of it
    detail: str | None = None


class Drift(BaseModel):
    """Field-map drift as seen by the latest cycle that checked for it."""

    model_config = ConfigDict(frozen=True)

    known: bool
    run_id: str | None = None
    items: list[DriftItem] = []


class ActionView(BaseModel):
    """An operator's action from the audit trail (``cycle.operate``): who, when, what, why, outcome."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    action: str
    target: str
    by: str
    via: str
    outcome: str
    reason: str | None = None
    detail: str = ""


class CheckView(BaseModel):
    """One setup check (``check.run``), run on demand (``?checks=1``)."""

    model_config = ConfigDict(frozen=True)

    name: str
    title: str
    status: str  # "pass" | "fail" | "skip"
    detail: str
    hint: str | None = None


class Checks(BaseModel):
    model_config = ConfigDict(frozen=True)

    ok: bool
    ran_at: datetime
    checks: list[CheckView]


class WebhookRow(BaseModel):
    """One webhook over the last 24 hours: calls, outcomes (the answers' ``status``), latency."""

    model_config = ConfigDict(frozen=True)

    name: str
    calls: int
    outcomes: dict[str, int]
    p50_ms: float | None  # the latency bucket's upper bound holding the median call
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None


class InitialSyncView(BaseModel):
    """The go-live job (``initial-sync``), while one is planned or applying, and once it is done."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    status: str  # planned | applying | done
    chunks_done: int
    chunks: int
    percent: float
    eta_seconds: float  # at the pace of the chunks done so far, else the plan's ETA
    outcome: dict[str, int] = {}  # what the done chunks did: linked, persons_created, collisions, …
    queue_job: str | None = None  # applied on the job queue: this job's chunks (parts of the plan's) are counted
    running: int = 0  # of those, held by a worker now


class JobView(BaseModel):
    """A chunked job (initial sync, field backfill): chunks per state and the done chunks' counts."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: str
    params: dict[str, object] = {}
    state: str
    created_at: datetime
    finished_at: datetime | None = None
    chunks: int
    done: int
    running: int = 0
    pending: int = 0
    totals: dict[str, int] = {}
    errors: list[str] = []  # the last error of a few chunks not done


class Jobs(BaseModel):
    """Long work on the job queue, and the map changes waiting for a backfill."""

    model_config = ConfigDict(frozen=True)

    recent: list[JobView] = []  # newest first
    poison_messages: int | None = None  # messages the host gave up on; None: no queue configured
    unbackfilled_fields: list[str] = []  # mapped fields added since go-live and not backfilled


class Status(BaseModel):
    model_config = ConfigDict(frozen=True)

    generated_at: datetime
    schedule: str
    health: Health
    last_cycle_at: datetime | None
    last_completed_at: datetime | None  # the newest cycle with outcome ok or partial
    cycles: list[Cycle]  # newest first
    backlog: Backlog
    totals: Totals
    failures: list[FailureView]  # newest first
    collisions: list[CollisionView]  # newest first
    drift: Drift
    state: StateSize | None = None
    actions: list[ActionView] = []  # the newest operators' actions (cursor resets, dismissals, …)
    checks: Checks | None = None  # the setup checks, when asked for (they call both services)
    webhooks: list[WebhookRow] = []  # one row per webhook, called or not (last 24 hours)
    initial_sync: InitialSyncView | None = None
    jobs: Jobs | None = None
