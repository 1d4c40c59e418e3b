"""``initial-sync --apply``: the plan's work, a chunk at a time, checkpointed, resumable.

The job row (``core.golive.JobState``, one row in the state table next to the cursors) marks a
chunk *started* before its first write and *done* after its last, with what it did; the row is
written ETag-conditionally, so two applies of one job cannot run at once. ``apply_chunk(n)`` is
the unit of work, idempotent, so a queue could hand chunks to several workers later:

- a chunk never started runs straight: link the pairs (``Applier.sync_linked`` with the first
  contact's winners: the same merge, validation, bulk writes and ledger as the cycle), create the
  persons (``NewRecords.create_persons``: ``createOnly`` by email, which Marketo itself refuses
  to duplicate), create the leads (CreateMultiple);
- a chunk started but not done (the process died in it) first looks up what already happened:
  pairs linked already are skipped, records get the matching rule before a person is created
  (``NewRecords.link_new``: a person created before the crash is found by email or
  ``microsoftId`` and linked, not created again), persons get an email look-up in Dataverse before
  a lead is created. So a re-run chunk creates nothing twice.

Before the first chunk the cycle's cursors are set, where none exist yet, to the moment the plan
read both sides (Marketo paging token, both delta links): the regular cycle then carries on from
there, not from the beginning. The job uses a share of the API budget (``SYNC_INITIAL_API_SHARE``,
wired by the caller): the cycle and the webhook keep the rest.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any

from sync_core.core import oneway
from sync_core.core.convert import to_dataverse
from sync_core.core.entities import (
    CREATED_ON,
    ENTITY_SETS,
    OWNER,
    PRIMARY_IDS,
    microsoft_fields,
    read_columns,
    row_id,
)
from sync_core.core.errors import StateConflictError
from sync_core.core.fieldmap import FieldMap, FieldValueError, canonical_values
from sync_core.core.golive import CHUNKS_IN_FLIGHT, JOB_CURSOR, InitialPolicy, JobState, JobStatus, WorkKind
from sync_core.core.matching import email_key
from sync_core.core.models import Cursor, Direction, EntityType, Link
from sync_core.cycle.apply import Applier
from sync_core.cycle.engine import MARKETO_CHANGES
from sync_core.cycle.ledger import Batch, OpenFailures, Pending, Tally
from sync_core.cycle.oneway import OneWayValues
from sync_core.cycle.overlap import MARKETO_CHANGES_TAIL
from sync_core.cycle.schema_cache import active_schema
from sync_core.golive.plan import MARKETO_EXTRA_FIELDS
from sync_core.golive.snapshot import Snapshot, WorkItem
from sync_core.wiring.services import Services

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int | None], None]


class JobConflictError(RuntimeError):
    """The job row changed under this apply: another apply of the job is running."""


class Checkpoints:
    """The job row in the state store, written ETag-conditionally."""

    def __init__(self, services: Services) -> None:
        self._store = services.store
        self._etag: str | None = None

    def load(self) -> JobState | None:
        cursor = self._store.get_cursor(JOB_CURSOR)
        if cursor is None:
            return None
        self._etag = cursor.etag
        return JobState.model_validate_json(cursor.value)

    def save(self, state: JobState, *, fresh: bool = False) -> JobState:
        """Write ``state``; ``fresh``: replace whatever row is there (a new plan)."""
        if fresh:
            existing = self._store.get_cursor(JOB_CURSOR)
            self._etag = existing.etag if existing else None
        try:
            stored = self._store.put_cursor(Cursor(name=JOB_CURSOR, value=state.model_dump_json(), etag=self._etag))
        except StateConflictError as err:
            raise JobConflictError("the initial-sync job row changed meanwhile: is another apply running?") from err
        self._etag = stored.etag
        return state


def rewind_marketo_changes(services: Services, planned: str | None) -> None:
    """Once every pair is linked, the cycle re-reads Marketo's changes from the plan's moment (``planned``).

    A cycle that ran during the apply read the edits of persons the job had not linked yet and
    could not apply them (unlinked); the job then linked those persons with the plan's values.
    Reading the changes again, now that they are linked, applies them; changes applied already
    equal their baselines and write nothing. A cycle running right now loses its ETag-conditional
    cursor write and ends; the next one reads from here."""
    store = services.store
    for _ in range(5):  # a cycle may store its cursor in between: read it again and retry
        current = store.get_cursor(MARKETO_CHANGES)
        if planned is None or current is None or current.value == planned:
            return
        try:
            store.put_cursor(current.model_copy(update={"value": planned}))
            break
        except StateConflictError:
            continue
    tail = store.get_cursor(MARKETO_CHANGES_TAIL)
    if tail is not None:
        store.delete_cursor(tail.model_copy(update={"etag": None}))
    log.info("initial sync: Marketo changes are re-read from the plan's moment")


class InitialSync:
    """One job's apply over its snapshot (see the module docstring)."""

    def __init__(
        self,
        services: Services,
        snapshot: Snapshot,
        checkpoints: Checkpoints,
        state: JobState,
        *,
        policy: InitialPolicy,
        progress: Progress | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._services = services
        self._snapshot = snapshot
        self._checkpoints = checkpoints
        self.state = state
        self._progress = progress or (lambda stage, done, total: None)
        self._clock = clock
        self._work = ChunkWork(services, job_id=state.job_id, policy=policy, clock=clock)
        self._loaded = False
        self._lock = threading.Lock()  # the job row and the snapshot's connection: one chunk at a time
        self._mark = time.perf_counter()

    def run(self) -> JobState:
        """Every chunk not done yet, ``CHUNKS_IN_FLIGHT`` at a time (in order of their numbers); then
        the job is done. While one chunk writes its links to Table Storage the next one's API calls
        go: the chunks are independent, and each is marked started and done on its own. The first
        failure stops new chunks; those in flight run to their end, then it is raised."""
        if not self._loaded:
            self._work.open_failures.load()
            self._loaded = True
        self.begin()
        total = self.state.chunks
        self._progress("apply", self.state.done_count, total)
        todo = [number for number in range(total) if not self.state.is_done(number)]
        self._mark = time.perf_counter()
        error: BaseException | None = None
        with ThreadPoolExecutor(max_workers=CHUNKS_IN_FLIGHT, thread_name_prefix="initial-chunk") as pool:
            running: set[Future[dict[str, int]]] = set()
            while (todo and error is None) or running:
                while todo and error is None and len(running) < CHUNKS_IN_FLIGHT:
                    running.add(pool.submit(contextvars.copy_context().run, self.apply_chunk, todo.pop(0)))
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    error = error or future.exception()
                    self._progress("apply", self.state.done_count, total)
        if error is not None:
            raise error
        self.rewind_marketo_changes()
        self.state = self._checkpoints.save(
            self.state.model_copy(update={"status": JobStatus.DONE, "finished_at": self._clock().isoformat()})
        )
        return self.state

    def begin(self) -> None:
        """The job is being applied: its row says so, and the cycle's cursors start where the plan read."""
        if self.state.status is not JobStatus.APPLYING:
            self.state = self._checkpoints.save(
                self.state.model_copy(
                    update={"status": JobStatus.APPLYING, "apply_started_at": self._clock().isoformat()}
                )
            )
        self.set_cycle_cursors()

    def rewind_marketo_changes(self) -> None:
        rewind_marketo_changes(self._services, (self._snapshot.meta("cursors") or {}).get(MARKETO_CHANGES))

    def set_cycle_cursors(self) -> None:
        """The cycle starts where the plan read, unless it has cursors of its own already."""
        store = self._services.store
        for name, value in (self._snapshot.meta("cursors") or {}).items():
            if store.get_cursor(name) is None:
                try:
                    store.put_cursor(Cursor(name=name, value=value))
                except StateConflictError:
                    log.info("initial sync: cursor %s was set meanwhile; kept", name)

    # -- one chunk ------------------------------------------------------------------------------

    def apply_chunk(self, number: int) -> dict[str, int]:
        """Do chunk ``number`` (again, safely, if it was started before) from the snapshot; what it did."""
        with self._lock:
            resumed = self.state.is_started(number)
            if not resumed:
                self.state = self._checkpoints.save(self.state.with_started(number))
            items = self._snapshot.chunk(number)
        counts = self._work.apply_chunk(str(number), chunk_payload(items), items, resumed=resumed)
        with self._lock:
            # The apply's time, not the chunk's: chunks overlap, so each adds the time since the last
            # one was done (the status view's pace is this sum over the chunks done).
            now = time.perf_counter()
            self.state = self._checkpoints.save(self.state.with_done(number, counts, now - self._mark))
            self._mark = now
        log.info("initial sync %s: chunk %d done (%d items)", self.state.job_id, number, len(items))
        return counts


def chunk_payload(items: Sequence[WorkItem], **extra: Any) -> dict[str, Any]:
    """What a chunk is, by ids only (the job queue's chunk rows hold it): its kind and entity, its
    persons' Marketo ids (links, leads) and its records' Dataverse ids (links, persons), in order;
    a link's two ids at the same position. Never a value of the records."""
    if not items:
        return {"kind": WorkKind.LINK.value, "entity": EntityType.LEAD.value, **extra}
    kind = WorkKind(items[0].kind)
    payload: dict[str, Any] = {"kind": kind.value, "entity": items[0].entity or EntityType.LEAD.value}
    if kind in (WorkKind.LINK, WorkKind.LEAD):
        payload["marketo_ids"] = [int(item.marketo_id or 0) for item in items]
    if kind in (WorkKind.LINK, WorkKind.PERSON):
        payload["dataverse_ids"] = [str(item.dataverse_id) for item in items]
    return payload | extra


def read_items(services: Services, field_map: FieldMap, payload: Mapping[str, Any]) -> list[WorkItem]:
    """The chunk's work items with both sides' rows read again by id, in the shape the plan read them
    (Marketo: the mapped fields and ``MARKETO_EXTRA_FIELDS``, 300 ids a Get Leads call; Dataverse: the
    columns the sync reads, a ``$filter`` of escaped GUID literals per 100 ids). A person or record
    gone since the plan comes back as ``None`` (its item is skipped, counted ``gone``)."""
    kind, entity = WorkKind(payload["kind"]), EntityType(payload["entity"])
    marketo_ids = [int(mid) for mid in payload.get("marketo_ids", [])]
    dataverse_ids = [str(did).lower() for did in payload.get("dataverse_ids", [])]
    persons: dict[int, dict[str, Any]] = {}
    if marketo_ids:
        fields = list(dict.fromkeys([*MARKETO_EXTRA_FIELDS, *field_map.marketo_fields]))
        persons = {int(row["id"]): row for row in services.marketo.get_leads(marketo_ids, fields=fields)}
    records: dict[str, dict[str, Any]] = {}
    if dataverse_ids:
        columns = read_columns(entity, field_map.columns(entity))
        for row in services.dataverse.get_rows(ENTITY_SETS[entity], dataverse_ids, select=columns):
            records[row_id(entity, row)] = row
    if kind is WorkKind.LINK:
        pairs = zip(marketo_ids, dataverse_ids, strict=True)
        return [WorkItem(kind, entity, mid, did, persons.get(mid), records.get(did)) for mid, did in pairs]
    if kind is WorkKind.PERSON:
        return [WorkItem(kind, entity, None, did, None, records.get(did)) for did in dataverse_ids]
    return [WorkItem(kind, entity, mid, None, persons.get(mid), None) for mid in marketo_ids]


class ChunkWork:
    """The one way a chunk's work is done, by the in-process apply (items from the snapshot) and by a
    job-queue worker (items read again by id: ``read_items``); the same decisions either way, from
    the values it is given (fresher ones on the queue). Holds what chunks of one job share in a
    process: the open failures, the owners and accounts looked up (bounded: ``OneWayValues``)."""

    def __init__(
        self,
        services: Services,
        *,
        job_id: str,
        policy: InitialPolicy,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._services = services
        self._job_id = job_id
        self._policy = policy
        self._clock = clock
        self.open_failures = OpenFailures(services.store)
        self._lock = threading.Lock()
        self._one_way: OneWayValues | None = None
        self._field_map: FieldMap | None = None
        self._caller: str | None = None

    @property
    def services(self) -> Services:
        return self._services

    def _calling_user(self) -> str:
        """The application user this job calls Dataverse as (``WhoAmI``, once per ``ChunkWork``): the
        owner Dataverse gives a lead created without an ``ownerid``."""
        with self._lock:
            if self._caller is None:
                self._caller = self._services.dataverse.who_am_i().lower()
            return self._caller

    def apply_chunk(
        self, label: str, payload: Mapping[str, Any], items: Sequence[WorkItem] | None = None, *, resumed: bool
    ) -> dict[str, int]:
        """Do the chunk ``payload`` names (``items``: its rows as the plan read them; None: read them
        again by id). ``resumed``: it may have run before (the process died in it), so what it did
        already is looked up first and nothing is created twice. What it did."""
        services = self._services
        if items is None:
            items = read_items(services, self._read_map(), payload)
        tally = Tally()
        applier = Applier(
            marketo=services.marketo,
            dataverse=services.dataverse,
            store=services.store,
            field_map=services.field_map,
            dynamics_delete_policy=services.settings.dynamics_delete_policy,
            marketo_delete_policy=services.settings.marketo_delete_policy,
            run_id=f"initial-{self._job_id}-{label}",
            now=self._clock(),
            open_failures=self.open_failures,
            tally=tally,
            # Chunks run side by side and share the places, and the plan counts ⌈writes / batch⌉
            # calls a chunk: no chunk spreads its last wave of messages.
            spread_messages=False,
        )
        applier.first_contact = self._policy.first_contact
        # The owners and accounts looked up stay known for the whole job (not one chunk): a few
        # owners hold most records, and the cache is bounded (``OneWayValues``).
        with self._lock:
            if self._one_way is None:
                self._one_way = applier.one_way
            applier.one_way = self._one_way
        applier.prepare()
        counts: dict[str, int] = {}
        kind, entity = WorkKind(payload["kind"]), EntityType(payload["entity"])
        if items:
            if kind is WorkKind.LINK:
                counts = self._link(applier, entity, items)
            elif kind is WorkKind.PERSON:
                counts = self._persons(applier, entity, items, resumed)
            else:
                counts = self._leads(applier, items, resumed)
            counts["collisions"] = tally.collisions
            counts["failures"] = tally.failures
            counts["written_marketo"] = tally.written_marketo
            counts["written_dynamics"] = tally.written_dynamics
            if resumed:
                counts["chunks_resumed"] = 1
        return counts

    def _read_map(self) -> FieldMap:
        """The field map the plan read with (the active schema's: drifted fields left out)."""
        if self._field_map is None:
            services = self._services
            schema = active_schema(
                services.store, services.marketo, services.dataverse, services.field_map, now=self._clock()
            )
            self._field_map = schema.field_map
        return self._field_map

    def _linked_persons(self, marketo_ids: Sequence[int]) -> dict[int, Link]:
        """The links of these persons. A chunk's persons are in id order, so their links are one
        range of the links table, read in pages (a ``$filter`` per 14 ids would be a partition
        scan each in Table Storage: over a million links, far slower)."""
        wanted = set(marketo_ids)
        if not wanted:
            return {}
        last = max(wanted)
        found: dict[int, Link] = {}
        for link in self._services.store.iter_links(after_marketo_id=min(wanted) - 1):
            if link.marketo_id > last:
                break
            if link.marketo_id in wanted:
                found[link.marketo_id] = link
        return found

    def _link(self, applier: Applier, entity: EntityType, items: Sequence[WorkItem]) -> dict[str, int]:
        """Link the chunk's pairs, except those linked meanwhile: by this chunk's interrupted run
        (counted as done), or by the cycle, which links a record that changed since the plan by the
        same matching rule (its link is newer than the plan's values: left alone). A link's two rows
        live in two partitions: a run killed between their writes leaves this pair readable by one
        id only, so it is written again (not counted as done, nor left half-linked)."""
        done_before = 0
        store = self._services.store
        by_person = self._linked_persons([int(i.marketo_id or 0) for i in items])
        by_record = store.get_links_by_dataverse_ids(entity, [str(i.dataverse_id) for i in items])
        kept = []
        for item in items:
            mid, did = int(item.marketo_id or 0), str(item.dataverse_id)

            def this_pair(link: Link | None, mid: int = mid, did: str = did) -> bool:
                return link is not None and (link.marketo_id, link.entity, link.dataverse_id) == (mid, entity, did)

            person_row, record_row = by_person.get(mid), by_record.get(did)
            if this_pair(person_row) and this_pair(record_row):
                done_before += 1
            elif (person_row is None or this_pair(person_row)) and (record_row is None or this_pair(record_row)):
                kept.append(item)
        items = kept
        gone = sum(1 for item in items if item.marketo is None or item.dynamics is None)
        now = applier.now
        pending = [
            Pending(
                Link(
                    marketo_id=int(item.marketo_id or 0),
                    entity=entity,
                    dataverse_id=str(item.dataverse_id),
                    baseline={},
                    updated_at=now,
                ),
                marketo=item.marketo,
                marketo_full=True,
                dynamics=item.dynamics,
                marketo_extra=microsoft_fields(entity, str(item.dataverse_id), (item.dynamics or {}).get(CREATED_ON)),
                event="linked",
            )
            for item in items
            if item.marketo is not None and item.dynamics is not None
        ]
        applier.sync_linked(pending)
        return {"linked": applier.tally.linked + done_before} | ({"gone": gone} if gone else {})

    def _persons(
        self, applier: Applier, entity: EntityType, items: Sequence[WorkItem], resumed: bool
    ) -> dict[str, int]:
        rows = [item.dynamics for item in items if item.dynamics is not None]
        gone = {"gone": len(items) - len(rows)} if len(rows) < len(items) else {}
        ids = [str(row[PRIMARY_IDS[entity]]).lower() for row in rows]
        store = self._services.store
        already = store.get_links_by_dataverse_ids(entity, ids)
        if already:
            # A link readable by its record only (a run killed between its two rows): written again.
            by_person = store.get_links_by_marketo_ids([link.marketo_id for link in already.values()])
            halves = [link for link in already.values() if link.marketo_id not in by_person]
            if halves:
                store.upsert_links(halves)
        rest = [row for row, rid in zip(rows, ids, strict=True) if rid not in already]
        if not resumed:
            # Marketo refuses a createOnly whose email (or microsoftId) a person has: never a duplicate.
            applier.new_records.create_persons(entity, rest)
            return {"persons_created": applier.tally.created + len(already)} | gone
        applier.new_records.link_new(entity, rest, lambda ids: {})
        # A person found by the matching rule was created by the interrupted run of this chunk.
        return {"persons_created": applier.tally.created + applier.tally.linked + len(already)} | gone

    def _leads(self, applier: Applier, items: Sequence[WorkItem], resumed: bool) -> dict[str, int]:
        """Marketo-only persons get a lead (policy ``create-lead``), then are linked to it."""
        entity = EntityType.LEAD
        services = self._services
        field_map = applier.field_map
        mappings = field_map.for_entity(entity)
        metadata = applier.metadata.get(entity)
        persons = {int(item.marketo_id or 0): item.marketo for item in items if item.marketo is not None}
        gone = {"gone": len(items) - len(persons)} if len(persons) < len(items) else {}
        existing: dict[str, str] = {}
        found_rows: dict[str, dict[str, Any]] = {}  # lead id -> its owner and creation time, as read
        done_before = 0
        linked = self._linked_persons(sorted(persons))
        done_before = len(linked)
        for mid in linked:
            persons.pop(mid, None)
        if resumed:
            email = field_map.email_field(entity)
            column = email.column(entity) if email else None
            emails = [str(p.get(email.marketo)) for p in persons.values() if email and p.get(email.marketo)]
            if column and emails:
                for row in services.dataverse.find_by_emails(
                    ENTITY_SETS[entity], emails, select=[PRIMARY_IDS[entity], OWNER, CREATED_ON], attribute=column
                ):
                    key = email_key(row.get(column))
                    if key:
                        existing[key] = str(row[PRIMARY_IDS[entity]]).lower()
                        found_rows[existing[key]] = row
        batch = Batch()
        ledger = applier.ledger
        to_create: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
        links: list[tuple[int, str, dict[str, Any]]] = []
        email_mapping = field_map.email_field(entity)
        for mid, person in persons.items():
            values = canonical_values(mappings, person, side="marketo")
            found = email_key(person.get(email_mapping.marketo)) if email_mapping else None
            if found and found in existing:
                links.append((mid, existing[found], values))
                continue
            try:
                lead = to_dataverse(field_map, entity, values, metadata=metadata, creating=True)
            except FieldValueError as err:
                lead_problems = [str(err)]
            else:
                lead_problems = lead.problems
            stub = Link(marketo_id=mid, entity=entity, dataverse_id="")
            if lead_problems:
                ledger.fail_person(batch, stub, Direction.TO_DYNAMICS, lead_problems, code="validation", keys=[])
                continue
            to_create.append((mid, lead.payload, values))
        if to_create and metadata is not None:
            outcomes = services.dataverse.create_multiple(metadata, [payload for _, payload, _ in to_create])
            for (mid, _, values), outcome in zip(to_create, outcomes, strict=True):
                if outcome.ok and outcome.id:
                    links.append((mid, outcome.id.lower(), values))
                    applier.tally.written_dynamics += 1
                else:
                    stub = Link(marketo_id=mid, entity=entity, dataverse_id="")
                    reason = f"Dynamics refused the lead: {outcome.message or outcome.status}"
                    ledger.fail_person(batch, stub, Direction.TO_DYNAMICS, [reason], code=outcome.code, keys=[])
        if links:
            # The person gets what the cycle would write on seeing the lead: the sync-owned fields and
            # the owner's fields (``core.oneway``), and its baseline records them, so the lead's
            # creation, read back through the delta feed, is no change (no write, no echo). A lead
            # created here is owned by the calling user (Dynamics' default: no ``ownerid`` is sent);
            # one found by email (a resumed chunk) by the owner read with it.
            caller = {OWNER: self._calling_user()} if any(did not in found_rows for _, did, _ in links) else {}
            rows = [found_rows.get(did, caller) for _, did, _ in links]
            owned = applier.one_way.values_for(entity, rows)
            writes = [oneway.writes(values, {}, applier.one_way_fields) for values in owned]
            results = services.marketo.sync_leads(
                [
                    {"id": mid, **written, **microsoft_fields(entity, did, row.get(CREATED_ON))}
                    for (mid, did, _), row, written in zip(links, rows, writes, strict=True)
                ],
                action="updateOnly",
                lookup_field="id",
            )
            for (mid, did, values), row, written, result in zip(links, rows, writes, results, strict=True):
                applier.tally.written_marketo += int(result.ok)
                baseline = oneway.settled(
                    values,
                    {},
                    edits={},
                    written=written if result.ok else {},
                    owner=applier.one_way.owner(oneway.owner_id(row)),
                )
                batch.links.append(
                    Link(marketo_id=mid, entity=entity, dataverse_id=did, baseline=baseline, updated_at=applier.now)
                )
        ledger.record(batch)
        return {"leads_created": len(links) + done_before} | gone


def outcome_against_plan(plan: Mapping[str, Any], outcome: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """The plan's numbers next to what happened, for the apply's report."""
    planned_links = sum((plan.get("link") or {}).values())
    planned_persons = sum((plan.get("create_persons") or {}).values())
    refused = sum((plan.get("refused") or {}).values())
    return {
        "linked": {"planned": planned_links, "done": outcome.get("linked", 0)},
        "persons_created": {
            "planned": int((plan.get("writes") or {}).get("persons_created", 0)),
            "of_records": planned_persons,
            "done": outcome.get("persons_created", 0),
        },
        "leads_created": {"planned": int(plan.get("create_leads") or 0), "done": outcome.get("leads_created", 0)},
        "conflicts": {
            "planned": sum(
                n for fields in (plan.get("conflicts") or {}).values() for w in fields.values() for n in w.values()
            ),
            "done": outcome.get("collisions", 0),
        },
        "refused": {"planned": refused, "done": outcome.get("failures", 0)},
    }
