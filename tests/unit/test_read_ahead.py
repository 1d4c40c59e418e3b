"""Dataverse pages read ahead (issue 17): while Marketo's change feed is read, the cycle reads the
contacts' first delta page and looks its rows' links up; while the contacts' last page is applied,
the leads' first. What must hold: each read ahead happens while the other work runs; it costs no
API call; a record found unlinked and linked meanwhile (by the webhook, outside the cycle's
lease) is taken as linked; a link the contacts page moved (a qualification) is read again for the
leads page, not taken as the read ahead found it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import httpx
import pytest

from sync_core.core.errors import TransientError
from sync_core.core.models import EntityType, Link
from sync_core.cycle import engine as engine_module
from sync_core.cycle.ledger import Batch, Ledger
from sync_core.dataverse.client import DeltaPage
from tests.unit.conftest import World, make_world, no_head_start
from tests.unit.test_applier import applier_for

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


# -- the next table's first page, read while the table before's last page is applied ----------------


def writes_wait_for_look_up(
    monkeypatch: pytest.MonkeyPatch, world: World, record: str, waits: Callable[[Link], bool]
) -> list[bool]:
    """Make the link writes ``waits`` picks wait until ``record``'s link was looked up; returns, per
    such write, whether the look-up happened while it waited."""
    looked_up = threading.Event()
    look_up, upsert = world.store.get_links_by_dataverse_ids, world.store.upsert_links
    during: list[bool] = []

    def watched(entity: EntityType, ids: Iterable[str]) -> dict[str, Link]:
        ids = list(ids)
        found = look_up(entity, ids)
        if record in ids:
            looked_up.set()
        return found

    def waiting(links: Sequence[Link], **kwargs: Any) -> None:
        if any(waits(link) for link in links):
            during.append(looked_up.wait(WAIT))
        upsert(links, **kwargs)

    monkeypatch.setattr(world.store, "get_links_by_dataverse_ids", watched)
    monkeypatch.setattr(world.store, "upsert_links", waiting)
    return during


def contact_links_wait_for_lead_look_up(monkeypatch: pytest.MonkeyPatch, world: World, lead: str) -> list[bool]:
    """Make the contacts page's link writes wait until the lead's link was looked up."""
    return writes_wait_for_look_up(monkeypatch, world, lead, lambda link: link.entity is CONTACT)


def test_the_leads_first_page_is_looked_up_while_the_contacts_page_is_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world()
    lead, lead_person = world.linked_lead(2)
    contact, person = edited_on_both_sides(world)
    world.dataverse.update("leads", lead, jobtitle="Lead title from Dynamics")
    during = contact_links_wait_for_lead_look_up(monkeypatch, world, lead)

    report = world.cycle()

    assert during == [True]
    assert report.outcome == "ok"
    assert world.marketo.person(person)["title"] == "Title from Dynamics"
    assert world.dataverse.rows["contacts"][contact]["telephone1"] == "+1 555 0100"
    assert world.marketo.person(lead_person)["title"] == "Lead title from Dynamics"


def test_a_link_the_contacts_page_moved_is_read_again_for_the_leads_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lead qualified into a contact: the contacts page moves the person's link to the contact
    after the leads' page, which holds the qualified lead, was looked up with the lead's link."""
    world = make_world()
    lead, person = world.linked_lead(3)
    contact = world.dataverse.qualify(lead)
    world.dataverse.update("leads", lead, jobtitle="Edited before qualifying")
    during = contact_links_wait_for_lead_look_up(monkeypatch, world, lead)

    report = world.cycle()

    assert during == [True]
    assert report.outcome == "ok"
    assert report.report.qualified == 1
    link = world.link_of(person)
    assert link is not None
    assert (link.entity, link.dataverse_id) == (CONTACT, contact)
    assert world.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


# -- the persons step's first links, read while the last table's last page is applied ---------------


def lead_links_wait_for_person_look_up(monkeypatch: pytest.MonkeyPatch, world: World, person: int) -> list[bool]:
    """Make the leads page's link writes wait until the person's link was looked up by Marketo id;
    returns, per such write, whether the look-up happened while it waited."""
    looked_up = threading.Event()
    look_up, upsert = world.store.get_links_by_marketo_ids, world.store.upsert_links
    during: list[bool] = []

    def watched(ids: Iterable[int]) -> dict[int, Link]:
        ids = list(ids)
        found = look_up(ids)
        if person in ids:
            looked_up.set()
        return found

    def waiting(links: Sequence[Link], **kwargs: Any) -> None:
        if any(link.entity is EntityType.LEAD for link in links):
            during.append(looked_up.wait(WAIT))
        upsert(links, **kwargs)

    monkeypatch.setattr(world.store, "get_links_by_marketo_ids", watched)
    monkeypatch.setattr(world.store, "upsert_links", waiting)
    return during


def edited_lead_and_person(world: World) -> tuple[str, int, str, int]:
    """A linked lead edited in Dynamics (leads page) and another linked lead's person edited in
    Marketo only (the persons step)."""
    lead, lead_person = world.linked_lead(2)
    other, person = world.linked_lead(3)
    world.dataverse.update("leads", lead, jobtitle="Lead title from Dynamics")
    world.marketo.edit(person, phone="+1 555 0133")
    return lead, lead_person, other, person


def test_the_persons_steps_links_are_looked_up_while_the_last_leads_page_is_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = make_world()
    _, lead_person, other, person = edited_lead_and_person(world)
    during = lead_links_wait_for_person_look_up(monkeypatch, world, person)

    report = world.cycle()

    assert during[0]  # the leads page's write (then the persons step's own)
    assert report.outcome == "ok"
    assert world.marketo.person(lead_person)["title"] == "Lead title from Dynamics"
    assert world.dataverse.rows["leads"][other]["telephone1"] == "+1 555 0133"


def test_reading_the_persons_ahead_costs_no_call_and_writes_what_reading_in_turn_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ahead, in_turn = make_world(), make_world()
    records = {id(w): edited_lead_and_person(w) for w in (ahead, in_turn)}

    first = ahead.cycle()
    monkeypatch.setattr(engine_module._Cycle, "_read_persons_ahead", lambda self, stage: None)
    second = in_turn.cycle()

    assert first.outcome == second.outcome == "ok"
    assert first.report.api_calls == second.report.api_calls
    assert first.report.written == second.report.written
    for w in (ahead, in_turn):
        _, _, other, _ = records[id(w)]
        assert w.dataverse.rows["leads"][other]["telephone1"] == "+1 555 0133"


def test_a_persons_link_the_leads_page_removed_after_the_read_ahead_is_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The person's lead is deleted in Dynamics and the person edited in Marketo: the read ahead
    (made to finish first) finds the link, the leads page then unlinks it; the persons step must
    not write the person's change to the deleted lead."""
    world = make_world()
    lead, person = world.linked_lead(4)
    world.dataverse.delete("leads", lead)
    world.marketo.edit(person, phone="+1 555 0144")
    read_ahead = engine_module._Cycle._read_persons_ahead
    found_ahead: list[bool] = []

    def read_first(self: Any, stage: Any) -> None:
        read_ahead(self, stage)
        found_ahead.append(person in self._persons_ahead.read.result())  # the link, before the page

    monkeypatch.setattr(engine_module._Cycle, "_read_persons_ahead", read_first)

    report = world.cycle()

    assert found_ahead == [True]
    assert report.outcome == "ok"
    assert world.link_of(person) is None
    assert world.marketo.person(person)["microsoftIsDeleted"] is True
    assert "dataverse.updatemultiple" not in report.report.api_calls.by_operation  # nothing sent to the lead
    assert report.report.written.dynamics == 0


def flush_waits_for_a_send(
    monkeypatch: pytest.MonkeyPatch, recorded: Callable[[], bool]
) -> tuple[Callable[[], None], list[tuple[str, bool]]]:
    """Make the held records' write wait until a write is sent: the returned ``sending``, called
    by the write, notes whether ``recorded()`` held when it was sent and while it was in flight
    (into the returned list)."""
    sent = threading.Event()
    seen: list[tuple[str, bool]] = []

    def sending() -> None:
        seen.append(("at send", recorded()))
        sent.set()
        deadline = time.monotonic() + WAIT
        while not recorded() and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(("in flight", recorded()))

    flush = Ledger.flush

    def flush_once_sent(self: Ledger) -> None:
        if self._held:  # the held record: not before the write is in flight
            sent.wait(WAIT)
        flush(self)

    monkeypatch.setattr(Ledger, "flush", flush_once_sent)
    return sending, seen


def test_the_last_leads_page_is_recorded_while_the_persons_steps_messages_are_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The leads page's record (its baselines) is held until the persons step's first batch is sent,
    then written while that batch's bulk message is in flight; its delta link moves after it."""
    world = make_world()
    _, lead_person, other, _ = edited_lead_and_person(world)
    update_multiple = world.dataverse._update_multiple

    def page_recorded() -> bool:
        link = world.link_of(lead_person)
        return link is not None and link.baseline.get("title") == "Lead title from Dynamics"

    sending, seen = flush_waits_for_a_send(monkeypatch, page_recorded)

    def waits_for_the_page(entity_set: str, targets: list[dict[str, Any]]) -> httpx.Response:
        sending()
        return update_multiple(entity_set, targets)

    monkeypatch.setattr(world.dataverse, "_update_multiple", waits_for_the_page)
    report = world.cycle()

    assert seen == [("at send", False), ("in flight", True)]
    assert report.outcome == "ok"
    assert world.marketo.person(lead_person)["title"] == "Lead title from Dynamics"
    assert world.dataverse.rows["leads"][other]["telephone1"] == "+1 555 0133"
    assert world.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def test_a_persons_step_failing_before_its_first_batch_writes_the_held_page_record_and_moves_no_cursor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The persons step's look-up fails before its first batch is sent, the leads page applied with
    its record held: the page's record is written all the same (its Marketo writes went through),
    the leads' delta link and the Marketo token stay where they were (the held link with them), and
    the next cycle writes nothing twice."""
    world = make_world()
    _, lead_person, other, _ = edited_lead_and_person(world)
    leads_cursor = world.store.get_cursor(engine_module.dataverse_cursor(EntityType.LEAD))
    changes_cursor = world.store.get_cursor(engine_module.MARKETO_CHANGES)
    look_up = world.store.get_links_by_marketo_ids

    def failing(ids: Iterable[int]) -> dict[int, Link]:
        raise TransientError("Table Storage did not answer", service="tables")

    no_head_start(monkeypatch)  # the persons step's look-up, not the head start's
    monkeypatch.setattr(world.store, "get_links_by_marketo_ids", failing)
    failed = world.cycle()
    monkeypatch.setattr(world.store, "get_links_by_marketo_ids", look_up)

    assert failed.outcome == "transient"
    assert failed.report.written.model_dump() == {"marketo": 1, "dynamics": 0}  # the leads page's write
    link = world.link_of(lead_person)
    assert link is not None
    assert link.baseline.get("title") == "Lead title from Dynamics"  # its record was written
    assert world.store.get_cursor(engine_module.dataverse_cursor(EntityType.LEAD)) == leads_cursor
    assert world.store.get_cursor(engine_module.MARKETO_CHANGES) == changes_cursor

    repeat = world.cycle()
    assert repeat.outcome == "ok"
    assert repeat.report.written.model_dump() == {"marketo": 0, "dynamics": 1}  # only the person's write
    assert world.dataverse.rows["leads"][other]["telephone1"] == "+1 555 0133"


# -- each next page of a table, read while the page before is applied ------------------------------------


def one_row_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every delta read answers a row (or a deletion) a page, as a paged service would; the last page
    carries the delta link."""
    delta = engine_module._Cycle._delta

    def paged(self: Any, entity: EntityType, delta_link: str | None, select: Sequence[str]) -> Iterator[DeltaPage]:
        for page in delta(self, entity, delta_link, select):
            parts = [DeltaPage([row], []) for row in page.rows] + [DeltaPage([], [i]) for i in page.deleted_ids]
            if not parts:
                yield page
                continue
            *rest, last = parts
            yield from rest
            yield DeltaPage(last.rows, last.deleted_ids, page.delta_link)

    monkeypatch.setattr(engine_module._Cycle, "_delta", paged)


def two_contacts_edited(world: World) -> list[tuple[str, int]]:
    """Two linked contacts edited in Dynamics, in this order (the delta's, a page each)."""
    pairs = [world.linked_contact(i) for i in (1, 2)]
    for i, (contact, _) in enumerate(pairs, 1):
        world.dataverse.update("contacts", contact, jobtitle=f"Dynamics title {i}")
    return pairs


def test_a_tables_next_page_is_read_and_looked_up_while_the_page_before_is_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = make_world()
    (first, _), (second, _) = pairs = two_contacts_edited(world)
    one_row_pages(monkeypatch)
    during = writes_wait_for_look_up(monkeypatch, world, second, lambda link: link.dataverse_id == first)

    report = world.cycle()

    assert during == [True]
    assert report.outcome == "ok"
    assert [world.marketo.person(person)["title"] for _, person in pairs] == ["Dynamics title 1", "Dynamics title 2"]


def test_reading_each_page_ahead_costs_no_call_and_writes_what_reading_in_turn_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pages of one row, read ahead or each when its turn comes: the same calls and writes, a link
    the page before moved (a qualification) read again, a new record linked once."""
    one_row_pages(monkeypatch)
    worlds = ahead, in_turn = make_world(), make_world()
    qualified: dict[int, int] = {}
    for w in worlds:
        two_contacts_edited(w)
        lead, qualified[id(w)] = w.linked_lead(3)
        w.dataverse.qualify(lead)  # a contacts page moves the person's link to the new contact
        w.dataverse.update("leads", lead, jobtitle="Edited before qualifying")
        w.dynamics_contact(7, jobtitle="A new contact")

    first = ahead.cycle()
    read_page = engine_module._Cycle._read_page

    def in_its_turn(self: Any, *args: Any) -> Any:
        read = read_page(self, *args)
        read.read.result()  # done before the cycle goes on
        return read

    monkeypatch.setattr(engine_module._Cycle, "_read_page", in_its_turn)
    second = in_turn.cycle()

    assert first.outcome == second.outcome == "ok"
    assert first.report.api_calls == second.report.api_calls
    assert first.report.written == second.report.written
    assert first.report.qualified == second.report.qualified == 1
    for w in worlds:
        link = w.link_of(qualified[id(w)])
        assert link is not None
        assert link.entity is CONTACT
        assert [p["title"] for p in w.marketo.find("email", "contact7@example.com")] == ["A new contact"]
        assert w.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def test_a_page_is_recorded_while_the_next_pages_writes_are_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's record (its baselines) is held until the next page's writes are sent, then written
    while they are in flight; the table's delta link moves after both."""
    world = make_world()
    (first, first_person), (_, second_person) = two_contacts_edited(world)
    one_row_pages(monkeypatch)
    sync_leads = world.marketo_client.sync_leads

    def first_recorded() -> bool:
        link = world.link_of(first_person)
        return link is not None and link.baseline.get("title") == "Dynamics title 1"

    sending, seen = flush_waits_for_a_send(monkeypatch, first_recorded)

    def waits_for_the_page(leads: Sequence[dict[str, Any]], **kwargs: Any) -> Any:
        if any(lead.get("id") == second_person for lead in leads):  # the second page's write
            sending()
        return sync_leads(leads, **kwargs)

    monkeypatch.setattr(world.marketo_client, "sync_leads", waits_for_the_page)
    cursor = engine_module.dataverse_cursor(CONTACT)
    before = world.store.get_cursor(cursor)

    report = world.cycle()

    assert seen == [("at send", False), ("in flight", True)]
    assert report.outcome == "ok"
    assert world.store.get_cursor(cursor) != before
    assert world.marketo.person(second_person)["title"] == "Dynamics title 2"
    assert world.link_of(first_person) is not None
    assert world.dataverse.rows["contacts"][first]["jobtitle"] == "Dynamics title 1"
    assert world.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def test_a_look_up_started_while_records_are_held_reads_their_links_again() -> None:
    """Links of a batch held when a watch starts are written after it: the watch counts them as
    touched, as it does those recorded while it is on."""
    world = make_world()
    ledger = applier_for(world).ledger
    held = Link(marketo_id=1, entity=CONTACT, dataverse_id="C-HELD")
    later = Link(marketo_id=2, entity=CONTACT, dataverse_id="C-LATER")
    ledger.hold()
    ledger.record(Batch(links=[held]))
    watch = ledger.watch_links()
    ledger.record(Batch(links=[later]))
    other = Link(marketo_id=3, entity=CONTACT, dataverse_id="C-OTHER")
    assert [watch.touched(link) for link in (held, later, other)] == [True, True, False]
    ledger.flush()
    assert world.link_of(1) == held
