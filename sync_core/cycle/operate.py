"""Operators' actions on failures and state (issue 19): retry failures now, dismiss one with a
reason, resync one person, reset a change-feed cursor, export failures or collisions as CSV,
migrate the links' table layout (``migrate-state``, issue 17).

One ``Operator`` serves both front ends: the commands (``cycle.operate_cli``) and the status
page's buttons (``status.actions``). It reuses the cycle's own parts and writes no rule of its
own: a retry is ``Applier.retry`` on the chosen failures, a resync is ``Applier.sync_linked`` on
the person's link with the baseline left out (so both sides are re-read and merged as on the
first link: equal values stay, an empty side takes the other's value, different values are a
collision settled by the entity rule or the field's override; each side's sync filter decides
afresh on the values read, and a pair it keeps out is left as a cycle leaves it, to be merged
without the baseline once admitted), a reset deletes or re-points the
cursors the engine reads (``engine``), and an export reads the store.

Every action is audited (``StateStore.add_action``: who, when, what, to what, why, the outcome)
and logged with its id, target and outcome, never person data. Every action is idempotent: a
failure already resolved or dismissed is "nothing to do"; resetting a cursor twice leaves it as
once; a resync of a person whose sides agree writes nothing. Actions that change the sync's state
take the cycle lease for their duration, so they never interleave with a cycle (a running cycle
holds failures and cursors it would write back); while a cycle holds it the action is refused
(``busy``) and changes nothing. An export only reads.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sync_core.core.errors import LeaseHeldError, StateConflictError, SyncError
from sync_core.core.fieldmap import FieldMap
from sync_core.core.models import ActionRecord, Cursor, EntityType, Link, RecordFailure
from sync_core.cycle import carry
from sync_core.cycle.apply import Applier
from sync_core.cycle.engine import MARKETO_CHANGES, MARKETO_DELETES, CycleOptions, dataverse_cursor
from sync_core.cycle.lease import Heartbeat
from sync_core.cycle.ledger import OpenFailures, Pending, Tally
from sync_core.cycle.overlap import MARKETO_CHANGES_TAIL
from sync_core.dataverse.client import DataverseClient
from sync_core.marketo.client import MarketoClient
from sync_core.state import StateStore
from sync_core.wiring.services import Services

log = logging.getLogger(__name__)

FEEDS = ("marketo", "lead", "contact")  # what ``reset_cursor`` takes
EXPORT_KINDS = ("failures", "collisions")
MIGRATE_PAGES = 100  # pages of 1,000 link rows one ``migrate-state`` moves under the lease by default
EXPORT_MAX_ROWS = 50_000  # an export holds at most this many rows (the newest collisions)
MAX_REASON = 500
MAX_BY = 100
# What a failure key (``ledger``) and a Dataverse id look like: anything else is refused before it is
# looked up, audited or logged (an email typed into the wrong box must not reach a log line).
FAILURE_KEY = re.compile(
    r"^to_(dynamics|marketo):(m[0-9]{1,12}|(lead|contact):[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12})$"
)
GUID = re.compile(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")
# Cells a spreadsheet would read as a formula (CSV injection): such a cell gets a leading quote.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class Outcome(StrEnum):
    DONE = "done"
    NOTHING = "nothing to do"  # already so: the action changed nothing (idempotent repeat)
    REFUSED = "refused"  # not possible as asked (e.g. the person is not linked); nothing changed
    BUSY = "busy"  # a cycle holds the lease; nothing changed, try again shortly
    FAILED = "failed"  # a service or the store failed part way; what was done stays done (re-run it)


@dataclass(frozen=True)
class ActionResult:
    """What an action did: its audit record, one sentence for the admin, and details (ids, counts)."""

    record: ActionRecord
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    csv: str | None = None  # an export's file

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.record.outcome)

    def as_json(self) -> dict[str, Any]:
        record = self.record
        return {
            "id": record.id,
            "action": record.action,
            "target": record.target,
            "outcome": record.outcome,
            "message": self.message,
            "details": self.details,
        }


class Operator:
    """The operators' actions over the process's clients and store (see the module docstring).

    ``by``: who acts (audited, not logged); ``via``: "cli" or "page"."""

    def __init__(
        self,
        *,
        store: StateStore,
        marketo: MarketoClient,
        dataverse: DataverseClient,
        field_map: FieldMap,
        options: CycleOptions | None = None,
        by: str,
        via: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._marketo = marketo
        self._dataverse = dataverse
        self._field_map = field_map
        self._options = options or CycleOptions()
        self._by = (by.strip() or "unknown")[:MAX_BY]
        self._via = via
        self._clock = clock

    @classmethod
    def from_services(cls, services: Services, *, by: str, via: str) -> Operator:
        return cls(
            store=services.store,
            marketo=services.marketo,
            dataverse=services.dataverse,
            field_map=services.field_map,
            options=CycleOptions.from_settings(services.settings),
            by=by,
            via=via,
        )

    # -- failures -------------------------------------------------------------------------------

    def retry(self, keys: Sequence[str] | None) -> ActionResult:
        """Retry these open failures now (``None``: every open one, up to the cycle's retry limit),
        as a cycle retries a due failure. Keys that are not open are reported, not an error."""
        if keys is not None:
            _check_keys(keys)
        target = "all" if keys is None else ",".join(keys)
        with self._acting("retry", target) as act:
            if act.busy:
                return act.result
            if keys is None:
                failures = _first(self._store.iter_failures(), self._options.max_retries)
            else:
                failures = list(self._store.get_failures(keys).values())
            not_open = sorted(set(keys or ()) - {failure.key for failure in failures})
            if not failures:
                return act.finish(
                    Outcome.NOTHING,
                    "no open failure to retry"
                    if keys is None
                    else f"not open (resolved or dismissed already): {target}",
                    {"not_open": not_open},
                )
            tally = Tally()
            applier = self._applier(act.id, tally)
            applier.retry(failures, lambda ids: {})
            tried = [failure.key for failure in failures]
            still = self._store.get_failures(tried)
            resolved = sorted(set(tried) - still.keys())
            details = {
                "resolved": resolved,
                "still_failing": [
                    {"key": key, "reasons": failure.reasons, "next_retry_at": failure.next_retry_at.isoformat()}
                    for key, failure in sorted(still.items())
                ],
                "not_open": not_open,
                "written": {"dynamics": tally.written_dynamics, "marketo": tally.written_marketo},
            }
            message = f"retried {len(tried)}: {len(resolved)} resolved, {len(still)} still failing"
            if not_open:
                message += f"; {len(not_open)} not open (resolved or dismissed already)"
            return act.finish(Outcome.DONE, message, details)

    def dismiss(self, key: str, reason: str) -> ActionResult:
        """Close an open failure without retrying it, with the admin's reason (audited). The record
        is merged again when it next changes; if it fails then, that is a new failure."""
        _check_keys([key])
        reason = reason.strip()
        if not reason:
            raise ValueError("a reason is required to dismiss a failure")
        with self._acting("dismiss", key, reason=reason[:MAX_REASON]) as act:
            if act.busy:
                return act.result
            found = self._store.get_failures([key])
            if key not in found:
                return act.finish(Outcome.NOTHING, f"{key} is not open (resolved or dismissed already)")
            self._store.resolve_failures([key])
            failure = found[key]
            return act.finish(
                Outcome.DONE,
                f"dismissed {key}",
                {"attempts": failure.attempts, "reasons": failure.reasons, "fields": failure.fields},
            )

    # -- one person --------------------------------------------------------------------------------

    def resync(
        self, *, marketo_id: int | None = None, dataverse_id: str | None = None, entity: EntityType | None = None
    ) -> ActionResult:
        """Re-read the person's two records and merge them without the baseline (see the module
        docstring); the person is found by Marketo id, or by Dataverse id (``entity``: which table;
        both are looked in when not given)."""
        if (marketo_id is None) == (dataverse_id is None):
            raise ValueError("give a Marketo id or a Dataverse id")
        if dataverse_id is not None and not GUID.match(dataverse_id):
            raise ValueError("a Dataverse id is a GUID, e.g. 6f1c2d4e-0000-4000-8000-000000000002")
        target = f"marketo:{marketo_id}" if marketo_id is not None else f"{entity or 'dynamics'}:{dataverse_id}"
        with self._acting("resync", target) as act:
            if act.busy:
                return act.result
            link = self._find_link(marketo_id, dataverse_id, entity)
            if link is None:
                return act.finish(
                    Outcome.REFUSED,
                    f"{target} is not linked: nothing to resync (the cycle links new Dynamics records; "
                    "the webhook creates a record for a person)",
                )
            kept_out_before = (link.filtered_out, link.baseline)
            tally = Tally()
            open_failures = OpenFailures(self._store)
            applier = self._applier(act.id, tally, open_failures)
            # Without the baseline and the remembered filter verdicts: both sides are read afresh and
            # each side's sync filter decides on their current values, as for a new link.
            applier.sync_linked(
                [Pending(link.model_copy(update={"baseline": {}, "filtered_out": (), "filter_key": None}))]
            )
            after = self._store.get_links_by_marketo_ids([link.marketo_id]).get(link.marketo_id)
            still_open = open_failures.keys()
            failures = sorted(key for key in still_open if key.endswith(f":m{link.marketo_id}"))
            details = {
                "marketo_id": link.marketo_id,
                "entity": link.entity.value,
                "dataverse_id": link.dataverse_id,
                "written": {"dynamics": tally.written_dynamics, "marketo": tally.written_marketo},
                "collisions": tally.collisions,
                "unlinked": tally.unlinked,
                "open_failures": failures,
                "filtered_out": [side.value for side in after.filtered_out] if after is not None else [],
            }
            if after is None:
                message = "the record is gone on one side: unlinked (as a cycle does)"
            elif after.filtered_out:
                sides = " and the ".join(side.value.capitalize() for side in after.filtered_out)
                message = (
                    f"kept out by the {sides} sync filter: nothing written; "
                    "merged without the baseline once the filter admits it"
                )
            elif tally.written_dynamics or tally.written_marketo:
                message = f"resynced: {tally.written_dynamics} written to Dynamics, {tally.written_marketo} to Marketo"
            else:
                message = "resynced: both sides already agree, nothing written"
            if failures:
                message += f"; open failures: {', '.join(failures)}"
            # A pair kept out changed when its remembered verdict or baseline did (nothing is written).
            kept_out_changed = (
                after is not None
                and bool(after.filtered_out)
                and ((after.filtered_out, after.baseline) != kept_out_before)
            )
            changed = bool(
                tally.written_dynamics or tally.written_marketo or tally.unlinked or tally.failures or kept_out_changed
            )
            return act.finish(Outcome.DONE if changed else Outcome.NOTHING, message, details)

    def _find_link(self, marketo_id: int | None, dataverse_id: str | None, entity: EntityType | None) -> Link | None:
        if marketo_id is not None:
            return self._store.get_links_by_marketo_ids([marketo_id]).get(marketo_id)
        assert dataverse_id is not None
        for candidate in [entity] if entity is not None else list(EntityType):
            found = self._store.get_links_by_dataverse_ids(candidate, [dataverse_id])
            if found:
                return next(iter(found.values()))
        return None

    # -- cursors -----------------------------------------------------------------------------------

    def reset_cursor(self, feed: str, *, since: datetime | None = None) -> ActionResult:
        """Reset a change-feed cursor. ``lead``/``contact``: the next cycle re-reads that table in
        full (merged by the baselines: nothing is written twice). ``marketo``: the next cycle reads
        Marketo's changes from ``since`` (a paging token asked for now), or without ``since`` from
        its own start (the changes since the last cycle are skipped, and so are the persons a cycle
        cut short by its time budget carried: ``carry``)."""
        if feed not in FEEDS:
            raise ValueError(f"feed must be one of {', '.join(FEEDS)}, not {feed!r}")
        if since is not None and feed != "marketo":
            raise ValueError("since applies to the marketo feed only (a Dataverse table is re-read in full)")
        if since is not None and since.tzinfo is None:
            raise ValueError("since must carry a time zone")
        target = feed if since is None else f"{feed} since {since.isoformat()}"
        with self._acting("reset-cursor", target) as act:
            if act.busy:
                return act.result
            if feed == "marketo":
                names = [MARKETO_CHANGES, MARKETO_CHANGES_TAIL, MARKETO_DELETES]
                token = None if since is None else self._marketo.get_paging_token(since)
            else:
                names, token = [dataverse_cursor(EntityType(feed))], None
            changed = False
            if feed == "marketo" and since is None:
                carried = carry.load(self._store)
                if carried.manifest is not None:
                    carry.save(self._store, carried, [])
                    changed = True
            for name in names:
                current = self._store.get_cursor(name)
                wanted = token if name != MARKETO_CHANGES_TAIL else None
                if wanted is None:
                    if current is not None:
                        self._store.delete_cursor(current)
                        changed = True
                elif current is None or current.value != wanted:
                    self._put(Cursor(name=name, value=wanted, etag=current.etag if current else None))
                    changed = True
            what = {
                "marketo": "the next cycle reads Marketo's changes "
                + ("from its own start (the backlog is skipped)" if since is None else f"from {since.isoformat()}"),
                "lead": "the next cycle re-reads every lead (merged by the baselines: nothing is written twice)",
                "contact": "the next cycle re-reads every contact (merged by the baselines: nothing is written twice)",
            }[feed]
            if not changed:
                return act.finish(Outcome.NOTHING, f"{feed}: already reset; {what}", {"cursors": names})
            return act.finish(Outcome.DONE, f"{feed} reset: {what}", {"cursors": names})

    def _put(self, cursor: Cursor) -> None:
        try:
            self._store.put_cursor(cursor)
        except StateConflictError as err:  # we hold the lease: only another operator could race us
            raise SyncError(f"cursor {cursor.name} changed meanwhile; try again") from err

    # -- export --------------------------------------------------------------------------------

    def migrate_state(self, *, pages: int = MIGRATE_PAGES) -> ActionResult:
        """Move up to ``pages`` pages (1,000 rows) of links from the one-partition layout to the
        spread one (``state._links``), under the cycle lease (one migration at a time; cycles
        between calls read either layout). Run it again until ``done``; a repeat is harmless."""
        if pages < 1:
            raise ValueError("pages must be at least 1")
        with self._acting("migrate-state", "links") as act:
            if act.busy:
                return act.result
            step = self._store.migrate_links(pages=pages)
            details = {"moved": step.moved, "kept": step.kept, "dropped": step.dropped, "done": step.done}
            if step.done and not (step.moved or step.kept or step.dropped):
                return act.finish(Outcome.NOTHING, "the links are in the spread layout already", details)
            what = "done: every link is in the spread layout" if step.done else "more left: run it again"
            return act.finish(Outcome.DONE, f"links migrated, {step.moved} row(s) moved; {what}", details)

    def export(self, kind: str) -> ActionResult:
        """The open failures or the recorded collisions as CSV (ids, fields, reasons, times; no
        person values), newest first, at most ``EXPORT_MAX_ROWS`` rows. Reads only."""
        if kind not in EXPORT_KINDS:
            raise ValueError(f"export one of {', '.join(EXPORT_KINDS)}, not {kind!r}")
        with self._acting("export", kind, lease=False) as act:
            if kind == "failures":
                failures = sorted(
                    _first(self._store.iter_failures(), EXPORT_MAX_ROWS),
                    key=lambda failure: (failure.last_failed_at, failure.key),
                    reverse=True,
                )
                text = _csv(FAILURE_COLUMNS, (_failure_row(failure) for failure in failures))
                rows = len(failures)
            else:
                collisions = self._store.list_collisions(limit=EXPORT_MAX_ROWS)
                text = _csv(
                    COLLISION_COLUMNS,
                    (
                        [
                            c.at.isoformat(),
                            c.run_id,
                            c.entity.value,
                            c.marketo_id,
                            c.dataverse_id,
                            c.field,
                            c.winner,
                            c.rule,
                        ]
                        for c in collisions
                    ),
                )
                rows = len(collisions)
            details = {"rows": rows, "capped": rows >= EXPORT_MAX_ROWS}
            result = act.finish(Outcome.DONE, f"exported {rows} {kind}", details)
            return ActionResult(result.record, result.message, result.details, csv=text)

    # -- shared ----------------------------------------------------------------------------------

    def _applier(self, run_id: str, tally: Tally, open_failures: OpenFailures | None = None) -> Applier:
        return Applier(
            marketo=self._marketo,
            dataverse=self._dataverse,
            store=self._store,
            field_map=self._field_map,
            dynamics_delete_policy=self._options.dynamics_delete_policy,
            marketo_delete_policy=self._options.marketo_delete_policy,
            run_id=run_id,
            now=self._clock(),
            open_failures=open_failures or OpenFailures(self._store),
            tally=tally,
            sync_filter=self._options.sync_filter,
        )

    @contextmanager
    def _acting(self, action: str, target: str, *, reason: str | None = None, lease: bool = True) -> Iterator[_Act]:
        act = _Act(self, action, target, reason)
        try:
            if lease:
                with self._leased(act):
                    yield act
            else:
                yield act
        except (SyncError, OSError) as err:
            if act.unfinished:
                act.finish(Outcome.FAILED, f"failed: {type(err).__name__}")
            raise

    @contextmanager
    def _leased(self, act: _Act) -> Iterator[None]:
        try:
            taken = self._store.acquire_lease(act.id, now=self._clock(), duration=self._options.lease_duration)
        except LeaseHeldError:
            act.finish(Outcome.BUSY, "a sync cycle (or another action) is running: nothing changed; try again shortly")
            yield
            return
        heartbeat = Heartbeat(
            self._store, taken, duration=self._options.lease_duration, clock=self._clock, run_id=act.id
        ).start()
        try:
            yield
        finally:
            heartbeat.stop()
            try:
                self._store.release_lease(heartbeat.lease)
            except (StateConflictError, SyncError, OSError):
                log.warning("action %s: the lease could not be released; it expires by itself", act.id)

    def _audit(self, act: _Act, outcome: Outcome, message: str) -> ActionRecord:
        record = ActionRecord(
            id=act.id,
            at=act.at,
            action=act.action,
            target=act.target,
            by=self._by,
            via=self._via,
            outcome=outcome.value,
            reason=act.reason,
            detail=message[:1000],
        )
        self._store.add_action(record)
        log.info("action %s: %s %s via %s: %s", act.id, act.action, act.target, self._via, outcome.value)
        return record


class _Act:
    """One action in progress: its id and time, and its result once finished (audited then)."""

    def __init__(self, operator: Operator, action: str, target: str, reason: str | None) -> None:
        self._operator = operator
        self.at = operator._clock()
        self.id = f"{self.at:%Y%m%dT%H%M%SZ}-{action}-{uuid.uuid4().hex[:8]}"
        self.action = action
        self.target = target[:300]
        self.reason = reason
        self._result: ActionResult | None = None

    @property
    def unfinished(self) -> bool:
        return self._result is None

    @property
    def busy(self) -> bool:
        return self._result is not None and self._result.outcome is Outcome.BUSY

    @property
    def result(self) -> ActionResult:
        assert self._result is not None
        return self._result

    def finish(self, outcome: Outcome, message: str, details: dict[str, Any] | None = None) -> ActionResult:
        record = self._operator._audit(self, outcome, message)
        self._result = ActionResult(record, message, details or {})
        return self._result


def _check_keys(keys: Sequence[str]) -> None:
    if not keys:
        raise ValueError("no failure key given")
    for key in keys:
        if not FAILURE_KEY.match(key):
            raise ValueError(
                f"{key[:60]!r} is not a failure key (to_dynamics:m<id>, to_marketo:m<id> or to_marketo:<entity>:<guid>)"
            )


def _first(failures: Iterator[RecordFailure], limit: int) -> list[RecordFailure]:
    out: list[RecordFailure] = []
    for failure in failures:
        if len(out) >= limit:
            break
        out.append(failure)
    return out


FAILURE_COLUMNS = [
    "key",
    "direction",
    "entity",
    "marketo_id",
    "dataverse_id",
    "code",
    "reasons",
    "fields",
    "attempts",
    "first_failed_at",
    "last_failed_at",
    "next_retry_at",
    "run_id",
]
COLLISION_COLUMNS = ["at", "run_id", "entity", "marketo_id", "dataverse_id", "field", "winner", "rule"]


def _failure_row(failure: RecordFailure) -> list[Any]:
    return [
        failure.key,
        failure.direction.value,
        failure.entity.value,
        failure.marketo_id,
        failure.dataverse_id,
        failure.code,
        "; ".join(failure.reasons),
        " ".join(failure.fields),
        failure.attempts,
        failure.first_failed_at.isoformat(),
        failure.last_failed_at.isoformat(),
        failure.next_retry_at.isoformat(),
        failure.run_id,
    ]


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv(header: Sequence[str], rows: Iterator[Sequence[Any]] | Any) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return out.getvalue()
