"""The cycle where the services behave as their docs say they may (issue 17's fidelity fixes), over
the in-memory fakes (``tests/unit/conftest.py``): a delta read without a new delta link, a table
without UpdateMultiple, activities that become visible late."""

from __future__ import annotations

import pytest

from sync_core.cycle.engine import dataverse_cursor
from tests.unit.conftest import LEAD, World

# -- a delta read answered without a new delta link ----------------------------------------------------


@pytest.mark.parametrize("answer", ["empty", "no_link"])
def test_a_delta_read_without_a_new_link_keeps_the_cursor_and_loses_nothing(world: World, answer: str) -> None:
    lead_id, person = world.linked_lead(1)
    cursor = world.store.get_cursor(dataverse_cursor(LEAD))
    assert cursor is not None
    world.dataverse.update("leads", lead_id, jobtitle="Late CTO")
    world.dataverse.delta_answers["leads"] = answer
    report = world.cycle()
    assert report.outcome == "ok"
    after = world.store.get_cursor(dataverse_cursor(LEAD))
    assert after is not None
    assert after.value == cursor.value  # the old link is kept
    if answer == "no_link":  # the rows came without a link: applied now; an empty body had none
        assert world.marketo.person(person)["title"] == "Late CTO"
    world.cycle()  # the kept link reads the window again
    assert world.marketo.person(person)["title"] == "Late CTO"
    assert world.store.get_cursor(dataverse_cursor(LEAD)).value != cursor.value  # type: ignore[union-attr]


# -- a table where UpdateMultiple is not enabled ----------------------------------------------------------


def test_a_table_without_update_multiple_is_written_with_batch_and_the_report_says_so(world: World) -> None:
    lead_id, person = world.linked_lead(1)
    world.dataverse.bulk_disabled.add("leads")
    world.marketo.edit(person, title="CFO")
    report = world.cycle()
    assert report.outcome == "ok"
    row = world.dataverse.row("leads", lead_id)
    assert row is not None
    assert row["jobtitle"] == "CFO"
    fallbacks = report.report.bulk_fallbacks
    assert fallbacks is not None
    assert list(fallbacks) == ["leads/UpdateMultiple"]
    assert "0x80040800" in fallbacks["leads/UpdateMultiple"]
    by_operation = report.report.api_calls.by_operation
    assert (by_operation.get("dataverse.updatemultiple"), by_operation.get("dataverse.batch")) == (1, 1)

    world.marketo.edit(person, title="CEO")
    again = world.cycle()
    assert world.dataverse.row("leads", lead_id)["jobtitle"] == "CEO"  # type: ignore[index]
    assert "dataverse.updatemultiple" not in again.report.api_calls.by_operation  # remembered: not tried again
    assert again.report.api_calls.by_operation["dataverse.batch"] == 1
    assert again.report.bulk_fallbacks == fallbacks


# -- Marketo activities that become visible late ------------------------------------------------------------


def test_an_activity_visible_only_after_the_read_passed_it_is_applied_next_cycle(world: World) -> None:
    lead_id, person = world.linked_lead(1)
    world.marketo.edit(person, phone="+1 555 0100")  # seen by the next read: its page becomes the tail
    world.marketo.edit_late(person, 90, title="Late CFO")  # committed 90 s after its date
    world.marketo.edit(person, company="Visible Co")  # written after it, visible at once
    missed = world.cycle()  # the read passes the late activity's place without seeing it
    assert missed.outcome == "ok"
    row = world.dataverse.row("leads", lead_id)
    assert row is not None
    assert (row["companyname"], row.get("jobtitle")) == ("Visible Co", None)
    world.clock.advance(seconds=90)
    caught = world.cycle()  # the overlap reads the last page again and finds it
    assert world.dataverse.row("leads", lead_id)["jobtitle"] == "Late CFO"  # type: ignore[index]
    assert caught.report.pulled.marketo == 1  # only the late activity: the others were dropped by id
    assert caught.report.written.dynamics == 1


def test_activities_read_again_in_the_overlap_are_not_applied_twice(world: World) -> None:
    _, person = world.linked_lead(1)
    world.marketo.edit(person, title="CFO")
    first = world.cycle()
    assert first.report.written.dynamics == 1
    writes = len(world.dataverse.api_writes)
    calls = world.marketo.calls("activities/leadchanges.json")
    again = world.cycle()  # reads the same page again (the overlap) and drops what it applied
    assert again.report.pulled.marketo == 0
    assert again.report.written.model_dump() == {"marketo": 0, "dynamics": 0}
    assert len(world.dataverse.api_writes) == writes  # no double write
    assert world.marketo.calls("activities/leadchanges.json") == calls + 1  # one page, as without overlap
    assert world.marketo.calls("activities/pagingtoken.json") == 1  # only the very first cycle's
    assert (again.report.api_calls.marketo or 0) + (again.report.api_calls.dataverse or 0) <= 4


def test_an_overlap_re_read_does_not_undo_a_later_dynamics_edit(world: World) -> None:
    lead_id, person = world.linked_lead(1)
    world.marketo.edit(person, title="CFO")
    world.cycle()
    world.dataverse.update("leads", lead_id, jobtitle="CEO")
    report = world.cycle()  # the re-read "CFO" activity must not win over the Dynamics edit
    assert world.marketo.person(person)["title"] == "CEO"
    assert world.dataverse.row("leads", lead_id)["jobtitle"] == "CEO"  # type: ignore[index]
    assert report.report.collisions == 0
