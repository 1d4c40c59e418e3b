"""Marketo simulator limits: 100 calls / 20 s (606), 10 in flight (615), daily quota (607), usage."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import httpx
import pytest

from sandbox.marketo import MarketoOptions
from tests.sandbox._marketo_support import FakeClock, Marketo, error_code

LEAD = "/rest/v1/lead/1.json"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def marketo(clock: FakeClock) -> Iterator[Marketo]:
    with Marketo.running(MarketoOptions(seed_leads=1, token_ttl=30 * 86400), clock=clock) as m:
        yield m


def _outcome(body: dict[str, Any]) -> str:
    return "ok" if body["success"] else error_code(body)


def _codes(marketo: Marketo, n: int, path: str = LEAD) -> list[str]:
    return [_outcome(marketo.get(path)) for _ in range(n)]


def test_the_101st_call_in_20_seconds_answers_606_with_the_real_message(marketo: Marketo) -> None:
    assert _codes(marketo, 100) == ["ok"] * 100

    body = marketo.get(LEAD)

    assert error_code(body) == "606"
    assert body["errors"][0]["message"] == "Max rate limit '100' exceeded with in '20' secs"


def test_the_rate_window_slides(marketo: Marketo, clock: FakeClock) -> None:
    assert _codes(marketo, 60) == ["ok"] * 60
    clock.advance(10)
    assert _codes(marketo, 40) == ["ok"] * 40
    clock.advance(9.9)
    assert _codes(marketo, 1) == ["606"]

    clock.advance(0.1)  # the first 60 are now 20 s old

    assert _codes(marketo, 60) == ["ok"] * 60
    assert _codes(marketo, 1) == ["606"]


def test_calls_refused_606_or_601_are_not_charged(marketo: Marketo) -> None:
    _codes(marketo, 105)
    for _ in range(3):
        marketo.http.get(LEAD)  # no token: 601

    assert marketo.sandbox.stats()["usageToday"] == 100
    assert marketo.sandbox.stats()["rejected"] == {"601": 3, "606": 5}


@pytest.mark.parametrize(
    ("body", "code", "charged"),
    [({"action": "createOnly"}, "701", False), ({"input": [{"email": "x@y.io"}] * 301}, "1003", True)],
    ids=["7xx-refunded", "1xxx-charged"],
)
def test_only_6xx_and_7xx_errors_give_their_rate_slot_back(body: dict[str, object], code: str, charged: bool) -> None:
    with Marketo.running(MarketoOptions(rate_limit_calls=3, seed_leads=1)) as marketo:
        answers = [marketo.post("/rest/v1/leads.json", body) for _ in range(3)]
        after = marketo.get(LEAD)

    assert [error_code(a) for a in answers] == [code] * 3
    assert _outcome(after) == ("606" if charged else "ok")


def test_the_eleventh_call_in_flight_answers_615(clock: FakeClock) -> None:
    release = threading.Event()
    held: list[float] = []

    def hold(seconds: float) -> None:  # the injected "delay" fault blocks until the test lets go
        held.append(seconds)
        release.wait(10)

    options = MarketoOptions(seed_leads=1, faults=[{"path": r"lead/1\.json", "times": -1, "action": {"delay": 1}}])
    with Marketo.running(options, clock=clock, sleep=hold) as marketo:
        marketo.token()
        results: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: results.append(marketo.request("GET", LEAD))) for _ in range(10)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while marketo.sandbox.stats()["inFlight"] < 10 and time.monotonic() < deadline:
            time.sleep(0.01)

        eleventh = marketo.request("GET", "/rest/v1/leads/describe.json").json()
        release.set()
        for thread in threads:
            thread.join(10)

    assert error_code(eleventh) == "615"
    assert eleventh["errors"][0]["message"] == "Concurrent access limit '10' reached"
    assert [r.json()["success"] for r in results] == [True] * 10
    assert len(held) == 10


def test_daily_quota_answers_607_until_midnight_us_central(clock: FakeClock) -> None:
    with Marketo.running(MarketoOptions(daily_quota=3, seed_leads=1, token_ttl=30 * 86400), clock=clock) as marketo:
        assert _codes(marketo, 4) == ["ok", "ok", "ok", "607"]
        assert marketo.sandbox.stats()["usageToday"] == 3

        clock.advance(86400)

        assert _codes(marketo, 1) == ["ok"]


def test_without_limits_nothing_is_refused_but_usage_still_counts(clock: FakeClock) -> None:
    with Marketo.running(MarketoOptions(limits=False, daily_quota=1, seed_leads=1), clock=clock) as marketo:
        assert set(_codes(marketo, 150)) == {"ok"}
        assert marketo.sandbox.stats()["usageToday"] == 150


def test_usage_reports_calls_served_today_and_the_last_7_days(marketo: Marketo, clock: FakeClock) -> None:
    _codes(marketo, 4)
    clock.advance(86400)
    _codes(marketo, 2)

    (today,) = marketo.get("/rest/v1/stats/usage.json")["result"]
    week = marketo.get("/rest/v1/stats/usage/last7days.json")["result"]

    assert today["total"] == 3  # 2 calls + the usage call itself
    assert today["users"] == [{"userId": "sandbox-api@example.com", "count": 3}]
    assert len(week) == 7
    days = [date.fromisoformat(entry["date"][:10]) for entry in week]
    assert days == [days[0] - timedelta(days=n) for n in range(7)]
    assert [entry["total"] for entry in week[:2]] == [4, 4]  # today now includes the first usage call
