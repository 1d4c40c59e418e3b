"""The persons step as a pipeline (issue 17, ``LinkedWrites``): a batch's writes are in flight while
the next persons are looked up and merged and the batch before is recorded. What must hold: the
cycle writes what it wrote batch by batch (the same values, baselines and calls); a failure while
a batch is in flight still records that batch, moves no cursor and sends nothing more; a batch
whose writes failed is not recorded (but for the records of its messages that were answered) and
no later batch is sent; a batch's records are recorded as their messages are answered, while its
other messages are in flight; the next cycle writes nothing twice; a batch queued behind those in
flight (``add(wait=False)``) goes as soon as they end, without its caller, and not at all when one
of them failed.

The worlds use a Dataverse batch size of 2 (one bulk message in flight: the fake gives no dop
hint), so a handful of persons makes several batches."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import httpx
import pytest

from sync_core.core.errors import TransientError
from sync_core.core.models import EntityType, Link
from sync_core.cycle import engine as engine_module
from sync_core.cycle.apply import LinkedWrites
from sync_core.cycle.engine import MARKETO_CHANGES, CycleOptions
from sync_core.cycle.ledger import Pending
from sync_core.dataverse.client import DataverseClient
from tests.unit.conftest import World, make_world, no_early_writes, no_head_start
from tests.unit.test_applier import applier_for

BATCH = 2


@pytest.fixture(autouse=True)
def _persons_step_after_the_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batches these tests name are the persons step's (and the head start's between pages),
    made once the change feed is read: not those written while it is read."""
    no_early_writes(monkeypatch)


class OneAtATime(LinkedWrites):
    """The persons step without the overlap: each batch written and recorded before the next."""

    def add(self, items: Sequence[Pending], *, spread: bool = True, wait: bool = True) -> None:
        self._applier.sync_linked(items)


def persons_edited_in_marketo(world: World, leads: int, contacts: int) -> list[int]:
    """Linked leads and contacts whose persons are then edited in Marketo only: the persons step's work."""
    persons = [world.linked_lead(i)[1] for i in range(leads)]
    persons += [world.linked_contact(100 + i)[1] for i in range(contacts)]
    for n, person in enumerate(persons):
        world.marketo.edit(person, title=f"Title {n}")
    return persons


def titles(world: World) -> list[tuple[str, str | None]]:
    return sorted(
        (name, row.get("jobtitle")) for name in ("leads", "contacts") for row in world.dataverse.rows[name].values()
    )


def baselines(world: World, persons: Iterable[int]) -> list[Any]:
    links = world.store.get_links_by_marketo_ids(persons)
    return [(link.entity.value, sorted(link.baseline.items())) for link in links.values()]


def bulk_calls(world: World) -> list[str]:
    """The UpdateMultiple calls, by entity set."""
    return [r.url.path.split("/")[-2] for r in world.dataverse.requests if r.url.path.endswith("UpdateMultiple")]


def unavailable_when(
    world: World, refuse: Callable[[str, list[dict[str, Any]]], bool], monkeypatch: pytest.MonkeyPatch
) -> Callable[[str, list[dict[str, Any]]], httpx.Response]:
    """Make the simulator answer 503 to the UpdateMultiple messages ``refuse`` picks (entity set,
    targets); returns the real sender, to put back."""
    update_multiple = world.dataverse._update_multiple

    def outage(entity_set: str, targets: list[dict[str, Any]]) -> httpx.Response:
        if refuse(entity_set, targets):
            return httpx.Response(503, json={"error": {"code": "0x80040216", "message": "unavailable"}})
        return update_multiple(entity_set, targets)

    monkeypatch.setattr(world.dataverse, "_update_multiple", outage)
    return update_multiple


def test_the_pipelined_persons_step_writes_what_batch_by_batch_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    pipelined, serial = (make_world(options=CycleOptions(dataverse_batch_size=BATCH)) for _ in range(2))
    persons = {id(w): persons_edited_in_marketo(w, leads=7, contacts=5) for w in (pipelined, serial)}
    for w in (pipelined, serial):
        w.dataverse.requests.clear()

    no_head_start(monkeypatch)  # the persons step alone (the head start's batches depend on timing)
    first = pipelined.cycle()
    monkeypatch.setattr(engine_module, "LinkedWrites", OneAtATime)
    second = serial.cycle()

    assert first.outcome == second.outcome == "ok"
    assert first.report.written == second.report.written
    assert first.report.written.dynamics == 12
    assert first.report.api_calls == second.report.api_calls
    assert titles(pipelined) == titles(serial)
    assert baselines(pipelined, persons[id(pipelined)]) == baselines(serial, persons[id(serial)])
    # The same bulk messages, and several batches (the pipeline had something to overlap).
    assert sorted(bulk_calls(pipelined)) == sorted(bulk_calls(serial))
    assert len(bulk_calls(pipelined)) >= 5
    assert pipelined.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def test_a_failed_look_up_records_the_batch_in_flight_and_moves_no_cursor(monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(options=CycleOptions(dataverse_batch_size=BATCH))
    persons = persons_edited_in_marketo(world, leads=6, contacts=0)
    cursor = world.store.get_cursor(MARKETO_CHANGES)
    look_up = world.store.get_links_by_marketo_ids
    second_chunk = set(persons[BATCH : 2 * BATCH])

    def failing(ids: Iterable[int]) -> dict[int, Link]:
        ids = list(ids)
        if second_chunk & set(ids):  # the second chunk (read ahead or not): the first batch is in flight
            raise TransientError("Table Storage did not answer", service="tables")
        return look_up(ids)

    monkeypatch.setattr(world.store, "get_links_by_marketo_ids", failing)
    failed = world.cycle()
    monkeypatch.setattr(world.store, "get_links_by_marketo_ids", look_up)

    assert failed.outcome == "transient"
    assert world.store.get_cursor(MARKETO_CHANGES) == cursor  # nothing committed past the work
    written = {row_id for _, _, row_id in world.dataverse.api_writes}
    links = world.store.get_links_by_marketo_ids(persons)
    # The batch in flight was written and recorded (its baselines hold the new titles); no other was sent.
    first = [links[p] for p in persons[:BATCH]]
    assert {link.dataverse_id for link in first} == written
    assert [link.baseline.get("title") for link in first] == ["Title 0", "Title 1"]
    assert all(links[p].baseline.get("title") is None for p in persons[BATCH:])

    writes_before = len(world.dataverse.api_writes)
    repeat = world.cycle()
    assert repeat.outcome == "ok"
    assert repeat.report.written.dynamics == len(persons) - BATCH  # the first batch is not written twice
    assert len(world.dataverse.api_writes) == writes_before + len(persons) - BATCH
    assert titles(world) == sorted(("leads", f"Title {n}") for n in range(len(persons)))


def test_a_batch_whose_writes_failed_is_not_recorded_and_stops_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(options=CycleOptions(dataverse_batch_size=BATCH))
    persons = persons_edited_in_marketo(world, leads=6, contacts=0)
    cursor = world.store.get_cursor(MARKETO_CHANGES)
    refused = world.store.get_links_by_marketo_ids([persons[BATCH]])[persons[BATCH]].dataverse_id
    update_multiple = unavailable_when(  # the second batch
        world, lambda _, targets: any(target.get("leadid") == refused for target in targets), monkeypatch
    )
    failed = world.cycle()
    monkeypatch.setattr(world.dataverse, "_update_multiple", update_multiple)

    assert failed.outcome == "transient"
    assert world.store.get_cursor(MARKETO_CHANGES) == cursor
    links = world.store.get_links_by_marketo_ids(persons)
    assert [links[p].baseline.get("title") for p in persons[:BATCH]] == ["Title 0", "Title 1"]  # recorded
    assert all(links[p].baseline.get("title") is None for p in persons[BATCH:])  # not recorded
    sent = [r for r in world.dataverse.requests if r.url.path.endswith("UpdateMultiple")]
    assert refused not in {row_id for _, _, row_id in world.dataverse.api_writes}
    third = {links[p].dataverse_id for p in persons[2 * BATCH :]}
    assert not any(row_id in third for _, _, row_id in world.dataverse.api_writes)  # nothing sent after it
    assert sent  # the first batch went

    assert world.cycle().outcome == "ok"
    assert titles(world) == sorted(("leads", f"Title {n}") for n in range(len(persons)))
    assert all(link.entity is EntityType.LEAD for link in world.store.get_links_by_marketo_ids(persons).values())


def test_a_batchs_records_are_recorded_as_their_messages_are_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    """One batch of two bulk messages (a lead and a contact): the record of the first message answered
    is recorded while the second is in flight, not after it."""
    world = make_world(options=CycleOptions(dataverse_batch_size=BATCH))
    persons = persons_edited_in_marketo(world, leads=1, contacts=1)
    update_multiple = world.dataverse._update_multiple
    sent: list[str] = []
    seen_recorded: list[list[str | None]] = []

    def second_waits(entity_set: str, targets: list[dict[str, Any]]) -> httpx.Response:
        sent.append(entity_set)
        if len(sent) == 2:  # the first message was answered: its record is recorded meanwhile
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                found = [link.baseline.get("title") for link in world.store.get_links_by_marketo_ids(persons).values()]
                if any(found):
                    break
                time.sleep(0.01)
            seen_recorded.append(sorted(found, key=str))
        return update_multiple(entity_set, targets)

    monkeypatch.setattr(world.dataverse, "_update_multiple", second_waits)
    report = world.cycle()

    assert report.outcome == "ok"
    assert sorted(sent) == ["contacts", "leads"]  # one batch, two messages, one after the other
    first = 0 if sent[0] == "leads" else 1  # persons[0] is the lead
    assert seen_recorded == [sorted([f"Title {first}", None], key=str)]  # only the first message's record
    links = world.store.get_links_by_marketo_ids(persons)
    assert [links[p].baseline.get("title") for p in persons] == ["Title 0", "Title 1"]
    assert world.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}


def test_a_failed_message_leaves_its_records_unrecorded_and_those_answered_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One batch of two bulk messages whose second fails: the first message's record is recorded (its
    write went through), the second's is not, no cursor moves, and the next cycle writes only it."""
    world = make_world(options=CycleOptions(dataverse_batch_size=BATCH))
    persons = persons_edited_in_marketo(world, leads=1, contacts=1)
    cursor = world.store.get_cursor(MARKETO_CHANGES)
    sent: list[str] = []

    def second_message(entity_set: str, targets: list[dict[str, Any]]) -> bool:
        sent.append(entity_set)
        return entity_set != sent[0]  # every time it is tried

    update_multiple = unavailable_when(world, second_message, monkeypatch)
    failed = world.cycle()
    monkeypatch.setattr(world.dataverse, "_update_multiple", update_multiple)

    assert failed.outcome == "transient"
    assert world.store.get_cursor(MARKETO_CHANGES) == cursor
    written, refused = (0, 1) if sent[0] == "leads" else (1, 0)  # persons[0] is the lead
    links = world.store.get_links_by_marketo_ids(persons)
    assert links[persons[written]].baseline.get("title") == f"Title {written}"  # recorded
    assert links[persons[refused]].baseline.get("title") is None  # not recorded

    repeat = world.cycle()
    assert repeat.outcome == "ok"
    assert repeat.report.written.dynamics == 1  # the answered message is not written twice
    links = world.store.get_links_by_marketo_ids(persons)
    assert [links[p].baseline.get("title") for p in persons] == ["Title 0", "Title 1"]


@pytest.mark.parametrize(("spread", "sizes"), [(True, [1, 1, 1]), (False, [1, 2])], ids=["cycle", "go-live"])
def test_an_applier_spreads_its_last_wave_of_messages_unless_told_not_to(
    monkeypatch: pytest.MonkeyPatch, spread: bool, sizes: list[int]
) -> None:
    """Three leads at a batch size of 2 on four places: the cycle's applier sends three messages of one
    (an even wave), the go-live's (``spread_messages=False``: its chunks share the places, and its plan
    counts the fewest messages) two, of two and one."""
    world = make_world(options=CycleOptions(dataverse_batch_size=BATCH))
    persons = [world.linked_lead(i)[1] for i in range(3)]
    monkeypatch.setattr(DataverseClient, "parallelism", property(lambda _: 4))
    monkeypatch.setattr(world.dataverse_client, "batch_size", BATCH)
    applier = applier_for(world, spread_messages=spread)
    links = world.store.get_links_by_marketo_ids(persons)
    world.dataverse.requests.clear()
    applier.sync_linked([Pending(links[p], marketo={"title": f"Title {n}"}) for n, p in enumerate(persons)])

    sent = [r for r in world.dataverse.requests if r.url.path.endswith("UpdateMultiple")]
    assert sorted(len(json.loads(r.content)["Targets"]) for r in sent) == sizes
    assert titles(world) == [("leads", f"Title {n}") for n in range(3)]


def held_first_message(world: World, monkeypatch: pytest.MonkeyPatch, *, fail: bool = False) -> threading.Event:
    """Hold the first UpdateMultiple message until the returned event is set (then answer it, or
    refuse it as unavailable with ``fail``); the others are answered at once."""
    release = threading.Event()
    first: list[str] = []

    def first_held(_: str, targets: list[dict[str, Any]]) -> bool:
        ids = sorted(str(target.get("leadid")) for target in targets)
        if not first:
            first.extend(ids)
        if ids != first:
            return False
        release.wait(5)
        return fail

    unavailable_when(world, first_held, monkeypatch)
    return release


def two_batches(world: World) -> tuple[list[int], list[list[Pending]]]:
    persons = [world.linked_lead(i)[1] for i in range(2 * BATCH)]
    links = world.store.get_links_by_marketo_ids(persons)
    items = [Pending(links[p], marketo={"title": f"Title {n}"}) for n, p in enumerate(persons)]
    return persons, [items[:BATCH], items[BATCH:]]


def test_a_queued_batch_goes_as_soon_as_the_one_in_flight_ends_without_its_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = make_world(options=CycleOptions(dataverse_batch_size=BATCH))
    persons, (first, second) = two_batches(world)
    release = held_first_message(world, monkeypatch)
    world.dataverse.requests.clear()
    writes = LinkedWrites(applier_for(world), messages=1)

    writes.add(first)
    writes.add(second, wait=False)  # returns at once: no room while the first message is held
    assert writes.waiting() == 1
    assert len(bulk_calls(world)) == 1

    release.set()
    deadline = time.monotonic() + 5
    while len(bulk_calls(world)) < 2 and time.monotonic() < deadline:  # nothing asks the pipeline meanwhile
        time.sleep(0.01)
    assert len(bulk_calls(world)) == 2
    assert writes.waiting() == 0
    writes.close()

    assert titles(world) == [("leads", f"Title {n}") for n in range(2 * BATCH)]
    assert [dict(baseline).get("title") for _, baseline in baselines(world, persons)] == [
        f"Title {n}" for n in range(2 * BATCH)
    ]


def test_a_batch_queued_behind_a_failed_one_is_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(options=CycleOptions(dataverse_batch_size=BATCH))
    persons, (first, second) = two_batches(world)
    release = held_first_message(world, monkeypatch, fail=True)
    writes = LinkedWrites(applier_for(world), messages=1)

    writes.add(first)
    writes.add(second, wait=False)
    assert writes.waiting() == 1
    release.set()
    with pytest.raises(TransientError) as raised:
        writes.close()

    assert "NotSent" not in type(raised.value).__name__  # the failure raised is the first batch's own
    assert world.dataverse.api_writes == []  # neither batch written: the second was never sent
    assert len(bulk_calls(world)) >= 1
    assert all(row.get("jobtitle") is None for row in world.dataverse.rows["leads"].values())
    assert all(not dict(baseline).get("title") for _, baseline in baselines(world, persons))
