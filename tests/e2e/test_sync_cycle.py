"""The sync cycle end to end: the ``sync_cycle`` timer function, both simulators over real HTTP,
the state store on Azurite. One test per rule of design §1 (B1-B9) and per item of issue 6."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sync_core.core.models import Direction, EntityType
from sync_core.cycle.engine import MARKETO_CHANGES, dataverse_cursor
from sync_core.status.view import build_status
from sync_core.wiring.services import close_services
from tests.e2e.conftest import CONTACT, LEAD, World, field_map_json


def linked_lead(world: World, i: int, **values: Any) -> tuple[str, int]:
    """A Dynamics lead, synced: its id and its Marketo person's id."""
    lead_id = world.dynamics_lead(i, **values)
    assert world.cycle().outcome == "ok"
    return lead_id, int(world.person_of(lead_id)["id"])


def linked_contact(world: World, i: int, **values: Any) -> tuple[str, int]:
    contact_id = world.dynamics_contact(i, **values)
    assert world.cycle().outcome == "ok"
    return contact_id, int(world.person_of(contact_id)["id"])


# -- B8: creation and linking ----------------------------------------------------------------------


def test_new_dynamics_lead_creates_a_marketo_person_with_the_microsoft_fields(world: World) -> None:
    lead_id = world.dynamics_lead(1, jobtitle="Buyer", telephone1="+1 555 0100")
    report = world.cycle()
    person = world.person_of(lead_id)
    assert (person["email"], person["firstName"], person["lastName"]) == ("lead1@example.com", "Lead1", "Person1")
    assert (person["title"], person["phone"], person["company"]) == ("Buyer", "+1 555 0100", "Company 1")
    assert person["microsoftType"] == "Lead"
    assert person["microsoftId"] == lead_id
    assert person["microsoftIsDeleted"] is False
    assert person["microsoftCreatedDate"] == world.dynamics_row(LEAD, lead_id)["createdon"]  # type: ignore[index]
    link = world.link_of(int(person["id"]))
    assert link is not None
    assert (link.entity, link.dataverse_id) == (LEAD, lead_id)
    assert link.baseline["email"] == "lead1@example.com"
    assert report.report.created == 1


def test_new_dynamics_contact_links_the_person_with_its_email_instead_of_creating_a_duplicate(world: World) -> None:
    existing = world.marketo.create_lead({"email": "contact1@example.com", "firstName": "Marketo", "title": "VP"})
    contact_id = world.dynamics_contact(1)
    report = world.cycle()
    assert [p["id"] for p in world.marketo.find_leads("email", "contact1@example.com")] == [existing]
    person = world.marketo.get_lead(existing)
    assert (person["microsoftType"], person["microsoftId"]) == ("Contact", contact_id)
    # First link: the title only Marketo had goes to Dynamics; the first name both had differs, and on a
    # contact Dynamics wins.
    assert world.dynamics_row(CONTACT, contact_id)["jobtitle"] == "VP"  # type: ignore[index]
    assert person["firstName"] == "Contact1"
    assert report.report.linked == 1
    assert report.report.created == 0
    [collision] = world.store.list_collisions()
    assert (collision.field, collision.winner, collision.marketo_value, collision.dynamics_value) == (
        "firstName",
        "dynamics",
        "Marketo",
        "Contact1",
    )


def test_marketo_only_person_never_creates_a_dynamics_record(world: World) -> None:
    person = world.marketo.create_lead({"email": "only.marketo@example.com", "lastName": "Solo", "company": "Acme"})
    world.cycle()
    world.marketo.update_lead(person, {"title": "Owner"})
    world.cycle()
    assert world.api_creates() == 0
    assert world.dataverse.find("leads", emailaddress1="only.marketo@example.com") == []
    assert world.link_of(person) is None


# -- B1: both ways ---------------------------------------------------------------------------------------


def test_marketo_edit_reaches_the_linked_dynamics_lead(world: World) -> None:
    lead_id, person = linked_lead(world, 1)
    world.marketo.update_lead(person, {"title": "CFO", "phone": "+1 555 0199"})
    report = world.cycle()
    row = world.dynamics_row(LEAD, lead_id)
    assert row is not None
    assert (row["jobtitle"], row["telephone1"]) == ("CFO", "+1 555 0199")
    assert report.report.written.dynamics == 1


def test_dynamics_edit_reaches_the_linked_marketo_person(world: World) -> None:
    contact_id, person = linked_contact(world, 1)
    world.dataverse.update("contacts", contact_id, {"jobtitle": "Head of IT", "lastname": "Renamed"})
    report = world.cycle()
    assert (world.marketo.get_lead(person)["title"], world.marketo.get_lead(person)["lastName"]) == (
        "Head of IT",
        "Renamed",
    )
    assert report.report.written.marketo == 1


# -- B2: collisions ------------------------------------------------------------------------------------------


def test_collision_on_lead_keeps_marketo_value(world: World) -> None:
    lead_id, person = linked_lead(world, 1, jobtitle="Analyst")
    world.marketo.update_lead(person, {"title": "Marketing title"})
    world.dataverse.update("leads", lead_id, {"jobtitle": "Sales title"})
    before = datetime.now(UTC)
    report = world.cycle()
    assert world.marketo.get_lead(person)["title"] == "Marketing title"
    assert world.dynamics_row(LEAD, lead_id)["jobtitle"] == "Marketing title"  # type: ignore[index]
    [collision] = world.store.list_collisions()
    assert (collision.marketo_value, collision.dynamics_value, collision.baseline_value) == (
        "Marketing title",
        "Sales title",
        "Analyst",
    )
    assert (collision.winner, collision.rule, collision.field) == ("marketo", "lead: Marketo wins", "title")
    assert collision.at >= before - timedelta(seconds=5)
    assert collision.run_id == report.run_id
    assert report.report.collisions == 1


def test_collision_on_contact_keeps_dynamics_value(world: World) -> None:
    contact_id, person = linked_contact(world, 1, jobtitle="Analyst")
    world.marketo.update_lead(person, {"title": "Marketing title"})
    world.dataverse.update("contacts", contact_id, {"jobtitle": "Sales title"})
    world.cycle()
    assert world.marketo.get_lead(person)["title"] == "Sales title"
    assert world.dynamics_row(CONTACT, contact_id)["jobtitle"] == "Sales title"  # type: ignore[index]
    [collision] = world.store.list_collisions()
    assert (collision.winner, collision.rule) == ("dynamics", "contact: Dynamics wins")


def test_per_field_override_beats_the_entity_rule(world_factory: Any) -> None:
    override = {
        "marketo": "phone",
        "lead": "telephone1",
        "contact": "telephone1",
        "type": "phone",
        "winner": "dynamics",
    }
    world = world_factory(SYNC_FIELD_MAP=field_map_json(override, drop=("phone",)))
    lead_id, person = linked_lead(world, 1, telephone1="+1 555 0000")
    world.marketo.update_lead(person, {"phone": "+1 555 1111", "title": "Marketing title"})
    world.dataverse.update("leads", lead_id, {"telephone1": "+1 555 2222", "jobtitle": "Sales title"})
    world.cycle()
    row = world.dynamics_row(LEAD, lead_id)
    assert row is not None
    assert (row["telephone1"], row["jobtitle"]) == ("+1 555 2222", "Marketing title")
    rules = {collision.field: collision.rule for collision in world.store.list_collisions()}
    assert rules == {"phone": "override: phone Dynamics wins", "title": "lead: Marketo wins"}


# -- B3: deletes ---------------------------------------------------------------------------------------------


def test_dynamics_delete_flags_the_person_and_unlinks(world: World) -> None:
    lead_id, person = linked_lead(world, 1)
    world.dataverse.delete("leads", lead_id)
    report = world.cycle()
    assert world.marketo.get_lead(person)["microsoftIsDeleted"] is True
    assert world.link_of(person) is None
    assert (report.report.flagged_deleted, report.report.unlinked) == (1, 1)


def test_dynamics_delete_with_ignore_policy_unlinks_without_flagging(world_factory: Any) -> None:
    world = world_factory(SYNC_DYNAMICS_DELETES="ignore")
    lead_id, person = linked_lead(world, 1)
    world.dataverse.delete("leads", lead_id)
    world.cycle()
    assert world.marketo.get_lead(person)["microsoftIsDeleted"] is False
    assert world.link_of(person) is None


def test_marketo_delete_is_not_sent_to_dynamics_and_the_link_is_dropped(world: World) -> None:
    lead_id, person = linked_lead(world, 1)
    world.marketo.delete_lead(person)
    world.dataverse.update("leads", lead_id, {"jobtitle": "Changed in Dynamics"})
    report = world.cycle()
    assert world.dynamics_row(LEAD, lead_id) is not None
    assert world.link_of(person) is None
    assert report.report.unlinked == 1


def test_marketo_delete_with_delete_policy_deletes_the_dynamics_record(world_factory: Any) -> None:
    world = world_factory(SYNC_MARKETO_DELETES="delete")
    lead_id, person = linked_lead(world, 1)
    world.marketo.delete_lead(person)
    report = world.cycle()
    assert world.dynamics_row(LEAD, lead_id) is None
    assert world.link_of(person) is None
    assert report.report.deleted_in_dynamics == 1


def test_turning_the_delete_policy_on_reads_deletions_from_the_start_of_the_pending_window(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    lead_id, person = linked_lead(world, 1)
    world.cycle()  # the change feed's cursor is stored; no deletions cursor yet
    monkeypatch.setenv("SYNC_MARKETO_DELETES", "delete")
    world.marketo.delete_lead(person)  # inside the window the next cycle reads
    report = world.cycle()
    assert report.report.deleted_in_dynamics == 1
    assert world.dynamics_row(LEAD, lead_id) is None


# -- B5, B6: the cycle is the only update path; fields chosen in configuration --------------------------------


def test_an_edit_waits_for_the_next_cycle(world: World) -> None:
    lead_id, person = linked_lead(world, 1, jobtitle="Before")
    world.marketo.update_lead(person, {"title": "After"})
    assert world.dynamics_row(LEAD, lead_id)["jobtitle"] == "Before"  # type: ignore[index]
    world.cycle()
    assert world.dynamics_row(LEAD, lead_id)["jobtitle"] == "After"  # type: ignore[index]


def test_field_map_setting_chooses_the_synced_fields_and_converts_option_sets(world_factory: Any) -> None:
    source = {
        "marketo": "leadSource",
        "lead": "leadsourcecode",
        "type": "optionset",
        "options": {"7": "Trade Show", "8": "Website"},
    }
    world = world_factory(SYNC_FIELD_MAP=field_map_json(source, drop=("title",)))
    lead_id, person = linked_lead(world, 1, leadsourcecode=8, jobtitle="Not synced")
    assert world.marketo.get_lead(person)["leadSource"] == "Website"
    assert world.marketo.get_lead(person).get("title") is None
    world.marketo.update_lead(person, {"leadSource": "trade show", "title": "Ignored"})
    world.cycle()
    row = world.dynamics_row(LEAD, lead_id)
    assert row is not None
    assert (row["leadsourcecode"], row["jobtitle"]) == (7, "Not synced")


# -- B7: validation, rejections, the activity log, retries ----------------------------------------------------


def test_invalid_value_is_not_written_and_goes_to_the_person_activity_log(world: World) -> None:
    lead_id, person = linked_lead(world, 1)
    other_id, other = linked_lead(world, 2)
    world.marketo.update_lead(person, {"firstName": "X" * 60, "title": "Also held back"})
    world.marketo.update_lead(other, {"title": "Goes through"})
    report = world.cycle()
    row = world.dynamics_row(LEAD, lead_id)
    assert row is not None
    assert (row["firstname"], row["jobtitle"]) == ("Lead1", None)
    assert world.dynamics_row(LEAD, other_id)["jobtitle"] == "Goes through"  # type: ignore[index]
    [failure] = world.store.list_failures()
    assert failure.key == f"to_dynamics:m{person}"
    assert failure.direction is Direction.TO_DYNAMICS
    assert failure.reasons == ["firstname: longer than the 50 characters Dynamics allows"]
    assert failure.next_retry_at > failure.last_failed_at
    [activity] = world.failure_activities(person)
    assert activity["primaryAttributeValue"] == "lead"
    assert activity["attributes"] == {
        "reason": "firstname: longer than the 50 characters Dynamics allows",
        "direction": "to_dynamics",
    }
    assert report.outcome == "partial"
    assert report.report.failures == 1
    # The cursor moved on: the next cycle does not pull the change again, and logs nothing twice.
    again = world.cycle()
    assert again.report.pulled.marketo == 0
    assert again.report.failures == 0
    assert len(world.failure_activities(person)) == 1
    # Fixed in Marketo: the held-back fields go through and the failure is resolved.
    world.marketo.update_lead(person, {"firstName": "Short"})
    fixed = world.cycle()
    row = world.dynamics_row(LEAD, lead_id)
    assert row is not None
    assert (row["firstname"], row["jobtitle"]) == ("Short", "Also held back")
    assert world.store.list_failures() == []
    assert fixed.report.resolved == 1


def test_record_rejected_by_dynamics_is_isolated_recorded_and_retried_on_schedule(world: World) -> None:
    lead_id, person = linked_lead(world, 1)
    other_id, other = linked_lead(world, 2)
    world.marketo.update_lead(person, {"company": None})  # a plug-in on lead requires companyname
    world.marketo.update_lead(other, {"title": "Goes through"})
    report = world.cycle()
    assert world.dynamics_row(LEAD, lead_id)["companyname"] == "Company 1"  # type: ignore[index]
    assert world.dynamics_row(LEAD, other_id)["jobtitle"] == "Goes through"  # type: ignore[index]
    [failure] = world.store.list_failures()
    assert failure.code == "0x80040265"
    assert failure.fields == ["company"]
    assert failure.reasons[0].startswith("Dynamics refused the update")
    assert len(world.failure_activities(person)) == 1
    assert report.outcome == "partial"
    # Not due yet: a cycle leaves it alone.
    assert world.cycle().report.retried == 0
    # The Dynamics admin relaxes the plug-in; once the retry is due, the cycle writes the record.
    world.dataverse.options.plugin_rules.clear()
    world.store.upsert_failures(
        [failure.model_copy(update={"next_retry_at": datetime.now(UTC) - timedelta(seconds=1)})]
    )
    retried = world.cycle()
    assert retried.report.retried == 1
    assert retried.report.resolved == 1
    assert world.dynamics_row(LEAD, lead_id)["companyname"] is None  # type: ignore[index]
    assert world.store.list_failures() == []


# -- B9: qualification ------------------------------------------------------------------------------------------


def test_qualified_lead_moves_the_link_to_its_contact_and_dynamics_wins_from_then_on(world: World) -> None:
    lead_id, person = linked_lead(world, 1, jobtitle="Lead title")
    contact_id = world.dataverse.qualify_lead(lead_id)
    report = world.cycle()
    assert report.report.qualified == 1
    assert report.report.created == 0
    assert [p["id"] for p in world.marketo.find_leads("email", "lead1@example.com")] == [person]
    assert (world.marketo.get_lead(person)["microsoftType"], world.marketo.get_lead(person)["microsoftId"]) == (
        "Contact",
        contact_id,
    )
    link = world.link_of(person)
    assert link is not None
    assert (link.entity, link.dataverse_id, link.originating_lead_id) == (
        CONTACT,
        contact_id,
        lead_id,
    )
    assert world.store.get_links_by_dataverse_ids(LEAD, [lead_id]) == {}
    world.marketo.update_lead(person, {"title": "Marketing title"})
    world.dataverse.update("contacts", contact_id, {"jobtitle": "Sales title"})
    world.cycle()
    assert world.marketo.get_lead(person)["title"] == "Sales title"
    assert world.dynamics_row(LEAD, lead_id)["jobtitle"] == "Lead title"  # type: ignore[index]


# -- echoes, idle cycles, reports ---------------------------------------------------------------------------------


def test_the_echo_of_our_own_writes_is_not_written_back(world: World) -> None:
    lead_id, person = linked_lead(world, 1)
    world.marketo.update_lead(person, {"title": "From Marketo"})
    world.dataverse.update("leads", lead_id, {"telephone1": "+1 555 0142"})
    world.cycle()
    dataverse_writes = world.dataverse.stats.to_json()["writes"]
    echo = world.cycle()  # sees both writes coming back through the change feeds
    assert echo.report.pulled.marketo >= 1
    assert echo.report.pulled.dynamics >= 1
    assert echo.report.written.model_dump() == {"marketo": 0, "dynamics": 0}
    assert echo.report.collisions == 0
    assert world.dataverse.stats.to_json()["writes"] == dataverse_writes


def test_an_idle_cycle_costs_at_most_four_api_calls_and_no_token(world: World) -> None:
    linked_lead(world, 1)
    world.cycle()  # the echo of the creation
    idle = world.cycle()
    assert idle.report.api_calls.marketo + idle.report.api_calls.dataverse <= 4  # 1 feed + 3 deltas
    assert idle.report.token_calls == 0
    assert idle.report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def test_the_run_report_says_what_the_cycle_did(world: World) -> None:
    world.dynamics_lead(1)
    report = world.cycle()
    body = report.as_json()  # what run-once prints
    assert body["pulled"] == {"marketo": 0, "dynamics": 1}
    assert body["written"] == {"marketo": 1, "dynamics": 0}
    assert body["api_calls"]["marketo"] >= 2
    assert body["api_calls"]["dataverse"] >= 2
    assert body["api_calls"]["by_operation"]["marketo.sync_leads"] == 1
    assert body["table_transactions"] >= 1
    assert body["seconds"] > 0
    assert body["backlog"] == {"marketo": 0, "retries": 0}
    assert body["drift"] == []


def test_two_cycles_never_overlap(world: World) -> None:
    world.dynamics_lead(1)
    world.store.acquire_lease("another-cycle", now=datetime.now(UTC), duration=timedelta(minutes=5))
    report = world.cycle()
    assert report.outcome == "lease_held"
    assert world.marketo.find_leads("email", "lead1@example.com") == []


# -- field-map drift ---------------------------------------------------------------------------------------------


def test_field_map_drift_is_reported_and_the_other_fields_keep_syncing(world_factory: Any) -> None:
    gone_in_dynamics = {"marketo": "city", "lead": "address1_city", "contact": "address1_city"}
    gone_in_marketo = {"marketo": "favoriteColor", "lead": "jobtitle"}
    world = world_factory(SYNC_FIELD_MAP=field_map_json(gone_in_dynamics, gone_in_marketo, drop=("title",)))
    lead_id, person = linked_lead(world, 1)
    world.marketo.update_lead(person, {"phone": "+1 555 0177", "city": "Lyon"})
    report = world.cycle()
    assert report.outcome == "ok"
    assert world.dynamics_row(LEAD, lead_id)["telephone1"] == "+1 555 0177"  # type: ignore[index]
    drift = {(item.side, item.entity, item.name) for item in report.report.drift or []}
    assert drift == {
        ("dynamics", "lead", "address1_city"),
        ("dynamics", "contact", "address1_city"),
        ("marketo", None, "favoriteColor"),
    }
    status = build_status(world.store, now=datetime.now(UTC), schedule="0 */5 * * * *")
    assert status.health.headline == "Field-map drift"


# -- expired tokens, quota, transient failures, crashes -------------------------------------------------------------


def test_expired_delta_token_rereads_the_table_without_losing_or_duplicating_changes(world: World) -> None:
    edited, _ = linked_lead(world, 1)
    deleted, deleted_person = linked_lead(world, 2)
    _, marketo_edited = linked_lead(world, 3)
    world.cycle()
    persons_before = len(world.marketo.db.lead_ids())
    world.dataverse.expire_change_tracking()
    world.dataverse.update("leads", edited, {"jobtitle": "While expired"})
    world.dataverse.delete("leads", deleted)
    world.marketo.update_lead(marketo_edited, {"title": "From Marketo"})
    report = world.cycle()
    assert report.outcome == "ok"
    assert report.report.full_reads == ["contact", "lead", "account"]
    assert world.marketo.get_lead(world.person_of(edited)["id"])["title"] == "While expired"
    assert world.marketo.get_lead(deleted_person)["microsoftIsDeleted"] is True
    assert world.link_of(deleted_person) is None
    assert world.dynamics_row(LEAD, world.marketo.get_lead(marketo_edited)["microsoftId"])["jobtitle"] == "From Marketo"  # type: ignore[index]
    assert len(world.marketo.db.lead_ids()) == persons_before
    assert world.api_creates() == 0
    assert world.cycle().report.full_reads == []


def test_daily_quota_ends_the_cycle_cleanly_with_the_cursors_unchanged(world: World) -> None:
    lead_id, person = linked_lead(world, 1)
    world.cycle()
    cursor = world.store.get_cursor(MARKETO_CHANGES)
    world.marketo.update_lead(person, {"title": "Waits for tomorrow"})
    world.dataverse.update("leads", lead_id, {"telephone1": "+1 555 0123"})
    world.marketo.set_faults(
        [{"path": "leads.json", "method": "POST", "times": -1, "action": {"marketo_error": "607"}}]
    )
    report = world.cycle()
    assert report.outcome == "quota"
    assert world.store.get_cursor(MARKETO_CHANGES) == cursor
    world.marketo.clear_faults()
    assert world.cycle().outcome == "ok"
    row = world.dynamics_row(LEAD, lead_id)
    assert row is not None
    assert row["jobtitle"] == "Waits for tomorrow"
    assert world.marketo.get_lead(person)["phone"] == "+1 555 0123"


def test_transient_dataverse_failure_keeps_the_cursors_and_the_next_cycle_finishes_the_work(world: World) -> None:
    lead_id, person = linked_lead(world, 1)
    cursors = {name: world.store.get_cursor(name) for name in (MARKETO_CHANGES, dataverse_cursor(EntityType.LEAD))}
    world.marketo.update_lead(person, {"title": "Later"})
    world.dataverse.set_faults([{"path": "UpdateMultiple", "times": -1, "action": {"status": 503, "retry_after": 0}}])
    report = world.cycle()
    assert report.outcome == "transient"
    assert world.store.get_cursor(MARKETO_CHANGES) == cursors[MARKETO_CHANGES]
    world.dataverse.clear_faults()
    assert world.cycle().outcome == "ok"
    assert world.dynamics_row(LEAD, lead_id)["jobtitle"] == "Later"  # type: ignore[index]
    assert world.api_creates() == 0


def test_what_a_failed_cycle_wrote_to_marketo_is_not_taken_for_a_marketo_edit_after_it(world: World) -> None:
    """Found by the property test. A new lead is matched by email to a person: the cycle writes the
    lead's values to the person, and the person's (Marketo wins on leads) to the lead, where
    Dataverse is down, so the cycle fails. A Dynamics user then edits the lead. The values the
    failed cycle wrote to the person come back in the change feed; they are the sync's own, not a
    Marketo user's edits, and must not overwrite the Dynamics edit."""
    assert world.cycle().outcome == "ok"  # the change feed's cursor: the next cycles read from here
    person = world.marketo.create_lead({"email": "lead1@example.com", "lastName": "Marketo"})
    lead_id = world.dynamics_lead(1, firstname="First", lastname="Dynamics")
    world.dataverse.set_faults([{"path": "UpdateMultiple", "times": -1, "action": {"status": 503, "retry_after": 0}}])
    assert world.cycle().outcome == "transient"
    world.dataverse.clear_faults()
    assert world.marketo.get_lead(person)["firstName"] == "First"  # written before the cycle failed
    link = world.link_of(person)  # its Marketo half recorded: the link, that baseline
    assert link is not None
    assert (link.dataverse_id, link.baseline.get("firstName")) == (lead_id, "First")
    assert "lastName" not in link.baseline  # its Dynamics half was not written: no baseline
    [failure] = world.store.list_failures()
    assert (failure.marketo_id, failure.direction.value, failure.code) == (person, "to_dynamics", "503")
    assert failure.reasons[0].startswith("Dynamics did not write the update (retried)")
    assert world.failure_activities(person) == []  # an outage, retried: not a refusal to log
    world.dataverse.update("leads", lead_id, {"firstname": "Edited in Dynamics"})

    assert world.cycle().outcome == "ok"

    row = world.dynamics_row(LEAD, lead_id)
    assert row is not None
    after = world.marketo.get_lead(person)
    assert (row["firstname"], after["firstName"]) == ("Edited in Dynamics", "Edited in Dynamics")
    assert (row["lastname"], after["lastName"]) == ("Marketo", "Marketo")  # the collision, as the match settled it
    assert world.store.list_failures() == []
    assert world.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def test_what_a_failed_cycle_wrote_to_dynamics_is_not_taken_for_a_dynamics_edit_after_it(world: World) -> None:
    """The same on the other side: a contact edited on both sides (other fields); its Dynamics
    write goes through and its Marketo write fails (the daily quota), so the cycle fails. A
    Marketo user then edits the field the failed cycle wrote to Dynamics. That value comes back in
    the contact's delta; it is the sync's own, and must not win (Dynamics wins on contacts) over
    the Marketo edit."""
    contact_id, person = linked_contact(world, 1)
    world.marketo.update_lead(person, {"phone": "+1 555 0001"})
    world.dataverse.update("contacts", contact_id, {"jobtitle": "Title from Dynamics"})
    quota = {"path": "leads.json", "method": "POST", "times": -1, "action": {"marketo_error": "607"}}
    world.marketo.set_faults([quota])
    assert world.cycle().outcome == "quota"
    world.marketo.clear_faults()
    row = world.dynamics_row(CONTACT, contact_id)
    assert row is not None
    assert row["telephone1"] == "+1 555 0001"  # written before the cycle failed
    link = world.link_of(person)  # its Dynamics half recorded: that baseline
    assert link is not None
    assert link.baseline.get("phone") == "+1 555 0001"
    assert link.baseline.get("title") != "Title from Dynamics"  # its Marketo half was not written
    [failure] = world.store.list_failures()
    assert (failure.marketo_id, failure.direction.value, failure.code) == (person, "to_marketo", "unanswered")
    assert world.failure_activities(person) == []
    world.marketo.update_lead(person, {"phone": "+1 555 0002"})

    assert world.cycle().outcome == "ok"

    row = world.dynamics_row(CONTACT, contact_id)
    assert row is not None
    after = world.marketo.get_lead(person)
    assert (row["telephone1"], after["phone"]) == ("+1 555 0002", "+1 555 0002")
    assert (row["jobtitle"], after["title"]) == ("Title from Dynamics", "Title from Dynamics")
    assert world.store.list_failures() == []
    assert world.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


class Crash(BaseException):
    """The process dies (not an error the engine could catch)."""


def test_a_crash_before_the_cursor_commit_repeats_the_window_without_writing_twice(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    lead_id, person = linked_lead(world, 1)
    world.cycle()
    world.marketo.update_lead(person, {"title": "Written once"})
    real_put = type(world.store).put_cursor

    def crash(self: Any, cursor: Any) -> Any:
        if cursor.name == MARKETO_CHANGES:
            raise Crash
        return real_put(self, cursor)

    monkeypatch.setattr(type(world.store), "put_cursor", crash)
    with pytest.raises(Crash):
        world.cycle()
    monkeypatch.setattr(type(world.store), "put_cursor", real_put)
    writes = json.dumps(world.dataverse.stats.to_json()["writes"], sort_keys=True)
    assert world.dynamics_row(LEAD, lead_id)["jobtitle"] == "Written once"  # type: ignore[index]
    repeat = world.cycle()
    assert repeat.outcome == "ok"
    assert repeat.report.pulled.marketo >= 1
    assert repeat.report.written.model_dump() == {"marketo": 0, "dynamics": 0}
    assert json.dumps(world.dataverse.stats.to_json()["writes"], sort_keys=True) == writes


def test_a_person_deleted_in_marketo_after_an_edit_is_unlinked_and_every_write_is_counted(world: World) -> None:
    contact_id, person = linked_contact(world, 1)
    world.marketo.update_lead(person, {"firstName": "Edited"})
    world.marketo.delete_lead(person)
    world.dataverse.update("contacts", contact_id, {"jobtitle": "Changed after"})
    report = world.cycle()
    assert world.link_of(person) is None
    assert report.report.unlinked == 1
    # The person's last edit reached Dynamics before the person was found gone, and says so.
    assert world.dynamics_row(CONTACT, contact_id)["firstname"] == "Edited"  # type: ignore[index]
    assert report.report.written.dynamics == 1
    # That write is a change to a record no person has any more: the contact gets a new person.
    again = world.cycle()
    assert again.report.created == 1
    [new_person] = world.marketo.find_leads("email", "contact1@example.com")
    assert (new_person["microsoftId"], new_person["title"]) == (contact_id, "Changed after")
    assert world.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def test_a_record_deleted_after_a_crashed_first_cycle_linked_it_is_flagged_not_left_linked(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    contact_id = world.dynamics_contact(1)
    real_put = type(world.store).put_cursor

    def crash(self: Any, cursor: Any) -> Any:
        if cursor.name == dataverse_cursor(CONTACT):
            raise Crash
        return real_put(self, cursor)

    monkeypatch.setattr(type(world.store), "put_cursor", crash)
    with pytest.raises(Crash):
        world.cycle()  # the person is created and linked, but the contact table has no token yet
    monkeypatch.setattr(type(world.store), "put_cursor", real_put)
    person = int(world.person_of(contact_id)["id"])
    assert world.link_of(person) is not None
    world.dataverse.delete("contacts", contact_id)
    # No token: the next read is a full one, which reports no deletions; the link it does not see goes.
    report = world.cycle()
    assert report.outcome == "ok"
    assert world.link_of(person) is None
    assert world.marketo.get_lead(person)["microsoftIsDeleted"] is True
    assert report.report.flagged_deleted == 1


def test_a_fresh_instance_reads_the_schema_from_the_state_store_not_the_services(world: World) -> None:
    lead_id, person = linked_lead(world, 1)  # a busy cycle: metadata and describe read, and kept
    close_services()  # the Functions instance goes away; the next cycle runs in a new one
    world.marketo.update_lead(person, {"title": "Cold start"})
    report = world.cycle()
    operations = report.report.api_calls.by_operation
    assert "dataverse.get_entity_metadata" not in operations
    assert "marketo.describe" not in operations
    assert world.dynamics_row(LEAD, lead_id)["jobtitle"] == "Cold start"  # type: ignore[index]


def test_run_once_prints_progress_per_stage_and_the_json_report(world: World) -> None:
    import io

    from sync_core.cycle.cli import run_once_main

    for i in range(3):
        world.dynamics_lead(i)
    person = world.marketo.create_lead({"email": "solo@example.com", "lastName": "Solo"})
    assert person > 0
    out, err = io.StringIO(), io.StringIO()
    assert run_once_main([], environ=world.env, stdout=out, stderr=err) == 0
    report = json.loads(out.getvalue())
    assert report["outcome"] == "ok"
    assert report["created"] == 3
    lines = err.getvalue().splitlines()
    assert "dataverse leads: 3" in lines
    assert any(line.startswith("marketo changes: ") for line in lines)
    quiet = io.StringIO()
    assert run_once_main(["--quiet"], environ=world.env, stdout=io.StringIO(), stderr=quiet) == 0
    assert quiet.getvalue() == ""
