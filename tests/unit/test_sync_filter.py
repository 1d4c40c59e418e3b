"""The sync filter in the cycle (issue 19), over the fakes: what a filter keeps out is never written
nor failed, only counted; No → Yes syncs the record as new; Yes → No stops updates both ways and
keeps both records and the link, so that Yes again resumes from both sides' current values."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from sync_core.core.models import EntityType
from sync_core.core.syncfilter import Side, SyncFilter
from sync_core.cycle.engine import CycleOptions, SyncEngine
from sync_core.cycle.operate import Operator, Outcome
from sync_core.settings import DynamicsDeletePolicy
from tests.fakes import dataverse as fake_dataverse
from tests.unit.conftest import World, make_world

NATIVE = SyncFilter.of(dynamics_field="new_synctomkto")
MARKETO_FIELD = SyncFilter.of(marketo_field="syncToMicrosoft")
BOTH = SyncFilter.of(
    dynamics_field="new_synctomkto",
    dynamics_condition="not endswith(emailaddress1,'@test.example.com')",
    marketo_field="syncToMicrosoft",
    marketo_condition="leadSource ne 'Partner'",
)


def world_with(sync_filter: SyncFilter, **options: Any) -> World:
    return make_world(options=CycleOptions(sync_filter=sync_filter, **options))


def counts(world: World) -> tuple[int | None, int | None, int | None]:
    """(filtered by Dynamics, filtered by Marketo, failures) of a new cycle."""
    report = world.cycle().report
    return report.filtered.dynamics, report.filtered.marketo, report.failures


def test_a_new_dynamics_record_set_to_no_gets_no_person_and_no_failure() -> None:
    world = world_with(NATIVE)
    lead_id = world.dynamics_lead(1, new_synctomkto=False)
    assert counts(world) == (1, 0, 0)
    assert world.marketo.find("microsoftId", lead_id) == []
    assert world.marketo.leads == {}
    assert list(world.store.iter_failures(page_size=100)) == []


def test_no_to_yes_creates_the_person_as_for_a_new_record() -> None:
    world = world_with(NATIVE)
    lead_id = world.dynamics_lead(1, new_synctomkto=False)
    world.cycle()
    world.dataverse.update("leads", lead_id, new_synctomkto=True)
    report = world.cycle().report
    assert (report.created, report.filtered.dynamics) == (1, 0)
    marketo_id = world.person_of(lead_id)
    assert world.marketo.person(marketo_id)["firstName"] == "Lead1"
    link = world.link_of(marketo_id)
    assert link is not None
    assert link.filtered_out == ()


def test_an_empty_filter_column_syncs_like_yes() -> None:
    world = world_with(NATIVE)
    lead_id = world.dynamics_lead(1, new_synctomkto=None)
    assert counts(world) == (0, 0, 0)
    assert world.person_of(lead_id)


def test_yes_to_no_stops_updates_both_ways_and_keeps_both_records_and_the_link() -> None:
    world = world_with(NATIVE)
    lead_id, marketo_id = world.linked_lead(1)
    world.dataverse.update("leads", lead_id, new_synctomkto=False, firstname="Changed")
    assert counts(world) == (1, 0, 0)
    assert world.marketo.person(marketo_id)["firstName"] == "Lead1"  # not sent to Marketo
    link = world.link_of(marketo_id)
    assert link is not None
    assert link.filtered_out == (Side.DYNAMICS,)
    world.marketo.edit(marketo_id, title="CMO")  # a Marketo edit meanwhile: not sent to Dynamics
    assert counts(world) == (1, 0, 0)
    assert jobtitle(world, lead_id) is None
    assert world.dataverse.api_writes == []
    assert world.marketo.person(marketo_id)["email"] == "lead1@example.com"  # both records stay


def test_yes_again_resumes_with_what_changed_on_both_sides_meanwhile() -> None:
    world = world_with(NATIVE)
    lead_id, marketo_id = world.linked_lead(1)
    world.dataverse.update("leads", lead_id, new_synctomkto=False)
    world.cycle()
    world.dataverse.update("leads", lead_id, firstname="Dyn")  # edits while kept out
    world.marketo.edit(marketo_id, title="CMO")
    world.cycle()
    world.dataverse.update("leads", lead_id, new_synctomkto=True)
    report = world.cycle().report
    assert (report.filtered.dynamics, report.created, report.failures) == (0, 0, 0)
    assert world.marketo.person(marketo_id)["firstName"] == "Dyn"
    assert jobtitle(world, lead_id) == "CMO"
    link = world.link_of(marketo_id)
    assert link is not None
    assert link.filtered_out == ()
    assert link.baseline["firstName"] == "Dyn"
    assert link.baseline["title"] == "CMO"
    assert world.marketo.find("email", "lead1@example.com") == [world.marketo.person(marketo_id)]  # no second person


def test_a_marketo_person_set_to_false_is_kept_out_and_true_resumes_it() -> None:
    world = world_with(MARKETO_FIELD)
    lead_id, marketo_id = world.linked_lead(1)
    world.marketo.edit(marketo_id, syncToMicrosoft=False, title="CMO")
    assert counts(world) == (0, 1, 0)
    assert jobtitle(world, lead_id) is None
    world.dataverse.update("leads", lead_id, firstname="Dyn")  # a Dynamics edit: the link remembers Marketo's No
    assert counts(world) == (0, 1, 0)
    assert world.marketo.person(marketo_id)["firstName"] == "Lead1"
    world.marketo.edit(marketo_id, syncToMicrosoft=True)
    assert counts(world) == (0, 0, 0)
    assert world.marketo.person(marketo_id)["firstName"] == "Dyn"
    assert jobtitle(world, lead_id) == "CMO"


def test_a_marketo_condition_change_is_read_from_the_person_when_the_feed_cannot_decide() -> None:
    world = world_with(BOTH)
    lead_id, marketo_id = world.linked_lead(1)
    calls = world.marketo.calls("/leads.json", "GET")
    world.marketo.edit(marketo_id, leadSource="Partner")  # syncToMicrosoft is not in the feed: read the person
    assert counts(world) == (0, 1, 0)
    assert world.marketo.calls("/leads.json", "GET") == calls + 1
    world.marketo.edit(marketo_id, title="CMO")  # no filter field changed: the link's verdict, no read
    assert counts(world) == (0, 1, 0)
    assert world.marketo.calls("/leads.json", "GET") == calls + 1
    assert jobtitle(world, lead_id) is None


def test_a_new_record_matching_a_person_the_marketo_filter_excludes_is_neither_linked_nor_duplicated() -> None:
    world = world_with(BOTH)
    partner = world.marketo.create_person(email="lead1@example.com", leadSource="Partner")
    world.dynamics_lead(1)
    assert counts(world) == (0, 1, 0)
    assert world.link_of(partner) is None
    assert list(world.marketo.leads) == [partner]
    assert "microsoftId" not in world.marketo.leads[partner]


def test_a_dynamics_condition_keeps_test_records_out() -> None:
    world = world_with(BOTH)
    world.dynamics_lead(1, emailaddress1="qa@test.example.com")
    world.dynamics_contact(2)
    assert counts(world) == (1, 0, 0)
    assert [lead["email"] for lead in world.marketo.leads.values()] == ["contact2@example.com"]


def test_a_kept_out_record_deleted_in_dynamics_is_unlinked_without_flagging_the_person() -> None:
    world = world_with(NATIVE, dynamics_delete_policy=DynamicsDeletePolicy.FLAG)
    lead_id, marketo_id = world.linked_lead(1)
    world.dataverse.update("leads", lead_id, new_synctomkto=False)
    world.cycle()
    world.dataverse.delete("leads", lead_id)
    report = world.cycle().report
    assert (report.unlinked, report.flagged_deleted) == (1, 0)
    assert world.link_of(marketo_id) is None
    assert world.marketo.person(marketo_id).get("microsoftIsDeleted") is False  # as the link left it


def test_an_open_failure_of_a_record_then_kept_out_is_closed_not_retried() -> None:
    world = world_with(NATIVE)
    lead_id, marketo_id = world.linked_lead(1)
    world.marketo.edit(marketo_id, title="x" * 101)  # too long for jobtitle: a failure
    assert world.cycle().report.failures == 1
    world.dataverse.update("leads", lead_id, new_synctomkto=False)
    report = world.cycle().report
    assert (report.filtered.dynamics, report.resolved, report.failures) == (1, 1, 0)
    assert list(world.store.iter_failures(page_size=100)) == []


def jobtitle(world: World, lead_id: str) -> Any:
    row = world.dataverse.row("leads", lead_id)
    assert row is not None
    return row.get("jobtitle")


def test_an_org_without_the_default_filter_column_syncs_everything_and_pays_for_it_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for entity_set in ("leads", "contacts"):  # an org that never added the native sync's column
        monkeypatch.delitem(fake_dataverse.TABLES[entity_set][2], "new_synctomkto")
    world = world_with(NATIVE)
    lead_id = world.dynamics_lead(1)
    first = world.cycle()
    assert (first.outcome, first.report.created, first.report.filtered.dynamics) == ("ok", 1, 0)
    assert world.person_of(lead_id)
    idle = world.cycle()  # the schema cache says the column is missing: it is not asked for again
    assert idle.outcome == "ok"
    assert idle.report.api_calls.dataverse == 3  # the leads', contacts' and accounts' change feeds
    feeds = [r for r in world.dataverse.requests[-3:] if r.url.path.rsplit("/", 1)[-1] in ("leads", "contacts")]
    assert len(feeds) == 2
    assert all("new_synctomkto" not in r.url.params["$select"] for r in feeds)


def test_a_condition_on_a_column_the_table_lacks_fails_the_cycle_loudly() -> None:
    world = world_with(SyncFilter.of(dynamics_condition="cr123_segment ne 'test'"))
    world.dynamics_lead(1)
    report = world.cycle()
    assert report.outcome == "error"
    assert "cr123_segment" in (report.report.error or "")
    assert world.marketo.leads == {}


def test_a_person_admitted_again_in_marketo_is_linked_to_the_free_record_with_their_email() -> None:
    world = world_with(BOTH)
    partner = world.marketo.create_person(email="lead1@example.com", leadSource="Partner", lastName="P")
    lead_id = world.dynamics_lead(1)
    world.dynamics_contact(2)
    world.cycle()
    assert world.link_of(partner) is None
    world.marketo.edit(partner, leadSource="Web")  # No → Yes: linked as a new record would have been
    report = world.cycle().report
    assert (report.linked, report.created, report.failures, report.filtered.marketo) == (1, 0, 0, 0)
    link = world.link_of(partner)
    assert link is not None
    assert link.dataverse_id == lead_id
    assert world.marketo.person(partner)["microsoftId"] == lead_id
    assert all(op != "create" for op, _, _ in world.dataverse.api_writes)  # nothing created in Dynamics (B8)


def test_a_resync_re_applies_each_sides_filter_on_fresh_reads() -> None:
    world = world_with(NATIVE)
    lead_id, marketo_id = world.linked_lead(1)
    world.dataverse.update("leads", lead_id, new_synctomkto=False)
    world.cycle()
    world.marketo.leads[marketo_id]["title"] = "CMO"  # drifted apart while kept out, no feed says so
    operator = Operator(
        store=world.store,
        marketo=world.marketo_client,
        dataverse=world.dataverse_client,
        field_map=world.field_map,
        by="ops@contoso",
        via="cli",
        clock=world.clock,
        options=CycleOptions(sync_filter=NATIVE),
    )

    kept = operator.resync(marketo_id=marketo_id)
    assert kept.details["filtered_out"] == ["dynamics"]
    assert kept.details["written"] == {"dynamics": 0, "marketo": 0}
    assert "kept out by the Dynamics sync filter" in kept.message
    assert jobtitle(world, lead_id) is None  # nothing written
    assert operator.resync(marketo_id=marketo_id).outcome is Outcome.NOTHING  # a second time: the same

    world.dataverse.rows["leads"][lead_id]["new_synctomkto"] = True  # admitted, no feed says so yet
    resumed = operator.resync(dataverse_id=lead_id, entity=EntityType.LEAD)
    assert (resumed.outcome, resumed.details["filtered_out"]) == (Outcome.DONE, [])
    assert jobtitle(world, lead_id) == "CMO"  # merged without the baseline: the empty side takes the value
    link = world.link_of(marketo_id)
    assert link is not None
    assert (link.filtered_out, link.baseline["title"]) == ((), "CMO")


def refiltered(world: World, sync_filter: SyncFilter) -> World:
    """The same services and state under other filter settings (an admin changed them)."""
    engine = SyncEngine(
        marketo=world.marketo_client,
        dataverse=world.dataverse_client,
        store=world.store,
        field_map=world.field_map,
        counters=world.counters,
        options=CycleOptions(sync_filter=sync_filter),
        clock=world.clock,
    )
    return dataclasses.replace(world, engine=engine)


def test_a_marketo_filter_set_after_linking_is_decided_on_the_next_change_of_either_side() -> None:
    world = make_world()
    lead_id, marketo_id = world.linked_lead(1)
    world.marketo.leads[marketo_id]["leadSource"] = "Partner"  # already so when the filter is set
    world = refiltered(world, BOTH)
    reads = world.marketo.calls("/leads.json", "GET")
    world.dataverse.update("leads", lead_id, firstname="Dyn")  # only Dynamics changed
    assert counts(world) == (0, 1, 0)
    assert world.marketo.calls("/leads.json", "GET") == reads + 1  # the person read once, to decide
    assert world.marketo.person(marketo_id)["firstName"] == "Lead1"  # not written
    link = world.link_of(marketo_id)
    assert link is not None
    assert (link.filtered_out, link.filter_key) == ((Side.MARKETO,), BOTH.key)
    world.dataverse.update("leads", lead_id, firstname="Again")
    assert counts(world) == (0, 1, 0)
    assert world.marketo.calls("/leads.json", "GET") == reads + 1  # decided: remembered, not read again


def test_a_dynamics_filter_set_after_linking_is_decided_on_the_next_change_of_either_side() -> None:
    world = make_world()
    lead_id, marketo_id = world.linked_lead(1)
    world.dataverse.rows["leads"][lead_id]["new_synctomkto"] = False  # already so when the filter is set
    world = refiltered(world, NATIVE)
    world.marketo.edit(marketo_id, title="CMO")  # only Marketo changed
    assert counts(world) == (1, 0, 0)
    assert jobtitle(world, lead_id) is None  # not written
    link = world.link_of(marketo_id)
    assert link is not None
    assert (link.filtered_out, link.filter_key) == ((Side.DYNAMICS,), NATIVE.key)
    world = refiltered(world, SyncFilter())  # the filter removed: the pair syncs again on its next change
    world.marketo.edit(marketo_id, title="CEO")
    assert counts(world) == (0, 0, 0)
    assert jobtitle(world, lead_id) == "CEO"
