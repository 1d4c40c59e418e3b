"""The operators' commands through ``python -m sync_core`` (its guard and probes included) against
both simulators over HTTP and Azurite: a resync settles a person whose sides disagree by the rules
and the next cycle writes nothing twice; a retry with nothing open says so."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sync_core.__main__ import main
from tests.e2e.conftest import LEAD, World

pytestmark = pytest.mark.azurite


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert out, err
    return code, json.loads(out)


def test_resync_command_settles_a_person_by_the_rules_and_the_next_cycle_writes_nothing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    lead_id = world.dynamics_lead(1)
    world.cycle()
    person = int(world.person_of(lead_id)["id"])
    world.marketo.update_lead(person, {"title": "Marketo title"})
    world.dataverse.update("leads", lead_id, {"jobtitle": "Dynamics title"})

    code, result = _run(capsys, "resync", "--marketo-id", str(person), "--by", "ops")
    assert (code, result["outcome"]) == (0, "done")
    assert result["details"]["written"] == {"dynamics": 1, "marketo": 0}  # a lead: Marketo wins
    row = world.dynamics_row(LEAD, lead_id)
    assert row is not None
    assert row["jobtitle"] == "Marketo title"
    [collision] = world.store.list_collisions(limit=1)
    assert (collision.field, collision.rule) == ("title", "lead: Marketo wins")
    echo = world.cycle()
    assert (echo.report.written.dynamics, echo.report.written.marketo) == (0, 0)

    code, again = _run(capsys, "resync", "--dynamics-id", lead_id, "--entity", "lead")
    assert (code, again["outcome"]) == (0, "nothing to do")
    code, retried = _run(capsys, "failures", "retry", "--all")
    assert (code, retried["outcome"], retried["message"]) == (0, "nothing to do", "no open failure to retry")
    assert [(a.action, a.by) for a in world.store.list_actions()][-1] == ("resync", "ops")
