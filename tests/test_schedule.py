from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sync_core.core.schedule import Schedule

START = datetime(2026, 11, 22, 4, 59, 58, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "first", "second"),
    [
        ("0 */5 * * * *", "2026-11-22 05:00:00", "2026-11-22 05:05:00"),
        ("0 0 * * * *", "2026-11-22 05:00:00", "2026-11-22 06:00:00"),
        ("0 30 9 * * 1-5", "2026-11-23 09:30:00", "2026-11-24 09:30:00"),  # START is a Sunday
        ("*/10 * * * * *", "2026-11-22 05:00:00", "2026-11-22 05:00:10"),
        ("0 0 0 1 Jan *", "2027-01-01 00:00:00", "2028-01-01 00:00:00"),
        ("0 15 10 * * Mon,Wed,Fri", "2026-11-23 10:15:00", "2026-11-25 10:15:00"),
        ("0 0 12 29 2 *", "2028-02-29 12:00:00", "2032-02-29 12:00:00"),
        ("5,35 1-10/3 * * * *", "2026-11-22 05:01:05", "2026-11-22 05:01:35"),
        ("0 0 0 13 * 5", "2026-11-27 00:00:00", "2026-12-04 00:00:00"),  # the 13th or a Friday (cron's rule)
    ],
)
def test_next_occurrences(expression: str, first: str, second: str) -> None:
    schedule = Schedule.parse(expression)
    one = schedule.next_after(START)
    two = schedule.next_after(one)
    assert [one.strftime("%Y-%m-%d %H:%M:%S"), two.strftime("%Y-%m-%d %H:%M:%S")] == [first, second]


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


def test_a_schedule_that_never_fires_says_so() -> None:
    with pytest.raises(ValueError, match="never fires"):
        Schedule.parse("0 0 0 31 2 *").next_after(START)
