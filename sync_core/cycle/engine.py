"""The bidirectional sync cycle (design §3): lease → pull → merge → write → record → cursors.

``SyncEngine.run_cycle`` runs one cycle and returns its ``RunReport`` (also stored for the
status view). The order is what makes it safe:

1. take the cycle lease (two cycles never overlap; it is renewed while the cycle runs);
2. read the Marketo change feed since the stored paging token into the stage (``_staging``:
   latest value per person and field, on local disk); the deleted-persons feed too when the
   Marketo delete policy sends deletes across;
3. stream each Dataverse table's delta (contacts first, so a qualification moves its person's
   link before the qualified lead is seen), page by page (when both tables have a delta link,
   every page of both and their links read during step 2 and spooled to disk, ``preread``;
   otherwise each page and its links read ahead: a table's first, the contacts' during step 2,
   the leads' while the contacts' last page is applied, ``_read_ahead``; each next one while the
   page before is applied, ``_pages``): the page's linked records are merged
   with their staged Marketo changes, new records are linked or get a person, deletions flag
   and unlink; the table's delta link is stored once all its pages are done (each page's
   record is held, ``Ledger.hold``, and written while the next page's writes, or the persons
   step's first batch, are in flight, ``_release``, the delta links after it). A read without a
   delta token (the first one, or after the token expired) is a full read of that table, merged
   the same way, and a check of which linked records it no longer returns (deleted meanwhile);
   while the pages are applied, the persons step's head start writes the persons no page can
   take, which the pre-read's census tells (``_top_up``; from the change feed's read on, half a
   bulk message whenever a Dataverse place is free: ``_write_early``, a person the feed names again
   after that written again at the end; step 4 goes on from its pipeline, unless
   the accounts' changes or the deletes come first: they end it, its batches recorded,
   ``_finish_head``); then the accounts' delta, whose changed accounts' company fields go to
   their linked contacts' persons (``Applier.accounts_changed``, one way);
4. the persons whose Marketo changes no Dataverse page took, in batches of the Dataverse batch
   size times its parallelism per entity, written as a pipeline (``LinkedWrites``: a batch's writes
   in flight while the next persons are looked up and the last batch is recorded; at the end, a
   batch's records recorded as their bulk messages are answered, while its others are in flight;
   the first batch's links looked up ahead, while the last Dataverse table's last page is applied:
   ``_read_persons_ahead``); then the failures due for a retry;
5. only then the Marketo paging tokens are stored.

A crash or a transient failure anywhere repeats the uncommitted window on the next run, and the
merge (values equal to the baseline are not changes) makes the repeat write nothing twice.

A time budget (``CycleOptions.budget``, ``SYNC_CYCLE_BUDGET_SECONDS``) keeps a cycle inside the
host's ``functionTimeout``: checked between pages and batches, never inside one, it stops the
cycle taking new work, which then commits what it finished and ends ``partial`` with ``left``.
What the next tick continues from: a Dataverse table whose pages were all done has its new delta
link stored as always; one cut mid-way keeps its old link and is read again from it (an
intermediate ``@odata.nextLink`` is not taken as a durable position), its applied pages now
echoes; the Marketo paging token moves to the end of what was read, and the persons staged and
not applied are kept by id with the names of their changed fields (``carry``, saved before the
token moves), whose current values the next tick reads from Marketo when it applies them. The
change feed's read itself stops at ``READ_SHARE`` of the budget: then no Dataverse page is applied
(a Dataverse change must not be merged against a Marketo window read only in part), the persons
written while it was read stay written, everything else read is carried and the token moves to
the last page read. A tick stops only once it has done some new
work (``may_stop``), and pages a cut tick applied do not count as new, so every tick gets further.
607 (Marketo's daily quota) and transient errors end the cycle cleanly with those cursors
unchanged. The record-level work is ``_apply.Applier``; this module only orders it.
``run_once_main`` is ``python -m sync_core run-once``; ``run_cycle_from_env`` is the timer's call.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sync_core.core import oneway
from sync_core.core.entities import ENTITY_SETS, row_id
from sync_core.core.errors import (
    ApiError,
    ConfigError,
    DeltaTokenExpiredError,
    LeaseHeldError,
    QuotaExceededError,
    StateConflictError,
    SyncError,
    TransientError,
)
from sync_core.core.fieldmap import FieldMap
from sync_core.core.models import Cursor, EntityType, Lease, Link, RunReport
from sync_core.core.report import Left, Outcome
from sync_core.core.syncfilter import NO_FILTER, SyncFilter
from sync_core.cycle import carry, preread
from sync_core.cycle.accounting import api_delta, build_report, store_delta
from sync_core.cycle.apply import Applier, LinkedWrites
from sync_core.cycle.feedahead import PagesAhead
from sync_core.cycle.lease import Heartbeat, LeaseLost
from sync_core.cycle.ledger import LinkWatch, OpenFailures, Pending, Tally
from sync_core.cycle.overlap import MARKETO_CHANGES_TAIL, ReadTail, TailTracker
from sync_core.cycle.preread import Census, PreRead
from sync_core.cycle.staging import Stage
from sync_core.dataverse.client import SCHEMA_ERROR_CODES, DataverseClient, DeltaPage
from sync_core.http.counters import ApiCounters
from sync_core.jobs import fields
from sync_core.marketo.client import MarketoClient
from sync_core.privacy.prune import prune_state
from sync_core.settings import DynamicsDeletePolicy, MarketoDeletePolicy, Settings
from sync_core.state import StateStore
from sync_core.telemetry import Telemetry, default_telemetry
from sync_core.wiring.services import Services, services_for

_T = TypeVar("_T")

log = logging.getLogger(__name__)

MARKETO_CHANGES = "marketo.leadchanges"
MARKETO_DELETES = "marketo.deletedleads"
ACCOUNTS_CURSOR = "dataverse.account"
ENTITY_ORDER = (EntityType.CONTACT, EntityType.LEAD)  # contacts first: qualifications move links (B9)
LEASE_DURATION = timedelta(seconds=90)  # renewed every third of it by the heartbeat
DATAVERSE_PAGE = 5000  # rows per delta page: the service's maximum
MAX_RETRIES_PER_CYCLE = 1000
MARKETO_UNKNOWN_FIELD = "1006"
READ_SHARE = 0.5  # of the time budget, for reading Marketo's change feed; the rest is for applying it
FEED_AHEAD = 8  # change-feed pages read ahead of the cycle (``PagesAhead``)

Progress = Callable[[str, int, int | None], None]  # (stage, done, total or None)


def dataverse_cursor(entity: EntityType) -> str:
    return f"dataverse.{entity.value}"


@dataclass(frozen=True)
class CycleOptions:
    dynamics_delete_policy: DynamicsDeletePolicy = DynamicsDeletePolicy.FLAG
    marketo_delete_policy: MarketoDeletePolicy = MarketoDeletePolicy.IGNORE
    dataverse_batch_size: int = 1000
    lease_duration: timedelta = LEASE_DURATION
    max_retries: int = MAX_RETRIES_PER_CYCLE
    sync_filter: SyncFilter = NO_FILTER
    budget: timedelta | None = None  # the cycle stops taking new work after this long; None: no budget

    @classmethod
    def from_settings(cls, settings: Settings) -> CycleOptions:
        return cls(
            dynamics_delete_policy=settings.dynamics_delete_policy,
            marketo_delete_policy=settings.marketo_delete_policy,
            dataverse_batch_size=settings.dataverse_batch_size,
            lease_duration=timedelta(seconds=settings.lease_seconds),
            sync_filter=settings.sync_filter,
            budget=timedelta(seconds=settings.cycle_budget_seconds),
        )


def failure_outcome(err: SyncError | OSError) -> tuple[Outcome, str]:
    """How a cycle that ended on ``err`` reports it: ``transient`` when the next tick will likely
    succeed by itself (a service error that outlived the retries: 5xx, a dropped connection, a
    token endpoint down), ``error`` when a person must act (credentials, permissions, the field
    map, a request the service refuses), with a reason that says which."""
    if isinstance(err, ConfigError):
        return Outcome.ERROR, f"configuration: {err}"
    if isinstance(err, TransientError):
        return Outcome.TRANSIENT, str(err)
    if isinstance(err, ApiError):
        if err.status is not None and err.status >= 500:
            return Outcome.TRANSIENT, f"{err.service} server error: {err}"
        if err.status in (401, 403):
            return Outcome.ERROR, f"{err.service} refused the credentials or a permission is missing: {err}"
        return Outcome.ERROR, f"{err.service} refused a request: {err}"
    if isinstance(err, OSError):
        return Outcome.TRANSIENT, f"{type(err).__name__}: {err}"
    return Outcome.ERROR, f"{type(err).__name__}: {err}"


class SyncEngine:
    """Runs sync cycles over injected clients and store (see the module docstring)."""

    def __init__(
        self,
        *,
        marketo: MarketoClient,
        dataverse: DataverseClient,
        store: StateStore,
        field_map: FieldMap,
        counters: ApiCounters,
        options: CycleOptions | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        progress: Progress | None = None,
        stage_dir: str | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._marketo = marketo
        self._dataverse = dataverse
        self._store = store
        self._field_map = field_map
        self._counters = counters
        self._options = options or CycleOptions()
        self._clock = clock
        self._progress = progress or (lambda stage, done, total: None)
        self._stage_dir = stage_dir
        self._telemetry = telemetry or default_telemetry()

    @classmethod
    def from_services(cls, services: Services, *, progress: Progress | None = None) -> SyncEngine:
        return cls(
            marketo=services.marketo,
            dataverse=services.dataverse,
            store=services.store,
            field_map=services.field_map,
            counters=services.counters,
            options=CycleOptions.from_settings(services.settings),
            progress=progress,
        )

    # -- one cycle ----------------------------------------------------------------------------

    def run_cycle(self, *, run_id: str | None = None) -> RunReport:
        started = self._clock()
        run_id = run_id or f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
        wall, cpu = time.perf_counter(), time.process_time()
        api_before = self._counters.snapshot()
        store_before = self._store.counters.model_copy()
        tally = Tally()
        cycle: _Cycle | None = None
        outcome: Outcome = Outcome.OK
        error: str | None = None
        config_error: ConfigError | None = None
        try:
            lease = self._store.acquire_lease(run_id, now=started, duration=self._options.lease_duration)
        except LeaseHeldError as err:
            log.info("cycle %s: another cycle holds the lease; nothing to do", run_id)
            outcome, error = Outcome.LEASE_HELD, str(err)
        else:
            cycle = _Cycle(self, run_id, started, lease, tally)
            try:
                cycle.run()
            except QuotaExceededError:
                log.warning("cycle %s: Marketo's daily API quota is spent; cursors kept", run_id)
                outcome, error = Outcome.QUOTA, "Marketo daily API quota exceeded (607)"
            except LeaseLost as err:
                log.error("cycle %s: %s", run_id, err)
                outcome, error = Outcome.LEASE_LOST, str(err)
            except TransientError as err:
                log.warning("cycle %s ended early: %s; cursors kept", run_id, err)
                outcome, error = Outcome.TRANSIENT, str(err)
            except (SyncError, OSError) as err:
                outcome, error = failure_outcome(err)
                if isinstance(err, ConfigError):
                    config_error = err
                if outcome is Outcome.TRANSIENT:
                    log.warning("cycle %s ended early: %s; cursors kept", run_id, error)
                else:
                    log.error("cycle %s failed: %s", run_id, error)
            finally:
                cycle.release()
        left = cycle.left if cycle is not None and outcome is Outcome.OK else None
        if outcome is Outcome.OK and (tally.failures or left is not None):
            outcome = Outcome.PARTIAL
        finished = self._clock()
        report = RunReport(
            run_id=run_id,
            started_at=started,
            finished_at=finished,
            outcome=outcome,
            report=build_report(
                tally,
                backlog=cycle.backlog if cycle is not None else None,
                drift=cycle.applier.drift if cycle is not None else None,
                api=api_delta(api_before, self._counters.snapshot()),
                table=store_delta(store_before, self._store.counters),
                seconds=time.perf_counter() - wall,
                cpu_seconds=time.process_time() - cpu,
                error=error,
                bulk_fallbacks=self._dataverse.bulk_fallbacks,
                left=left,
            ),
        )
        try:
            self._store.add_run_report(report)
            if outcome in (Outcome.OK, Outcome.PARTIAL):
                # The map the first complete cycle ran with: every field of it is filled for every link
                # it made. A field added later shows as "not backfilled" (``jobs.fields``).
                fields.mark_synced(self._store, (m.key for m in self._field_map.fields), only_if_absent=True)
        except (SyncError, OSError):
            log.exception("cycle %s: the run report could not be stored", run_id)
        log.info(
            "cycle %s %s in %.1fs: %d/%d pulled, %d/%d written (marketo/dynamics), %d collision(s), %d failure(s)",
            run_id,
            outcome,
            report.report.seconds or 0.0,
            tally.pulled_marketo,
            tally.pulled_dynamics,
            tally.written_marketo,
            tally.written_dynamics,
            tally.collisions,
            tally.failures,
        )
        self._telemetry.record_cycle(report)  # the one place a cycle becomes metrics, a span and an event
        if config_error is not None:  # stored and logged; the caller says it the way it says config errors
            raise config_error
        return report


@dataclass
class _Early:
    """The persons step's head start while the change feed is read (``_Cycle._write_early``)."""

    new: list[int] = field(default_factory=list)  # persons the feed named, not looked up yet
    seen: set[int] = field(default_factory=set)  # every person the feed named so far
    free: dict[EntityType, dict[int, Link]] = field(  # linked, no page claims them, not taken yet
        default_factory=lambda: {entity: {} for entity in EntityType}
    )


@dataclass(frozen=True)
class _ReadAhead:
    """A table's next delta page and its rows' links, read on a thread of its own while the cycle
    does something else (``_Cycle._read_page``): what it was asked for (the table, its delta link
    and columns), the read (its page iterator, continued by the next read, the page or None, that
    page's links) and the watch on the links the cycle wrote meanwhile."""

    entity: EntityType
    delta_link: str | None
    select: tuple[str, ...]
    read: Future[tuple[Iterator[DeltaPage], DeltaPage | None, dict[str, Link]]]
    watch: LinkWatch

    def drop(self) -> None:
        """Not used: wait for the read to end (its errors are not this cycle's) and close it."""
        try:
            self.read.result()
        except Exception:  # the read is not used: its error does not matter
            return
        self.close()

    def close(self) -> None:
        """Close the read's page iterator (after its last page, or when it is not used)."""
        pages, _, _ = self.read.result()
        close = getattr(pages, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class _PersonsAhead:
    """The links of the persons step's first persons (``ids``, the pending ones when it started),
    looked up on a thread of its own (``_Cycle._read_persons_ahead``), and the watch on the links
    the cycle wrote meanwhile."""

    ids: frozenset[int]
    read: Future[dict[int, Link]]
    watch: LinkWatch

    def links(self, ids: Sequence[int]) -> tuple[dict[int, Link], list[int]]:
        """Of ``ids``: the links found ahead that no write since can have changed, and the ids to
        look up now (not read ahead, found unlinked: the webhook may have linked them since, or
        whose link or record a write of this cycle touched). The read's error is raised here."""
        found = self.read.result()
        current: dict[int, Link] = {}
        again: list[int] = []
        for marketo_id in ids:
            link = found.get(marketo_id) if marketo_id in self.ids else None
            if link is None or self.watch.touched(link):
                again.append(marketo_id)
            else:
                current[marketo_id] = link
        return current, again

    def drop(self) -> None:
        """Wait for the read to end (its errors are not this cycle's, if it is not used)."""
        with contextlib.suppress(Exception):
            self.read.result()


class _Cycle:
    """The state of one running cycle: its lease, stage, applier and cursor values."""

    def __init__(self, engine: SyncEngine, run_id: str, started: datetime, lease: Lease, tally: Tally) -> None:
        self.engine = engine
        self.run_id = run_id
        self.started = started
        self.heartbeat = Heartbeat(
            engine._store, lease, duration=engine._options.lease_duration, clock=engine._clock, run_id=run_id
        )
        self.tally = tally
        self.open_failures = OpenFailures(engine._store)
        self.applier = Applier(
            marketo=engine._marketo,
            dataverse=engine._dataverse,
            store=engine._store,
            field_map=engine._field_map,
            dynamics_delete_policy=engine._options.dynamics_delete_policy,
            marketo_delete_policy=engine._options.marketo_delete_policy,
            run_id=run_id,
            now=started,
            open_failures=self.open_failures,
            tally=tally,
            sync_filter=engine._options.sync_filter,
        )
        self.backlog: dict[str, int] = {}
        budget = engine._options.budget
        self.budget_seconds = budget.total_seconds() if budget is not None else None
        self.cut: str | None = None  # the step in which the time budget stopped the cycle
        self.left: Left | None = None  # what it left for the next tick (set when cut)
        self.progressed = False  # this tick has done new work (the budget may stop it only then)
        self.carried = carry.Carry()  # what the last cut tick left, as loaded at the start
        self.resume: dict[str, carry.Resume] = {}  # where this tick leaves the table it was cut in
        self._stage: Stage | None = None
        self._held_commits: list[tuple[Cursor | None, str, str | None]] = []  # cursors after held records
        self._ahead: _ReadAhead | None = None  # a table's next page, read while the cycle does something else
        self._persons_ahead: _PersonsAhead | None = None  # the persons step's first links, read likewise
        self._pre: PreRead | None = None  # both tables' delta pages, read whole while the feed is read
        self._head: LinkedWrites | None = None  # the persons step's head start (``_top_up``)
        self._head_ids: Iterator[list[int]] | None = None  # the pending persons it goes through
        self._head_over = False  # it took its last batch, or ended (``_finish_head``)
        self._head_whole = True  # it left no pending person to the persons step but the pages' own
        self._head_buffers: dict[EntityType, list[Pending]] = {entity: [] for entity in EntityType}
        self._early: _Early | None = None  # the head start while the change feed is read (``_write_early``)
        self._head_next: deque[list[int]] = deque()  # its next ids, whose links are read ahead
        self._head_ahead: _PersonsAhead | None = None  # that read (``_read_head_ahead``)

    # -- the time budget ------------------------------------------------------------------------

    def over_budget(self, share: float = 1.0) -> bool:
        """Whether ``share`` of the time budget is spent (by the engine's clock)."""
        if self.budget_seconds is None:
            return False
        return (self.engine._clock() - self.started).total_seconds() >= self.budget_seconds * share

    def may_stop(self, step: str, share: float = 1.0) -> bool:
        """Whether to take no new work from here on: the cycle was cut already, or ``share`` of the
        budget is spent and this tick has done some new work (so every tick gets further than the
        last, whatever its fixed costs: the feed's overlap page, re-read pages, delta reads)."""
        if self.cut is None and self.progressed and self.over_budget(share):
            log.info("cycle %s: time budget reached in step %r; the next tick continues", self.run_id, step)
            self.cut = step
        return self.cut is not None

    # -- lease ------------------------------------------------------------------------------------

    def keep_lease(self) -> None:
        """Stop here if the heartbeat lost the lease (another cycle has it now)."""
        if self.heartbeat.lost:
            raise LeaseLost("the cycle lease was lost (it expired and another cycle took it)")

    def release(self) -> None:
        self.heartbeat.stop()
        try:
            self.engine._store.release_lease(self.heartbeat.lease)
        except (StateConflictError, SyncError, OSError):
            log.warning("cycle %s: the lease could not be released; it expires by itself", self.run_id)

    # -- the steps ----------------------------------------------------------------------------------

    def run(self) -> None:
        self.heartbeat.start()
        self.open_failures.load()
        with Stage(self.engine._stage_dir) as stage:
            self._stage = stage
            try:
                self._steps(stage)
            finally:
                self._abandon_head()
                # The cycle failed with records held: their API writes went through, so they are
                # written (unless another cycle has the lease now: it repeats this window anyway).
                if self.applier.ledger.holding and not self.heartbeat.lost:
                    try:
                        self.applier.ledger.flush()
                    except Exception:  # the cycle's own failure is the one to raise
                        log.warning("cycle %s: the held records were not all written", self.run_id)
                self._drop_ahead()
                self._drop_persons_ahead()
                self._end_pre_read()
                # What is left for later: staged changes not applied (the cycle ended early) and
                # the failures waiting for their retry.
                self.backlog = {"marketo": stage.pending_count(), "retries": len(self.open_failures)}

    def take(self, lead_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The staged changes of these persons, marked taken (``Applier``'s ``take``). A person
        carried from a cut cycle has the fields that changed then read from Marketo now (their
        values were not kept; the current one is the latest the feed would give)."""
        stage = self._stage
        assert stage is not None
        carried = stage.carried_among(lead_ids)
        found = stage.take(lead_ids)
        if carried:
            wanted = set(self.applier.change_fields())
            names = sorted({name for fields in carried.values() for name in fields} & wanted)
            for person in self.engine._marketo.get_leads(sorted(carried), fields=names) if names else []:
                lead_id = int(person["id"])
                now = {name: person.get(name) for name in carried.get(lead_id, ()) if name in wanted}
                found[lead_id] = {**found.get(lead_id, {}), **now}
        return found

    def _steps(self, stage: Stage) -> None:
        engine = self.engine
        store = engine._store
        applier = self.applier
        carried = self.carried = carry.load(store)
        for part in carried.persons(store):
            stage.add_carried(part)
        changes_cursor = store.get_cursor(MARKETO_CHANGES)
        changes_start = changes_cursor.value if changes_cursor else engine._marketo.get_paging_token(self.started)
        # Read again from the last page of activities seen, for those that became visible late (overlap).
        tail_cursor = store.get_cursor(MARKETO_CHANGES_TAIL)
        tail = ReadTail.parse(tail_cursor.value if tail_cursor and changes_cursor else None)
        tracker = TailTracker(tail.token if tail else changes_start, tail)
        self._start_pre_read()  # while the feed is read
        changes_token = self._stage_marketo_changes(stage, tracker)
        deletes_cursor: Cursor | None = None
        deletes_token: str | None = None
        if self.cut is None and engine._options.marketo_delete_policy is MarketoDeletePolicy.DELETE:
            deletes_cursor = store.get_cursor(MARKETO_DELETES)
            deletes_token = self._stage_marketo_deletes(stage, deletes_cursor, changes_start)
        unfinished: list[str] = []  # tables the next tick reads (again) from their stored delta link
        for entity in ENTITY_ORDER:
            if self.may_stop(f"dataverse {ENTITY_SETS[entity]}"):
                unfinished.append(entity.value)
                continue
            cursor = store.get_cursor(dataverse_cursor(entity))
            delta_link = self._sync_table(entity, cursor, stage)
            if delta_link is None and self.cut is not None:
                unfinished.append(entity.value)
            else:
                self._commit(cursor, dataverse_cursor(entity), delta_link)
        self._end_pre_read()  # the head start takes no new batch: the persons step goes on from it
        if not self.may_stop("dataverse accounts"):
            accounts_cursor = store.get_cursor(ACCOUNTS_CURSOR)
            accounts_link = self._sync_accounts(accounts_cursor, stage)
            if accounts_link is None and self.cut is not None:
                unfinished.append(oneway.ACCOUNT.logical_name)
            else:
                self._commit(accounts_cursor, ACCOUNTS_CURSOR, accounts_link)
        else:
            unfinished.append(oneway.ACCOUNT.logical_name)
        if deletes_token is not None and self.cut is None:
            self._finish_head()  # the deletes look links up
            self._release()
            for ids in stage.deleted_ids(engine._options.dataverse_batch_size):
                applier.marketo_deleted(ids)
                self.keep_lease()
        if self.cut is None:
            self._sync_marketo_rest(stage)
        self._finish_head()  # cut: its batches recorded, the persons it took and did not send carried
        self._release()
        # The persons the feed named again after the head start took them (``_write_early``): their
        # new changes, merged against the baselines its batches recorded (carried, when cut).
        if stage.repend_again() and self.cut is None:
            self._sync_marketo_rest(stage)
            self._release()
        self._drop_persons_ahead()  # used or not (the budget cut the cycle before), its watch ends
        retries_left = False
        due = store.due_failures(now=self.started, limit=engine._options.max_retries)
        if due and not self.may_stop("retries"):
            engine._progress("retries", 0, len(due))
            applier.retry(due, self.take)
            engine._progress("retries", len(due), len(due))
        else:
            retries_left = bool(due)
        # The persons read and not applied, kept before the paging token moves past them.
        self.keep_lease()
        persons = carry.save(store, carried, stage.pending_fields(carry.PART_SIZE), tables=self.resume)
        self._commit(changes_cursor, MARKETO_CHANGES, changes_token)
        self._commit(tail_cursor, MARKETO_CHANGES_TAIL, tracker.tail().value())
        if deletes_token is not None and self.cut is None:
            self._commit(deletes_cursor, MARKETO_DELETES, deletes_token)
        if self.cut is not None:
            self.left = Left(
                step=self.cut,
                persons=persons,
                tables=unfinished,
                marketo_feed=self.cut == "marketo changes",
                retries=retries_left,
            )
            return
        prune_state(store, now=self.started)  # retention, in bounded work (privacy.prune)

    def _release(self) -> None:
        """Write the records the ledger holds (``Ledger.hold``: a Dataverse page's), then the
        cursors that waited for them."""
        self.applier.ledger.flush()
        commits, self._held_commits = self._held_commits, []
        for cursor, name, value in commits:
            self._commit(cursor, name, value)

    def _commit(self, cursor: Cursor | None, name: str, value: str | None) -> None:
        """Store a cursor (ETag-conditional: a concurrent writer makes this cycle stop); while the
        ledger holds records, after them (``_release``)."""
        if value is None or (cursor is not None and cursor.value == value):
            return
        if self.applier.ledger.holding:
            self._held_commits.append((cursor, name, value))
            return
        self.keep_lease()
        store = self.engine._store
        try:
            store.put_cursor(Cursor(name=name, value=value, etag=cursor.etag if cursor else None))
        except StateConflictError as err:
            raise LeaseLost(f"cursor {name} was written by someone else meanwhile") from err

    def _stage_marketo_changes(self, stage: Stage, tracker: TailTracker) -> str:
        applier = self.applier
        try:
            return self._read_changes(stage, tracker, applier.change_fields())
        except ApiError as err:
            if err.code != MARKETO_UNKNOWN_FIELD:
                raise
            log.warning("cycle %s: Marketo refused a mapped field; checking the field map for drift", self.run_id)
            applier.prepare(refresh=True)
        return self._read_changes(stage, tracker, applier.change_fields())

    def _read_changes(self, stage: Stage, tracker: TailTracker, fields: Sequence[str]) -> str:
        engine = self.engine
        wanted = set(fields)
        tracker.restart()
        last = tracker.start
        # The persons step starts while the feed is read, when the pre-read can tell which persons
        # the Dataverse pages take and no deletion needs the deletions feed (read after this one).
        if self._pre is not None and engine._options.marketo_delete_policy is not MarketoDeletePolicy.DELETE:
            self._early = _Early()
        pages = engine._marketo.iter_lead_changes(last, fields=fields)
        with PagesAhead(pages, depth=FEED_AHEAD) as ahead:
            for page in ahead:
                changes = [
                    (activity.lead_id, change.name, change.new_value)
                    for activity in tracker.page(page.activities, page.next_page_token)
                    for change in activity.fields
                    if change.name in wanted
                ]
                self.tally.pulled_marketo += stage.add_changes(changes)
                # New work: changes not seen before (the overlap page read again brings none of its own).
                self.progressed = self.progressed or bool(changes)
                last = page.next_page_token
                engine._progress("marketo changes", self.tally.pulled_marketo, None)
                self.keep_lease()
                if page.more_result and self.may_stop("marketo changes", READ_SHARE):
                    break
                self._write_early(dict.fromkeys(lead_id for lead_id, _, _ in changes))
        # Those looked up and not taken are pending: the head start between the pages looks them up
        # again (the pages may change links the census does not claim: an email match).
        self._early = None
        return last

    def _stage_marketo_deletes(self, stage: Stage, cursor: Cursor | None, start_token: str) -> str:
        # The first time, the deletions feed starts where the changes feed started.
        token = cursor.value if cursor else start_token
        for page in self.engine._marketo.iter_deleted_leads(token):
            stage.add_deleted(deleted.lead_id for deleted in page.deleted)
            token = page.next_page_token
            self.keep_lease()
        return token

    def _sync_table(self, entity: EntityType, cursor: Cursor | None, stage: Stage) -> str | None:
        """Every page of one table's delta (or a full read); the new delta link. None when the time
        budget stopped it before the last page (the next tick reads the table again from ``cursor``)."""
        applier = self.applier
        delta_link = cursor.value if cursor else None
        # A read without a delta token (the first, or after an expired one) reports no deletions:
        # links it does not see are to records deleted meanwhile (e.g. after a crashed first cycle).
        full_reread = delta_link is None
        schema_checked = False
        while True:
            done = pages = 0
            # Pages a cut tick applied from this link: read again (echoes), not counted as new work.
            again = self.carried.pages_done(entity.value, delta_link)
            try:
                new_link: str | None = None
                for page, ahead in self._pages(entity, delta_link):
                    if page.delta_link is not None and entity is not ENTITY_ORDER[-1]:
                        # The table's last page: the next table's first is read while it is applied.
                        self._read_ahead(ENTITY_ORDER[ENTITY_ORDER.index(entity) + 1])
                    elif page.delta_link is not None:
                        # The last table's last page: the persons step's first links likewise.
                        self._read_persons_ahead(stage)
                    self.tally.pulled_dynamics += len(page.rows) + len(page.deleted_ids)
                    self._top_up()  # the persons step's head start, while this page is applied
                    if full_reread:
                        stage.add_seen(entity.value, (row_id(entity, row) for row in page.rows))
                    # A page is recorded while the next page's writes (or the persons step's first
                    # messages) are in flight (``_release``), unless a check of the whole table reads
                    # links after it.
                    applier.dynamics_page(
                        entity,
                        page.rows,
                        page.deleted_ids,
                        self.take,
                        ahead=ahead,
                        hold=not full_reread,
                        release=self._release,
                    )
                    done += len(page.rows) + len(page.deleted_ids)
                    self.engine._progress(f"dataverse {ENTITY_SETS[entity]}", done, None)
                    self.keep_lease()
                    new_link = page.delta_link
                    pages += 1
                    self.progressed = self.progressed or (pages > again and bool(page.rows or page.deleted_ids))
                    if new_link is None and pages > again and self.may_stop(f"dataverse {ENTITY_SETS[entity]}"):
                        self.resume[entity.value] = carry.Resume(delta_link or "", pages)
                        return None
                if full_reread:
                    self._release()  # the check reads links
                    self._deleted_while_untracked(entity, stage)
                return new_link
            except DeltaTokenExpiredError:
                if done or delta_link is None:
                    raise
                log.warning("cycle %s: the %s delta token expired; re-reading the table", self.run_id, entity.value)
                delta_link, full_reread = None, True
                self.tally.full_reads.append(entity.value)
            except ApiError as err:
                if done or schema_checked or err.code not in SCHEMA_ERROR_CODES:
                    raise
                log.warning("cycle %s: Dataverse refused a %s column; checking for drift", self.run_id, entity.value)
                applier.prepare(refresh=True)
                schema_checked = True

    def _sync_accounts(self, cursor: Cursor | None, stage: Stage) -> str | None:
        """The accounts' change feed: each changed account's company fields to its linked contacts'
        persons (``Applier.accounts_changed``); the new delta link (None when the time budget
        stopped it, as ``_sync_table``). An org where the sync may not
        read accounts or track their changes keeps syncing the rest (reported as drift)."""
        applier = self.applier
        delta_link = cursor.value if cursor else None
        table = oneway.ACCOUNT.logical_name
        while True:
            done = pages = 0
            again = self.carried.pages_done(table, delta_link)
            try:
                new_link: str | None = None
                for page in self.engine._dataverse.iter_changes(
                    oneway.ACCOUNT.entity_set,
                    select=[oneway.ACCOUNT.primary_id, *oneway.ACCOUNT_COLUMNS],
                    delta_link=delta_link,
                    page_size=DATAVERSE_PAGE,
                    formatted=True,
                ):
                    self.tally.pulled_dynamics += len(page.rows) + len(page.deleted_ids)
                    if page.rows or page.deleted_ids:
                        self._finish_head()  # the accounts' contacts' persons are looked up and taken
                    if page.rows:
                        self._release()  # the accounts' contacts' links are looked up
                    applier.accounts_changed(page.rows, page.deleted_ids, self.take)
                    done += len(page.rows) + len(page.deleted_ids)
                    self.engine._progress("dataverse accounts", done, None)
                    self.keep_lease()
                    new_link = page.delta_link
                    pages += 1
                    self.progressed = self.progressed or (pages > again and bool(page.rows or page.deleted_ids))
                    if new_link is None and pages > again and self.may_stop("dataverse accounts"):
                        self.resume[table] = carry.Resume(delta_link or "", pages)
                        return None
                return new_link
            except DeltaTokenExpiredError:
                if done or delta_link is None:
                    raise
                log.warning("cycle %s: the account delta token expired; re-reading the table", self.run_id)
                delta_link = None
                self.tally.full_reads.append(oneway.ACCOUNT.logical_name)
            except ApiError as err:
                if done or err.status not in (400, 403):
                    raise
                log.warning(
                    "cycle %s: accounts not read (%s); company fields wait", self.run_id, err.code or err.status
                )
                applier.one_way_unreadable(oneway.ACCOUNT.logical_name, str(err)[:200])
                return None

    def _pages(self, entity: EntityType, delta_link: str | None) -> Iterator[tuple[DeltaPage, Mapping[str, Link]]]:
        """The table's delta pages from ``delta_link``, each with those of its rows' links that were
        read ahead and are current. Every page is read ahead, its links looked up with it: the first
        while the cycle did something else (``_read_ahead``; used only when it read what this read
        would: the same table, delta link and columns), each next one while the page before is
        applied. A read's error is raised here as this read's own."""
        select = tuple(self.applier.dataverse_columns(entity))
        pre = self._pre
        if pre is not None and pre.serves(entity, delta_link, select):
            rest = yield from pre.pages(entity)
            if rest is None:
                return
            ahead = self._read_page(entity, delta_link, select, rest)  # past the spool: in turn
        else:
            # Not what the pre-read read (a token expired, a column was refused): read in turn,
            # once the head start's batches are recorded (the pages' persons are not known).
            self._finish_head()
            self._end_pre_read()
            first, self._ahead = self._ahead, None
            if first is None or (first.entity, first.delta_link, first.select) != (entity, delta_link, select):
                self._drop(first)
                first = self._read_page(entity, delta_link, select)
            ahead = first
        while True:
            try:
                pages, page, links = ahead.read.result()
            finally:
                self.applier.ledger.unwatch_links(ahead.watch)
            if page is None:
                return
            current = ahead.watch.untouched(entity, links)
            if page.delta_link is not None:  # the table's last page
                ahead.close()
                yield page, current
                return
            # The next page, read while this one is applied (dropped with ``_drop_ahead`` if the
            # cycle stops before it).
            ahead = self._ahead = self._read_page(entity, delta_link, select, pages)
            yield page, current
            if self._ahead is ahead:
                self._ahead = None

    def _delta(self, entity: EntityType, delta_link: str | None, select: Sequence[str]) -> Iterator[DeltaPage]:
        return self.engine._dataverse.iter_changes(
            ENTITY_SETS[entity], select=select, delta_link=delta_link, page_size=DATAVERSE_PAGE
        )

    def _read_ahead(self, entity: EntityType) -> None:
        """Start reading ``entity``'s first delta page and looking its rows' links up, on a thread of
        its own, for ``_pages`` to use: during the change feed (the first table) and while the
        table before's last page is applied (the next). A read ahead not used (the time budget
        stopped the cycle first, the columns changed) costs its one delta read."""
        self._drop_ahead()
        if self._pre is not None and self._pre.covers(entity):
            return
        cursor = self.engine._store.get_cursor(dataverse_cursor(entity))
        delta_link = cursor.value if cursor else None
        self._ahead = self._read_page(entity, delta_link, tuple(self.applier.dataverse_columns(entity)))

    def _read_page(
        self,
        entity: EntityType,
        delta_link: str | None,
        select: tuple[str, ...],
        pages: Iterator[DeltaPage] | None = None,
    ) -> _ReadAhead:
        """Start reading a table's next delta page (the first, from ``delta_link``, when ``pages`` is
        None) and looking its rows' links up, on a thread of its own. The links the cycle writes
        meanwhile all go through ``Ledger.record``, which the read's watch sees: those of the
        page's links that a write may have changed are read again when the page is applied, as
        are the ids found unlinked (``Applier.dynamics_page``: a record may have been linked
        meanwhile, by this cycle or by the webhook)."""

        def read() -> tuple[Iterator[DeltaPage], DeltaPage | None, dict[str, Link]]:
            rest = self._delta(entity, delta_link, select) if pages is None else pages
            page = next(rest, None)
            links = self.applier.page_links(entity, page.rows) if page is not None and page.rows else {}
            return rest, page, links

        read_future, watch = self._watched(read)
        return _ReadAhead(entity, delta_link, select, read_future, watch)

    def _watched(self, read: Callable[[], _T]) -> tuple[Future[_T], LinkWatch]:
        """``read`` started on a thread of its own, and the watch on the links the cycle writes
        from before it starts (a read ahead's)."""
        watch = self.applier.ledger.watch_links()  # before the look-up starts
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read-ahead")
        try:
            return pool.submit(contextvars.copy_context().run, read), watch
        except BaseException:
            self.applier.ledger.unwatch_links(watch)
            raise
        finally:
            pool.shutdown(wait=False)

    def _drop(self, ahead: _ReadAhead | _PersonsAhead | None) -> None:
        if ahead is not None:
            self.applier.ledger.unwatch_links(ahead.watch)
            ahead.drop()

    def _drop_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        self._drop(ahead)

    def _persons_batch(self) -> int:
        """How many persons the persons step gathers per entity before it writes them."""
        return self.engine._options.dataverse_batch_size * self.engine._dataverse.parallelism

    def _read_persons_ahead(self, stage: Stage) -> None:
        """Start looking up the links of the persons step's first batch (the first persons pending
        now, up to ``_persons_batch``) on a thread of its own, while the last table's last page is
        applied. That page may take some of them (they are then not asked for); the links the
        cycle writes meanwhile go through ``Ledger.record``, which the watch sees, and the persons
        step reads those again, as it does the ids found unlinked (``_PersonsAhead.links``). Not
        when the head start's is on (``_read_head_ahead``): the persons step uses that one."""
        if self._head_ahead is not None and self._head_ahead is self._persons_ahead:
            return
        self._drop_persons_ahead()
        ids: list[int] = []
        chunks = stage.pending_ids(self.engine._options.dataverse_batch_size)
        for chunk in chunks:
            ids.extend(chunk)
            if len(ids) >= self._persons_batch():
                break
        if not ids:
            return
        look_up = self.engine._store.get_links_by_marketo_ids
        read_future, watch = self._watched(lambda: look_up(ids))
        self._persons_ahead = _PersonsAhead(frozenset(ids), read_future, watch)

    def _drop_persons_ahead(self) -> None:
        ahead, self._persons_ahead = self._persons_ahead, None
        self._drop(ahead)

    def _person_links(self, ids: Sequence[int]) -> dict[int, Link]:
        """The links of these persons: those read ahead and still current, the others looked up
        (after the records the ledger holds, when those write any of their links)."""
        ahead = self._persons_ahead
        links, again = ({}, list(ids)) if ahead is None else ahead.links(ids)
        if again:
            if self.applier.ledger.touches(again):
                self._release()
            links.update(self.engine._store.get_links_by_marketo_ids(again))
        return links

    # -- the pre-read and the persons step's head start ---------------------------------------------

    def _start_pre_read(self) -> None:
        """When both tables have a delta link: read their delta pages whole, from now, while the
        change feed is read (``preread``). Otherwise (a full read: the first cycle, or after a
        table's token expired) the tables are read in turn, the first one's first page ahead."""
        tables: list[tuple[EntityType, str, tuple[str, ...]]] = []
        for entity in ENTITY_ORDER:
            cursor = self.engine._store.get_cursor(dataverse_cursor(entity))
            if cursor is None or not cursor.value:
                self._read_ahead(ENTITY_ORDER[0])
                return
            tables.append((entity, cursor.value, tuple(self.applier.dataverse_columns(entity))))
        ledger = self.applier.ledger
        watch = ledger.watch_links()  # before the first look-up
        try:
            self._pre = PreRead(
                tables,
                delta=self._delta,
                look_up=self.engine._store.get_links_by_dataverse_ids,
                watch=watch,
                directory=self.engine._stage_dir,
                max_rows=preread.PRE_READ_ROWS,
            )
        except BaseException:
            ledger.unwatch_links(watch)
            raise

    def _end_pre_read(self) -> None:
        """The pre-read is done with (its pages applied, or not to be): its spool removed. The head
        start takes no new batch from then on (its batches go on: ``_sync_marketo_rest``)."""
        pre, self._pre = self._pre, None
        if pre is not None:
            self.applier.ledger.unwatch_links(pre.watch)
            pre.close()

    def _top_up(self) -> None:
        """The persons step's head start: while the Dataverse pages are applied, once the pre-read
        has read them all (at the first page, it waits for that), the persons no page can take
        (``Census.claims``; nor deleted in Marketo, nor with an edit of a Dynamics-owned field,
        which the accounts' step may overwrite) are written in the persons step's batches, so that
        their bulk messages fill the Dataverse places the pages leave idle: between pages, one
        batch is kept queued behind those in flight (``LinkedWrites.add(wait=False)``), whose
        writes start as soon as those end, not at the next page (a page is applied in about a
        third of a wave of messages: at 100k, the waves had gaps of 7 to 12.5 s, 29 s in all,
        README "Performance"). Their staged changes are taken, so no page nor the persons step
        sees them again; a batch is recorded as the persons step's are (``LinkedWrites``), whose
        pipeline the persons step goes on from (``_sync_marketo_rest``), unless something that
        reads links comes first (an account's change, the deletes: they end it, ``_finish_head``).
        No batch is made once the time budget is spent (one queued before goes, as one in flight
        does, before the cycle ends: a wave of messages more at most). Only full batches go, and the
        last, both tables' rest together, when it went through every pending person and left
        none to the persons step but those a page claims (which the page takes, or unlinks): the
        bulk messages are the ones the persons step alone would send."""
        pre = self._pre
        if pre is None or self._head_over or pre.failed:
            return
        census = pre.census()  # at the first page: once the pre-read has ended
        if census is None:
            self._head_over = True
            return
        head = self._head_writes()
        if self._head_ids is None:
            stage = self._stage
            assert stage is not None
            self._head_ids = stage.pending_ids(self.engine._options.dataverse_batch_size)
        while not head.waiting():
            batch = self._head_batch(census)
            if batch is None:
                return
            self.progressed = True
            head.add(batch, wait=False)
        self._read_head_ahead(census)

    def _head_writes(self) -> LinkedWrites:
        """The head start's pipeline, begun by whichever of ``_write_early`` and ``_top_up`` sends first."""
        if self._head is None:
            self._head = LinkedWrites(self.applier, messages=self.engine._dataverse.parallelism)
        return self._head

    def _read_head_ahead(self, census: Census) -> None:
        """While the head start's batches are in flight: the links of the persons its next batch
        goes through (two batches' worth of pending persons no page is linked to: those it asks
        for), looked up on a thread of their own as the persons step's first are (``_PersonsAhead``,
        whose watch sees the links written meanwhile), so that at the next page the batch goes
        without waiting for its look-ups."""
        ahead = self._head_ahead
        if ahead is not None and (self._head_next or ahead is not self._persons_ahead):
            return  # not used up yet, or replaced by the persons step's (``_read_persons_ahead``)
        if self._persons_ahead is not None and ahead is None:
            return  # the persons step's own
        ids_left = self._head_ids
        if ids_left is None or self._head_over:
            return
        ids: list[int] = []
        while len(ids) < 2 * self._persons_batch():
            chunk = next(ids_left, None)
            if chunk is None:
                break
            self._head_next.append(chunk)
            ids.extend(i for i in chunk if i not in census.persons)
        self._drop_persons_ahead()
        self._head_ahead = None
        if not ids:
            return
        look_up = self.engine._store.get_links_by_marketo_ids
        read_future, watch = self._watched(lambda: look_up(ids))
        self._persons_ahead = self._head_ahead = _PersonsAhead(frozenset(ids), read_future, watch)

    def _write_early(self, lead_ids: Iterable[int]) -> None:
        """The persons step's head start while the change feed is still read (``_top_up`` goes on
        from it between the pages): once the pre-read has ended, the persons the feed has named are
        looked up as its pages come (the feed's next pages are read meanwhile, ``PagesAhead``), and
        whenever a Dataverse place is free and a table has half ``dataverse_batch_size`` persons no
        page can take, they are taken and written as one bulk message. A person the feed names again
        after it was taken is marked ``again`` by the stage and written once more after the head
        start's batches are recorded (``_steps``): its new changes against its new baseline."""
        early = self._early
        if early is None:
            return
        early.new.extend(i for i in lead_ids if i not in early.seen)
        early.seen.update(lead_ids)
        pre = self._pre
        if pre is None or pre.failed or self._head_over:
            self._early = None
            return
        if not pre.ended() or self.over_budget():
            return
        census = pre.census()
        if census is None:
            self._early = None
            return
        head = self._head_writes()
        # Half a bulk message's records: the least ``message_sizes`` spreads a message to.
        size = max(1, self.engine._options.dataverse_batch_size // 2)
        stage = self._stage
        assert stage is not None
        while head.room():
            entity = next((entity for entity, free in early.free.items() if len(free) >= size), None)
            if entity is None:
                if not early.new:
                    return
                # Only as many look-ups as a free place needs: the feed's pages are waiting.
                asked, early.new = early.new[:size], early.new[size:]
                for marketo_id, link in self._person_links(asked).items():
                    if not census.claims(link):
                        early.free[link.entity][marketo_id] = link
                continue
            free = early.free[entity]
            chosen = {marketo_id: free.pop(marketo_id) for marketo_id in list(free)[:size]}
            # An edit of a Dynamics-owned field: left to the steps after the pages (``_head_batch``).
            kept = stage.changed_among(list(chosen), self.applier.one_way_fields)
            ids = sorted(marketo_id for marketo_id in chosen if marketo_id not in kept)
            staged = self.take(ids)
            self.progressed = True
            head.add([Pending(chosen[i], marketo=staged.get(i)) for i in ids], spread=False)
            self.keep_lease()

    def _head_batch(self, census: Census) -> list[Pending] | None:
        """The head start's next batch: a table's ``_persons_batch`` of persons no page can take
        (None when the pending persons are all gone through, or the time budget is spent)."""
        stage, ids_left = self._stage, self._head_ids
        assert stage is not None
        assert ids_left is not None
        flush_at = self._persons_batch()
        buffers = self._head_buffers
        while True:
            for entity, items in buffers.items():
                if len(items) >= flush_at:
                    buffers[entity] = items[flush_at:]
                    return items[:flush_at]
            if self.over_budget():
                self._head_over = True
                return None
            ids = self._head_next.popleft() if self._head_next else next(ids_left, None)
            if ids is None:
                # Every pending person gone through: when none was left for the persons step to
                # write, the rest of both tables is its last batch, as it would have been there.
                self._head_over = True
                rest = [item for items in buffers.values() for item in items] if self._head_whole else []
                if not rest:
                    return None
                for items in buffers.values():
                    items.clear()
                return rest
            # Left to the steps after the pages: the persons deleted in Marketo, and those with an
            # edit of a Dynamics-owned field (an account's change in this window overwrites it).
            kept = stage.deleted_among(ids) | stage.changed_among(ids, self.applier.one_way_fields)
            asked = [i for i in ids if i not in kept and i not in census.persons]
            links = self._person_links(asked)
            if kept or len(links) < len(asked):  # (the unlinked too: the persons step writes them)
                self._head_whole = False
            free = {i: link for i, link in links.items() if not census.claims(link)}
            staged = self.take(sorted(free))
            for marketo_id, link in free.items():
                buffers[link.entity].append(Pending(link, marketo=staged.get(marketo_id)))
            self.keep_lease()

    def _finish_head(self) -> None:
        """End the head start: its batches in flight recorded; the persons it took for a batch it
        did not send are pending again (their changes are still staged), for the persons step, or
        carried when the cycle was cut."""
        head, buffers = self._take_head()
        if head is None:
            return
        head.close()
        stage = self._stage
        assert stage is not None
        stage.untake(item.link.marketo_id for items in buffers.values() for item in items)

    def _abandon_head(self) -> None:
        """The cycle failed: the head start's batches in flight recorded as far as their writes went
        (what it took and did not send is read again by the next cycle: no cursor moved)."""
        head, _ = self._take_head()
        if head is not None:
            head.abandon()

    def _take_head(self) -> tuple[LinkedWrites | None, dict[EntityType, list[Pending]]]:
        """End the head start: its pipeline and the persons it took for its next batch, handed over."""
        head, self._head = self._head, None
        buffers, self._head_buffers = self._head_buffers, {entity: [] for entity in EntityType}
        self._head_next.clear()  # (still pending: the persons step goes through them)
        self._head_over = True
        return head, buffers

    def _deleted_while_untracked(self, entity: EntityType, stage: Stage) -> None:
        """After a full read: linked records it did not return were deleted while no token covered them.

        Links made after the read began (the webhook's) are not expected in it and are left alone."""
        batch = []
        for link in self.engine._store.iter_links():
            if link.entity is entity and (link.updated_at is None or link.updated_at <= self.started):
                batch.append(link)
            if len(batch) >= 1000:
                self._flag_unseen(entity, stage, batch)
                batch = []
        self._flag_unseen(entity, stage, batch)

    def _flag_unseen(self, entity: EntityType, stage: Stage, links: list[Any]) -> None:
        applier = self.applier
        if not links:
            return
        unseen = stage.unseen(entity.value, [link.dataverse_id for link in links])
        if unseen:
            applier.dynamics_deleted([link for link in links if link.dataverse_id.lower() in unseen])

    def _sync_marketo_rest(self, stage: Stage) -> None:
        """Persons with Marketo changes that no Dataverse page took: the Dynamics side is at its baseline.

        The time budget is checked before each chunk is taken: the chunks taken are written, the
        rest stays pending (carried to the next tick)."""
        engine = self.engine
        applier = self.applier
        total = stage.pending_count()
        # The head start's pipeline, its batches in flight and the persons it took for the next one,
        # go on here (nothing since the pages has written their links: the accounts' changes and
        # the deletes end it first).
        head, buffers = self._take_head()
        if not total and head is None:
            return
        size = engine._options.dataverse_batch_size
        # Enough records per write for every bulk message the service lets us send at once. (Not
        # fewer: persons whose merge writes nothing, e.g. the echoes of the last cycle's writes to
        # Marketo, are in the batches too, and a smaller batch would send more short messages.)
        flush_at = self._persons_batch()
        done = 0
        # A batch is written while the next persons are looked up and merged and the batches before
        # are recorded, up to as many bulk messages at once as the service lets us send (each
        # person is in one batch, and a batch changes only its own persons' links:
        # ``LinkedWrites``); what is left of both tables goes together at the end.
        with head or LinkedWrites(applier, messages=engine._dataverse.parallelism) as writes:
            for ids in stage.pending_ids(size):
                if self.may_stop("marketo persons"):
                    break
                self.progressed = True
                links = self._person_links(ids)
                staged = self.take(ids)
                for marketo_id, link in links.items():
                    buffers[link.entity].append(Pending(link, marketo=staged.get(marketo_id)))
                unlinked = {i: values for i, values in staged.items() if i not in links}
                if unlinked and applier.sync_filter.marketo.active:
                    # Admitted persons are linked to free Dynamics records: the batch in flight may
                    # free one (a person found gone), so it is recorded first.
                    writes.close()
                    self._release()
                    applier.unlinked_persons(unlinked)
                for entity, items in buffers.items():
                    if len(items) >= flush_at:
                        writes.add(items)
                        buffers[entity] = []
                        self._release()  # the last page's records, while this batch is in flight
                done += len(ids)
                engine._progress("marketo persons", done, total)
                self.keep_lease()
            # The rest of both tables in one batch: their bulk messages share the places.
            writes.add([item for items in buffers.values() for item in items])
            self._release()  # the last page's records, while this batch is in flight


# -- entry points: the timer function and ``python -m sync_core run-once`` ---------------------


def run_cycle_from_env(environ: Mapping[str, str]) -> RunReport:
    """One cycle with the process's wiring for the settings in ``environ`` (the timer function's call)."""
    return SyncEngine.from_services(services_for(Settings.from_env(environ))).run_cycle()
