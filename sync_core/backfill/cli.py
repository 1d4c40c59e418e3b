"""``python -m sync_core backfill --field NAME [--since DATE]``: fill a mapped field for the linked
records from the winning side (``sync_core.backfill``), as chunks on the job queue that every
instance's queue trigger (locally: ``python -m sync_core host``) works through; a progress bar on
stderr, the job's summary as JSON on stdout. Resumable: ``--resume`` enqueues again every chunk
not done (after an interrupted run, a lost or poisoned message) and follows the job to its end.
``--inline`` runs the chunks in this process instead (no queue needed)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TextIO

from sync_core import backfill, jobs
from sync_core.core.errors import ConfigError
from sync_core.core.jobs import JobProgress, JobRecord, JobState
from sync_core.settings import Settings
from sync_core.wiring.services import Services, services_for

_BAR = 30


def _since(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD or ISO 8601): {text!r}") from err
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def progress_line(progress: JobProgress, field: str) -> str:
    job = progress.job
    total = max(job.chunks, 1)
    filled = round(_BAR * progress.done / total)
    totals = progress.totals
    return (
        f"backfill {field}: [{'#' * filled}{'-' * (_BAR - filled)}] {progress.done}/{job.chunks} chunks"
        f"{'' if job.planned else ' (planning)'}, {totals.get('written', 0)} written, "
        f"{totals.get('unchanged', 0)} unchanged, {totals.get('empty', 0)} empty, {totals.get('failed', 0)} failed"
    )


def _summary(progress: JobProgress, poisoned: int | None) -> dict[str, object]:
    job = progress.job
    return {
        "job": job.id,
        "field": job.params.get("field"),
        "since": job.params.get("since"),
        "state": job.state.value,
        "chunks": job.chunks,
        "done": progress.done,
        "pending": progress.pending,
        "running": progress.running,
        "totals": progress.totals,
        "errors": progress.errors,
        "poison_messages": poisoned,
    }


def _latest_open(services: Services, field: str | None) -> JobRecord | None:
    for job in services.store.list_jobs(limit=100):
        if job.kind == backfill.KIND and job.state is not JobState.DONE and field in (None, job.params.get("field")):
            return job
    return None


def follow(
    services: Services,
    job_id: str,
    field: str,
    *,
    out: TextIO,
    poll: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> JobProgress:
    """Print the job's progress (a line when it changes) until it is done or chunks went to the
    poison queue (``jobs.follow``); its last progress."""
    last = [""]

    def show(progress: JobProgress) -> None:
        line = progress_line(progress, field)
        if line != last[0]:
            out.write(line + "\n")
            out.flush()
            last[0] = line

    progress = jobs.follow(services, job_id, show=show, poll=poll, sleep=sleep)
    if not progress.complete:
        out.write(f"backfill {field}: chunks failed for good (poison queue); fix the cause, then --resume\n")
    return progress


def backfill_main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Exit 0 when the job is done (read ``totals.failed``: refused records are failures the cycle
    retries), 1 when it was left running (``--no-wait``, or Ctrl-C: resume it later), 2 for bad input
    or a configuration error."""
    parser = argparse.ArgumentParser(
        prog="python -m sync_core backfill",
        description="Fill a mapped field for the linked records from the winning side (Marketo for leads, "
        "Dynamics for contacts, or the field's winner), in chunks on the job queue.",
    )
    parser.add_argument("--field", help="the field: its Marketo name or its Dataverse column")
    parser.add_argument("--since", type=_since, help="only links made or updated since DATE (YYYY-MM-DD or ISO 8601)")
    parser.add_argument("--chunk-size", type=int, default=backfill.DEFAULT_CHUNK, help="links per chunk (1-5000)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="JOB",
        help="enqueue again the chunks not done of JOB "
        "(default: the newest unfinished backfill, of --field if given) and follow it",
    )
    parser.add_argument("--inline", action="store_true", help="run the chunks in this process, not on the queue")
    parser.add_argument("--no-wait", action="store_true", help="enqueue and return (print the job id)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    out, err = stdout or sys.stdout, stderr or sys.stderr
    if not 1 <= args.chunk_size <= 5000:
        print("backfill: --chunk-size must be from 1 to 5000", file=err)
        return 2
    if args.field is None and args.resume is None:
        print("backfill: --field NAME is required (or --resume)", file=err)
        return 2
    try:
        services = services_for(Settings.from_env(os.environ if environ is None else environ))
    except ConfigError as error:
        print(str(error), file=err)
        return 2
    key: str | None = None
    if args.field is not None:
        try:
            key = backfill.field_mapping(services, args.field).key
        except ValueError as error:
            print(f"backfill: {error}", file=err)
            return 2
    if services.queue is None and not args.inline:
        print(
            "backfill: no job queue is configured (SYNC_QUEUE_CONNECTION / SYNC_QUEUE_ENDPOINT); "
            "pass --inline to run the chunks in this process",
            file=err,
        )
        return 2
    if args.resume is not None:
        job = services.store.get_job(args.resume) if args.resume != "latest" else _latest_open(services, key)
        if job is None or job.kind != backfill.KIND:
            print("backfill: no unfinished backfill job to resume", file=err)
            return 2
        key = str(job.params["field"])
        if not args.inline:
            sent = jobs.resume_job(services, job.id)
            print(f"backfill {key}: job {job.id} resumed, {sent} chunk(s) enqueued again", file=err)
    else:
        assert key is not None
        mapping = backfill.field_mapping(services, key)
        params = {"field": key, "since": None if args.since is None else args.since.isoformat()}
        payloads = backfill.plan_chunks(services.store, mapping, since=args.since, chunk_size=args.chunk_size)
        job = jobs.start_job(services, backfill.KIND, params, payloads, enqueue=not args.inline)
        print(f"backfill {key}: job {job.id}, {job.chunks} chunk(s)", file=err)
    progress_out = open(os.devnull, "w") if args.quiet else err  # noqa: SIM115 (closed below)
    try:
        if args.inline:
            jobs.run_inline(services, job.id, owner="cli")
        elif args.no_wait:
            progress = jobs.job_progress(services.store, job.id)
            assert progress is not None
            out.write(json.dumps(_summary(progress, _poisoned(services)), indent=2) + "\n")
            return 0 if progress.complete else 1
        progress = follow(services, job.id, key, out=progress_out)
    except KeyboardInterrupt:
        print(f"backfill {key}: left running; `backfill --resume {job.id}` follows it again", file=err)
        return 1
    finally:
        if progress_out is not err:
            progress_out.close()
    out.write(json.dumps(_summary(progress, _poisoned(services)), indent=2) + "\n")
    return 0 if progress.complete else 1


def _poisoned(services: Services) -> int | None:
    return None if services.queue is None else services.queue.poison_count()
