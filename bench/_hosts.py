"""Local Function hosts for the benchmarks that need several (the job queue, the shared budget):
``python -m sync_core host --port 0`` processes, each printing its URL on its first line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NO_TIMER = "0 0 0 1 1 *"  # SYNC_SCHEDULE for hosts that must not run a cycle of their own


@contextmanager
def local_hosts(env: dict[str, str], count: int) -> Iterator[list[str]]:
    """``count`` hosts with ``env``, started side by side; yields their URLs; stops them on exit."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sync_core", "host", "--port", "0"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(count)
    ]
    try:
        urls = []
        for proc in procs:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line:
                raise RuntimeError("a local host did not start")
            urls.append(str(json.loads(line)["url"]))
        yield urls
    finally:
        stop(procs)


def stop(procs: list[subprocess.Popen[str]]) -> None:
    """Terminate the processes still running, wait for each (killed after 15 s), close their stdout."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
