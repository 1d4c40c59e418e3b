"""One contract for both state stores: every test runs on the memory store and on Azurite.

The Table runs use the session's Azurite and a fresh table prefix per test. Where a test counts
transaction sizes on the Table store it reads them off the wire (the ``$batch`` request body).
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError
from azure.core.pipeline import PipelineRequest
from azure.data.tables import EdmType, EntityProperty, TableServiceClient
from pydantic import ValidationError

from sync_core.core.errors import ApiError, LeaseHeldError, RecordError, StateConflictError, TransientError
from sync_core.core.models import (
    ActionRecord,
    CampaignMember,
    Claim,
    Collision,
    Cursor,
    Direction,
    EntityType,
    Lease,
    Link,
    RecordFailure,
    RunReport,
    StoreCounters,
)
from sync_core.core.report import CycleReport, PerSide
from sync_core.core.retention import PruneReport, Retention
from sync_core.core.syncfilter import Side
from sync_core.state import LinkMigration, MemoryStateStore, StateStore, TableStateStore
from sync_core.state import _links as _links_module
from sync_core.state._keys import (
    MAX_KEYS_PER_QUERY,
    RowOp,
    as_utc,
    dataverse_link_key,
    encode_key,
    marketo_link_key,
    newest_first_key,
)
from sync_core.state._layout import (
    LINK,
    LINK_BUCKETS,
    PRUNE_PAGE,
    PRUNE_PARTITIONS,
    LookupChoice,
    _common_prefix,
    as_int,
    link_partition,
)
from sync_core.state._links import _link_props
from sync_core.state._memory import MemoryRows
from sync_core.state._rows import RowFilter, Rows, StoredRow
from sync_core.state._store import RowStateStore
from sync_core.state._table import AzureRows

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
KINDS = ["memory", pytest.param("table", marks=pytest.mark.azurite)]


@dataclass
class Subject:
    """A store under test, plus the sizes of the transactions it sent (read off the wire on Azure)."""

    kind: str
    store: StateStore
    transaction_sizes: list[int] = field(default_factory=list)
    make_peer: Callable[[], StateStore] | None = None  # a second process on the same tables


class _SizedMemoryRows(MemoryRows):
    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self._sizes = sizes

    def transact(self, table: str, partition: str, ops: Any) -> None:
        self._sizes.append(len(ops))
        super().transact(table, partition, ops)


def _wire_counter(sizes: list[int]) -> Callable[[PipelineRequest[Any]], None]:
    def hook(request: PipelineRequest[Any]) -> None:
        http = request.http_request
        if http.url.endswith("/$batch"):
            body = http.content if isinstance(http.content, bytes) else http.body
            sizes.append(body.count(b"Content-Type: application/http"))

    return hook


@pytest.fixture(params=KINDS)
def subject(request: pytest.FixtureRequest, table_prefix: str) -> Subject:
    sizes: list[int] = []
    if request.param == "memory":
        memory = MemoryStateStore(prefix=table_prefix)
        memory._rows = _SizedMemoryRows(sizes)
        return Subject("memory", memory, sizes, make_peer=None)
    conn: str = request.getfixturevalue("azurite_connection_string")
    service = TableServiceClient.from_connection_string(conn, raw_request_hook=_wire_counter(sizes))
    return Subject(
        "table",
        TableStateStore(service, prefix=table_prefix),
        sizes,
        make_peer=lambda: TableStateStore.from_connection_string(conn, prefix=table_prefix),
    )


@pytest.fixture
def store(subject: Subject) -> StateStore:
    return subject.store


def _link(marketo_id: int, entity: EntityType = EntityType.LEAD, dataverse_id: str | None = None, **kw: Any) -> Link:
    return Link(
        marketo_id=marketo_id,
        entity=entity,
        dataverse_id=dataverse_id or f"00000000-0000-0000-0000-{marketo_id:012d}",
        baseline=kw.pop("baseline", {"email": f"p{marketo_id}@example.com", "phone": None, "score": 3}),
        **kw,
    )


def _failure(key: str, *, last: datetime, next_at: datetime, attempts: int = 1) -> RecordFailure:
    return RecordFailure(
        key=key,
        direction=Direction.TO_DYNAMICS,
        entity=EntityType.LEAD,
        marketo_id=7,
        reasons=["emailaddress1: not a valid email"],
        code="validation",
        fields=["email"],
        attempts=attempts,
        first_failed_at=last - timedelta(hours=1),
        last_failed_at=last,
        next_retry_at=next_at,
        run_id="run-1",
    )


def _collision(cid: str, at: datetime) -> Collision:
    return Collision(
        id=cid,
        at=at,
        run_id="run-1",
        marketo_id=42,
        entity=EntityType.LEAD,
        dataverse_id="00000000-0000-0000-0000-000000000042",
        field="phone",
        marketo_value="+1 555 0100",
        dynamics_value="+1 555 0199",
        baseline_value=None,
        winner="marketo",
        rule="lead: Marketo wins",
    )


# -- cursors ---------------------------------------------------------------------------------------
def test_cursor_round_trips_with_a_new_etag_on_every_write(store: StateStore) -> None:
    assert store.get_cursor("marketo") is None
    first = store.put_cursor(Cursor(name="marketo", value="token-1"))
    second = store.put_cursor(first.model_copy(update={"value": "token-2"}))
    read = store.get_cursor("marketo")
    assert read is not None
    assert (read.value, read.etag) == ("token-2", second.etag)
    assert len({first.etag, second.etag}) == 2


def test_cursor_write_with_a_stale_etag_is_refused_and_keeps_the_stored_value(subject: Subject) -> None:
    store = subject.store
    stale = store.put_cursor(Cursor(name="dataverse:contact", value="delta-1"))
    store.put_cursor(stale.model_copy(update={"value": "delta-2"}))
    with pytest.raises(StateConflictError) as err:
        store.put_cursor(stale.model_copy(update={"value": "delta-3"}))
    if subject.kind == "table":
        assert isinstance(err.value.__cause__, ResourceModifiedError)
    read = store.get_cursor("dataverse:contact")
    assert read is not None
    assert read.value == "delta-2"


def test_creating_a_cursor_that_exists_conflicts(subject: Subject) -> None:
    store = subject.store
    store.put_cursor(Cursor(name="marketo", value="mine"))
    with pytest.raises(StateConflictError) as err:
        store.put_cursor(Cursor(name="marketo", value="theirs"))
    if subject.kind == "table":
        assert isinstance(err.value.__cause__, ResourceExistsError)
    read = store.get_cursor("marketo")
    assert read is not None
    assert read.value == "mine"


def test_deleting_a_cursor_is_etag_conditional(store: StateStore) -> None:
    stale = store.put_cursor(Cursor(name="dataverse:lead", value="delta-1"))
    current = store.put_cursor(stale.model_copy(update={"value": "delta-2"}))
    with pytest.raises(StateConflictError):
        store.delete_cursor(stale)
    assert store.get_cursor("dataverse:lead") is not None
    store.delete_cursor(current)
    assert store.get_cursor("dataverse:lead") is None
    store.delete_cursor(current)  # already gone: nothing to do


@pytest.mark.parametrize(
    "name",
    ["with/slash", "back\\slash", "hash#and?query", "quote'd", "tab\tand\x7f", "ünïcode", "%2F", "x" * 600],
)
def test_cursor_names_with_characters_row_keys_forbid_are_stored_apart(store: StateStore, name: str) -> None:
    store.put_cursor(Cursor(name=name, value="mine"))
    store.put_cursor(Cursor(name=name + "!", value="other"))
    read = store.get_cursor(name)
    assert read is not None
    assert (read.name, read.value) == (name, "mine")


# -- the cycle lease -------------------------------------------------------------------------------
def test_second_owner_is_refused_while_the_lease_is_held(store: StateStore) -> None:
    lease = store.acquire_lease("cycle-a", now=NOW, duration=5 * MINUTE)
    with pytest.raises(LeaseHeldError):
        store.acquire_lease("cycle-b", now=NOW + MINUTE, duration=5 * MINUTE)
    # the holder's ETag still matches: the refused attempt changed nothing
    renewed = store.renew_lease(lease, now=NOW + 2 * MINUTE, duration=5 * MINUTE)
    assert renewed.expires_at == NOW + 7 * MINUTE
    assert renewed.etag != lease.etag


def test_expired_lease_can_be_taken_and_the_old_holder_loses_it(store: StateStore) -> None:
    old = store.acquire_lease("cycle-a", now=NOW, duration=MINUTE)
    new = store.acquire_lease("cycle-b", now=NOW + MINUTE, duration=5 * MINUTE)  # expires_at <= now
    assert new.owner == "cycle-b"
    with pytest.raises(StateConflictError):
        store.renew_lease(old, now=NOW + MINUTE, duration=MINUTE)
    with pytest.raises(StateConflictError):
        store.release_lease(old)
    with pytest.raises(LeaseHeldError):
        store.acquire_lease("cycle-c", now=NOW + 2 * MINUTE, duration=MINUTE)


def test_lease_write_with_a_stale_etag_is_refused_and_changes_nothing(store: StateStore) -> None:
    first = store.acquire_lease("cycle-a", now=NOW, duration=MINUTE)
    store.renew_lease(first, now=NOW, duration=5 * MINUTE)
    with pytest.raises(StateConflictError):
        store.renew_lease(first, now=NOW, duration=60 * MINUTE)
    with pytest.raises(LeaseHeldError):
        store.acquire_lease("cycle-b", now=NOW + 5 * MINUTE - timedelta(microseconds=1), duration=MINUTE)
    # held until NOW + 5 min as renewed, not + 60 min as the stale write asked
    assert store.acquire_lease("cycle-b", now=NOW + 5 * MINUTE, duration=MINUTE).owner == "cycle-b"


def test_a_released_lease_can_be_taken_at_once(store: StateStore) -> None:
    lease = store.acquire_lease("cycle-a", now=NOW, duration=5 * MINUTE)
    store.release_lease(lease)
    store.release_lease(lease)  # already gone: nothing to do
    assert store.acquire_lease("cycle-b", now=NOW, duration=MINUTE).owner == "cycle-b"


def test_one_of_ten_cycles_starting_together_gets_the_lease(subject: Subject) -> None:
    stores = [subject.make_peer() for _ in range(10)] if subject.make_peer else [subject.store] * 10
    results: list[Lease | Exception] = []
    barrier = threading.Barrier(10)

    def take(index: int) -> None:
        barrier.wait()
        try:
            results.append(stores[index].acquire_lease(f"cycle-{index}", now=NOW, duration=MINUTE))
        except LeaseHeldError as err:
            results.append(err)

    _run_threads(take, 10)
    assert sum(isinstance(result, Lease) for result in results) == 1
    assert sum(isinstance(result, LeaseHeldError) for result in results) == 9


def test_naive_datetimes_are_refused(store: StateStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.acquire_lease("cycle-a", now=datetime(2026, 11, 22, 12, 0), duration=MINUTE)
    with pytest.raises(ValidationError):
        Lease(owner="x", expires_at=datetime(2026, 11, 22, 12, 0))


# -- links -------------------------------------------------------------------------------------------
def test_links_are_found_by_either_id_with_their_baseline(store: StateStore) -> None:
    plus_two = timezone(timedelta(hours=2))
    links = [_link(1), _link(2, updated_at=datetime(2026, 11, 22, 14, 0, 0, 123456, tzinfo=plus_two)), _link(3)]
    links.append(_link(4, EntityType.CONTACT, baseline={"email": "ü@example.com", "nested": {"a": [1, 2.5, True]}}))
    store.upsert_links(links)

    by_marketo = store.get_links_by_marketo_ids([1, 2, 4, 99])
    assert by_marketo == {1: links[0], 2: links[1], 4: links[3]}
    assert by_marketo[2].updated_at == links[1].updated_at
    assert by_marketo[2].updated_at is not None
    assert by_marketo[2].updated_at.utcoffset() == timedelta(0)

    lead_ids = [links[0].dataverse_id, links[2].dataverse_id.upper(), "00000000-0000-0000-0000-000000000099"]
    assert store.get_links_by_dataverse_ids(EntityType.LEAD, lead_ids) == {
        lead_ids[0]: links[0],
        lead_ids[1]: links[2],
    }
    assert store.get_links_by_dataverse_ids(EntityType.LEAD, [links[3].dataverse_id]) == {}
    assert store.get_links_by_dataverse_ids(EntityType.CONTACT, [links[3].dataverse_id]) == {
        links[3].dataverse_id: links[3]
    }


def test_links_by_dataverse_id_ignore_case_and_escape_the_key(store: StateStore) -> None:
    links = [_link(1), _link(2), _link(3, EntityType.CONTACT)]
    store.upsert_links(links)
    asked = [links[0].dataverse_id.upper(), links[1].dataverse_id, links[2].dataverse_id, "nothing' or 'a' eq 'a"]
    found = store.get_links_by_dataverse_ids(EntityType.LEAD, asked)
    assert found == {asked[0]: links[0], asked[1]: links[1]}


def test_links_after_a_marketo_id_come_in_id_order(store: StateStore) -> None:
    links = [_link(marketo_id) for marketo_id in (3, 12, 100, 7, 1000)]
    store.upsert_links(links)
    assert [link.marketo_id for link in store.iter_links(after_marketo_id=7)] == [12, 100, 1000]
    assert [link.marketo_id for link in store.iter_links(after_marketo_id=-1)] == [3, 7, 12, 100, 1000]
    assert list(store.iter_links(after_marketo_id=1000)) == []


def test_a_link_remembers_which_sides_filter_keeps_it_out(store: StateStore) -> None:
    kept_out = _link(1).model_copy(update={"filtered_out": (Side.DYNAMICS, Side.MARKETO), "filter_key": "0123abcd"})
    store.upsert_links([kept_out, _link(2)])
    found = store.get_links_by_marketo_ids([1, 2])
    assert (found[1].filtered_out, found[1].filter_key) == ((Side.DYNAMICS, Side.MARKETO), "0123abcd")
    assert (found[2].filtered_out, found[2].filter_key) == ((), None)
    store.upsert_links([found[1].model_copy(update={"filtered_out": ()})])  # admitted again
    assert store.get_links_by_marketo_ids([1])[1].filtered_out == ()


def test_a_link_rewritten_without_its_optional_values_reads_back_without_them(store: StateStore) -> None:
    """Link rows are written by merge (cheaper on Azurite than a replace), so a value cleared must
    be cleared in the row, not kept from the last write."""
    full = _link(
        1,
        originating_lead_id="11111111-1111-1111-1111-111111111111",
        updated_at=datetime(2026, 11, 22, 12, 0, tzinfo=UTC),
        filtered_out=(Side.DYNAMICS,),
        filter_key="0123abcd",
    )
    store.upsert_links([full])
    assert store.get_links_by_marketo_ids([1]) == {1: full}
    bare = _link(1, baseline={"email": "p1@example.com"})
    store.upsert_links([bare])
    assert store.get_links_by_marketo_ids([1]) == {1: bare}
    assert store.get_links_by_dataverse_ids(EntityType.LEAD, [bare.dataverse_id]) == {bare.dataverse_id: bare}
    assert list(store.iter_links()) == [bare]


def test_qualified_lead_moves_the_link_to_the_contact(store: StateStore) -> None:
    lead = _link(5, EntityType.LEAD, "11111111-1111-1111-1111-111111111111")
    store.upsert_links([lead])
    contact = _link(
        5, EntityType.CONTACT, "22222222-2222-2222-2222-222222222222", originating_lead_id=lead.dataverse_id
    )
    store.upsert_links([contact], replaces=[lead])

    assert store.get_links_by_marketo_ids([5]) == {5: contact}
    assert store.get_links_by_dataverse_ids(EntityType.LEAD, [lead.dataverse_id]) == {}  # old d: row gone
    assert store.get_links_by_dataverse_ids(EntityType.CONTACT, [contact.dataverse_id]) == {
        contact.dataverse_id: contact
    }
    assert [link.marketo_id for link in store.iter_links()] == [5]


def test_merged_person_moves_the_link_to_the_surviving_marketo_id(store: StateStore) -> None:
    loser = _link(5, EntityType.CONTACT, "33333333-3333-3333-3333-333333333333")
    store.upsert_links([loser, _link(6)])
    survivor = loser.model_copy(update={"marketo_id": 9})
    store.upsert_links([survivor], replaces=[loser])
    assert store.get_links_by_marketo_ids([5, 6, 9]) == {6: _link(6), 9: survivor}
    assert store.get_links_by_dataverse_ids(EntityType.CONTACT, [loser.dataverse_id]) == {loser.dataverse_id: survivor}


def test_a_replaced_link_whose_index_row_is_already_gone_is_still_written(store: StateStore) -> None:
    lead = _link(6)
    contact = _link(6, EntityType.CONTACT)
    store.upsert_links([contact], replaces=[lead])  # the old lead's rows were never stored
    assert store.get_links_by_marketo_ids([6]) == {6: contact}


def _link_keys(links: Sequence[Link]) -> list[str]:
    return [
        key
        for link in links
        for key in (marketo_link_key(link.marketo_id), dataverse_link_key(link.entity, link.dataverse_id))
    ]


def _stored_link_rows(store: StateStore) -> list[StoredRow]:
    assert isinstance(store, RowStateStore)
    return list(store._rows.scan_rows(store.tables.links))


def test_250_links_go_in_transactions_of_at_most_100_operations(subject: Subject) -> None:
    store = subject.store
    links = [_link(marketo_id) for marketo_id in range(1, 251)]
    store.counters = StoreCounters()
    store.upsert_links(links)

    assert store.counters.operations == 500  # two rows per link
    assert store.counters.transactions == len(subject.transaction_sizes)
    assert sum(subject.transaction_sizes) == 500
    assert max(subject.transaction_sizes) <= 100
    # ≤ 100 rows reach any one partition here, so one transaction per partition written
    assert store.counters.transactions == len({link_partition(key) for key in _link_keys(links)})

    found = store.get_links_by_marketo_ids(range(1, 251))
    assert found == {link.marketo_id: link for link in links}
    by_dataverse = store.get_links_by_dataverse_ids(EntityType.LEAD, [link.dataverse_id for link in links[:30]])
    assert len(by_dataverse) == 30
    assert sorted(link.marketo_id for link in store.iter_links()) == list(range(1, 251))


def test_link_rows_spread_over_the_partitions_their_keys_hash_to(store: StateStore) -> None:
    links = [_link(marketo_id) for marketo_id in range(1, 401)]
    links += [_link(marketo_id, EntityType.CONTACT) for marketo_id in range(401, 501)]
    store.upsert_links(links)

    stored = _stored_link_rows(store)
    assert sorted(row.row for row in stored) == sorted(_link_keys(links))
    assert all(row.partition == link_partition(row.row) for row in stored)
    per_partition = Counter(row.partition for row in stored)
    assert set(per_partition) == {f"link-{bucket:02d}" for bucket in range(LINK_BUCKETS)}
    # 1,000 rows over 32 buckets: ~31 each; none holds more than twice its share
    assert max(per_partition.values()) < 2 * len(stored) / LINK_BUCKETS


def test_scratch_links_live_apart_and_no_reader_of_links_sees_them(store: StateStore) -> None:
    real = [_link(marketo_id) for marketo_id in range(1, 4)]
    store.upsert_links(real)
    scratch = store.scratch_links("probe1")
    links = [_link(marketo_id) for marketo_id in range(2, 103)]
    scratch.upsert_links(links)

    partitions = {row.partition for row in _stored_link_rows(store)}
    assert {p for p in partitions if not p.startswith("link-")} == {f"probe1-{b:02d}" for b in range(LINK_BUCKETS)}
    assert sorted(link.marketo_id for link in scratch.iter_links(after_marketo_id=50)) == list(range(51, 103))
    assert len(scratch.get_links_by_dataverse_ids(EntityType.LEAD, [link.dataverse_id for link in links])) == 101
    # the real links are untouched and every reader of them sees only them
    assert [link.marketo_id for link in store.iter_links()] == [1, 2, 3]
    assert set(store.get_links_by_marketo_ids(range(1, 103))) == {1, 2, 3}
    assert store.count_rows(cap=1000)["links"] == 3

    scratch.delete_links(links)
    assert {row.partition for row in _stored_link_rows(store)} <= {f"link-{b:02d}" for b in range(LINK_BUCKETS)}
    assert [link.marketo_id for link in store.iter_links()] == [1, 2, 3]


@pytest.mark.parametrize(("links", "cap", "filled"), [(160, 15_000, 16), (2000, 15_000, 200), (10**6, 50, 50)])
def test_link_read_growth_fills_the_scratch_space_and_leaves_nothing(
    store: StateStore, monkeypatch: pytest.MonkeyPatch, links: int, cap: int, filled: int
) -> None:
    # A tenth of the links the table will hold (at most ``GROWTH_LINKS``), two rows each, written
    # and deleted; the real links untouched.
    monkeypatch.setattr(_links_module, "GROWTH_LINKS", cap)
    real = [_link(marketo_id) for marketo_id in range(1, 4)]
    store.upsert_links(real)
    before = _stored_link_rows(store)
    store.counters = StoreCounters()

    growth = store.scratch_links("probe1").link_read_growth(links, like=real[0])

    assert store.counters.operations == 4 * filled
    assert _stored_link_rows(store) == before
    assert growth.point_s is not None
    assert growth.point_s > 0
    assert growth.filter_growth_s >= 0
    assert growth.range_growth_s >= 0
    with pytest.raises(ValueError, match="scratch_links view"):
        store.link_read_growth(links, like=real[0])


class _ClockedRows(MemoryRows):
    """Rows whose reads take a fake time: a $filter 1 ms + 1 µs a row of its table, a scan 2 ms +
    10 µs a row of its partition, a point read 0.5 ms."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def _query_pages(self, table: str, partition: str, rows: list[str]) -> Iterator[list[StoredRow]]:
        self.now += 0.001 + 1e-6 * len(self._table(table))
        return super()._query_pages(table, partition, rows)

    def _scan_pages(self, table: str, where: RowFilter, page_size: int) -> Iterator[list[StoredRow]]:
        self.now += 0.002 + 1e-5 * sum(1 for key in self._table(table) if key[0] == where.partition)
        return super()._scan_pages(table, where, page_size)

    def _get(self, table: str, partition: str, row: str) -> StoredRow | None:
        self.now += 0.0005
        return super()._get(table, partition, row)


def test_link_read_growth_is_the_difference_per_link_written(
    table_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _ClockedRows()
    store = MemoryStateStore(prefix=table_prefix)
    store._rows = rows
    monkeypatch.setattr(_links_module, "time", SimpleNamespace(perf_counter=lambda: rows.now))

    growth = store.scratch_links("probe1").link_read_growth(30_000, like=_link(1))

    # 3,000 links, 6,000 rows: a full filter of 14 keys reads 1 µs more for each row (two a link).
    assert growth.filter_growth_s == pytest.approx(2e-6 / MAX_KEYS_PER_QUERY)
    # A range read scans every partition: 10 µs a row, two rows a link.
    assert growth.range_growth_s == pytest.approx(2e-5)
    assert growth.point_s == pytest.approx(0.0005)


@pytest.mark.parametrize("name", ["link", "linkx1", "Probe", "p-1", "ab"])
def test_a_scratch_space_cannot_be_named_like_the_links(store: StateStore, name: str) -> None:
    with pytest.raises(ValueError, match="scratch name"):
        store.scratch_links(name)


def _queries(keys: Sequence[str]) -> int:
    """The ``$filter`` queries a lookup of these row keys takes: one per 14 keys of a partition."""
    per_partition = Counter(link_partition(key) for key in set(keys))
    return sum(-(-count // MAX_KEYS_PER_QUERY) for count in per_partition.values())


@pytest.mark.parametrize("k", [1, 14, 15, 300])
def test_a_lookup_costs_a_query_per_14_keys_of_a_partition_whatever_the_store_holds(store: StateStore, k: int) -> None:
    store.upsert_links([_link(marketo_id) for marketo_id in range(1, 601)])
    store.get_links_by_marketo_ids([1])  # the layout is looked up once per process
    _past_first_probe(store)
    ids = list(range(1, k + 1))

    cost = _cost(store, lambda: store.get_links_by_marketo_ids([*ids, 10_000]))
    # found or not, every id asked for is in its partition's query; one page each
    assert cost == StoreCounters(reads=_queries([marketo_link_key(i) for i in [*ids, 10_000]]))
    assert cost.reads <= min(k + 1, LINK_BUCKETS + (k + 1) // MAX_KEYS_PER_QUERY)
    dataverse_ids = [_link(marketo_id).dataverse_id for marketo_id in ids]
    cost = _cost(store, lambda: store.get_links_by_dataverse_ids(EntityType.LEAD, dataverse_ids))
    assert cost == StoreCounters(reads=_queries([dataverse_link_key(EntityType.LEAD, i) for i in dataverse_ids]))


def test_a_lookup_of_keys_with_quotes_returns_exactly_the_rows_asked_for_that_exist(store: StateStore) -> None:
    # Row keys written as they are (no link key escapes them), 40 of them in one partition (three
    # queries there), and asked for with absent keys built to widen an unescaped filter.
    assert isinstance(store, RowStateStore)
    crowded = link_partition("m:000000000001")
    stored = [key for n in range(2000) if link_partition(key := f"m:it's {n}'") == crowded][:40]
    stored += [f"d:lead:o'brien {n}' or RowKey ne '" for n in range(20)]
    for key in stored:
        store._rows.insert_row(store.tables.links, link_partition(key), key, _link_props(_link(7)))
    absent = ["m:it's 1' or RowKey ne 'x", "m:' or '1' eq '1", "d:lead:o'brien 0' or RowKey gt '", "m:it''s 3'"]
    asked = {*stored[::2], *absent}
    store.get_links_by_marketo_ids([1])  # the layout row, read once, out of the count

    found: list[StoredRow] = []
    cost = _cost(store, lambda: found.extend(store._link_rows(asked)))
    assert [row.row for row in found] == sorted(stored[::2])
    assert all(row.partition == link_partition(row.row) for row in found)
    assert cost == StoreCounters(reads=_queries(sorted(asked)))


# -- the one-partition layout (before the spread) and its migration -----------------------------------
def seed_one_partition_layout(store: StateStore, links: Sequence[Link]) -> None:
    """Links as the store wrote them before the spread: both rows in partition ``link``."""
    assert isinstance(store, RowStateStore)
    ops = [
        RowOp("upsert", key, _link_props(link))
        for link in links
        for key in (marketo_link_key(link.marketo_id), dataverse_link_key(link.entity, link.dataverse_id))
    ]
    for start in range(0, len(ops), 100):
        store._rows.transact(store.tables.links, LINK, ops[start : start + 100])


def _old_rows(store: StateStore) -> list[str]:
    return [row.row for row in _stored_link_rows(store) if row.partition == LINK]


def test_links_in_the_one_partition_layout_are_found_and_changed_until_migrated(store: StateStore) -> None:
    old = [_link(marketo_id) for marketo_id in range(1, 6)]
    seed_one_partition_layout(store, old)

    assert store.get_links_by_marketo_ids([1, 2, 9]) == {1: old[0], 2: old[1]}
    assert store.get_links_by_dataverse_ids(EntityType.LEAD, [old[2].dataverse_id.upper()]) == {
        old[2].dataverse_id.upper(): old[2]
    }
    changed = old[0].model_copy(update={"baseline": {"email": "new@example.com"}})
    contact = _link(3, EntityType.CONTACT, originating_lead_id=old[2].dataverse_id)
    store.upsert_links([changed, contact], replaces=[old[2]])  # 3 qualified: its lead row goes
    store.delete_links([old[1]])

    assert store.get_links_by_marketo_ids(range(1, 6)) == {1: changed, 3: contact, 4: old[3], 5: old[4]}
    assert store.get_links_by_dataverse_ids(EntityType.LEAD, [old[1].dataverse_id, old[2].dataverse_id]) == {}
    assert sorted((link.marketo_id, link.entity) for link in store.iter_links()) == [
        (1, EntityType.LEAD),
        (3, EntityType.CONTACT),
        (4, EntityType.LEAD),
        (5, EntityType.LEAD),
    ]
    # removed rows left both layouts; rewritten ones (1, and 3's m: row) wait for the migration
    assert sorted(_old_rows(store)) == sorted([*_link_keys([old[0], old[3], old[4]]), marketo_link_key(3)])


def test_every_link_is_listed_once_in_marketo_id_order_in_either_layout(store: StateStore) -> None:
    seed_one_partition_layout(store, [_link(marketo_id) for marketo_id in range(1, 301, 2)])  # an older deployment
    store.upsert_links([_link(marketo_id) for marketo_id in range(300, 0, -3)])
    newer = _link(5, baseline={"email": "new@example.com"})
    store.upsert_links([newer])

    listed = list(store.iter_links())
    assert [link.marketo_id for link in listed] == sorted({*range(3, 301, 3), *range(1, 301, 2)})
    assert listed[2] == newer  # 1, 3, 5: the layout 2 row wins over its old copy
    assert store.migrate_links(pages=1).done
    assert list(store.iter_links()) == listed


def test_the_migration_moves_every_link_a_page_at_a_time_and_loses_none(subject: Subject) -> None:
    store = subject.store
    old = [_link(marketo_id) for marketo_id in range(1, 601)]  # 1,200 rows: two pages
    seed_one_partition_layout(store, old)
    newer = old[0].model_copy(update={"baseline": {"email": "new@example.com"}})
    store.upsert_links([newer])

    first = store.migrate_links(pages=1)
    assert (first.moved + first.kept, first.dropped, first.done) == (1000, 0, False)
    assert store.get_links_by_marketo_ids(range(1, 601)) == {newer.marketo_id: newer} | {
        link.marketo_id: link for link in old[1:]
    }
    rest = store.migrate_links(pages=5)
    assert (first.moved + rest.moved, first.kept + rest.kept, rest.done) == (1198, 2, True)
    assert _old_rows(store) == []
    assert store.migrate_links(pages=1) == LinkMigration(done=True)  # again: nothing to do

    # another process (a fresh store on the same tables) reads layout 2 only: its queries
    peer = subject.make_peer() if subject.make_peer else store
    peer.get_links_by_marketo_ids([1])
    _past_first_probe(peer)
    assert isinstance(peer, RowStateStore)
    # In memory the peer is the store, whose first look-up timed both ways: filters kept the cheaper
    # (on a loaded machine its point reads may have timed cheaper, and the look-up gone by them).
    peer.lookups.timed(peer.tables.links, LookupChoice.POINT, 1, 1.0)
    cost = _cost(peer, lambda: peer.get_links_by_marketo_ids(range(1, 601)))
    assert cost == StoreCounters(reads=_queries([marketo_link_key(i) for i in range(1, 601)]))
    assert sorted(link.marketo_id for link in peer.iter_links()) == list(range(1, 601))
    assert peer.get_links_by_dataverse_ids(EntityType.LEAD, [old[599].dataverse_id]) == {
        old[599].dataverse_id: old[599]
    }
    assert peer.count_rows(cap=1000)["links"] == 600


class _RacingRows(MemoryRows):
    """Memory rows that run ``race`` once, just before the first transaction of inserts (the
    migration's copy): a deleter that acts between the migration's read and its copy."""

    race: Callable[[], None] | None = None

    def transact(self, table: str, partition: str, ops: Sequence[RowOp]) -> None:
        race, self.race = self.race, None
        if race is not None and ops and ops[0].kind == "insert":
            race()
        super().transact(table, partition, ops)


def test_a_link_deleted_while_its_page_is_migrated_stays_deleted() -> None:
    rows = _RacingRows()
    store, deleter = RowStateStore(rows, prefix="p"), RowStateStore(rows, prefix="p")
    old = [_link(marketo_id) for marketo_id in range(1, 41)]
    seed_one_partition_layout(store, old)
    rows.race = lambda: deleter.delete_links([old[6]])  # erased after the page was read

    step = store.migrate_links(pages=3)
    assert (step.moved, step.dropped, step.done) == (78, 2, True)
    assert 7 not in store.get_links_by_marketo_ids(range(1, 41))
    assert store.get_links_by_dataverse_ids(EntityType.LEAD, [old[6].dataverse_id]) == {}
    assert len(list(store.iter_links())) == 39


class _MovingRows(MemoryRows):
    """Memory rows that run ``move`` once, just before the first lookup in partition ``link``:
    a migration that moves a row between a reader's read of layout 2 and of layout 1."""

    move: Callable[[], None] | None = None

    def query_rows(self, table: str, partition: str, rows: Sequence[str]) -> list[StoredRow]:
        if self.move is not None and partition == LINK:
            move, self.move = self.move, None
            move()
        return super().query_rows(table, partition, rows)


def test_a_link_moved_between_a_readers_two_reads_is_still_found() -> None:
    rows = _MovingRows()
    reader, migrator = RowStateStore(rows, prefix="p"), RowStateStore(rows, prefix="p")
    old = [_link(marketo_id) for marketo_id in range(1, 4)]
    seed_one_partition_layout(reader, old)
    rows.move = lambda: migrator.migrate_links(pages=1)

    assert reader.get_links_by_marketo_ids([1, 2, 3]) == {link.marketo_id: link for link in old}
    assert _old_rows(reader) == []


def _store_with_links(rows: Rows, count: int, *, first_probe: bool = False) -> tuple[RowStateStore, list[Link]]:
    """A store over ``rows`` (8 reads side by side) holding links to persons 1 … ``count``, its layout
    looked up, and (unless ``first_probe``) past the probe of its first timed look-up of links, so
    that a look-up's reads are its own."""
    store = RowStateStore(rows, prefix="p", query_workers=8)
    links = [_link(marketo_id) for marketo_id in range(1, count + 1)]
    store.upsert_links(links)
    store.get_links_by_marketo_ids([1])
    if not first_probe:
        _past_first_probe(store)
    return store, links


def _past_first_probe(store: StateStore) -> None:
    """Spend the probe of the store's first timed look-up of links (it also reads a sample the other
    way: ``test_a_lookup_that_probes…``), so that a look-up counted after is by one way alone."""
    assert isinstance(store, RowStateStore)
    store.lookups.way(store.tables.links, LookupChoice.MIN_KEYS)


def test_a_lookup_choice_keeps_to_filters_until_point_reads_have_cost_less_a_key() -> None:
    choice = LookupChoice()
    big = LookupChoice.MIN_KEYS
    assert choice.way("links", big - 1) == (None, None)  # too small to time: filters
    ways = [choice.way("links", big) for _ in range(LookupChoice.PROBE_EVERY + 1)]
    probe = (LookupChoice.FILTER, LookupChoice.POINT)  # filters, with a sample read by point reads first
    # the first timed read probes (a new process learns at once), then every PROBE_EVERY-th
    assert ways == [probe] + [(LookupChoice.FILTER, None)] * (LookupChoice.PROBE_EVERY - 1) + [probe]
    choice.timed("links", LookupChoice.FILTER, 1000, 2.0)
    choice.timed("links", LookupChoice.POINT, 1000, 3.0)
    assert choice.way("links", big) == (LookupChoice.FILTER, None)
    choice.timed("links", LookupChoice.FILTER, 1000, 9.0)  # the partitions grew: filters now cost more
    choice.timed("links", LookupChoice.FILTER, 1000, 9.0)
    costs = choice.costs("links")
    assert costs[LookupChoice.FILTER] > costs[LookupChoice.POINT]
    ways = [choice.way("links", big) for _ in range(LookupChoice.PROBE_EVERY)]
    assert {main for main, _ in ways} == {LookupChoice.POINT}
    assert [sample for _, sample in ways if sample] == [LookupChoice.FILTER]  # filters are still sampled now and then
    assert choice.way("claims", big) == (LookupChoice.FILTER, LookupChoice.POINT)  # each table on its own: probed first
    assert choice.costs("claims") == {}


def test_a_probe_of_filters_samples_full_filters_of_the_fullest_partitions() -> None:
    few = [(partition, "1") for partition in "bcdefgh"]
    keys = sorted([("a", f"{i:03d}") for i in range(30)] + few + [("z", f"{i:03d}") for i in range(20)])
    # four full-as-can-be filters: 14 keys of a, 14 of z, then the 1 key of b and of c
    expected = sorted([("a", f"{i:03d}") for i in range(14)] + [("z", f"{i:03d}") for i in range(14)] + few[:2])
    assert LookupChoice().sample(LookupChoice.FILTER, keys) == expected
    assert LookupChoice().sample(LookupChoice.POINT, keys) == keys[: LookupChoice.SAMPLE]


@pytest.mark.parametrize("way", [LookupChoice.FILTER, LookupChoice.POINT])
def test_a_lookup_by_point_reads_finds_what_filters_find(way: str) -> None:
    rows = MemoryRows()
    store, links = _store_with_links(rows, 300)
    other = LookupChoice.POINT if way == LookupChoice.FILTER else LookupChoice.FILTER
    store.lookups.timed("plinks", way, 1, 0.001)
    store.lookups.timed("plinks", other, 1, 1.0)
    asked = [*range(300, 0, -1), 10_000, 20_000]  # two that no link has
    cost = _cost(store, lambda: store.get_links_by_marketo_ids(asked))
    assert store.get_links_by_marketo_ids(asked) == {link.marketo_id: link for link in links}
    keys = [marketo_link_key(i) for i in asked]
    assert cost.reads == (len(keys) if way == LookupChoice.POINT else _queries(keys))


def test_a_lookup_that_probes_reads_a_sample_the_other_way_and_returns_every_row_in_order() -> None:
    rows = MemoryRows()
    store, links = _store_with_links(rows, 1000, first_probe=True)
    asked = list(range(1000, 0, -1))
    # the first read probes: a sample by point reads, the rest by filters; every link found, in key order
    cost = _cost(store, lambda: store.get_links_by_marketo_ids(asked))
    keys = sorted((link_partition(marketo_link_key(i)), marketo_link_key(i)) for i in asked)
    sample = set(LookupChoice().sample(LookupChoice.POINT, keys))
    rest = [key for key in keys if key not in sample]
    assert cost.reads == len(sample) + _queries([row for _, row in rest])
    assert set(store.lookups.costs(store.tables.links)) == {LookupChoice.FILTER, LookupChoice.POINT}
    found = store.get_links_by_marketo_ids(asked)
    assert list(found.items()) == [(link.marketo_id, link) for link in links]
    by_dataverse = store.get_links_by_dataverse_ids(EntityType.LEAD, [link.dataverse_id for link in links])
    assert by_dataverse == {link.dataverse_id: link for link in links}


@pytest.mark.parametrize("ranges", ["cheaper", "dearer"])
def test_a_big_lookup_reads_whole_partitions_only_where_that_costs_less_and_finds_the_same_links(
    rows: Rows, table_prefix: str, ranges: str
) -> None:
    """A look-up of ``RANGE_MIN_KEYS`` keys or more: its first reads one partition (the median by keys
    asked) by range, to time it; the others go by range where a range has cost less than their keys
    would by the cheaper way, else key by key. Either way it finds every link asked for, no other."""
    store = RowStateStore(rows, prefix=table_prefix, query_workers=8)
    count = LookupChoice.RANGE_MIN_KEYS + 100
    links = [_link(marketo_id) for marketo_id in range(1, count + 1)]
    store.upsert_links(links)
    store.upsert_links([_link(10**7 + i, EntityType.CONTACT) for i in range(50)])  # outside the keys' prefix
    store.get_links_by_marketo_ids([1])  # its layout looked up
    _past_first_probe(store)
    table = store.tables.links
    prefix = _common_prefix(marketo_link_key(1), marketo_link_key(count))
    # keys dear and ranges cheap, or point reads cheap and ranges dear
    store.lookups.timed(table, LookupChoice.FILTER, 1, 1.0)
    store.lookups.timed(table, LookupChoice.POINT, 1, 1.0 if ranges == "cheaper" else 1e-6)
    store.lookups.timed_ranges(table, prefix, 1, 1e-6 if ranges == "cheaper" else 1000.0)
    asked = [*range(count, 0, -1), 10**6]  # one that no link has

    found: dict[int, Link] = {}
    cost = _cost(store, lambda: found.update(store.get_links_by_marketo_ids(asked)))

    assert found == {link.marketo_id: link for link in links}
    keys = [(link_partition(marketo_link_key(i)), marketo_link_key(i)) for i in asked]
    partitions = {partition for partition, _ in keys}
    if ranges == "cheaper":
        assert cost.reads == len(partitions)  # a page of each partition's range (fewer than 1,000 rows each)
    else:
        by_partition = Counter(partition for partition, _ in keys)
        probed = sorted(by_partition, key=lambda p: (by_partition[p], p))[len(by_partition) // 2]
        assert cost.reads == 1 + len(keys) - by_partition[probed]  # the probe's page, then a read a key
    assert any(way == LookupChoice.RANGE + prefix for way in store.lookups.costs(table))


class _MeetingRows(MemoryRows):
    """Memory rows whose first two reads (or transactions) wait for each other: they only return
    if sent side by side."""

    def __init__(self, *, fail_on: str | None = None) -> None:
        super().__init__()
        self._first_two = threading.Barrier(2, timeout=5)
        self._calls = itertools.count()
        self._fail_on = fail_on
        self.meet = False

    def _wait(self) -> None:
        if self.meet and next(self._calls) < 2:
            self._first_two.wait()

    def query_rows(self, table: str, partition: str, rows: Sequence[str]) -> list[StoredRow]:
        self._wait()
        if self._fail_on is not None and self._fail_on in rows:
            raise TransientError("Table Storage read: connection failed", service="tables")
        return super().query_rows(table, partition, rows)

    def transact(self, table: str, partition: str, ops: Sequence[RowOp]) -> None:
        self._wait()
        super().transact(table, partition, ops)


def test_one_lookups_reads_are_sent_side_by_side_and_answer_in_key_order() -> None:
    rows = _MeetingRows()
    store, links = _store_with_links(rows, 250)
    rows.meet, rows.counters = True, StoreCounters()
    found = store.get_links_by_marketo_ids(range(250, 0, -1))
    assert list(found.items()) == [(link.marketo_id, link) for link in links]
    assert rows.counters.reads == _queries([marketo_link_key(link.marketo_id) for link in links])  # as one at a time


def test_transactions_to_different_partitions_are_sent_side_by_side() -> None:
    rows = _MeetingRows()
    rows.meet = True
    store = RowStateStore(rows, prefix="p", query_workers=8)
    links = [_link(marketo_id) for marketo_id in range(1, 251)]
    store.upsert_links(links)  # would wait for ever (the barrier times out) if sent one by one
    assert rows.counters.transactions == len({link_partition(key) for key in _link_keys(links)})
    assert store.get_links_by_marketo_ids(range(1, 251)) == {link.marketo_id: link for link in links}


def test_a_failed_read_fails_the_whole_lookup() -> None:
    rows = _MeetingRows(fail_on="m:000000000200")
    store = RowStateStore(rows, prefix="p", query_workers=8)
    store.upsert_links([_link(marketo_id) for marketo_id in range(1, 251)])
    with pytest.raises(TransientError):
        store.get_links_by_marketo_ids(range(1, 251))


def test_ids_with_quotes_cannot_widen_a_lookup(store: StateStore) -> None:
    sly = "x' or RowKey ne 'y"
    store.upsert_links([_link(8), _link(9, dataverse_id=sly)])
    assert store.get_links_by_dataverse_ids(EntityType.LEAD, ["nothing' or 'a' eq 'a"]) == {}
    assert list(store.get_links_by_dataverse_ids(EntityType.LEAD, [sly]).values()) == [_link(9, dataverse_id=sly)]


def test_deleting_links_removes_both_rows_and_ignores_missing_ones(store: StateStore) -> None:
    kept, gone = _link(10), _link(11)
    store.upsert_links([kept, gone])
    store.delete_links([gone, _link(12)])
    assert store.get_links_by_marketo_ids([10, 11, 12]) == {10: kept}
    assert store.get_links_by_dataverse_ids(EntityType.LEAD, [gone.dataverse_id]) == {}


@pytest.mark.parametrize(
    ("links", "error", "message"),
    [
        ([_link(1, baseline={"notes": "x" * 40_000})], RecordError, "marketo id 1.*64 KiB"),
        ([_link(1), _link(2, dataverse_id=_link(1).dataverse_id)], ValueError, "two links"),
        ([_link(1), _link(1, EntityType.CONTACT)], ValueError, "two links"),
        ([_link(2), _link(-1)], ValueError, "marketo id must be"),
        ([_link(2), _link(3, baseline={"when": NOW})], ValueError, "not JSON-compatible"),
    ],
)
def test_bad_links_get_a_clear_error_and_nothing_is_written(
    store: StateStore, links: list[Link], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        store.upsert_links(links)
    assert list(store.iter_links()) == []


# -- collisions, run reports --------------------------------------------------------------------------
def test_collisions_are_listed_newest_first_across_days(store: StateStore) -> None:
    times = [NOW - timedelta(days=2), NOW, NOW - timedelta(minutes=5), NOW + timedelta(hours=13), NOW - MINUTE]
    collisions = [_collision(f"c{index}", at) for index, at in enumerate(times)]
    store.add_collisions(collisions)
    newest_first = sorted(collisions, key=lambda collision: collision.at, reverse=True)
    assert store.list_collisions() == newest_first
    assert store.list_collisions(limit=2) == newest_first[:2]


def test_run_reports_are_listed_newest_first_and_a_rewrite_replaces(store: StateStore) -> None:
    reports = [RunReport(run_id=f"run-{index}", started_at=NOW + index * MINUTE) for index in range(3)]
    for report in reports:
        store.add_run_report(report)
    finished = reports[1].model_copy(
        update={"finished_at": NOW + 2 * MINUTE, "report": CycleReport(pulled=PerSide(marketo=3))}
    )
    store.add_run_report(finished)
    assert store.list_run_reports() == [reports[2], finished, reports[0]]
    assert store.list_run_reports(limit=1) == [reports[2]]


# -- record failures ----------------------------------------------------------------------------------
def test_due_failures_come_oldest_due_first_and_resolving_deletes_them(store: StateStore) -> None:
    failures = [
        _failure("to_dynamics:lead:1", last=NOW - 3 * MINUTE, next_at=NOW - MINUTE),
        _failure("to_dynamics:lead:2", last=NOW - 2 * MINUTE, next_at=NOW + MINUTE),
        _failure("to_marketo:contact:a/b#c", last=NOW - MINUTE, next_at=NOW - 2 * MINUTE),
        _failure("to_dynamics:lead:4", last=NOW - 4 * MINUTE, next_at=NOW),
    ]
    store.upsert_failures(failures)
    assert store.due_failures(now=NOW) == [failures[2], failures[0], failures[3]]
    assert store.due_failures(now=NOW, limit=1) == [failures[2]]
    assert store.list_failures() == [failures[2], failures[1], failures[0], failures[3]]

    store.resolve_failures(["to_dynamics:lead:1", "to_marketo:contact:a/b#c", "never-failed"])
    assert store.get_failures([failure.key for failure in failures]) == {
        failures[1].key: failures[1],
        failures[3].key: failures[3],
    }


def test_upserting_a_failure_again_replaces_it(store: StateStore) -> None:
    first = _failure("to_dynamics:lead:1", last=NOW, next_at=NOW + 5 * MINUTE)
    store.upsert_failures([first])
    again = _failure("to_dynamics:lead:1", last=NOW + 5 * MINUTE, next_at=NOW + 20 * MINUTE, attempts=2)
    store.upsert_failures([again])
    assert store.list_failures() == [again]
    assert store.due_failures(now=NOW + 10 * MINUTE) == []


def _by_key(failures: Iterator[RecordFailure] | list[RecordFailure]) -> list[RecordFailure]:
    return sorted(failures, key=lambda failure: failure.key)


def test_failures_are_read_a_page_at_a_time_as_the_caller_iterates(store: StateStore) -> None:
    failures = [_failure(f"to_dynamics:lead:{n}", last=NOW - n * MINUTE, next_at=NOW) for n in range(7)]
    store.upsert_failures(failures)
    store.counters = StoreCounters()
    read = store.iter_failures(page_size=3)
    assert store.counters.reads == 0  # nothing fetched before the first failure is asked for
    first_page = list(itertools.islice(read, 3))
    assert store.counters.reads == 1
    fourth = next(read)
    assert store.counters.reads == 2
    rest = list(read)
    assert store.counters.reads == 3  # pages of 3, 3 and 1
    assert [*first_page, fourth, *rest] == failures  # in key order, all of them, each once

    store.counters = StoreCounters()
    assert _by_key(store.iter_failures()) == failures  # the default page holds them all
    assert store.counters.reads == 1


def test_pages_are_read_live_after_the_last_key_read(store: StateStore) -> None:
    failures = [_failure(f"to_dynamics:lead:{n}", last=NOW, next_at=NOW) for n in range(7)]
    store.upsert_failures(failures)
    read = store.iter_failures(page_size=3)
    assert [next(read).key for _ in range(3)] == [failure.key for failure in failures[:3]]
    added = _failure("to_dynamics:lead:9", last=NOW, next_at=NOW)
    store.resolve_failures([failures[1].key, failures[5].key])  # one already read, one ahead
    store.upsert_failures([added])
    assert list(read) == [failures[3], failures[4], failures[6], added]


def test_more_failures_than_one_service_page_are_all_read(store: StateStore) -> None:
    failures = [_failure(f"to_dynamics:lead:{n:04d}", last=NOW + n * MINUTE, next_at=NOW) for n in range(1001)]
    store.upsert_failures(failures)
    store.counters = StoreCounters()
    assert list(store.iter_failures()) == failures
    assert store.counters.reads == 2  # the service's 1000 a page, then 1
    assert store.list_failures(limit=3) == failures[:-4:-1]


@pytest.mark.parametrize("page_size", [0, 1001])
def test_a_failure_page_holds_1_to_1000(store: StateStore, page_size: int) -> None:
    with pytest.raises(ValueError, match="page_size"):
        store.iter_failures(page_size=page_size)


# -- webhook claims -----------------------------------------------------------------------------------
def test_a_claim_can_be_taken_once(store: StateStore) -> None:
    claim = store.try_claim("sync-person:42", owner="request-1", now=NOW)
    assert claim is not None
    assert store.try_claim("sync-person:42", owner="request-2", now=NOW) is None
    done = store.complete_claim(claim, {"status": "created", "dynamicsId": "abc"})
    assert store.get_claim("sync-person:42") == done
    assert done.result == {"status": "created", "dynamicsId": "abc"}
    with pytest.raises(StateConflictError):  # written since `claim` was read
        store.complete_claim(claim, {"status": "exists"})
    assert store.try_claim("sync-person:42", owner="request-3", now=NOW) is None


def test_a_released_claim_can_be_taken_again(store: StateStore) -> None:
    claim = store.try_claim("sync-person:43", owner="request-1", now=NOW)
    assert isinstance(claim, Claim)
    store.release_claim(claim)
    assert store.get_claim("sync-person:43") is None
    again = store.try_claim("sync-person:43", owner="request-2", now=NOW + MINUTE)
    assert again is not None
    assert again.owner == "request-2"
    assert again.created_at == NOW + MINUTE


def test_exactly_one_of_20_concurrent_claimers_wins(store: StateStore) -> None:
    # one store shared by 20 threads, as the webhook's worker shares it (the lease test above
    # uses a store per thread, as separate processes would)
    outcomes: list[Claim | None] = []
    barrier = threading.Barrier(20)

    def claim(index: int) -> None:
        barrier.wait()
        outcomes.append(store.try_claim("sync-person:44", owner=f"request-{index}", now=NOW))

    _run_threads(claim, 20)
    winners = [outcome for outcome in outcomes if outcome is not None]
    assert (len(winners), len(outcomes)) == (1, 20)
    stored = store.get_claim("sync-person:44")
    assert stored is not None
    assert stored.owner == winners[0].owner


# -- counters --------------------------------------------------------------------------------------
def test_counters_count_reads_writes_and_transactions(store: StateStore) -> None:
    store.counters = StoreCounters()
    store.get_cursor("marketo")
    store.put_cursor(Cursor(name="marketo", value="t"))
    store.upsert_links([_link(1), _link(2)])
    partitions = len({link_partition(key) for key in _link_keys([_link(1), _link(2)])})
    store.get_links_by_marketo_ids([1, 2])
    store.try_claim("k", owner="o", now=NOW)
    # a fresh store's first link lookup reads the layout row and finds no one-partition link (2
    # reads), then writes the layout row (1 write); a lookup is a point read per id
    assert store.counters == StoreCounters(reads=5, writes=3, transactions=partitions, operations=4)
    store.counters = StoreCounters()
    store.get_links_by_marketo_ids([1, 2])
    assert store.counters == StoreCounters(reads=2)


# -- transactions at the row level (what the store's batches rely on) -----------------------------------
@pytest.fixture(params=KINDS)
def rows(request: pytest.FixtureRequest) -> Iterator[Rows]:
    if request.param == "memory":
        yield MemoryRows()
    else:
        conn: str = request.getfixturevalue("azurite_connection_string")
        yield AzureRows(TableServiceClient.from_connection_string(conn))


def test_a_100_operation_transaction_commits_atomically(rows: Rows, table_prefix: str) -> None:
    table = table_prefix + "batch"
    rows.transact(table, "p", [RowOp("upsert", f"r{index:03d}", {"n": index}) for index in range(100)])
    stored = list(rows.scan_rows(table, partition="p"))
    assert [(row.row, row.props["n"]) for row in stored] == [(f"r{index:03d}", index) for index in range(100)]


def test_a_transaction_whose_last_operation_conflicts_writes_nothing(rows: Rows, table_prefix: str) -> None:
    table = table_prefix + "batch"
    rows.insert_row(table, "p", "r099", {"n": -1})
    ops = [RowOp("upsert", f"r{index:03d}", {"n": index}) for index in range(99)]
    ops.append(RowOp("insert", "r099", {"n": 99}))
    with pytest.raises(StateConflictError, match=r"r099: .*operation 99 of the transaction") as err:
        rows.transact(table, "p", ops)
    if isinstance(rows, AzureRows):  # the service's own code for it
        assert "EntityAlreadyExists" in str(err.value)
    assert [(row.row, row.props["n"]) for row in rows.scan_rows(table)] == [("r099", -1)]


def test_a_transaction_writes_every_property_type_under_keys_that_need_escaping(rows: Rows, table_prefix: str) -> None:
    table = table_prefix + "batch"
    at = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    props = {"s": "o'brien & co", "n": 7, "big": EntityProperty(2**40, EdmType.INT64), "f": 1.5, "b": True, "at": at}
    partition, quoted, encoded = "p'1", "o''brien'@example.com'", encode_key("a/b c%")
    rows.transact(table, partition, [RowOp("upsert", quoted, {**props, "none": None}), RowOp("insert", encoded)])
    stored = {row.row: row.props for row in rows.scan_rows(table, partition=partition)}
    assert set(stored) == {quoted, encoded}
    got = stored[quoted]
    assert (got["s"], got["n"], as_int(got["big"]), got["f"], got["b"]) == ("o'brien & co", 7, 2**40, 1.5, True)
    assert as_utc(got["at"]) == at
    assert got.get("none") is None
    rows.transact(table, partition, [RowOp("delete", quoted)])  # a delete is addressed by its URL alone
    assert [row.row for row in rows.scan_rows(table)] == [encoded]


def test_a_merge_writes_its_properties_a_none_as_empty_keeps_the_rows_others_and_inserts_a_missing_row(
    rows: Rows, table_prefix: str
) -> None:
    table = table_prefix + "batch"
    rows.insert_row(table, "p", "a", {"n": 1, "kept": "yes", "cleared": "x"})
    rows.transact(table, "p", [RowOp("merge", "a", {"n": 2, "cleared": None}), RowOp("merge", "b", {"n": 3})])
    stored = {row.row: dict(row.props) for row in rows.scan_rows(table, partition="p")}
    assert {row: {k: v for k, v in props.items() if k != "Timestamp"} for row, props in stored.items()} == {
        "a": {"n": 2, "kept": "yes", "cleared": ""},
        "b": {"n": 3},
    }


def test_a_transaction_skips_rows_already_gone_and_keeps_etag_conditions(rows: Rows, table_prefix: str) -> None:
    table = table_prefix + "batch"
    first = rows.insert_row(table, "p", "a", {"n": 1})
    rows.insert_row(table, "p", "b", {"n": 2})
    rows.transact(table, "p", [RowOp("delete", "gone"), RowOp("delete", "a", etag=first), RowOp("upsert", "c")])
    assert sorted(row.row for row in rows.scan_rows(table)) == ["b", "c"]
    stale = rows.get_row(table, "p", "b")
    assert stale is not None
    rows.replace_row(table, "p", "b", {"n": 3}, etag=stale.etag)
    with pytest.raises(StateConflictError, match="operation 1 of the transaction"):
        rows.transact(table, "p", [RowOp("upsert", "d"), RowOp("delete", "b", etag=stale.etag)])
    assert sorted(row.row for row in rows.scan_rows(table)) == ["b", "c"]


def test_a_transaction_the_service_refuses_gives_its_status_and_code(rows: Rows, table_prefix: str) -> None:
    table = table_prefix + "batch"
    rows.insert_row(table, "p", "a", {"n": 1})
    with pytest.raises(ApiError) as err:
        rows.transact(table, "p", [RowOp("upsert", "b"), RowOp("upsert", "b")])
    assert (err.value.status, err.value.code) == (400, "InvalidDuplicateRow")
    with pytest.raises(ApiError) as err:
        rows.transact(table, "p", [RowOp("upsert", f"r{index:03d}") for index in range(101)])
    assert (err.value.status, err.value.code) == (400, "InvalidInput")
    assert [row.row for row in rows.scan_rows(table)] == ["a"]


def test_memory_rows_refuse_a_transaction_the_service_would_refuse() -> None:
    rows = MemoryRows()
    with pytest.raises(ApiError, match="101 operations"):
        rows.transact("t", "p", [RowOp("upsert", f"r{index}") for index in range(101)])
    with pytest.raises(ApiError, match="same row"):
        rows.transact("t", "p", [RowOp("upsert", "r"), RowOp("delete", "r")])
    assert list(rows.scan_rows("t")) == []


def _run_threads(target: Callable[[int], None], count: int) -> None:
    threads = [threading.Thread(target=target, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)


# -- retention and erasure ---------------------------------------------------------------------------
RETENTION = Retention()  # the documented defaults: runs 30 days, collisions 90, claims 1


def _add_runs(store: StateStore, times: Sequence[datetime]) -> None:
    """Many run reports at once: 100 per transaction per day, as a year of cycles would have left them."""
    assert isinstance(store, RowStateStore)
    by_day: dict[str, list[RowOp]] = {}
    for index, at in enumerate(times):
        partition, row = newest_first_key(at, f"run-{index}")
        props = {"run_id": f"run-{index}", "started_at": at, "outcome": "ok", "data": "{}"}
        by_day.setdefault(partition, []).append(RowOp("upsert", row, props))
    for partition, ops in by_day.items():
        for start in range(0, len(ops), 100):
            store._rows.transact(store.tables.runs, partition, ops[start : start + 100])


def _cost(store: StateStore, action: Callable[[], object]) -> StoreCounters:
    store.counters = StoreCounters()
    action()
    return store.counters.model_copy()


@pytest.mark.parametrize("kind", ["runs", "actions", "collisions", "claims"])
def test_prune_removes_a_row_exactly_as_old_as_its_retention_and_keeps_a_younger_one(
    store: StateStore, kind: str
) -> None:
    period = {
        "runs": RETENTION.run_reports,
        "actions": RETENTION.run_reports,  # an operator's action is kept as long as the run reports
        "collisions": RETENTION.collisions,
        "claims": RETENTION.claims,
    }[kind]
    # Runs and collisions are pruned by key (µs); claims by their created_at property, which
    # Azurite compares to the millisecond.
    step = timedelta(milliseconds=1) if kind == "claims" else timedelta(microseconds=1)
    at_boundary, inside = NOW - period, NOW - period + step
    if kind == "runs":
        store.add_run_report(RunReport(run_id="expired", started_at=at_boundary))
        store.add_run_report(RunReport(run_id="kept", started_at=inside))
    elif kind == "actions":
        store.add_action(_action("expired", at_boundary))
        store.add_action(_action("kept", inside))
    elif kind == "collisions":
        store.add_collisions([_collision("expired", at_boundary), _collision("kept", inside)])
    else:
        assert store.try_claim("expired", owner="w", now=at_boundary) is not None
        assert store.try_claim("kept", owner="w", now=inside) is not None
    report = store.prune_expired(now=NOW)
    assert report.removed == {kind: 1}
    assert not report.more
    if kind == "runs":
        assert [run.run_id for run in store.list_run_reports()] == ["kept"]
    elif kind == "actions":
        assert [action.id for action in store.list_actions()] == ["kept"]
    elif kind == "collisions":
        assert [collision.id for collision in store.list_collisions()] == ["kept"]
        assert store.delete_collisions_of([42]) == 1  # the expired one's index row went with it
    else:
        assert (store.get_claim("expired"), store.get_claim("kept") is not None) == (None, True)
    assert store.prune_expired(now=NOW).removed == {}


def _many(subject: Subject) -> int:
    """10,000 rows in memory; 2,000 on Azurite, where writing them takes a while (the point is that
    the cost does not depend on the number, which both show)."""
    return 10_000 if subject.kind == "memory" else 2_000


def test_a_prune_costs_the_same_whether_the_table_holds_no_run_reports_or_many_kept_ones(subject: Subject) -> None:
    store = subject.store
    empty = _cost(store, lambda: store.prune_expired(now=NOW))
    _add_runs(store, [NOW - timedelta(minutes=4 * index + 1) for index in range(_many(subject))])  # ≤ 28 days old
    full = _cost(store, lambda: store.prune_expired(now=NOW))
    assert full == empty == StoreCounters(reads=4)  # one page read per pruned table, nothing written


def test_a_prune_of_a_backlog_costs_a_fixed_budget_whatever_the_backlog(subject: Subject) -> None:
    store = subject.store
    old = NOW - RETENTION.run_reports
    _add_runs(store, [old - timedelta(minutes=5 * index) for index in range(300)])
    small = _cost(store, lambda: store.prune_expired(now=NOW))
    assert small.reads == 4
    assert 1 <= small.transactions <= PRUNE_PARTITIONS
    assert small.operations == PRUNE_PAGE
    _add_runs(store, [old - timedelta(minutes=5 * index) for index in range(_many(subject))])  # past due
    big = _cost(store, lambda: store.prune_expired(now=NOW))
    assert big == small


def test_a_persons_collisions_are_erased_through_the_index_across_days_and_others_stay(store: StateStore) -> None:
    persons = range(100, 109)  # more than one prefix query's worth (7)
    collisions = [
        _collision(f"c{person}-{day}", NOW - timedelta(days=day)).model_copy(update={"marketo_id": person})
        for person in persons
        for day in (0, 1, 40)
    ]
    store.add_collisions(collisions)
    assert store.delete_collisions_of([*persons[:8], 999]) == 24
    assert {collision.marketo_id for collision in store.list_collisions()} == {108}
    assert store.delete_collisions_of(persons[:8]) == 0
    assert store.count_rows(cap=1000)["collisions"] == 3


def _action(action_id: str, at: datetime) -> ActionRecord:
    return ActionRecord(
        id=action_id, at=at, action="dismiss", target="to_dynamics:m1", by="ops", via="cli", outcome="done", reason="x"
    )


def test_actions_are_listed_newest_first_and_round_trip(store: StateStore) -> None:
    older, newer = _action("a1", NOW - timedelta(days=2)), _action("a2", NOW)
    store.add_action(older)
    store.add_action(newer)
    store.add_action(newer)  # the same action twice is one row
    assert store.list_actions() == [newer, older]
    assert store.list_actions(limit=1) == [newer]


def test_claims_can_be_deleted_whatever_their_state(store: StateStore) -> None:
    claim = store.try_claim("sync-person:1", owner="w", now=NOW)
    assert claim is not None
    store.complete_claim(claim, {"entity": "lead"})
    assert store.delete_claims(["sync-person:1", "sync-person:2"]) == 1
    assert store.get_claim("sync-person:1") is None
    assert store.delete_claims(["sync-person:1"]) == 0


def test_row_counts_count_records_once_and_stop_at_the_cap(store: StateStore) -> None:
    store.upsert_links([_link(1), _link(2)])
    store.add_collisions([_collision("a", NOW), _collision("b", NOW - MINUTE)])
    _add_runs(store, [NOW - MINUTE * index for index in range(5)])
    store.add_campaign_member(
        CampaignMember(
            campaign_id="c1", list_id="l1", entity=EntityType.LEAD, dataverse_id="d1", marketo_id=1, added_at=NOW
        )
    )
    counts = store.count_rows(cap=4)
    assert counts == {
        "links": 2,
        "collisions": 2,
        "failures": 0,
        "runs": 4,
        "claims": 0,
        "actions": 0,
        "members": 1,
        "state": 0,
    }


def test_the_last_prune_round_trips(store: StateStore) -> None:
    assert store.get_last_prune() is None
    report = PruneReport(at=NOW, removed={"runs": 3}, more=True)
    store.put_last_prune(report)
    assert store.get_last_prune() == report
