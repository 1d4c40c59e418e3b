"""The in-memory state store: the Table store's exact semantics, kept in a dict, for fast tests.

``MemoryRows`` plays the Table service under ``Rows`` (which maps, filters and counts rows for
both backends): a fresh ETag on every write, insert-if-absent, conditional replace/delete,
all-or-nothing transactions of ≤ 100 operations, scans in (PartitionKey, RowKey) order a page at
a time (each page continuing after the last key read, like a continuation token), and the same
refusals (duplicate row or > 100 operations in one transaction). Every operation holds one lock,
so concurrent callers (webhooks) see the same atomicity the service gives. ``MemoryStateStore``
is ``RowStateStore`` over it, so the memory store keys, batches and counts exactly as the Table
store does. Nothing here is persisted.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from sync_core.core.errors import ApiError, StateConflictError
from sync_core.core.retention import Retention
from sync_core.state._keys import MAX_TRANSACTION_OPS, RowOp
from sync_core.state._rows import RowFilter, Rows, StoredRow
from sync_core.state._store import RowStateStore

__all__ = ["MemoryRows", "MemoryStateStore"]

_Key = tuple[str, str]  # (PartitionKey, RowKey)


class MemoryRows(Rows):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()
        self._tables: dict[str, dict[_Key, tuple[dict[str, Any], str]]] = {}
        self._etag_seq = itertools.count(1)
        self._etag_tag = uuid.uuid4().hex[:8]  # ETags from two stores never look alike

    def _new_etag(self) -> str:
        return f'W/"mem-{self._etag_tag}-{next(self._etag_seq)}"'

    def _table(self, name: str) -> dict[_Key, tuple[dict[str, Any], str]]:
        return self._tables.setdefault(name, {})

    def _get(self, table: str, partition: str, row: str) -> StoredRow | None:
        with self._lock:
            found = self._table(table).get((partition, row))
            return None if found is None else StoredRow(partition, row, dict(found[0]), found[1])

    def _insert(self, table: str, partition: str, row: str, props: dict[str, Any]) -> str:
        with self._lock:
            rows = self._table(table)
            if (partition, row) in rows:
                raise StateConflictError(f"{table}/{partition}/{row}: already exists")
            etag = self._new_etag()
            rows[(partition, row)] = (props, etag)
            return etag

    def _replace(self, table: str, partition: str, row: str, props: dict[str, Any], *, etag: str) -> str:
        with self._lock:
            self._check_etag(table, partition, row, etag, missing="gone since it was read")
            new_etag = self._new_etag()
            self._table(table)[(partition, row)] = (props, new_etag)
            return new_etag

    def _delete(self, table: str, partition: str, row: str, *, etag: str | None) -> None:
        with self._lock:
            if etag is None or self._check_etag(table, partition, row, etag, missing=None):
                self._table(table).pop((partition, row), None)

    def _check_etag(self, table: str, partition: str, row: str, etag: str, *, missing: str | None) -> bool:
        """Whether the row is there with ``etag``; False if it is gone and ``missing`` is None."""
        found = self._table(table).get((partition, row))
        if found is None:
            if missing is None:
                return False
            raise StateConflictError(f"{table}/{partition}/{row}: {missing}")
        if found[1] != etag:
            raise StateConflictError(f"{table}/{partition}/{row}: changed since it was read (ETag mismatch)")
        return True

    def _query_pages(self, table: str, partition: str, rows: list[str]) -> Iterator[list[StoredRow]]:
        with self._lock:
            stored = self._table(table)
            found = [(row, stored.get((partition, row))) for row in rows]
            page = [StoredRow(partition, row, dict(hit[0]), hit[1]) for row, hit in found if hit is not None]
        yield page  # one $filter, one page

    def _scan_pages(self, table: str, where: RowFilter, page_size: int) -> Iterator[list[StoredRow]]:
        # Each page is read when asked for and continues after the last key read, as the
        # service's continuation token does: rows written meanwhile behind it are not seen.
        after: _Key | None = None
        while True:
            with self._lock:
                ahead = (
                    (key, props, etag)
                    for key, (props, etag) in self._table(table).items()
                    if (after is None or key > after) and where.keeps(key[0], key[1], props)
                )
                found = heapq.nsmallest(page_size + 1, ahead, key=lambda item: item[0])
            page = [StoredRow(key[0], key[1], dict(props), etag) for key, props, etag in found[:page_size]]
            yield page
            if len(found) <= page_size:
                return
            after = found[page_size - 1][0]

    def _transact(self, table: str, partition: str, ops: list[RowOp]) -> None:
        with self._lock:
            if len(ops) > MAX_TRANSACTION_OPS:
                raise ApiError(
                    f"{len(ops)} operations in one transaction (the limit is {MAX_TRANSACTION_OPS})",
                    service="tables",
                    status=400,
                    code="InvalidInput",
                )
            if len({op.row for op in ops}) != len(ops):
                raise ApiError(
                    "two operations on the same row in one transaction",
                    service="tables",
                    status=400,
                    code="InvalidDuplicateRow",
                )
            rows = self._table(table)
            for index, op in enumerate(ops):
                if op.kind == "insert" and (partition, op.row) in rows:
                    raise StateConflictError(
                        f"{table}/{partition}/{op.row}: already exists (operation {index} of the transaction; "
                        "nothing was written)"
                    )
                found = rows.get((partition, op.row))
                if op.kind == "delete" and op.etag is not None and found is not None and found[1] != op.etag:
                    raise StateConflictError(
                        f"{table}/{partition}/{op.row}: changed since it was read (operation {index} of the "
                        "transaction; nothing was written)"
                    )
            for op in ops:
                if op.kind == "delete":
                    rows.pop((partition, op.row), None)
                elif op.kind == "merge" and (found := rows.get((partition, op.row))) is not None:
                    rows[(partition, op.row)] = ({**found[0], **op.props}, self._new_etag())
                else:
                    rows[(partition, op.row)] = (dict(op.props), self._new_etag())


class MemoryStateStore(RowStateStore):
    """The state store in memory: same keys, limits, ETags, batching and counters as the Table store."""

    def __init__(self, *, prefix: str = "sync", retention: Retention | None = None) -> None:
        super().__init__(MemoryRows(), prefix=prefix, retention=retention)
