"""The rows the sync keeps between runs (design §4), as small typed models.

No I/O here. Times are timezone-aware ``datetime``s (a naive one is refused: the store could not
know which instant it means); the stores read them back as UTC, equal to what was written. Values in baselines are the
JSON-compatible canonical values the field map produces, so equality means "both sides agreed".
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from sync_core.core.report import CycleReport, Outcome
from sync_core.core.syncfilter import Side


class _Record(BaseModel):
    """What every stored record shares: immutable once built (a change is a ``model_copy``)."""

    model_config = ConfigDict(frozen=True)


class EntityType(StrEnum):
    LEAD = "lead"
    CONTACT = "contact"


class Direction(StrEnum):
    TO_DYNAMICS = "to_dynamics"
    TO_MARKETO = "to_marketo"


class Cursor(_Record):
    """A named position in a change feed (Marketo paging token, Dataverse delta link)."""

    name: str
    value: str
    etag: str | None = None  # None until stored; the ETag to send on the next conditional write


class Lease(_Record):
    """The cycle lease: at most one cycle runs at a time."""

    owner: str
    expires_at: AwareDatetime
    etag: str | None = None


class Link(_Record):
    """A Marketo person linked to one Dataverse lead or contact, with the values both last agreed on."""

    marketo_id: int
    entity: EntityType
    dataverse_id: str
    baseline: dict[str, Any] = Field(default_factory=dict)  # field-map key -> canonical value
    originating_lead_id: str | None = None  # set when a lead was qualified into this contact
    updated_at: AwareDatetime | None = None
    # The sides whose sync filter excluded the pair when last seen (empty: it syncs). While set,
    # nothing is written either way; the link stays, so that the pair resumes when admitted again.
    filtered_out: tuple[Side, ...] = ()
    filter_key: str | None = None  # ``SyncFilter.key`` of the filters that decided ``filtered_out``


class Collision(_Record):
    """The same field changed on both sides since the last sync, to different values."""

    id: str
    at: AwareDatetime
    run_id: str
    marketo_id: int
    entity: EntityType
    dataverse_id: str
    field: str
    marketo_value: Any = None
    dynamics_value: Any = None
    baseline_value: Any = None
    winner: str  # "marketo" | "dynamics"
    rule: str  # why that side won, e.g. "lead: Marketo wins" or "override: phone"


class RecordFailure(_Record):
    """A record that could not be written; retried on later cycles on ``next_retry_at``."""

    key: str  # stable per record and direction, e.g. "to_dynamics:lead:1234"
    direction: Direction
    entity: EntityType
    marketo_id: int | None = None
    dataverse_id: str | None = None
    reasons: list[str]
    code: str | None = None
    fields: list[str] = Field(default_factory=list)  # field-map keys involved; values are never stored
    attempts: int = 1
    first_failed_at: AwareDatetime
    last_failed_at: AwareDatetime
    next_retry_at: AwareDatetime
    run_id: str | None = None


def person_failure_key(direction: Direction, marketo_id: int) -> str:
    """The failure key of a linked person's record, per direction."""
    return f"{direction.value}:m{marketo_id}"


def record_failure_key(entity: EntityType, dataverse_id: str) -> str:
    """The failure key of a Dynamics record no person could be made for."""
    return f"{Direction.TO_MARKETO.value}:{entity.value}:{dataverse_id.lower()}"


class RunReport(_Record):
    """What one cycle did; stored as JSON, listed newest first by the status view."""

    run_id: str
    started_at: AwareDatetime
    finished_at: AwareDatetime | None = None
    # An outcome this version does not know (a newer one wrote it) is kept as its text.
    outcome: Annotated[Outcome | str, Field(union_mode="left_to_right")] = Outcome.OK
    report: CycleReport = Field(default_factory=CycleReport)

    def as_json(self) -> dict[str, Any]:
        """``run-once``'s JSON: the run's identity and outcome, then the counts."""
        return {
            "run_id": self.run_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "outcome": str(self.outcome),
            **self.report.as_json(),
        }


class ActionRecord(_Record):
    """One operator action, for the audit trail (``cycle.operate``): who did what to which
    target, when, why, and what came of it. Ids and field names only, never person values."""

    id: str
    at: AwareDatetime
    action: str  # "retry" | "dismiss" | "resync" | "reset-cursor" | "export"
    target: str  # a failure key, "all", "marketo:<id>", "<entity>:<guid>", a cursor, "failures"
    by: str  # who: the admin's name as given (CLI --by, the page's sign-in or "admin key")
    via: str  # "cli" | "page"
    outcome: str  # "done" | "nothing to do" | "refused" | "failed"
    reason: str | None = None
    detail: str = ""


class Claim(_Record):
    """An insert-if-absent marker: the first caller to take a key does the work."""

    key: str
    owner: str
    created_at: AwareDatetime
    result: dict[str, Any] | None = None  # filled in when the work is done
    etag: str | None = None


class CampaignMember(_Record):
    """A lead or contact this sync put on a campaign's marketing list ("Add to Microsoft Campaign");
    "Remove from Microsoft Campaign" takes off only records with one of these."""

    campaign_id: str
    list_id: str
    entity: EntityType
    dataverse_id: str
    marketo_id: int
    added_at: AwareDatetime
    # False from the moment it is recorded (before the add) until Dynamics took the add: a call that
    # crashed in between leaves it False, and the next call adds the record (the add is safe to repeat).
    confirmed: bool = True


# Upper bounds (ms) of the webhook latency buckets; the last bucket is everything slower.
LATENCY_BOUNDS_MS = (25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000, 30000)


class WebhookCalls(BaseModel):
    """A webhook's calls over a window: how many, their outcomes (the answer's ``status``) and a
    latency histogram (``LATENCY_BOUNDS_MS``), from which the status view reads percentiles."""

    calls: int = 0
    outcomes: dict[str, int] = Field(default_factory=dict)
    buckets: list[int] = Field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))
    total_ms: float = 0.0
    max_ms: float = 0.0

    def add(self, outcome: str, ms: float) -> WebhookCalls:
        buckets = list(self.buckets)
        buckets[next((i for i, bound in enumerate(LATENCY_BOUNDS_MS) if ms <= bound), len(LATENCY_BOUNDS_MS))] += 1
        return WebhookCalls(
            calls=self.calls + 1,
            outcomes={**self.outcomes, outcome: self.outcomes.get(outcome, 0) + 1},
            buckets=buckets,
            total_ms=self.total_ms + ms,
            max_ms=max(self.max_ms, ms),
        )

    def merge(self, other: WebhookCalls) -> WebhookCalls:
        outcomes = dict(self.outcomes)
        for outcome, count in other.outcomes.items():
            outcomes[outcome] = outcomes.get(outcome, 0) + count
        return WebhookCalls(
            calls=self.calls + other.calls,
            outcomes=outcomes,
            buckets=[a + b for a, b in zip(self.buckets, other.buckets, strict=True)],
            total_ms=self.total_ms + other.total_ms,
            max_ms=max(self.max_ms, other.max_ms),
        )

    def percentile_ms(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile (the slowest call's time for the
        last bucket); None without calls."""
        if not self.calls:
            return None
        rank = q * self.calls
        seen = 0
        for i, count in enumerate(self.buckets):
            seen += count
            if seen >= rank and count:
                return float(LATENCY_BOUNDS_MS[i]) if i < len(LATENCY_BOUNDS_MS) else self.max_ms
        return self.max_ms

    @property
    def mean_ms(self) -> float | None:
        return self.total_ms / self.calls if self.calls else None


class StoreCounters(BaseModel):
    """Table operations actually sent, for the run report (a batch counts once)."""

    reads: int = 0  # point reads and query pages
    writes: int = 0  # single-entity writes (insert, conditional replace, delete)
    transactions: int = 0  # batched writes; each ≤ 100 operations in one partition
    operations: int = 0  # entity operations inside those transactions


def retry_delay(attempts: int) -> timedelta:
    """When a failed record is tried again: 5 min, 15 min, 1 h, 4 h, then daily."""
    schedule = [timedelta(minutes=5), timedelta(minutes=15), timedelta(hours=1), timedelta(hours=4)]
    return schedule[attempts - 1] if 1 <= attempts <= len(schedule) else timedelta(days=1)
