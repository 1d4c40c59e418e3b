"""The row-level contract under the state store: a few Table Storage verbs, in memory or on Azure.

``RowStateStore`` (``_store``) turns cursors, links, failures and the rest into rows and calls
these verbs; ``MemoryRows`` and ``AzureRows`` implement them with the same semantics: ETags on
every write, insert-if-absent, conditional replace/delete, atomic single-partition transactions
of ≤ 100 operations, rows ordered by (PartitionKey, RowKey). Both count what they send into one
``StoreCounters``. This layer knows nothing about what a row means.

A lost condition (row exists on insert, ETag mismatch, row gone on replace) raises
``StateConflictError``; nothing is overwritten.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sync_core.core.models import StoreCounters
from sync_core.state._keys import RowOp

__all__ = ["CountingRows", "RowOp", "Rows", "StoredRow"]


@dataclass(frozen=True, slots=True)
class StoredRow:
    partition: str
    row: str
    props: Mapping[str, Any]  # without PartitionKey/RowKey; a property set to None is not stored
    etag: str


class Rows(Protocol):
    counters: StoreCounters

    def get_row(self, table: str, partition: str, row: str) -> StoredRow | None: ...

    def insert_row(self, table: str, partition: str, row: str, props: Mapping[str, Any]) -> str:
        """Create the row; ``StateConflictError`` if it exists. Returns the new ETag."""
        ...

    def replace_row(self, table: str, partition: str, row: str, props: Mapping[str, Any], *, etag: str) -> str:
        """Replace the row if its ETag is still ``etag``; ``StateConflictError`` otherwise (or if gone)."""
        ...

    def delete_row(self, table: str, partition: str, row: str, *, etag: str | None = None) -> None:
        """Delete the row (only if its ETag is ``etag``, when given). A missing row is not an error."""
        ...

    def query_rows(self, table: str, partition: str, rows: Sequence[str]) -> list[StoredRow]:
        """The rows among ``rows`` (≤ 14 keys: one ``$filter``) that exist, in key order."""
        ...

    def scan_rows(
        self,
        table: str,
        *,
        partition: str | None = None,
        row_prefix: str | None = None,
        at_most: tuple[str, datetime] | None = None,
        page_size: int = 1000,
    ) -> Iterator[StoredRow]:
        """Rows in (PartitionKey, RowKey) order, fetched a page at a time as the caller iterates.

        ``at_most=(name, when)`` keeps rows whose datetime property ``name`` is not after ``when``.
        """
        ...

    def transact(self, table: str, partition: str, ops: Sequence[RowOp]) -> None:
        """Apply ``ops`` atomically: all of them or none. ≤ 100 ops, each on a different row."""
        ...


class CountingRows:
    """What both row stores share: the counters, updated under a lock (webhooks run concurrently)."""

    def __init__(self) -> None:
        self.counters = StoreCounters()
        self._count_lock = threading.Lock()

    def _count(self, *, reads: int = 0, writes: int = 0, transactions: int = 0, operations: int = 0) -> None:
        with self._count_lock:
            self.counters.reads += reads
            self.counters.writes += writes
            self.counters.transactions += transactions
            self.counters.operations += operations
