"""The state store's table layout (the names, partitions and row keys ``_store`` documents) and
the plumbing every part of ``RowStateStore`` shares: the backend, batching into transactions,
many point reads of one partition. No decisions about what a row means live here."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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
LINK = "link"
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

    def _query(self, table: str, partition: str, keys: Iterable[str]) -> list[StoredRow]:
        """Point-read many rows of one partition: one ``$filter`` per 14 keys, not one call per key,
        up to ``query_workers`` of them at once; rows come back in key order either way."""
        batches = list(chunks(sorted(set(keys)), MAX_KEYS_PER_QUERY))
        workers = min(self._query_workers, len(batches))
        if workers <= 1:
            return [row for batch in batches for row in self._rows.query_rows(table, partition, batch)]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="state-query") as pool:
            pages = list(pool.map(lambda batch: self._rows.query_rows(table, partition, batch), batches))
        return [row for page in pages for row in page]

    def _read_each(self, table: str, partition: str, keys: Iterable[str]) -> list[StoredRow]:
        """Point-read many rows of one partition, one read per key, up to ``query_workers`` at
        once; the rows that exist, in key order."""
        wanted = sorted(set(keys))
        workers = min(self._query_workers, len(wanted))
        if workers <= 1:
            found = [self._rows.get_row(table, partition, key) for key in wanted]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="state-read") as pool:
                found = list(pool.map(lambda key: self._rows.get_row(table, partition, key), wanted))
        return [row for row in found if row is not None]

    def _transact(self, table: str, partition: str, groups: Iterable[Sequence[RowOp]]) -> None:
        for ops in pack_transactions(groups):
            self._rows.transact(table, partition, ops)


def page_size(limit: int) -> int:
    return max(1, min(limit, PAGE))


def person_key(marketo_id: int, partition: str, row: str) -> str:
    return f"{marketo_link_key(marketo_id)[2:]}:{partition}:{row}"


def pointer(partition: str, row: str) -> dict[str, Any]:
    return {"day": partition, "row": row}


def as_int(value: Any) -> int:
    # The SDK hands an Int64 back as EntityProperty(value, Edm.Int64).
    return int(value.value if isinstance(value, EntityProperty) else value)
