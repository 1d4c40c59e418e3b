"""Rows, row versions, alternate-key indexes, the deletion log and transactions.

The store is the simulator's database: one ``TableStore`` per table, a single organisation-wide
``versionnumber`` counter (like SQL ``rowversion``), and an undo log so a bulk call, a change
set or a qualify either happens whole or not at all. Change tracking reads from here: live rows
newer than a version, then deletions newer than it. It validates nothing and knows no HTTP;
callers hold ``Store.lock`` around every read and write.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sandbox.dataverse._schema import TABLES, Table

FIRST_VERSION = 1_000_000  # real orgs start far from zero; small numbers would look like counts


@dataclass(frozen=True)
class Row:
    """One record, never mutated: an update stores a new ``Row``."""

    id: str
    values: dict[str, Any]  # logical name -> value (lookups by logical name hold the GUID)
    version: int


def key_of(values: dict[str, Any], columns: tuple[str, ...]) -> tuple[Any, ...] | None:
    """The index entry of an alternate key (case-insensitive, like the SQL collation); None if any part is null."""
    parts = []
    for column in columns:
        value = values.get(column)
        if value is None:
            return None
        parts.append(value.casefold() if isinstance(value, str) else value)
    return tuple(parts)


class TableStore:
    def __init__(self, table: Table, store: Store) -> None:
        self.table = table
        self._store = store
        self.rows: dict[str, Row] = {}
        self.deleted: dict[str, tuple[int, float]] = {}  # id -> (version, clock time of the delete)
        self._keys: dict[str, dict[tuple[Any, ...], str]] = {name: {} for name, _ in table.alternate_keys}

    def clear(self) -> None:
        self.rows.clear()
        self.deleted.clear()
        for index in self._keys.values():
            index.clear()

    def get(self, record_id: str) -> Row | None:
        return self.rows.get(record_id.lower())

    def by_key(self, key: dict[str, Any]) -> Row | None:
        """The row an alternate key (all its columns) points at."""
        for name, columns in self.table.alternate_keys:
            if set(columns) == set(key):
                entry = key_of(key, columns)
                found = self._keys[name].get(entry) if entry is not None else None
                return self.rows.get(found) if found else None
        raise KeyError(tuple(key))

    def key_conflict(self, values: dict[str, Any], record_id: str) -> tuple[str, str] | None:
        """(key name, columns) of an alternate key another row already holds with these values."""
        for name, columns in self.table.alternate_keys:
            entry = key_of(values, columns)
            owner = self._keys[name].get(entry) if entry is not None else None
            if owner is not None and owner != record_id:
                return name, ",".join(columns)
        return None

    def put(self, row: Row) -> None:
        """Insert or replace a row (undoable inside ``Store.atomic``)."""
        old = self.rows.get(row.id)
        old_deleted = self.deleted.get(row.id)
        self._store.on_undo(lambda: self._restore(row.id, old, old_deleted))
        self._set(row.id, row)
        self.deleted.pop(row.id, None)

    def remove(self, row: Row, version: int) -> None:
        old_deleted = self.deleted.get(row.id)
        self._store.on_undo(lambda: self._restore(row.id, row, old_deleted))
        self._set(row.id, None)
        self.deleted[row.id] = (version, self._store.clock())

    def _restore(self, record_id: str, row: Row | None, deleted: tuple[int, float] | None) -> None:
        self._set(record_id, row)
        if deleted is None:
            self.deleted.pop(record_id, None)
        else:
            self.deleted[record_id] = deleted

    def _set(self, record_id: str, row: Row | None) -> None:
        old = self.rows.get(record_id)
        for name, columns in self.table.alternate_keys:
            index = self._keys[name]
            if old is not None:
                entry = key_of(old.values, columns)
                if entry is not None and index.get(entry) == record_id:
                    del index[entry]
            if row is not None:
                entry = key_of(row.values, columns)
                if entry is not None:
                    index[entry] = record_id
        if row is None:
            self.rows.pop(record_id, None)
        else:
            self.rows[record_id] = row

    def changes(self, since: int, upto: int) -> tuple[list[Row], list[tuple[str, int]]]:
        """Rows changed in (since, upto] by version, then ids deleted in that range by version."""
        changed = sorted((r for r in self.rows.values() if since < r.version <= upto), key=lambda r: r.version)
        gone = sorted(((i, v) for i, (v, _) in self.deleted.items() if since < v <= upto), key=lambda d: d[1])
        return changed, gone

    def prune_deleted(self, before: float) -> None:
        """Forget deletions older than the retention period (the real service does too)."""
        for record_id in [i for i, (_, when) in self.deleted.items() if when < before]:
            del self.deleted[record_id]


class Store:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.tables = {t.logical: TableStore(t, self) for t in TABLES}
        self.version = FIRST_VERSION
        self.expired_below = 0  # delta tokens for versions below this are expired
        self._undo: list[Callable[[], None]] = []
        self._depth = 0

    def primary_name(self, logical: str, record_id: str) -> str | None:
        """The primary name of a record (a lookup's formatted value), or None if there is no such record."""
        tables = self.tables.get(logical)
        row = tables.get(record_id) if tables is not None else None
        if row is None or tables is None:
            return None
        name = row.values.get(tables.table.primary_name)
        return name if isinstance(name, str) else None

    def next_version(self) -> int:
        self.version += 1
        return self.version

    def on_undo(self, action: Callable[[], None]) -> None:
        if self._depth:
            self._undo.append(action)

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """All writes inside happen, or (on any exception) none do; nests like savepoints."""
        mark = len(self._undo)
        self._depth += 1
        try:
            yield
        except BaseException:
            while len(self._undo) > mark:
                self._undo.pop()()
            raise
        finally:
            self._depth -= 1
            if not self._depth:
                self._undo.clear()

    def expire_tokens(self) -> None:
        """Make every delta token handed out so far expired."""
        self.expired_below = self.next_version()
