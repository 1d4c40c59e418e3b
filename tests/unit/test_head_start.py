"""The persons step's head start (issue 17): with both tables' delta pages read whole while the
change feed is read (``cycle.preread``), the persons no page can take are written while the pages
are applied. What must hold: such a person's write is in flight before a page's writes are made;
a person a page can take (linked to a record in the delta, or to the lead a contact in it was
qualified from) is left to that page, so the collision rules hold; a delta larger than the
pre-read's limit is read on in turn, with no head start; in every case the cycle writes what it
writes without the head start, with the same calls, and the next cycle writes nothing twice.

The worlds use a Dataverse batch size of 1 (the fake gives no dop hint: one bulk message at a
time), so each person is a batch of its own and the head start has something to send; those of
the last batch (the rest of both tables, which goes early only when the head start took every
pending person but the pages' own) a batch size of 2."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from sync_core.core.models import EntityType, Link
from sync_core.cycle import engine as engine_module
from sync_core.cycle import preread
from sync_core.cycle.engine import CycleOptions
from sync_core.cycle.preread import Census
from sync_core.dataverse.client import DeltaPage
from tests.fakes.marketo import FakeMarketo
from tests.unit.conftest import World, make_world, no_early_writes, no_head_start
from tests.unit.test_oneway import _account
from tests.unit.test_partial_cycle import final_state
from tests.unit.test_read_ahead import one_row_pages

WAIT = 5.0  # seconds a page's Marketo write waits for the head start's message (only a broken one waits)


def small_batches() -> World:
    return make_world(options=CycleOptions(dataverse_batch_size=1))


def a_page_and_a_person(world: World) -> tuple[str, int, str, int]:
    """A linked contact edited in Dynamics (a contacts page, written to Marketo) and a linked lead's
    person edited in Marketo only (no page can take it)."""
    contact, contact_person = world.linked_contact(1)
    lead, person = world.linked_lead(2)
    world.dataverse.update("contacts", contact, jobtitle="Title from Dynamics")
    world.marketo.edit(person, phone="+1 555 0142")
    return contact, contact_person, lead, person


def same_work(first: Any, early: World, second: Any, late: World) -> None:
    """Two cycles of the same world, one with the head start and one without: the same outcome,
    writes, calls and final state."""
    assert first.outcome == second.outcome == "ok"
    assert first.report.written == second.report.written
    assert first.report.api_calls == second.report.api_calls
    assert final_state(early) == final_state(late)


def pages_wait_for_the_leads_message(monkeypatch: pytest.MonkeyPatch, world: World, *, messages: int = 1) -> list[bool]:
    """Make each Marketo write wait until ``messages`` leads UpdateMultiple were sent; returns, per
    write, whether they were."""
    sent = threading.Event()
    leads: list[str] = []
    update_multiple = world.dataverse._update_multiple

    def sending(entity_set: str, targets: list[dict[str, Any]]) -> httpx.Response:
        if entity_set == "leads":
            leads.append(entity_set)
            if len(leads) >= messages:
                sent.set()
        return update_multiple(entity_set, targets)

    answer = FakeMarketo._answer
    during: list[bool] = []

    def writing(self: FakeMarketo, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/leads.json") and request.method == "POST":
            during.append(sent.wait(WAIT))
        return answer(self, request)

    monkeypatch.setattr(world.dataverse, "_update_multiple", sending)
    monkeypatch.setattr(FakeMarketo, "_answer", writing)
    return during


def test_a_person_no_page_can_take_is_written_while_the_pages_are_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    world = small_batches()
    _, contact_person, lead, _ = a_page_and_a_person(world)
    during = pages_wait_for_the_leads_message(monkeypatch, world)

    report = world.cycle()

    assert during == [True]  # the contacts page's write to Marketo: the person's message was sent before
    assert report.outcome == "ok"
    assert world.marketo.person(contact_person)["title"] == "Title from Dynamics"
    assert world.dataverse.rows["leads"][lead]["telephone1"] == "+1 555 0142"
    assert world.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def test_without_the_head_start_the_person_waits_for_the_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: the persons step alone sends the person's message after the page."""
    world = small_batches()
    a_page_and_a_person(world)
    no_head_start(monkeypatch)
    monkeypatch.setattr("tests.unit.test_head_start.WAIT", 0.2)
    during = pages_wait_for_the_leads_message(monkeypatch, world)

    assert world.cycle().outcome == "ok"
    assert during == [False]


def a_page_and_two_persons(monkeypatch: pytest.MonkeyPatch) -> tuple[World, list[str]]:
    """A contacts page and two persons no page can take, a batch each (one bulk message in flight
    at a time), written by the head start between pages only (no early writes: the feed is one page)."""
    world = small_batches()
    no_early_writes(monkeypatch)
    other_lead, other = world.linked_lead(3)
    _, _, lead, _ = a_page_and_a_person(world)
    world.marketo.edit(other, phone="+1 555 0143")
    return world, [lead, other_lead]


def test_the_head_starts_next_batch_goes_when_the_one_before_ends_not_at_the_next_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One page: its Marketo write waits for both persons' messages. The head start's second batch
    is queued behind the first at that page, so it goes while the page is applied."""
    world, leads = a_page_and_two_persons(monkeypatch)
    during = pages_wait_for_the_leads_message(monkeypatch, world, messages=2)

    report = world.cycle()

    assert during == [True]
    assert report.outcome == "ok"
    assert [world.dataverse.rows["leads"][lead]["telephone1"] for lead in leads] == ["+1 555 0142", "+1 555 0143"]
    assert world.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def test_without_queueing_the_head_starts_next_batch_waits_for_the_next_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check above can fail: a batch added only once the one before has ended (the head start
    before it queued) leaves the second person to the persons step, after the page."""
    world, _ = a_page_and_two_persons(monkeypatch)
    add = engine_module.LinkedWrites.add

    def add_when_idle(self: engine_module.LinkedWrites, items: Any, *, spread: bool = True, wait: bool = True) -> None:
        add(self, items, spread=spread)

    monkeypatch.setattr(engine_module.LinkedWrites, "add", add_when_idle)
    monkeypatch.setattr(
        engine_module.LinkedWrites, "waiting", lambda self: int(not all(sent.done() for sent in self._in_flight))
    )
    monkeypatch.setattr("tests.unit.test_head_start.WAIT", 0.2)
    during = pages_wait_for_the_leads_message(monkeypatch, world, messages=2)

    assert world.cycle().outcome == "ok"
    assert during == [False]


def both_sides_busy(world: World) -> dict[str, Any]:
    """Persons edited in Marketo only (leads and contacts), a collision on a contact and on a lead,
    a person whose lead is qualified in this window, a deleted lead whose person was edited, and a
    new lead."""
    # The persons a page takes first: the first ids, which the head start goes through first.
    collided_lead, qualified, deleted = (world.linked_lead(i) for i in (31, 32, 33))
    collided_contact = world.linked_contact(34)
    leads = [world.linked_lead(i) for i in range(10, 14)]
    contacts = [*(world.linked_contact(i) for i in range(20, 23)), collided_contact]
    for i, (_, person) in enumerate(leads):
        world.marketo.edit(person, phone=f"+1 555 02{i:02d}")
    for i, (_, person) in enumerate(contacts[:3]):
        world.marketo.edit(person, title=f"Marketo title {i}")
    contact, person = contacts[3]
    world.marketo.edit(person, title="From Marketo")
    world.dataverse.update("contacts", contact, jobtitle="From Dynamics")  # Dynamics wins on a contact
    lead, person = collided_lead
    world.marketo.edit(person, title="Marketo wins")
    world.dataverse.update("leads", lead, jobtitle="Loses to Marketo")
    lead, person = qualified
    world.marketo.edit(person, phone="+1 555 0399")
    contact = world.dataverse.qualify(lead)
    lead, person = deleted
    world.marketo.edit(person, title="Edited, then its lead deleted")
    world.dataverse.delete("leads", lead)
    world.dynamics_lead(40)
    return {"qualified": (contact, qualified[1])}


def test_the_head_start_writes_what_the_persons_step_writes_with_the_same_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    early, late = small_batches(), small_batches()
    marks = {id(w): both_sides_busy(w) for w in (early, late)}

    first = early.cycle()
    no_head_start(monkeypatch)
    second = late.cycle()

    same_work(first, early, second, late)
    assert first.report.collisions == second.report.collisions == 2
    contact, person = marks[id(early)]["qualified"]
    assert early.link_of(person) is not None
    assert early.link_of(person).dataverse_id == contact  # type: ignore[union-attr]
    assert early.dataverse.rows["contacts"][contact]["telephone1"] == "+1 555 0399"  # the page took it
    assert early.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def test_a_delta_past_the_pre_read_limit_is_read_on_in_turn_without_a_head_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limited, whole = small_batches(), small_batches()
    for w in (limited, whole):
        contacts = [w.linked_contact(50 + i)[0] for i in range(3)]
        _, person = w.linked_lead(60)
        for i, contact in enumerate(contacts):
            w.dataverse.update("contacts", contact, jobtitle=f"Dynamics {i}")
        w.marketo.edit(person, phone="+1 555 0160")
    one_row_pages(monkeypatch)
    monkeypatch.setattr(preread, "PRE_READ_ROWS", 2)
    during = pages_wait_for_the_leads_message(monkeypatch, limited)
    monkeypatch.setattr("tests.unit.test_head_start.WAIT", 0.2)

    first = limited.cycle()
    monkeypatch.undo()
    one_row_pages(monkeypatch)
    second = whole.cycle()

    assert during == [False, False, False]  # every page before the person's message: no head start
    same_work(first, limited, second, whole)


def test_the_census_claims_the_persons_of_the_records_a_page_names() -> None:
    census = Census()
    lead_person = Link(marketo_id=1, entity=EntityType.LEAD, dataverse_id="AAAA-lead")
    qualified_from = Link(marketo_id=2, entity=EntityType.LEAD, dataverse_id="bbbb-lead")
    half_written = Link(marketo_id=3, entity=EntityType.CONTACT, dataverse_id="other-contact")
    free = Link(marketo_id=4, entity=EntityType.CONTACT, dataverse_id="free-contact")
    census.add_page(EntityType.LEAD, DeltaPage([{"leadid": "aaaa-lead"}], []))
    contact = {"contactid": "cccc-contact", "_originatingleadid_value": "BBBB-lead"}
    census.add_page(EntityType.CONTACT, DeltaPage([contact], ["dddd-gone"]))
    census.add_links({"cccc-contact": half_written})

    assert census.claims(lead_person)  # its record is in a page
    assert census.claims(qualified_from)  # a contact in a page was qualified from its lead
    assert census.claims(half_written)  # the page's look-up found it (its own link names another record)
    assert census.claims(Link(marketo_id=5, entity=EntityType.CONTACT, dataverse_id="DDDD-gone"))  # deleted
    assert not census.claims(free)


def baselines(world: World) -> list[tuple[str, list[tuple[str, str]]]]:
    """Every link's whole baseline (the Dynamics-owned values too), by the person's email."""
    email = {lead_id: str(lead.get("email")) for lead_id, lead in world.marketo.leads.items()}
    return sorted(
        (email[link.marketo_id], sorted((k, str(v)) for k, v in link.baseline.items()))
        for link in world.store.iter_links()
    )


def test_an_account_change_waits_for_the_head_starts_batches_of_its_contacts_persons(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A person the head start writes (a Marketo edit of its contact, which no page names) whose
    account changes in the same window: the account's company fields reach the person after the
    head start's batch is recorded, so its baseline holds both, and the next cycle writes nothing."""
    early, late = small_batches(), small_batches()
    for w in (early, late):
        account = _account(w)
        pairs = [w.linked_contact(70 + i, _parentcustomerid_value=account) for i in range(3)]
        for i, (_, person) in enumerate(pairs):
            w.marketo.edit(person, title=f"Marketo title {i}")
        w.dataverse.update("accounts", account, accountnumber="AC-7")

    first = early.cycle()
    no_head_start(monkeypatch)
    second = late.cycle()

    assert first.outcome == second.outcome == "ok"
    assert first.report.written == second.report.written
    # (Not the same calls: the accounts step writes the staged changes of its contacts' persons
    # itself; here the head start wrote them first, in its own batches.)
    assert final_state(early) == final_state(late)
    assert baselines(early) == baselines(late)  # the account's fields too (``final_state`` has the mapped ones)
    persons = [early.person_of(row) for row in early.dataverse.rows["contacts"]]
    assert {early.marketo.person(p)["microsoftAccountNumber"] for p in persons} == {"AC-7"}
    assert sorted(row["jobtitle"] for row in early.dataverse.rows["contacts"].values()) == [
        f"Marketo title {i}" for i in range(3)
    ]
    assert early.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def pairs_of_two() -> World:
    """Batches of two persons: one person left over is not a full batch."""
    return make_world(options=CycleOptions(dataverse_batch_size=2))


def test_the_last_batch_goes_early_when_the_head_start_took_every_pending_person(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    early, late = pairs_of_two(), pairs_of_two()
    for w in (early, late):
        a_page_and_a_person(w)
    during = pages_wait_for_the_leads_message(monkeypatch, early)

    first = early.cycle()
    monkeypatch.undo()
    no_head_start(monkeypatch)
    second = late.cycle()

    assert during == [True]  # the lead's person, a batch of one, went before the contacts page's write
    same_work(first, early, second, late)
    assert early.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def test_the_last_batch_waits_for_the_persons_step_when_a_person_was_left_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check above can fail: a person with an edit of a Dynamics-owned field is left to the
    persons step, which sends the rest with it, after the pages."""
    early, late = pairs_of_two(), pairs_of_two()
    for w in (early, late):
        _, left = w.linked_contact(3)
        a_page_and_a_person(w)
        w.marketo.edit(left, company="Edited in Marketo")
    monkeypatch.setattr("tests.unit.test_head_start.WAIT", 0.2)
    no_early_writes(monkeypatch)  # (which could send the lead's person during the feed)
    during = pages_wait_for_the_leads_message(monkeypatch, early)

    first = early.cycle()
    monkeypatch.undo()
    no_head_start(monkeypatch)
    second = late.cycle()

    assert during == [False]
    same_work(first, early, second, late)


# -- while the change feed is read (``_Cycle._write_early``) -------------------------------------


def feed_pages_wait_for_a_message(monkeypatch: pytest.MonkeyPatch, world: World) -> list[bool]:
    """Make every change-feed page after the first wait until a bulk message was sent (and the
    pre-read count as ended only once it has); returns, per later page, whether one was."""
    sent = threading.Event()
    update_multiple = world.dataverse._update_multiple

    def sending(entity_set: str, targets: list[dict[str, Any]]) -> httpx.Response:
        sent.set()
        return update_multiple(entity_set, targets)

    answer = FakeMarketo._answer
    during: list[bool] = []
    first: list[str] = []  # the paging token the feed's first page is asked with

    def paging(self: FakeMarketo, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/leadchanges.json"):
            token = request.url.params.get("nextPageToken", "")
            if not first:
                first.append(token)
            elif token != first[0]:
                during.append(sent.wait(WAIT))
        return answer(self, request)

    monkeypatch.setattr(world.dataverse, "_update_multiple", sending)
    monkeypatch.setattr(FakeMarketo, "_answer", paging)
    monkeypatch.setattr(preread.PreRead, "ended", lambda self: self._ended.wait(WAIT))
    return during


def a_person_on_two_pages(world: World) -> tuple[str, int, str, int]:
    """Two linked leads' persons edited in Marketo only (no page can take them): the first on the
    first page of the feed and again on the second, the other 299 times on the first page."""
    lead, person = world.linked_lead(1)
    other_lead, other = world.linked_lead(2)
    world.dataverse.update("contacts", world.linked_contact(3)[0], jobtitle="A page to apply")
    world.marketo.edit(person, title="First title")
    for i in range(299):
        world.marketo.edit(other, phone=f"+1 555 {i:04d}")
    world.marketo.edit(person, title="Second title")
    return lead, person, other_lead, other


def test_a_person_is_written_while_the_feed_is_read_and_again_when_a_later_page_names_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = make_world(options=CycleOptions(dataverse_batch_size=2))  # one person a message
    lead, _, other_lead, _ = a_person_on_two_pages(world)
    during = feed_pages_wait_for_a_message(monkeypatch, world)

    report = world.cycle()

    assert report.outcome == "ok"
    assert during[:1] == [True]  # the second page was asked for after the first person's message
    assert world.dataverse.rows["leads"][lead]["jobtitle"] == "Second title"
    assert world.dataverse.rows["leads"][other_lead]["telephone1"] == "+1 555 0298"
    # The first person twice (its first title, then its second: the merge against the baseline the
    # first write left), the other once.
    assert report.report.written.dynamics == 3
    assert world.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def test_without_early_writes_the_persons_wait_for_the_whole_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above can fail: without them no message goes before the feed's last page, and
    each person is written once."""
    world = make_world(options=CycleOptions(dataverse_batch_size=2))
    lead, _, _, _ = a_person_on_two_pages(world)
    no_early_writes(monkeypatch)
    monkeypatch.setattr("tests.unit.test_head_start.WAIT", 0.2)
    during = feed_pages_wait_for_a_message(monkeypatch, world)

    report = world.cycle()

    assert report.outcome == "ok"
    assert during[:1] == [False]
    assert world.dataverse.rows["leads"][lead]["jobtitle"] == "Second title"
    assert report.report.written.dynamics == 2


def next_batch_world(monkeypatch: pytest.MonkeyPatch) -> tuple[World, World, dict[str, set[int]]]:
    """Two worlds: a contacts page, a leads page, and six leads' persons edited in Marketo only; in
    the first, each bulk message takes 0.2 s (so the head start's batch is in flight at the next
    page) and the persons' link look-ups are recorded by thread; no early writes."""
    early, late = small_batches(), small_batches()
    for w in (early, late):
        contact, lead = w.linked_contact(1)[0], w.linked_lead(2)[0]
        persons = [w.linked_lead(i)[1] for i in range(10, 16)]
        w.dataverse.update("contacts", contact, jobtitle="A contacts page")
        w.dataverse.update("leads", lead, jobtitle="A leads page")
        for i, person in enumerate(persons):
            w.marketo.edit(person, phone=f"+1 555 03{i:02d}")
    no_early_writes(monkeypatch)
    update_multiple = early.dataverse._update_multiple

    def slow(entity_set: str, targets: list[dict[str, Any]]) -> httpx.Response:
        time.sleep(0.2)
        return update_multiple(entity_set, targets)

    look_up = early.store.get_links_by_marketo_ids
    asked: dict[str, set[int]] = {}

    def recorded(ids: Any) -> dict[int, Link]:
        ids = list(ids)
        asked.setdefault(threading.current_thread().name.split("_")[0], set()).update(ids)
        return look_up(ids)

    monkeypatch.setattr(early.dataverse, "_update_multiple", slow)
    monkeypatch.setattr(early.store, "get_links_by_marketo_ids", recorded)
    return early, late, asked


def test_the_next_batchs_links_are_read_ahead_while_the_head_starts_batch_is_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At a page where its batch is still in flight, the head start looks up the links of the
    persons its next batches go through (two batches' worth) on a thread, and uses them instead of
    looking them up later; the cycle writes what it writes without the head start."""
    early, late, asked = next_batch_world(monkeypatch)
    first = early.cycle()
    monkeypatch.undo()
    no_head_start(monkeypatch)
    second = late.cycle()

    ahead = asked.get("read-ahead", set())
    assert len(ahead) >= 2, asked
    assert not ahead & asked.get("MainThread", set())  # used as read, not looked up again
    same_work(first, early, second, late)


def test_without_reading_ahead_only_the_persons_steps_first_batch_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: without it, only the persons step's first batch (one person)
    is looked up ahead."""
    early, _, asked = next_batch_world(monkeypatch)
    monkeypatch.setattr(engine_module._Cycle, "_read_head_ahead", lambda self, census: None)
    assert early.cycle().outcome == "ok"
    assert len(asked.get("read-ahead", set())) == 1, asked
