"""The record-level half of a cycle: given touched records, read what is missing, merge, validate,
write both ways in bulk, and record links, baselines, collisions and failures (design §3, 4-7).

``Applier`` is built once per cycle by the engine, which owns the feeds, the stage, the cursors
and the lease; it must not read a feed or move a cursor. Each public method handles one batch
end to end (all its API writes, then all its Table writes) so that the engine may commit a
cursor once the batches of a window are done. What it knows about a record:

- a linked record's Marketo values come from the change feed (only what changed) and its
  Dynamics values from the delta row (all mapped columns); a side not in its feed is taken to be
  at the baseline, except when that could be wrong (a field without a baseline yet, an open
  failure on the record), when the record is read from that side first;
- an unlinked Dynamics record is a qualification (contact from a linked lead: the link moves),
  a match (a Marketo person with its email or its id in ``microsoftId``: linked, never
  duplicated) or a new person (created in Marketo). Marketo-only persons are never sent to
  Dynamics here (B8);
- a record either side refuses (validation before sending, or the service's own verdict) is
  not written on that side, keeps its old baseline there, is recorded with a retry schedule and,
  the first time or when the reason changes, logged on the person's activity log.

Failure keys: ``to_dynamics:m<marketo id>`` / ``to_marketo:m<marketo id>`` for a linked person,
``to_marketo:<entity>:<dataverse id>`` for a Dynamics record no person could be made for.
Nothing here logs person data: ids and counts only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sync_core.core.errors import ApiError
from sync_core.core.fieldmap import FieldMap, FieldMapping, FieldValueError, Unreadable, canonical_values
from sync_core.core.merge import Merge, Plan, merge_record, plan, settle
from sync_core.core.models import Collision, Direction, EntityType, Link, RecordFailure, retry_delay
from sync_core.core.schema import EntityMeta, MarketoFieldMeta
from sync_core.core.validate import DriftItem, marketo_problems
from sync_core.cycle import schema_cache
from sync_core.dataverse.client import DataverseClient, WriteOutcome
from sync_core.marketo.activity import SyncFailure, log_sync_failures
from sync_core.marketo.client import LeadOutcome, LeadWriteResult, MarketoClient
from sync_core.settings import DynamicsDeletePolicy
from sync_core.state import StateStore

log = logging.getLogger(__name__)

ENTITY_SETS = {EntityType.LEAD: "leads", EntityType.CONTACT: "contacts"}
PRIMARY_IDS = {EntityType.LEAD: "leadid", EntityType.CONTACT: "contactid"}
MICROSOFT_TYPES = {EntityType.LEAD: "Lead", EntityType.CONTACT: "Contact"}
ORIGINATING_LEAD = "_originatingleadid_value"
LEAD_STATE = "statecode"
LEAD_QUALIFIED = 1
CREATED_ON = "createdon"
NOT_FOUND_CODES = frozenset({"0x80040217"})

Take = Callable[[Sequence[int]], Mapping[int, Mapping[str, Any]]]


def person_key(direction: Direction, marketo_id: int) -> str:
    return f"{direction.value}:m{marketo_id}"


def record_key(entity: EntityType, dataverse_id: str) -> str:
    return f"{Direction.TO_MARKETO.value}:{entity.value}:{dataverse_id.lower()}"


@dataclass
class Tally:
    """What a cycle did, counted as it goes; the run report is built from it."""

    pulled_marketo: int = 0  # change activities read
    pulled_dynamics: int = 0  # rows and deletions read
    written_marketo: int = 0  # persons written (created or updated)
    written_dynamics: int = 0  # Dynamics records updated or deleted
    created: int = 0  # Marketo persons created for new Dynamics records
    linked: int = 0  # new Dynamics records linked to an existing person
    unlinked: int = 0
    flagged_deleted: int = 0  # persons marked microsoftIsDeleted
    deleted_in_dynamics: int = 0  # Dynamics records deleted after their person was (policy "delete")
    qualified: int = 0  # links moved from a lead to its contact
    collisions: int = 0
    failures: int = 0  # records that failed this cycle (new or again)
    resolved: int = 0  # open failures that succeeded this cycle
    retried: int = 0  # due failures tried again
    activities: int = 0  # microsoftSyncFailed entries written
    full_reads: list[str] = field(default_factory=list)  # tables re-read after an expired delta token


@dataclass
class Pending:
    """A linked record to merge, with what is known of each side."""

    link: Link
    marketo: Mapping[str, Any] | None = None  # raw values by Marketo field (only the changed ones, unless full)
    marketo_full: bool = False
    dynamics: Mapping[str, Any] | None = None  # the Dataverse row (every selected column), or unknown
    replaces: Link | None = None  # the link this one takes the place of (qualification)
    marketo_extra: Mapping[str, Any] = field(default_factory=dict)  # sync-owned person fields to write
    event: str | None = None  # "linked" | "qualified": counted once the link is written


@dataclass
class _Outcome:
    """What one batch produced for the state store."""

    links: list[Link] = field(default_factory=list)
    replaced: list[Link] = field(default_factory=list)
    unlinked: list[Link] = field(default_factory=list)
    collisions: list[Collision] = field(default_factory=list)
    failures: list[RecordFailure] = field(default_factory=list)
    resolved: set[str] = field(default_factory=set)
    activities: list[SyncFailure] = field(default_factory=list)


class Applier:
    """Record-level work of one cycle (see the module docstring)."""

    def __init__(
        self,
        *,
        marketo: MarketoClient,
        dataverse: DataverseClient,
        store: StateStore,
        field_map: FieldMap,
        dynamics_delete_policy: DynamicsDeletePolicy,
        run_id: str,
        now: datetime,
        open_failures: dict[str, RecordFailure],
        tally: Tally,
    ) -> None:
        self._marketo = marketo
        self._dataverse = dataverse
        self._store = store
        self._configured = field_map
        self.field_map = field_map  # the map in force: the configured one minus drifted fields
        self._dynamics_delete_policy = dynamics_delete_policy
        self._run_id = run_id
        self._now = now
        self._open = open_failures
        self.tally = tally
        self._metadata: dict[EntityType, EntityMeta] = {}
        self._described: dict[str, MarketoFieldMeta] | None = None
        self.drift: list[DriftItem] | None = None  # None until checked

    # -- schema: metadata, describe, drift (only when there is work) ----------------------------

    def prepare(self, *, refresh: bool = False) -> None:
        """Both sides' schema (from the state store's hour-long cache, else the services), the map
        checked against it, drifted fields dropped. ``refresh``: the services refused a field."""
        if self.drift is not None and not refresh:
            return
        schema = schema_cache.active_schema(
            self._store, self._marketo, self._dataverse, self._configured, now=self._now, refresh=refresh
        )
        self._metadata = schema.metadata
        self._described = schema.described
        self.drift = schema.drift
        self.field_map = schema.field_map

    def marketo_fields(self) -> list[str]:
        return self.field_map.marketo_fields

    def dataverse_columns(self, entity: EntityType) -> list[str]:
        extra = [ORIGINATING_LEAD] if entity is EntityType.CONTACT else [LEAD_STATE]
        return [PRIMARY_IDS[entity], CREATED_ON, *extra, *self.field_map.columns(entity)]

    # -- a page of the Dataverse delta ----------------------------------------------------------

    def dynamics_page(
        self, entity: EntityType, rows: Sequence[Mapping[str, Any]], deleted_ids: Sequence[str], take: Take
    ) -> None:
        if deleted_ids:
            gone = self._store.get_links_by_dataverse_ids(entity, deleted_ids)
            self.dynamics_deleted(list({link.marketo_id: link for link in gone.values()}.values()))
            stale = {record_key(entity, i) for i in deleted_ids} & self._open.keys()
            if stale:
                self._store.resolve_failures(sorted(stale))
                self._forget(stale)
        if not rows:
            return
        primary = PRIMARY_IDS[entity]
        by_id = {str(row[primary]).lower(): row for row in rows if row.get(primary)}
        links = self._store.get_links_by_dataverse_ids(entity, by_id)
        linked = [(links[i], row) for i, row in by_id.items() if i in links]
        unlinked = [row for i, row in by_id.items() if i not in links]
        staged = take([link.marketo_id for link, _ in linked])
        self.sync_linked([Pending(link, marketo=staged.get(link.marketo_id), dynamics=row) for link, row in linked])
        if unlinked:
            self.link_new(entity, unlinked, take)

    # -- linked records -------------------------------------------------------------------------

    def sync_linked(self, items: Sequence[Pending]) -> None:
        """Merge and write linked records (any mix of leads and contacts), then record the results."""
        if not items:
            return
        self.prepare()
        out = _Outcome()
        items = self._complete(items, out)
        planned: list[tuple[Pending, Merge, Plan]] = []
        for item in items:
            entity = item.link.entity
            mappings = self.field_map.for_entity(entity)
            m_values = canonical_values(mappings, item.marketo or {}, side="marketo")
            try:
                d_values = canonical_values(mappings, item.dynamics or {}, side=entity.value)
            except FieldValueError as err:
                self._fail_person(out, item.link, Direction.TO_MARKETO, [str(err)], code="unreadable", keys=[])
                continue
            merge = merge_record(mappings, entity, marketo=m_values, dynamics=d_values, baseline=item.link.baseline)
            record_plan = plan(
                self.field_map, entity, merge, metadata=self._metadata.get(entity), described=self._described
            )
            planned.append((item, merge, record_plan))
        d_outcomes = self._write_dynamics(planned)
        m_results = self._write_marketo(planned)
        for position, (item, merge, record_plan) in enumerate(planned):
            self._settle(item, merge, record_plan, d_outcomes.get(position), m_results.get(position), out)
        self._record(out)

    def _complete(self, items: Sequence[Pending], out: _Outcome) -> list[Pending]:
        """Read a side where the feed's view may be wrong; drop records that turned out to be gone."""
        need_marketo: set[int] = set()
        need_dynamics: dict[EntityType, set[str]] = {}
        for item in items:
            link = item.link
            keys = [m.key for m in self.field_map.for_entity(link.entity)]
            doubtful = any(key not in link.baseline for key in keys) or self._has_open_failure(link.marketo_id)
            if doubtful and not item.marketo_full:
                need_marketo.add(link.marketo_id)
            if doubtful and item.dynamics is None:
                need_dynamics.setdefault(link.entity, set()).add(link.dataverse_id.lower())
        persons: dict[int, dict[str, Any]] = {}
        if need_marketo:
            for person in self._marketo.get_leads(sorted(need_marketo), fields=["id", *self.marketo_fields()]):
                persons[int(person["id"])] = person
        rows: dict[tuple[EntityType, str], dict[str, Any]] = {}
        for entity, ids in need_dynamics.items():
            for row in self._dataverse.get_rows(
                ENTITY_SETS[entity], sorted(ids), select=self.dataverse_columns(entity)
            ):
                rows[(entity, str(row[PRIMARY_IDS[entity]]).lower())] = row
        kept: list[Pending] = []
        gone_in_dynamics: list[Link] = []
        for item in items:
            link = item.link
            if link.marketo_id in need_marketo:
                current = persons.get(link.marketo_id)
                if current is None:  # deleted in Marketo: not sent to Dynamics, the link goes (B3)
                    self._unlink(out, link)
                    continue
                item.marketo, item.marketo_full = current, True
            wanted = (link.entity, link.dataverse_id.lower())
            if link.entity in need_dynamics and wanted[1] in need_dynamics[link.entity]:
                current_row = rows.get(wanted)
                if current_row is None:
                    gone_in_dynamics.append(link)
                    continue
                item.dynamics = current_row
            kept.append(item)
        if gone_in_dynamics:
            self.dynamics_deleted(gone_in_dynamics)
        return kept

    def _write_dynamics(self, planned: Sequence[tuple[Pending, Merge, Plan]]) -> dict[int, WriteOutcome]:
        by_entity: dict[EntityType, list[tuple[int, dict[str, Any]]]] = {}
        for position, (item, _, record_plan) in enumerate(planned):
            if record_plan.dynamics and not record_plan.dynamics_problems:
                row = {PRIMARY_IDS[item.link.entity]: item.link.dataverse_id, **record_plan.dynamics}
                by_entity.setdefault(item.link.entity, []).append((position, row))
        outcomes: dict[int, WriteOutcome] = {}
        for entity, rows in by_entity.items():
            results = self._dataverse.update_multiple(self._metadata[entity], [row for _, row in rows])
            for (position, _), outcome in zip(rows, results, strict=True):
                outcomes[position] = outcome
        return outcomes

    def _write_marketo(self, planned: Sequence[tuple[Pending, Merge, Plan]]) -> dict[int, LeadWriteResult]:
        records: list[tuple[int, dict[str, Any]]] = []
        for position, (item, _, record_plan) in enumerate(planned):
            payload = {} if record_plan.marketo_problems else dict(record_plan.marketo)
            payload.update(item.marketo_extra)
            if payload:
                records.append((position, {"id": item.link.marketo_id, **payload}))
        if not records:
            return {}
        results = self._marketo.sync_leads([r for _, r in records], action="updateOnly", lookup_field="id")
        return {position: result for (position, _), result in zip(records, results, strict=True)}

    def _settle(
        self,
        item: Pending,
        merge: Merge,
        record_plan: Plan,
        d_outcome: WriteOutcome | None,
        m_result: LeadWriteResult | None,
        out: _Outcome,
    ) -> None:
        link = item.link
        if m_result is not None and m_result.outcome is LeadOutcome.NOT_FOUND:
            # The person was deleted in Marketo: not sent across, link dropped. The Dynamics half of
            # the merge (the person's last edits) may have gone already: it counts as written.
            if merge.to_dynamics and d_outcome is not None and d_outcome.ok:
                self.tally.written_dynamics += 1
            self._unlink(out, link)
            return
        if (
            d_outcome is not None
            and not d_outcome.ok
            and (d_outcome.status == 404 or d_outcome.code in NOT_FOUND_CODES)
        ):
            self.dynamics_deleted([link])
            return
        d_ok = not merge.to_dynamics or (not record_plan.dynamics_problems and d_outcome is not None and d_outcome.ok)
        m_ok = not merge.to_marketo or (
            not record_plan.marketo_problems and m_result is not None and m_result.outcome is LeadOutcome.OK
        )
        if merge.to_dynamics and d_ok:
            self.tally.written_dynamics += 1
        if (merge.to_marketo and m_ok) or (item.marketo_extra and m_result is not None and m_result.ok):
            self.tally.written_marketo += 1
        for collision in merge.collisions:
            out.collisions.append(
                Collision(
                    id=uuid.uuid4().hex,
                    at=self._now,
                    run_id=self._run_id,
                    marketo_id=link.marketo_id,
                    entity=link.entity,
                    dataverse_id=link.dataverse_id,
                    field=collision.key,
                    marketo_value=_storable(collision.marketo_value),
                    dynamics_value=_storable(collision.dynamics_value),
                    baseline_value=_storable(collision.baseline_value),
                    winner=collision.winner,
                    rule=collision.rule,
                )
            )
        # Failures, per direction; a direction that went through resolves its open failure.
        if merge.to_dynamics and not d_ok:
            reasons, code = _dynamics_reasons(record_plan, d_outcome)
            transient = d_outcome is not None and d_outcome.transient
            self._fail_person(
                out, link, Direction.TO_DYNAMICS, reasons, code=code, keys=list(merge.to_dynamics), transient=transient
            )
        else:
            self._resolve(out, person_key(Direction.TO_DYNAMICS, link.marketo_id))
        if merge.to_marketo and not m_ok:
            reasons, code = _marketo_reasons(record_plan, m_result)
            self._fail_person(out, link, Direction.TO_MARKETO, reasons, code=code, keys=list(merge.to_marketo))
        else:
            self._resolve(out, person_key(Direction.TO_MARKETO, link.marketo_id))
        new_baseline = settle(link.baseline, merge, dynamics_written=d_ok, marketo_written=m_ok)
        if new_baseline != link.baseline or item.replaces is not None or item.event is not None:
            out.links.append(link.model_copy(update={"baseline": new_baseline, "updated_at": self._now}))
            if item.replaces is not None:
                out.replaced.append(item.replaces)
            if item.event == "linked":
                self.tally.linked += 1
            elif item.event == "qualified":
                self.tally.qualified += 1

    # -- unlinked Dynamics records: qualification, match, creation ------------------------------

    def link_new(self, entity: EntityType, rows: Sequence[Mapping[str, Any]], take: Take) -> None:
        """Dynamics records without a link: move a qualified lead's link, link a match, or create a person."""
        self.prepare()
        primary = PRIMARY_IDS[entity]
        out = _Outcome()
        pending: list[Pending] = []
        rest: list[Mapping[str, Any]] = []
        moved = self._qualifications(entity, rows, take)
        for row in rows:
            row_id = str(row[primary]).lower()
            if row_id in moved:
                pending.append(moved[row_id])
            elif entity is EntityType.LEAD and row.get(LEAD_STATE) == LEAD_QUALIFIED:
                continue  # a qualified lead lives on as its contact; it gets no person of its own
            else:
                rest.append(row)
        matched, to_create = self._match(entity, rest, out, take)
        pending += matched
        self._record(out)
        self.sync_linked(pending)
        if to_create:
            self._create_persons(entity, to_create)

    def _qualifications(self, entity: EntityType, rows: Sequence[Mapping[str, Any]], take: Take) -> dict[str, Pending]:
        """Contacts qualified from a linked lead (B9): the person's link moves to the contact."""
        if entity is not EntityType.CONTACT:
            return {}
        origins = {
            str(row[PRIMARY_IDS[entity]]).lower(): str(row[ORIGINATING_LEAD]).lower()
            for row in rows
            if row.get(ORIGINATING_LEAD)
        }
        if not origins:
            return {}
        lead_links = self._store.get_links_by_dataverse_ids(EntityType.LEAD, sorted(set(origins.values())))
        by_contact = {contact: lead_links[lead] for contact, lead in origins.items() if lead in lead_links}
        if not by_contact:
            return {}
        staged = take([link.marketo_id for link in by_contact.values()])
        keys = {m.key for m in self.field_map.for_entity(EntityType.CONTACT)}
        rows_by_id = {str(row[PRIMARY_IDS[entity]]).lower(): row for row in rows}
        moved: dict[str, Pending] = {}
        for contact_id, old in by_contact.items():
            new = Link(
                marketo_id=old.marketo_id,
                entity=EntityType.CONTACT,
                dataverse_id=contact_id,
                baseline={key: value for key, value in old.baseline.items() if key in keys},
                originating_lead_id=old.dataverse_id,
                updated_at=self._now,
            )
            moved[contact_id] = Pending(
                new,
                marketo=staged.get(old.marketo_id),
                dynamics=rows_by_id[contact_id],
                replaces=old,
                marketo_extra={"microsoftType": MICROSOFT_TYPES[EntityType.CONTACT], "microsoftId": contact_id},
                event="qualified",
            )
        return moved

    def _match(
        self, entity: EntityType, rows: Sequence[Mapping[str, Any]], out: _Outcome, take: Take
    ) -> tuple[list[Pending], list[Mapping[str, Any]]]:
        """Link each row to a free Marketo person with its id in microsoftId or its email; the rest are new.

        A matched person's values are read now, so its staged changes (older) are dropped."""
        if not rows:
            return [], []
        primary = PRIMARY_IDS[entity]
        email_mapping = self.field_map.email_field(entity)
        emails: dict[str, str] = {}  # row id -> email
        for row in rows:
            email = _row_email(row, email_mapping, entity)
            if email is not None:
                emails[str(row[primary]).lower()] = email
        fields = ["id", "microsoftId", *self.marketo_fields()]
        persons: dict[int, dict[str, Any]] = {}
        lookup_emails = sorted({e for e in emails.values() if "," not in e and e.strip()})
        if lookup_emails:
            for person in self._marketo.find_leads("email", lookup_emails, fields=fields):
                persons[int(person["id"])] = person
        no_email = sorted(str(row[primary]).lower() for row in rows if str(row[primary]).lower() not in emails)
        if no_email:
            for person in self._marketo.find_leads("microsoftId", no_email, fields=fields):
                persons[int(person["id"])] = person
        by_email: dict[str, list[int]] = {}
        by_ms_id: dict[str, list[int]] = {}
        for person_id in sorted(persons):
            person = persons[person_id]
            if isinstance(person.get("email"), str):
                by_email.setdefault(person["email"].casefold(), []).append(person_id)
            if isinstance(person.get("microsoftId"), str):
                by_ms_id.setdefault(person["microsoftId"].lower(), []).append(person_id)
        taken = self._store.get_links_by_marketo_ids(persons)
        claimed: dict[int, str] = {}  # person -> row id, within this batch
        pending: list[Pending] = []
        new: list[Mapping[str, Any]] = []
        new_emails: dict[str, str] = {}
        for row in rows:
            row_id = str(row[primary]).lower()
            email = emails.get(row_id)
            if email is not None and "," in email:
                self._fail_record(
                    out, entity, row_id, ["email: contains a comma, which a Marketo lookup cannot express"]
                )
                continue
            candidates = list(dict.fromkeys(by_ms_id.get(row_id, []) + by_email.get((email or "").casefold(), [])))
            free = [p for p in candidates if p not in taken and p not in claimed]
            if free:
                claimed[free[0]] = row_id
                link = Link(marketo_id=free[0], entity=entity, dataverse_id=row_id, baseline={}, updated_at=self._now)
                pending.append(
                    Pending(
                        link,
                        marketo=persons[free[0]],
                        marketo_full=True,
                        dynamics=row,
                        marketo_extra=microsoft_fields(entity, row_id, row),
                        event="linked",
                    )
                )
            elif candidates:
                holder = taken.get(candidates[0])
                where = (
                    f"{holder.entity.value} {holder.dataverse_id}"
                    if holder
                    else f"{entity.value} {claimed.get(candidates[0])}"
                )
                self._fail_record(
                    out,
                    entity,
                    row_id,
                    [f"Marketo person {candidates[0]} has the same email and is linked to {where} already"],
                    code="duplicate",
                )
            elif email is not None and email.casefold() in new_emails:
                self._fail_record(
                    out,
                    entity,
                    row_id,
                    [f"{entity.value} {new_emails[email.casefold()]} has the same email and gets the new person"],
                    code="duplicate",
                )
            else:
                if email is not None:
                    new_emails[email.casefold()] = row_id
                new.append(row)
        if claimed:
            take(sorted(claimed))
        return pending, new

    def _create_persons(self, entity: EntityType, rows: Sequence[Mapping[str, Any]]) -> None:
        out = _Outcome()
        primary = PRIMARY_IDS[entity]
        mappings = self.field_map.for_entity(entity)
        email_mapping = self.field_map.email_field(entity)
        by_lookup: dict[str, list[tuple[str, dict[str, Any], dict[str, Any]]]] = {}
        for row in rows:
            row_id = str(row[primary]).lower()
            try:
                values = canonical_values(mappings, row, side=entity.value)
            except FieldValueError as err:
                self._fail_record(out, entity, row_id, [str(err)], code="unreadable")
                continue
            payload: dict[str, Any] = {}
            problems: list[str] = []
            for mapping in mappings:
                value = values.get(mapping.key)
                if value is None:
                    continue
                try:
                    payload[mapping.marketo] = mapping.to_marketo(value)
                except FieldValueError as err:
                    problems.append(str(err))
            problems += marketo_problems(self._described or {}, payload)
            if problems:
                self._fail_record(out, entity, row_id, problems, code="validation")
                continue
            payload.update(microsoft_fields(entity, row_id, row))
            has_email = email_mapping is not None and payload.get(email_mapping.marketo)
            lookup = email_mapping.marketo if email_mapping is not None and has_email else "microsoftId"
            by_lookup.setdefault(lookup, []).append((row_id, payload, values))
        for lookup, batch in by_lookup.items():
            records = [payload for _, payload, _ in batch]
            results = self._marketo.sync_leads(records, action="createOnly", lookup_field=lookup)
            for (row_id, _, values), result in zip(batch, results, strict=True):
                if result.ok and result.id is not None:
                    out.links.append(
                        Link(
                            marketo_id=result.id,
                            entity=entity,
                            dataverse_id=row_id,
                            baseline=values,
                            updated_at=self._now,
                        )
                    )
                    self._resolve(out, record_key(entity, row_id))
                    self.tally.created += 1
                    self.tally.written_marketo += 1
                else:
                    reasons = [f"Marketo: {r.message}" + (f" ({r.code})" if r.code else "") for r in result.reasons]
                    self._fail_record(
                        out, entity, row_id, reasons or ["Marketo did not create the person"], code=result.outcome.value
                    )
        self._record(out)

    # -- deletes --------------------------------------------------------------------------------

    def dynamics_deleted(self, links: Sequence[Link]) -> None:
        """Dynamics records deleted (B3): flag the person (policy ``flag``) and unlink."""
        if not links:
            return
        out = _Outcome()
        if self._dynamics_delete_policy is DynamicsDeletePolicy.FLAG:
            results = self._marketo.sync_leads(
                [{"id": link.marketo_id, "microsoftIsDeleted": True} for link in links],
                action="updateOnly",
                lookup_field="id",
            )
            flagged = sum(1 for result in results if result.ok)
            self.tally.flagged_deleted += flagged
            self.tally.written_marketo += flagged
        for link in links:
            self._unlink(out, link)
        self._record(out)

    def marketo_deleted(self, marketo_ids: Sequence[int]) -> None:
        """Persons deleted in Marketo, with policy ``delete``: their Dynamics records go too."""
        links = self._store.get_links_by_marketo_ids(marketo_ids)
        if not links:
            return
        out = _Outcome()
        for link in links.values():
            try:
                self._dataverse.delete(ENTITY_SETS[link.entity], link.dataverse_id)
            except ApiError as err:
                self._fail_person(
                    out,
                    link,
                    Direction.TO_DYNAMICS,
                    [f"delete refused: {err.code or err.status}"],
                    code="delete",
                    keys=[],
                )
                continue
            self.tally.deleted_in_dynamics += 1
            self.tally.written_dynamics += 1
            self._unlink(out, link)
        self._record(out)

    # -- retries ----------------------------------------------------------------------------------

    def retry(self, failures: Sequence[RecordFailure], take: Take) -> None:
        """Try due failures again: linked persons merged from fresh reads, new records linked again."""
        persons: set[int] = set()
        records: dict[EntityType, set[str]] = {}
        for failure in failures:
            self.tally.retried += 1
            if failure.key.startswith(f"{failure.direction.value}:m") and failure.marketo_id is not None:
                persons.add(failure.marketo_id)
            elif failure.dataverse_id:
                records.setdefault(failure.entity, set()).add(failure.dataverse_id.lower())
        if persons:
            links = self._store.get_links_by_marketo_ids(sorted(persons))
            orphans = [f.key for f in failures if f.marketo_id in persons - links.keys()]
            if orphans:  # the link went since: nothing left to retry
                self._store.resolve_failures(orphans)
                self._forget(orphans)
            self.sync_linked([Pending(link) for link in links.values()])
        for entity, ids in records.items():
            self.prepare()
            rows = self._dataverse.get_rows(ENTITY_SETS[entity], sorted(ids), select=self.dataverse_columns(entity))
            found = {str(row[PRIMARY_IDS[entity]]).lower() for row in rows}
            gone = [record_key(entity, i) for i in ids if i not in found]
            if gone:
                self._store.resolve_failures(gone)
                self._forget(gone)
            already = self._store.get_links_by_dataverse_ids(entity, sorted(found))
            linked_now = [record_key(entity, i) for i in already]
            if linked_now:
                self._store.resolve_failures(linked_now)
                self._forget(linked_now)
            self.link_new(entity, [row for row in rows if str(row[PRIMARY_IDS[entity]]).lower() not in already], take)

    # -- bookkeeping ------------------------------------------------------------------------------

    def _has_open_failure(self, marketo_id: int) -> bool:
        return any(person_key(d, marketo_id) in self._open for d in Direction)

    def _unlink(self, out: _Outcome, link: Link) -> None:
        out.unlinked.append(link)
        for direction in Direction:
            self._resolve(out, person_key(direction, link.marketo_id))
        self.tally.unlinked += 1

    def _resolve(self, out: _Outcome, key: str) -> None:
        if key in self._open:
            out.resolved.add(key)

    def _fail_person(
        self,
        out: _Outcome,
        link: Link,
        direction: Direction,
        reasons: list[str],
        *,
        code: str | None,
        keys: list[str],
        transient: bool = False,
    ) -> None:
        failure = self._failure(
            person_key(direction, link.marketo_id),
            direction,
            link.entity,
            reasons,
            code,
            keys,
            link.marketo_id,
            link.dataverse_id,
        )
        out.failures.append(failure)
        if not transient and _is_news(self._open.get(failure.key), failure):
            out.activities.append(SyncFailure(link.marketo_id, link.entity, direction, tuple(reasons)))

    def _fail_record(
        self, out: _Outcome, entity: EntityType, dataverse_id: str, reasons: list[str], *, code: str | None = None
    ) -> None:
        key = record_key(entity, dataverse_id)
        out.failures.append(self._failure(key, Direction.TO_MARKETO, entity, reasons, code, [], None, dataverse_id))

    def _failure(
        self,
        key: str,
        direction: Direction,
        entity: EntityType,
        reasons: list[str],
        code: str | None,
        keys: list[str],
        marketo_id: int | None,
        dataverse_id: str | None,
    ) -> RecordFailure:
        previous = self._open.get(key)
        attempts = previous.attempts + 1 if previous is not None else 1
        return RecordFailure(
            key=key,
            direction=direction,
            entity=entity,
            marketo_id=marketo_id,
            dataverse_id=dataverse_id,
            reasons=reasons,
            code=code,
            fields=keys,
            attempts=attempts,
            first_failed_at=previous.first_failed_at if previous is not None else self._now,
            last_failed_at=self._now,
            next_retry_at=self._now + retry_delay(attempts),
            run_id=self._run_id,
        )

    def _forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            if self._open.pop(key, None) is not None:
                self.tally.resolved += 1

    def _record(self, out: _Outcome) -> None:
        """The batch's Table writes: links, collisions, failures; then the activity log."""
        if out.links or out.replaced:
            self._store.upsert_links(out.links, replaces=out.replaced)
        # A link re-written in the same batch (e.g. qualified, then deleted) is not deleted twice.
        written = {link.marketo_id for link in out.links}
        gone = [link for link in out.unlinked if link.marketo_id not in written]
        if gone:
            self._store.delete_links(gone)
        if out.collisions:
            self._store.add_collisions(out.collisions)
            self.tally.collisions += len(out.collisions)
        failed = {failure.key: failure for failure in out.failures}  # the last verdict per key wins
        resolved = sorted(out.resolved - failed.keys())
        if failed:
            self._store.upsert_failures(list(failed.values()))
            self._open.update(failed)
            self.tally.failures += len(failed)
        if resolved:
            self._store.resolve_failures(resolved)
            self._forget(resolved)
        if out.activities:
            results = log_sync_failures(self._marketo, out.activities)
            self.tally.activities += sum(1 for result in results if result.ok)


def _is_news(previous: RecordFailure | None, failure: RecordFailure) -> bool:
    """Worth a line on the activity log: a new failure, or one whose reasons changed."""
    return previous is None or previous.reasons != failure.reasons


def _storable(value: Any) -> Any:
    return None if isinstance(value, Unreadable) else value


def _row_email(row: Mapping[str, Any], mapping: FieldMapping | None, entity: EntityType) -> str | None:
    if mapping is None:
        return None
    column = mapping.column(entity)
    value = row.get(column) if column else None
    return value if isinstance(value, str) and value.strip() else None


def microsoft_fields(entity: EntityType, dataverse_id: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """The sync-owned person fields (design §7) for a person linked to this record (``row`` gives
    its ``createdon``)."""
    created = row.get(CREATED_ON)
    return {
        "microsoftType": MICROSOFT_TYPES[entity],
        "microsoftId": dataverse_id,
        "microsoftCreatedDate": created if isinstance(created, str) and created else None,
        "microsoftIsDeleted": False,
    }


def _dynamics_reasons(record_plan: Plan, outcome: WriteOutcome | None) -> tuple[list[str], str | None]:
    if record_plan.dynamics_problems:
        return record_plan.dynamics_problems, "validation"
    if outcome is None:
        return ["not written"], None
    return [f"Dynamics refused the update: {outcome.message or outcome.status}"], outcome.code or str(outcome.status)


def _marketo_reasons(record_plan: Plan, result: LeadWriteResult | None) -> tuple[list[str], str | None]:
    if record_plan.marketo_problems:
        return record_plan.marketo_problems, "validation"
    if result is None:
        return ["not written"], None
    reasons = [f"Marketo: {r.message}" + (f" ({r.code})" if r.code else "") for r in result.reasons]
    return reasons or ["Marketo skipped the update"], result.outcome.value


__all__ = [
    "ENTITY_SETS",
    "PRIMARY_IDS",
    "Applier",
    "Pending",
    "Tally",
    "microsoft_fields",
    "person_key",
    "record_key",
]
