"""``python -m sync_core <command> [options]``: the command-line entry points (design §7).

Each command is a ``*_main(argv) -> int`` in the module that owns it, which parses its own
options (so tests call it directly); this module picks the command and guards it: a
configuration error, found before the command starts (``wiring.preflight``) or raised while it
runs, is one JSON line ``{"error", "setting", "hint"}`` on stderr and exit 2, never a traceback.
The local host (a dev tool, not shipped) is imported only when its command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from sync_core.core.errors import ConfigError
from sync_core.telemetry import configure_telemetry
from sync_core.wiring.preflight import check_config, check_reachable, config_error_line


def _run_once(argv: list[str]) -> int:
    from sync_core.cycle.cli import run_once_main

    return run_once_main(argv)


def _host(argv: list[str]) -> int:
    from sync_core.host.server import host_main

    return host_main(argv)


def _forget(argv: list[str]) -> int:
    from sync_core.privacy.forget import forget_main

    return forget_main(argv)


def _initial_sync(argv: list[str]) -> int:
    from sync_core.golive.cli import initial_sync_main

    return initial_sync_main(argv)


def _check(argv: list[str]) -> int:
    from sync_core.check.run import check_main

    return check_main(argv)


def _failures(argv: list[str]) -> int:
    from sync_core.cycle.operate_cli import failures_main

    return failures_main(argv)


def _resync(argv: list[str]) -> int:
    from sync_core.cycle.operate_cli import resync_main

    return resync_main(argv)


def _reset_cursor(argv: list[str]) -> int:
    from sync_core.cycle.operate_cli import reset_cursor_main

    return reset_cursor_main(argv)


def _export(argv: list[str]) -> int:
    from sync_core.cycle.operate_cli import export_main

    return export_main(argv)


def _migrate_state(argv: list[str]) -> int:
    from sync_core.cycle.operate_cli import migrate_state_main

    return migrate_state_main(argv)


def _backfill(argv: list[str]) -> int:
    from sync_core.backfill.cli import backfill_main

    return backfill_main(argv)


def _status(argv: list[str]) -> int:
    from sync_core.status.view import status_main

    return status_main(argv)


# name -> (run, services probed before it starts (tables, marketo, dataverse), help); ``check``
# probes nothing first: checking the settings and the services is what it does, line by line.
_COMMANDS: dict[str, tuple[Callable[[list[str]], int], tuple[bool, bool, bool] | None, str]] = {
    "check": (
        _check,
        None,
        "validate the setup (credentials, custom fields and activity type, permissions, change tracking, "
        "field map against both sides, state store); exit 0 when all pass, 1 when any fails",
    ),
    "run-once": (
        _run_once,
        (True, True, True),
        "one sync cycle with the settings in the environment; prints its JSON run report",
    ),
    "host": (
        _host,
        (True, True, True),
        "a local stand-in for the Functions host: serves /api/... and runs the sync timer",
    ),
    "initial-sync": (
        _initial_sync,
        (True, True, True),
        "go-live: --plan reads both full databases and reports what will be linked, created, overwritten "
        "and what it costs (writes nothing); --apply does it in checkpointed chunks, resumable",
    ),
    "status": (
        _status,
        (True, False, False),
        "the state an admin needs: last cycles, backlog, failures, collisions, drift",
    ),
    "backfill": (
        _backfill,
        (True, True, True),
        "fill a mapped field for the linked records from the winning side (--field NAME [--since DATE]), "
        "in chunks on the job queue; --resume, --inline",
    ),
    "forget": (
        _forget,
        (True, True, False),
        "erase one person's data from the sync's own state (--email, --marketo-id, --dynamics-id)",
    ),
    "failures": (
        _failures,
        (True, False, False),
        "act on record failures: `retry KEY...|--all` now, `dismiss KEY --reason TEXT` (audited)",
    ),
    "resync": (
        _resync,
        (True, True, True),
        "re-read one linked person on both sides and re-apply the rules without the baseline",
    ),
    "reset-cursor": (
        _reset_cursor,
        (True, False, False),
        "reset a change-feed cursor (marketo, lead, contact) --yes [--since TIME] (audited)",
    ),
    "export": (
        _export,
        (True, False, False),
        "the open failures or the collisions as CSV (ids, fields, reasons; no person values)",
    ),
    "migrate-state": (
        _migrate_state,
        (True, False, False),
        "move the links to the spread Table layout, --pages N at a time under the cycle lease (run until done)",
    ),
}


def guarded(
    run: Callable[[list[str]], int],
    argv: list[str],
    *,
    probe: tuple[bool, bool, bool] | None = (True, True, True),
    environ: Mapping[str, str] | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``run(argv)`` after the configuration checks (none when ``probe`` is None: the command makes
    its own); a ``ConfigError`` → one JSON line, exit 2."""
    err = stderr or sys.stderr
    try:
        configure_telemetry(os.environ if environ is None else environ)
        if probe is not None and not {"-h", "--help"} & set(argv):
            tables, marketo, dataverse = probe
            settings = check_config(os.environ if environ is None else environ)
            check_reachable(settings, tables=tables, marketo=marketo, dataverse=dataverse)
        return run(argv)
    except ConfigError as error:
        print(config_error_line(error), file=err, flush=True)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sync_core",
        description="commands:\n" + "\n".join(f"  {name:<12} {text}" for name, (_, _, text) in _COMMANDS.items()),
        epilog="`python -m sync_core <command> --help` lists a command's options. A configuration error is one "
        'JSON line {"error", "setting", "hint"} on stderr and exit code 2.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(_COMMANDS), metavar="command")
    parser.add_argument("options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    run, probe, _ = _COMMANDS[args.command]
    return guarded(run, list(args.options), probe=probe)


if __name__ == "__main__":
    sys.exit(main())
