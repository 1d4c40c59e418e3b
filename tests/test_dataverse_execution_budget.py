"""Dataverse's combined execution-time limit (1,200 s per 5 minutes per user) is kept by the budget's
in-flight places (``dataverse.client.service_protection_limit``): instances that share the budget
never get its 429 from the simulator, which instances without it do, sending the same requests."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import httpx

from sandbox._http import HttpServer
from sandbox.dataverse import DataverseOptions, DataverseSandbox
from sync_core.dataverse.client import RATE_LIMIT, service_protection_limit
from sync_core.http.ratebudget import RateLimit
from sync_core.state._memory import MemoryRows
from sync_core.state.budget import SharedRateBudget

WINDOW_S = 2.0
EXECUTION_MS = 2_000.0  # one request in flight all the time: a budget keeps one place
DELAY_S = 0.1  # each request's handling time (a fault's delay, counted as execution time)
INSTANCES, REQUESTS = 3, 10
_TLS = ssl.create_default_context()


def test_dataverses_limit_keeps_four_requests_in_flight_for_1200_s_of_execution_per_five_minutes() -> None:
    assert (RATE_LIMIT.max_calls, RATE_LIMIT.per_seconds, RATE_LIMIT.max_concurrent) == (6000, 300.0, 4)
    # The execution limit decides only while it allows fewer requests in flight than the concurrency limit.
    wide = service_protection_limit(requests=6000, window_seconds=300.0, concurrent=52, execution_seconds=30_000.0)
    assert wide.max_concurrent == 52
    assert service_protection_limit(requests=10, window_seconds=2.0, concurrent=52, execution_seconds=1.5) == RateLimit(
        max_calls=10, per_seconds=2.0, max_concurrent=1
    )


@contextmanager
def _org() -> Iterator[str]:
    """A Dataverse simulator on the real clock with a short window, every WhoAmI ``DELAY_S`` long."""
    options = DataverseOptions(window_seconds=WINDOW_S, max_execution_ms=EXECUTION_MS, clock=time.time)
    sandbox = DataverseSandbox(options)
    sandbox.set_faults([{"method": "GET", "path": "WhoAmI", "times": -1, "action": {"delay": DELAY_S}}])
    with HttpServer(sandbox.handle, service="dataverse") as server:
        yield f"{server.base_url}/api/data/v9.2/WhoAmI"


def _send_from_instances(url: str, budgets: list[SharedRateBudget] | None) -> list[tuple[int, str]]:
    """Each instance (a thread, with its budget) sends ``REQUESTS`` requests one after another; the
    answers' (status, error code)."""
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def instance(budget: SharedRateBudget | None) -> None:
        with httpx.Client(headers={"Authorization": "Bearer sandbox-token"}, verify=_TLS, timeout=10) as http:
            for _ in range(REQUESTS):
                with budget.slot() if budget is not None else nullcontext():
                    response = http.get(url)
                code = "" if response.status_code == 200 else str(response.json()["error"]["code"])
                with lock:
                    answers.append((response.status_code, code))

    threads = [
        threading.Thread(target=instance, args=(None if budgets is None else budgets[n],)) for n in range(INSTANCES)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return answers


def test_instances_sharing_the_budget_never_meet_the_execution_time_limit_unbudgeted_instances_meet() -> None:
    limit = service_protection_limit(
        requests=6000, window_seconds=WINDOW_S, concurrent=52, execution_seconds=EXECUTION_MS / 1000
    )
    with _org() as url:
        unbudgeted = _send_from_instances(url, None)
    assert (429, "0x80072321") in unbudgeted  # three at once spend 2 s of execution within the 2 s window

    rows = MemoryRows()
    budgets = [SharedRateBudget(rows, "syncstate", "dataverse", limit) for _ in range(INSTANCES)]
    try:
        with _org() as url:
            budgeted = _send_from_instances(url, budgets)
    finally:
        for budget in budgets:
            budget.close()
    assert budgeted == [(200, "")] * (INSTANCES * REQUESTS)
