"""Six-field NCRONTAB schedules (``second minute hour day month day-of-week``), as the Functions
host reads ``SYNC_SCHEDULE``: parsing and "next occurrence after". Used by the local host (in
Azure the Functions host owns the schedule) and by the status view, to tell when cycles have
stopped. Times are UTC, like the host's default.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_MONTHS = {name: i for i, name in enumerate(_MONTH_NAMES, start=1)}
_DAYS = {name: i for i, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
# (low, high, names) per field, in order.
_FIELDS: list[tuple[int, int, dict[str, int]]] = [
    (0, 59, {}),
    (0, 59, {}),
    (0, 23, {}),
    (1, 31, {}),
    (1, 12, _MONTHS),
    (0, 6, _DAYS),
]


def _value(text: str, names: dict[str, int]) -> int:
    lowered = text.lower()
    if lowered in names:
        return names[lowered]
    if not text.isdigit():
        raise ValueError(f"not a number or name: {text!r}")
    return int(text)


def _parse_field(text: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"bad step in {part!r}")
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = _value(first, names), _value(last, names)
        else:
            start = _value(base, names)
            end = high if step_text else start
        if high == 6 and end == 7:  # Sunday as 7
            end = 6 if start <= 6 else 0
        if not (low <= start <= high and low <= end <= high and start <= end):
            raise ValueError(f"{part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Schedule:
    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expression: str) -> Schedule:
        parts = expression.split()
        if len(parts) != 6:
            raise ValueError("an NCRONTAB schedule has six fields: second minute hour day month day-of-week")
        sec, minute, hour, day, month, weekday = (
            _parse_field(text, low, high, names) for text, (low, high, names) in zip(parts, _FIELDS, strict=True)
        )
        return cls(
            expression, sec, minute, hour, day, month, weekday, any_day=parts[3] == "*", any_weekday=parts[5] == "*"
        )

    def _day_matches(self, moment: datetime) -> bool:
        weekday = (moment.weekday() + 1) % 7  # Python: Monday=0; cron: Sunday=0
        if self.any_day or self.any_weekday:  # one side unrestricted: the other decides
            return moment.day in self.days and weekday in self.weekdays
        return moment.day in self.days or weekday in self.weekdays  # both restricted: either (cron rule)

    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after ``moment`` (second precision)."""
        current = moment.replace(microsecond=0) + timedelta(seconds=1)
        limit = current + timedelta(days=366 * 5)
        while current < limit:
            if current.month not in self.months:
                year, month = (current.year + 1, 1) if current.month == 12 else (current.year, current.month + 1)
                current = current.replace(year=year, month=month, day=1, hour=0, minute=0, second=0)
            elif not self._day_matches(current):
                current = (current + timedelta(days=1)).replace(hour=0, minute=0, second=0)
            elif current.hour not in self.hours:
                current = (current + timedelta(hours=1)).replace(minute=0, second=0)
            elif current.minute not in self.minutes:
                current = (current + timedelta(minutes=1)).replace(second=0)
            elif current.second not in self.seconds:
                current += timedelta(seconds=1)
            else:
                return current
        raise ValueError(f"schedule {self.expression!r} never fires")
