"""``python -m sync_core run-once``: one cycle from the settings in the environment, progress on
stderr, the JSON run report on stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

from sync_core.core.errors import ConfigError
from sync_core.core.report import DID_ITS_WORK, Outcome
from sync_core.cycle.engine import SyncEngine
from sync_core.settings import Settings
from sync_core.wiring.services import services_for


class _ProgressPrinter:
    """Progress lines for long cycles on stderr, at most one per stage per second."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._last: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        final = total is not None and done >= total
        if not final and now - self._last.get(stage, 0.0) < 1.0:
            return
        self._last[stage] = now
        self._out.write(f"{stage}: {done}" + (f" / {total}" if total is not None else "") + "\n")
        self._out.flush()


def run_once_main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``python -m sync_core run-once``: one cycle from the settings in the environment; JSON report on stdout.

    Exit code 0 when the cycle did its work (``ok`` or ``partial``: read ``failures``), 3 when
    another cycle held the lease, 1 when it ended early (quota, transient, error), 2 for a
    configuration error."""
    parser = argparse.ArgumentParser(
        prog="python -m sync_core run-once",
        description="Run one sync cycle with the settings in the environment and print its run report (JSON).",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        services = services_for(Settings.from_env(os.environ if environ is None else environ))
    except ConfigError as error:
        print(str(error), file=err)
        return 2
    engine = SyncEngine.from_services(services, progress=None if args.quiet else _ProgressPrinter(err))
    report = engine.run_cycle()
    out.write(json.dumps(report.as_json(), indent=2) + "\n")
    if report.outcome in DID_ITS_WORK:
        return 0
    return 3 if report.outcome is Outcome.LEASE_HELD else 1
