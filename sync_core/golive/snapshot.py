"""The initial sync's snapshot: both databases as the plan read them, on local disk (SQLite).

A go-live reads every Marketo person and every Dynamics lead and contact: far more than fits in
memory at a million records. So the plan streams both sides into one SQLite file, keyed by the
matching rule's email form (``core.matching.email_key``), decides by SQL what is linked, created
or left alone (``plan``), and writes the decisions as numbered work items in chunks; the apply
reads a chunk at a time from the same file. The file is the plan: what was reviewed is what is
applied. It holds person data (the mapped values), so it lives in a directory the operator
names and is deleted with ``initial-sync --discard`` once the job is done. No decisions here:
storage and the queries the plan and the apply need.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS person (id INTEGER PRIMARY KEY, email TEXT, known_id TEXT, known_type TEXT,
                                   row TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS record (entity TEXT NOT NULL, id TEXT NOT NULL, email TEXT, qualified INTEGER NOT NULL,
                                   row TEXT NOT NULL, PRIMARY KEY (entity, id));
CREATE TABLE IF NOT EXISTS linked (side TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (side, key));
CREATE TABLE IF NOT EXISTS work (seq INTEGER PRIMARY KEY, chunk INTEGER NOT NULL, kind TEXT NOT NULL,
                                 entity TEXT, marketo_id INTEGER, dataverse_id TEXT, writes_dynamics INTEGER);
CREATE TABLE IF NOT EXISTS ambiguous (grp INTEGER NOT NULL, side TEXT NOT NULL, id TEXT NOT NULL);
"""
INDEXES = """
CREATE INDEX IF NOT EXISTS person_email ON person (email);
CREATE INDEX IF NOT EXISTS person_known ON person (known_id);
CREATE INDEX IF NOT EXISTS record_email ON record (email);
CREATE INDEX IF NOT EXISTS work_chunk ON work (chunk);
"""


class Snapshot:
    """One go-live's SQLite file; a context manager that closes (never deletes) it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-16000;" + SCHEMA)

    # -- meta ---------------------------------------------------------------------------------

    def put_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self, key: str, default: Any = None) -> Any:
        found = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(found[0]) if found else default

    # -- the two sides, as read ---------------------------------------------------------------

    def add_persons(self, rows: Iterable[tuple[int, str | None, str | None, str | None, dict[str, Any]]]) -> int:
        """``(id, email key, microsoftId, microsoftType, row)``; a person read twice keeps the later row."""
        batch = [(pid, email, known, kind, json.dumps(row)) for pid, email, known, kind, row in rows]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO person VALUES (?, ?, ?, ?, ?)", batch)
        return len(batch)

    def add_records(self, entity: str, rows: Iterable[tuple[str, str | None, bool, dict[str, Any]]]) -> int:
        batch = [(entity, rid, email, int(qualified), json.dumps(row)) for rid, email, qualified, row in rows]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO record VALUES (?, ?, ?, ?, ?)", batch)
        return len(batch)

    def add_linked(self, keys: Iterable[tuple[str, str]]) -> None:
        """Ids already linked in the state store (``("m", marketo id)`` or ``(entity, dataverse id)``)."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR IGNORE INTO linked VALUES (?, ?)", keys)

    def write_many(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        """``statement`` once per row, in one transaction."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(statement, rows)

    def index(self) -> None:
        self.db.executescript(INDEXES)

    def count(self, query: str, params: Sequence[Any] = ()) -> int:
        return int(self.db.execute(query, params).fetchone()[0])

    # -- the work the plan decided ------------------------------------------------------------

    def add_work(self, items: Iterable[tuple[int, str, str | None, int | None, str | None, int | None]]) -> None:
        """``(chunk, kind, entity, marketo id, dataverse id, writes dynamics)`` in order."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO work (chunk, kind, entity, marketo_id, dataverse_id, writes_dynamics) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                items,
            )

    def chunk_count(self) -> int:
        return self.count("SELECT coalesce(max(chunk) + 1, 0) FROM work")

    def chunk(self, number: int) -> list[WorkItem]:
        """The work of one chunk with both sides' rows as read."""
        query = (
            "SELECT w.kind, w.entity, w.marketo_id, w.dataverse_id, p.row, r.row FROM work w "
            "LEFT JOIN person p ON p.id = w.marketo_id "
            "LEFT JOIN record r ON r.entity = w.entity AND r.id = w.dataverse_id "
            "WHERE w.chunk = ? ORDER BY w.seq"
        )
        return [
            WorkItem(kind, entity, mid, did, json.loads(prow) if prow else None, json.loads(rrow) if rrow else None)
            for kind, entity, mid, did, prow, rrow in self.db.execute(query, (number,))
        ]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WorkItem:
    """One planned action: ``link`` a person to a record, ``person`` (create one for a Dynamics
    record), ``lead`` (create one for a Marketo-only person)."""

    __slots__ = ("dataverse_id", "dynamics", "entity", "kind", "marketo", "marketo_id")

    def __init__(
        self,
        kind: str,
        entity: str | None,
        marketo_id: int | None,
        dataverse_id: str | None,
        marketo: dict[str, Any] | None,
        dynamics: dict[str, Any] | None,
    ) -> None:
        self.kind = kind
        self.entity = entity
        self.marketo_id = marketo_id
        self.dataverse_id = dataverse_id
        self.marketo = marketo
        self.dynamics = dynamics
