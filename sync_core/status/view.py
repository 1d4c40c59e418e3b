"""The status view (design §1, issue 9): what an admin needs to see at a glance.

Owns the typed ``Status`` built from a ``StateStore`` (last cycles, backlog estimate, open
failures, recent collisions, field-map drift, a health headline), its JSON and plain-text
renderings (the models are ``status.models``, HTML is ``status.html``), the choice between JSON and HTML for an HTTP
request, and the ``python -m sync_core status`` command. ``build_status`` only reads the store:
no clock reads (``now`` is passed in), no writes, no API calls. Run reports are written by the
engine and read here defensively: a missing or malformed key shows as a dash, never a crash.

Person data: the page is for admins of the same data, but it ends up in screenshots, tickets and
logs, so it identifies records by ids, entity and field names only. Collision values (emails,
names) are stored in the state store but are never shown here; an admin opens the record by its
Marketo or Dataverse id to see them. Failure reasons are shown as the engine wrote them (they
name fields and rules, not values).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, TextIO

from azure.core.exceptions import AzureError

from sync_core.check.run import run_checks
from sync_core.core.errors import ConfigError, SyncError
from sync_core.core.fieldmap import FieldMap
from sync_core.core.flows import WEBHOOKS
from sync_core.core.golive import JOB_CURSOR
from sync_core.core.golive import JobState as InitialSyncJob
from sync_core.core.golive import JobStatus as InitialSyncStatus
from sync_core.core.jobs import JobState
from sync_core.core.models import Collision, RecordFailure, RunReport, WebhookCalls
from sync_core.core.report import COMPLETED_OUTCOMES, DID_ITS_WORK, Outcome
from sync_core.core.schedule import Schedule
from sync_core.jobs import job_progress
from sync_core.jobs.fields import unsynced_fields
from sync_core.settings import DEFAULT_SCHEDULE, Settings
from sync_core.state import StateStore
from sync_core.state.queue import JobQueue
from sync_core.status.html import (
    Controls,
    fmt_total,
    fmt_when,
    render_error_html,
    render_html,
)
from sync_core.status.models import (
    ActionView,
    Backlog,
    Checks,
    CheckView,
    CollisionView,
    Cycle,
    Drift,
    DriftItem,
    FailureView,
    Health,
    HealthLevel,
    InitialSyncView,
    Jobs,
    JobView,
    LastPrune,
    StateSize,
    Status,
    Total,
    Totals,
    WebhookRow,
)
from sync_core.status.text import render_text
from sync_core.wiring.services import services_for

log = logging.getLogger(__name__)

# Totals are counted by listing at most this many rows, so a huge error table cannot make the
# page slow; beyond it a total reads "1000+".
TOTAL_CAP = 1000
ACTIONS_SHOWN = 10  # the newest operators' actions on the page
STALE_INTERVALS = 3  # no cycle for more than this many schedule intervals: the sync is down
# A failed cycle is one whose outcome is not in ``core.report.COMPLETED_OUTCOMES``; these retry by themselves.
_RETRIES_BY_ITSELF = frozenset({Outcome.TRANSIENT, Outcome.QUOTA, Outcome.LEASE_LOST})

Format = Literal["json", "html"]


def _seconds(run: RunReport) -> float | None:
    if run.report.seconds is not None:
        return run.report.seconds
    if run.finished_at is not None and run.finished_at >= run.started_at:
        return (run.finished_at - run.started_at).total_seconds()
    return None


def cycle_from_report(run: RunReport) -> Cycle:
    report = run.report
    return Cycle(
        run_id=run.run_id,
        started_at=run.started_at,
        finished_at=run.finished_at,
        outcome=run.outcome,
        failed=run.outcome not in COMPLETED_OUTCOMES,
        reason=report.error if run.outcome not in COMPLETED_OUTCOMES else report.left and report.left.summary(),
        seconds=_seconds(run),
        pulled=report.pulled,
        written=report.written,
        api_calls=report.api_calls,
        token_calls=report.token_calls,
        table_transactions=report.table_transactions,
        created=report.created,
        linked=report.linked,
        unlinked=report.unlinked,
        flagged_deleted=report.flagged_deleted,
        qualified=report.qualified,
        collisions=report.collisions,
        failures=report.failures,
        filtered=report.filtered,
    )


def _backlog(runs: Sequence[RunReport]) -> Backlog:
    """From the newest report with a ``backlog``: numbers per part (``total``, when given, wins)."""
    for run in runs:
        parts = dict(run.report.backlog or {})
        if parts:
            total = parts.pop("total", None)
            total = total if total is not None else sum(parts.values())
            return Backlog(known=True, total=total, parts=parts, run_id=run.run_id, as_of=run.started_at)
    return Backlog(known=False)


def _drift(runs: Sequence[RunReport]) -> Drift:
    """From the newest report that has a ``drift`` list (a lease-held cycle checks nothing)."""
    for run in runs:
        if run.report.drift is not None:
            items = [
                DriftItem(side=item.side, entity=item.entity, field=item.name, keys=item.fields, detail=item.detail)
                for item in run.report.drift
            ]
            return Drift(known=True, run_id=run.run_id, items=items)
    return Drift(known=False)


# -- the model -------------------------------------------------------------------------------


def _collision_view(collision: Collision) -> CollisionView:
    return CollisionView(
        at=collision.at,
        run_id=collision.run_id,
        entity=str(collision.entity),
        field=collision.field,
        winner=collision.winner,
        rule=collision.rule,
        marketo_id=collision.marketo_id,
        dataverse_id=collision.dataverse_id,
    )


def _failure_view(failure: RecordFailure, now: datetime) -> FailureView:
    return FailureView(
        key=failure.key,
        direction=str(failure.direction),
        entity=str(failure.entity),
        marketo_id=failure.marketo_id,
        dataverse_id=failure.dataverse_id,
        reasons=list(failure.reasons),
        code=failure.code,
        fields=list(failure.fields),
        attempts=failure.attempts,
        first_failed_at=failure.first_failed_at,
        last_failed_at=failure.last_failed_at,
        next_retry_at=failure.next_retry_at,
        due=failure.next_retry_at <= now,
    )


def _total(rows: int) -> Total:
    return Total(count=min(rows, TOTAL_CAP), at_least=rows > TOTAL_CAP)


def stale_after(last_cycle_at: datetime, schedule: str) -> datetime | None:
    """When the sync counts as down: the ``STALE_INTERVALS``-th scheduled run after the last cycle
    has passed with no new cycle. None if the schedule cannot be read."""
    try:
        parsed = Schedule.parse(schedule)
        due = last_cycle_at
        for _ in range(STALE_INTERVALS):
            due = parsed.next_after(due)
    except ValueError:
        return None
    return due


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _health(
    *,
    now: datetime,
    schedule: str,
    cycles: Sequence[Cycle],
    totals: Totals,
    drift: Drift,
    backlog: Backlog,
    jobs: Jobs | None = None,
) -> Health:
    details: list[str] = []
    headline, level = "OK", HealthLevel.OK
    if jobs is not None and jobs.poison_messages:
        headline, level = "Job chunks failed", HealthLevel.WARNING
        details.append(
            f"{_plural(jobs.poison_messages, 'job message')} in the poison queue (a chunk failed on every "
            "delivery): fix the cause, then `python -m sync_core backfill --resume`"
        )
    for key in [] if jobs is None else jobs.unbackfilled_fields:
        if level is HealthLevel.OK:
            headline, level = "Field not backfilled", HealthLevel.WARNING
        details.append(
            f"field {key} was added to the field map and not backfilled: `python -m sync_core backfill --field {key}`"
        )
    if totals.failures_open.count:
        headline, level = "Failures open", HealthLevel.WARNING
        one = totals.failures_open.count == 1 and not totals.failures_open.at_least
        details.append(
            f"{fmt_total(totals.failures_open)} open {'failure' if one else 'failures'}, "
            f"{fmt_total(totals.failures_due)} due for retry"
        )
    if drift.items:
        if level is HealthLevel.OK:
            headline, level = "Field-map drift", HealthLevel.WARNING
        details.append(f"{_plural(len(drift.items), 'field-map drift item')} in the last check")
    if not cycles:
        return Health(
            level=HealthLevel.WARNING, headline="No cycle yet", details=["no run report has been stored", *details]
        )
    latest = cycles[0]
    if latest.failed:
        headline, level = "Last cycle failed", HealthLevel.FAILING
        completed = next((cycle for cycle in cycles if cycle.outcome in DID_ITS_WORK), None)
        since = (
            f"last completed cycle {fmt_when(completed.started_at)}"
            if completed
            else "none of the recent ones completed"
        )
        why = f" ({latest.reason})" if latest.reason else ""
        retries = " — it retries by itself on the next tick" if latest.outcome in _RETRIES_BY_ITSELF else ""
        details.insert(0, f"the last cycle ended with outcome '{latest.outcome}'{why}{retries}; {since}")
    deadline = stale_after(latest.started_at, schedule)
    if deadline is None:
        details.append(f"schedule {schedule!r} could not be read; staleness not checked")
    elif now > deadline:
        minutes = int((now - latest.started_at).total_seconds() // 60)
        headline, level = f"No cycle for {_duration_words(minutes)}", HealthLevel.FAILING
        details.insert(0, f"more than {STALE_INTERVALS} schedule intervals ({schedule}) without a cycle")
    if totals.collisions_24h.count:
        details.append(f"{_plural(totals.collisions_24h.count, 'collision')} in the last 24 h (resolved by the rules)")
    if not latest.failed and latest.reason:  # cut short by its time budget: the next tick continues
        details.append(f"the last cycle: {latest.reason}")
    if backlog.known and backlog.total:
        details.append(f"about {backlog.total:,} changes waiting")
    return Health(level=level, headline=headline, details=details)


def _duration_words(minutes: int) -> str:
    if minutes < 120:
        return _plural(minutes, "minute")
    if minutes < 48 * 60:
        return _plural(minutes // 60, "hour")
    return _plural(minutes // (24 * 60), "day")


def build_status(
    store: StateStore,
    *,
    now: datetime,
    schedule: str = DEFAULT_SCHEDULE,
    cycles: int = 20,
    failures: int = 50,
    collisions: int = 20,
    count_links: bool = False,
    field_map: FieldMap | None = None,
    queue: JobQueue | None = None,
) -> Status:
    """Everything the status view shows, read from ``store`` as of ``now`` (timezone-aware).

    ``count_links`` walks every link to count linked leads and contacts: a full table scan, so
    it is off unless asked for. With ``field_map``, the mapped fields not backfilled; with ``queue``,
    its poison messages."""
    runs = store.list_run_reports(limit=cycles)
    open_failures = store.list_failures(limit=TOTAL_CAP + 1)
    due = store.due_failures(now=now, limit=TOTAL_CAP + 1)
    recent_collisions = store.list_collisions(limit=TOTAL_CAP + 1)
    day_ago = now - timedelta(hours=24)
    collisions_24h = sum(1 for collision in recent_collisions if collision.at >= day_ago)
    links: dict[str, int] | None = None
    if count_links:
        tally = Counter(str(link.entity) for link in store.iter_links())
        links = {entity: tally.get(entity, 0) for entity in ("lead", "contact")} | dict(tally)

    state = _state_size(store)
    actions = [
        ActionView(
            at=action.at,
            action=action.action,
            target=action.target,
            by=action.by,
            via=action.via,
            outcome=action.outcome,
            reason=action.reason,
            detail=action.detail,
        )
        for action in store.list_actions(limit=ACTIONS_SHOWN)
    ]
    webhooks = _webhook_rows(store, now)

    cycle_rows = [cycle_from_report(run) for run in runs]
    totals = Totals(
        failures_open=_total(len(open_failures)),
        failures_due=_total(len(due)),
        collisions_24h=_total(collisions_24h),
        links=links,
    )
    backlog = _backlog(runs)
    drift = _drift(runs)
    jobs = _jobs(store, field_map, queue)
    completed = [cycle for cycle in cycle_rows if cycle.outcome in DID_ITS_WORK]
    health = _health(
        now=now, schedule=schedule, cycles=cycle_rows, totals=totals, drift=drift, backlog=backlog, jobs=jobs
    )
    resets = [
        f"cursor {action.target} reset by {action.by} at {fmt_when(action.at)}"
        for action in actions
        if action.action == "reset-cursor" and action.outcome == "done" and action.at >= day_ago
    ]
    if resets:
        health = health.model_copy(update={"details": [*health.details, *resets]})
    return Status(
        generated_at=now,
        schedule=schedule,
        health=health,
        last_cycle_at=cycle_rows[0].started_at if cycle_rows else None,
        last_completed_at=completed[0].started_at if completed else None,
        cycles=cycle_rows,
        backlog=backlog,
        totals=totals,
        failures=[_failure_view(failure, now) for failure in open_failures[:failures]],
        collisions=[_collision_view(collision) for collision in recent_collisions[:collisions]],
        drift=drift,
        state=state,
        actions=actions,
        webhooks=webhooks,
        initial_sync=_initial_sync(store),
        jobs=jobs,
    )


RECENT_JOBS = 5


def _jobs(store: StateStore, field_map: FieldMap | None, queue: JobQueue | None) -> Jobs:
    """The newest jobs (chunks counted for the unfinished ones: a page per 1,000 chunks), the poison
    queue's length and the fields not backfilled."""
    recent: list[JobView] = []
    for job in store.list_jobs(limit=RECENT_JOBS):
        progress = job_progress(store, job.id) if job.state is not JobState.DONE else None
        recent.append(
            JobView(
                id=job.id,
                kind=job.kind,
                params=job.params,
                state=job.state.value,
                created_at=job.created_at,
                finished_at=job.finished_at,
                chunks=job.chunks,
                done=job.chunks if progress is None else progress.done,
                running=0 if progress is None else progress.running,
                pending=0 if progress is None else progress.pending,
                totals=job.result if progress is None else progress.totals,
                errors=[] if progress is None else progress.errors,
            )
        )
    poisoned: int | None = None
    if queue is not None:
        try:
            poisoned = queue.poison_count()
        except (SyncError, AzureError) as err:  # the rest of the view does not depend on the queue
            log.warning("status: the poison queue cannot be read: %s", type(err).__name__)
    return Jobs(
        recent=recent,
        poison_messages=poisoned,
        unbackfilled_fields=[] if field_map is None else unsynced_fields(store, field_map),
    )


def _webhook_rows(store: StateStore, now: datetime) -> list[WebhookRow]:
    """A row per webhook (``core.flows.WEBHOOKS``, then any other name recorded) over the last 24 hours."""
    recorded = store.webhook_calls(now=now, hours=24)
    rows = []
    for name in [*WEBHOOKS, *sorted(set(recorded) - set(WEBHOOKS))]:
        calls = recorded.get(name, WebhookCalls())
        rows.append(
            WebhookRow(
                name=name,
                calls=calls.calls,
                outcomes=dict(sorted(calls.outcomes.items())),
                p50_ms=calls.percentile_ms(0.5),
                p90_ms=calls.percentile_ms(0.9),
                p99_ms=calls.percentile_ms(0.99),
                mean_ms=None if calls.mean_ms is None else round(calls.mean_ms, 1),
                max_ms=round(calls.max_ms, 1) if calls.calls else None,
            )
        )
    return rows


def _initial_sync(store: StateStore) -> InitialSyncView | None:
    """The go-live job's progress from its checkpoint row (one point read), or, while it is applied on
    the job queue, from its queue job's chunk rows (a page per 1,000 chunks)."""
    cursor = store.get_cursor(JOB_CURSOR)
    if cursor is None:
        return None
    try:
        job = InitialSyncJob.model_validate_json(cursor.value)
    except ValueError:
        return None
    if job.queue_job is None:
        return InitialSyncView.model_validate(job.progress())
    queued = job_progress(store, job.queue_job)
    view = job.progress(queued)
    if job.status is InitialSyncStatus.DONE:  # the row's outcome is the total already
        view |= {"outcome": job.outcome, "chunks_done": view["chunks"], "percent": 100.0, "running": 0}
    return InitialSyncView.model_validate(view)


def _state_size(store: StateStore) -> StateSize:
    """Records per table, each counted up to ``TOTAL_CAP`` (a page or two per table, whatever its size)."""
    counts = store.count_rows(cap=TOTAL_CAP + 1)
    last = store.get_last_prune()
    retention = store.retention
    return StateSize(
        tables={name: _total(count) for name, count in counts.items()},
        retention_days={
            "runs": retention.run_reports.days,
            "actions": retention.run_reports.days,
            "collisions": retention.collisions.days,
            "claims": retention.claims.days,
        },
        last_prune=None if last is None else LastPrune(at=last.at, removed=dict(last.removed), more=last.more),
    )


# -- renderings --------------------------------------------------------------------------------


def render_json(status: Status) -> str:
    return status.model_dump_json(indent=2)


def choose_format(accept: str | None, requested: str | None = None) -> Format:
    """``?format=json|html`` wins; else HTML when the client prefers ``text/html`` (a browser),
    else JSON (scripts, curl's ``*/*``). Raises ``ValueError`` for any other ``format``."""
    if requested is not None and requested.strip() != "":
        value = requested.strip().lower()
        if value not in ("json", "html"):
            raise ValueError(f"format must be json or html, not {requested[:20]!r}")
        return "html" if value == "html" else "json"
    html_q = json_q = 0.0
    for media_range in (accept or "").split(","):
        media, *params = (part.strip() for part in media_range.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        if media in ("text/html", "application/xhtml+xml"):
            html_q = max(html_q, quality)
        elif media in ("application/json", "application/*", "*/*"):
            json_q = max(json_q, quality)
    return "html" if html_q > 0 and html_q >= json_q else "json"


# -- the HTTP function and the command (the shell: environment, clock, store) -----------------


def state_store_for(settings: Settings) -> StateStore:
    """The process's state store for ``settings`` (from the one wiring, ``services``)."""
    return services_for(settings).store


@dataclass(frozen=True)
class StatusPage:
    """An HTTP answer, ready for the trigger to turn into a ``func.HttpResponse``."""

    status_code: int
    mimetype: str
    body: str
    headers: Mapping[str, str] = field(default_factory=dict)


# The page has no script and loads nothing: say so to the browser, so that even a value that
# escaped escaping could not run.
# The forms post to this host only; the page's URL may carry the key (``?code=``): no referrer to
# other sites.
HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
}
_JSON_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}


def _error_page(status_code: int, fmt: Format, message: str, problems: Sequence[str] = ()) -> StatusPage:
    if fmt == "html":
        return StatusPage(status_code, "text/html", render_error_html(message, problems), HTML_HEADERS)
    body = json.dumps({"error": message, "problems": list(problems)}, indent=2)
    return StatusPage(status_code, "application/json", body, _JSON_HEADERS)


def get_status_page(
    environ: Mapping[str, str],
    *,
    accept: str | None,
    query: Mapping[str, str],
    now: datetime | None = None,
) -> StatusPage:
    """``GET /api/status``: the status as JSON or HTML (``choose_format``). ``?links=1`` adds
    the link counts (a full scan); ``?checks=1`` runs the setup checks (``check.run``: calls both
    services) and shows them. Errors answer in the same format, without secrets."""
    try:
        fmt = choose_format(accept, query.get("format"))
    except ValueError as err:
        return _error_page(400, "json", str(err))
    try:
        settings = Settings.from_env(environ)
    except ConfigError as err:
        log.error("status: configuration invalid (%d problems)", len(err.problems))
        return _error_page(500, fmt, "the sync is not configured", err.problems)
    try:
        services = services_for(settings)
        status = build_status(
            state_store_for(settings),
            now=now or datetime.now(UTC),
            schedule=settings.schedule,
            count_links=_yes(query.get("links")),
            field_map=services.field_map,
            queue=services.queue,
        )
    except (SyncError, AzureError) as err:
        log.warning("status: state store unavailable: %s", type(err).__name__)
        return _error_page(503, fmt, "the state store cannot be read right now; try again shortly")
    if _yes(query.get("checks")):
        status = status.model_copy(update={"checks": setup_checks(environ, now=now or datetime.now(UTC))})
    if fmt == "html":
        page = render_html(status, Controls(code=query.get("code") or None))
        return StatusPage(200, "text/html", page, HTML_HEADERS)
    return StatusPage(200, "application/json", render_json(status), _JSON_HEADERS)


def _yes(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def setup_checks(environ: Mapping[str, str], *, now: datetime) -> Checks:
    """The setup checks (``python -m sync_core check``) for the page; a configuration error that
    stops them is shown as one failed check."""
    try:
        report = run_checks(environ)
    except ConfigError as err:
        problem = CheckView(
            name="config", title="Settings", status="fail", detail="; ".join(err.problems)[:500] or str(err)
        )
        return Checks(ok=False, ran_at=now, checks=[problem])
    views = [
        CheckView(name=check.name, title=check.title, status=check.status, detail=check.detail, hint=check.hint)
        for check in report.checks
    ]
    return Checks(ok=report.ok, ran_at=now, checks=views)


def status_main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    now: datetime | None = None,
) -> int:
    """``python -m sync_core status``: print the status from the settings in the environment.

    Exit code 0 whenever the status could be read, whatever it says (scripts read
    ``health.level`` from the JSON); 2 for a configuration error, 1 when the store is unreachable."""
    parser = argparse.ArgumentParser(
        prog="python -m sync_core status",
        description="The sync's status (last cycles, backlog, failures, collisions, drift), read from the "
        "state store named by the settings in the environment.",
        epilog="Exit code 0 whenever the status could be read, whatever it says (scripts read health.level "
        "from the JSON); 2 for a configuration error; 1 when the state store cannot be read.",
    )
    parser.add_argument(
        "--format", choices=["json", "text", "html"], default="json", help="output format (default: json)"
    )
    parser.add_argument("--cycles", type=int, default=20, help="how many recent cycles to show (default: 20)")
    parser.add_argument(
        "--count-links", action="store_true", help="also count linked leads and contacts (reads every link)"
    )
    args = parser.parse_args(argv)
    out = stdout or sys.stdout
    try:
        settings = Settings.from_env(os.environ if environ is None else environ)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return 2
    try:
        services = services_for(settings)
        status = build_status(
            state_store_for(settings),
            now=now or datetime.now(UTC),
            schedule=settings.schedule,
            cycles=max(1, args.cycles),
            count_links=args.count_links,
            field_map=services.field_map,
            queue=services.queue,
        )
    except (SyncError, AzureError) as err:
        print(f"the state store cannot be read: {type(err).__name__}", file=sys.stderr)
        return 1
    if args.format == "text":
        out.write(render_text(status))
    elif args.format == "html":
        out.write(render_html(status))
    else:
        out.write(render_json(status) + "\n")
    return 0
