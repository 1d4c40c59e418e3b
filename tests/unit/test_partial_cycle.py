"""Cycles cut short by their time budget (issue 17): a cycle stops taking new work, commits what it
finished and reports ``partial`` with what is ``left``; the next ticks continue, and the state they
reach is the state one uninterrupted cycle reaches, with nothing written twice, a crash in the
middle of a cut tick included.

The budget is spent deterministically: each request to either fake service takes ``LATENCY`` fake
seconds (``World.latency``), so a budget of B seconds is about B requests. The twin world runs the
same backlog with no latency: one uninterrupted cycle.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from sync_core.core.models import RunReport
from sync_core.cycle import carry
from sync_core.cycle.engine import MARKETO_CHANGES, CycleOptions
from sync_core.state import MemoryStateStore
from tests.unit.conftest import World, make_world, no_early_writes

LATENCY = 1.0  # fake seconds per request
MAX_TICKS = 60
MARKETO_FIELDS = ("email", "firstName", "lastName", "title", "phone", "company", "microsoftType", "microsoftIsDeleted")
DYNAMICS_COLUMNS = ("emailaddress1", "firstname", "lastname", "jobtitle", "telephone1", "companyname", "statecode")


def backlog_world(budget_seconds: float | None) -> World:
    """30 leads and 30 contacts linked by a first cycle; then a backlog: Marketo edits (over two pages
    of the change feed), Dynamics edits, a collision on a lead and on a contact, new leads, a new
    contact matching a Marketo-only person, a qualification and a delete."""
    budget = timedelta(seconds=budget_seconds) if budget_seconds is not None else None
    world = make_world(options=CycleOptions(dataverse_batch_size=5, budget=budget))
    leads = [world.dynamics_lead(i) for i in range(30)]
    contacts = [world.dynamics_contact(i) for i in range(100, 130)]
    assert world.cycle().outcome == "ok"
    lead_persons = [world.person_of(lead) for lead in leads]
    contact_persons = [world.person_of(contact) for contact in contacts]
    world.clock.advance(minutes=1)
    for round_ in range(16):  # 16 x 20 title edits + the rest: more than one page (300) of activities
        for i in range(20):
            world.marketo.edit(lead_persons[i], title=f"M{i}-{round_}")
    for i in range(10):
        world.marketo.edit(contact_persons[i], phone=f"+1 555 01{i:02d}")
    for i in range(10, 29):
        world.dataverse.update("leads", leads[i], lastname=f"D{i}")
    for i in range(5, 30):
        world.dataverse.update("contacts", contacts[i], jobtitle=f"DC{i}")
    world.marketo.edit(contact_persons[0], title="From Marketo")  # collision: Dynamics wins on a contact
    world.dataverse.update("contacts", contacts[0], jobtitle="From Dynamics")
    world.dataverse.update("leads", leads[0], jobtitle="Loses to Marketo")  # collision: Marketo wins on a lead
    for i in range(200, 210):
        world.dynamics_lead(i)
    world.marketo.create_person(email="contact300@example.com", firstName="Only", lastName="Marketo")
    world.dynamics_contact(300)
    world.dataverse.qualify(leads[1])
    world.dataverse.delete("leads", leads[29])
    return world


def final_state(world: World) -> dict[str, Any]:
    """Both sides' values and the links with their baselines, keyed by email (ids differ between worlds)."""
    email_of = {
        row_id: row.get("emailaddress1") for rows in world.dataverse.rows.values() for row_id, row in rows.items()
    }
    person_email = {lead_id: lead.get("email") for lead_id, lead in world.marketo.leads.items()}
    dynamics = sorted(
        (entity_set, *(str(row.get(column)) for column in DYNAMICS_COLUMNS))
        for entity_set in ("leads", "contacts")
        for row in world.dataverse.rows[entity_set].values()
    )
    marketo = sorted(
        (*(str(lead.get(name)) for name in MARKETO_FIELDS), str(email_of.get(lead.get("microsoftId"))))
        for lead in world.marketo.leads.values()
    )
    mapped = {mapping.key for mapping in world.field_map.fields}
    links = sorted(
        (
            str(person_email.get(link.marketo_id)),
            link.entity.value,
            str(email_of.get(link.dataverse_id)),
            sorted((key, str(value)) for key, value in link.baseline.items() if key in mapped),
        )
        for link in world.store.iter_links()
    )
    return {"dynamics": dynamics, "marketo": marketo, "links": links}


def run_until_done(world: World) -> list[RunReport]:
    reports = []
    while len(reports) < MAX_TICKS:
        report = world.cycle()
        reports.append(report)
        assert report.outcome in ("ok", "partial"), report.report.error
        if report.report.left is None:
            return reports
    raise AssertionError(f"not done after {MAX_TICKS} ticks")


def totals(reports: list[RunReport]) -> dict[str, int]:
    """What the ticks did together: what one uninterrupted cycle would have done, once."""
    counts: dict[str, int] = {}
    for run in reports:
        r = run.report
        for name, value in {
            "written.marketo": r.written.marketo,
            "written.dynamics": r.written.dynamics,
            "created": r.created,
            "linked": r.linked,
            "qualified": r.qualified,
            "flagged_deleted": r.flagged_deleted,
            "collisions": r.collisions,
            "failures": r.failures,
        }.items():
            counts[name] = counts.get(name, 0) + (value or 0)
    return counts


@pytest.fixture(autouse=True)
def _feed_read_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests compare write totals: the persons step starts once the feed is read (with early
    writes, how often a person on two pages is written depends on the timing; see the test below)."""
    no_early_writes(monkeypatch)


@pytest.fixture(scope="module")
def uninterrupted() -> tuple[dict[str, Any], dict[str, int]]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        no_early_writes(monkeypatch)
        world = backlog_world(budget_seconds=None)
        world.latency = LATENCY
        reports = run_until_done(world)
    assert len(reports) == 1
    assert reports[0].outcome == "ok"
    return final_state(world), totals(reports)


@pytest.mark.parametrize("budget_seconds", [2, 4, 8, 12, 14])
def test_ticks_cut_by_the_budget_reach_the_state_of_one_uninterrupted_cycle_writing_nothing_twice(
    budget_seconds: float, uninterrupted: tuple[dict[str, Any], dict[str, int]]
) -> None:
    world = backlog_world(budget_seconds)
    world.latency = LATENCY
    reports = run_until_done(world)
    assert len(reports) > 1, "the budget should have cut the first tick"
    assert all(r.outcome == "partial" for r in reports[:-1])
    assert reports[-1].outcome == "ok"
    state, done = uninterrupted
    assert final_state(world) == state
    assert totals(reports) == done
    assert world.store.get_cursor(carry.CARRY) is None  # nothing left carried


@pytest.mark.parametrize("budget_seconds", [None, 2, 8, 14])
def test_with_early_writes_ticks_reach_the_state_of_one_uninterrupted_cycle(
    budget_seconds: float | None,
    uninterrupted: tuple[dict[str, Any], dict[str, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the persons step started while the feed is read, a person written early and named
    again later (twenty, edited on both pages) is written again: the writes may be more, the state
    is the same, and nothing is left carried nor written by the next cycle."""
    monkeypatch.undo()  # early writes on
    world = backlog_world(budget_seconds)
    world.latency = LATENCY
    reports = run_until_done(world)
    assert reports[-1].outcome == "ok"
    state, done = uninterrupted
    assert final_state(world) == state
    assert totals(reports)["written.dynamics"] >= done["written.dynamics"]
    assert world.store.get_cursor(carry.CARRY) is None
    assert world.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def test_a_cut_tick_reports_partial_with_the_step_and_what_is_left(
    uninterrupted: tuple[dict[str, Any], dict[str, int]],
) -> None:
    world = backlog_world(budget_seconds=8)
    world.latency = LATENCY
    report = world.cycle()
    assert report.outcome == "partial"
    left = report.report.left
    assert left is not None
    assert left.step is not None
    assert report.report.backlog is not None
    # The persons carried are exactly those read and not applied; the next tick applies them.
    stored = carry.load(world.store)
    assert left.persons == stored.count == report.report.backlog["marketo"]
    assert sum(len(part) for part in stored.persons(world.store)) == left.persons
    # Spent by the work: the cycle stopped at the first check past the budget, not much later.
    assert (report.finished_at - report.started_at).total_seconds() < 8 + 6


def test_the_change_feed_read_stops_at_half_the_budget_and_applies_nothing() -> None:
    world = backlog_world(budget_seconds=2)
    world.latency = LATENCY
    feed_before = world.store.get_cursor(MARKETO_CHANGES)
    report = world.cycle()
    left = report.report.left
    assert report.outcome == "partial"
    assert left is not None
    assert left.step == "marketo changes"
    assert left.marketo_feed is True
    assert left.tables == ["contact", "lead", "account"]
    assert (report.report.written.marketo, report.report.written.dynamics) == (0, 0)
    assert left.persons == 20  # the persons of the first page of activities, carried
    feed_after = world.store.get_cursor(MARKETO_CHANGES)
    assert feed_before is not None
    assert feed_after is not None
    assert feed_after.value != feed_before.value


class Crash(BaseException):
    """A process killed mid-cycle (not an error the engine handles)."""


@pytest.mark.parametrize("cursor", [carry.CARRY, MARKETO_CHANGES, "dataverse.contact", "dataverse.lead"])
def test_a_crash_in_a_cut_tick_is_finished_by_the_next_ticks_writing_nothing_twice(
    cursor: str, uninterrupted: tuple[dict[str, Any], dict[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    world = backlog_world(budget_seconds=10)  # a tick cut with persons carried, and one cut in each table
    world.latency = LATENCY
    real_put = MemoryStateStore.put_cursor
    crashed: list[str] = []

    def put_cursor(self: MemoryStateStore, value: Any) -> Any:
        if value.name == cursor and not crashed:
            crashed.append(value.name)
            raise Crash
        return real_put(self, value)

    monkeypatch.setattr(MemoryStateStore, "put_cursor", put_cursor)
    before: list[RunReport] = []
    while not crashed:
        try:
            before.append(world.cycle())
        except Crash:
            break
        assert len(before) < MAX_TICKS
    after = run_until_done(world)
    state, done = uninterrupted
    assert final_state(world) == state
    # What the crashed tick wrote before dying is in no run report: it was not written again after
    # (an echo), so the reports together show at most the uninterrupted cycle's writes.
    counted = totals(before + after)
    assert all(counted[name] <= done[name] for name in done)
    assert counted["failures"] == 0
