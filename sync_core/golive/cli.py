"""``python -m sync_core initial-sync --plan | --apply``: go-live as a planned, resumable job.

``--plan`` reads both databases into a snapshot file (``--dir``), decides, stores the job row and
prints the plan as JSON; it writes nothing to Marketo or Dynamics. ``--apply`` does the plan's
work chunk by chunk, resuming where a stopped or crashed apply left off, with a progress bar on
stderr (plain lines when stderr is not a terminal), and prints what happened next to what the
plan said. With a job queue configured (``SYNC_QUEUE_CONNECTION`` / ``SYNC_QUEUE_ENDPOINT``, as for
``backfill``) ``--apply`` puts the chunks on the queue instead (``queued``) and follows them with
the same progress bar; running it again after Ctrl-C or poison messages enqueues again what is not
done and follows on. The job takes ``SYNC_INITIAL_API_SHARE`` of this app's API budget: the Marketo rate
share and the Dataverse bulk messages in flight are that share of ``MARKETO_RATE_SHARE`` and
``DATAVERSE_MAX_PARALLEL``, so the cycle and the webhook, running in the Function App with the
full settings, keep the rest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sync_core import jobs
from sync_core.core import golive
from sync_core.core.errors import ConfigError, QuotaExceededError, SyncError
from sync_core.core.golive import InitialPolicy, JobState, JobStatus, MarketoOnlyPolicy, Share
from sync_core.core.jobs import ChunkRecord, JobProgress
from sync_core.core.jobs import JobState as QueueJobState
from sync_core.cycle.schema_cache import active_schema
from sync_core.golive import queued
from sync_core.golive.apply import Checkpoints, InitialSync, JobConflictError, outcome_against_plan
from sync_core.golive.plan import (
    OldestPersonUnknownError,
    PlanReport,
    QueueEstimate,
    calibrate,
    decide,
    estimate,
    read_both_sides,
)
from sync_core.golive.snapshot import Snapshot
from sync_core.settings import Settings
from sync_core.wiring.services import Services, services_for

DEFAULT_DIR = ".initial-sync"


class ProgressBar:
    """A bar redrawn in place on a terminal; one plain line per second (and at the end) otherwise."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = bool(getattr(out, "isatty", lambda: False)())
        self._last = 0.0
        self._began: dict[str, tuple[float, int]] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        began, first = self._began.setdefault(stage, (now, done))
        final = total is not None and done >= total
        if not final and now - self._last < (0.2 if self._tty else 1.0):
            return
        self._last = now
        if total:
            rate = (done - first) / (now - began) if now > began and done > first else 0.0
            eta = f" ETA {_duration((total - done) / rate)}" if rate and not final else ""
            filled = int(30 * done / total)
            bar = "#" * filled + "-" * (30 - filled)
            text = f"{stage} [{bar}] {100 * done / total:5.1f}% {done}/{total}{eta}"
        else:
            text = f"{stage}: {done}"
        if self._tty:
            self._out.write("\r" + text.ljust(78) + ("\n" if final else ""))
        else:
            self._out.write(text + "\n")
        self._out.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def job_settings(settings: Settings) -> Settings:
    """The settings the job's own clients use: its share of the app's API budget."""
    share = settings.initial_api_share
    return settings.model_copy(
        update={
            "marketo_rate_share": settings.marketo_rate_share * share,
            "dataverse_max_parallel": max(1, math.floor(settings.dataverse_max_parallel * share)),
        }
    )


def initial_sync_main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Exit 0 when the plan was made / the apply finished, 1 when it could not be, 2 for configuration."""
    parser = argparse.ArgumentParser(
        prog="python -m sync_core initial-sync",
        description="Go-live: plan the initial sync of two full databases (writes nothing), then apply it.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--plan", action="store_true", help="read both sides and report what --apply will do")
    mode.add_argument("--apply", action="store_true", help="do the planned work; resumes where it stopped")
    parser.add_argument("--dir", default=DEFAULT_DIR, help=f"where the snapshot file goes (default {DEFAULT_DIR})")
    parser.add_argument("--since", help="ISO date of the oldest Marketo person (default: found from the lowest ids)")
    parser.add_argument("--chunk-size", type=int, default=golive.CHUNK_SIZE, help=argparse.SUPPRESS)
    parser.add_argument("--poll-seconds", type=float, default=60.0, help="bulk export status poll (default 60)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="with a job queue: the Function instances expected to run its parts, for the plan's eta_queue (default 1)",
    )
    args = parser.parse_args(argv)
    if args.instances < 1:
        parser.error("--instances must be 1 or more")
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        settings = Settings.from_env(os.environ if environ is None else environ)
    except ConfigError as error:
        print(str(error), file=err)
        return 2
    services = services_for(job_settings(settings))
    progress = (lambda stage, done, total: None) if args.quiet else ProgressBar(err)
    if args.plan:
        since = datetime.fromisoformat(args.since).replace(tzinfo=UTC) if args.since else None
        return _plan(
            services,
            settings,
            Path(args.dir),
            since,
            args.chunk_size,
            args.poll_seconds,
            progress,
            out,
            err,
            instances=args.instances,
        )
    return _apply(services, progress, out, err)


def _plan(
    services: Services,
    settings: Settings,
    directory: Path,
    since: datetime | None,
    chunk_size: int,
    poll_seconds: float,
    progress: Any,
    out: TextIO,
    err: TextIO,
    *,
    instances: int = 1,
) -> int:
    checkpoints = Checkpoints(services)
    existing = checkpoints.load()
    if existing is not None and existing.status is JobStatus.APPLYING:
        print(
            f"initial sync {existing.job_id} is being applied ({existing.done_count}/{existing.chunks} chunks): "
            "finish it with --apply before planning another",
            file=err,
        )
        return 1
    started = datetime.now(UTC).replace(microsecond=0)
    job_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{job_id}.sqlite"
    policy = settings.initial_policy
    share = Share(services.settings.marketo_rate_share, services.settings.dataverse_max_parallel)
    wall = time.perf_counter()
    calls_before = services.counters.snapshot()
    report = PlanReport(job_id=job_id, planned_at=started.isoformat(), snapshot=str(path))
    report.policy = {
        "SYNC_INITIAL_LEAD_WINNER": policy.lead_winner,
        "SYNC_INITIAL_CONTACT_WINNER": policy.contact_winner,
        "SYNC_INITIAL_MARKETO_ONLY": policy.marketo_only.value,
    }
    schema = active_schema(services.store, services.marketo, services.dataverse, services.field_map, now=started)
    # The apply starts as this plan did (the interpreter, the clients, a token, the schema): as long.
    start_s = _process_age()
    if start_s is None:
        start_s = time.perf_counter() - wall
    with Snapshot(path) as snapshot:
        try:
            read = read_both_sides(
                services, snapshot, schema, started=started, since=since, poll_seconds=poll_seconds, progress=progress
            )
        except OldestPersonUnknownError as error:
            print(str(error), file=err)
            return 1
        snapshot.put_meta("cursors", read["cursors"])
        snapshot.put_meta("policy", report.policy)
        report.read = read["read"]
        report.read_seconds = round(time.perf_counter() - wall, 1)
        costs = decide(
            snapshot,
            schema,
            policy,
            batch_size=services.settings.dataverse_batch_size,
            share=share,
            report=report,
            chunk_size=chunk_size,
        )
        queue: QueueEstimate | None = None
        if services.queue is not None:
            parts = queued.part_costs(snapshot, batch_size=services.settings.dataverse_batch_size)
            report.api_calls.update(queued.queue_calls(parts))
            queue = QueueEstimate(
                parts=[part.total for part in parts],
                share=Share(settings.marketo_rate_share, settings.dataverse_max_parallel),  # the app's, not the job's
                background_share=settings.background_share,
                instances=instances,
            )
        links_at_end = report.already_linked + sum(cost.items for cost in costs)
        local = calibrate(services.store, snapshot, schema, policy, links_at_end=links_at_end)
        estimate(report, costs, share=share, local=local, start_s=start_s, queue=queue)
    read_calls = _calls(calls_before, services.counters.snapshot())
    read_floor = golive.read_floor(
        windows=read["read"]["windows"],
        dataverse_rows={name: read["read"].get(name, 0) for name in ("leads", "contacts")},
    )
    apply_marketo = report.api_calls.get("apply_queue", report.api_calls["apply"])["marketo"]
    quota_left = _quota_left(services, settings)
    report.api_calls.update(
        {
            "plan_read": read_calls,
            "plan_read_floor": {"marketo": read_floor.marketo, "dataverse": read_floor.dataverse},
            "marketo_daily_quota": settings.marketo_daily_quota,
            "marketo_quota_left_today": quota_left,
            "marketo_days": math.ceil(apply_marketo / settings.marketo_daily_quota) if apply_marketo else 0,
        }
    )
    summary = {
        key: value for key, value in report.as_json().items() if key not in ("ambiguous", "snapshot", "conflicts")
    }
    summary["ambiguous"] = {k: v for k, v in report.ambiguous.items() if k != "shown"}
    state = JobState(
        job_id=job_id,
        snapshot=str(path.resolve()),
        chunks=report.chunks,
        plan=summary | {"conflicts": report.conflicts},
        planned_at=started.isoformat(),
    )
    try:
        checkpoints.save(state, fresh=True)
    except JobConflictError as error:
        print(str(error), file=err)
        return 1
    out.write(json.dumps(report.as_json(), indent=2) + "\n")
    return 0


def _process_age() -> float | None:
    """Seconds since this process started, from Linux's ``/proc``; None where there is none."""
    try:
        since_boot = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - since_boot / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _calls(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, int]:
    return {
        service: int(after.get(service, {}).get("calls", 0)) - int(before.get(service, {}).get("calls", 0))
        for service in ("marketo", "dataverse")
    }


def _quota_left(services: Services, settings: Settings) -> int | None:
    try:
        return settings.marketo_daily_quota - services.marketo.get_usage_today()
    except Exception:
        return None


def _apply(services: Services, progress: Any, out: TextIO, err: TextIO, *, poll: float = 1.0) -> int:
    checkpoints = Checkpoints(services)
    state = checkpoints.load()
    if state is None:
        print("no initial sync planned: run initial-sync --plan first", file=err)
        return 1
    unfinished = state.status is not JobStatus.DONE
    if unfinished and state.queue_job is None and not Path(state.snapshot).exists():
        print(f"the plan's snapshot {state.snapshot} is missing: plan again", file=err)
        return 1
    if unfinished and (state.queue_job is not None or services.queue is not None):
        return _apply_queued(services, checkpoints, state, progress, out, err, poll=poll)
    wall = time.perf_counter()
    before = services.counters.snapshot()
    if unfinished:
        with Snapshot(state.snapshot) as snapshot:
            job = InitialSync(services, snapshot, checkpoints, state, policy=_policy(snapshot), progress=progress)
            try:
                state = job.run()
            except JobConflictError as error:
                print(str(error), file=err)
                return 1
            except ConfigError:
                raise  # one JSON line and exit 2, as every command
            except QuotaExceededError:
                print(
                    f"Marketo's daily API quota is spent ({job.state.done_count}/{job.state.chunks} chunks done): "
                    "run initial-sync --apply again tomorrow to resume",
                    file=err,
                )
                return 1
            except (SyncError, OSError) as error:
                print(
                    f"the apply stopped ({job.state.done_count}/{job.state.chunks} chunks done): {error}; "
                    "run initial-sync --apply again to resume",
                    file=err,
                )
                return 1
    _print_result(state, _calls(before, services.counters.snapshot()), time.perf_counter() - wall, out)
    return 0


def _policy(snapshot: Snapshot) -> InitialPolicy:
    stored = snapshot.meta("policy") or {}
    return InitialPolicy(
        lead_winner=stored.get("SYNC_INITIAL_LEAD_WINNER", "marketo"),
        contact_winner=stored.get("SYNC_INITIAL_CONTACT_WINNER", "dynamics"),
        marketo_only=MarketoOnlyPolicy(stored.get("SYNC_INITIAL_MARKETO_ONLY", "leave")),
    )


def _print_result(state: JobState, calls: Mapping[str, int], seconds: float, out: TextIO, **extra: Any) -> None:
    result = {
        "job_id": state.job_id,
        "status": state.status.value,
        "chunks": state.chunks,
        "outcome": state.outcome,
        "against_plan": outcome_against_plan(state.plan, state.outcome),
        "api_calls": calls,
        "seconds": round(seconds, 1),
        "plan_eta_seconds": state.plan.get("eta_seconds"),
        **extra,
    }
    out.write(json.dumps(result, indent=2) + "\n")


def _apply_queued(
    services: Services,
    checkpoints: Checkpoints,
    state: JobState,
    progress: Any,
    out: TextIO,
    err: TextIO,
    *,
    poll: float,
) -> int:
    """The chunks on the job queue (``queued``): the queue job started (once: its id is written in
    the job row first) or, when it exists, its chunks not done enqueued again; then followed to its
    end. Without a queue configured now, a queue job started earlier runs here (``jobs.run_inline``)."""
    wall = time.perf_counter()
    before = services.counters.snapshot()
    started_now = state.queue_job is None or services.store.get_job(state.queue_job) is None
    if started_now:
        if not Path(state.snapshot).exists():
            print(f"the plan's snapshot {state.snapshot} is missing: plan again", file=err)
            return 1
        try:
            state = _start_queued(services, checkpoints, state)
        except JobConflictError as error:
            print(str(error), file=err)
            return 1
    job_id = state.queue_job
    assert job_id is not None
    record = services.store.get_job(job_id)
    assert record is not None
    if services.queue is None:
        jobs.run_inline(services, job_id, owner="cli")
    elif started_now:
        pass  # its messages were sent as its chunks were written
    elif record.planned:
        jobs.resume_job(services, job_id)  # after Ctrl-C, a lost or poisoned message: what is not done
    else:
        _finish_writing(services, state)  # the apply that started it died while writing it
    print(f"initial sync {state.job_id}: on the job queue as job {job_id}", file=err)

    def show(current: JobProgress) -> None:
        progress("apply", current.done, current.job.chunks)

    try:
        final = jobs.follow(services, job_id, show=show, poll=poll)
    except KeyboardInterrupt:
        print(f"initial sync {state.job_id}: left running on the queue; run --apply again to follow it", file=err)
        return 1
    if not final.complete:
        print(
            f"initial sync {state.job_id}: chunks failed for good (poison queue): {'; '.join(final.errors)}; "
            "fix the cause, then run --apply again",
            file=err,
        )
        return 1
    done = checkpoints.load()
    if done is not None and done.status is not JobStatus.DONE and final.job.state is QueueJobState.DONE:
        queued.complete(services, final.job, final)  # the last chunk's worker died before it
        done = checkpoints.load()
    assert done is not None
    # ``api_calls`` are this process's own (reading the snapshot's ids, following); the parts' calls
    # are the workers', in the plan's ``apply_queue`` estimate.
    queue = {"job": job_id, "chunks": final.job.chunks}
    _print_result(done, _calls(before, services.counters.snapshot()), time.perf_counter() - wall, out, queue=queue)
    return 0


def _start_queued(services: Services, checkpoints: Checkpoints, state: JobState) -> JobState:
    """The apply begins (job row ``applying``, the cycle's cursors), the queue job's id goes into the
    job row, then the queue job is written and enqueued from the snapshot."""
    with Snapshot(state.snapshot) as snapshot:
        apply = InitialSync(services, snapshot, checkpoints, state, policy=_policy(snapshot))
        apply.begin()
        state = checkpoints.save(apply.state.model_copy(update={"queue_job": queued.queue_job_id(apply.state)}))
        assert state.queue_job is not None
        if services.store.get_job(state.queue_job) is None:
            jobs.start_job(
                services,
                queued.KIND,
                queued.queue_params(state, snapshot),
                queued.payloads(state, snapshot),
                job_id=state.queue_job,
                enqueue=services.queue is not None,
            )
    return state


def _finish_writing(services: Services, state: JobState) -> None:
    """A queue job whose writing was cut short: the chunks missing are written and enqueued, then it is
    marked planned (only then can it complete). Chunks already written are left as they are."""
    assert state.queue_job is not None
    assert services.queue is not None
    store = services.store
    count = 0
    with Snapshot(state.snapshot) as snapshot:
        for index, payload in enumerate(queued.payloads(state, snapshot)):
            count += 1
            if store.get_chunk(state.queue_job, index) is None:
                store.add_chunks([ChunkRecord(job_id=state.queue_job, index=index, payload=payload)])
                services.queue.send(jobs.message_body(state.queue_job, index))
    record = store.get_job(state.queue_job)
    assert record is not None
    store.put_job(record.model_copy(update={"chunks": count, "planned": True}))
    jobs.resume_job(services, state.queue_job)
