from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from croniter import croniter

from sync_core.core.schedule import Schedule

START = datetime(2026, 11, 22, 4, 59, 58, tzinfo=UTC)


@pytest.mark.parametrize(
    "expression",
    [
        "0 */5 * * * *",
        "0 0 * * * *",
        "0 30 9 * * 1-5",
        "*/10 * * * * *",
        "0 0 0 1 Jan *",
        "0 15 10 * * Mon,Wed,Fri",
        "0 0 12 29 2 *",
        "5,35 1-10/3 * * * *",
        "0 0 0 13 * 5",
    ],
)
def test_next_occurrences_agree_with_croniter(expression: str) -> None:
    schedule = Schedule.parse(expression)
    reference = croniter(expression, START, second_at_beginning=True)
    moment = START
    for _ in range(5):
        moment = schedule.next_after(moment)
        assert moment == reference.get_next(datetime)


@pytest.mark.parametrize(
    "expression",
    ["*/5 * * * *", "0 */5 * * * * *", "61 * * * * *", "0 0 25 * * *", "0 0 0 1 Foo *", "0 */0 * * * *", ""],
)
def test_malformed_schedules_are_refused(expression: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        Schedule.parse(expression)


def test_default_schedule_fires_every_five_minutes_on_the_minute() -> None:
    schedule = Schedule.parse("0 */5 * * * *")
    first = schedule.next_after(START)
    assert first == datetime(2026, 11, 22, 5, 0, 0, tzinfo=UTC)
    assert schedule.next_after(first) - first == timedelta(minutes=5)
