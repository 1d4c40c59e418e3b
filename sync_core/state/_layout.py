"""The state store's table layout (the names, partitions and row keys ``_store`` documents) and
the plumbing every part of ``RowStateStore`` shares: the backend, batching into transactions,
many reads and transactions in flight at once. No decisions about what a row means live here."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from azure.data.tables import EntityProperty

from sync_core.core.errors import ConfigError
from sync_core.core.models import StoreCounters
from sync_core.core.retention import Retention
from sync_core.state._keys import MAX_KEYS_PER_QUERY, RowOp, chunks, marketo_link_key, pack_transactions
from sync_core.state._rows import RowFilter, Rows, StoredRow

PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,52}$")  # + the longest suffix ("collisions") stays ≤ 63
CURSOR = "cursor"
LEASE = "lease"
LEASE_ROW = "cycle"
LINK = "link"  # layout 1: every link row in this one partition (read until migrated: ``_links``)
LINK_BUCKETS = 32  # layout 2: link rows spread over link-00 … link-31 by a hash of their RowKey
LINKS_FROM, LINKS_TO = "link-", "link."  # the spread partitions are the PartitionKeys in [from, to)
LAYOUT = "layout"  # in the state table: RK links, the links' layout version once it is 2
LAYOUT_ROW = "links"
FAILURE = "failure"
CLAIM = "claim"
MEMBER = "member"
CAMPAIGN_LIST = "list"  # in the members table: a campaign list made and added to its campaign
WEBHOOK_CALLS = "calls"
PERSON = "person"  # the collisions' person index; sorts after every (all-digit) day partition
DAYS_END = ":"  # the character after "9": day partitions are the PartitionKeys below it
PRUNE = "prune"
PRUNE_ROW = "last"
PAGE = 1000  # the most the service returns per page
PRUNE_PAGE = 100  # rows read per table per prune: one transaction's worth
PRUNE_PARTITIONS = 3  # day partitions deleted from per table per prune (one transaction each)


class TableNames:
    """The ten table names for a prefix (alphanumeric, starts with a letter, 3 to 63 characters)."""

    def __init__(self, prefix: str) -> None:
        if not PREFIX.match(prefix):
            raise ConfigError([f"table prefix {prefix!r}: must be a letter followed by up to 52 letters or digits"])
        self.state = f"{prefix}state"
        self.links = f"{prefix}links"
        self.collisions = f"{prefix}collisions"
        self.failures = f"{prefix}failures"
        self.runs = f"{prefix}runs"
        self.claims = f"{prefix}claims"
        self.actions = f"{prefix}actions"
        self.members = f"{prefix}members"
        self.webhooks = f"{prefix}webhooks"
        self.jobs = f"{prefix}jobs"


_T = TypeVar("_T")
_R = TypeVar("_R")


class LookupChoice:
    """How ``RowPlumbing._query_spread`` reads many keys of a table: ``FILTER`` (one ``$filter`` per
    14 keys of a partition) or ``POINT`` (a point read per key), whichever has cost less a key there
    lately.

    The service answers an ``or`` of RowKeys by reading the partition (Microsoft's table design
    guide: a partition scan, not a range query), so a filter is cheap while partitions are small
    and grows with them; a point read finds its row by the key index whatever the table holds, at a
    request per key. On Azurite 3.37, 3,000 keys 8 at a time: filters 0.8 s among 20,000 rows and
    4.9 s among 200,000, point reads 5.4 s and 4.6 s (README "Performance"). Reads of at least
    ``MIN_KEYS`` keys are timed (seconds a key, a moving average per table and way); smaller ones
    use filters, untimed. Filters first; a table's first timed read, and every ``PROBE_EVERY``-th
    after it, also reads ``SAMPLE`` of its keys the other way (as full filters of 14 keys when those
    are probed), so that way's figure stays current as the table grows, at the cost of a sample, not
    of a whole read. Probing on the first read lets a new process (a cycle is one) read by the
    cheaper way from its second read on: probing first on the 8th cost the 100k benchmark's echo
    cycle its first seven look-ups of 5,000 keys by filters among 200,000 rows, ~55 ms a filter on
    Azurite (README "Performance"). The rows read are the same either way.

    A look-up of at least ``RANGE_MIN_KEYS`` keys may also read a partition's whole key range
    (``RANGE``: the rows under the keys' common prefix, one scan of up to a few thousand rows)
    instead of its keys one by one, where that costs less than its keys would by the cheaper way:
    a look-up of half a table's links (a pre-read's census) reads every partition once, not a
    request per key. A range's cost is timed in seconds a partition (per table and prefix, whose
    partitions hold about as many rows: their keys are spread by a hash); until it is known, and
    every ``PROBE_EVERY``-th big look-up after, one partition (the median by keys asked) is read
    by range first, to time it."""

    FILTER, POINT, RANGE = "filter", "point", "range"
    SAMPLE = 4 * MAX_KEYS_PER_QUERY
    MIN_KEYS = 2 * SAMPLE
    RANGE_MIN_KEYS = 2000  # (a Dataverse page's look-up is 5,000 ids; the persons step's chunks of 1,000 are not)
    PROBE_EVERY = 8
    WEIGHT = 0.3  # of the newest read in the moving average

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cost: dict[
            tuple[str, str], float
        ] = {}  # (table, way) -> seconds a key; (table, RANGE + prefix) -> a partition read whole
        self._reads: dict[str, int] = {}
        self._big_reads: dict[str, int] = {}

    def way(self, table: str, keys: int) -> tuple[str | None, str | None]:
        """The way to read ``keys`` keys of ``table`` (None: too few to time: filters, untimed), and
        the way to read a sample of them first, when this read probes the other way."""
        if keys < self.MIN_KEYS:
            return None, None
        with self._lock:
            reads = self._reads[table] = self._reads.get(table, 0) + 1
            filter_cost, point_cost = self._cost.get((table, self.FILTER)), self._cost.get((table, self.POINT))
            best = self.POINT if filter_cost and point_cost and point_cost < filter_cost else self.FILTER
        other = self.POINT if best == self.FILTER else self.FILTER
        return best, (other if reads % self.PROBE_EVERY == 1 else None)

    def range_probe(self, table: str, prefix: str, keys: Mapping[str, int]) -> list[str]:
        """Of a big look-up's partitions (with how many of its keys each holds), the one to read by
        range first, to time it: when no range of this table and prefix is timed yet, and on every
        ``PROBE_EVERY``-th big look-up after (the partition with the median count)."""
        with self._lock:
            reads = self._big_reads[table] = self._big_reads.get(table, 0) + 1
            known = (table, self.RANGE + prefix) in self._cost
        if known and reads % self.PROBE_EVERY != 1:
            return []
        by_keys = sorted(keys, key=lambda partition: (keys[partition], partition))
        return by_keys[len(by_keys) // 2 : len(by_keys) // 2 + 1]

    def cheaper_by_range(self, table: str, prefix: str, keys: Mapping[str, int]) -> list[str]:
        """The partitions a range read costs less than their keys would by the cheaper way, by the
        figures so far (none while either is unknown)."""
        with self._lock:
            per_range = self._cost.get((table, self.RANGE + prefix))
            per_key = min(
                (
                    cost
                    for (name, way), cost in self._cost.items()
                    if name == table and way in (self.FILTER, self.POINT)
                ),
                default=None,
            )
        if per_range is None or per_key is None:
            return []
        return sorted(partition for partition, count in keys.items() if per_range < count * per_key)

    def timed_ranges(self, table: str, prefix: str, partitions: int, seconds: float) -> None:
        self.timed(table, self.RANGE + prefix, partitions, seconds)

    def timed(self, table: str, way: str, keys: int, seconds: float) -> None:
        per_key = seconds / max(keys, 1)
        with self._lock:
            old = self._cost.get((table, way))
            self._cost[(table, way)] = per_key if old is None else old + self.WEIGHT * (per_key - old)

    def costs(self, table: str) -> dict[str, float]:
        """Seconds a key by way for ``table``, as averaged so far (for benchmarks and tests)."""
        with self._lock:
            return {way: cost for (name, way), cost in self._cost.items() if name == table}

    def sample(self, way: str, keys: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """``SAMPLE`` of ``keys`` (sorted) to probe ``way`` with: for filters, 14 keys of each of the
        partitions with the most, so each filter is full, as in a read's own; else the first ones."""
        if way == self.POINT:
            return list(keys[: self.SAMPLE])
        by_partition: dict[str, list[tuple[str, str]]] = {}
        for key in keys:
            by_partition.setdefault(key[0], []).append(key)
        fullest = sorted(by_partition.values(), key=len, reverse=True)[: self.SAMPLE // MAX_KEYS_PER_QUERY]
        return sorted(key for keys_of in fullest for key in keys_of[:MAX_KEYS_PER_QUERY])


class RowPlumbing:
    """The backend and the shared ways of reading and writing it."""

    def __init__(self, rows: Rows, *, prefix: str, query_workers: int = 1, retention: Retention | None = None) -> None:
        if query_workers < 1:
            raise ValueError("query_workers must be at least 1")
        self.tables = TableNames(prefix)
        self.retention = retention or Retention()
        self._rows = rows
        self._query_workers = query_workers
        self.lookups = LookupChoice()

    @property
    def counters(self) -> StoreCounters:
        return self._rows.counters

    @counters.setter
    def counters(self, value: StoreCounters) -> None:
        self._rows.counters = value

    def _side_by_side(self, call: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
        """``call`` on every item, up to ``query_workers`` at once (independent requests); the
        answers in the items' order. The first error is raised once every call has ended."""
        workers = min(self._query_workers, len(items))
        if workers <= 1:
            return [call(item) for item in items]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="state-rows") as pool:
            return list(pool.map(call, items))

    def _query(self, table: str, partition: str, keys: Iterable[str]) -> list[StoredRow]:
        """Read many rows of one partition (``_query_spread``); rows come back in key order."""
        return self._query_spread(table, ((partition, key) for key in keys))

    def _query_spread(self, table: str, keys: Iterable[tuple[str, str]]) -> list[StoredRow]:
        """Read many rows of any partitions, (PartitionKey, RowKey) each, up to ``query_workers``
        requests at once; the rows that exist, in (PartitionKey, RowKey) order. The requests are one
        ``$filter`` per 14 keys of a partition (``Rows.query_rows``: the values sent as parameters,
        which the SDK escapes), or a point read per key once those have cost less here
        (``LookupChoice``: filters read the partition, so they slow as it grows)."""
        wanted = sorted(set(keys))
        rows: list[StoredRow] = []
        if len(wanted) >= LookupChoice.RANGE_MIN_KEYS:
            rows, wanted = self._read_ranges(table, wanted)
        way, probe = self.lookups.way(table, len(wanted))
        if way is None:
            rows += self._read_keys(table, wanted, LookupChoice.FILTER)
        else:
            if probe is not None:
                sample = self.lookups.sample(probe, wanted)
                rows += self._timed_read(table, sample, probe)
                taken = set(sample)
                wanted = [key for key in wanted if key not in taken]
            rows += self._timed_read(table, wanted, way)
        return sorted(rows, key=lambda row: (row.partition, row.row))

    def _read_ranges(
        self, table: str, wanted: Sequence[tuple[str, str]]
    ) -> tuple[list[StoredRow], list[tuple[str, str]]]:
        """A big look-up's partitions worth reading whole (``LookupChoice.range_probe`` and
        ``cheaper_by_range``): the rows of the keys wanted among them, and the keys left to read
        one by one."""
        by_partition: dict[str, set[str]] = {}
        for partition, row in wanted:
            by_partition.setdefault(partition, set()).add(row)
        prefix = _common_prefix(min(row for _, row in wanted), max(row for _, row in wanted))
        counts = {partition: len(rows) for partition, rows in by_partition.items()}
        probed = self.lookups.range_probe(table, prefix, counts)
        rows = self._timed_ranges(table, prefix, probed, by_partition)
        ranged = self.lookups.cheaper_by_range(table, prefix, {p: n for p, n in counts.items() if p not in probed})
        rows += self._timed_ranges(table, prefix, ranged, by_partition)
        done = {*probed, *ranged}
        return rows, [key for key in wanted if key[0] not in done]

    def _timed_ranges(
        self, table: str, prefix: str, partitions: Sequence[str], wanted: Mapping[str, set[str]]
    ) -> list[StoredRow]:
        if not partitions:
            return []
        started = time.perf_counter()
        found = self._side_by_side(
            lambda partition: [
                row
                for row in self._rows.scan_rows(
                    table, where=RowFilter(partition=partition, row_prefix=prefix), page_size=PAGE
                )
                if row.row in wanted[partition]
            ],
            partitions,
        )
        self.lookups.timed_ranges(table, prefix, len(partitions), time.perf_counter() - started)
        return [row for rows in found for row in rows]

    def _timed_read(self, table: str, keys: Sequence[tuple[str, str]], way: str) -> list[StoredRow]:
        started = time.perf_counter()
        rows = self._read_keys(table, keys, way)
        self.lookups.timed(table, way, len(keys), time.perf_counter() - started)
        return rows

    def _read_keys(self, table: str, keys: Sequence[tuple[str, str]], way: str) -> list[StoredRow]:
        """The rows of these keys (sorted) that exist, in their order, read ``way``."""
        if way == LookupChoice.POINT:
            found = self._side_by_side(lambda key: self._rows.get_row(table, *key), keys)
            return [row for row in found if row is not None]
        by_partition: dict[str, list[str]] = {}
        for partition, row in keys:
            by_partition.setdefault(partition, []).append(row)
        batches = [
            (partition, batch) for partition, rows in by_partition.items() for batch in chunks(rows, MAX_KEYS_PER_QUERY)
        ]
        pages = self._side_by_side(lambda batch: self._rows.query_rows(table, *batch), batches)
        return [row for page in pages for row in page]

    def _transact(self, table: str, partition: str, groups: Iterable[Sequence[RowOp]]) -> None:
        for ops in pack_transactions(groups):
            self._rows.transact(table, partition, ops)

    def _transact_spread(self, table: str, by_partition: Mapping[str, Iterable[Sequence[RowOp]]]) -> None:
        """Each partition's groups packed into its own transactions, and all of them sent up to
        ``query_workers`` at once: they touch different rows, so no order among them matters. A
        caller whose writes depend on each other makes one call per step."""
        batches = [
            (partition, ops) for partition, groups in sorted(by_partition.items()) for ops in pack_transactions(groups)
        ]
        self._side_by_side(lambda batch: self._rows.transact(table, *batch), batches)


def _common_prefix(first: str, last: str) -> str:
    """The characters two keys start with alike (of the lowest and highest: every key between has them)."""
    length = 0
    while length < min(len(first), len(last)) and first[length] == last[length]:
        length += 1
    return first[:length]


def link_partition(row: str) -> str:
    """The partition of a link row in layout 2: a stable hash of its RowKey, so a row is found by
    its key alone (a point read) and a cycle's rows spread evenly over ``LINK_BUCKETS``."""
    return link_partition_name(link_bucket(row))


def link_bucket(row: str) -> int:
    return int.from_bytes(hashlib.sha256(row.encode("ascii")).digest()[:4], "big") % LINK_BUCKETS


def link_partition_name(bucket: int) -> str:
    return f"{LINKS_FROM}{bucket:02d}"


def page_size(limit: int) -> int:
    return max(1, min(limit, PAGE))


def person_key(marketo_id: int, partition: str, row: str) -> str:
    return f"{marketo_link_key(marketo_id)[2:]}:{partition}:{row}"


def pointer(partition: str, row: str) -> dict[str, Any]:
    return {"day": partition, "row": row}


def as_int(value: Any) -> int:
    # The SDK hands an Int64 back as EntityProperty(value, Edm.Int64).
    return int(value.value if isinstance(value, EntityProperty) else value)
