"""Counters a test reads to check what a client did: calls per entity set and operation, and
records written per operation (API writes and, separately, writes made as a Dynamics user).

Write counts roll back with the store's transactions, so a failed bulk call or change set
counts nothing. This module only counts; it never decides anything.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from typing import Any

from sandbox.dataverse._store import Store


class Stats:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.calls: defaultdict[str, Counter[str]] = defaultdict(Counter)
            self.batch_operations: defaultdict[str, Counter[str]] = defaultdict(Counter)
            self.writes: defaultdict[str, Counter[str]] = defaultdict(Counter)
            self.user_writes: defaultdict[str, Counter[str]] = defaultdict(Counter)
            self.counters: Counter[str] = Counter()

    def call(self, resource: str, operation: str, *, in_batch: bool = False) -> None:
        with self._lock:
            (self.batch_operations if in_batch else self.calls)[resource][operation] += 1

    def count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    def wrote(self, entity_set: str, operation: str, *, by_user: bool) -> None:
        book = self.user_writes if by_user else self.writes
        with self._lock:
            book[entity_set][operation] += 1

        def undo() -> None:
            with self._lock:
                book[entity_set][operation] -= 1

        self._store.on_undo(undo)

    def to_json(self) -> dict[str, Any]:
        def plain(book: defaultdict[str, Counter[str]]) -> dict[str, dict[str, int]]:
            return {name: {op: n for op, n in ops.items() if n} for name, ops in book.items() if any(ops.values())}

        with self._lock:
            out: dict[str, Any] = {
                "requests": self.counters["requests"],
                "throttled": self.counters["throttled"],
                "faults": self.counters["faults"],
                "unauthorized": self.counters["unauthorized"],
                "tokens_issued": self.counters["tokens_issued"],
                "calls": plain(self.calls),
                "batch_operations": plain(self.batch_operations),
                "writes": plain(self.writes),
                "user_writes": plain(self.user_writes),
            }
        out["records"] = {t.table.entity_set: len(t.rows) for t in self._store.tables.values()}
        return out
