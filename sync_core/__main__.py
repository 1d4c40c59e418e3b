"""``python -m sync_core <command> [options]``: the command-line entry points (design §7).

Each command is a ``*_main(argv) -> int`` in the module that owns it, which parses its own
options (so tests call it directly); this module only picks the command. Nothing here knows how
a command does its work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from sync_core.cycle.engine import run_once_main
from sync_core.host.server import host_main
from sync_core.privacy.forget import forget_main
from sync_core.status.view import status_main

_COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "run-once": (run_once_main, "one sync cycle with the settings in the environment; prints its JSON run report"),
    "host": (host_main, "a local stand-in for the Functions host: serves /api/... and runs the sync timer"),
    "status": (status_main, "the state an admin needs: last cycles, backlog, failures, collisions, drift"),
    "forget": (forget_main, "erase one person's data from the sync's own state (--email, --marketo-id, --dynamics-id)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sync_core",
        description="commands:\n" + "\n".join(f"  {name:<10} {text}" for name, (_, text) in _COMMANDS.items()),
        epilog="`python -m sync_core <command> --help` lists a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=sorted(_COMMANDS), metavar="command")
    parser.add_argument("options", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    run, _ = _COMMANDS[args.command]
    return run(args.options)


if __name__ == "__main__":
    sys.exit(main())
