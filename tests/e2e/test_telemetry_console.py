"""Telemetry wired end to end: ``python -m sync_core run-once`` in its own process, against both
simulators and Azurite, with ``SYNC_TELEMETRY_CONSOLE=true``. The command sets telemetry up, the
engine records the cycle, the console exporters print it on stderr at exit; stdout stays the run
report. Everything printed is checked for the seeded persons' values and ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import World

ROOT = Path(__file__).resolve().parent.parent.parent


def test_run_once_prints_the_cycle_s_telemetry_on_stderr_without_person_values(world: World) -> None:
    leads = [world.dynamics_lead(i, jobtitle=f"Chief Tester {i}") for i in (1, 2)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLICATIONINSIGHTS_")}
    done = subprocess.run(
        [sys.executable, "-m", "sync_core", "run-once"],
        cwd=ROOT,
        env={**env, **world.env, "SYNC_TELEMETRY_CONSOLE": "true"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # stdout: the run report only
    assert report["outcome"] == "ok"
    assert report["written"]["marketo"] == 2

    stderr = done.stderr
    assert '"name": "sync.cycle"' in stderr  # the span
    assert f'"sync.run_id": "{report["run_id"]}"' in stderr
    assert '"sync.written.marketo": 2' in stderr
    assert '"sync.event": "sync.cycle"' in stderr  # the event
    for metric in ("sync.cycle.runs", "sync.cycle.changes", "sync.api.calls", "sync.backlog"):
        assert f'"name": "{metric}"' in stderr, metric

    assert len([world.person_of(lead) for lead in leads]) == 2
    # Dataverse ids; the simulator's Marketo ids are 1 and 2, which any count matches (the unit test
    # tests/unit/test_telemetry.py checks Marketo ids, from 1001)
    seeded = set(leads)
    for i in (1, 2):
        seeded |= {f"lead{i}@example.com", f"Lead{i}", f"Person{i}", f"Company {i}", f"Chief Tester {i}"}
    # stderr also has the command's progress lines; none of it may carry a value or an id
    assert [value for value in seeded if value in stderr] == []
