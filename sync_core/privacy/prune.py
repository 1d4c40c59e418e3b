"""The cycle's retention prune: bounded work, never a reason for a cycle to fail.

Called once per cycle after its cursors are stored, under the cycle lease, so at most one prune
runs at a time. The store removes at most a page of expired rows per table (``prune_expired``);
a backlog (a deployment that ran without pruning, or a shortened retention) drains over the
next cycles at a fixed cost each. A prune that removed rows is stored as the "last prune" the
status view shows. A failure is logged (its type only) and left for the next cycle.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sync_core.core.errors import SyncError
from sync_core.core.retention import PruneReport
from sync_core.state import StateStore

log = logging.getLogger(__name__)


def prune_state(store: StateStore, *, now: datetime) -> PruneReport | None:
    """Remove what is past its retention as of ``now`` (a few transactions at most); the report,
    or None when the store could not be pruned this time."""
    try:
        report = store.prune_expired(now=now)
        if report.total:
            store.put_last_prune(report)
    except (SyncError, OSError) as err:
        log.warning("prune: skipped this cycle (%s); the next cycle tries again", type(err).__name__)
        return None
    if report.total:
        log.info(
            "prune: removed %d run report(s), %d action(s), %d collision(s), %d claim(s)%s",
            report.removed.get("runs", 0),
            report.removed.get("actions", 0),
            report.removed.get("collisions", 0),
            report.removed.get("claims", 0),
            "; more next cycle" if report.more else "",
        )
    return report
