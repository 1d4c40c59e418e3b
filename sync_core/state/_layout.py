"""The state store's table layout (the names, partitions and row keys ``_store`` documents) and
the plumbing every part of ``RowStateStore`` shares: the backend, batching into transactions,
many reads and transactions in flight at once. No decisions about what a row means live here."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from azure.data.tables import EntityProperty

from sync_core.core.errors import ConfigError
from sync_core.core.models import StoreCounters
from sync_core.core.retention import Retention
from sync_core.state._keys import MAX_KEYS_PER_QUERY, RowOp, chunks, marketo_link_key, pack_transactions
from sync_core.state._rows import Rows, StoredRow

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


class RowPlumbing:
    """The backend and the shared ways of reading and writing it."""

    def __init__(self, rows: Rows, *, prefix: str, query_workers: int = 1, retention: Retention | None = None) -> None:
        if query_workers < 1:
            raise ValueError("query_workers must be at least 1")
        self.tables = TableNames(prefix)
        self.retention = retention or Retention()
        self._rows = rows
        self._query_workers = query_workers

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
        """Read many rows of one partition: one ``$filter`` per 14 keys, not one call per key, up
        to ``query_workers`` of them at once; rows come back in key order either way. The service
        answers such a filter by reading the partition, so this is for small partitions only."""
        return self._query_spread(table, ((partition, key) for key in keys))

    def _query_spread(self, table: str, keys: Iterable[tuple[str, str]]) -> list[StoredRow]:
        """Read many rows of any partitions, (PartitionKey, RowKey) each: one ``$filter`` per 14
        keys of a partition (``Rows.query_rows``: the values sent as parameters, which the SDK
        escapes), up to ``query_workers`` at once; the rows that exist, in (PartitionKey, RowKey)
        order. Fewer requests than a point read per key (each costs the client CPU in the SDK's
        pipeline); the service answers each by reading its partition, so for partitions kept small
        (the links' 32)."""
        by_partition: dict[str, set[str]] = {}
        for partition, row in keys:
            by_partition.setdefault(partition, set()).add(row)
        batches = [
            (partition, batch)
            for partition, rows in sorted(by_partition.items())
            for batch in chunks(sorted(rows), MAX_KEYS_PER_QUERY)
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
