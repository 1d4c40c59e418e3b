"""The carry of a cut cycle (``sync_core.cycle.carry``): persons by id and changed field names, and
the tables' resume points, in cursor rows of the state store; on the memory store and on Azurite."""

from __future__ import annotations

import pytest

from sync_core.core.models import Cursor
from sync_core.cycle import carry
from sync_core.cycle.lease import LeaseLost
from sync_core.state import MemoryStateStore, StateStore, TableStateStore


@pytest.fixture(params=["memory", "table"])
def store(request: pytest.FixtureRequest, table_prefix: str) -> StateStore:
    if request.param == "memory":
        return MemoryStateStore()
    connection: str = request.getfixturevalue("azurite_connection_string")
    return TableStateStore.from_connection_string(connection, prefix=table_prefix)


def persons_of(store: StateStore) -> list[carry.Person]:
    return [person for part in carry.load(store).persons(store) for person in part]


def test_persons_and_resume_points_round_trip_in_parts(store: StateStore) -> None:
    persons = [(lead_id, ["title"] if lead_id % 2 else ["email", "title"]) for lead_id in range(1000, 3500)]
    resume = {"lead": carry.Resume("https://org/api/data/v9.2/leads?$deltatoken=7", 3)}
    count = carry.save(store, carry.load(store), [persons[:1200], persons[1200:]], tables=resume)
    loaded = carry.load(store)
    assert (count, loaded.count, loaded.parts) == (2500, 2500, 3)
    assert [(i, sorted(f)) for i, f in persons_of(store)] == [(i, sorted(f)) for i, f in persons]
    assert loaded.pages_done("lead", "https://org/api/data/v9.2/leads?$deltatoken=7") == 3
    assert loaded.pages_done("lead", "https://org/api/data/v9.2/leads?$deltatoken=8") == 0  # another read
    assert loaded.pages_done("contact", None) == 0


def test_a_full_part_of_the_largest_ids_and_many_fields_fits_a_table_property(store: StateStore) -> None:
    fields = [f"field{n}" for n in range(40)]
    persons = [(10**12 - 1 - 10**8 * (carry.PART_SIZE - n), fields) for n in range(carry.PART_SIZE)]
    carry.save(store, carry.load(store), [persons])
    assert persons_of(store) == persons


def test_a_new_carry_replaces_the_old_and_nothing_carried_removes_it(store: StateStore) -> None:
    carry.save(store, carry.load(store), [[(5, ["title"]), (9, ["phone"])]])
    first = carry.load(store)
    carry.save(store, first, [[(7, ["email"])]])
    second = carry.load(store)
    assert second.generation != first.generation
    assert persons_of(store) == [(7, ["email"])]
    assert store.get_cursor(f"{carry.CARRY}.{first.generation}.0") is None  # the old part is gone
    assert carry.save(store, second, []) == 0
    assert store.get_cursor(carry.CARRY) is None
    assert store.get_cursor(f"{carry.CARRY}.{second.generation}.0") is None


def test_a_carry_written_meanwhile_by_another_cycle_stops_this_one(store: StateStore) -> None:
    carry.save(store, carry.Carry(), [[(5, ["title"])]])
    mine = carry.load(store)
    carry.save(store, mine, [[(6, ["title"])]])  # another cycle, after this one lost its lease
    with pytest.raises(LeaseLost):
        carry.save(store, mine, [[(7, ["title"])]])
    assert persons_of(store) == [(6, ["title"])]


def test_an_unreadable_manifest_reads_as_nothing_carried(store: StateStore) -> None:
    store.put_cursor(Cursor(name=carry.CARRY, value="{not json"))
    loaded = carry.load(store)
    assert (loaded.count, loaded.parts, list(loaded.persons(store))) == (0, 0, [])
    carry.save(store, loaded, [[(3, ["title"])]])  # and it is replaced by the next save
    assert persons_of(store) == [(3, ["title"])]
