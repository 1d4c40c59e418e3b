"""The cycle lease's heartbeat (issue 16): a live slow cycle keeps its lease, so no second cycle runs
beside it; a killed cycle stops renewing, so the next tick runs within one lease duration instead of
being blocked for ten minutes. Real sandbox servers over HTTP, Azurite, the timer function."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import World

LEASE_SECONDS = 3
ROOT = Path(__file__).resolve().parents[2]


def test_a_slow_live_cycle_keeps_its_lease_and_no_second_cycle_runs_beside_it(world_factory: Any) -> None:
    world: World = world_factory(SYNC_LEASE_SECONDS=str(LEASE_SECONDS))
    world.dynamics_lead(1)
    # The delta read of leads takes longer than two lease durations.
    world.dataverse.set_faults(
        [{"path": "leads", "method": "GET", "times": 1, "action": {"delay": 2.5 * LEASE_SECONDS}}]
    )
    slow = threading.Thread(target=world.cycle)
    slow.start()
    time.sleep(1.5 * LEASE_SECONDS)  # without renewals the lease would have expired by now
    world.cycle()
    slow.join(timeout=60)

    second, first = world.store.list_run_reports(limit=2)  # newest first
    assert (first.outcome, first.report.created) == ("ok", 1)
    assert second.outcome == "lease_held"
    assert first.finished_at is not None
    assert second.started_at < first.finished_at  # it ran beside the slow one


def test_a_killed_cycle_does_not_block_the_next_tick(world_factory: Any) -> None:
    world: World = world_factory(SYNC_LEASE_SECONDS=str(LEASE_SECONDS))
    world.dynamics_lead(1)
    world.dataverse.set_faults([{"path": "leads", "method": "GET", "times": 1, "action": {"delay": 60}}])
    cycle = subprocess.Popen(
        [sys.executable, "-m", "sync_core", "run-once", "--quiet"],
        cwd=ROOT,
        env={**os.environ, **world.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while world.dataverse.faults() and time.monotonic() < deadline:  # the delayed read has begun
            time.sleep(0.1)
        assert world.cycle().outcome == "lease_held"  # the running cycle holds the lease
    finally:
        cycle.send_signal(signal.SIGKILL)
        cycle.wait(timeout=10)

    time.sleep(LEASE_SECONDS + 0.5)  # the dead cycle's lease runs out: no renewal came
    report = world.cycle()

    assert report.outcome == "ok"
    assert report.report.created == 1
