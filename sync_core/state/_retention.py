"""Retention and erasure over rows (``core.retention``, ``privacy``): the bounded prune of the
date-keyed tables, a person's collisions through the person index, the last prune, row counts.
The layout and why these reads are bounded: ``_store``'s docstring."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import datetime

from sync_core.core.errors import StateConflictError
from sync_core.core.retention import PruneReport
from sync_core.state._keys import RowOp, aware, expired_range, marketo_link_key
from sync_core.state._layout import (
    CLAIM,
    DAYS_END,
    FAILURE,
    LINK,
    LINKS_TO,
    MEMBER,
    PAGE,
    PERSON,
    PRUNE,
    PRUNE_PAGE,
    PRUNE_PARTITIONS,
    PRUNE_ROW,
    RowPlumbing,
    as_int,
    page_size,
    person_key,
)
from sync_core.state._rows import MAX_PREFIXES, RowFilter, StoredRow


class RetentionRows(RowPlumbing):
    """The retention half of ``RowStateStore``."""

    def delete_collisions_of(self, marketo_ids: Iterable[int]) -> int:
        """Remove every collision of these persons (and its index row); the number removed.

        One prefix query of the person index per 7 persons, then one transaction per day the
        collisions fell on and one per 100 index rows. Missing ones are ignored."""
        prefixes = sorted({f"{marketo_link_key(marketo_id)[2:]}:" for marketo_id in marketo_ids})
        pointers: list[StoredRow] = []
        for start in range(0, len(prefixes), MAX_PREFIXES):
            where = RowFilter(partition=PERSON, row_prefixes=tuple(prefixes[start : start + MAX_PREFIXES]))
            pointers += self._rows.scan_rows(self.tables.collisions, where=where, page_size=PAGE)
        self._delete_collisions(pointers)
        return len(pointers)

    def _delete_collisions(self, pointers: Sequence[StoredRow]) -> None:
        """The collisions these index rows point to, then the index rows (see the module docstring)."""
        by_day: dict[str, list[list[RowOp]]] = {}
        for pointer in pointers:
            by_day.setdefault(str(pointer.props["day"]), []).append([RowOp("delete", str(pointer.props["row"]))])
        for partition, groups in sorted(by_day.items()):
            self._transact(self.tables.collisions, partition, groups)
        self._transact(self.tables.collisions, PERSON, [[RowOp("delete", pointer.row)] for pointer in pointers])

    # -- retention ----------------------------------------------------------------------------------
    def prune_expired(self, *, now: datetime) -> PruneReport:
        """Remove rows past ``self.retention`` as of ``now``, in bounded work: per table one page of
        at most ``PRUNE_PAGE`` expired rows, deleted from at most ``PRUNE_PARTITIONS`` day partitions
        (plus one transaction for the collisions' index rows). What is left goes next time
        (``more``). A table with nothing expired costs one read, whatever its size."""
        now = aware(now, what="now")
        cutoffs = self.retention.cutoffs(now)
        removed: dict[str, int] = {}
        runs, runs_more = self._expired(self.tables.runs, cutoffs["runs"])
        if runs:
            self._delete_by_partition(self.tables.runs, runs)
            removed["runs"] = len(runs)
        actions, actions_more = self._expired(self.tables.actions, cutoffs["runs"])  # kept as long as runs
        if actions:
            self._delete_by_partition(self.tables.actions, actions)
            removed["actions"] = len(actions)
        collisions, collisions_more = self._expired(self.tables.collisions, cutoffs["collisions"])
        if collisions:
            pointers = [
                StoredRow(PERSON, person_key(as_int(row.props["marketo_id"]), row.partition, row.row), {}, "")
                for row in collisions
            ]
            self._delete_by_partition(self.tables.collisions, collisions)
            self._transact(self.tables.collisions, PERSON, [[RowOp("delete", pointer.row)] for pointer in pointers])
            removed["collisions"] = len(collisions)
        claims = list(
            self._rows.scan_rows(
                self.tables.claims,
                partition=CLAIM,
                at_most=("created_at", cutoffs["claims"]),
                page_size=PRUNE_PAGE,
                max_pages=1,
            )
        )
        claims_more = len(claims) >= PRUNE_PAGE
        if claims:
            # ETag-conditional: a claim a webhook took over meanwhile is not removed (the whole
            # transaction fails with a conflict and the claims wait for the next prune).
            try:
                self._transact(self.tables.claims, CLAIM, [[RowOp("delete", row.row, etag=row.etag)] for row in claims])
                removed["claims"] = len(claims)
            except StateConflictError:
                claims_more = True
        more = runs_more or actions_more or collisions_more or claims_more
        return PruneReport(at=now, removed=removed, more=more)

    def _expired(self, table: str, cutoff: datetime) -> tuple[list[StoredRow], bool]:
        """Up to ``PRUNE_PAGE`` rows of ``table``'s day partitions at or before ``cutoff`` (one page),
        from at most ``PRUNE_PARTITIONS`` partitions; and whether more may be left."""
        first_day, floor = expired_range(cutoff)
        where = RowFilter(partition_from=first_day, partition_to=DAYS_END, row_after=floor)
        page = list(self._rows.scan_rows(table, where=where, page_size=PRUNE_PAGE, max_pages=1))
        partitions = sorted({row.partition for row in page})[:PRUNE_PARTITIONS]
        kept = [row for row in page if row.partition in partitions]
        return kept, len(page) >= PRUNE_PAGE or len(kept) < len(page)

    def _delete_by_partition(self, table: str, rows: Sequence[StoredRow]) -> None:
        by_partition: dict[str, list[list[RowOp]]] = {}
        for row in rows:
            by_partition.setdefault(row.partition, []).append([RowOp("delete", row.row)])
        for partition, groups in sorted(by_partition.items()):
            self._transact(table, partition, groups)

    def get_last_prune(self) -> PruneReport | None:
        row = self._rows.get_row(self.tables.state, PRUNE, PRUNE_ROW)
        return None if row is None else PruneReport.model_validate_json(row.props["data"])

    def put_last_prune(self, report: PruneReport) -> None:
        self._transact(
            self.tables.state,
            PRUNE,
            [[RowOp("upsert", PRUNE_ROW, {"at": report.at, "data": report.model_dump_json()})]],
        )

    def count_rows(self, *, cap: int) -> dict[str, int]:
        """Per table, how many records it holds, counted up to ``cap`` (a link or a collision once,
        not its index rows): ``cap`` means "at least". About ``cap`` / 1000 reads per table."""
        if cap < 1:
            raise ValueError("cap must be at least 1")
        wheres = {
            # Both layouts (``_links``): "link" sorts before "link-00"; while a migration is under
            # way, a link written since the upgrade and not yet migrated counts twice.
            "links": (self.tables.links, RowFilter(partition_from=LINK, partition_to=LINKS_TO, row_prefix="m:")),
            "collisions": (self.tables.collisions, RowFilter(partition_to=DAYS_END)),
            "failures": (self.tables.failures, RowFilter(partition=FAILURE)),
            "runs": (self.tables.runs, RowFilter()),
            "claims": (self.tables.claims, RowFilter(partition=CLAIM)),
            "actions": (self.tables.actions, RowFilter()),
            "members": (self.tables.members, RowFilter(partition=MEMBER)),
            "state": (self.tables.state, RowFilter()),
        }
        return {
            name: sum(
                1 for _ in itertools.islice(self._rows.scan_rows(table, where=where, page_size=page_size(cap)), cap)
            )
            for name, (table, where) in wheres.items()
        }
