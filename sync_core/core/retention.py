"""How long the sync keeps what it writes, and what one prune removed: data only, no I/O, no clock.

``Retention`` is the policy (read from the settings, carried by the state store); ``PruneReport``
is what one bounded prune removed, stored as the "last prune" the status view shows. Only the
append-style rows have a retention period: run reports, collisions and webhook claims. Links
live as long as the person is linked, open failures until they succeed (resolved ones are
deleted at once), and any of a person's rows go when the person leaves its source system or is
forgotten on request (``privacy``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

DEFAULT_RUN_REPORT_DAYS = 30
DEFAULT_COLLISION_DAYS = 90
DEFAULT_CLAIM_DAYS = 1


class Retention(BaseModel):
    """Rows at least this old are removed by the cycle's prune (a row exactly that old goes too)."""

    model_config = ConfigDict(frozen=True)

    run_reports: timedelta = timedelta(days=DEFAULT_RUN_REPORT_DAYS)
    collisions: timedelta = timedelta(days=DEFAULT_COLLISION_DAYS)
    claims: timedelta = timedelta(days=DEFAULT_CLAIM_DAYS)

    def cutoffs(self, now: datetime) -> dict[str, datetime]:
        """Per kind of row: the newest instant that is expired as of ``now``."""
        return {"runs": now - self.run_reports, "collisions": now - self.collisions, "claims": now - self.claims}


class PruneReport(BaseModel):
    """One prune: rows removed per table, and whether expired rows were left for the next cycle."""

    model_config = ConfigDict(frozen=True)

    at: AwareDatetime
    removed: dict[str, int] = Field(default_factory=dict)  # "runs" | "collisions" | "claims" -> rows
    more: bool = False  # the per-cycle budget ran out before every expired row was gone

    @property
    def total(self) -> int:
        return sum(self.removed.values())
