"""The run report: what one cycle did, as a typed model (design §7, ``run-once``'s JSON).

The engine builds a ``CycleReport``; ``run-once`` prints it, the timer logs it, the state store
keeps it inside a ``RunReport`` and the status view reads it back. Stored reports outlive the code
that wrote them (an older version's keys, a hand-edited row), so reading is lenient in one place,
here: a count that is not a non-negative whole number, a text that is not text, a part that is
not an object reads as unknown (``None`` or empty), never as an error. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class Outcome(StrEnum):
    """How a cycle ended. ``ok``/``partial`` did their work (``partial``: not all of it: some records
    failed and are in the failures table, or the cycle reached its time budget and the next tick
    continues where it stopped, ``left`` says what from); ``lease_held``: another cycle was
    running; ``quota`` and ``transient`` retry by themselves on the next tick; ``error`` needs a
    person."""

    OK = "ok"
    PARTIAL = "partial"
    LEASE_HELD = "lease_held"
    LEASE_LOST = "lease_lost"
    QUOTA = "quota"
    TRANSIENT = "transient"
    ERROR = "error"


DID_ITS_WORK = frozenset({Outcome.OK, Outcome.PARTIAL})
# Not a failed cycle: it did its work, or another cycle was running (the status view and telemetry).
COMPLETED_OUTCOMES = frozenset({*DID_ITS_WORK, Outcome.LEASE_HELD})


def as_count(value: Any) -> int | None:
    """A non-negative whole number, else None (bools and junk are not counts)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, float) and value >= 0 and value.is_integer():
        return int(value)
    return None


def _as_seconds(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _as_flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _as_text(value: Any) -> str | None:
    return None if value is None or isinstance(value, (Mapping, list)) else str(value)


def _as_counts(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        return {}
    return {str(key): n for key, raw in value.items() if (n := as_count(raw)) is not None}


def _as_texts(value: Any) -> list[str]:
    return [str(item) for item in value if _as_text(item) is not None] if isinstance(value, list) else []


Count = Annotated[int | None, BeforeValidator(as_count)]
Seconds = Annotated[float | None, BeforeValidator(_as_seconds)]
Text = Annotated[str | None, BeforeValidator(_as_text)]
Counts = Annotated[dict[str, int], BeforeValidator(_as_counts)]
Texts = Annotated[list[str], BeforeValidator(_as_texts)]
Flag = Annotated[bool | None, BeforeValidator(_as_flag)]


class _Part(BaseModel):
    """A part of the report: anything that is not an object reads as an empty part."""

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _object_or_empty(cls, value: Any) -> Any:
        return value if isinstance(value, (Mapping, BaseModel)) else {}


class PerSide(_Part):
    marketo: Count = None
    dynamics: Count = None


class ApiCalls(_Part):
    marketo: Count = None
    dataverse: Count = None
    by_operation: Counts = Field(default_factory=dict)  # "<service>.<operation>" -> calls


class ServiceCalls(_Part):
    retries: Count = None
    throttled: Count = None
    token_calls: Count = None


class TableOps(_Part):
    reads: Count = None
    writes: Count = None
    transactions: Count = None
    operations: Count = None


class DriftEntry(_Part):
    """A mapped field one side no longer has as the map expects (``core.validate.DriftItem``)."""

    side: Text = None
    entity: Text = None
    name: Text = None
    fields: Texts = Field(default_factory=list)  # the field-map keys it affects
    detail: Text = None

    @model_validator(mode="before")
    @classmethod
    def _bare_text_is_a_detail(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            data = dict(value)
            data.setdefault("name", data.get("field"))  # older reports said "field" and "keys"
            data.setdefault("fields", data.get("keys"))
            return data
        return value if isinstance(value, BaseModel) else {"detail": value}


class Left(_Part):
    """What a cycle cut short by its time budget (``SYNC_CYCLE_BUDGET_SECONDS``) left for the next tick."""

    step: Text = None  # the step it stopped in ("marketo changes", "dataverse leads", "marketo persons"…)
    persons: Count = None  # Marketo persons read and not applied, carried to the next tick: exact
    # Dataverse tables the next tick reads (again) from their stored delta link: how much is unknown
    tables: Texts = Field(default_factory=list)
    marketo_feed: Flag = None  # True: the change feed was not read to its end (how much is unknown)
    retries: Flag = None  # True: the failures due for a retry were not tried (they wait for a tick that finishes)

    def summary(self) -> str:
        """One line for an admin: where the budget stopped the cycle and what the next tick continues."""
        rest = [f"{self.persons:,} Marketo person(s) carried"] if self.persons else []
        if self.marketo_feed:
            rest.append("the rest of the Marketo change feed")
        if self.tables:
            rest.append("Dataverse " + ", ".join(self.tables) + " (read again from their delta link)")
        if self.retries:
            rest.append("the failures due for a retry")
        where = f" in step '{self.step}'" if self.step else ""
        return f"time budget reached{where}; the next tick continues with " + ("; ".join(rest) or "nothing left")


def _as_text_map(value: Any) -> dict[str, str] | None:
    """``{name: text}`` (e.g. bulk messages written as ``$batch`` and why); anything else is unknown."""
    if not isinstance(value, Mapping):
        return None
    return {str(key): text for key, raw in value.items() if (text := _as_text(raw)) is not None} or None


def _as_backlog(value: Any) -> dict[str, int] | None:
    """Changes left for later, per part (``marketo``, ``retries``…); an old report's bare number is a total."""
    if isinstance(value, Mapping):
        return _as_counts(value) or None
    total = as_count(value)
    return {"total": total} if total is not None else None


def _as_drift(value: Any) -> list[Any] | None:
    return value if isinstance(value, list) else None


class CycleReport(_Part):
    """The counts of one cycle (``RunReport.report``); every count is None when not known."""

    pulled: PerSide = Field(default_factory=PerSide)  # change activities / rows and deletions read
    written: PerSide = Field(default_factory=PerSide)  # persons / Dynamics records written
    created: Count = None  # Marketo persons created for new Dynamics records
    linked: Count = None  # new Dynamics records linked to an existing person
    unlinked: Count = None
    flagged_deleted: Count = None  # persons marked microsoftIsDeleted
    deleted_in_dynamics: Count = None  # Dynamics records deleted after their person was (policy "delete")
    qualified: Count = None  # links moved from a lead to its contact
    # records a side's sync filter kept out this cycle (nothing written, not failures), by that side
    filtered: PerSide = Field(default_factory=PerSide)
    collisions: Count = None
    failures: Count = None  # records that failed this cycle (new or again)
    new_failures: Count = None  # of those, records that had no open failure before this cycle
    resolved: Count = None  # open failures that succeeded this cycle
    retried: Count = None  # due failures tried again
    activities: Count = None  # microsoftSyncFailed entries written
    full_reads: Texts = Field(default_factory=list)  # tables re-read after an expired delta token
    accounts: Count = None  # changed accounts read (their company fields go to their contacts' persons)
    account_contacts: Count = None  # linked contacts an account change reached
    one_way_edits: Count = None  # Marketo edits of Dynamics-owned fields seen (overwritten at the next Dynamics change)
    api_calls: ApiCalls = Field(default_factory=ApiCalls)
    api: dict[str, ServiceCalls] = Field(default_factory=dict)  # per service: retries, throttling, tokens
    token_calls: Count = None
    table_transactions: Count = None  # Table writes: transactions + single writes
    table: TableOps = Field(default_factory=TableOps)
    seconds: Seconds = None
    cpu_seconds: Seconds = None
    backlog: Annotated[dict[str, int] | None, BeforeValidator(_as_backlog)] = None
    drift: Annotated[list[DriftEntry] | None, BeforeValidator(_as_drift)] = None  # None: not checked
    # "<entity set>/<message>" -> why: bulk messages not enabled on a table, written as $batch instead
    bulk_fallbacks: Annotated[dict[str, str] | None, BeforeValidator(_as_text_map)] = None
    left: Left | None = None  # None: the cycle was not cut short by its time budget
    error: Text = None

    @model_validator(mode="before")
    @classmethod
    def _services(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and not isinstance(value.get("api"), Mapping | None):
            return {**value, "api": {}}
        return value

    def as_json(self) -> dict[str, Any]:
        """The JSON shape ``run-once`` prints and the store keeps (unknown parts left out)."""
        return self.model_dump(mode="json", exclude_none=True)
