"""``initial-sync --plan``: read both databases into the snapshot and decide, writing nothing to
either service, what the apply will do and what it will cost.

Reading: Marketo through Bulk Lead Extract, one job per ≤ 31-day ``createdAt`` window from the
oldest person to the moment the plan started (persons created since are the cycle's: its change
feed starts at that moment); each file streamed into the snapshot. Dataverse through its paged
change-tracking read (1,000 rows a page: see ``READ_PAGE``), whose last page gives the delta link
the cycle starts from. The links already in the state store are read too (those persons and
records are the cycle's already).

Deciding, by the rules of ``core.matching`` and ``core.merge``: a person that names a record by
``microsoftId``/``microsoftType`` is linked to it; otherwise persons and records meet by the
matching rule's email form. An email held by exactly one person and one record links them; by
more than one person or more than one record (qualified leads aside: they live on as their
contact) it is **ambiguous**: listed by ids, nothing linked or created. A record no person has
the email of gets a person (B8); a Marketo-only person is left alone or gets a lead
(``SYNC_INITIAL_MARKETO_ONLY``). Every link's first-contact merge is computed here, with the
policy's winners, so the plan can count conflicts per field and what each side will be written,
and validated (``core.convert``) so it can count what either side would refuse. The work goes
into the snapshot in chunks (``core.golive.CHUNK_SIZE``), which the apply takes one at a time.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sync_core.core import golive
from sync_core.core.convert import to_dataverse, to_marketo
from sync_core.core.entities import (
    CREATED_ON,
    ENTITY_SETS,
    PRIMARY_IDS,
    is_qualified_lead,
    microsoft_fields,
    read_columns,
    row_id,
)
from sync_core.core.errors import ApiError
from sync_core.core.fieldmap import FieldMap, FieldValueError, canonical_values
from sync_core.core.golive import ChunkCost, InitialPolicy, LocalCosts, MarketoOnlyPolicy, Share, WorkKind
from sync_core.core.matching import email_key
from sync_core.core.merge import merge_record
from sync_core.core.merge import plan as write_plan
from sync_core.core.models import EntityType, Link
from sync_core.cycle.engine import MARKETO_CHANGES, dataverse_cursor
from sync_core.cycle.schema_cache import ActiveSchema
from sync_core.golive.snapshot import Snapshot, WorkItem
from sync_core.marketo._bulk import windows as export_windows
from sync_core.marketo.client import ExportJob
from sync_core.state import StateStore
from sync_core.wiring.services import Services

log = logging.getLogger(__name__)

ENTITIES = (EntityType.CONTACT, EntityType.LEAD)
MARKETO_EXTRA_FIELDS = ("id", "createdAt", "microsoftId", "microsoftType")
EXPORTS_IN_FLIGHT = 2  # Marketo processes two export jobs at a time (api-protocols §A11)
# Rows per page of the Dataverse read. The service allows 5,000, but the plan's memory then grows
# page after page (a 1.7 MB answer each; not Python objects, and not given back by malloc_trim),
# 230 MB over 400,000 rows; at 1,000 a page it stays at 110 MB, for 5 times the (quota-free) reads.
READ_PAGE = 1000
AMBIGUOUS_SHOWN = 100  # groups printed in the plan; all of them are in the snapshot
Progress = Callable[[str, int, int | None], None]
PersonRow = tuple[int, str | None, str | None, str | None, dict[str, Any]]  # id, email key, known id/type, row


@dataclass
class PlanReport:
    """What ``--plan`` prints (JSON) and the apply is checked against. Ids only, never values."""

    job_id: str
    planned_at: str
    snapshot: str
    read: dict[str, int] = field(default_factory=dict)  # rows read per side
    already_linked: int = 0
    link: dict[str, int] = field(default_factory=dict)  # per entity: persons linked to a record
    link_by_id: int = 0  # of those, named by microsoftId
    create_persons: dict[str, int] = field(default_factory=dict)  # per entity of the record
    create_leads: int = 0
    marketo_only_left: int = 0
    qualified_leads_skipped: int = 0
    ambiguous: dict[str, Any] = field(default_factory=dict)  # {"groups", "records", "shown": [...]}
    conflicts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # entity → field → winner → n
    writes: dict[str, int] = field(default_factory=dict)  # records written per side and kind
    refused: dict[str, int] = field(default_factory=dict)  # records either side would refuse (validation)
    chunks: int = 0
    api_calls: dict[str, Any] = field(default_factory=dict)
    eta_seconds: float = 0.0
    eta: dict[str, Any] = field(default_factory=dict)  # the ETA's parts and what it assumed
    eta_queue: dict[str, Any] = field(default_factory=dict)  # the same on the job queue, when one is configured
    read_seconds: float = 0.0
    policy: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -- reading ----------------------------------------------------------------------------------


def read_both_sides(
    services: Services,
    snapshot: Snapshot,
    schema: ActiveSchema,
    *,
    started: datetime,
    since: datetime | None,
    poll_seconds: float,
    progress: Progress,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Stream Marketo (bulk export windows) and Dataverse (full change-tracking reads) into the
    snapshot; the cycle's starting cursors and the counts."""
    field_map = schema.field_map
    marketo, dataverse = services.marketo, services.dataverse
    cursors: dict[str, str] = {MARKETO_CHANGES: marketo.get_paging_token(started)}
    read: dict[str, int] = {}
    email_mapping = field_map.email_field()
    email_field = email_mapping.marketo if email_mapping else None
    for entity in ENTITIES:
        columns = read_columns(entity, field_map.columns(entity))
        entity_email = field_map.email_field(entity)
        email_column = entity_email.column(entity) if entity_email else None
        done = 0
        link: str | None = None
        for page in dataverse.iter_changes(ENTITY_SETS[entity], select=columns, delta_link=None, page_size=READ_PAGE):
            done += snapshot.add_records(
                entity.value,
                (
                    (
                        row_id(entity, row),
                        email_key(row.get(email_column)) if email_column else None,
                        is_qualified_lead(entity, row),
                        row,
                    )
                    for row in page.rows
                ),
            )
            link = page.delta_link or link
            progress(f"read dataverse {ENTITY_SETS[entity]}", done, None)
        read[ENTITY_SETS[entity]] = done
        if link:
            cursors[dataverse_cursor(entity)] = link
    fields = list(dict.fromkeys([*MARKETO_EXTRA_FIELDS, *field_map.marketo_fields]))
    oldest = since or _oldest_person(services, started)
    windows = export_windows(oldest, started)
    persons = 0

    def sink(rows: Iterator[dict[str, str | None]]) -> int:
        def parsed() -> Iterator[PersonRow]:
            for row in rows:
                if not row.get("id"):
                    continue
                known = (row.get("microsoftId") or "").strip().lower() or None
                kind = (row.get("microsoftType") or "").strip().lower() or None
                yield int(str(row["id"])), email_key(row.get(email_field)) if email_field else None, known, kind, row

        return _in_batches(snapshot, parsed())

    # Marketo processes two export jobs at a time: keep two going, read each file as it completes.
    pending = list(windows)
    active: list[ExportJob] = []
    done = 0
    while pending or active:
        while pending and len(active) < EXPORTS_IN_FLIGHT:
            start, end = pending.pop(0)
            job = marketo.create_lead_export(fields, created_from=start, created_to=end)
            active.append(marketo.enqueue_lead_export(job.export_id))
        job = active[0]
        while not job.finished:
            sleep(poll_seconds)
            job = marketo.get_lead_export(job.export_id)
        active.pop(0)
        if job.status != "Completed":
            raise ApiError(f"marketo bulk export {job.export_id} ended {job.status}", service="marketo")
        persons += marketo.read_lead_export(job.export_id, sink)
        done += 1
        progress("read marketo windows", done, len(windows))
    read["persons"] = persons
    read["windows"] = len(windows)
    links = 0
    batch: list[tuple[str, str]] = []
    for stored in services.store.iter_links():
        batch += [("m", str(stored.marketo_id)), (stored.entity.value, stored.dataverse_id.lower())]
        links += 1
        if len(batch) >= 10_000:
            snapshot.add_linked(batch)
            batch = []
    snapshot.add_linked(batch)
    read["links"] = links
    snapshot.index()
    return {"cursors": cursors, "read": read}


def _in_batches(
    snapshot: Snapshot, rows: Iterator[tuple[int, str | None, str | None, str | None, dict[str, Any]]]
) -> int:
    total = 0
    batch: list[tuple[int, str | None, str | None, str | None, dict[str, Any]]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= 5000:
            total += snapshot.add_persons(batch)
            batch = []
    return total + snapshot.add_persons(batch)


def _oldest_person(services: Services, started: datetime) -> datetime:
    """When the oldest person was created. Marketo ids only grow, so the lowest ids are the oldest
    persons: one Get Leads call over ids 1-300. None of them left (deleted): ``--since`` is needed."""
    found = services.marketo.get_leads(list(range(1, 301)), fields=["id", "createdAt"])
    known = [moment for person in found if (moment := _parse(person.get("createdAt"))) is not None]
    if not known:
        raise OldestPersonUnknownError(
            "the Marketo persons with the lowest ids (1-300) are gone, so the oldest person's date is not known: "
            "give --since YYYY-MM-DD (when the instance got its first person)"
        )
    return min(known)


class OldestPersonUnknownError(ValueError):
    """Where the Marketo export windows start cannot be found: ``--since`` is needed."""


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- deciding -----------------------------------------------------------------------------------

_DECIDE = """
CREATE TABLE p AS SELECT id, email, known_id, known_type FROM person
  WHERE NOT EXISTS (SELECT 1 FROM linked l WHERE l.side = 'm' AND l.key = CAST(person.id AS TEXT));
CREATE TABLE r AS SELECT entity, id, email FROM record
  WHERE qualified = 0 AND NOT EXISTS (SELECT 1 FROM linked l WHERE l.side = record.entity AND l.key = record.id);
CREATE UNIQUE INDEX p_id ON p (id);
CREATE INDEX p_email ON p (email);
CREATE UNIQUE INDEX r_id ON r (entity, id);
CREATE INDEX r_email ON r (email);
CREATE TABLE idm AS SELECT min(p.id) AS mid, r.entity AS entity, r.id AS did FROM p
  JOIN r ON r.id = p.known_id AND r.entity = p.known_type GROUP BY r.entity, r.id HAVING count(*) = 1;
CREATE INDEX idm_mid ON idm (mid);
CREATE INDEX idm_did ON idm (entity, did);
CREATE TABLE g AS SELECT email, sum(side = 'm') AS pm, sum(side = 'r') AS rd,
  sum(side = 'm' AND free) AS pm_free, sum(side = 'r' AND free) AS rd_free FROM (
    SELECT email, 'm' AS side, (EXISTS (SELECT 1 FROM p WHERE p.id = person.id)) AS free FROM person
      WHERE email IS NOT NULL AND NOT EXISTS (SELECT 1 FROM idm WHERE idm.mid = person.id)
    UNION ALL
    SELECT email, 'r', (EXISTS (SELECT 1 FROM r WHERE r.entity = record.entity AND r.id = record.id)) FROM record
      WHERE email IS NOT NULL AND qualified = 0
        AND NOT EXISTS (SELECT 1 FROM idm WHERE idm.entity = record.entity AND idm.did = record.id)
  ) GROUP BY email;
CREATE UNIQUE INDEX g_email ON g (email);
"""


def decide(
    snapshot: Snapshot,
    schema: ActiveSchema,
    policy: InitialPolicy,
    *,
    batch_size: int,
    share: Share,
    report: PlanReport,
    chunk_size: int = golive.CHUNK_SIZE,
) -> list[ChunkCost]:
    """Write the work into the snapshot, in chunks, and fill ``report`` with what it will do (its
    ETA at ``golive.PUBLISHED`` costs: ``estimate`` replaces it); every chunk's cost, in order."""
    db = snapshot.db
    for name in ("p", "r", "idm", "g", "pairs", "creating"):
        db.execute(f"DROP TABLE IF EXISTS {name}")
    db.executescript(_DECIDE)
    db.execute("DELETE FROM work")
    db.execute("DELETE FROM ambiguous")
    field_map = schema.field_map
    report.already_linked = snapshot.count("SELECT count(*) FROM linked WHERE side = 'm'")
    report.qualified_leads_skipped = snapshot.count("SELECT count(*) FROM record WHERE qualified = 1")
    report.link_by_id = snapshot.count("SELECT count(*) FROM idm")
    builder = _ChunkBuilder(snapshot, batch_size=batch_size, share=share, chunk_size=chunk_size)
    # Links: by id, then by email (one person, one record, both free, nobody else holding it).
    db.executescript("CREATE TABLE pairs (mid INTEGER PRIMARY KEY, entity TEXT, did TEXT, writes INTEGER);")
    db.execute(
        "INSERT INTO pairs SELECT mid, entity, did, NULL FROM idm UNION ALL "
        "SELECT p.id, r.entity, r.id, NULL FROM g JOIN p ON p.email = g.email JOIN r ON r.email = g.email "
        "WHERE g.pm = 1 AND g.rd = 1 AND p.id NOT IN (SELECT mid FROM idm)"
    )
    flags: list[tuple[int, int]] = []
    join = (
        "SELECT pairs.mid, pairs.entity, person.row, record.row FROM pairs JOIN person ON person.id = pairs.mid "
        "JOIN record ON record.entity = pairs.entity AND record.id = pairs.did"
    )
    for mid, entity_name, person_json, row_json in list_batches(snapshot, join):
        entity = EntityType(entity_name)
        writes = _first_contact(
            field_map, schema, policy, entity, json.loads(person_json), json.loads(row_json), report
        )
        flags.append((int(writes), mid))
        if len(flags) >= 5000:
            snapshot.write_many("UPDATE pairs SET writes = ? WHERE mid = ?", flags)
            flags = []
    snapshot.write_many("UPDATE pairs SET writes = ? WHERE mid = ?", flags)
    for entity in ENTITIES:
        report.link[entity.value] = snapshot.count("SELECT count(*) FROM pairs WHERE entity = ?", (entity.value,))
        for flag in (1, 0):
            builder.add(
                WorkKind.LINK,
                entity.value,
                list_batches(
                    snapshot,
                    "SELECT mid, did, writes FROM pairs WHERE entity = ? AND writes = ? ORDER BY mid",
                    (entity.value, flag),
                ),
            )
    # Persons for Dynamics records nobody has the email of (or without an email).
    for entity in ENTITIES:
        query = (
            "SELECT r.id, r.email IS NOT NULL, record.row FROM r JOIN record ON record.entity = r.entity "
            "AND record.id = r.id LEFT JOIN g ON g.email = r.email WHERE r.entity = ? AND NOT EXISTS "
            "(SELECT 1 FROM idm WHERE idm.entity = r.entity AND idm.did = r.id) "
            "AND (r.email IS NULL OR (g.pm = 0 AND g.rd = 1)) ORDER BY r.email IS NULL, r.id"
        )
        db.execute("DROP TABLE IF EXISTS creating")
        db.execute("CREATE TABLE creating (seq INTEGER PRIMARY KEY, did TEXT, has_email INTEGER)")
        batch: list[tuple[str, int]] = []
        for did, has_email, row_json in list_batches(snapshot, query, (entity.value,)):
            _person_payload(field_map, schema, entity, json.loads(row_json), report)
            batch.append((did, int(has_email)))
            if len(batch) >= 5000:
                snapshot.write_many("INSERT INTO creating (did, has_email) VALUES (?, ?)", batch)
                batch = []
        snapshot.write_many("INSERT INTO creating (did, has_email) VALUES (?, ?)", batch)
        report.create_persons[entity.value] = snapshot.count("SELECT count(*) FROM creating")
        builder.add(
            WorkKind.PERSON,
            entity.value,
            list_batches(snapshot, "SELECT NULL, did, has_email FROM creating ORDER BY seq"),
        )
    # Marketo-only persons.
    only = (
        "SELECT p.id FROM p LEFT JOIN g ON g.email = p.email WHERE p.id NOT IN (SELECT mid FROM idm) "
        "AND (p.email IS NULL OR (g.pm = 1 AND g.rd = 0))"
    )
    if policy.marketo_only is MarketoOnlyPolicy.CREATE_LEAD:
        for (person_json,) in list_batches(snapshot, f"SELECT row FROM person WHERE id IN ({only})"):  # noqa: S608
            _lead_payload(field_map, schema, json.loads(person_json), report)
        report.create_leads = snapshot.count(f"SELECT count(*) FROM ({only})")  # noqa: S608 - constant text
        builder.add(
            WorkKind.LEAD,
            EntityType.LEAD.value,
            list_batches(snapshot, f"SELECT id, NULL, 0 FROM ({only}) ORDER BY id"),  # noqa: S608 - constant text
        )
    else:
        report.marketo_only_left = snapshot.count(f"SELECT count(*) FROM ({only})")  # noqa: S608 - constant text
    builder.flush()
    _ambiguous(snapshot, report)
    report.chunks = snapshot.chunk_count()
    report.api_calls = builder.calls()
    report.eta_seconds = round(builder.time.seconds, 1)
    return builder.costs


def list_batches(snapshot: Snapshot, query: str, params: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The rows of ``query`` read 2,000 at a time by a second connection, so that the first may
    write while they are read (a read statement and writes on one connection do not mix well)."""
    reader = sqlite3.connect(snapshot.path, check_same_thread=False)
    try:
        cursor = reader.execute(query, params)
        while rows := cursor.fetchmany(2000):
            yield from rows
    finally:
        reader.close()


def _first_contact(
    field_map: FieldMap,
    schema: ActiveSchema,
    policy: InitialPolicy,
    entity: EntityType,
    person: Mapping[str, Any] | None,
    row: Mapping[str, Any] | None,
    report: PlanReport,
) -> bool:
    """The pair's first-contact merge, counted into ``report``; whether Dynamics gets a write
    (the same computation ``Applier.sync_linked`` makes when it links them)."""
    mappings = field_map.for_entity(entity)
    m_values = canonical_values(mappings, person or {}, side="marketo")
    try:
        d_values = canonical_values(mappings, row or {}, side=entity.value)
    except FieldValueError:
        _count(report.refused, "dynamics_unreadable")
        return False
    merge = merge_record(
        mappings, entity, marketo=m_values, dynamics=d_values, baseline={}, first_contact=policy.first_contact
    )
    for collision in merge.collisions:
        per_field = report.conflicts.setdefault(entity.value, {}).setdefault(collision.key, {})
        _count(per_field, collision.winner)
    planned = write_plan(field_map, entity, merge, metadata=schema.metadata.get(entity), described=schema.described)
    if merge.to_marketo:
        if planned.marketo_problems:
            _count(report.refused, "marketo_update")
        else:
            _count(report.writes, "marketo_values_updated")
    _count(report.writes, "marketo_linked")
    if merge.to_dynamics:
        if planned.dynamics_problems:
            _count(report.refused, f"dynamics_update_{entity.value}")
            return False
        _count(report.writes, f"dynamics_updated_{entity.value}")
        return True
    return False


def _person_payload(
    field_map: FieldMap, schema: ActiveSchema, entity: EntityType, row: Mapping[str, Any], report: PlanReport
) -> None:
    """Count a person to create as ``NewRecords.create_persons`` will build it."""
    try:
        values = canonical_values(field_map.for_entity(entity), row, side=entity.value)
    except FieldValueError:
        _count(report.refused, "person_unreadable")
        return
    person = to_marketo(field_map, entity, values, described=schema.described or {}, creating=True)
    if person.problems:
        _count(report.refused, "person_refused")
    else:
        _count(report.writes, "persons_created")


def _lead_payload(field_map: FieldMap, schema: ActiveSchema, person: Mapping[str, Any], report: PlanReport) -> None:
    entity = EntityType.LEAD
    values = canonical_values(field_map.for_entity(entity), person, side="marketo")
    lead = to_dataverse(field_map, entity, values, metadata=schema.metadata.get(entity), creating=True)
    if lead.problems:
        _count(report.refused, "lead_refused")
    else:
        _count(report.writes, "leads_created")


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _ambiguous(snapshot: Snapshot, report: PlanReport) -> None:
    """Email groups held by more than one person or more than one record: listed by ids (never the
    email), nothing linked or created in them. Also an email whose one person or record is linked
    already while the other side's record is free (a second record for a linked person)."""
    query = (
        "SELECT email FROM g WHERE (pm_free + rd_free) > 0 AND (pm > 1 OR rd > 1 OR (pm = 1 AND rd = 1 "
        "AND (pm_free + rd_free) = 1)) ORDER BY email"
    )
    groups = 0
    shown: list[dict[str, Any]] = []
    rows: list[tuple[int, str, str]] = []
    free = 0
    for (email,) in list_batches(snapshot, query):  # a second connection: the rows are written as they come
        groups += 1
        persons = [str(pid) for (pid,) in snapshot.db.execute("SELECT id FROM person WHERE email = ?", (email,))]
        records = [
            (entity, rid)
            for entity, rid in snapshot.db.execute(
                "SELECT entity, id FROM record WHERE email = ? AND qualified = 0", (email,)
            )
        ]
        free += snapshot.count(
            "SELECT (SELECT count(*) FROM p WHERE email = ?) + (SELECT count(*) FROM r WHERE email = ?)", (email, email)
        )
        rows += [(groups, "m", pid) for pid in persons] + [(groups, entity, rid) for entity, rid in records]
        if len(rows) >= 5000:
            snapshot.write_many("INSERT INTO ambiguous VALUES (?, ?, ?)", rows)
            rows = []
        if len(shown) < AMBIGUOUS_SHOWN:
            shown.append(
                {
                    "marketo_ids": [int(pid) for pid in persons],
                    "leads": [rid for entity, rid in records if entity == "lead"],
                    "contacts": [rid for entity, rid in records if entity == "contact"],
                }
            )
    snapshot.write_many("INSERT INTO ambiguous VALUES (?, ?, ?)", rows)
    report.ambiguous = {"groups": groups, "unlinked_records": free, "shown": shown}


class _ChunkBuilder:
    """Cuts the work into chunks of one kind and entity, and sums their calls and time (``ApplyTime``)."""

    def __init__(self, snapshot: Snapshot, *, batch_size: int, share: Share, chunk_size: int) -> None:
        self._snapshot = snapshot
        self._chunk_size = chunk_size
        self._batch_size = batch_size
        self._next = 0
        self.total = ChunkCost()
        self.time = golive.ApplyTime(share)
        self.costs: list[ChunkCost] = []
        self.by_kind: dict[str, int] = {}
        self._floor = {"linked": 0, "dynamics_updates": 0, "persons_email": 0, "persons_other": 0, "leads": 0}

    def add(self, kind: WorkKind, entity: str, items: Iterable[tuple[int | None, str | None, int]]) -> None:
        """One group of work (one kind, one entity): a new chunk at its start and every chunk size items."""
        chunk: list[tuple[int | None, str | None, int]] = []
        for item in items:
            chunk.append(item)
            if len(chunk) >= self._chunk_size:
                self._write(kind, entity, chunk)
                chunk = []
        if chunk:
            self._write(kind, entity, chunk)

    def _write(self, kind: WorkKind, entity: str, chunk: list[tuple[int | None, str | None, int]]) -> None:
        number = self._next
        self._next += 1
        self._snapshot.add_work((number, kind.value, entity, mid, did, flag) for mid, did, flag in chunk)
        cost = self._cost(kind, chunk)
        self.total.add(cost)
        self.time.add(cost)
        self.costs.append(cost)

    def _cost(self, kind: WorkKind, chunk: list[tuple[int | None, str | None, int]]) -> ChunkCost:
        flagged = sum(flag for _, _, flag in chunk)
        floor = self._floor
        if kind is WorkKind.LINK:
            floor["linked"] += len(chunk)
            floor["dynamics_updates"] += flagged
            return golive.link_chunk_cost(len(chunk), flagged, batch_size=self._batch_size)
        if kind is WorkKind.PERSON:
            floor["persons_email"] += flagged
            floor["persons_other"] += len(chunk) - flagged
            return golive.person_chunk_cost(flagged, len(chunk) - flagged)
        floor["leads"] += len(chunk)
        return golive.lead_chunk_cost(len(chunk), batch_size=self._batch_size)

    def flush(self) -> None:
        """Nothing buffered: chunks are written as they are cut."""

    def calls(self) -> dict[str, Any]:
        floor = golive.write_floor(batch_size=self._batch_size, **self._floor)
        return {
            "apply": {"marketo": self.total.marketo_calls, "dataverse": self.total.dataverse_calls},
            "apply_floor": {"marketo": floor.marketo, "dataverse": floor.dataverse},
        }


# -- the ETA: the services' speeds plus what this store and this machine take between requests ----

PROBE_ITEMS = 500  # work items the calibration measures (a sixth of a chunk)


def calibrate(
    store: StateStore,
    snapshot: Snapshot,
    schema: ActiveSchema,
    policy: InitialPolicy,
    *,
    clock: Callable[[], float] = time.perf_counter,
    items: int = PROBE_ITEMS,
    links_at_end: int = 0,
) -> LocalCosts:
    """Measure what the apply does between its requests, on a sample of the plan's own work.

    Table Storage: the sample's links as the apply looks them up and writes them (the persons'
    range through ``iter_links``, timed apart as it is one per chunk; its records by Dataverse id;
    then ``upsert_links``: the same code and requests), in a scratch space of the links table
    (``StateStore.scratch_links``) that no reader uses, deleted before this returns; and how those
    reads grow as the apply fills the table to ``links_at_end`` links (``StateStore.link_read_growth``: a
    look-up by ``$filter`` reads its partition, so it slows as that grows). CPU: the same
    items read from the snapshot as the apply reads a chunk, their Pending links built, merged,
    validated and their payloads encoded as the apply does before and after its calls. Per item
    (the range per chunk); ``golive.PUBLISHED`` when the plan has no link to measure with."""
    field_map = schema.field_map
    began = clock()
    loaded = _probe_items(snapshot, items)  # the apply's own read of a chunk
    if not loaded:
        return golive.PUBLISHED
    links: list[Link] = []
    for item in loaded:
        entity = EntityType(item.entity or "lead")
        mappings = field_map.for_entity(entity)
        marketo = canonical_values(mappings, item.marketo or {}, side="marketo")
        try:
            dynamics = canonical_values(mappings, item.dynamics or {}, side=entity.value)
        except FieldValueError:
            dynamics = {}
        merge = merge_record(
            mappings, entity, marketo=marketo, dynamics=dynamics, baseline={}, first_contact=policy.first_contact
        )
        planned = write_plan(field_map, entity, merge, metadata=schema.metadata.get(entity), described=schema.described)
        extra = microsoft_fields(entity, str(item.dataverse_id), (item.dynamics or {}).get(CREATED_ON))
        json.dumps({"input": [{"id": item.marketo_id, **planned.marketo, **extra}]})  # the request bodies
        json.dumps({"Targets": [{PRIMARY_IDS[entity]: item.dataverse_id, **planned.dynamics}]})
        links.append(
            Link(
                marketo_id=int(item.marketo_id or 0),
                entity=entity,
                dataverse_id=str(item.dataverse_id),
                baseline=merge.merged,
            )
        )
    cpu = (clock() - began) / len(links)
    scratch = store.scratch_links(f"probe{uuid.uuid4().hex[:10]}")
    ids = sorted(link.marketo_id for link in links)
    try:
        began = clock()
        for link in scratch.iter_links(after_marketo_id=ids[0] - 1):  # the persons' range, as the apply
            if link.marketo_id > ids[-1]:
                break
        ranged = clock() - began
        began = clock()
        for entity in {link.entity for link in links}:  # then its records by Dataverse id
            scratch.get_links_by_dataverse_ids(entity, [link.dataverse_id for link in links if link.entity is entity])
        lookup = (clock() - began) / len(links)
        began = clock()
        scratch.upsert_links(links)
        write = (clock() - began) / len(links)
    finally:
        scratch.delete_links(links)
    growth = scratch.link_read_growth(links_at_end, like=links[0])
    return LocalCosts(lookup_s=lookup, write_s=write, cpu_s=cpu, range_s=ranged, source="measured", growth=growth)


def _probe_items(snapshot: Snapshot, items: int) -> list[WorkItem]:
    """Up to ``items`` link work items from the first link chunk, in the apply's order."""
    found = snapshot.db.execute("SELECT min(chunk) FROM work WHERE kind = ?", (WorkKind.LINK.value,)).fetchone()
    if not found or found[0] is None:
        return []
    return [item for item in snapshot.chunk(int(found[0]))[:items] if item.marketo_id is not None]


@dataclass(frozen=True)
class QueueEstimate:
    """What the ETA on the job queue needs: every part's cost (writes and re-reads), the app's own
    share of the limits (not the in-process job's), the background share, and the instances."""

    parts: list[ChunkCost]
    share: Share
    background_share: float
    instances: int


def estimate(
    report: PlanReport,
    costs: Iterable[ChunkCost],
    *,
    share: Share,
    local: LocalCosts,
    start_s: float,
    queue: QueueEstimate | None = None,
) -> None:
    """The plan's ETA with ``local`` costs and the apply's start, its parts, and next to it the ETA
    by the published speeds alone (what the plan said before it measured). With ``queue``, also
    the apply's ETA on the job queue (``eta_queue``): its parts on the instances it names."""
    published = golive.ApplyTime(share)
    calibrated = golive.ApplyTime(share, local=local, fixed_s=start_s, links=report.already_linked)
    for cost in costs:
        published.add(cost)
        calibrated.add(cost)
    report.eta_seconds = round(calibrated.seconds, 1)
    report.eta = calibrated.parts() | {"published_only_s": round(published.seconds, 1)}
    if queue is not None:
        on_queue = golive.queue_time(
            queue.share,
            background_share=queue.background_share,
            instances=queue.instances,
            local=local,
            fixed_s=start_s,
            links=report.already_linked,
        )
        for part in queue.parts:
            on_queue.add(part)
        report.eta_queue = on_queue.parts() | {"instances": queue.instances, "parts": len(queue.parts)}
