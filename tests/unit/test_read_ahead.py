"""The first Dataverse page read ahead (issue 17): while Marketo's change feed is read, the cycle
reads the contacts' first delta page and looks its rows' links up (nothing in the cycle writes
links before that page is applied). What must hold: the read ahead happens during the feed; it
costs no API call; a record it found unlinked and that was linked meanwhile (the webhook links new
records outside the cycle's lease) is taken as linked, not linked a second time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from sync_core.core.models import EntityType, Link
from sync_core.cycle import engine as engine_module
from tests.unit.conftest import World, make_world

CONTACT = EntityType.CONTACT
WAIT = 10.0  # seconds the feed waits for the look-up (only a broken read ahead waits that long)


def feed_waiting_for_look_up(
    monkeypatch: pytest.MonkeyPatch, world: World, contact: str, then: Callable[[], None] = lambda: None
) -> list[bool]:
    """Make the change feed wait, before its first page, until the contact's link was looked up
    (then run ``then``); returns, per feed read, whether the look-up happened during it."""
    looked_up = threading.Event()
    look_up = world.store.get_links_by_dataverse_ids

    def watched(entity: EntityType, ids: Iterable[str]) -> dict[str, Link]:
        ids = list(ids)
        found = look_up(entity, ids)
        if entity is CONTACT and contact in ids:
            looked_up.set()
        return found

    feed = world.marketo_client.iter_lead_changes
    during: list[bool] = []

    def waiting(token: str, **kwargs: Any) -> Iterator[Any]:
        during.append(looked_up.wait(WAIT))
        then()
        yield from feed(token, **kwargs)

    monkeypatch.setattr(world.store, "get_links_by_dataverse_ids", watched)
    monkeypatch.setattr(world.marketo_client, "iter_lead_changes", waiting)
    return during


def edited_on_both_sides(world: World) -> tuple[str, int]:
    """A linked contact edited in Dynamics (its title) and in Marketo (its phone)."""
    contact, person = world.linked_contact(1)
    world.dataverse.update("contacts", contact, jobtitle="Title from Dynamics")
    world.marketo.edit(person, phone="+1 555 0100")
    return contact, person


def test_the_first_contacts_page_is_read_and_looked_up_while_the_change_feed_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = make_world()
    contact, person = edited_on_both_sides(world)
    during = feed_waiting_for_look_up(monkeypatch, world, contact)

    report = world.cycle()

    assert during == [True]
    assert report.outcome == "ok"
    assert world.marketo.person(person)["title"] == "Title from Dynamics"
    assert world.dataverse.rows["contacts"][contact]["telephone1"] == "+1 555 0100"


def test_reading_ahead_costs_no_call_and_writes_what_reading_in_turn_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    ahead, in_turn = make_world(), make_world()
    pairs = {id(w): edited_on_both_sides(w) for w in (ahead, in_turn)}
    for w in (ahead, in_turn):
        w.dynamics_contact(7, jobtitle="A new contact")  # unlinked: linked by this cycle

    first = ahead.cycle()
    monkeypatch.setattr(engine_module._Cycle, "_read_ahead", lambda self, entity: None)
    second = in_turn.cycle()

    assert first.outcome == second.outcome == "ok"
    assert first.report.api_calls == second.report.api_calls
    assert first.report.written == second.report.written
    for w in (ahead, in_turn):
        contact, person = pairs[id(w)]
        assert w.marketo.person(person)["title"] == "Title from Dynamics"
        assert w.dataverse.rows["contacts"][contact]["telephone1"] == "+1 555 0100"
        assert [p["title"] for p in w.marketo.find("email", "contact7@example.com")] == ["A new contact"]


def test_a_record_linked_after_the_read_ahead_is_taken_as_linked(monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world()
    world.linked_contact(0)
    contact = world.dynamics_contact(5, jobtitle="Webhook title")
    # The webhook's person (another email, so that no match would find it) and, once the read
    # ahead has found the contact unlinked, its link.
    person = world.marketo.create_person(email="form5@example.com", firstName="Contact5", lastName="Person5")
    persons = len(world.marketo.leads)

    def webhook_links() -> None:
        world.store.upsert_links(
            [Link(marketo_id=person, entity=CONTACT, dataverse_id=contact, updated_at=world.clock())]
        )

    during = feed_waiting_for_look_up(monkeypatch, world, contact, then=webhook_links)

    report = world.cycle()

    assert during == [True]
    assert report.outcome == "ok"
    link = world.link_of(person)
    assert link is not None
    assert link.dataverse_id == contact
    assert len(world.marketo.leads) == persons  # no second person for the contact
    assert world.marketo.person(person)["title"] == "Webhook title"
