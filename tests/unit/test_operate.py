"""Operators' actions (``cycle.operate``) over the real engine, clients and memory store with the
fake services: each action does what it says, is audited, and is idempotent."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest

from sync_core.core.models import EntityType
from sync_core.cycle import carry
from sync_core.cycle.engine import MARKETO_CHANGES, dataverse_cursor
from sync_core.cycle.operate import Operator, Outcome
from sync_core.cycle.overlap import MARKETO_CHANGES_TAIL
from tests.unit.conftest import World


def _operator(world: World) -> Operator:
    return Operator(
        store=world.store,
        marketo=world.marketo_client,
        dataverse=world.dataverse_client,
        field_map=world.field_map,
        by="ops@contoso",
        via="cli",
        clock=world.clock,
    )


def _refused_company(world: World) -> tuple[str, int, str]:
    """A linked lead whose Marketo edit Dynamics refuses: (lead id, person id, failure key)."""
    lead_id, person = world.linked_lead(1)
    world.dataverse.plugin_rules.append(
        lambda entity_set, row: "Company is required" if entity_set == "leads" and not row.get("companyname") else None
    )
    world.marketo.edit(person, company=None)
    world.cycle()
    [failure] = world.store.list_failures()
    return lead_id, person, failure.key


def test_retry_now_resolves_a_fixed_failure_and_a_second_retry_is_a_no_op(world: World) -> None:
    lead_id, _, key = _refused_company(world)
    world.dataverse.plugin_rules.clear()  # fixed in Dynamics (the rule relaxed): no need to wait 5 minutes
    operator = _operator(world)

    first = operator.retry([key])
    assert (first.outcome, first.details["resolved"]) == (Outcome.DONE, [key])
    assert world.dataverse.rows["leads"][lead_id]["companyname"] is None
    assert world.store.list_failures() == []
    world.clock.advance(seconds=1)
    again = operator.retry([key])
    assert again.outcome is Outcome.NOTHING
    assert "not open" in again.message
    assert [(a.action, a.outcome, a.by) for a in world.store.list_actions()] == [
        ("retry", "nothing to do", "ops@contoso"),
        ("retry", "done", "ops@contoso"),
    ]


def test_retry_of_a_failure_that_fails_again_moves_its_next_retry(world: World) -> None:
    _, _, key = _refused_company(world)
    before = world.store.get_failures([key])[key]
    world.clock.advance(minutes=1)
    result = _operator(world).retry(None)  # all
    after = world.store.get_failures([key])[key]
    assert result.outcome is Outcome.DONE
    assert [item["key"] for item in result.details["still_failing"]] == [key]
    assert after.attempts == before.attempts + 1
    assert after.next_retry_at > before.next_retry_at


def test_dismiss_closes_a_failure_with_the_reason_audited_and_is_idempotent(world: World) -> None:
    _, _, key = _refused_company(world)
    operator = _operator(world)
    with pytest.raises(ValueError, match="reason"):
        operator.dismiss(key, "  ")
    done = operator.dismiss(key, "company left empty on purpose")
    assert done.outcome is Outcome.DONE
    assert world.store.list_failures() == []
    world.clock.advance(seconds=1)
    assert operator.dismiss(key, "again").outcome is Outcome.NOTHING
    newest, first = world.store.list_actions(limit=2)
    assert (first.action, first.target, first.reason) == ("dismiss", key, "company left empty on purpose")
    assert newest.outcome == "nothing to do"


def test_resync_reapplies_the_rules_without_the_baseline_and_then_has_nothing_to_do(world: World) -> None:
    lead_id, person = world.linked_lead(1)
    # The two sides drifted apart without either change feed saying so (e.g. a restore from backup):
    # a cycle would never look at this record again.
    world.marketo.leads[person]["title"] = "Marketo title"
    world.dataverse.rows["leads"][lead_id]["jobtitle"] = "Dynamics title"
    assert world.cycle().report.written.dynamics == 0
    operator = _operator(world)

    result = operator.resync(marketo_id=person)
    assert result.outcome is Outcome.DONE
    assert world.dataverse.rows["leads"][lead_id]["jobtitle"] == "Marketo title"  # a lead: Marketo wins
    [collision] = world.store.list_collisions(limit=1)
    assert (collision.field, collision.winner, collision.rule) == ("title", "marketo", "lead: Marketo wins")
    link = world.link_of(person)
    assert link is not None
    assert link.baseline["title"] == "Marketo title"
    again = operator.resync(dataverse_id=lead_id.upper(), entity=EntityType.LEAD)
    assert (again.outcome, again.details["written"]) == (Outcome.NOTHING, {"dynamics": 0, "marketo": 0})


def test_resync_of_an_unlinked_person_is_refused_and_changes_nothing(world: World) -> None:
    person = world.marketo.create_person(email="solo@example.com", lastName="Solo")
    result = _operator(world).resync(marketo_id=person)
    assert result.outcome is Outcome.REFUSED
    assert "not linked" in result.message
    assert world.dataverse.rows["leads"] == {}


def test_reset_of_a_table_cursor_re_reads_it_writing_nothing_and_twice_is_once(world: World) -> None:
    world.linked_lead(1)
    assert world.store.get_cursor(dataverse_cursor(EntityType.LEAD)) is not None
    operator = _operator(world)

    assert operator.reset_cursor("lead").outcome is Outcome.DONE
    assert world.store.get_cursor(dataverse_cursor(EntityType.LEAD)) is None
    assert operator.reset_cursor("lead").outcome is Outcome.NOTHING
    reread = world.cycle()
    assert reread.report.pulled.dynamics == 1  # the whole table again
    assert (reread.report.written.dynamics, reread.report.written.marketo) == (0, 0)
    assert world.store.get_cursor(dataverse_cursor(EntityType.LEAD)) is not None


def test_reset_of_the_marketo_cursor_to_a_time_points_it_there(world: World) -> None:
    world.linked_lead(1)
    assert world.store.get_cursor(MARKETO_CHANGES_TAIL) is not None
    since = world.clock() - timedelta(hours=1)
    result = _operator(world).reset_cursor("marketo", since=since)
    after = world.store.get_cursor(MARKETO_CHANGES)
    assert result.outcome is Outcome.DONE
    assert after is not None
    assert after.value == world.marketo_client.get_paging_token(since)
    assert world.store.get_cursor(MARKETO_CHANGES_TAIL) is None  # the overlap starts afresh there
    assert _operator(world).reset_cursor("marketo", since=since).outcome is Outcome.NOTHING
    with pytest.raises(ValueError, match="marketo feed only"):
        _operator(world).reset_cursor("lead", since=since)


def test_an_action_while_a_cycle_holds_the_lease_is_refused_and_changes_nothing(world: World) -> None:
    _, _, key = _refused_company(world)
    world.store.acquire_lease("a running cycle", now=world.clock(), duration=timedelta(minutes=1))
    result = _operator(world).dismiss(key, "busy?")
    assert result.outcome is Outcome.BUSY
    assert [failure.key for failure in world.store.list_failures()] == [key]
    assert world.store.list_actions(limit=1)[0].outcome == "busy"


def test_export_writes_csv_with_ids_and_reasons_and_defuses_formulas(world: World) -> None:
    _, person, key = _refused_company(world)
    failure = world.store.get_failures([key])[key]
    world.store.upsert_failures([failure.model_copy(update={"reasons": ["=HYPERLINK(1)", "plain"]})])
    result = _operator(world).export("failures")
    assert result.csv is not None
    rows = list(csv.DictReader(io.StringIO(result.csv)))
    assert [(row["key"], row["marketo_id"], row["reasons"]) for row in rows] == [
        (key, str(person), "'=HYPERLINK(1); plain")
    ]
    assert result.details == {"rows": 1, "capped": False}
    empty = _operator(world).export("collisions")
    assert empty.csv is not None
    assert empty.csv.splitlines() == ["at,run_id,entity,marketo_id,dataverse_id,field,winner,rule"]
    assert [action.action for action in world.store.list_actions()] == ["export", "export"]


def test_reset_of_the_marketo_cursor_skips_the_persons_a_cut_cycle_carried_too(world: World) -> None:
    _, person = world.linked_lead(1)
    carry.save(world.store, carry.load(world.store), [[(person, ["title"])]])
    world.marketo.edit(person, title="Carried")  # seen only through the carry once the cursor is reset

    assert _operator(world).reset_cursor("marketo").outcome is Outcome.DONE
    assert world.store.get_cursor(carry.CARRY) is None
    after = world.cycle()
    assert (after.report.written.dynamics, after.report.written.marketo) == (0, 0)
