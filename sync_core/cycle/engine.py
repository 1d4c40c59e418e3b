"""The bidirectional sync cycle (design §3): lease → pull → merge → write → record → cursors.

``SyncEngine.run_cycle`` runs one cycle and returns its ``RunReport`` (also stored for the
status view). The order is what makes it safe:

1. take the cycle lease (two cycles never overlap; it is renewed while the cycle runs);
2. read the Marketo change feed since the stored paging token into the stage (``_staging``:
   latest value per person and field, on local disk); the deleted-persons feed too when the
   Marketo delete policy sends deletes across;
3. stream each Dataverse table's delta (contacts first, so a qualification moves its person's
   link before the qualified lead is seen), page by page: the page's linked records are merged
   with their staged Marketo changes, new records are linked or get a person, deletions flag
   and unlink; the table's delta link is stored once all its pages are done. A read without a
   delta token (the first one, or after the token expired) is a full read of that table, merged
   the same way, and a check of which linked records it no longer returns (deleted meanwhile);
4. the persons whose Marketo changes no Dataverse page took, in batches of the Dataverse batch
   size per entity; then the failures due for a retry;
5. only then the Marketo paging tokens are stored.

A crash or a transient failure anywhere repeats the uncommitted window on the next run, and the
merge (values equal to the baseline are not changes) makes the repeat write nothing twice.
607 (Marketo's daily quota) and transient errors end the cycle cleanly with those cursors
unchanged. The record-level work is ``_apply.Applier``; this module only orders it.
``run_once_main`` is ``python -m sync_core run-once``; ``run_cycle_from_env`` is the timer's call.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

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
from sync_core.core.models import Cursor, EntityType, Lease, RunReport, StoreCounters
from sync_core.core.report import (
    DID_ITS_WORK,
    ApiCalls,
    CycleReport,
    DriftEntry,
    Outcome,
    PerSide,
    ServiceCalls,
    TableOps,
)
from sync_core.cycle.apply import Applier
from sync_core.cycle.ledger import OpenFailures, Pending, Tally
from sync_core.cycle.staging import Stage
from sync_core.dataverse.client import SCHEMA_ERROR_CODES, DataverseClient, DeltaPage
from sync_core.http.counters import ApiCounters
from sync_core.marketo.client import MarketoClient
from sync_core.privacy.prune import prune_state
from sync_core.settings import DynamicsDeletePolicy, MarketoDeletePolicy, Settings
from sync_core.state import StateStore
from sync_core.wiring.services import Services, services_for

log = logging.getLogger(__name__)

MARKETO_CHANGES = "marketo.leadchanges"
MARKETO_DELETES = "marketo.deletedleads"
ENTITY_ORDER = (EntityType.CONTACT, EntityType.LEAD)  # contacts first: qualifications move links (B9)
LEASE_DURATION = timedelta(minutes=10)
DATAVERSE_PAGE = 5000  # rows per delta page: the service's maximum
MAX_RETRIES_PER_CYCLE = 1000
MARKETO_UNKNOWN_FIELD = "1006"

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

    @classmethod
    def from_settings(cls, settings: Settings) -> CycleOptions:
        return cls(
            dynamics_delete_policy=settings.dynamics_delete_policy,
            marketo_delete_policy=settings.marketo_delete_policy,
            dataverse_batch_size=settings.dataverse_batch_size,
        )


class _LeaseLost(SyncError):
    """Our lease expired and another cycle took it: stop without committing anything more."""


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
            except _LeaseLost as err:
                log.error("cycle %s: %s", run_id, err)
                outcome, error = Outcome.LEASE_LOST, str(err)
            except TransientError as err:
                log.warning("cycle %s ended early: %s; cursors kept", run_id, err)
                outcome, error = Outcome.TRANSIENT, str(err)
            except (SyncError, OSError) as err:
                log.exception("cycle %s failed", run_id)
                outcome, error = Outcome.ERROR, f"{type(err).__name__}: {err}"
            finally:
                cycle.release()
        if outcome is Outcome.OK and tally.failures:
            outcome = Outcome.PARTIAL
        finished = self._clock()
        report = RunReport(
            run_id=run_id,
            started_at=started,
            finished_at=finished,
            outcome=outcome,
            report=_report(
                tally,
                cycle,
                api=_api_delta(api_before, self._counters.snapshot()),
                table=_store_delta(store_before, self._store.counters),
                seconds=time.perf_counter() - wall,
                cpu_seconds=time.process_time() - cpu,
                error=error,
            ),
        )
        try:
            self._store.add_run_report(report)
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
        return report


class _Cycle:
    """The state of one running cycle: its lease, stage, applier and cursor values."""

    def __init__(self, engine: SyncEngine, run_id: str, started: datetime, lease: Lease, tally: Tally) -> None:
        self.engine = engine
        self.run_id = run_id
        self.started = started
        self.lease = lease
        self.lease_renewed = started
        self.tally = tally
        self.open_failures = OpenFailures(engine._store)
        self.applier = Applier(
            marketo=engine._marketo,
            dataverse=engine._dataverse,
            store=engine._store,
            field_map=engine._field_map,
            dynamics_delete_policy=engine._options.dynamics_delete_policy,
            run_id=run_id,
            now=started,
            open_failures=self.open_failures,
            tally=tally,
        )
        self.backlog: dict[str, int] = {}

    # -- lease ------------------------------------------------------------------------------------

    def keep_lease(self) -> None:
        """Renew the lease once a third of it has gone; losing it stops the cycle."""
        engine = self.engine
        now = engine._clock()
        if now - self.lease_renewed < engine._options.lease_duration / 3:
            return
        try:
            self.lease = engine._store.renew_lease(self.lease, now=now, duration=engine._options.lease_duration)
        except StateConflictError as err:
            raise _LeaseLost("the cycle lease was lost (it expired and another cycle took it)") from err
        self.lease_renewed = now

    def release(self) -> None:
        try:
            self.engine._store.release_lease(self.lease)
        except (StateConflictError, SyncError, OSError):
            log.warning("cycle %s: the lease could not be released; it expires by itself", self.run_id)

    # -- the steps ----------------------------------------------------------------------------------

    def run(self) -> None:
        with Stage(self.engine._stage_dir) as stage:
            try:
                self._steps(stage)
            finally:
                # What is left for later: staged changes not applied (the cycle ended early) and
                # the failures waiting for their retry.
                self.backlog = {"marketo": stage.pending_count(), "retries": len(self.open_failures)}

    def _steps(self, stage: Stage) -> None:
        engine = self.engine
        store = engine._store
        applier = self.applier
        changes_cursor = store.get_cursor(MARKETO_CHANGES)
        changes_start = changes_cursor.value if changes_cursor else engine._marketo.get_paging_token(self.started)
        changes_token = self._stage_marketo_changes(stage, changes_start)
        deletes_cursor: Cursor | None = None
        deletes_token: str | None = None
        if engine._options.marketo_delete_policy is MarketoDeletePolicy.DELETE:
            deletes_cursor = store.get_cursor(MARKETO_DELETES)
            deletes_token = self._stage_marketo_deletes(stage, deletes_cursor, changes_start)
        for entity in ENTITY_ORDER:
            cursor = store.get_cursor(dataverse_cursor(entity))
            delta_link = self._sync_table(entity, cursor, stage)
            self._commit(cursor, dataverse_cursor(entity), delta_link)
        if deletes_token is not None:
            for ids in stage.deleted_ids(engine._options.dataverse_batch_size):
                applier.marketo_deleted(ids)
                self.keep_lease()
        self._sync_marketo_rest(stage)
        due = store.due_failures(now=self.started, limit=engine._options.max_retries)
        if due:
            engine._progress("retries", 0, len(due))
            applier.retry(due, stage.take)
            engine._progress("retries", len(due), len(due))
        self._commit(changes_cursor, MARKETO_CHANGES, changes_token)
        if deletes_token is not None:
            self._commit(deletes_cursor, MARKETO_DELETES, deletes_token)
        prune_state(store, now=self.started)  # retention, in bounded work (privacy.prune)

    def _commit(self, cursor: Cursor | None, name: str, value: str | None) -> None:
        """Store a cursor (ETag-conditional: a concurrent writer makes this cycle stop)."""
        if value is None or (cursor is not None and cursor.value == value):
            return
        self.keep_lease()
        store = self.engine._store
        try:
            store.put_cursor(Cursor(name=name, value=value, etag=cursor.etag if cursor else None))
        except StateConflictError as err:
            raise _LeaseLost(f"cursor {name} was written by someone else meanwhile") from err

    def _stage_marketo_changes(self, stage: Stage, token: str) -> str:
        applier = self.applier
        try:
            return self._read_changes(stage, token, applier.marketo_fields())
        except ApiError as err:
            if err.code != MARKETO_UNKNOWN_FIELD:
                raise
            log.warning("cycle %s: Marketo refused a mapped field; checking the field map for drift", self.run_id)
            applier.prepare(refresh=True)
        return self._read_changes(stage, token, applier.marketo_fields())

    def _read_changes(self, stage: Stage, token: str, fields: Sequence[str]) -> str:
        engine = self.engine
        wanted = set(fields)
        last = token
        for page in engine._marketo.iter_lead_changes(token, fields=fields):
            changes = [
                (activity.lead_id, change.name, change.new_value)
                for activity in page.activities
                for change in activity.fields
                if change.name in wanted
            ]
            self.tally.pulled_marketo += stage.add_changes(changes)
            last = page.next_page_token
            engine._progress("marketo changes", self.tally.pulled_marketo, None)
            self.keep_lease()
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
        """Every page of one table's delta (or a full read); the new delta link."""
        applier = self.applier
        delta_link = cursor.value if cursor else None
        # A read without a delta token (the first, or after an expired one) reports no deletions:
        # links it does not see are to records deleted meanwhile (e.g. after a crashed first cycle).
        full_reread = delta_link is None
        schema_checked = False
        while True:
            done = 0
            try:
                new_link: str | None = None
                for page in self._pages(entity, delta_link):
                    self.tally.pulled_dynamics += len(page.rows) + len(page.deleted_ids)
                    if full_reread:
                        stage.add_seen(entity.value, (row_id(entity, row) for row in page.rows))
                    applier.dynamics_page(entity, page.rows, page.deleted_ids, stage.take)
                    done += len(page.rows) + len(page.deleted_ids)
                    self.engine._progress(f"dataverse {ENTITY_SETS[entity]}", done, None)
                    self.keep_lease()
                    new_link = page.delta_link
                if full_reread:
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

    def _pages(self, entity: EntityType, delta_link: str | None) -> Iterator[DeltaPage]:
        applier = self.applier
        return self.engine._dataverse.iter_changes(
            ENTITY_SETS[entity],
            select=applier.dataverse_columns(entity),
            delta_link=delta_link,
            page_size=DATAVERSE_PAGE,
        )

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
        """Persons with Marketo changes that no Dataverse page took: the Dynamics side is at its baseline."""
        engine = self.engine
        applier = self.applier
        total = stage.pending_count()
        if not total:
            return
        size = engine._options.dataverse_batch_size
        buffers: dict[EntityType, list[Pending]] = {entity: [] for entity in EntityType}
        done = 0
        for ids in stage.pending_ids(size):
            links = engine._store.get_links_by_marketo_ids(ids)
            staged = stage.take(ids)
            for marketo_id, link in links.items():
                buffers[link.entity].append(Pending(link, marketo=staged.get(marketo_id)))
            for entity, items in buffers.items():
                if len(items) >= size:
                    applier.sync_linked(items)
                    buffers[entity] = []
            done += len(ids)
            engine._progress("marketo persons", done, total)
            self.keep_lease()
        for items in buffers.values():
            applier.sync_linked(items)


def _api_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[ApiCalls, dict[str, ServiceCalls], int]:
    calls: dict[str, int] = {}
    tokens = 0
    by_operation: dict[str, int] = {}
    per_service: dict[str, ServiceCalls] = {}
    for service, now in after.items():
        then = before.get(service, {})
        calls[service] = now["calls"] - then.get("calls", 0)
        tokens += now["token_calls"] - then.get("token_calls", 0)
        per_service[service] = ServiceCalls(
            retries=now["retries"] - then.get("retries", 0),
            throttled=now["throttled"] - then.get("throttled", 0),
            token_calls=now["token_calls"] - then.get("token_calls", 0),
        )
        for operation, count in now["by_operation"].items():
            delta = count - then.get("by_operation", {}).get(operation, 0)
            if delta:
                by_operation[f"{service}.{operation}"] = delta
    api_calls = ApiCalls(
        marketo=calls.get("marketo", 0),
        dataverse=calls.get("dataverse", 0),
        by_operation=dict(sorted(by_operation.items())),
    )
    return api_calls, per_service, tokens


def _store_delta(before: StoreCounters, after: StoreCounters) -> TableOps:
    return TableOps(
        reads=after.reads - before.reads,
        writes=after.writes - before.writes,
        transactions=after.transactions - before.transactions,
        operations=after.operations - before.operations,
    )


def _report(
    tally: Tally,
    cycle: _Cycle | None,
    *,
    api: tuple[ApiCalls, dict[str, ServiceCalls], int],
    table: TableOps,
    seconds: float,
    cpu_seconds: float,
    error: str | None,
) -> CycleReport:
    applier = cycle.applier if cycle is not None else None
    api_calls, per_service, token_calls = api
    return CycleReport(
        pulled=PerSide(marketo=tally.pulled_marketo, dynamics=tally.pulled_dynamics),
        written=PerSide(marketo=tally.written_marketo, dynamics=tally.written_dynamics),
        created=tally.created,
        linked=tally.linked,
        unlinked=tally.unlinked,
        flagged_deleted=tally.flagged_deleted,
        deleted_in_dynamics=tally.deleted_in_dynamics,
        qualified=tally.qualified,
        collisions=tally.collisions,
        failures=tally.failures,
        resolved=tally.resolved,
        retried=tally.retried,
        activities=tally.activities,
        full_reads=tally.full_reads,
        api_calls=api_calls,
        api=per_service,
        token_calls=token_calls,
        table_transactions=(table.transactions or 0) + (table.writes or 0),
        table=table,
        seconds=round(seconds, 3),
        cpu_seconds=round(cpu_seconds, 3),
        backlog=cycle.backlog if cycle is not None and cycle.backlog else None,
        drift=[DriftEntry.model_validate(item.as_report()) for item in applier.drift]
        if applier is not None and applier.drift is not None
        else None,
        error=error,
    )


# -- entry points: the timer function and ``python -m sync_core run-once`` ---------------------


def run_cycle_from_env(environ: Mapping[str, str]) -> RunReport:
    """One cycle with the process's wiring for the settings in ``environ`` (the timer function's call)."""
    return SyncEngine.from_services(services_for(Settings.from_env(environ))).run_cycle()


class _ProgressPrinter:
    """Progress lines for long cycles on stderr, at most one per stage per second."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._last: dict[str, float] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        final = total is not None and done >= total
        if not final and now - self._last.get(stage, 0.0) < 1.0:
            return
        self._last[stage] = now
        self._out.write(f"{stage}: {done}" + (f" / {total}" if total is not None else "") + "\n")
        self._out.flush()


def run_once_main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``python -m sync_core run-once``: one cycle from the settings in the environment; JSON report on stdout.

    Exit code 0 when the cycle did its work (``ok`` or ``partial``: read ``failures``), 3 when
    another cycle held the lease, 1 when it ended early (quota, transient, error), 2 for a
    configuration error."""
    parser = argparse.ArgumentParser(
        prog="python -m sync_core run-once",
        description="Run one sync cycle with the settings in the environment and print its run report (JSON).",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        services = services_for(Settings.from_env(os.environ if environ is None else environ))
    except ConfigError as error:
        print(str(error), file=err)
        return 2
    engine = SyncEngine.from_services(services, progress=None if args.quiet else _ProgressPrinter(err))
    report = engine.run_cycle()
    out.write(json.dumps(report.as_json(), indent=2) + "\n")
    if report.outcome in DID_ITS_WORK:
        return 0
    return 3 if report.outcome is Outcome.LEASE_HELD else 1
