"""The links half of ``RowStateStore``: links and their baselines in ``{prefix}links``, spread over
partitions, and the migration from the one-partition layout (design §4).

Layout 2 (this one). A link is two rows, each carrying the whole link and its baseline: RowKey
``m:{marketo id:012d}`` (found by the Marketo id) and ``d:{entity}:{dataverse id}`` (found by the
Dataverse id). Each row lives in partition ``link-NN``, NN a stable hash of its own RowKey over
``LINK_BUCKETS`` (``_layout.link_partition``). A row is written by merge with every property
(``_link_props``; an absent value is written as ``""``: ``RowOp``), which leaves what a replace
would and costs Azurite a third of one in a table of 100,000 links (README "State store"). A lookup
reads each of its keys' partitions with one ``$filter`` per 14 of its keys there (the service reads
a partition of 1/32 of the rows for it; one request per key cost the client twice the CPU: README
"Performance"), or with a point read per key once the partitions have grown so that those cost less
(``_layout.LookupChoice``), and a cycle's writes spread over 32 partitions, their transactions sent
side by side. The two rows of a link are therefore in two partitions and no longer one transaction;
the writes are ordered so that a reader by either id finds the link before or after the change,
never neither: new rows first, then the rows they replace are deleted. An interrupted write leaves
one row ahead of the other; the cycle that wrote it fails and does not store its cursors, so the
next one writes the link again.

Layout 1 (before): both rows in the one partition ``link``. Until the ``layout``/``links`` row of
``{prefix}state`` says 2, the store reads a link there when layout 2 has no row for it, removes
layout 1 rows wherever it removes a link or replaces one, and ``migrate_links`` moves the rest a
page at a time. A store with no layout-1 row (a fresh deployment) writes the layout row on first
use. Deleting goes layout 1 first, then layout 2; the migration copies (insert-if-absent: a row a
writer has written since is newer and stays), reads the page again, removes the copies of rows
that vanished meanwhile (a delete raced it), then deletes the page. Only one migration runs at a
time (the caller holds the cycle lease); a deleter need not, because of the orders above.

A scratch view (``scratch_links``) runs this same code with partitions ``{name}-NN`` instead of
``link-NN``, outside the range every reader of links keeps to: the go-live plan measures the link
work on the configured store with it, and removes its rows.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from azure.data.tables import EdmType, EntityProperty

from sync_core.core.errors import StateConflictError
from sync_core.core.golive import LinkGrowth
from sync_core.core.models import EntityType, Link
from sync_core.core.syncfilter import Side
from sync_core.state._keys import (
    MAX_KEYS_PER_QUERY,
    RowOp,
    as_utc,
    check_entity,
    dataverse_link_key,
    marketo_link_key,
    pack_transactions,
    to_json,
)
from sync_core.state._layout import (
    LAYOUT,
    LAYOUT_ROW,
    LINK,
    LINK_BUCKETS,
    LINKS_FROM,
    LINKS_TO,
    PAGE,
    LookupChoice,
    RowPlumbing,
    as_int,
    link_bucket,
    link_partition_name,
)
from sync_core.state._rows import RowFilter, StoredRow

logger = logging.getLogger(__name__)

LAYOUT_VERSION = 2
SPREAD = RowFilter(partition_from=LINKS_FROM, partition_to=LINKS_TO, row_prefix="m:")  # every link, layout 2
MERGE_PAGE = 250  # rows per page of each partition's scan in ``iter_links`` (32 pages held at once)
GROWTH_LINKS = 15_000  # the most links ``link_read_growth`` writes (30,000 rows)
GROWTH_SHARE = 10  # it writes this share of the links the table will hold, up to GROWTH_LINKS
GROWTH_KEY_SHARE = 2 * MAX_KEYS_PER_QUERY  # keys a partition it reads by $filter (64 filters in all)
GROWTH_RANGES = 4  # range reads it times each time
GROWTH_PAST_ID = 10**11  # a Marketo id past every person: where its range reads start
SCRATCH = re.compile(r"^[a-z][a-z0-9]{2,30}$")  # a scratch space's name: sorts outside "link"…"link."


@dataclass(frozen=True)
class LinkMigration:
    """One call of ``migrate_links``: rows copied to layout 2, rows left as they were there (written
    since, so newer), rows dropped (deleted meanwhile), and whether layout-1 rows are left."""

    moved: int = 0
    kept: int = 0
    dropped: int = 0
    done: bool = False


class LinkRows(RowPlumbing):
    """Links and baselines (see the module docstring)."""

    _links_migrated = False  # once True (layout 2 only) it stays so: a migration is never undone
    _scratch: str | None = None  # set on a ``scratch_links`` view: its partitions' name

    def scratch_links(self, name: str) -> Self:
        """A view of this store whose links live in partitions ``{name}-00`` … ``{name}-31`` of the
        links table instead of ``link-NN``: the same code, keys, spread, transactions and requests,
        in partitions that no reader of links (lookups, ``iter_links``, the migration, the row
        counts: all keep to ``link``…``link.``) ever reads. For measuring what the link work costs
        on this store (the go-live plan's probe); the caller deletes what it writes."""
        if not SCRATCH.match(name) or name.startswith("link"):
            raise ValueError(f"scratch name {name!r}: 3 to 31 lowercase letters or digits, not starting with 'link'")
        view = copy.copy(self)
        view._scratch = name
        view._links_migrated = True  # a scratch space has no layout 1 rows
        return view

    def _partition(self, row: str) -> str:
        """The partition of a link row (``_layout.link_partition``; in a scratch view, its own)."""
        return self._partition_name(link_bucket(row))

    def _partition_name(self, bucket: int) -> str:
        return link_partition_name(bucket) if self._scratch is None else f"{self._scratch}-{bucket:02d}"

    # -- reads ----------------------------------------------------------------------------------
    def get_links_by_marketo_ids(self, marketo_ids: Iterable[int]) -> dict[int, Link]:
        rows = self._link_rows({marketo_link_key(marketo_id) for marketo_id in marketo_ids})
        links = (_link_from(row) for row in rows)
        return {link.marketo_id: link for link in links}

    def get_links_by_dataverse_ids(self, entity: EntityType, dataverse_ids: Iterable[str]) -> dict[str, Link]:
        asked: dict[str, list[str]] = {}  # row key -> the ids asked for (case may differ)
        for dataverse_id in dataverse_ids:
            asked.setdefault(dataverse_link_key(entity, dataverse_id), []).append(dataverse_id)
        found: dict[str, Link] = {}
        for row in self._link_rows(set(asked)):
            link = _link_from(row)
            for dataverse_id in asked[row.row]:
                found[dataverse_id] = link
        return found

    def _link_rows(self, keys: set[str]) -> list[StoredRow]:
        """The rows of these keys: one ``$filter`` per 14 keys of a partition (``_query_spread``),
        up to ``query_workers`` at once; while layout 1 rows are left, the keys layout 2 lacks are
        then looked up there. In key order."""
        if not keys:
            return []
        legacy = self._legacy_links()
        rows = self._query_spread(self.tables.links, ((self._partition(key), key) for key in keys))
        missing = keys - {row.row for row in rows}
        if legacy and missing:
            rows += self._query(self.tables.links, LINK, missing)
            # A migration may have moved a row between our two reads (copied after the first,
            # removed before the second): the ids found in neither are read once more in layout 2.
            missing -= {row.row for row in rows}
            if missing:
                rows += self._query_spread(self.tables.links, ((self._partition(key), key) for key in missing))
        return sorted(rows, key=lambda row: row.row)

    def iter_links(self, *, after_marketo_id: int | None = None) -> Iterator[Link]:
        """Every link (of the persons with a Marketo id above ``after_marketo_id``) in Marketo id
        order (the backfill's chunks and the initial sync's range look-ups rely on it; the caller
        stops iterating past its range), read a page at a time:
        one scan per partition, merged, so up to ``LINK_BUCKETS`` pages of ``MERGE_PAGE`` rows are
        held at once. While layout 1 rows are left, its scan is merged in too (a layout 2 row wins
        over its old copy), and layout 2 is read again at the end for rows a migration moved
        meanwhile (the ids seen are held in memory until then)."""
        legacy = self._legacy_links()
        after = None if after_marketo_id is None or after_marketo_id < 0 else marketo_link_key(after_marketo_id)

        def scan(partition: str, page_size: int) -> Iterator[StoredRow]:
            where = RowFilter(partition=partition, row_prefix="m:", row_after=after)
            return self._rows.scan_rows(self.tables.links, where=where, page_size=page_size)

        scans = [scan(self._partition_name(bucket), MERGE_PAGE) for bucket in range(LINK_BUCKETS)]
        if legacy:
            scans.append(scan(LINK, PAGE))
        seen: set[str] = set()
        last = None
        for row in heapq.merge(*scans, key=lambda row: (row.row, row.partition == LINK)):
            if row.row == last:
                continue
            last = row.row
            if legacy:
                seen.add(row.row)
            yield _link_from(row)
        if legacy:
            for row in self._rows.scan_rows(self.tables.links, where=SPREAD, page_size=PAGE):
                if row.row not in seen and (after is None or row.row > after):
                    yield _link_from(row)

    def link_read_growth(self, links: int, *, like: Link) -> LinkGrowth:
        """On a scratch view: how a look-up of many links and a range read (``iter_links``) grow
        with the links stored, measured on this store. The view is timed empty, filled with
        copies of ``like`` (a ``GROWTH_SHARE``-th of the ``links`` the table will hold, at most
        ``GROWTH_LINKS``), timed again and emptied: ``GROWTH_KEY_SHARE`` absent keys in every partition read
        by ``$filter`` (full ones of 14 keys, ``query_workers`` at once, as a look-up sends them), a
        point read each for ``2 * SAMPLE`` of them, and ``GROWTH_RANGES`` range reads past every
        person (as a chunk's range read finds its persons not linked yet). The growth is the
        difference per link written; never below zero (timing noise in a small fill). The service
        reads a key's partition for a ``$filter`` (Azurite, the whole table as well), so both
        grow; a point read does not, and is timed once."""
        if self._scratch is None:
            raise ValueError("link_read_growth writes rows: call it on a scratch_links view")
        filled = min(GROWTH_LINKS, links // GROWTH_SHARE)
        keys = self._absent_keys(like.entity)
        filter_empty, range_empty = self._time_link_reads(keys)
        point_keys = keys[: 2 * LookupChoice.SAMPLE]
        started = time.perf_counter()
        self._read_keys(self.tables.links, point_keys, LookupChoice.POINT)
        point = (time.perf_counter() - started) / len(point_keys)
        if filled == 0:
            return LinkGrowth(point_s=point)
        copies = [
            like.model_copy(update={"marketo_id": number, "dataverse_id": str(uuid.uuid4())})
            for number in range(1, filled + 1)
        ]
        try:
            self.upsert_links(copies)
            filter_full, range_full = self._time_link_reads(keys)
        finally:
            self.delete_links(copies)
        return LinkGrowth(
            filter_growth_s=max(0.0, (filter_full - filter_empty) / filled),
            point_s=point,
            range_growth_s=max(0.0, (range_full - range_empty) / filled),
        )

    def _absent_keys(self, entity: EntityType) -> list[tuple[str, str]]:
        """``GROWTH_KEY_SHARE`` keys of records no link has, in each partition (sorted): full
        ``$filter``s."""
        by_partition: dict[str, list[str]] = {self._partition_name(bucket): [] for bucket in range(LINK_BUCKETS)}
        while any(len(keys) < GROWTH_KEY_SHARE for keys in by_partition.values()):
            key = dataverse_link_key(entity, str(uuid.uuid4()))
            keys_there = by_partition[self._partition(key)]
            if len(keys_there) < GROWTH_KEY_SHARE:
                keys_there.append(key)
        return sorted((partition, key) for partition, keys in by_partition.items() for key in keys)

    def _time_link_reads(self, keys: Sequence[tuple[str, str]]) -> tuple[float, float]:
        """Seconds a key of ``keys`` read by ``$filter``s, and seconds a range read past every
        person (``link_read_growth``)."""
        started = time.perf_counter()
        self._read_keys(self.tables.links, keys, LookupChoice.FILTER)
        per_key = (time.perf_counter() - started) / len(keys)
        started = time.perf_counter()
        for _ in range(GROWTH_RANGES):
            for _link in self.iter_links(after_marketo_id=GROWTH_PAST_ID):
                break
        return per_key, (time.perf_counter() - started) / GROWTH_RANGES

    # -- writes ---------------------------------------------------------------------------------
    def upsert_links(self, links: Sequence[Link], *, replaces: Sequence[Link] = ()) -> None:
        written: dict[str, dict[str, Any]] = {}  # row key -> the link's properties
        for link in links:
            m_key = marketo_link_key(link.marketo_id)
            d_key = dataverse_link_key(link.entity, link.dataverse_id)
            if m_key in written or d_key in written:
                raise ValueError(
                    f"upsert_links got two links for marketo id {link.marketo_id} or for "
                    f"{link.entity.value} {link.dataverse_id}; pass one link per record"
                )
            props = _link_props(link)
            check_entity(self._partition(m_key), m_key, props, what=f"link for marketo id {link.marketo_id}")
            written[m_key] = written[d_key] = props
        # A previous version's rows that the new rows do not overwrite must go: the d: row of a
        # lead qualified into a contact, or the m: row of a person merged into another one. They go
        # after the rows that replace them, so a reader finds the old link or the new one.
        stale = {
            key
            for old in replaces
            for key in (marketo_link_key(old.marketo_id), dataverse_link_key(old.entity, old.dataverse_id))
            if key not in written
        }
        upserts: dict[str, list[list[RowOp]]] = {}
        for key, props in written.items():
            upserts.setdefault(self._partition(key), []).append([RowOp("merge", key, props)])
        self._transact_spread(self.tables.links, upserts)
        if stale:
            self._delete_link_rows(stale)

    def delete_links(self, links: Sequence[Link]) -> None:
        keys = {
            key
            for link in links
            for key in (marketo_link_key(link.marketo_id), dataverse_link_key(link.entity, link.dataverse_id))
        }
        if keys:
            self._delete_link_rows(keys)

    def _delete_link_rows(self, keys: set[str]) -> None:
        """Layout 1's rows first (while there may be some: a point delete each, as a transaction
        fails as a whole on a missing row), then layout 2's, one partition per transaction."""
        if self._legacy_links():
            self._side_by_side(lambda key: self._rows.delete_row(self.tables.links, LINK, key), sorted(keys))
        deletes: dict[str, list[list[RowOp]]] = {}
        for key in sorted(keys):
            deletes.setdefault(self._partition(key), []).append([RowOp("delete", key)])
        self._transact_spread(self.tables.links, deletes)

    # -- the layout and its migration -------------------------------------------------------------
    def _legacy_links(self) -> bool:
        """Whether layout 1 rows may be left: one read of the layout row until it says 2 (then never
        again in this process). Without the row, an empty ``link`` partition is a fresh store: the
        row is written and layout 1 is never read."""
        if self._links_migrated:
            return False
        row = self._rows.get_row(self.tables.state, LAYOUT, LAYOUT_ROW)
        if row is None and not any(self._first_legacy_page(page_size=1)):
            with contextlib.suppress(StateConflictError):  # written by another process meanwhile
                self._rows.insert_row(self.tables.state, LAYOUT, LAYOUT_ROW, {"version": LAYOUT_VERSION})
            row = StoredRow(LAYOUT, LAYOUT_ROW, {"version": LAYOUT_VERSION}, "")
        if row is not None and as_int(row.props.get("version", 1)) >= LAYOUT_VERSION:
            self._links_migrated = True
        return not self._links_migrated

    def _first_legacy_page(self, *, page_size: int) -> list[StoredRow]:
        return list(self._rows.scan_rows(self.tables.links, partition=LINK, page_size=page_size, max_pages=1))

    def migrate_links(self, *, pages: int) -> LinkMigration:
        """Move up to ``pages`` pages (1,000 rows each) of layout 1 rows to layout 2; ``done`` when
        none is left (the layout row then says 2). Idempotent and resumable: each page is copied
        and then removed from layout 1, so a run that stops part way leaves rows readable in one
        layout or both, and the next run goes on. The caller holds the cycle lease: no two
        migrations may run at once (see the module docstring)."""
        if pages < 1:
            raise ValueError("pages must be at least 1")
        if not self._legacy_links():
            return LinkMigration(done=True)
        moved = kept = dropped = 0
        for _ in range(pages):
            page = self._first_legacy_page(page_size=PAGE)
            if not page:
                break
            copied, existing = self._copy_to_spread(page)
            kept += len(existing)
            # Rows deleted since the page was read were deleted in layout 2 too, maybe before the
            # copy landed: such a copy goes again.
            again = RowFilter(partition=LINK, row_until=page[-1].row)
            still = {row.row for row in self._rows.scan_rows(self.tables.links, where=again, page_size=PAGE)}
            vanished = {row.row for row in page} - still
            deletes: dict[str, list[list[RowOp]]] = {}
            for key in sorted(vanished & set(copied)):
                deletes.setdefault(self._partition(key), []).append([RowOp("delete", key)])
            self._transact_spread(self.tables.links, deletes)
            moved, dropped = moved + len(set(copied) - vanished), dropped + len(vanished)
            left = [[RowOp("delete", row.row)] for row in page if row.row in still]
            self._transact(self.tables.links, LINK, left)
        done = not self._first_legacy_page(page_size=1)
        if done:
            self._transact(self.tables.state, LAYOUT, [[RowOp("upsert", LAYOUT_ROW, {"version": LAYOUT_VERSION})]])
            self._links_migrated = True
        logger.info("links migration: %d row(s) moved, %d newer kept, %d dropped; done: %s", moved, kept, dropped, done)
        return LinkMigration(moved=moved, kept=kept, dropped=dropped, done=done)

    def _copy_to_spread(self, page: Sequence[StoredRow]) -> tuple[list[str], list[str]]:
        """Insert the page's rows into layout 2 where it has none; (keys copied, keys already there)."""
        inserts: dict[str, list[list[RowOp]]] = {}
        for row in page:
            inserts.setdefault(self._partition(row.row), []).append([RowOp("insert", row.row, dict(row.props))])
        batches = [
            (partition, ops) for partition, groups in sorted(inserts.items()) for ops in pack_transactions(groups)
        ]
        outcomes = self._side_by_side(lambda batch: self._insert_absent(*batch), batches)
        copied = [key for done, _ in outcomes for key in done]
        existing = [key for _, there in outcomes for key in there]
        return copied, existing

    def _insert_absent(self, partition: str, ops: list[RowOp]) -> tuple[list[str], list[str]]:
        """One transaction of inserts; if a row exists (a writer was first), one insert per row."""
        try:
            self._rows.transact(self.tables.links, partition, ops)
            return [op.row for op in ops], []
        except StateConflictError:
            copied: list[str] = []
            existing: list[str] = []
            for op in ops:
                try:
                    self._rows.insert_row(self.tables.links, partition, op.row, op.props)
                    copied.append(op.row)
                except StateConflictError:
                    existing.append(op.row)
            return copied, existing


def _link_props(link: Link) -> dict[str, Any]:
    """A link row's properties, every one of them (an absent value as None, which a merge writes
    as ``""``: ``RowOp``), so that writing them by merge leaves what a replace would."""
    return {
        "marketo_id": EntityProperty(link.marketo_id, EdmType.INT64),
        "entity": link.entity.value,
        "dataverse_id": link.dataverse_id,
        "originating_lead_id": link.originating_lead_id,
        "updated_at": link.updated_at,
        "filtered_out": ",".join(side.value for side in link.filtered_out) or None,
        "filter_key": link.filter_key,
        "baseline": to_json(link.baseline, what=f"baseline of the link for marketo id {link.marketo_id}"),
    }


def _link_from(row: StoredRow) -> Link:
    """A link from its row: an optional property absent (rows written before every one was) or
    ``""`` is None."""
    props: Mapping[str, Any] = row.props
    updated_at = props.get("updated_at") or None
    return Link(
        marketo_id=as_int(props["marketo_id"]),
        entity=EntityType(props["entity"]),
        dataverse_id=str(props["dataverse_id"]),
        baseline=json.loads(props["baseline"]),
        originating_lead_id=props.get("originating_lead_id") or None,
        updated_at=None if updated_at is None else as_utc(updated_at),
        filtered_out=_sides(props.get("filtered_out")),
        filter_key=props.get("filter_key") or None,
    )


def _sides(value: Any) -> tuple[Side, ...]:
    """A link's ``filtered_out`` as stored ("dynamics,marketo"); an unknown side is dropped."""
    if not isinstance(value, str):
        return ()
    known = {side.value for side in Side}
    return tuple(Side(part) for part in value.split(",") if part in known)
