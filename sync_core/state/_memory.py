"""The in-memory state store: the Table store's exact semantics, kept in a dict, for fast tests.

``MemoryRows`` plays the Table service: a fresh ETag on every write, insert-if-absent,
conditional replace/delete, all-or-nothing transactions of ≤ 100 operations, scans in
(PartitionKey, RowKey) order, and the same refusals (duplicate row or > 100 operations in one
transaction). Every operation holds one lock, so concurrent callers (webhooks) see the same
atomicity the service gives. ``MemoryStateStore`` is ``RowStateStore`` over it, so the memory
store keys, batches and counts exactly as the Table store does. Nothing here is persisted.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from sync_core.core.errors import ApiError, StateConflictError
from sync_core.state._keys import MAX_TRANSACTION_OPS, RowOp, as_utc, check_key_count
from sync_core.state._rows import CountingRows, StoredRow
from sync_core.state._store import RowStateStore

__all__ = ["MemoryRows", "MemoryStateStore"]

_Key = tuple[str, str]  # (PartitionKey, RowKey)


class MemoryRows(CountingRows):
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

    @staticmethod
    def _stored(props: Mapping[str, Any]) -> dict[str, Any]:
        # The service drops None-valued properties and hands datetimes back in UTC.
        return {
            name: as_utc(value) if isinstance(value, datetime) else value
            for name, value in props.items()
            if value is not None
        }

    def get_row(self, table: str, partition: str, row: str) -> StoredRow | None:
        with self._lock:
            self._count(reads=1)
            found = self._table(table).get((partition, row))
            return None if found is None else StoredRow(partition, row, dict(found[0]), found[1])

    def insert_row(self, table: str, partition: str, row: str, props: Mapping[str, Any]) -> str:
        with self._lock:
            self._count(writes=1)
            rows = self._table(table)
            if (partition, row) in rows:
                raise StateConflictError(f"{table}/{partition}/{row}: already exists")
            etag = self._new_etag()
            rows[(partition, row)] = (self._stored(props), etag)
            return etag

    def replace_row(self, table: str, partition: str, row: str, props: Mapping[str, Any], *, etag: str) -> str:
        with self._lock:
            self._count(writes=1)
            rows = self._table(table)
            found = rows.get((partition, row))
            if found is None:
                raise StateConflictError(f"{table}/{partition}/{row}: gone since it was read")
            if found[1] != etag:
                raise StateConflictError(f"{table}/{partition}/{row}: changed since it was read (ETag mismatch)")
            new_etag = self._new_etag()
            rows[(partition, row)] = (self._stored(props), new_etag)
            return new_etag

    def delete_row(self, table: str, partition: str, row: str, *, etag: str | None = None) -> None:
        with self._lock:
            self._count(writes=1)
            rows = self._table(table)
            found = rows.get((partition, row))
            if found is None:
                return
            if etag is not None and found[1] != etag:
                raise StateConflictError(f"{table}/{partition}/{row}: changed since it was read (ETag mismatch)")
            del rows[(partition, row)]

    def query_rows(self, table: str, partition: str, rows: Sequence[str]) -> list[StoredRow]:
        check_key_count(rows)
        with self._lock:
            self._count(reads=1)
            stored = self._table(table)
            found = [(row, stored.get((partition, row))) for row in sorted(set(rows))]
            return [StoredRow(partition, row, dict(hit[0]), hit[1]) for row, hit in found if hit is not None]

    def scan_rows(
        self,
        table: str,
        *,
        partition: str | None = None,
        row_prefix: str | None = None,
        at_most: tuple[str, datetime] | None = None,
        page_size: int = 1000,
    ) -> Iterator[StoredRow]:
        with self._lock:  # a snapshot, taken once, like a consistent first page
            matches = [
                StoredRow(key[0], key[1], dict(props), etag)
                for key, (props, etag) in sorted(self._table(table).items())
                if (partition is None or key[0] == partition)
                and (row_prefix is None or key[1].startswith(row_prefix))
                and (at_most is None or _not_after(props.get(at_most[0]), at_most[1]))
            ]
        self._count(reads=1)
        for index, row in enumerate(matches):
            if index and index % page_size == 0:
                self._count(reads=1)
            yield row

    def transact(self, table: str, partition: str, ops: Sequence[RowOp]) -> None:
        with self._lock:
            self._count(transactions=1, operations=len(ops))
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
            for op in ops:
                if op.kind == "delete":
                    rows.pop((partition, op.row), None)
                else:
                    rows[(partition, op.row)] = (self._stored(op.props), self._new_etag())


def _not_after(value: Any, cutoff: datetime) -> bool:
    return isinstance(value, datetime) and value <= cutoff


class MemoryStateStore(RowStateStore):
    """The state store in memory: same keys, limits, ETags, batching and counters as the Table store."""

    def __init__(self, *, prefix: str = "sync") -> None:
        super().__init__(MemoryRows(), prefix=prefix)
