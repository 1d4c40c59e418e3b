"""The row-level contract under the state store: a few Table Storage verbs, in memory or on Azure.

``RowStateStore`` (``_store``) turns cursors, links, failures and the rest into rows and calls
these verbs; ``MemoryRows`` and ``AzureRows`` implement them with the same semantics: ETags on
every write, insert-if-absent, conditional replace/delete, atomic single-partition transactions
of ≤ 100 operations, rows ordered by (PartitionKey, RowKey). This layer knows nothing about what
a row means.

``Rows`` is written once for both backends: it maps the properties that are sent (``row_props``),
says which rows a scan keeps (``RowFilter``), checks a lookup's size and counts what is sent into
one ``StoreCounters`` (one read per page fetched, however it was fetched). A backend implements
only the ``_``-verbs underneath: where rows live and how a page is fetched.

A lost condition (row exists on insert, ETag mismatch, row gone on replace) raises
``StateConflictError``; nothing is overwritten.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sync_core.core.models import StoreCounters
from sync_core.http.ratebudget import yield_to_live
from sync_core.state._keys import RowOp, as_utc, check_key_count

__all__ = ["RowFilter", "RowOp", "Rows", "StoredRow", "row_props"]


@dataclass(frozen=True, slots=True)
class StoredRow:
    partition: str
    row: str
    props: Mapping[str, Any]  # without PartitionKey/RowKey; a property set to None is not stored
    etag: str


MAX_PREFIXES = 7  # two comparisons each, and the PartitionKey one: 15 per $filter


@dataclass(frozen=True, slots=True)
class RowFilter:
    """Which rows a scan keeps: all of them, or those of one partition or a PartitionKey range
    (``partition_from`` ≤ PK < ``partition_to``), with a RowKey prefix (or any of up to 7
    ``row_prefixes``), a RowKey after ``row_after`` or not after ``row_until``, or whose datetime
    property ``at_most[0]`` is not after ``at_most[1]``. ``AzureRows`` sends it as a ``$filter`` (key ranges, which the
    service answers from its index); ``keeps`` is the same test in Python."""

    partition: str | None = None
    row_prefix: str | None = None
    at_most: tuple[str, datetime] | None = None
    partition_from: str | None = None
    partition_to: str | None = None
    row_after: str | None = None
    row_prefixes: tuple[str, ...] = ()
    row_until: str | None = None

    def keeps(self, partition: str, row: str, props: Mapping[str, Any]) -> bool:
        if self.partition is not None and partition != self.partition:
            return False
        if self.partition_from is not None and partition < self.partition_from:
            return False
        if self.partition_to is not None and partition >= self.partition_to:
            return False
        if self.row_prefix and not row.startswith(self.row_prefix):
            return False
        if self.row_prefixes and not row.startswith(self.row_prefixes):
            return False
        if self.row_after is not None and row <= self.row_after:
            return False
        if self.row_until is not None and row > self.row_until:
            return False
        if self.at_most is None:
            return True
        value = props.get(self.at_most[0])
        return isinstance(value, datetime) and value <= self.at_most[1]


def row_props(props: Mapping[str, Any]) -> dict[str, Any]:
    """The properties as the service stores them: a None-valued one is dropped, datetimes are UTC."""
    return {
        name: as_utc(value) if isinstance(value, datetime) else value
        for name, value in props.items()
        if value is not None
    }


def _mapped(ops: Sequence[RowOp]) -> list[RowOp]:
    return [op if op.kind == "delete" else op._replace(props=_sent_props(op)) for op in ops]


def _sent_props(op: RowOp) -> dict[str, Any]:
    """An op's properties as sent: a merge's None-valued one as ``""`` (a merge cannot remove one,
    and dropping it would keep the row's old value), every other op's dropped (``row_props``)."""
    if op.kind == "merge":
        return row_props({name: "" if value is None else value for name, value in op.props.items()})
    return row_props(op.props)


class Rows(ABC):
    """The row verbs, counted under a lock (webhooks run concurrently), over a backend's ``_``-verbs.
    Background work's verbs first wait while live work runs in this process
    (``http.ratebudget.yield_to_live``), unless ``yields_to_live`` is off (the shared API budget's
    rows: its writes run under locks a live call may need)."""

    def __init__(self, *, yields_to_live: bool = True) -> None:
        self.counters = StoreCounters()
        self._count_lock = threading.Lock()
        self._yields_to_live = yields_to_live

    def _turn(self) -> None:
        if self._yields_to_live:
            yield_to_live()

    def _count(self, *, reads: int = 0, writes: int = 0, transactions: int = 0, operations: int = 0) -> None:
        with self._count_lock:
            self.counters.reads += reads
            self.counters.writes += writes
            self.counters.transactions += transactions
            self.counters.operations += operations

    # -- the verbs RowStateStore calls ---------------------------------------------------------
    def get_row(self, table: str, partition: str, row: str) -> StoredRow | None:
        self._turn()
        self._count(reads=1)
        return self._get(table, partition, row)

    def insert_row(self, table: str, partition: str, row: str, props: Mapping[str, Any]) -> str:
        """Create the row; ``StateConflictError`` if it exists. Returns the new ETag."""
        self._turn()
        self._count(writes=1)
        return self._insert(table, partition, row, row_props(props))

    def replace_row(self, table: str, partition: str, row: str, props: Mapping[str, Any], *, etag: str) -> str:
        """Replace the row if its ETag is still ``etag``; ``StateConflictError`` otherwise (or if gone)."""
        self._turn()
        self._count(writes=1)
        return self._replace(table, partition, row, row_props(props), etag=etag)

    def delete_row(self, table: str, partition: str, row: str, *, etag: str | None = None) -> None:
        """Delete the row (only if its ETag is ``etag``, when given). A missing row is not an error."""
        self._turn()
        self._count(writes=1)
        self._delete(table, partition, row, etag=etag)

    def query_rows(self, table: str, partition: str, rows: Sequence[str]) -> list[StoredRow]:
        """The rows among ``rows`` (≤ 14 keys: one ``$filter``) that exist, in key order."""
        check_key_count(rows)
        return list(self._counted(self._query_pages(table, partition, sorted(set(rows)))))

    def scan_rows(
        self,
        table: str,
        *,
        partition: str | None = None,
        row_prefix: str | None = None,
        at_most: tuple[str, datetime] | None = None,
        page_size: int = 1000,
        where: RowFilter | None = None,
        max_pages: int | None = None,
    ) -> Iterator[StoredRow]:
        """The rows a ``RowFilter`` of these (or ``where``) keeps, in (PartitionKey, RowKey) order,
        fetched a page at a time as the caller iterates: no page is fetched before the first row is
        asked for, and none after ``max_pages`` (so a caller can bound what one call costs)."""
        if where is None:
            where = RowFilter(partition, row_prefix, at_most)
        if len(where.row_prefixes) > MAX_PREFIXES:
            raise ValueError(f"a scan takes at most {MAX_PREFIXES} row prefixes, got {len(where.row_prefixes)}")
        return self._counted(self._scan_pages(table, where, page_size), max_pages=max_pages)

    def transact(self, table: str, partition: str, ops: Sequence[RowOp]) -> None:
        """Apply ``ops`` atomically: all of them or none. ≤ 100 ops, each on a different row."""
        self._turn()
        self._count(transactions=1, operations=len(ops))
        self._transact(table, partition, _mapped(ops))

    def _counted(self, pages: Iterator[Iterable[StoredRow]], *, max_pages: int | None = None) -> Iterator[StoredRow]:
        """The rows of ``pages``, counting one read per page fetched (a failed fetch too)."""
        fetched = 0
        while max_pages is None or fetched < max_pages:
            fetched += 1
            self._turn()
            try:
                page = next(pages)
            except StopIteration:  # nothing left to fetch: nothing was sent
                return
            except BaseException:
                self._count(reads=1)
                raise
            self._count(reads=1)
            yield from page

    # -- what a backend implements (props already mapped by ``row_props``) --------------------------
    @abstractmethod
    def _get(self, table: str, partition: str, row: str) -> StoredRow | None: ...

    @abstractmethod
    def _insert(self, table: str, partition: str, row: str, props: dict[str, Any]) -> str: ...

    @abstractmethod
    def _replace(self, table: str, partition: str, row: str, props: dict[str, Any], *, etag: str) -> str: ...

    @abstractmethod
    def _delete(self, table: str, partition: str, row: str, *, etag: str | None) -> None: ...

    @abstractmethod
    def _query_pages(self, table: str, partition: str, rows: list[str]) -> Iterator[Iterable[StoredRow]]:
        """The pages answering one lookup of ``rows`` (sorted, distinct) in ``partition``."""

    @abstractmethod
    def _scan_pages(self, table: str, where: RowFilter, page_size: int) -> Iterator[Iterable[StoredRow]]:
        """Pages of at most ``page_size`` rows, each fetched when asked for; at least one page
        (maybe empty), as the service answers even an empty scan."""

    @abstractmethod
    def _transact(self, table: str, partition: str, ops: list[RowOp]) -> None:
        """Apply ``ops``; if the backend sends them again (``AzureRows``), it counts the resend."""
