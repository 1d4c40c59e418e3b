"""Both Dataverse tables' delta pages read whole, from the cycle's start (issue 17).

When both tables have a delta link, the cycle does not wait for the change feed to end before it
reads them: a thread of its own reads every delta page of the contacts, then of the leads, looks
their rows' links up (on a second thread, while it reads the next pages: the pages read while a
look-up is busy are looked up together, so that a big delta's look-ups are few and big, which the
state store may answer by reading partitions whole, ``LookupChoice``), and spools each page with
its links to local disk (a page is written there as soon as it is read), while the feed is read. The
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
from dataclasses import dataclass, field
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

    def add_page(self, entity: EntityType, page: DeltaPage) -> None:
        """The records a page names (as it is read; its links come once looked up: ``add_links``)."""
        names = self.records[entity]
        names.update(row_id(entity, row) for row in page.rows)
        names.update(i.lower() for i in page.deleted_ids)
        self.records[EntityType.LEAD].update(lead for row in page.rows if (lead := originating_lead(entity, row)))

    def add_links(self, links: dict[str, Link]) -> None:
        """The persons linked to records a page names (its look-up's links)."""
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
                    page = pickle.load(file)  # noqa: S301 - this cycle's own spool file
                with open(value + ".links", "rb") as file:
                    links = pickle.load(file)  # noqa: S301 - this cycle's own spool file
                os.remove(value)
                os.remove(value + ".links")
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
        """Every page of every table, in order (``_read_pages``), each written to the spool's
        directory as it is read; their links are looked up on a second thread (``_link``), which
        then counts the pages in the census and hands them to their tables' readers in order."""
        read: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pre-read-links")
        try:
            linking = pool.submit(contextvars.copy_context().run, self._link, read)
            try:
                self._read_pages(read)
            finally:
                read.put(_Item("done"))
            linking.result()
        finally:
            pool.shutdown(wait=True)
            while True:  # what the look-ups did not get to, after one failed
                try:
                    item = read.get_nowait()
                except queue.Empty:
                    break
                if item.kind == "rest":
                    _close(item.value)

    def _read_pages(self, read: queue.SimpleQueue[_Item]) -> None:
        rows = 0
        for position, entity in enumerate(self._order):
            delta_link, select = self.tables[entity]
            number = 0
            try:
                pages = self._delta(entity, delta_link, select)
                while not self._stop.is_set():
                    if rows >= self._max_rows:
                        self._not_read.update(self._order[position + 1 :])
                        read.put(_Item("rest", entity, pages))
                        return
                    page = next(pages, None)
                    if page is None:
                        read.put(_Item("end", entity))
                        break
                    path = os.path.join(self._dir, f"{entity.value}-{number}.pickle")
                    with open(path, "wb") as file:
                        pickle.dump(page, file)
                    self._census.add_page(entity, page)
                    row_ids = [row_id(entity, row) for row in page.rows]
                    ids = row_ids + [i.lower() for i in page.deleted_ids]
                    read.put(_Item("page", entity, _Read(path, ids, frozenset(row_ids))))
                    rows += len(page.rows) + len(page.deleted_ids)
                    number += 1
                else:
                    _close(pages)
                    return
            except Exception as err:  # the table's reader raises it as its own
                read.put(_Item("error", entity, err))
                return
        read.put(_Item("complete"))

    def _link(self, read: queue.SimpleQueue[_Item]) -> None:
        """The pages read, in order: those of one table read while the last look-up was busy are
        looked up at once, then spooled; a table's end, rest or read error follows its pages. A
        look-up that fails is its table's error, and the pre-read stops there."""
        held: _Item | None = None
        while not self._stop.is_set():  # (closed: the pages left are not looked up)
            item, held = held or read.get(), None
            if item.kind == "done":
                return
            if item.kind == "complete":
                self.complete.set()
                continue
            assert item.entity is not None
            if item.kind != "page":
                self._queues[item.entity].put((item.kind, item.value))
                continue
            group: list[_Read] = [item.value]
            while True:
                try:
                    more = read.get_nowait()
                except queue.Empty:
                    break
                if more.kind != "page" or more.entity is not item.entity:
                    held = more
                    break
                group.append(more.value)
            if not self._spool(item.entity, group):
                self._stop.set()
                return

    def _spool(self, entity: EntityType, group: Sequence[_Read]) -> bool:
        """Pages read, once their links are found: counted and spooled (False: the look-up failed,
        which its table's reader raises as its own)."""
        spool = self._queues[entity]
        ids = [i for page in group for i in page.ids]
        try:
            links = self._look_up(entity, ids) if ids else {}
        except Exception as err:
            spool.put(("error", err))
            return False
        self._census.add_links(links)
        for page in group:
            with open(page.path + ".links", "wb") as file:
                pickle.dump({i: link for i, link in links.items() if i in page.rows}, file)
            spool.put(("page", page.path))
        return True


@dataclass(frozen=True)
class _Read:
    """A delta page read and written to the spool's directory, whose links are to be looked up."""

    path: str
    ids: list[str]  # its rows' and deletions' ids, lowercase
    rows: frozenset[str]  # its rows' ids (not its deletions'): the links spooled with it


@dataclass(frozen=True)
class _Item:
    """What the reader hands the look-ups (``PreRead._link``), in order."""

    kind: str  # page, end, rest (the rest of the table to read in turn), error, complete, done
    entity: EntityType | None = None
    value: Any = None


def _close(pages: object) -> None:
    close = getattr(pages, "close", None)
    if close is not None:
        close()
