"""One cycle's scratch space on local disk: Marketo changes by person, and ids seen in a full read.

A three-way merge needs both sides' changes of a record together, but the two change feeds
arrive separately and either may hold any number of changes. So the cycle reads the Marketo
feed into this stage first (latest value per person and field), then streams the Dataverse
delta a page at a time, taking the staged changes of each page's persons as it goes, and
finally works through the persons no Dataverse page claimed. Memory stays bounded by the page
size, not by the number of changes: the stage lives in a SQLite file in the temp directory
(Azure Functions gives every instance one), deleted when the cycle ends. It is never state
between cycles: a crash loses it, and the next cycle re-reads the same window. Persons a cycle
cut short by its time budget left (``carry``) are staged by id and the names of the fields that
changed, not their values: those are read from Marketo when the person is taken.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

_SCHEMA = """
CREATE TABLE change (lead_id INTEGER NOT NULL, field TEXT NOT NULL, value TEXT, seq INTEGER NOT NULL,
                     PRIMARY KEY (lead_id, field));
CREATE TABLE person (lead_id INTEGER PRIMARY KEY, taken INTEGER NOT NULL DEFAULT 0, again INTEGER NOT NULL DEFAULT 0);
CREATE TABLE carried (lead_id INTEGER NOT NULL, field TEXT NOT NULL, PRIMARY KEY (lead_id, field));
CREATE TABLE deleted (lead_id INTEGER PRIMARY KEY);
CREATE TABLE seen (entity TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (entity, id));
"""
_CHUNK = 500  # ids per IN (...) list, well under SQLite's 32766 variables


class Stage:
    """The stage of one cycle; a context manager that removes its file."""

    def __init__(self, directory: str | None = None) -> None:
        handle, self.path = tempfile.mkstemp(prefix="sync-stage-", suffix=".sqlite", dir=directory)
        os.close(handle)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-4000;" + _SCHEMA)
        self._seq = 0

    # -- Marketo changes ------------------------------------------------------------------------

    def add_changes(self, changes: Iterable[tuple[int, str, Any]]) -> int:
        """Stage ``(lead id, Marketo field, new value)`` in feed order: the later value of a field wins.
        A person taken already (written while the feed is still read) is marked ``again``: its new
        changes wait for ``repend_again``, once what was taken is recorded."""
        rows = []
        for lead_id, field, value in changes:
            self._seq += 1
            rows.append((lead_id, field, json.dumps(value), self._seq))
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO change VALUES (?, ?, ?, ?) ON CONFLICT (lead_id, field) DO UPDATE "
                "SET value = excluded.value, seq = excluded.seq WHERE excluded.seq > change.seq",
                rows,
            )
            self._db.executemany("INSERT OR IGNORE INTO person (lead_id) VALUES (?)", ((r[0],) for r in rows))
            self._db.executemany(
                "UPDATE person SET again = 1 WHERE lead_id = ? AND taken = 1", ((i,) for i in {r[0] for r in rows})
            )
        return len(rows)

    def take(self, lead_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The staged changes of these persons (Marketo field -> latest value), marked taken."""
        found: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(sorted(set(lead_ids))):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT c.lead_id, c.field, c.value FROM change c JOIN person p ON p.lead_id = c.lead_id "  # noqa: S608 - only placeholders
                f"WHERE p.taken = 0 AND c.lead_id IN ({marks})",
                chunk,
            ).fetchall()
            for lead_id, field, value in rows:
                found.setdefault(lead_id, {})[field] = json.loads(value)
            self._db.execute(f"UPDATE person SET taken = 1 WHERE taken = 0 AND lead_id IN ({marks})", chunk)  # noqa: S608
        return found

    def untake(self, lead_ids: Iterable[int]) -> None:
        """These persons are pending again (taken and not applied); their staged changes are kept."""
        for chunk in _chunks(sorted(set(lead_ids))):
            marks = ",".join("?" * len(chunk))
            self._db.execute(f"UPDATE person SET taken = 0, again = 0 WHERE lead_id IN ({marks})", chunk)  # noqa: S608

    def repend_again(self) -> int:
        """The persons changed again after they were taken are pending again (``add_changes``): once
        the writes of what was taken are recorded, the merge against their new baselines writes
        only what changed since. How many."""
        return self._db.execute("UPDATE person SET taken = 0, again = 0 WHERE again = 1").rowcount

    def add_carried(self, persons: Iterable[tuple[int, Iterable[str]]]) -> int:
        """Stage persons a cut cycle left (``carry``) with the fields that changed: pending, their
        values unknown until taken; how many persons."""
        rows = [(lead_id, field) for lead_id, fields in persons for field in fields]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO carried (lead_id, field) VALUES (?, ?)", rows)
            self._db.executemany("INSERT OR IGNORE INTO person (lead_id) VALUES (?)", ((r[0],) for r in rows))
        return len({r[0] for r in rows})

    def carried_among(self, lead_ids: Iterable[int]) -> dict[int, set[str]]:
        """Which of these persons are carried and not taken yet, with their changed fields (to read)."""
        found: dict[int, set[str]] = {}
        for chunk in _chunks(sorted(set(lead_ids))):
            marks = ",".join("?" * len(chunk))
            for lead_id, field in self._db.execute(
                f"SELECT c.lead_id, c.field FROM carried c JOIN person p ON p.lead_id = c.lead_id "  # noqa: S608 - only placeholders
                f"WHERE p.taken = 0 AND c.lead_id IN ({marks})",
                chunk,
            ):
                found.setdefault(lead_id, set()).add(field)
        return found

    def changed_among(self, lead_ids: Sequence[int], fields: Sequence[str]) -> set[int]:
        """Which of these persons have a change (staged or carried) of any of ``fields``."""
        found: set[int] = set()
        if not fields:
            return found
        names = ",".join("?" * len(fields))
        for chunk in _chunks(sorted(set(lead_ids))):
            marks = ",".join("?" * len(chunk))
            query = (
                f"SELECT lead_id FROM change WHERE lead_id IN ({marks}) AND field IN ({names}) "  # noqa: S608 - only placeholders
                f"UNION SELECT lead_id FROM carried WHERE lead_id IN ({marks}) AND field IN ({names})"
            )
            found.update(row[0] for row in self._db.execute(query, (*chunk, *fields, *chunk, *fields)))
        return found

    def pending_fields(self, size: int) -> Iterator[list[tuple[int, list[str]]]]:
        """Persons not taken yet with the names of their changed fields (staged or carried), ``size``
        at a time in id order: what a cut cycle carries to the next tick."""
        for ids in self.pending_ids(size):
            fields: dict[int, set[str]] = {lead_id: set() for lead_id in ids}
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                for lead_id, field in self._db.execute(
                    f"SELECT lead_id, field FROM change WHERE lead_id IN ({marks}) "  # noqa: S608 - only placeholders
                    f"UNION SELECT lead_id, field FROM carried WHERE lead_id IN ({marks})",
                    (*chunk, *chunk),
                ):
                    fields[lead_id].add(field)
            yield [(lead_id, sorted(names)) for lead_id, names in fields.items()]

    def pending_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM person WHERE taken = 0").fetchone()[0])

    def pending_ids(self, size: int) -> Iterator[list[int]]:
        """Persons not taken yet, ``size`` at a time, in id order (each chunk read when asked for)."""
        return self._id_chunks(
            "SELECT lead_id FROM person WHERE taken = 0 AND lead_id > ? ORDER BY lead_id LIMIT ?", size
        )

    def _id_chunks(self, query: str, size: int) -> Iterator[list[int]]:
        """``query`` (ids after ``?``, at most ``?``) paged by the last id: a chunk read when asked for."""
        after = -1
        while True:
            ids = [row[0] for row in self._db.execute(query, (after, size))]
            if not ids:
                return
            yield ids
            after = ids[-1]

    # -- Marketo deletes ------------------------------------------------------------------------

    def add_deleted(self, lead_ids: Iterable[int]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO deleted VALUES (?)", ((i,) for i in lead_ids))

    def deleted_among(self, lead_ids: Sequence[int]) -> set[int]:
        """Which of these persons the deletions feed staged."""
        found: set[int] = set()
        for chunk in _chunks(sorted(set(lead_ids))):
            marks = ",".join("?" * len(chunk))
            query = f"SELECT lead_id FROM deleted WHERE lead_id IN ({marks})"  # noqa: S608 - only placeholders
            found.update(row[0] for row in self._db.execute(query, chunk))
        return found

    def deleted_ids(self, size: int) -> Iterator[list[int]]:
        return self._id_chunks("SELECT lead_id FROM deleted WHERE lead_id > ? ORDER BY lead_id LIMIT ?", size)

    # -- ids seen in a full re-read (to find what was deleted while the delta token was expired) --

    def add_seen(self, entity: str, ids: Iterable[str]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", ((entity, i.lower()) for i in ids))

    def unseen(self, entity: str, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the full read of ``entity`` did not return."""
        missing = {i.lower() for i in ids}
        for chunk in _chunks(sorted(missing)):
            marks = ",".join("?" * len(chunk))
            for (found,) in self._db.execute(
                f"SELECT id FROM seen WHERE entity = ? AND id IN ({marks})",  # noqa: S608 - only placeholders
                (entity, *chunk),
            ):
                missing.discard(found)
        return missing

    # -- lifetime ---------------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
