"""The typed results ``MarketoClient`` hands out: write verdicts, lead changes, deletions, activities.

Plain frozen dataclasses and enums, plus the table from Marketo's record-level codes to what
they mean for the sync (``OUTCOME_BY_CODE``). No I/O and no JSON reading here: the readers in
``_records`` build these from Marketo's answers. Callers import them from ``marketo.client``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class WriteStatus(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    SKIPPED = "skipped"


class LeadOutcome(StrEnum):
    """What a per-record verdict means for the sync, from Marketo's record-level codes."""

    OK = "ok"
    NOT_FOUND = "not_found"  # 1004, 1013
    ALREADY_EXISTS = "already_exists"  # 1005
    AMBIGUOUS = "ambiguous"  # 1007: several leads match the lookup
    INVALID_VALUE = "invalid_value"  # 1001, 1003
    MISSING_VALUE = "missing_value"  # 1002
    UNKNOWN_FIELD = "unknown_field"  # 1006
    ACCESS_DENIED = "access_denied"  # 1008-1010 (partitions)
    INVALID_INPUT = "invalid_input"  # refused by this client before sending
    OTHER = "other"


OUTCOME_BY_CODE: dict[str, LeadOutcome] = {
    "1001": LeadOutcome.INVALID_VALUE,
    "1002": LeadOutcome.MISSING_VALUE,
    "1003": LeadOutcome.INVALID_VALUE,
    "1004": LeadOutcome.NOT_FOUND,
    "1005": LeadOutcome.ALREADY_EXISTS,
    "1006": LeadOutcome.UNKNOWN_FIELD,
    "1007": LeadOutcome.AMBIGUOUS,
    "1008": LeadOutcome.ACCESS_DENIED,
    "1009": LeadOutcome.ACCESS_DENIED,
    "1010": LeadOutcome.ACCESS_DENIED,
    "1013": LeadOutcome.NOT_FOUND,
}


@dataclass(frozen=True, slots=True)
class Reason:
    code: str | None
    message: str


@dataclass(frozen=True, slots=True)
class LeadWriteResult:
    """The verdict on one input record of ``sync_leads``/``delete_leads``; ``index`` is its input position."""

    index: int
    status: WriteStatus
    outcome: LeadOutcome
    id: int | None = None
    reasons: tuple[Reason, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is not WriteStatus.SKIPPED


@dataclass(frozen=True, slots=True)
class FieldChange:
    name: str
    new_value: Any
    old_value: Any


@dataclass(frozen=True, slots=True)
class LeadChange:
    """One Change Data Value (13) or New Lead (12) activity from Get Lead Changes."""

    id: int | None
    marketo_guid: str
    lead_id: int
    activity_date: datetime
    type_id: int
    fields: tuple[FieldChange, ...]
    attributes: Mapping[str, Any]  # Source, Reason, ... (our own writes say "Web service API")


@dataclass(frozen=True, slots=True)
class LeadChangesPage:
    activities: tuple[LeadChange, ...]
    next_page_token: str  # the watermark to store once this page is processed
    more_result: bool


@dataclass(frozen=True, slots=True)
class DeletedLead:
    id: int | None
    marketo_guid: str
    lead_id: int
    activity_date: datetime


@dataclass(frozen=True, slots=True)
class DeletedLeadsPage:
    deleted: tuple[DeletedLead, ...]
    next_page_token: str
    more_result: bool


@dataclass(frozen=True, slots=True)
class CustomActivity:
    """One custom activity to add to a person's activity log (e.g. ``microsoftSyncFailed``)."""

    lead_id: int
    activity_type_id: int
    primary_attribute_value: str
    attributes: Mapping[str, Any] = field(default_factory=dict)  # attribute apiName -> value
    activity_date: datetime | None = None  # None: now


class ActivityStatus(StrEnum):
    ADDED = "added"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class ActivityResult:
    index: int
    status: ActivityStatus
    outcome: LeadOutcome
    id: int | None = None
    marketo_guid: str | None = None
    reasons: tuple[Reason, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is ActivityStatus.ADDED
