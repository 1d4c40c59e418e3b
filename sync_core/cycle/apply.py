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
- an unlinked Dynamics record goes to ``newrecords`` (qualification, match or a new person);
- the sync filter (``core.syncfilter``, issue 19): a linked pair either side's filter excludes
  is not merged nor written; the link stays and remembers which side excluded it
  (``Link.filtered_out``), so the pair resumes when admitted again, merged from fresh reads of
  both sides (what changed meanwhile was not applied). A side's verdict is taken from its feed
  when the feed carries the filter's fields (the Dataverse row always does; the Marketo feed when
  a filter field changed), else from the link. Kept out: counted per side, never a failure;
- deletes, in one place (B3): a Dynamics record found gone (its delta, a read, a 404 on write)
  flags its person per the policy and unlinks; a person found gone in Marketo unlinks and is not
  sent across; with policy ``delete`` a Marketo delete deletes the Dynamics record;
- a record either side refuses (validation before sending, or the service's own verdict) is
  not written on that side, keeps its old baseline there, and goes to the ``ledger`` (a failure
  with a retry schedule and, the first time or when the reason changes, the activity log).

Nothing here logs person data: ids and counts only.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sync_core.core import oneway
from sync_core.core.entities import ENTITY_SETS, PARENT_CUSTOMER, PRIMARY_IDS, read_columns, row_id
from sync_core.core.errors import ApiError, TransientError
from sync_core.core.fieldmap import FieldMap, FieldValueError, Unreadable, Winner, canonical_values
from sync_core.core.merge import Merge, Plan, merge_record, plan, settle
from sync_core.core.models import Collision, Direction, EntityType, Link, RecordFailure
from sync_core.core.schema import EntityMeta, MarketoFieldMeta
from sync_core.core.syncfilter import NO_FILTER, Side, SyncFilter
from sync_core.core.validate import DriftItem
from sync_core.cycle import schema_cache
from sync_core.cycle.ledger import Batch, Ledger, OpenFailures, Pending, Tally, person_key, record_key
from sync_core.cycle.newrecords import NewRecords
from sync_core.cycle.oneway import OneWayValues
from sync_core.dataverse.client import DataverseClient, WriteOutcome
from sync_core.marketo.activity import SyncFailure
from sync_core.marketo.client import LeadOutcome, LeadWriteResult, MarketoClient
from sync_core.settings import DynamicsDeletePolicy, MarketoDeletePolicy
from sync_core.state import StateStore

log = logging.getLogger(__name__)
_W = TypeVar("_W")

NOT_FOUND_CODES = frozenset({"0x80040217"})
ACCOUNT_FAN_OUT = 3000  # linked contacts merged per batch when an account changes (10 Marketo calls)

Take = Callable[[Sequence[int]], Mapping[int, Mapping[str, Any]]]


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
        marketo_delete_policy: MarketoDeletePolicy = MarketoDeletePolicy.IGNORE,
        run_id: str,
        now: datetime,
        open_failures: OpenFailures,
        tally: Tally,
        sync_filter: SyncFilter = NO_FILTER,
        spread_messages: bool = True,
    ) -> None:
        self.marketo = marketo
        self.dataverse = dataverse
        self.store = store
        self._configured = field_map
        self.field_map = field_map  # the map in force: the configured one minus drifted fields
        self._dynamics_delete_policy = dynamics_delete_policy
        self._marketo_delete_policy = marketo_delete_policy
        self._run_id = run_id
        self.now = now
        self.tally = tally
        self.sync_filter = sync_filter
        # A batch's last wave of bulk messages spread over the places (``message_sizes``): off where
        # batches run side by side and share the places, and their calls are planned (the go-live).
        self._spread_messages = spread_messages
        self._cached_columns: dict[EntityType, set[str]] | None = None  # see ``_known_columns``
        self.ledger = Ledger(
            store=store, marketo=marketo, tally=tally, open_failures=open_failures, run_id=run_id, now=now
        )
        self._new = NewRecords(self)
        self.new_records = self._new  # unlinked Dynamics records: match or create (the initial sync uses it too)
        self.one_way = OneWayValues(dataverse, on_denied=self.one_way_unreadable)
        self.metadata: dict[EntityType, EntityMeta] = {}
        self.described: dict[str, MarketoFieldMeta] | None = None
        self.drift: list[DriftItem] | None = None  # None until checked
        # Who wins a field both sides hold differently on a first link (the initial sync's policy);
        # None: the B2 rule, as for any collision.
        self.first_contact: Mapping[EntityType, Winner] | None = None
        # The Dynamics-owned person fields Marketo has (all, until its describe says otherwise)
        self.one_way_fields: tuple[str, ...] = tuple(dict.fromkeys(oneway.fields_for(EntityType.CONTACT)))

    # -- schema: metadata, describe, drift (only when there is work) ----------------------------

    def prepare(self, *, refresh: bool = False) -> None:
        """Both sides' schema (from the state store's hour-long cache, else the services), the map
        checked against it, drifted fields dropped. ``refresh``: the services refused a field."""
        if self.drift is not None and not refresh:
            return
        schema = schema_cache.active_schema(
            self.store,
            self.marketo,
            self.dataverse,
            self._configured,
            now=self.now,
            refresh=refresh,
            extra_columns=self.sync_filter.dynamics.fields,
        )
        self.metadata = schema.metadata
        self.described = schema.described
        self.field_map = schema.field_map
        names = dict.fromkeys(oneway.fields_for(EntityType.CONTACT))
        self.one_way_fields = tuple(name for name in names if name in schema.described)
        missing = [
            DriftItem("marketo", None, name, (oneway.KEY_PREFIX + name,), "not a Marketo person field: not filled")
            for name in names
            if name not in schema.described
        ]
        if missing:
            log.warning("%d Dynamics-owned person field(s) missing in Marketo; they are not filled", len(missing))
        self.drift = [*schema.drift, *missing]

    def one_way_unreadable(self, table: str, reason: str) -> None:
        """A table the Dynamics-owned person fields come from that the sync may not read (403), or
        whose changes it cannot track: reported as drift; those fields stay unfilled, the rest syncs."""
        self.prepare()
        if any(item.side == "dynamics" and item.name == table for item in self.drift or []):
            return
        keys = tuple(oneway.KEY_PREFIX + name for name in oneway.READ_FROM[table])
        self.drift = [*(self.drift or []), DriftItem("dynamics", None, table, keys, reason)]

    def marketo_fields(self) -> list[str]:
        """The person fields the cycle reads: the mapped ones and the Marketo filter's."""
        return list(dict.fromkeys([*self.field_map.marketo_fields, *self.sync_filter.marketo.fields]))

    def change_fields(self) -> list[str]:
        """The fields read from Marketo's change feed: the mapped ones, the Marketo filter's and the
        Dynamics-owned ones (to see Marketo edits of those). Before ``prepare``, those the cached schema says Marketo
        lacks are left out (a field Marketo lacks fails the read, and a cycle must not pay for
        finding that out again every time)."""
        one_way = self.one_way_fields
        if self.drift is None:
            cached = schema_cache.load(self.store, self._configured, now=self.now)
            if cached is not None:
                one_way = tuple(name for name in one_way if name in cached.described)
        return list(dict.fromkeys([*self.marketo_fields(), *one_way]))

    def dataverse_columns(self, entity: EntityType) -> list[str]:
        """The columns the cycle reads of ``entity``: its own, the mapped ones and the Dynamics filter's."""
        mapped = [*self.field_map.columns(entity), *self._filter_columns(entity)]
        return list(dict.fromkeys(read_columns(entity, mapped)))

    def _filter_columns(self, entity: EntityType) -> list[str]:
        """The Dynamics filter's columns on ``entity``. Its boolean field is left out where the table
        is known not to have it: as in the native sync, a missing filter field means "sync" (so the
        default ``new_synctomkto`` costs nothing on an org that never added it). A condition's
        columns are always read: one the table lacks is refused by Dataverse, loudly."""
        flt = self.sync_filter.dynamics
        known = self._known_columns(entity) if flt.field is not None else None
        return [name for name in flt.fields if known is None or name != flt.field or name in known]

    def _known_columns(self, entity: EntityType) -> set[str] | None:
        """The columns ``entity`` is known to have: from this cycle's schema, else from the state
        store's schema cache (one Table read, no API call); None when neither knows."""
        if entity in self.metadata:
            return set(self.metadata[entity].attributes)
        if self._cached_columns is None:
            cached = schema_cache.load(
                self.store, self._configured, now=self.now, extra_columns=self.sync_filter.dynamics.fields
            )
            self._cached_columns = (
                {} if cached is None else {e: set(meta.attributes) for e, meta in cached.metadata.items()}
            )
        return self._cached_columns.get(entity)

    # -- the sync filter (issue 19) ---------------------------------------------------------------

    def admits_row(self, row: Mapping[str, Any]) -> bool:
        """Whether the Dynamics filter lets this Dataverse row sync."""
        return self.sync_filter.dynamics.admits(row)

    def admits_person(self, person: Mapping[str, Any]) -> bool:
        """Whether the Marketo filter lets this person (all its filter fields known) sync."""
        return self.sync_filter.marketo.admits(person)

    def _remembered(self, link: Link, side: Side) -> bool | None:
        """The link's verdict for ``side``, if it was decided under the current filters; else None."""
        return side in link.filtered_out if link.filter_key == self.sync_filter.key else None

    def _dynamics_excludes(self, item: Pending) -> bool | None:
        """The Dynamics verdict: from the row when the feed brought it, else as the link remembers;
        None: unknown (the filters changed since the link was decided)."""
        if not self.sync_filter.dynamics.active:
            return False
        if item.dynamics is not None:
            return not self.admits_row(item.dynamics)
        return self._remembered(item.link, Side.DYNAMICS)

    def _marketo_excludes(self, item: Pending) -> bool | None:
        """The Marketo verdict: from the person when every filter field is known (a full read, or
        the feed changed them all), as the link remembers when the feed changed none; None: unknown
        (some filter fields changed, or the filters changed since the link was decided)."""
        flt = self.sync_filter.marketo
        if not flt.active:
            return False
        staged = item.marketo or {}
        if item.marketo_full or all(name in staged for name in flt.fields):
            return not flt.admits(staged)
        if any(name in staged for name in flt.fields):
            return None
        return self._remembered(item.link, Side.MARKETO)

    def _exclusions(self, item: Pending) -> tuple[Side, ...]:
        """The sides that keep this pair out now (an unknown verdict, when a read failed to settle
        it, keeps the link's)."""
        dynamics, marketo = self._dynamics_excludes(item), self._marketo_excludes(item)
        if dynamics is None:
            dynamics = Side.DYNAMICS in item.link.filtered_out
        if marketo is None:
            marketo = Side.MARKETO in item.link.filtered_out
        sides = [Side.DYNAMICS] if dynamics else []
        return (*sides, Side.MARKETO) if marketo else tuple(sides)

    def _keep_out(self, item: Pending, sides: tuple[Side, ...], out: Batch) -> None:
        """A pair the filter excludes: nothing written to either side, counted, not a failure. An
        existing link remembers the sides (a new or moving link is simply not made)."""
        link = item.link
        self.tally.filtered_dynamics += Side.DYNAMICS in sides
        self.tally.filtered_marketo += Side.MARKETO in sides
        if item.event is not None or item.replaces is not None:
            return
        for direction in Direction:
            self.ledger.resolve(out, person_key(direction, link.marketo_id))
        if sides != link.filtered_out or link.filter_key != self.sync_filter.key:
            update = {"filtered_out": sides, "filter_key": self.sync_filter.key, "updated_at": self.now}
            out.links.append(link.model_copy(update=update))

    # -- a page of the Dataverse delta ----------------------------------------------------------

    def page_links(self, entity: EntityType, rows: Sequence[Mapping[str, Any]]) -> dict[str, Link]:
        """The links of a delta page's rows, by lowercase Dataverse id: what ``dynamics_page`` looks
        up, read ahead (the engine reads the first page while the change feed is read)."""
        return self.store.get_links_by_dataverse_ids(entity, _rows_by_id(entity, rows))

    def dynamics_page(
        self,
        entity: EntityType,
        rows: Sequence[Mapping[str, Any]],
        deleted_ids: Sequence[str],
        take: Take,
        *,
        ahead: Mapping[str, Link] | None = None,
        hold: bool = False,
        release: Callable[[], None] | None = None,
    ) -> None:
        """One page of a table's delta: its deletions, then its rows merged (linked) or linked.

        ``hold``: the page's linked records are recorded held (``Ledger.hold``), when they are the
        page's last work (no unlinked rows, whose linking reads links after them): the engine
        writes them while the next page's writes (or the persons step's first) are in flight.
        ``release`` writes the records held (the page before's) and what waits for them (the
        engine's ``_release``; ``Ledger.flush`` by default): before this page reads a link, and
        once this page's writes are in flight.

        ``ahead``: rows' links as ``page_links`` read them earlier, less those a write of this cycle
        may have changed since (the engine's read ahead). Only the links it holds are taken from
        it: the page's other ids are read again (found unlinked then, a record may have been linked
        since: by this cycle, or by the webhook, which makes new links outside the cycle's lease),
        and it is not used at all when this page's deletions unlink something first."""
        release = release or self.ledger.flush
        if deleted_ids:
            release()
            gone = self.store.get_links_by_dataverse_ids(entity, deleted_ids)
            if gone:
                ahead = None
            self.dynamics_deleted(list({link.marketo_id: link for link in gone.values()}.values()))
            handled = {link.marketo_id for link in gone.values()}
            self._deleted_unlinked(entity, [i.lower() for i in deleted_ids if i.lower() not in gone], handled)
            self.ledger.resolve_now(record_key(entity, i) for i in deleted_ids)
        if not rows:
            return
        by_id = _rows_by_id(entity, rows)
        if ahead is None:
            release()
            links = self.store.get_links_by_dataverse_ids(entity, by_id)
        else:
            links = {i: ahead[i] for i in by_id if i in ahead}
            unlinked_ahead = [i for i in by_id if i not in links]
            if unlinked_ahead:
                release()
                links.update(self.store.get_links_by_dataverse_ids(entity, unlinked_ahead))
        linked = [(links[i], row) for i, row in by_id.items() if i in links]
        unlinked = [row for i, row in by_id.items() if i not in links]
        staged = take([link.marketo_id for link, _ in linked])
        with LinkedWrites(self) as writes:
            writes.add([Pending(link, marketo=staged.get(link.marketo_id), dynamics=row) for link, row in linked])
            release()  # the page before's records, while this page's writes are in flight
            if hold and not unlinked:
                self.ledger.hold()
        if unlinked:
            self._new.link_new(entity, unlinked, take)

    # -- linked records -------------------------------------------------------------------------

    def sync_linked(self, items: Sequence[Pending]) -> None:
        """Merge and write linked records (any mix of leads and contacts), then record the results."""
        with LinkedWrites(self) as writes:
            writes.add(items)

    def _plan_linked(self, items: Sequence[Pending], *, spread: bool = True) -> _Planned | None:
        """The first half of ``sync_linked``: what is missing read, merged, validated (nothing written
        yet, except the records found gone meanwhile). None when there is nothing to do. ``spread``
        False: the fewest bulk messages, whatever this applier's ``spread_messages``."""
        if not items:
            return None
        self.prepare()
        out = Batch()
        items = self._complete(items, out)
        self._one_way(items)
        planned: list[tuple[Pending, Merge, Plan]] = []
        for item in items:
            excluded = self._exclusions(item)
            if excluded:
                self._keep_out(item, excluded, out)
                continue
            entity = item.link.entity
            mappings = self.field_map.for_entity(entity)
            m_values = canonical_values(mappings, item.marketo or {}, side="marketo")
            try:
                d_values = canonical_values(mappings, item.dynamics or {}, side=entity.value)
            except FieldValueError as err:
                self.ledger.fail_person(out, item.link, Direction.TO_MARKETO, [str(err)], code="unreadable", keys=[])
                continue
            merge = merge_record(
                mappings,
                entity,
                marketo=m_values,
                dynamics=d_values,
                baseline=item.link.baseline,
                first_contact=self.first_contact,
            )
            record_plan = plan(
                self.field_map, entity, merge, metadata=self.metadata.get(entity), described=self.described
            )
            planned.append((item, merge, record_plan))
        writes: dict[EntityType, int] = {}
        for item, _, record_plan in planned:
            if _writes_dynamics(record_plan):
                writes[item.link.entity] = writes.get(item.link.entity, 0) + 1
        spread = spread and self._spread_messages
        messages = self.dataverse.messages_for(list(writes.values()), fill_places=spread)
        return _Planned(planned, out, messages, spread)

    def _send_linked(self, batch: _Planned, gate: Callable[[], None] | None = None) -> _Sent:
        """Start the batch's writes, both sides at once, on threads of their own; returns at once.
        With a ``gate``, they start once it has returned, on a thread of its own (a batch queued
        behind others: ``LinkedWrites.add(wait=False)``); when it raises, neither side is written."""
        # The two sides' writes are independent: a failure of either ends the batch's recording (the
        # records whose writes both went through may have been recorded already: ``_record_written``),
        # and the repeat merges to the same values, writing nothing twice.
        written: queue.SimpleQueue[dict[int, WriteOutcome]] = queue.SimpleQueue()
        news = threading.Event()

        def on_written(outcomes: dict[int, WriteOutcome]) -> None:
            written.put(outcomes)
            news.set()

        pool = ThreadPoolExecutor(max_workers=2 if gate is None else 3, thread_name_prefix="linked-write")
        try:
            opened = None if gate is None else pool.submit(contextvars.copy_context().run, gate)

            def after_gate(write: Callable[..., _W], *args: Any, **kwargs: Any) -> _W:
                if opened is not None:
                    try:
                        opened.result()
                    except BaseException as err:
                        raise NotSentError("not sent: the batches before it failed or stopped") from err
                return write(*args, **kwargs)

            dynamics = pool.submit(
                contextvars.copy_context().run,
                after_gate,
                self._write_dynamics,
                batch.planned,
                on_written,
                spread=batch.spread,
            )
            marketo = pool.submit(contextvars.copy_context().run, after_gate, self._write_marketo, batch.planned)
        finally:
            pool.shutdown(wait=False)
        for side in (dynamics, marketo):
            side.add_done_callback(lambda _: news.set())
        return _Sent(batch, dynamics, marketo, written, news, gate=opened)

    def _record_written(self, sent: _Sent) -> None:
        """While a batch is in flight: record its records whose writes are done on both sides (its
        Marketo writes, and the bulk message that carried its Dynamics write, if any), so that their
        Table writes overlap the messages still in flight. Nothing before the Marketo side has
        ended well (its calls answer for all the batch's records at once)."""
        if not sent.marketo.done() or sent.marketo.exception() is not None:
            return
        d_outcomes = sent.written()
        ready = [
            position
            for position, (_, _, record_plan) in enumerate(sent.batch.planned)
            if position not in sent.recorded and (position in d_outcomes or not _writes_dynamics(record_plan))
        ]
        if ready:
            self._record_settled(sent, ready, d_outcomes, sent.marketo.result(), Batch())

    def _finish_linked(self, sent: _Sent) -> None:
        """The second half: the writes' outcomes settled into baselines, failures and collisions,
        then recorded (``Ledger.record``), with what the plan found (``_Planned.out``) and the
        activity-log lines of the records recorded while the batch was in flight."""
        d_outcomes, m_results = sent.outcomes()
        rest = [position for position in range(len(sent.batch.planned)) if position not in sent.recorded]
        self._record_settled(sent, rest, d_outcomes, m_results, sent.batch.out, last=True)

    def _record_failed(self, sent: _Sent) -> None:
        """A batch whose writes failed: the records whose writes went through on both sides are
        recorded (with the activity-log lines of those recorded before), and so are those whose
        writes went through on one side only, when the other side's failed as a whole: their
        written half becomes their baseline, the other half a failure that is retried. Left
        unrecorded, the values the batch wrote to one side would have no baseline, and the next
        cycle would read them back from that side's changes as its user's edits, winning a
        collision with an edit made on the other side since (Marketo's on a lead, Dynamics' on a
        contact). Not recorded: a new or moved link whose Marketo write failed (the person's
        Microsoft ids must land before the link is recorded), nor a record none of whose writes
        went through."""
        self._record_written(sent)
        if sent.done():
            self._record_one_side(sent)
        if sent.activities:
            self._record_settled(sent, [], {}, {}, Batch(), last=True)

    def _record_one_side(self, sent: _Sent) -> None:
        """Of a failed batch, the records whose writes went through on one side (``_record_failed``)."""
        d_error, m_error = sent.dynamics.exception(), sent.marketo.exception()
        answered = sent.written()
        planned = sent.batch.planned
        rest = [p for p in range(len(planned)) if p not in sent.recorded]
        if m_error is None and d_error is not None:
            # Its Marketo writes went through: the records whose bulk message was not answered.
            outcomes = dict.fromkeys((p for p in rest if p not in answered), _unanswered(d_error))
            self._record_settled(sent, list(outcomes), outcomes, sent.marketo.result(), Batch())
        elif m_error is not None:
            # Its Marketo call failed: the records whose Dynamics write was answered (no Marketo
            # verdict: ``_settle`` records that half as not written, to be retried).
            written = [p for p in rest if p in answered and not planned[p][0].marketo_extra]
            self._record_settled(sent, written, answered, {}, Batch())

    def _record_settled(
        self,
        sent: _Sent,
        positions: Sequence[int],
        d_outcomes: Mapping[int, WriteOutcome],
        m_results: Mapping[int, LeadWriteResult],
        out: Batch,
        *,
        last: bool = False,
    ) -> None:
        """These records of a batch settled into ``out`` and recorded. The activity-log lines wait
        for the batch's ``last`` record (one Marketo call for the batch, as before)."""
        planned = sent.batch.planned
        for position in positions:
            item, merge, record_plan = planned[position]
            self._settle(item, merge, record_plan, d_outcomes.get(position), m_results.get(position), out)
            sent.recorded.add(position)
        if last:
            out.activities[:0], sent.activities = sent.activities, []
        else:
            sent.activities += out.activities
            out.activities = []
        self.ledger.record(out)

    def _complete(self, items: Sequence[Pending], out: Batch) -> list[Pending]:
        """Read a side where the feed's view may be wrong; drop records that turned out to be gone.

        A pair the filter keeps out is not read (nothing will be written); one resuming (its link
        says it was kept out, and it is admitted now) is read in full on both sides; a side whose
        verdict is unknown (the filters changed since the link was decided) is read to decide it."""
        need_marketo: set[int] = set()
        for item in items:
            link = item.link
            if item.marketo_full:
                continue
            marketo = self._marketo_excludes(item)
            dynamics = self._dynamics_excludes(item)
            if marketo is None or (
                not marketo and dynamics is not True and (self._doubtful(link) or link.filtered_out)
            ):
                need_marketo.add(link.marketo_id)
        persons: dict[int, dict[str, Any]] = {}
        if need_marketo:
            for person in self.marketo.get_leads(sorted(need_marketo), fields=["id", *self.change_fields()]):
                persons[int(person["id"])] = person
        read: list[Pending] = []
        for item in items:
            link = item.link
            if link.marketo_id in need_marketo:
                current = persons.get(link.marketo_id)
                if current is None:  # deleted in Marketo (B3)
                    self._person_gone(out, link)
                    continue
                item.marketo, item.marketo_full = current, True
            read.append(item)
        need_dynamics: dict[EntityType, set[str]] = {}
        for item in read:
            link = item.link
            if item.dynamics is None and (
                self._dynamics_excludes(item) is None
                or (not self._exclusions(item) and (self._doubtful(link) or link.filtered_out))
            ):
                need_dynamics.setdefault(link.entity, set()).add(link.dataverse_id.lower())
        rows: dict[tuple[EntityType, str], dict[str, Any]] = {}
        for entity, ids in need_dynamics.items():
            for row in self.dataverse.get_rows(ENTITY_SETS[entity], sorted(ids), select=self.dataverse_columns(entity)):
                rows[(entity, row_id(entity, row))] = row
        kept: list[Pending] = []
        gone_in_dynamics: list[Link] = []
        for item in read:
            link = item.link
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

    def _doubtful(self, link: Link) -> bool:
        """Whether the feeds' view of a linked pair may be wrong: a mapped field without a baseline
        yet, or an open failure (a side not in its feed is then read rather than assumed)."""
        keys = [m.key for m in self.field_map.for_entity(link.entity)]
        return any(key not in link.baseline for key in keys) or self.ledger.has_open_failure(link.marketo_id)

    def _one_way(self, items: Sequence[Pending]) -> None:
        """The Dynamics-owned person values of each record (from its row, unless given), the Marketo
        edits of them to overwrite, and what to write."""
        rows: dict[EntityType, list[Pending]] = {}
        for item in items:
            if item.one_way is None and item.dynamics is not None:
                rows.setdefault(item.link.entity, []).append(item)
        for entity, group in rows.items():
            found = [item.dynamics or {} for item in group]
            known = [
                oneway.known_owner(item.link.baseline, oneway.owner_id(row))
                for item, row in zip(group, found, strict=True)
            ]
            for item, row, values in zip(group, found, self.one_way.values_for(entity, found, known), strict=True):
                item.one_way = values
                item.owner = self.one_way.owner(oneway.owner_id(row))
        edited = 0
        edited_names: set[str] = set()
        for item in items:
            baseline = item.link.baseline
            item.one_way_seen = oneway.marketo_edits(item.link.entity, item.marketo, baseline)
            names = oneway.edited(item.one_way_seen, baseline)
            edited_names.update(names)
            edited += len(names)
            seen = {**baseline, **{oneway.KEY_PREFIX + k: v for k, v in item.one_way_seen.items()}}
            item.one_way_writes = oneway.writes(item.one_way or {}, seen, self.one_way_fields)
        if edited:
            self.tally.one_way_edits += edited
            log.info(
                "cycle %s: %d Marketo edit(s) of Dynamics-owned fields (%s), overwritten at the next Dynamics change",
                self._run_id,
                edited,
                ", ".join(sorted(edited_names)),
            )

    # -- an account changed ------------------------------------------------------------------------

    def accounts_changed(self, rows: Sequence[Mapping[str, Any]], deleted_ids: Sequence[str], take: Take) -> None:
        """Accounts from their change feed: the company fields of every linked contact's person,
        written in bulk (Marketo's 300 a call), not one call per person. The persons' staged Marketo
        changes are merged in the same batch (so an edit of a company field made since the last
        cycle is seen, and overwritten, now)."""
        self.one_way.forget_accounts(deleted_ids)  # their contacts went with them (cascade)
        if not rows:
            return
        self.prepare()
        self.one_way.remember_accounts(rows)
        self.tally.accounts += len(rows)
        ids = [str(row[oneway.ACCOUNT.primary_id]).lower() for row in rows]
        parents: dict[str, str] = {}  # contact id -> account id, at most ACCOUNT_FAN_OUT at a time
        for contact in self.dataverse.iter_by_lookup(
            ENTITY_SETS[EntityType.CONTACT], PARENT_CUSTOMER, ids, select=[PRIMARY_IDS[EntityType.CONTACT]]
        ):
            parents[row_id(EntityType.CONTACT, contact)] = str(contact[PARENT_CUSTOMER]).lower()
            if len(parents) >= ACCOUNT_FAN_OUT:
                self._fan_out(parents, take)
                parents = {}
        self._fan_out(parents, take)

    def _fan_out(self, parents: Mapping[str, str], take: Take) -> None:
        """The company fields of these contacts' accounts to their linked persons, in one batch."""
        if not parents:
            return
        links = self.store.get_links_by_dataverse_ids(EntityType.CONTACT, sorted(parents))
        staged = take([link.marketo_id for link in links.values()])
        items = [
            Pending(link, marketo=staged.get(link.marketo_id), one_way=self.one_way.company(parents[i]))
            for i, link in links.items()
        ]
        self.tally.account_contacts += len(items)
        self.sync_linked(items)

    def _write_dynamics(
        self,
        planned: Sequence[tuple[Pending, Merge, Plan]],
        on_written: Callable[[dict[int, WriteOutcome]], None] | None = None,
        *,
        spread: bool,
    ) -> dict[int, WriteOutcome]:
        """The batch's Dynamics writes; ``on_written`` gets each bulk message's outcomes (by position
        in ``planned``) as it is answered. ``spread``: whether its messages are spread over the
        places (``_Planned.spread``)."""
        by_entity: dict[EntityType, list[tuple[int, dict[str, Any]]]] = {}
        for position, (item, _, record_plan) in enumerate(planned):
            if _writes_dynamics(record_plan):
                row = {PRIMARY_IDS[item.link.entity]: item.link.dataverse_id, **record_plan.dynamics}
                by_entity.setdefault(item.link.entity, []).append((position, row))
        outcomes: dict[int, WriteOutcome] = {}
        if not by_entity:
            return outcomes
        tables = list(by_entity.values())

        def written(table: int, answered: Sequence[WriteOutcome]) -> None:
            if on_written is not None:
                on_written({tables[table][outcome.index][0]: outcome for outcome in answered})

        # Leads and contacts share the bulk messages' places (not one table after the other), and
        # a last wave of messages that would leave places idle is spread over them.
        answers = self.dataverse.update_tables(
            [(self.metadata[entity], [row for _, row in rows]) for entity, rows in by_entity.items()],
            fill_places=spread,
            on_written=written,
        )
        for rows, results in zip(by_entity.values(), answers, strict=True):
            for (position, _), outcome in zip(rows, results, strict=True):
                outcomes[position] = outcome
        return outcomes

    def _write_marketo(self, planned: Sequence[tuple[Pending, Merge, Plan]]) -> dict[int, LeadWriteResult]:
        records: list[tuple[int, dict[str, Any]]] = []
        for position, (item, _, record_plan) in enumerate(planned):
            payload = {} if record_plan.marketo_problems else dict(record_plan.marketo)
            payload.update(item.marketo_extra)
            payload.update(item.one_way_writes)
            if payload:
                records.append((position, {"id": item.link.marketo_id, **payload}))
        if not records:
            return {}
        results = self.marketo.sync_leads([r for _, r in records], action="updateOnly", lookup_field="id")
        return {position: result for (position, _), result in zip(records, results, strict=True)}

    def _settle(
        self,
        item: Pending,
        merge: Merge,
        record_plan: Plan,
        d_outcome: WriteOutcome | None,
        m_result: LeadWriteResult | None,
        out: Batch,
    ) -> None:
        link = item.link
        if m_result is not None and m_result.outcome is LeadOutcome.NOT_FOUND:
            # The person was deleted in Marketo (B3). The Dynamics half of the merge (the person's
            # last edits) may have gone already: it counts as written.
            if merge.to_dynamics and d_outcome is not None and d_outcome.ok:
                self.tally.written_dynamics += 1
            self._person_gone(out, link)
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
        extra_ok = m_result is not None and m_result.ok
        if (merge.to_marketo and m_ok) or ((item.marketo_extra or item.one_way_writes) and extra_ok):
            self.tally.written_marketo += 1
        for collision in merge.collisions:
            out.collisions.append(
                Collision(
                    id=uuid.uuid4().hex,
                    at=self.now,
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
            self.ledger.fail_person(
                out, link, Direction.TO_DYNAMICS, reasons, code=code, keys=list(merge.to_dynamics), transient=transient
            )
        else:
            self.ledger.resolve(out, person_key(Direction.TO_DYNAMICS, link.marketo_id))
        one_way_failed = bool(item.one_way_writes) and not extra_ok
        if (merge.to_marketo and not m_ok) or one_way_failed:
            reasons, code = _marketo_reasons(record_plan, m_result)
            keys = [*merge.to_marketo, *(oneway.KEY_PREFIX + name for name in item.one_way_writes)]
            # No verdict: the Marketo call failed as a whole (``_record_failed``), to be retried.
            unanswered = m_result is None and not record_plan.marketo_problems
            self.ledger.fail_person(
                out, link, Direction.TO_MARKETO, reasons, code=code, keys=keys, transient=unanswered
            )
        else:
            self.ledger.resolve(out, person_key(Direction.TO_MARKETO, link.marketo_id))
        new_baseline = oneway.settled(
            settle(link.baseline, merge, dynamics_written=d_ok, marketo_written=m_ok),
            link.baseline,
            edits=item.one_way_seen,
            written=item.one_way_writes if extra_ok else {},
            owner=item.owner,
        )
        key = self.sync_filter.key
        if (
            new_baseline != link.baseline
            or item.replaces is not None
            or item.event is not None
            or link.filtered_out
            or link.filter_key != key
        ):
            update = {"baseline": new_baseline, "updated_at": self.now, "filtered_out": (), "filter_key": key}
            out.links.append(link.model_copy(update=update))
            if item.replaces is not None:
                out.replaced.append(item.replaces)
            if item.event == "linked":
                self.tally.linked += 1
            elif item.event == "qualified":
                self.tally.qualified += 1

    # -- deletes --------------------------------------------------------------------------------

    def dynamics_deleted(self, links: Sequence[Link]) -> None:
        """Dynamics records deleted (B3): flag the person (policy ``flag``) and unlink."""
        if not links:
            return
        self._flag_deleted(links)
        out = Batch()
        for link in links:
            self.ledger.unlink(out, link)
        self.ledger.record(out)

    def _flag_deleted(self, links: Sequence[Link]) -> None:
        """Flag the persons of deleted Dynamics records ``microsoftIsDeleted`` (policy ``flag``)."""
        # A pair the filter keeps out is not written: its person is not flagged, only unlinked.
        flag = [link for link in links if not link.filtered_out]
        if self._dynamics_delete_policy is DynamicsDeletePolicy.FLAG and flag:
            results = self.marketo.sync_leads(
                [{"id": link.marketo_id, "microsoftIsDeleted": True} for link in flag],
                action="updateOnly",
                lookup_field="id",
            )
            flagged = sum(1 for result in results if result.ok)
            self.tally.flagged_deleted += flagged
            self.tally.written_marketo += flagged

    def _deleted_unlinked(self, entity: EntityType, dataverse_ids: Sequence[str], handled: set[int]) -> None:
        """Deleted records that no link names. A person whose ``microsoftId`` is one of them and who is
        linked to nothing was written by a cycle that failed before it recorded the link (the
        record was matched or created, then deleted before the next cycle): it is flagged as the
        linked person would be (B3). One Marketo read per page that has such deletions."""
        if not dataverse_ids:
            return
        found = self.marketo.find_leads("microsoftId", dataverse_ids, fields=["id", "microsoftId"])
        persons = {
            int(p["id"]): str(p["microsoftId"]).lower()
            for p in found
            if p.get("microsoftId") and int(p["id"]) not in handled  # ``handled``: flagged by their link
        }
        if not persons:
            return
        linked = self.store.get_links_by_marketo_ids(list(persons))
        orphans = [i for i in persons if i not in linked]
        if not orphans:
            return
        # Flagged as a linked person would be; there is no link to remove (nor to count as unlinked),
        # only the failures the failed cycle left for the person, with nothing left to retry.
        self._flag_deleted([Link(marketo_id=i, entity=entity, dataverse_id=persons[i]) for i in orphans])
        out = Batch()
        for marketo_id in orphans:
            self.ledger.resolve_person(out, marketo_id)
        self.ledger.record(out)

    def marketo_deleted(self, marketo_ids: Sequence[int]) -> None:
        """Persons deleted in Marketo, with policy ``delete``: their Dynamics records go too."""
        links = self.store.get_links_by_marketo_ids(marketo_ids)
        if not links:
            return
        out = Batch()
        for link in links.values():
            if link.filtered_out:  # kept out by the filter: not written, only unlinked
                self.ledger.unlink(out, link)
            else:
                self._delete_in_dynamics(out, link)
        self.ledger.record(out)

    def _person_gone(self, out: Batch, link: Link) -> None:
        """A linked person found missing in Marketo (on a read or a write): it was deleted there. The
        link goes; with policy ``delete`` the Dynamics record goes too, as when the deletions feed
        reports it (a record seen changed in the same cycle must not escape the policy)."""
        if self._marketo_delete_policy is MarketoDeletePolicy.DELETE and not link.filtered_out:
            self._delete_in_dynamics(out, link)
        else:
            self.ledger.unlink(out, link)

    def _delete_in_dynamics(self, out: Batch, link: Link) -> None:
        try:
            deleted = self.dataverse.delete(ENTITY_SETS[link.entity], link.dataverse_id)
        except ApiError as err:
            reasons = [f"delete refused: {err.code or err.status}"]
            self.ledger.fail_person(out, link, Direction.TO_DYNAMICS, reasons, code="delete", keys=[])
            return
        if deleted:  # False: it was gone already (deleted in Dynamics meanwhile); only the link goes
            self.tally.deleted_in_dynamics += 1
            self.tally.written_dynamics += 1
        self.ledger.unlink(out, link)

    def unlinked_persons(self, staged: Mapping[int, Mapping[str, Any]]) -> None:
        """Staged changes of persons with no link: only a Marketo filter's No → Yes matters here."""
        if self.sync_filter.marketo.active and staged:
            self._new.link_admitted_persons(staged)

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
            links = self.store.get_links_by_marketo_ids(sorted(persons))
            orphans = [f.key for f in failures if f.marketo_id in persons - links.keys()]
            self.ledger.resolve_now(orphans)  # the link went since: nothing left to retry
            self.sync_linked([Pending(link) for link in links.values()])
        for entity, ids in records.items():
            self.prepare()
            rows = self.dataverse.get_rows(ENTITY_SETS[entity], sorted(ids), select=self.dataverse_columns(entity))
            found = {row_id(entity, row) for row in rows}
            already = self.store.get_links_by_dataverse_ids(entity, sorted(found))
            # Gone since, or linked meanwhile: nothing left to retry.
            self.ledger.resolve_now(record_key(entity, i) for i in ids if i not in found or i in already)
            self._new.link_new(entity, [row for row in rows if row_id(entity, row) not in already], take)


@dataclass
class _Planned:
    """A batch of linked records merged and validated: what to write, and what to record so far."""

    planned: list[tuple[Pending, Merge, Plan]]
    out: Batch
    messages: int  # the Dataverse bulk messages its writes take
    spread: bool  # whether they are spread over the places (``message_sizes``)


class NotSentError(TransientError):
    """A batch queued behind others (``LinkedWrites.add(wait=False)``) that was not sent: one of
    those it waited for failed, or the pipeline stopped. Its persons' changes were not written."""


@dataclass
class _Sent:
    """A batch whose writes are in flight: both sides' futures, the Dynamics outcomes of each bulk
    message as it is answered (``written``), an event set on each answer and when a side ends, and
    the records recorded so far (``Applier._record_written``)."""

    batch: _Planned
    dynamics: Future[dict[int, WriteOutcome]]
    marketo: Future[dict[int, LeadWriteResult]]
    _answers: queue.SimpleQueue[dict[int, WriteOutcome]]
    _news: threading.Event
    gate: Future[None] | None = None  # a queued batch's wait for room (``LinkedWrites.add(wait=False)``)
    _written: dict[int, WriteOutcome] = field(default_factory=dict)
    recorded: set[int] = field(default_factory=set)  # positions in ``batch.planned``
    activities: list[SyncFailure] = field(default_factory=list)  # activity-log lines kept for the last record

    def done(self) -> bool:
        return self.dynamics.done() and self.marketo.done()

    @property
    def places(self) -> int:
        """The Dataverse places its bulk messages hold (``LinkedWrites``' limit)."""
        return max(1, self.batch.messages)

    def waiting(self) -> bool:
        """Whether its writes wait for room still (queued behind the batches before it)."""
        return self.gate is not None and not self.gate.done()

    def wait(self) -> None:
        """Until a bulk message is answered or a side ends since the last ``wait`` (at once if one was)."""
        self._news.wait()
        self._news.clear()  # what came before is seen by the caller's next look (it follows this)

    def written(self) -> dict[int, WriteOutcome]:
        """The Dynamics outcomes answered so far, by position in ``batch.planned``."""
        while True:
            try:
                self._written.update(self._answers.get_nowait())
            except queue.Empty:
                return self._written

    def outcomes(self) -> tuple[dict[int, WriteOutcome], dict[int, LeadWriteResult]]:
        """Both sides' outcomes, once both are done; a side's failure is raised (Dynamics' first)."""
        both: list[Future[Any]] = [self.dynamics, self.marketo]
        futures.wait(both)
        return self.dynamics.result(), self.marketo.result()


class LinkedWrites:
    """Batches of linked records written as a pipeline: while batches' writes are in flight, the
    caller prepares the next (its link look-ups, staged changes, merge) and the batches done are
    recorded, in the order they were added. ``add`` merges a batch, waits until the bulk messages
    in flight leave room for its own (at most ``messages`` at once across batches: the Dataverse
    parallelism; a batch alone may take more, each of its calls then waits for a place as
    ``update_tables`` does), starts its writes, then records the batches that finished; leaving
    the ``with`` records the rest. Marketo's calls keep their own limit (the rate budget). Leaving
    the ``with`` (``close``), while it waits for a batch, the records of its bulk messages already
    answered are recorded (once its Marketo writes are done: ``Applier._record_written``), so their
    Table writes overlap the messages still in flight; the rest of the batch is recorded once all
    its writes are done. (``add`` does not: there, the batch waited for is recorded after the next
    one is sent, which nothing should delay.)

    Only for batches of distinct persons that the batches before cannot change (the persons step:
    each person once, a link written only by its own batch); a Dataverse page is not (a
    qualification or a match of one page changes the links the next one looks up), so there a
    page's batch is recorded, or held with its links known to the watches, before the next page's
    links are used, and a link it touched is read again once it is written
    (``Applier.dynamics_page``). Within a batch the
    order does not change (a record's Table writes follow its API writes; the cursors all of
    them). When a batch's writes fail, no batch is sent after it; the batches in flight are waited
    for and those whose writes went through are recorded (as they would have been one after the
    other), and of the failed batch the records whose writes went through (their bulk message was
    answered, and its Marketo writes ended), then the failure is raised. When the caller fails
    between two batches, the batches in flight are recorded the same way before its failure goes on."""

    def __init__(self, applier: Applier, *, messages: int = 1) -> None:
        self._applier = applier
        self._limit = max(1, messages)
        self._in_flight: deque[_Sent] = deque()
        self._stopped = threading.Event()  # a failure: the batches queued and not sent never are

    def add(self, items: Sequence[Pending], *, spread: bool = True, wait: bool = True) -> None:
        """``spread`` False: the batch's fewest bulk messages (``Applier._plan_linked``). ``wait``
        False: a batch the batches in flight leave no room for is not waited for but queued behind
        them: its writes start, on a thread of their own, as soon as they leave room (so that a
        caller busy with something else leaves no place idle meanwhile), and not at all when one
        it waited for failed (``NotSentError``; that one's failure is raised, as ``add`` would
        have). The batches done before it are recorded, as ``add`` records them."""
        batch = self._applier._plan_linked(items, spread=spread)
        if batch is None:
            return
        need = max(1, batch.messages)
        if not wait:
            self._queue(batch, need)
            return
        done: list[_Sent] = []
        try:
            while self._in_flight and _held(self._in_flight) + need > self._limit:
                # Not recorded while waiting for room: the next batch goes as soon as it has room,
                # and the batches done are recorded while it is in flight (below).
                self._in_flight[0].outcomes()  # a failure is raised here: this batch is not sent
                done.append(self._in_flight.popleft())
        except BaseException:
            self._failed(self._in_flight.popleft())
            self._record_after_failure(done)
            raise
        self._in_flight.append(self._applier._send_linked(batch))
        for sent in done:
            self._applier._finish_linked(sent)

    def _queue(self, batch: _Planned, need: int) -> None:
        ahead = list(self._in_flight)
        limit, stopped = self._limit, self._stopped

        def room() -> None:  # as ``add`` waits, the batches before in order, on the batch's thread
            before = deque(ahead)
            while before and _held(before) + need > limit:
                before.popleft().outcomes()  # a failure is raised here: this batch is not sent
            if stopped.is_set():
                raise NotSentError("the pipeline stopped")

        gate = room if _held(ahead) + need > limit else None
        self._in_flight.append(self._applier._send_linked(batch, gate))
        done: list[_Sent] = []
        try:
            while len(self._in_flight) > 1 and self._in_flight[0].done():
                self._in_flight[0].outcomes()
                done.append(self._in_flight.popleft())
        except BaseException:
            self._failed(self._in_flight.popleft())
            self._record_after_failure(done)
            raise
        for sent in done:
            self._applier._finish_linked(sent)

    def waiting(self) -> int:
        """The batches queued (``add(wait=False)``) whose writes wait for room still."""
        return sum(1 for sent in self._in_flight if sent.waiting())

    def room(self) -> int:
        """The bulk messages ``add`` could start now without waiting: the places the batches from
        the first unfinished one on do not hold (``add`` records the finished ones before it)."""
        held = 0
        for sent in self._in_flight:
            if held or not sent.done():
                held += sent.places
        return max(0, self._limit - held)

    def close(self) -> None:
        """Record the batches in flight, in order, once their writes are done."""
        while self._in_flight:
            sent = self._in_flight[0]
            try:
                self._await(sent)
                sent.outcomes()
            except BaseException:
                self._failed(self._in_flight.popleft())
                self._record_after_failure([])
                raise
            self._applier._finish_linked(self._in_flight.popleft())

    def _await(self, sent: _Sent) -> None:
        """Wait until both sides of a batch's writes have ended, recording its records as their
        writes are answered."""
        while not sent.done():
            sent.wait()
            self._applier._record_written(sent)

    def _failed(self, sent: _Sent) -> None:
        """A batch whose writes failed: only its records whose writes went through are recorded."""
        try:
            self._applier._record_failed(sent)
        except Exception:  # the writes' failure is the one to raise
            log.warning("cycle %s: the records written before a failure were not all recorded", self._applier._run_id)

    def _record_after_failure(self, done: list[_Sent]) -> None:
        """After a failure: the batches whose writes went through are recorded; of those whose
        writes failed, the records whose writes went through (``_failed``). A batch queued and not
        sent yet is not sent."""
        self._stopped.set()
        rest, self._in_flight = [*done, *self._in_flight], deque()
        for sent in rest:
            try:
                sent.outcomes()
            except Exception:  # its writes failed too: only what went through is recorded
                self._failed(sent)
                continue
            self._applier._finish_linked(sent)

    def __enter__(self) -> LinkedWrites:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
        else:
            self.abandon()

    def abandon(self) -> None:
        """The caller failed: the batches in flight recorded as far as their writes went (its failure
        is the one to raise, not theirs)."""
        try:
            self._record_after_failure([])
        except Exception:
            log.warning("cycle %s: the batches in flight were not all recorded", self._applier._run_id)


def _held(batches: Iterable[_Sent]) -> int:
    """The places these batches' messages hold."""
    return sum(sent.places for sent in batches)


def _rows_by_id(entity: EntityType, rows: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    primary = PRIMARY_IDS[entity]
    return {str(row[primary]).lower(): row for row in rows if row.get(primary)}


def _storable(value: Any) -> Any:
    return None if isinstance(value, Unreadable) else value


def _dynamics_reasons(record_plan: Plan, outcome: WriteOutcome | None) -> tuple[list[str], str | None]:
    if record_plan.dynamics_problems:
        return record_plan.dynamics_problems, "validation"
    if outcome is None:
        return ["not written"], None
    return dynamics_refusal(outcome)


def dynamics_refusal(outcome: WriteOutcome) -> tuple[list[str], str | None]:
    """The reasons and code a failure records for an update Dataverse refused."""
    # Throttled or an outage (transient) is not a verdict on the record.
    verdict = "did not write the update (retried)" if outcome.transient else "refused the update"
    return [f"Dynamics {verdict}: {outcome.message or outcome.status}"], outcome.code or str(outcome.status)


def _marketo_reasons(record_plan: Plan, result: LeadWriteResult | None) -> tuple[list[str], str | None]:
    if record_plan.marketo_problems:
        return record_plan.marketo_problems, "validation"
    if result is None:
        return ["not written: the Marketo call failed"], "unanswered"
    return marketo_refusal(result)


def marketo_refusal(result: LeadWriteResult) -> tuple[list[str], str | None]:
    """The reasons and code a failure records for a person write Marketo refused."""
    reasons = [f"Marketo: {r.message}" + (f" ({r.code})" if r.code else "") for r in result.reasons]
    return reasons or ["Marketo skipped the update"], result.outcome.value


def _unanswered(error: BaseException) -> WriteOutcome:
    """The outcome of a record whose bulk message failed as a whole with ``error``: not written,
    transient unless the service refused the message with a status that says otherwise."""
    status = getattr(error, "status", None)
    if not isinstance(status, int) or status < 400:
        status = 503
    return WriteOutcome(index=-1, ok=False, status=status, code=getattr(error, "code", None), message=str(error)[:300])


def _writes_dynamics(record_plan: Plan) -> bool:
    """Whether a planned record has a Dynamics write (one row of a bulk message)."""
    return bool(record_plan.dynamics) and not record_plan.dynamics_problems
