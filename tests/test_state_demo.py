"""``make demo`` (``python -m demo``) runs its story on a real Azurite and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.azurite import AzuriteNotInstalled, azurite_binary

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.azurite
def test_demo_story_runs_every_step_as_expected() -> None:
    try:
        azurite_binary()
    except AzuriteNotInstalled as err:
        pytest.skip(str(err))
    done = subprocess.run(
        [sys.executable, "-m", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WRONG" not in done.stdout
    assert "13 of 13 steps as expected" in done.stdout
