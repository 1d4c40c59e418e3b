"""The pre-read of both tables' delta pages (``cycle.preread``) on its own: each page's links are
looked up while the next page is read (the next table's first, after a table's last); the pages
come out of each table's spool in order, with their links, then the table's end; a look-up that
fails reaches its own table's pages as that table's error, after its pages before."""

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


def two_pages(entity: EntityType) -> list[DeltaPage]:
    return [
        DeltaPage(rows=[{ID[entity]: f"{entity.value}-{n}"}], deleted_ids=[], delta_link="next" if n else None)
        for n in range(2)
    ]


class Recorder:
    """Delta reads and look-ups, each a request of ``seconds``, with when each began and ended."""

    def __init__(self, seconds: float, fail: str | None = None) -> None:
        self.seconds = seconds
        self.fail = fail
        self.spans: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def _span(self, name: str) -> None:
        began = time.monotonic()
        time.sleep(self.seconds)
        with self.lock:
            self.spans[name] = (began, time.monotonic())

    def delta(self, entity: EntityType, link: str, select: Sequence[str]) -> Iterator[DeltaPage]:
        for n, page in enumerate(two_pages(entity)):
            self._span(f"read {entity.value}-{n}")
            yield page

    def look_up(self, entity: EntityType, ids: Sequence[str]) -> dict[str, Link]:
        [record] = ids
        self._span(f"look up {record}")
        if record == self.fail:
            raise RuntimeError("Table Storage did not answer")
        return {record: Link(marketo_id=int(record[-1]) + 1, entity=entity, dataverse_id=record)}


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
