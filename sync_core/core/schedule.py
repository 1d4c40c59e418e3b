"""Six-field NCRONTAB schedules (``second minute hour day month day-of-week``), as the Functions
host reads ``SYNC_SCHEDULE``: validation and "next occurrence after", on croniter (which the
project used to cross-check a hand-written parser; the parser is gone). Used by the local host
(in Azure the Functions host owns the schedule) and by the status view, to tell when cycles have
stopped. Times are UTC, like the host's default.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from croniter import CroniterBadDateError, croniter


@dataclass(frozen=True)
class Schedule:
    expression: str

    @classmethod
    def parse(cls, expression: str) -> Schedule:
        """A valid six-field schedule, else ``ValueError`` (croniter also takes five fields; the host does not)."""
        if len(expression.split()) != 6:
            raise ValueError("an NCRONTAB schedule has six fields: second minute hour day month day-of-week")
        if not croniter.is_valid(expression, second_at_beginning=True):
            raise ValueError(f"not a valid NCRONTAB schedule: {expression!r}")
        return cls(expression)

    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after ``moment`` (second precision)."""
        try:
            upcoming = croniter(self.expression, moment, second_at_beginning=True).get_next(datetime)
        except CroniterBadDateError as err:
            raise ValueError(f"schedule {self.expression!r} never fires") from err
        if not isinstance(upcoming, datetime):  # pragma: no cover - croniter returns the type asked for
            raise TypeError("croniter returned no datetime")
        return upcoming
