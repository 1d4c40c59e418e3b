"""Issue 17's fidelity fixes end to end: the timer function over both simulators (real HTTP) and
Azurite, with the simulators producing the documented cases: activities committed late, a table
without UpdateMultiple, a delta read answered without a new delta link."""

from __future__ import annotations

import time
from typing import Any

from sandbox.dataverse import DataverseOptions
from sync_core.core.models import EntityType
from sync_core.cycle.engine import dataverse_cursor
from tests.e2e.conftest import LEAD, World


def _linked_lead(world: World, i: int) -> tuple[str, int]:
    lead_id = world.dynamics_lead(i)
    assert world.cycle().outcome == "ok"
    return lead_id, int(world.person_of(lead_id)["id"])


def test_a_marketo_change_committed_late_still_reaches_dynamics(world: World) -> None:
    lead_id, person = _linked_lead(world, 1)
    world.cycle()  # the echo of the creation
    world.marketo.update_lead(person, {"phone": "+1 555 0100"})
    world.marketo.update_lead(person, {"title": "Late CFO"}, visible_after=1.0)
    world.marketo.update_lead(person, {"city": "Visible City"})
    world.cycle()  # its read passes the late activity without seeing it
    row = world.dynamics_row(LEAD, lead_id)
    assert row is not None
    assert row.get("jobtitle") != "Late CFO"
    time.sleep(1.1)
    caught = world.cycle()
    row = world.dynamics_row(LEAD, lead_id)
    assert row is not None
    assert row["jobtitle"] == "Late CFO"
    assert caught.report.written.dynamics == 1
    idle = world.cycle()  # the overlap read again: nothing applied twice
    assert idle.report.written.model_dump() == {"marketo": 0, "dynamics": 0}
    assert idle.report.api_calls.marketo + idle.report.api_calls.dataverse <= 4  # 1 feed + 3 deltas


def test_a_table_without_update_multiple_is_synced_with_batch(world_factory: Any) -> None:
    world: World = world_factory(dataverse=DataverseOptions(bulk_disabled=["lead/UpdateMultiple"]))
    lead_id, person = _linked_lead(world, 1)
    world.marketo.update_lead(person, {"title": "CFO"})
    report = world.cycle()
    row = world.dynamics_row(LEAD, lead_id)
    assert row is not None
    assert row["jobtitle"] == "CFO"
    assert report.report.bulk_fallbacks is not None
    assert list(report.report.bulk_fallbacks) == ["leads/UpdateMultiple"]


def test_a_delta_read_without_a_new_link_keeps_the_cursor(world: World) -> None:
    lead_id, _ = _linked_lead(world, 1)
    before = world.store.get_cursor(dataverse_cursor(EntityType.LEAD))
    assert before is not None
    world.dataverse.update("lead", lead_id, {"jobtitle": "Head of IT"})
    world.dataverse.set_faults([{"method": "GET", "path": "/leads$", "times": 1, "action": {"delta_answer": "empty"}}])
    assert world.cycle().outcome == "ok"
    after = world.store.get_cursor(dataverse_cursor(EntityType.LEAD))
    assert after is not None
    assert after.value == before.value
    world.cycle()
    assert world.person_of(lead_id)["title"] == "Head of IT"
