"""Field backfill (native Quick Sync parity): fill one mapped field for the linked records from
the winning side, without waiting for a change, as a chunked job on the queue (design §6).

``plan_chunks`` pages the links (only those updated since ``since``, if given, and only of the
entities the field has a column for) into chunks of Marketo ids. Each chunk (``run_chunk``, the
``backfill`` job kind) reads the links, splits them by who wins the field (``merge.collision_rule``:
Marketo for leads, Dynamics for contacts, or the field's ``winner``), reads the winner's values in
bulk (Marketo 300 ids a call; Dataverse by id), converts and validates them on the one path every
write takes (``core.convert``), writes the other side in bulk (UpdateMultiple; Sync Leads
``updateOnly`` 300 a call), and sets the field's baseline on each link written. An empty value on
the winning side is not sent (a backfill fills, it does not clear). A value the other side
refuses is not written and is recorded as the cycle records it (``cycle.ledger``: a failure with
a retry schedule and the person's activity log), so the cycle retries it. Everything is
idempotent: a chunk run twice writes the same values. The calls are background work (a share of
the API budget: ``http.ratebudget.background_work``). When the last chunk is done the field is
recorded as filled (``jobs.fields``). Ids and counts in logs, never values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from sync_core import jobs
from sync_core.core.convert import to_dataverse, to_marketo
from sync_core.core.entities import ENTITY_SETS, PRIMARY_IDS
from sync_core.core.fieldmap import FieldMapping, FieldValueError, Unreadable
from sync_core.core.jobs import ChunkRecord, JobRecord
from sync_core.core.merge import collision_rule
from sync_core.core.models import Direction, EntityType, Link
from sync_core.cycle import schema_cache
from sync_core.cycle.apply import dynamics_refusal, marketo_refusal
from sync_core.cycle.ledger import Batch, Ledger, OpenFailures, Tally
from sync_core.http.ratebudget import background_work
from sync_core.jobs import JobKind, JobProgress, fields
from sync_core.marketo.client import LeadOutcome
from sync_core.state import StateStore
from sync_core.wiring.services import Services

__all__ = ["DEFAULT_CHUNK", "KIND", "field_mapping", "plan_chunks"]

log = logging.getLogger(__name__)

KIND = "backfill"
DEFAULT_CHUNK = 1000  # links a chunk: one UpdateMultiple of 1,000, or 4 Sync Leads calls of 300


def field_mapping(services: Services, name: str) -> FieldMapping:
    """The mapping of ``name`` (its Marketo name, or a Dataverse column of it); ValueError if unmapped."""
    for mapping in services.field_map.fields:
        if name in (mapping.marketo, mapping.lead, mapping.contact):
            return mapping
    raise ValueError(f"field {name!r} is not in the field map (SYNC_FIELD_MAP)")


def plan_chunks(
    store: StateStore, mapping: FieldMapping, *, since: datetime | None, chunk_size: int = DEFAULT_CHUNK
) -> Iterator[dict[str, Any]]:
    """``{"ids": [marketo ids]}`` per ``chunk_size`` links to fill, in Marketo id order."""
    ids: list[int] = []
    for link in store.iter_links():
        if mapping.column(link.entity) is None:
            continue
        if since is not None and (link.updated_at is None or link.updated_at < since):
            continue
        ids.append(link.marketo_id)
        if len(ids) >= chunk_size:
            yield {"ids": ids}
            ids = []
    if ids:
        yield {"ids": ids}


def run_chunk(services: Services, job: JobRecord, chunk: ChunkRecord) -> Mapping[str, int]:
    with background_work():
        return _Chunk(services, job, chunk).run()


def complete(services: Services, job: JobRecord, progress: JobProgress) -> None:
    fields.mark_synced(services.store, [str(job.params["field"])])


jobs.register(JobKind(KIND, run_chunk, complete))


class _Chunk:
    def __init__(self, services: Services, job: JobRecord, chunk: ChunkRecord) -> None:
        self.services = services
        self.mapping = field_mapping(services, str(job.params["field"]))
        self.now = datetime.now(UTC)
        self.ids = [int(i) for i in chunk.payload["ids"]]
        self.tally = Tally()
        self.ledger = Ledger(
            store=services.store,
            marketo=services.marketo,
            tally=self.tally,
            open_failures=OpenFailures(services.store),
            run_id=f"backfill-{job.id}",
            now=self.now,
        )
        self.batch = Batch()
        self.counts = {"links": 0, "written": 0, "unchanged": 0, "empty": 0, "failed": 0}

    def run(self) -> dict[str, int]:
        links = [
            link
            for link in self.services.store.get_links_by_marketo_ids(self.ids).values()
            if self.mapping.column(link.entity) is not None
        ]
        self.counts["links"] = len(links)
        schema = schema_cache.active_schema(
            self.services.store, self.services.marketo, self.services.dataverse, self.services.field_map, now=self.now
        )
        to_dynamics: dict[EntityType, list[Link]] = {}
        to_marketo: list[Link] = []
        for link in links:
            winner, _ = collision_rule(self.mapping, link.entity)
            if winner == "marketo":
                to_dynamics.setdefault(link.entity, []).append(link)
            else:
                to_marketo.append(link)
        for entity, group in to_dynamics.items():
            self._marketo_to_dynamics(entity, group, schema.metadata.get(entity))
        if to_marketo:
            self._dynamics_to_marketo(to_marketo, schema.described)
        self.ledger.record(self.batch)
        return self.counts

    def _settled(self, link: Link, value: Any) -> None:
        self.batch.links.append(
            link.model_copy(update={"baseline": {**link.baseline, self.mapping.key: value}, "updated_at": self.now})
        )

    def _marketo_to_dynamics(self, entity: EntityType, links: list[Link], metadata: Any) -> None:
        key = self.mapping.key
        found = self.services.marketo.get_leads([link.marketo_id for link in links], fields=[self.mapping.marketo])
        values = {int(row["id"]): self.mapping.from_marketo(row.get(self.mapping.marketo)) for row in found}
        rows: list[tuple[Link, Any, dict[str, Any]]] = []
        for link in links:
            value = values.get(link.marketo_id)
            if isinstance(value, Unreadable):
                self.counts["failed"] += 1
                reasons = [f"{key}: {value.reason}"]
                self.ledger.fail_person(self.batch, link, Direction.TO_DYNAMICS, reasons, code="validation", keys=[key])
                continue
            if value is None:
                self.counts["empty"] += 1
                continue
            if link.baseline.get(key) == value:  # both sides agreed on it already
                self.counts["unchanged"] += 1
                continue
            converted = to_dataverse(self.services.field_map, entity, {key: value}, metadata=metadata)
            if converted.problems:
                self.counts["failed"] += 1
                self.ledger.fail_person(
                    self.batch, link, Direction.TO_DYNAMICS, converted.problems, code="validation", keys=[key]
                )
                continue
            rows.append((link, value, {PRIMARY_IDS[entity]: link.dataverse_id, **converted.payload}))
        if not rows:
            return
        outcomes = self.services.dataverse.update_multiple(metadata or ENTITY_SETS[entity], [r for _, _, r in rows])
        for (link, value, _), outcome in zip(rows, outcomes, strict=True):
            if outcome.ok:
                self.counts["written"] += 1
                self._settled(link, value)
            else:
                self.counts["failed"] += 1
                reasons, code = dynamics_refusal(outcome)
                self.ledger.fail_person(
                    self.batch, link, Direction.TO_DYNAMICS, reasons, code=code, keys=[key], transient=outcome.transient
                )

    def _dynamics_to_marketo(self, links: list[Link], described: Any) -> None:
        key = self.mapping.key
        records: list[tuple[Link, Any, dict[str, Any]]] = []
        by_entity: dict[EntityType, list[Link]] = {}
        for link in links:
            by_entity.setdefault(link.entity, []).append(link)
        for entity, group in by_entity.items():
            column = self.mapping.column(entity)
            assert column is not None  # filtered in run()
            primary = PRIMARY_IDS[entity]
            rows = self.services.dataverse.get_rows(
                ENTITY_SETS[entity], [link.dataverse_id for link in group], select=[primary, column]
            )
            by_id = {str(row[primary]).lower(): row for row in rows}
            for link in group:
                row = by_id.get(link.dataverse_id.lower())
                try:
                    value = None if row is None else self.mapping.from_dataverse(row.get(column))
                except FieldValueError as err:
                    self.counts["failed"] += 1
                    self.ledger.fail_person(
                        self.batch, link, Direction.TO_MARKETO, [str(err)], code="validation", keys=[key]
                    )
                    continue
                if value is None:
                    self.counts["empty"] += 1
                    continue
                if link.baseline.get(key) == value:
                    self.counts["unchanged"] += 1
                    continue
                converted = to_marketo(self.services.field_map, entity, {key: value}, described=described)
                if converted.problems:
                    self.counts["failed"] += 1
                    self.ledger.fail_person(
                        self.batch, link, Direction.TO_MARKETO, converted.problems, code="validation", keys=[key]
                    )
                    continue
                records.append((link, value, {"id": link.marketo_id, **converted.payload}))
        if not records:
            return
        results = self.services.marketo.sync_leads([r for _, _, r in records], action="updateOnly", lookup_field="id")
        for (link, value, _), result in zip(records, results, strict=True):
            if result.outcome is LeadOutcome.OK:
                self.counts["written"] += 1
                self._settled(link, value)
            else:
                self.counts["failed"] += 1
                reasons, code = marketo_refusal(result)
                self.ledger.fail_person(self.batch, link, Direction.TO_MARKETO, reasons, code=code, keys=[key])
