"""``make demo`` (``python -m demo``) plays its whole story on Azurite, the simulators and the local
host, every step as expected, and stops everything it started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.azurite import AzuriteNotInstalled, azurite_command

ROOT = Path(__file__).resolve().parent.parent
STEPS = 12


@pytest.mark.azurite
def test_the_demo_plays_every_step_as_expected() -> None:
    try:
        azurite_command("table")
    except AzuriteNotInstalled as err:
        pytest.skip(str(err))
    done = subprocess.run(
        [sys.executable, "-m", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WRONG" not in done.stdout
    assert f"{STEPS} of {STEPS} steps as expected" in done.stdout
    for step in ("appears in Marketo", "Marketo wins", "Dynamics wins", "flagged", "qualified", "answers exists"):
        assert step in done.stdout
    assert "Sync status:" in done.stdout  # ends with the status view


def test_a_wrong_outcome_makes_the_demo_exit_non_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    import demo.__main__ as story

    out = story.Story()
    out.attempt("a step that raises", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    out.attempt("a step with a wrong outcome", lambda: (False, "not as promised"))
    out.attempt("a step as expected", lambda: (True, "fine"))
    assert (out.steps, out.wrong) == (3, 2)

    def wrong_story(demo: object, out: story.Story) -> None:
        out.check("wrong on purpose", False, "for the test")

    class NoWorld:
        def __enter__(self) -> object:
            return object()

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(story, "story", wrong_story)
    monkeypatch.setattr(story, "world", NoWorld)
    monkeypatch.setattr("sync_core.status.view.status_main", lambda argv: 0)
    assert story.main() == 1
