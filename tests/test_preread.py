"""The pre-read of both tables' delta pages (``cycle.preread``) on its own: each page's links are
looked up while the next page is read (the next table's first, after a table's last), and the
pages of a table read while a look-up is busy are looked up together; the pages come out of each
table's spool in order, with their own links, then the table's end; a look-up that fails reaches
its own table's pages as that table's error, after its pages before."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from sync_core.core.models import EntityType, Link
from sync_core.cycle.ledger import LinkWatch
from sync_core.cycle.preread import PreRead
from sync_core.dataverse.client import DeltaPage

ID = {EntityType.CONTACT: "contactid", EntityType.LEAD: "leadid"}


def pages_of(entity: EntityType, count: int) -> list[DeltaPage]:
    return [
        DeltaPage(rows=[{ID[entity]: f"{entity.value}-{n}"}], deleted_ids=[], delta_link="next" if n else None)
        for n in range(count)
    ]


class Recorder:
    """Delta reads of ``pages`` pages a table and look-ups, each a request of ``seconds`` (a
    look-up ``look_up_seconds``), with when each began and ended, and the ids each look-up asked for."""

    def __init__(
        self, seconds: float, fail: str | None = None, *, pages: int = 2, look_up_seconds: float | None = None
    ) -> None:
        self.seconds = seconds
        self.look_up_seconds = seconds if look_up_seconds is None else look_up_seconds
        self.fail = fail
        self.pages = pages
        self.spans: dict[str, tuple[float, float]] = {}
        self.asked: list[list[str]] = []
        self.lock = threading.Lock()

    def _span(self, name: str, seconds: float) -> None:
        began = time.monotonic()
        time.sleep(seconds)
        with self.lock:
            self.spans[name] = (began, time.monotonic())

    def delta(self, entity: EntityType, link: str, select: Sequence[str]) -> Iterator[DeltaPage]:
        for n, page in enumerate(pages_of(entity, self.pages)):
            self._span(f"read {entity.value}-{n}", self.seconds)
            yield page

    def look_up(self, entity: EntityType, ids: Sequence[str]) -> dict[str, Link]:
        self.asked.append(list(ids))
        for record in ids:
            self._span(f"look up {record}", self.look_up_seconds / len(ids))
        if self.fail in ids:
            raise RuntimeError("Table Storage did not answer")
        return {record: Link(marketo_id=int(record[-1]) + 1, entity=entity, dataverse_id=record) for record in ids}


def pre_read(recorder: Recorder, tmp_path: object) -> PreRead:
    tables = [(entity, "link", ("col",)) for entity in (EntityType.CONTACT, EntityType.LEAD)]
    return PreRead(tables, delta=recorder.delta, look_up=recorder.look_up, watch=LinkWatch(), directory=str(tmp_path))


def test_pages_come_in_order_with_their_links_each_looked_up_while_the_next_is_read(tmp_path: object) -> None:
    recorder = Recorder(0.05)
    pre = pre_read(recorder, tmp_path)
    try:
        for entity in (EntityType.CONTACT, EntityType.LEAD):
            pages = pre.pages(entity)
            got = [(page.rows[0][ID[entity]], sorted(links)) for page, links in pages]
            assert got == [(f"{entity.value}-{n}", [f"{entity.value}-{n}"]) for n in range(2)]
        census = pre.census()
        assert census is not None
        assert census.persons == {1, 2}
        spans = recorder.spans
        # The contacts' last page looked up while the leads' first is read, and so on.
        for looked, read in (("contact-0", "contact-1"), ("contact-1", "lead-0"), ("lead-0", "lead-1")):
            look_began, look_ended = spans[f"look up {looked}"]
            read_began, read_ended = spans[f"read {read}"]
            assert max(look_began, read_began) < min(look_ended, read_ended), (looked, read)  # they overlap
    finally:
        pre.close()


def test_a_failed_look_up_is_its_own_tables_error_after_its_pages_before(tmp_path: object) -> None:
    pre = pre_read(Recorder(0.0, fail="contact-1"), tmp_path)
    try:
        pages = pre.pages(EntityType.CONTACT)
        page, _ = next(pages)
        assert page.rows[0]["contactid"] == "contact-0"
        with pytest.raises(RuntimeError, match="did not answer"):
            next(pages)
        assert pre.failed
        assert pre.census() is None
    finally:
        pre.close()


def test_the_pages_read_while_a_look_up_is_busy_are_looked_up_together(tmp_path: object) -> None:
    recorder = Recorder(0.01, pages=4, look_up_seconds=0.3)
    pre = pre_read(recorder, tmp_path)
    try:
        for entity in (EntityType.CONTACT, EntityType.LEAD):
            got = [(page.rows[0][ID[entity]], sorted(links)) for page, links in pre.pages(entity)]
            assert got == [(f"{entity.value}-{n}", [f"{entity.value}-{n}"]) for n in range(4)]  # each its own
        census = pre.census()
        assert census is not None
        assert census.persons == {1, 2, 3, 4}
        # The first page alone; the rest of each table together (read while the look-up before ran).
        assert recorder.asked == [
            ["contact-0"],
            ["contact-1", "contact-2", "contact-3"],
            ["lead-0", "lead-1", "lead-2", "lead-3"],
        ]
    finally:
        pre.close()
