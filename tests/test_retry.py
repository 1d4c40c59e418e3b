"""Retry rules as tables, the one retry loop, and the client-side rate budget, all on a fake clock."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from sync_core.core.errors import ApiError, QuotaExceededError, RateLimitedError, TransientError
from sync_core.http.counters import ApiCounters
from sync_core.http.ratebudget import RateBudget, RateLimit
from sync_core.http.retry import (
    Failure,
    RetryableFailure,
    RetryPolicy,
    call_with_retries,
    parse_retry_after,
    retry_delay,
    should_retry,
    transport_failure,
)

POLICY = RetryPolicy(
    max_attempts=4, initial_delay=1.0, max_delay=5.0, jitter=0.5, max_retry_after=30.0, max_total_wait=60.0
)


class FakeClock:
    """A monotonic clock that only moves when someone sleeps on it; records every sleep."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# -- should_retry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "idempotent", "attempt", "retry_after", "elapsed", "delay", "expected"),
    [
        pytest.param(Failure.REFUSED, True, 1, None, 0, 1, True, id="refused-idempotent"),
        pytest.param(Failure.REFUSED, False, 1, None, 0, 1, True, id="refused-create-is-safe-to-resend"),
        pytest.param(Failure.UNCERTAIN, True, 1, None, 0, 1, True, id="uncertain-idempotent"),
        pytest.param(Failure.UNCERTAIN, False, 1, None, 0, 1, False, id="uncertain-create-never-resent"),
        pytest.param(Failure.REFUSED, True, 4, None, 0, 1, False, id="attempts-spent"),
        pytest.param(Failure.REFUSED, True, 3, None, 0, 1, True, id="last-retry-allowed"),
        pytest.param(Failure.REFUSED, True, 1, 30.0, 0, 30, True, id="retry-after-at-cap"),
        pytest.param(Failure.REFUSED, True, 1, 30.5, 0, 30.5, False, id="retry-after-over-cap-ends-cycle"),
        pytest.param(Failure.REFUSED, True, 2, None, 58, 2, True, id="total-wait-exactly-at-budget"),
        pytest.param(Failure.REFUSED, True, 2, None, 58, 2.5, False, id="total-wait-over-budget"),
    ],
)
def test_should_retry_table(
    failure: Failure,
    idempotent: bool,
    attempt: int,
    retry_after: float | None,
    elapsed: float,
    delay: float,
    expected: bool,
) -> None:
    assert (
        should_retry(
            failure=failure,
            idempotent=idempotent,
            attempt=attempt,
            retry_after=retry_after,
            elapsed=elapsed,
            delay=delay,
            policy=POLICY,
        )
        is expected
    )


# -- retry_delay ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "retry_after", "rand", "expected"),
    [
        pytest.param(1, None, 0.0, 1.0, id="first-backoff"),
        pytest.param(2, None, 0.0, 2.0, id="doubles"),
        pytest.param(3, None, 0.0, 4.0, id="doubles-again"),
        pytest.param(4, None, 0.0, 5.0, id="capped"),
        pytest.param(10, None, 0.0, 5.0, id="still-capped"),
        pytest.param(2, None, 0.5, 1.5, id="jitter-shortens"),
        pytest.param(2, None, 0.999, 1.001, id="jitter-at-most-half"),
        pytest.param(1, 7.0, 0.9, 7.0, id="retry-after-honoured-exactly"),
        pytest.param(3, 0.0, 0.9, 0.0, id="retry-after-zero"),
    ],
)
def test_retry_delay_table(attempt: int, retry_after: float | None, rand: float, expected: float) -> None:
    assert retry_delay(attempt=attempt, retry_after=retry_after, policy=POLICY, rand=rand) == pytest.approx(expected)


NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("5", 5.0),
        ("0", 0.0),
        (" 12 ", 12.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("", None),
        (None, None),
        ("soon", None),
        (format_datetime(NOW + timedelta(seconds=42), usegmt=True), 42.0),
        (format_datetime(NOW - timedelta(seconds=42), usegmt=True), 0.0),
    ],
)
def test_parse_retry_after_table(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == expected


_REQUEST = httpx.Request("GET", "http://127.0.0.1/x")


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (httpx.ConnectError("refused", request=_REQUEST), Failure.REFUSED),
        (httpx.ConnectTimeout("slow", request=_REQUEST), Failure.REFUSED),
        (httpx.PoolTimeout("busy", request=_REQUEST), Failure.REFUSED),
        (httpx.ReadTimeout("slow", request=_REQUEST), Failure.UNCERTAIN),
        (httpx.WriteTimeout("slow", request=_REQUEST), Failure.UNCERTAIN),
        (httpx.RemoteProtocolError("dropped", request=_REQUEST), Failure.UNCERTAIN),
        (httpx.ReadError("reset", request=_REQUEST), Failure.UNCERTAIN),
    ],
)
def test_transport_failure_classifies_by_whether_the_request_left(
    error: httpx.TransportError, failure: Failure
) -> None:
    signal = transport_failure(error, service="svc", operation="op")
    assert signal.failure is failure
    assert isinstance(signal.error, TransientError)
    assert signal.error.__cause__ is error


# -- the loop ---------------------------------------------------------------------------------------


def _scripted(outcomes: list[object]) -> tuple[list[int], object]:
    """An attempt function that raises/returns the scripted outcomes in order, counting calls."""
    calls: list[int] = []

    def attempt() -> object:
        calls.append(1)
        outcome = outcomes[len(calls) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return calls, attempt


def _run(attempt: object, clock: FakeClock, *, idempotent: bool = True, counters: ApiCounters | None = None) -> object:
    return call_with_retries(
        attempt,  # type: ignore[arg-type]
        service="svc",
        operation="op",
        idempotent=idempotent,
        policy=POLICY,
        sleep=clock.sleep,
        clock=clock,
        rand=lambda: 0.0,
        counters=counters,
    )


def _uncertain() -> RetryableFailure:
    return RetryableFailure(TransientError("HTTP 503", service="svc"), failure=Failure.UNCERTAIN)


def _throttled(retry_after: float | None) -> RetryableFailure:
    error = RateLimitedError("429", service="svc", retry_after=retry_after)
    return RetryableFailure(error, failure=Failure.REFUSED, retry_after=retry_after)


def test_loop_retries_until_success_with_backoff_sleeps() -> None:
    clock = FakeClock()
    counters = ApiCounters()
    calls, attempt = _scripted([_uncertain(), _uncertain(), "done"])
    assert _run(attempt, clock, counters=counters) == "done"
    assert len(calls) == 3
    assert clock.sleeps == [1.0, 2.0]
    assert counters.snapshot()["svc"]["retries"] == 2


def test_loop_honours_retry_after_and_counts_throttling() -> None:
    clock = FakeClock()
    counters = ApiCounters()
    _, attempt = _scripted([_throttled(3.0), "ok"])
    assert _run(attempt, clock, idempotent=False, counters=counters) == "ok"
    assert clock.sleeps == [3.0]
    assert counters.snapshot()["svc"]["throttled"] == 1


def test_loop_never_resends_a_non_idempotent_request_after_an_uncertain_failure() -> None:
    clock = FakeClock()
    calls, attempt = _scripted([_uncertain(), "would-duplicate"])
    with pytest.raises(TransientError, match="HTTP 503"):
        _run(attempt, clock, idempotent=False)
    assert len(calls) == 1
    assert clock.sleeps == []


def test_loop_gives_up_after_max_attempts_with_the_last_error() -> None:
    clock = FakeClock()
    cause = httpx.ReadTimeout("slow", request=_REQUEST)
    signal = transport_failure(cause, service="svc", operation="op")
    calls, attempt = _scripted([signal] * 10)
    with pytest.raises(TransientError) as raised:
        _run(attempt, clock)
    assert len(calls) == POLICY.max_attempts
    assert raised.value.__cause__ is cause


def test_loop_stops_at_once_when_retry_after_exceeds_the_cap() -> None:
    clock = FakeClock()
    calls, attempt = _scripted([_throttled(600.0), "ok"])
    with pytest.raises(RateLimitedError) as raised:
        _run(attempt, clock)
    assert raised.value.retry_after == 600.0
    assert len(calls) == 1
    assert clock.sleeps == []


@pytest.mark.parametrize(
    "error",
    [
        ApiError("bad request", service="svc", status=400, code="0x80044331"),
        QuotaExceededError("607 daily quota", service="svc"),
    ],
)
def test_loop_passes_permanent_errors_straight_through(error: Exception) -> None:
    clock = FakeClock()
    calls, attempt = _scripted([error, "unreached"])
    with pytest.raises(type(error)):
        _run(attempt, clock)
    assert len(calls) == 1


# -- the rate budget ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("share", "calls", "concurrent"), [(0.5, 50, 5), (1.0, 100, 10), (0.25, 25, 2), (0.001, 1, 1), (0.33, 33, 3)]
)
def test_rate_budget_share_rounds_down_never_below_one(share: float, calls: int, concurrent: int) -> None:
    clock = FakeClock()
    budget = RateBudget(
        RateLimit(max_calls=100, per_seconds=20, max_concurrent=10).share(share), sleep=clock.sleep, clock=clock
    )
    assert (budget.limit.max_calls, budget.limit.max_concurrent, budget.limit.per_seconds) == (calls, concurrent, 20)


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_rate_budget_refuses_a_share_outside_zero_one(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        RateLimit(max_calls=100, per_seconds=20, max_concurrent=10).share(share)


def test_rate_budget_waits_for_the_oldest_call_to_leave_the_window() -> None:
    clock = FakeClock(start=0.0)
    budget = RateBudget(RateLimit(max_calls=3, per_seconds=20, max_concurrent=3), sleep=clock.sleep, clock=clock)
    for _ in range(3):
        with budget.slot():
            clock.now += 1.0  # each call takes a second
    assert clock.sleeps == []
    with budget.slot():  # the 4th start must wait until the 1st (at t=0) is 20 s old
        pass
    assert clock.now == pytest.approx(20.0)
    assert sum(clock.sleeps) == pytest.approx(17.0)
    assert budget.in_window() == 3


def test_rate_budget_caps_calls_in_flight() -> None:
    budget = RateBudget(
        RateLimit(max_calls=1000, per_seconds=20, max_concurrent=2), sleep=time.sleep, clock=time.monotonic
    )
    in_flight = 0
    peak = 0
    lock = threading.Lock()
    release = threading.Event()

    def call() -> None:
        nonlocal in_flight, peak
        with budget.slot():
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            release.wait(0.05)
            with lock:
                in_flight -= 1

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert peak == 2
