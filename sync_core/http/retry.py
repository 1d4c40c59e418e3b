"""Retry rules as data, two pure functions, and the one loop both API clients send through.

One attempt either returns, raises an error from the tree (permanent: passed straight up), or
raises ``RetryableFailure`` saying *how* it failed:

- ``Failure.REFUSED``: the service did not act on the request (throttled with 606/615/429, or
  the connection never opened). Resending is safe for any request.
- ``Failure.UNCERTAIN``: the request may have been applied (5xx, read timeout, dropped
  connection). Resent only when the request is idempotent; a create is never resent blindly.

``should_retry`` and ``retry_delay`` decide from those facts alone (tested as tables);
``call_with_retries`` is the loop, with ``sleep``, ``clock`` and the jitter source injected so
tests run instantly. When it gives up it raises the attempt's ``TransientError`` (chained to
the cause), which the engine turns into "end the cycle, keep the cursors". This module knows
nothing of Marketo or Dataverse beyond the policies' numbers, and never logs payloads.
"""

from __future__ import annotations

import email.utils
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar

import httpx

from sync_core.core.errors import RateLimitedError, TransientError
from sync_core.http.counters import ApiCounters

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5  # first try included
    initial_delay: float = 0.5  # seconds before the second attempt, doubled each time
    max_delay: float = 8.0  # cap of the exponential backoff
    jitter: float = 0.25  # the backoff is shortened by up to this fraction, at random
    max_retry_after: float = 60.0  # a longer Retry-After ends the cycle instead of stalling it
    max_total_wait: float = 120.0  # all waits of one call together


# Marketo: 606 asks for the 20 s window to pass, so the budget for waiting is larger.
MARKETO_RETRY = RetryPolicy(max_attempts=5, initial_delay=1.0, max_delay=20.0, max_total_wait=90.0)
# Dataverse: Retry-After is honoured exactly up to a minute (service protection windows are 5 min).
DATAVERSE_RETRY = RetryPolicy(max_attempts=5, initial_delay=0.5, max_delay=8.0, max_total_wait=120.0)


class Failure(StrEnum):
    REFUSED = "refused"
    UNCERTAIN = "uncertain"


class RetryableFailure(Exception):
    """Raised by one attempt; ``error`` is what the caller gets if no retry follows."""

    def __init__(self, error: TransientError, *, failure: Failure, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.failure = failure
        self.retry_after = retry_after


def should_retry(
    *,
    failure: Failure,
    idempotent: bool,
    attempt: int,
    retry_after: float | None,
    elapsed: float,
    delay: float,
    policy: RetryPolicy,
) -> bool:
    """Whether attempt number ``attempt`` (1-based, just failed) gets a successor after ``delay`` s."""
    if attempt >= policy.max_attempts:
        return False
    if failure is Failure.UNCERTAIN and not idempotent:
        return False  # it may have been applied: resending could write twice
    if retry_after is not None and retry_after > policy.max_retry_after:
        return False
    return elapsed + delay <= policy.max_total_wait


def retry_delay(*, attempt: int, retry_after: float | None, policy: RetryPolicy, rand: float) -> float:
    """Seconds to wait after attempt ``attempt`` failed: the service's ``Retry-After`` if it gave one,
    else exponential backoff from ``initial_delay``, capped, shortened by up to ``jitter`` (``rand`` in [0, 1))."""
    if retry_after is not None and retry_after >= 0:
        return retry_after
    backoff = min(policy.max_delay, policy.initial_delay * 2 ** (attempt - 1))
    return float(backoff * (1 - policy.jitter * rand))


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; ``None`` when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def transport_failure(err: httpx.TransportError, *, service: str, operation: str) -> RetryableFailure:
    """Classify a transport error: a connection that never opened is REFUSED, anything later UNCERTAIN."""
    refused = isinstance(err, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    error = TransientError(f"{service} {operation}: {type(err).__name__}", service=service)
    error.__cause__ = err
    return RetryableFailure(error, failure=Failure.REFUSED if refused else Failure.UNCERTAIN)


def call_with_retries(
    attempt: Callable[[], T],
    *,
    service: str,
    operation: str,
    idempotent: bool,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    rand: Callable[[], float] = random.random,
    counters: ApiCounters | None = None,
) -> T:
    """Run ``attempt`` until it returns, fails permanently, or the rules say stop."""
    started = clock()
    number = 1
    while True:
        try:
            return attempt()
        except RetryableFailure as signal:
            if counters is not None and isinstance(signal.error, RateLimitedError):
                counters.record_throttled(service)
            delay = retry_delay(attempt=number, retry_after=signal.retry_after, policy=policy, rand=rand())
            go_on = should_retry(
                failure=signal.failure,
                idempotent=idempotent,
                attempt=number,
                retry_after=signal.retry_after,
                elapsed=clock() - started,
                delay=delay,
                policy=policy,
            )
            if not go_on:
                log.warning(
                    "%s %s gave up after %d attempt(s): %s (%s)", service, operation, number, signal, signal.failure
                )
                raise signal.error from (signal.error.__cause__ or signal)
            log.info(
                "%s %s attempt %d failed: %s (%s); retrying in %.2fs",
                service,
                operation,
                number,
                signal,
                signal.failure,
                delay,
            )
            if counters is not None:
                counters.record_retry(service)
            sleep(delay)
            number += 1
