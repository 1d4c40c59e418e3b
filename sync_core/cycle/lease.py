"""The cycle lease while a cycle runs (design §3 step 1): a heartbeat that keeps it, and the error
that stops a cycle which lost it. Taking and giving the lease back is the engine's; the lease row
itself is the state store's (ETag-conditional)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sync_core.core.errors import StateConflictError, SyncError
from sync_core.core.models import Lease
from sync_core.state import StateStore

log = logging.getLogger(__name__)


class LeaseLost(SyncError):
    """Our lease expired and another cycle took it: stop without committing anything more."""


class Heartbeat:
    """Renews the cycle lease on its own thread every third of its duration while the cycle runs,
    whatever the cycle is waiting for (a slow page, a throttled write). A live cycle keeps its
    lease; a dead one (``kill -9``) stops renewing and the lease expires within its duration, so
    the next tick runs. A renewal that loses the lease marks it lost; the cycle stops at its next
    step. A renewal that fails for another reason is tried again at the next beat."""

    def __init__(
        self, store: StateStore, lease: Lease, *, duration: timedelta, clock: Callable[[], datetime], run_id: str
    ) -> None:
        self._store = store
        self._duration = duration
        self._clock = clock
        self._run_id = run_id
        self._lock = threading.Lock()
        self._lease = lease
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{run_id}", daemon=True)

    @property
    def lease(self) -> Lease:
        with self._lock:
            return self._lease

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self._duration.total_seconds() / 3):
            try:
                renewed = self._store.renew_lease(self.lease, now=self._clock(), duration=self._duration)
            except StateConflictError:
                log.error("cycle %s: the lease was lost (it expired and another cycle took it)", self._run_id)
                self.lost = True
                return
            except (SyncError, OSError) as err:
                log.warning(
                    "cycle %s: the lease could not be renewed (%s); trying again", self._run_id, type(err).__name__
                )
                continue
            with self._lock:
                self._lease = renewed
