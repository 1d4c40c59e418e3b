"""Independent requests side by side, as the services allow (design §3, style 11: concurrency as data).

``in_parallel`` runs one call per item on at most ``workers`` threads and returns the results in
input order. Every call runs to its end even when another fails; then the first failure (in input
order) is raised, so a caller sees the same error it would have seen one call at a time, and no
request is abandoned half-way. How many may be in flight is the caller's number (Dataverse's
``x-ms-dop-hint`` capped by a setting; Marketo's rate budget, which also holds each call to its
in-flight share); this module only schedules.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def in_parallel(call: Callable[[T], R], items: Sequence[T], *, workers: int, name: str = "parallel") -> list[R]:
    """``[call(item) for item in items]`` with up to ``workers`` calls at once (one at a time in this
    thread when ``workers`` is 1 or there is a single item)."""
    if workers <= 1 or len(items) <= 1:
        return [call(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix=name) as pool:
        # Each call runs in a copy of the caller's context, so what the caller set there (background
        # work, for the rate budget's priority) holds for the calls it fans out.
        futures = [pool.submit(contextvars.copy_context().run, call, item) for item in items]
        errors = [future.exception() for future in futures]  # waits for every call
    for error in errors:
        if error is not None:
            raise error
    return [future.result() for future in futures]
