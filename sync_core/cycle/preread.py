"""Both Dataverse tables' delta pages read whole, from the cycle's start (issue 17).

When both tables have a delta link, the cycle does not wait for the change feed to end before it
reads them: a thread of its own reads every delta page of the contacts, then of the leads, looks
their rows' links up (on a second thread, while it reads the next page), and spools each page
with its links to local disk (memory stays bounded by two pages), while the feed is read. The
pages are then applied from the spool in their order, as they would have been read in turn
(``PreRead.pages``; the links the cycle wrote since the pre-read began are read again, as for
any read ahead: ``LinkWatch``).

Knowing every page before the first is applied is what lets the persons step start early (the
engine's head start): ``Census`` says which records the pages name and which persons are linked
to them, so a person it does not claim can be written while the pages are applied, since no page
can take or change it (a page changes the persons linked to its records, and a qualification the
person linked to its contact's originating lead; a match or a new person concerns persons with no
link).

The pre-read stops at ``PRE_READ_ROWS`` rows: a larger delta (a mass update in Dynamics) is read
on from where the spool ends, one page ahead (``rest``), and gives no census. A read error (an
expired token, a refused column) reaches the table's ``pages`` as that read's own; the engine then
reads the tables in turn.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import pickle
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from sync_core.core.entities import originating_lead, row_id
from sync_core.core.models import EntityType, Link
from sync_core.cycle.ledger import LinkWatch
from sync_core.dataverse.client import DeltaPage

PRE_READ_ROWS = 100_000  # rows and deletions spooled at most (both tables): ~20 pages of 5,000

Spooled = Generator[tuple[DeltaPage, dict[str, Link]], None, Iterator[DeltaPage] | None]
Delta = Callable[[EntityType, str, Sequence[str]], Iterator[DeltaPage]]  # (table, delta link, columns)
LookUp = Callable[[EntityType, Sequence[str]], dict[str, Link]]  # links by lowercase Dataverse id


@dataclass
class Census:
    """What the delta pages hold: the records they name, by table (rows and deletions; a contact's
    originating lead counts as a lead named), and the persons linked to those rows and deletions."""

    records: dict[EntityType, set[str]] = field(default_factory=lambda: {entity: set() for entity in EntityType})
    persons: set[int] = field(default_factory=set)

    def add(self, entity: EntityType, page: DeltaPage, links: dict[str, Link]) -> None:
        names = self.records[entity]
        names.update(row_id(entity, row) for row in page.rows)
        names.update(i.lower() for i in page.deleted_ids)
        self.records[EntityType.LEAD].update(lead for row in page.rows if (lead := originating_lead(entity, row)))
        self.persons.update(link.marketo_id for link in links.values())

    def claims(self, link: Link) -> bool:
        """Whether a page may take or change this link's person: it is linked to a record a page
        names (by its link, or by the page's look-up, which a half-written link can make differ)."""
        return link.marketo_id in self.persons or link.dataverse_id.lower() in self.records[link.entity]


class PreRead:
    """The pre-read of ``tables`` (in order: table, delta link, columns), started at once."""

    def __init__(
        self,
        tables: Sequence[tuple[EntityType, str, tuple[str, ...]]],
        *,
        delta: Delta,
        look_up: LookUp,
        watch: LinkWatch,
        directory: str | None = None,
        max_rows: int = PRE_READ_ROWS,
    ) -> None:
        self.tables = {entity: (link, select) for entity, link, select in tables}
        self.watch = watch  # on from before the first look-up; the engine ends it
        self._census = Census()
        self.complete = threading.Event()  # every page of every table spooled: the census holds them all
        self._ended = threading.Event()  # the thread ended (complete, past ``max_rows``, failed or stopped)
        self.failed = False  # a read failed: the engine reads the tables in turn from then on
        self._order = [entity for entity, _, _ in tables]
        self._delta = delta
        self._look_up = look_up
        self._max_rows = max_rows
        self._queues: dict[EntityType, queue.SimpleQueue[tuple[str, Any]]] = {
            entity: queue.SimpleQueue() for entity in self._order
        }
        self._served: set[EntityType] = set()
        self._not_read: set[EntityType] = set()  # left to be read in turn (past ``max_rows``)
        self._stop = threading.Event()
        self._dir = tempfile.mkdtemp(prefix="sync-pages-", dir=directory)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pre-read")
        try:
            self._done: Future[None] = pool.submit(contextvars.copy_context().run, self._run)
        finally:
            pool.shutdown(wait=False)

    def serves(self, entity: EntityType, delta_link: str | None, select: tuple[str, ...]) -> bool:
        """Whether ``pages(entity)`` gives what reading the table now from ``delta_link`` with these
        columns would (once per table; not after a read failed)."""
        return (
            not self.failed
            and entity not in self._served
            and entity not in self._not_read
            and self.tables.get(entity) == (delta_link, select)
        )

    def covers(self, entity: EntityType) -> bool:
        """Whether the table is (being) read here, so that no read ahead of it is needed."""
        return not self.failed and entity in self.tables and entity not in self._not_read

    def pages(self, entity: EntityType) -> Spooled:
        """The table's pages in order, each with those of its rows' links that no write of the cycle
        can have changed since the pre-read began; returns the delta read to go on with, when the
        spool ended before the table did (else None). A read's error is raised here."""
        self._served.add(entity)
        spool = self._queues[entity]
        while True:
            kind, value = spool.get()
            if kind == "page":
                with open(value, "rb") as file:
                    page, links = pickle.load(file)  # noqa: S301 - this cycle's own spool file
                os.remove(value)
                yield page, self.watch.untouched(entity, links)
            elif kind == "rest":
                return value  # type: ignore[no-any-return]
            elif kind == "end":
                return None
            else:
                self.failed = True
                raise value

    def ended(self) -> bool:
        """Whether the pre-read has ended (``census`` would not wait)."""
        return self._ended.is_set()

    def census(self) -> Census | None:
        """Once the pre-read has ended: its census, when it read every page (else None)."""
        self._ended.wait()
        return self._census if self.complete.is_set() else None

    def close(self) -> None:
        """Stop reading, wait for the thread, and remove the spool."""
        self._stop.set()
        with contextlib.suppress(Exception):  # a read not used: its error is not the cycle's
            self._done.result()
        for spool in self._queues.values():
            while True:
                try:
                    kind, value = spool.get_nowait()
                except queue.Empty:
                    break
                if kind == "rest":
                    _close(value)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _run(self) -> None:
        try:
            self._read()
        finally:
            self._ended.set()

    def _read(self) -> None:
        """Every page of every table, in order; each page's links are looked up on a second thread
        while the next page is read (the next table's first, after a table's last), then the page
        is counted in the census and spooled."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pre-read-links")
        try:
            self._read_pages(pool)
        finally:
            pool.shutdown(wait=True)

    def _read_pages(self, pool: ThreadPoolExecutor) -> None:
        rows = 0
        looking: _Looking | None = None  # the last page read, its links being looked up
        for position, entity in enumerate(self._order):
            delta_link, select = self.tables[entity]
            spool = self._queues[entity]
            number = 0
            try:
                pages = self._delta(entity, delta_link, select)
                while not self._stop.is_set():
                    if rows >= self._max_rows:
                        if looking is not None and not self._spool(looking):
                            return
                        self._not_read.update(self._order[position + 1 :])
                        spool.put(("rest", pages))
                        return
                    page = next(pages, None)
                    if page is None and looking is not None and looking.entity is entity:
                        # The table's end goes after its last page, spooled once the next table's
                        # first page is read.
                        looking = replace(looking, last=True)
                        break
                    if looking is not None:
                        if not self._spool(looking):
                            return
                        looking = None
                    if page is None:
                        spool.put(("end", None))
                        break
                    row_ids = [row_id(entity, row) for row in page.rows]
                    ids = row_ids + [i.lower() for i in page.deleted_ids]
                    found = pool.submit(contextvars.copy_context().run, self._look_up, entity, ids) if ids else None
                    looking = _Looking(entity, page, frozenset(row_ids), number, found)
                    rows += len(page.rows) + len(page.deleted_ids)
                    number += 1
                else:
                    _close(pages)
                    return
            except Exception as err:  # the table's reader raises it as its own
                if looking is not None and looking.entity is not entity:
                    with contextlib.suppress(Exception):  # the table before's last page, and its end
                        self._spool(looking)
                spool.put(("error", err))
                return
        if looking is not None and not self._spool(looking):
            return
        self.complete.set()

    def _spool(self, looking: _Looking) -> bool:
        """A page read, once its links are found: counted and spooled (False: the look-up failed,
        which its table's reader raises as its own)."""
        entity, page = looking.entity, looking.page
        spool = self._queues[entity]
        try:
            links = looking.links.result() if looking.links is not None else {}
        except Exception as err:
            spool.put(("error", err))
            return False
        self._census.add(entity, page, links)
        path = os.path.join(self._dir, f"{entity.value}-{looking.number}.pickle")
        with open(path, "wb") as file:
            pickle.dump((page, {i: link for i, link in links.items() if i in looking.rows}), file)
        spool.put(("page", path))
        if looking.last:
            spool.put(("end", None))
        return True


@dataclass(frozen=True)
class _Looking:
    """A delta page read whose links are being looked up (``PreRead._read_pages``)."""

    entity: EntityType
    page: DeltaPage
    rows: frozenset[str]  # its rows' ids (not its deletions'): the links spooled with it
    number: int  # its place in its table's pages
    links: Future[dict[str, Link]] | None
    last: bool = False  # its table's last page: the table's end follows it


def _close(pages: object) -> None:
    close = getattr(pages, "close", None)
    if close is not None:
        close()
