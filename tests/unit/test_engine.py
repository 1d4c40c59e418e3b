"""The sync cycle at unit level: ``SyncEngine`` over the in-memory fakes of both services and the
memory store (``tests/unit/conftest.py``). One test (or a small table) per rule of design §1
(B1-B9), then the run report, the crash window and the lease. The end-to-end versions of these
tests (real simulators over HTTP, Azurite) are in ``tests/e2e/test_sync_cycle.py``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from sync_core.core.models import Cursor
from sync_core.cycle.engine import MARKETO_CHANGES, CycleOptions
from sync_core.settings import DynamicsDeletePolicy, MarketoDeletePolicy
from tests.unit.conftest import CONTACT, LEAD, World, field_map_with, make_world

# -- B1: both ways -----------------------------------------------------------------------------------


def test_marketo_edit_reaches_the_linked_dynamics_lead(world: World) -> None:
    lead_id, person = world.linked_lead(1)
    world.marketo.edit(person, title="CFO", phone="+1 555 0199")
    report = world.cycle()
    row = world.dataverse.row("leads", lead_id)
    assert row is not None
    assert (row["jobtitle"], row["telephone1"]) == ("CFO", "+1 555 0199")
    assert (report.report.written.dynamics, report.report.written.marketo) == (1, 0)


def test_dynamics_edit_reaches_the_linked_marketo_person(world: World) -> None:
    contact_id, person = world.linked_contact(1)
    world.dataverse.update("contacts", contact_id, jobtitle="Head of IT", lastname="Renamed")
    report = world.cycle()
    assert (world.marketo.person(person)["title"], world.marketo.person(person)["lastName"]) == (
        "Head of IT",
        "Renamed",
    )
    assert (report.report.written.marketo, report.report.written.dynamics) == (1, 0)


# -- B2: collisions -------------------------------------------------------------------------------------

PHONE_WINNER_DYNAMICS = {
    "marketo": "phone",
    "lead": "telephone1",
    "contact": "telephone1",
    "type": "phone",
    "winner": "dynamics",
}


@pytest.mark.parametrize(
    ("entity", "field_map", "field", "winner", "rule"),
    [
        (LEAD, None, "title", "marketo", "lead: Marketo wins"),
        (CONTACT, None, "title", "dynamics", "contact: Dynamics wins"),
        (
            LEAD,
            field_map_with(PHONE_WINNER_DYNAMICS, drop=("phone",)),
            "phone",
            "dynamics",
            "override: phone Dynamics wins",
        ),
    ],
    ids=["lead-marketo-wins", "contact-dynamics-wins", "override-beats-lead-rule"],
)
def test_a_collision_is_resolved_by_the_entity_rule_or_the_field_override(
    entity: Any, field_map: Any, field: str, winner: str, rule: str
) -> None:
    world = make_world(field_map=field_map)
    column = {"title": "jobtitle", "phone": "telephone1"}[field]
    if entity is LEAD:
        record, person = world.linked_lead(1, **{column: "Agreed"})
    else:
        record, person = world.linked_contact(1, **{column: "Agreed"})
    entity_set = f"{entity.value}s"
    world.marketo.edit(person, **{field: "From Marketo"})
    world.dataverse.update(entity_set, record, **{column: "From Dynamics"})
    report = world.cycle()
    expected = "From Marketo" if winner == "marketo" else "From Dynamics"
    assert world.marketo.person(person)[field] == expected
    assert world.dataverse.rows[entity_set][record][column] == expected
    [collision] = world.store.list_collisions()
    assert (collision.field, collision.winner, collision.rule) == (field, winner, rule)
    assert (collision.marketo_value, collision.dynamics_value, collision.baseline_value) == (
        "From Marketo",
        "From Dynamics",
        "Agreed",
    )
    assert collision.run_id == report.run_id
    assert report.report.collisions == 1


def test_the_same_new_value_on_both_sides_is_not_a_collision(world: World) -> None:
    lead_id, person = world.linked_lead(1)
    world.marketo.edit(person, title="Same")
    world.dataverse.update("leads", lead_id, jobtitle="Same")
    report = world.cycle()
    assert report.report.collisions == 0
    assert report.report.written.model_dump() == {"marketo": 0, "dynamics": 0}
    assert world.link_of(person).baseline["title"] == "Same"  # type: ignore[union-attr]


# -- B3: deletes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "flagged"), [(DynamicsDeletePolicy.FLAG, True), (DynamicsDeletePolicy.IGNORE, False)]
)
def test_dynamics_delete_unlinks_and_flags_the_person_per_policy(policy: DynamicsDeletePolicy, flagged: bool) -> None:
    world = make_world(options=CycleOptions(dynamics_delete_policy=policy))
    lead_id, person = world.linked_lead(1)
    world.dataverse.delete("leads", lead_id)
    report = world.cycle()
    assert world.marketo.person(person)["microsoftIsDeleted"] is flagged
    assert world.link_of(person) is None
    assert (report.report.flagged_deleted, report.report.unlinked) == (int(flagged), 1)


def test_marketo_delete_is_not_sent_to_dynamics_under_the_default_policy(world: World) -> None:
    lead_id, person = world.linked_lead(1)
    world.marketo.delete(person)
    world.dataverse.update("leads", lead_id, jobtitle="Changed in Dynamics")
    report = world.cycle()
    assert world.dataverse.row("leads", lead_id) is not None
    assert ("delete", "leads", lead_id) not in world.dataverse.api_writes
    assert world.link_of(person) is None
    assert (report.report.unlinked, report.report.deleted_in_dynamics) == (1, 0)


def test_marketo_delete_with_the_delete_policy_deletes_the_dynamics_record() -> None:
    world = make_world(options=CycleOptions(marketo_delete_policy=MarketoDeletePolicy.DELETE))
    lead_id, person = world.linked_lead(1)
    world.marketo.delete(person)
    report = world.cycle()
    assert world.dataverse.row("leads", lead_id) is None
    assert world.link_of(person) is None
    assert report.report.deleted_in_dynamics == 1


def test_marketo_delete_with_the_delete_policy_also_deletes_a_record_changed_in_the_same_window() -> None:
    # Found by the property test: the Dynamics pass wrote to the missing person first and only unlinked,
    # so the deletions feed found no link and the record stayed.
    world = make_world(options=CycleOptions(marketo_delete_policy=MarketoDeletePolicy.DELETE))
    lead_id, person = world.linked_lead(1)
    world.dataverse.update("leads", lead_id, jobtitle="Edited in Dynamics")
    world.marketo.delete(person)
    report = world.cycle()
    assert world.dataverse.row("leads", lead_id) is None
    assert world.link_of(person) is None
    assert report.report.deleted_in_dynamics == 1


# -- B5: the cycle's own writes come back as echoes and are not written again --------------------------------


def test_a_cycle_with_nothing_new_writes_nothing(world: World) -> None:
    lead_id, person = world.linked_lead(1)
    world.marketo.edit(person, title="From Marketo")
    world.dataverse.update("leads", lead_id, telephone1="+1 555 0142")
    world.cycle()
    writes = (len(world.dataverse.api_writes), len(world.marketo.log))
    echo = world.cycle()  # both writes come back through the change feeds
    assert (echo.report.pulled.marketo, echo.report.pulled.dynamics) == (1, 1)
    assert echo.report.written.model_dump() == {"marketo": 0, "dynamics": 0}
    assert echo.report.collisions == 0
    assert (len(world.dataverse.api_writes), len(world.marketo.log)) == writes


def test_an_idle_cycle_costs_at_most_four_api_calls_and_no_token(world: World) -> None:
    world.linked_lead(1)
    world.cycle()  # the echo of the creation
    idle = world.cycle()
    # Marketo's change feed, then the lead, contact and account deltas
    assert (idle.report.api_calls.marketo or 0) + (idle.report.api_calls.dataverse or 0) <= 4
    assert idle.report.token_calls == 0


# -- B6: only mapped fields move ---------------------------------------------------------------------------


def test_unmapped_fields_do_not_move_either_way() -> None:
    world = make_world(field_map=field_map_with(drop=("title",)))
    lead_id, person = world.linked_lead(1, jobtitle="Dynamics title")
    world.marketo.edit(person, title="Marketo title", city="Lyon")
    world.dataverse.update("leads", lead_id, subject="Not mapped", jobtitle="Dynamics again")
    report = world.cycle()
    assert world.marketo.person(person)["title"] == "Marketo title"
    assert world.dataverse.rows["leads"][lead_id]["jobtitle"] == "Dynamics again"
    assert report.report.written.model_dump() == {"marketo": 0, "dynamics": 0}
    assert "subject" not in world.marketo.person(person)


# -- B7: Dynamics validation -----------------------------------------------------------------------------------


def test_a_value_too_long_for_dynamics_is_held_back_logged_once_and_resolved_when_fixed(world: World) -> None:
    lead_id, person = world.linked_lead(1)
    other_id, other = world.linked_lead(2)
    world.marketo.edit(person, firstName="x" * 51, title="Held back with it")  # firstname: 50 characters
    world.marketo.edit(other, title="Goes through")
    report = world.cycle()
    assert world.dataverse.rows["leads"][lead_id]["firstname"] == "Lead1"
    assert world.dataverse.rows["leads"][other_id]["jobtitle"] == "Goes through"
    [failure] = world.store.list_failures()
    assert (failure.marketo_id, failure.code, failure.attempts) == (person, "validation", 1)
    assert failure.reasons == ["firstname: longer than the 50 characters Dynamics allows"]
    assert failure.next_retry_at == report.started_at + timedelta(minutes=5)
    [activity] = world.marketo.failure_activities(person)
    assert activity["primaryAttributeValue"] == "lead"
    assert activity["attributes"]["direction"] == "to_dynamics"
    assert (report.outcome, report.report.failures, report.report.activities) == ("partial", 1, 1)
    assert all("x" * 51 not in request.content.decode() for request in world.dataverse.requests)  # never sent
    # Fixed in Marketo: the held-back fields go through and the failure is resolved.
    world.marketo.edit(person, firstName="Short")
    fixed = world.cycle()
    row = world.dataverse.rows["leads"][lead_id]
    assert (row["firstname"], row["jobtitle"]) == ("Short", "Held back with it")
    assert world.store.list_failures() == []
    assert fixed.report.resolved == 1
    assert len(world.marketo.failure_activities(person)) == 1


def test_a_record_dynamics_refuses_is_isolated_and_retried_when_due(world: World) -> None:
    lead_id, person = world.linked_lead(1)
    other_id, other = world.linked_lead(2)
    world.dataverse.plugin_rules.append(
        lambda entity_set, row: "Company is required" if entity_set == "leads" and not row.get("companyname") else None
    )
    world.marketo.edit(person, company=None)
    world.marketo.edit(other, title="Goes through")
    report = world.cycle()
    assert world.dataverse.rows["leads"][lead_id]["companyname"] == "Company 1"
    assert world.dataverse.rows["leads"][other_id]["jobtitle"] == "Goes through"
    [failure] = world.store.list_failures()
    assert (failure.code, failure.fields) == ("0x80040265", ["company"])
    assert failure.reasons[0].startswith("Dynamics refused the update")
    assert len(world.marketo.failure_activities(person)) == 1
    assert report.outcome == "partial"
    assert world.cycle().report.retried == 0  # not due yet
    world.dataverse.plugin_rules.clear()
    world.clock.advance(minutes=5)
    retried = world.cycle()
    assert (retried.report.retried, retried.report.resolved) == (1, 1)
    assert world.dataverse.rows["leads"][lead_id]["companyname"] is None
    assert world.store.list_failures() == []


# -- B8: creation and linking -----------------------------------------------------------------------------------


def test_marketo_only_person_never_creates_a_dynamics_record(world: World) -> None:
    person = world.marketo.create_person(email="only.marketo@example.com", lastName="Solo", company="Acme")
    world.cycle()
    world.marketo.edit(person, title="Owner")
    world.cycle()
    assert world.dataverse.rows["leads"] == world.dataverse.rows["contacts"] == {}
    assert world.dataverse.api_writes == []
    assert world.link_of(person) is None


def test_new_dynamics_lead_creates_a_marketo_person_with_the_microsoft_fields(world: World) -> None:
    lead_id = world.dynamics_lead(1, jobtitle="Buyer")
    report = world.cycle()
    person = world.marketo.person(world.person_of(lead_id))
    assert (person["email"], person["title"], person["company"]) == ("lead1@example.com", "Buyer", "Company 1")
    assert (person["microsoftType"], person["microsoftId"], person["microsoftIsDeleted"]) == ("Lead", lead_id, False)
    link = world.link_of(person["id"])
    assert link is not None
    assert (link.entity, link.dataverse_id, link.baseline["email"]) == (LEAD, lead_id, "lead1@example.com")
    assert (report.report.created, report.report.linked) == (1, 0)


def test_new_dynamics_contact_links_the_person_with_its_email_instead_of_creating_one(world: World) -> None:
    existing = world.marketo.create_person(email="Contact1@Example.com", firstName="Marketo", title="VP")
    contact_id = world.dynamics_contact(1)
    report = world.cycle()
    assert list(world.marketo.leads) == [existing]
    person = world.marketo.person(existing)
    assert (person["microsoftType"], person["microsoftId"]) == ("Contact", contact_id)
    assert world.dataverse.rows["contacts"][contact_id]["jobtitle"] == "VP"  # only Marketo had it
    assert person["firstName"] == "Contact1"  # both had it: on a contact, Dynamics wins
    assert (report.report.linked, report.report.created) == (1, 0)


# -- B9: qualification ----------------------------------------------------------------------------------------------


def test_qualified_lead_moves_the_link_to_its_contact_and_dynamics_wins_from_then_on(world: World) -> None:
    lead_id, person = world.linked_lead(1, jobtitle="Lead title")
    contact_id = world.dataverse.qualify(lead_id)
    report = world.cycle()
    assert (report.report.qualified, report.report.created) == (1, 0)
    assert list(world.marketo.leads) == [person]
    assert (world.marketo.person(person)["microsoftType"], world.marketo.person(person)["microsoftId"]) == (
        "Contact",
        contact_id,
    )
    link = world.link_of(person)
    assert link is not None
    assert (link.entity, link.dataverse_id, link.originating_lead_id) == (CONTACT, contact_id, lead_id)
    assert world.store.get_links_by_dataverse_ids(LEAD, [lead_id]) == {}
    world.marketo.edit(person, title="Marketing title")
    world.dataverse.update("contacts", contact_id, jobtitle="Sales title")
    world.cycle()
    assert world.marketo.person(person)["title"] == "Sales title"
    assert world.dataverse.rows["leads"][lead_id]["jobtitle"] == "Lead title"


# -- the run report, the crash window, the lease ----------------------------------------------------------------------


def test_the_run_report_says_what_the_cycle_did(world: World) -> None:
    world.dynamics_lead(1)
    world.dynamics_contact(2)
    run = world.cycle()
    report = run.report
    assert run.outcome == "ok"
    assert (report.pulled.marketo, report.pulled.dynamics) == (0, 2)
    assert (report.written.marketo, report.written.dynamics) == (2, 0)
    assert (report.created, report.linked, report.collisions, report.failures) == (2, 0, 0, 0)
    assert report.api_calls.by_operation["marketo.sync_leads"] == 2  # one createOnly per entity
    assert report.api_calls.by_operation["dataverse.get_changes"] == 3  # contacts, leads, accounts
    assert report.token_calls == 2  # one per service, the first time
    assert report.backlog == {"marketo": 0, "retries": 0}
    assert report.drift == []
    assert world.store.list_run_reports(limit=1) == [run]


class Crash(BaseException):
    """The process dies (not an error the engine could catch)."""


def test_a_crash_before_the_cursor_commit_repeats_the_window_without_writing_twice(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    lead_id, person = world.linked_lead(1)
    world.cycle()
    world.marketo.edit(person, title="Written once")
    put_cursor = world.store.put_cursor

    def crash_on_marketo_cursor(cursor: Cursor) -> Cursor:
        if cursor.name == MARKETO_CHANGES:
            raise Crash
        return put_cursor(cursor)

    monkeypatch.setattr(world.store, "put_cursor", crash_on_marketo_cursor)
    with pytest.raises(Crash):
        world.cycle()
    monkeypatch.setattr(world.store, "put_cursor", put_cursor)
    assert world.dataverse.rows["leads"][lead_id]["jobtitle"] == "Written once"
    writes = list(world.dataverse.api_writes)
    repeat = world.cycle()
    assert repeat.outcome == "ok"
    assert repeat.report.pulled.marketo == 1  # the same window again
    assert repeat.report.written.model_dump() == {"marketo": 0, "dynamics": 0}
    assert world.dataverse.api_writes == writes


def test_a_held_lease_means_the_cycle_does_nothing(world: World) -> None:
    world.dynamics_lead(1)
    world.store.acquire_lease("another-cycle", now=world.clock() + timedelta(minutes=1), duration=timedelta(minutes=5))
    report = world.cycle()
    assert report.outcome == "lease_held"
    assert world.marketo.leads == {}
    assert world.dataverse.requests == []


# -- expired change-tracking tokens ----------------------------------------------------------------------------------


def test_an_expired_delta_token_rereads_the_table_without_duplicating_or_losing_changes(world: World) -> None:
    edited, _ = world.linked_lead(1)
    deleted, deleted_person = world.linked_lead(2)
    world.cycle()
    world.dataverse.expire_change_tracking()
    world.dataverse.update("leads", edited, jobtitle="While expired")
    world.dataverse.delete("leads", deleted)
    report = world.cycle()
    assert report.outcome == "ok"
    assert report.report.full_reads == ["contact", "lead", "account"]
    assert world.marketo.person(world.person_of(edited))["title"] == "While expired"
    assert world.marketo.person(deleted_person)["microsoftIsDeleted"] is True
    assert world.link_of(deleted_person) is None
    assert len(world.marketo.leads) == 2
