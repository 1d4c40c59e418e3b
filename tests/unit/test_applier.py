"""``Applier`` on its own: one batch of touched records in, writes to both fakes and rows in the memory
store out. The records are linked by a first cycle (``World.linked_lead``); each test then hands
the applier what the feeds would (``Pending`` items, a Dataverse page, deletions) and reads the
outcome from the fakes, the store and the cycle's ``Tally``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from sync_core.core.models import Direction, EntityType, RecordFailure
from sync_core.cycle.apply import Applier
from sync_core.cycle.ledger import OpenFailures, Pending, Tally, person_key
from sync_core.settings import DynamicsDeletePolicy
from sync_core.state._keys import dataverse_link_key
from tests.unit.conftest import CONTACT, LEAD, World


def applier_for(
    world: World, policy: DynamicsDeletePolicy = DynamicsDeletePolicy.FLAG, *, spread_messages: bool = True
) -> Applier:
    return Applier(
        marketo=world.marketo_client,
        dataverse=world.dataverse_client,
        store=world.store,
        field_map=world.field_map,
        dynamics_delete_policy=policy,
        run_id="unit-run",
        now=world.clock(),
        open_failures=OpenFailures(world.store),
        tally=Tally(),
        spread_messages=spread_messages,
    )


def nothing_staged(ids: Sequence[int]) -> Mapping[int, Mapping[str, Any]]:
    return {}


def linked(world: World, entity: EntityType, i: int, **values: Any) -> tuple[str, int]:
    return world.linked_lead(i, **values) if entity is LEAD else world.linked_contact(i, **values)


def pending(world: World, person: int, *, marketo: dict[str, Any] | None = None, dynamics: bool = False) -> Pending:
    """What the feeds bring for a linked person: ``marketo`` edits made in Marketo (as the change feed
    hands them over), and the Dataverse row when ``dynamics`` (as its delta hands it over)."""
    if marketo and person in world.marketo.leads:
        world.marketo.edit(person, **marketo)
    link = world.link_of(person)
    assert link is not None
    row = world.dataverse.row(f"{link.entity.value}s", link.dataverse_id) if dynamics else None
    return Pending(link, marketo=marketo, dynamics=row)


# -- the merge, per record (B1, B2, B5) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entity", "marketo_title", "dynamics_title", "expected", "collisions"),
    [
        (LEAD, "M", None, "M", 0),
        (LEAD, None, "D", "D", 0),
        (LEAD, "M", "D", "M", 1),
        (CONTACT, "M", "D", "D", 1),
        (CONTACT, "Agreed", "Agreed", "Agreed", 0),
    ],
    ids=["marketo-only", "dynamics-only", "lead-collision", "contact-collision", "both-at-baseline"],
)
def test_sync_linked_merges_each_side_against_the_baseline(
    world: World,
    entity: EntityType,
    marketo_title: str | None,
    dynamics_title: str | None,
    expected: str,
    collisions: int,
) -> None:
    record, person = linked(world, entity, 1, jobtitle="Agreed")
    entity_set = f"{entity.value}s"
    if dynamics_title is not None:
        world.dataverse.update(entity_set, record, jobtitle=dynamics_title)
    applier = applier_for(world)
    marketo = {"title": marketo_title} if marketo_title is not None else None
    applier.sync_linked([pending(world, person, marketo=marketo, dynamics=dynamics_title is not None)])
    assert world.marketo.person(person)["title"] == expected
    assert world.dataverse.rows[entity_set][record]["jobtitle"] == expected
    assert world.link_of(person).baseline["title"] == expected  # type: ignore[union-attr]
    assert applier.tally.collisions == collisions
    changed = expected != "Agreed"
    assert applier.tally.written_dynamics == int(changed and expected != dynamics_title)
    assert applier.tally.written_marketo == int(changed and expected != marketo_title)


def test_a_batch_of_linked_leads_is_one_update_multiple(world: World) -> None:
    persons = [world.linked_lead(i)[1] for i in range(3)]
    before = len(world.dataverse.requests)
    applier_for(world).sync_linked([pending(world, p, marketo={"title": f"T{p}"}) for p in persons])
    sent = world.dataverse.requests[before:]
    assert [r.url.path.rsplit("/", 1)[-1] for r in sent] == ["Microsoft.Dynamics.CRM.UpdateMultiple"]
    assert sorted(row["jobtitle"] for row in world.dataverse.rows["leads"].values()) == [f"T{p}" for p in persons]


# -- B7: validation before sending --------------------------------------------------------------------------


def test_an_invalid_value_holds_back_only_its_record_and_logs_it_once(world: World) -> None:
    _, bad = world.linked_lead(1)
    good_id, good = world.linked_lead(2)
    applier = applier_for(world)
    applier.sync_linked(
        [pending(world, bad, marketo={"email": "not an address"}), pending(world, good, marketo={"title": "Fine"})]
    )
    assert world.dataverse.rows["leads"][good_id]["jobtitle"] == "Fine"
    [failure] = world.store.list_failures()
    assert (failure.key, failure.code, failure.fields) == (f"to_dynamics:m{bad}", "validation", ["email"])
    assert failure.reasons == ["emailaddress1: not a valid email address"]
    assert world.link_of(bad).baseline["email"] == "lead1@example.com"  # type: ignore[union-attr]
    assert (applier.tally.failures, applier.tally.activities, applier.tally.written_dynamics) == (1, 1, 1)
    [activity] = world.marketo.failure_activities(bad)
    assert activity["attributes"]["reason"] == "emailaddress1: not a valid email address"


def test_the_same_failure_again_is_not_logged_again(world: World) -> None:
    _, person = world.linked_lead(1)
    for _ in range(2):
        applier_for(world).sync_linked([pending(world, person, marketo={"email": "not an address"})])
    [failure] = world.store.list_failures()
    assert failure.attempts == 2
    assert len(world.marketo.failure_activities(person)) == 1


# -- B3: records found gone on write --------------------------------------------------------------------------


def test_a_person_gone_from_marketo_is_unlinked_and_not_written(world: World) -> None:
    lead_id, person = world.linked_lead(1)
    world.marketo.delete(person)
    world.dataverse.update("leads", lead_id, jobtitle="Changed in Dynamics")
    applier = applier_for(world)
    applier.sync_linked([pending(world, person, dynamics=True)])
    assert world.link_of(person) is None
    assert person not in world.marketo.leads
    assert (applier.tally.unlinked, applier.tally.written_marketo) == (1, 0)


def test_a_record_gone_from_dynamics_on_write_flags_the_person_and_unlinks(world: World) -> None:
    lead_id, person = world.linked_lead(1)
    world.dataverse.delete("leads", lead_id)
    applier = applier_for(world)
    applier.sync_linked([pending(world, person, marketo={"title": "Too late"})])
    assert world.marketo.person(person)["microsoftIsDeleted"] is True
    assert world.link_of(person) is None
    assert (applier.tally.flagged_deleted, applier.tally.unlinked) == (1, 1)


def test_a_dynamics_delete_flags_the_unlinked_person_a_failed_cycle_wrote_its_id_to(world: World) -> None:
    """A cycle matched a person (its microsoftId written) and failed before recording the link; the
    record is deleted before the next: the deletion flags that person. A person linked to another
    record is left alone, and a deletion nobody names writes nothing."""
    _, linked = world.linked_lead(2)
    lead_id = world.dynamics_lead(1)
    orphan = world.marketo.create_person(email="lead1@example.com", microsoftId=lead_id)
    world.marketo.edit(linked, microsoftId=lead_id)  # stale: its link names the other lead
    world.dataverse.delete("leads", lead_id)
    now = world.clock()
    left = person_key(Direction.TO_DYNAMICS, orphan)  # what the failed cycle left to retry
    world.store.upsert_failures(
        [
            RecordFailure(
                key=left,
                direction=Direction.TO_DYNAMICS,
                entity=LEAD,
                marketo_id=orphan,
                reasons=["a write the failed cycle could not make"],
                code="transient",
                fields=["firstName"],
                first_failed_at=now,
                last_failed_at=now,
                next_retry_at=now,
            )
        ]
    )
    applier = applier_for(world)
    applier.dynamics_page(LEAD, [], [lead_id.upper()], nothing_staged)
    assert world.marketo.person(orphan)["microsoftIsDeleted"] is True
    assert not world.marketo.person(linked).get("microsoftIsDeleted")
    assert world.link_of(linked) is not None
    assert applier.tally.flagged_deleted == 1
    assert applier.tally.unlinked == 0  # there was no link to remove
    assert world.store.get_failures([left]) == {}  # the record is gone: nothing left to retry
    applier.dynamics_page(LEAD, [], ["00000000-0000-0000-0000-000000000000"], nothing_staged)
    assert applier.tally.flagged_deleted == 1


def test_a_dynamics_delete_in_the_delta_flags_and_unlinks(world: World) -> None:
    lead_id, person = world.linked_lead(1)
    applier = applier_for(world)
    applier.dynamics_page(LEAD, [], [lead_id], nothing_staged)
    assert world.marketo.person(person)["microsoftIsDeleted"] is True
    assert world.link_of(person) is None


def test_marketo_deleted_deletes_the_linked_record_and_unlinks(world: World) -> None:
    contact_id, person = world.linked_contact(1)
    applier = applier_for(world)
    applier.marketo_deleted([person])
    assert world.dataverse.row("contacts", contact_id) is None
    assert world.link_of(person) is None
    assert (applier.tally.deleted_in_dynamics, applier.tally.written_dynamics) == (1, 1)


# -- B8: unlinked Dynamics records ------------------------------------------------------------------------------


def test_two_new_leads_with_one_email_get_one_person_and_the_other_is_a_duplicate_failure(world: World) -> None:
    first = world.dynamics_lead(1)
    second = world.dynamics_lead(2, emailaddress1="lead1@example.com")
    applier = applier_for(world)
    applier.dynamics_page(LEAD, [world.dataverse.rows["leads"][i] for i in (first, second)], [], nothing_staged)
    [person] = world.marketo.leads.values()
    assert person["microsoftId"] == first
    [failure] = world.store.list_failures()
    assert (failure.key, failure.code) == (f"to_marketo:lead:{second}", "duplicate")
    assert (applier.tally.created, applier.tally.failures) == (1, 1)


def test_a_qualified_lead_without_a_link_gets_no_person(world: World) -> None:
    lead_id = world.dynamics_lead(1, statecode=1)
    applier_for(world).dynamics_page(LEAD, [world.dataverse.rows["leads"][lead_id]], [], nothing_staged)
    assert world.marketo.leads == {}
    assert world.store.list_failures() == []


def test_marketo_deleted_does_not_count_a_record_that_was_already_gone(world: World) -> None:
    contact_id, person = world.linked_contact(1)
    world.dataverse.delete("contacts", contact_id)  # deleted in Dynamics after the delta was read
    applier = applier_for(world)
    applier.marketo_deleted([person])
    assert world.link_of(person) is None
    assert (applier.tally.deleted_in_dynamics, applier.tally.written_dynamics) == (0, 0)


def test_a_half_written_link_is_completed_not_failed_as_a_duplicate(world: World) -> None:
    """A write killed between a link's two rows (two partitions) leaves the person's row only: the
    record's next change links it again to the same person, keeping the baseline, with no failure."""
    record, person = world.linked_lead(1)
    before = world.link_of(person)
    assert before is not None
    world.store._delete_link_rows({dataverse_link_key(LEAD, record)})  # the record's row never written
    assert world.store.get_links_by_dataverse_ids(LEAD, [record]) == {}
    applier = applier_for(world)
    applier.dynamics_page(LEAD, [world.dataverse.rows["leads"][record]], [], nothing_staged)
    assert world.store.get_links_by_dataverse_ids(LEAD, [record])[record].marketo_id == person
    assert world.store.list_failures() == []
    assert list(world.marketo.leads) == [person]
    after = world.link_of(person)
    assert after is not None
    assert after.baseline == before.baseline
