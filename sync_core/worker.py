"""The queue trigger's one call: a chunk message of any job kind, with every kind registered.

``process_job_message(environ, body)`` builds (once) the process's wiring from the settings and
hands the message to ``jobs.process_message``. Importing this module imports every job kind, so
the registry is complete wherever a message is processed (the Functions host, the local host's
poller, the CLI's inline runs).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from sync_core import (
    backfill,  # noqa: F401  (registers the "backfill" kind)
    jobs,
)
from sync_core.golive import queued  # noqa: F401  (registers the "initial-sync" kind)
from sync_core.wiring.services import services_from_env

OWNER = f"{socket.gethostname()}:{os.getpid()}"


def process_job_message(environ: Mapping[str, str], body: str | bytes) -> str:
    """``jobs.process_message`` with this process's wiring; its outcome."""
    return jobs.process_message(services_from_env(environ), body, owner=OWNER)
