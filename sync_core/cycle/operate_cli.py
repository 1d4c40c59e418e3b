"""The operators' commands over ``cycle.operate``: ``failures retry|dismiss``, ``resync``,
``reset-cursor``, ``export`` and ``migrate-state``. Each prints the action's result as one JSON document on stdout
(``export``: the CSV, to stdout or ``--out``, and the result on stderr) and exits 0 when the action
was done or had nothing to do, 1 when it was refused or failed, 3 when a running cycle held the
lease (nothing changed: run it again shortly), 2 for a configuration error or bad options."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

from sync_core.core.errors import ConfigError, SyncError
from sync_core.core.models import EntityType
from sync_core.cycle.operate import EXPORT_KINDS, FEEDS, MIGRATE_PAGES, ActionResult, Operator, Outcome
from sync_core.settings import Settings
from sync_core.wiring.preflight import config_error_line
from sync_core.wiring.services import services_for

EXIT = {Outcome.DONE: 0, Outcome.NOTHING: 0, Outcome.REFUSED: 1, Outcome.FAILED: 1, Outcome.BUSY: 3}
_EPILOG = (
    "Exit code 0 when done or when there was nothing to do, 1 when refused or failed, 3 when a running "
    "cycle held the lease (nothing changed), 2 for a configuration error. Every action is audited "
    "(who, when, what, why) and shown on the status page."
)


def _by() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment (e.g. a container)
        return "unknown"


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m sync_core {prog}", description=description, epilog=_EPILOG)
    parser.add_argument("--by", default=None, help="who acts, for the audit trail (default: the user name)")
    return parser


def _run(
    args: argparse.Namespace,
    act: Callable[[Operator], ActionResult],
    *,
    environ: Mapping[str, str] | None,
    stdout: TextIO | None,
    stderr: TextIO | None,
    csv_out: str | None = None,
) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        services = services_for(Settings.from_env(os.environ if environ is None else environ))
    except ConfigError as error:
        print(config_error_line(error), file=err)
        return 2
    operator = Operator.from_services(services, by=args.by or _by(), via="cli")
    try:
        result = act(operator)
    except ConfigError:
        raise  # the command guard prints it (one JSON line, exit 2)
    except ValueError as error:  # an option the action refuses (e.g. not a failure key): nothing done
        print(json.dumps({"error": str(error)}), file=err)
        return 2
    except (SyncError, OSError) as error:
        print(json.dumps({"error": f"the action failed: {type(error).__name__}: {error}"[:500]}), file=err)
        return 1
    summary = json.dumps(result.as_json(), indent=2) + "\n"
    if result.csv is not None:
        if csv_out is None or csv_out == "-":
            out.write(result.csv)
        else:
            Path(csv_out).write_text(result.csv, encoding="utf-8", newline="")
        err.write(summary)
    else:
        out.write(summary)
    return EXIT[result.outcome]


def failures_main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``python -m sync_core failures retry (KEY ... | --all)`` / ``failures dismiss KEY --reason TEXT``."""
    parser = _parser("failures", "Act on open record failures (their keys: `status --format text` or the page).")
    verbs = parser.add_subparsers(dest="verb", required=True)
    retry = verbs.add_parser("retry", help="retry failures now, as a cycle retries a due one", epilog=_EPILOG)
    retry.add_argument("keys", nargs="*", metavar="KEY", help="failure keys, e.g. to_dynamics:m1001")
    retry.add_argument("--all", action="store_true", help="every open failure (up to 1,000)")
    retry.add_argument("--by", default=argparse.SUPPRESS, help="who acts (default: the user name)")
    dismiss = verbs.add_parser("dismiss", help="close a failure without retrying it", epilog=_EPILOG)
    dismiss.add_argument("key", metavar="KEY")
    dismiss.add_argument("--reason", required=True, help="why (audited)")
    dismiss.add_argument("--by", default=argparse.SUPPRESS, help="who acts (default: the user name)")
    args = parser.parse_args(argv)
    if args.verb == "retry":
        if bool(args.keys) == bool(args.all):
            parser.error("failures retry: give failure keys or --all")
        keys = None if args.all else list(args.keys)
        return _run(args, lambda op: op.retry(keys), environ=environ, stdout=stdout, stderr=stderr)
    if not args.reason.strip():
        parser.error("failures dismiss: --reason must not be empty")
    return _run(args, lambda op: op.dismiss(args.key, args.reason), environ=environ, stdout=stdout, stderr=stderr)


def resync_main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``python -m sync_core resync --marketo-id N | --dynamics-id GUID [--entity lead|contact]``."""
    parser = _parser(
        "resync",
        "Re-read one linked person on both sides and re-apply the rules without the baseline (as on the first "
        "link: an empty side takes the other's value; different values are a collision settled by the rules).",
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--marketo-id", type=int, help="the Marketo person id")
    who.add_argument("--dynamics-id", help="the Dataverse lead or contact id (GUID)")
    parser.add_argument("--entity", choices=[entity.value for entity in EntityType], help="the --dynamics-id's table")
    args = parser.parse_args(argv)
    if args.entity and args.dynamics_id is None:
        parser.error("--entity goes with --dynamics-id")
    entity = EntityType(args.entity) if args.entity else None
    return _run(
        args,
        lambda op: op.resync(marketo_id=args.marketo_id, dataverse_id=args.dynamics_id, entity=entity),
        environ=environ,
        stdout=stdout,
        stderr=stderr,
    )


def reset_cursor_main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``python -m sync_core reset-cursor (marketo|lead|contact) --yes [--since ISO-TIME]``."""
    parser = _parser(
        "reset-cursor",
        "Reset a change-feed cursor. lead/contact: the next cycle re-reads that table in full (merged by the "
        "baselines: nothing is written twice). marketo: the next cycle reads Marketo's changes from --since, "
        "or without it from the cycle's own start (the changes waiting are skipped).",
    )
    parser.add_argument("feed", choices=FEEDS)
    parser.add_argument("--since", type=datetime.fromisoformat, help="marketo only: an ISO time with a zone")
    parser.add_argument("--yes", action="store_true", help="confirm the reset (required)")
    args = parser.parse_args(argv)
    if not args.yes:
        parser.error(f"reset-cursor {args.feed}: this changes what the next cycle reads; add --yes to confirm")
    if args.since is not None and args.since.tzinfo is None:
        parser.error("--since needs a time zone, e.g. 2026-12-01T00:00:00+00:00")
    if args.since is not None and args.feed != "marketo":
        parser.error("--since goes with marketo only (a Dataverse table is re-read in full)")
    return _run(
        args, lambda op: op.reset_cursor(args.feed, since=args.since), environ=environ, stdout=stdout, stderr=stderr
    )


def migrate_state_main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``python -m sync_core migrate-state [--pages N]``."""
    parser = _parser(
        "migrate-state",
        "Move the links and baselines from the one-partition layout (before issue 17) to the spread one, up to "
        "--pages pages of 1,000 rows under the cycle lease; cycles in between read either layout. Run it again "
        'until its details say "done": true. Idempotent and resumable; nothing is lost if it stops part way.',
    )
    parser.add_argument(
        "--pages", type=int, default=MIGRATE_PAGES, help=f"at most this many pages (default {MIGRATE_PAGES})"
    )
    args = parser.parse_args(argv)
    if args.pages < 1:
        parser.error("--pages must be at least 1")
    return _run(args, lambda op: op.migrate_state(pages=args.pages), environ=environ, stdout=stdout, stderr=stderr)


def export_main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``python -m sync_core export (failures|collisions) [--out FILE]``: CSV, no person values."""
    parser = _parser(
        "export",
        "The open failures or the recorded collisions as CSV (ids, fields, reasons, rules, times; no person values), "
        "newest first, at most 50,000 rows.",
    )
    parser.add_argument("kind", choices=EXPORT_KINDS)
    parser.add_argument("--out", help="write the CSV to this file (default: stdout; the summary goes to stderr)")
    args = parser.parse_args(argv)
    return _run(args, lambda op: op.export(args.kind), environ=environ, stdout=stdout, stderr=stderr, csv_out=args.out)
