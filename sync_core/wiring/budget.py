"""The API call budgets the settings ask for: shared by every instance through the Table state
store (``SYNC_SHARED_BUDGET=true``), or None, leaving each client its own per-process budget.

The shared budgets use their own ``AzureRows`` on the store's service client, so their Table
operations are counted apart from the cycle's (run reports keep their figures).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sync_core.dataverse.client import RATE_LIMIT as DATAVERSE_LIMIT
from sync_core.marketo.client import RATE_LIMIT as MARKETO_LIMIT
from sync_core.settings import Settings
from sync_core.state import StateStore, TableStateStore
from sync_core.state.budget import SharedRateBudget


@dataclass(frozen=True)
class SharedBudgets:
    marketo: SharedRateBudget
    dataverse: SharedRateBudget

    def close(self) -> None:
        """Give this process's leased starts and places back (they would expire by themselves)."""
        self.marketo.close()
        self.dataverse.close()


def build_shared_budgets(
    settings: Settings, store: StateStore, *, sleep: Callable[[float], None] | None = None
) -> SharedBudgets | None:
    """Both services' shared budgets on ``store``'s Table service, or None (not asked for, or the
    store is not on Table Storage, e.g. a test's memory store)."""
    if not settings.shared_budget or not isinstance(store, TableStateStore):
        return None
    rows = store.separate_rows()
    return SharedBudgets(
        marketo=SharedRateBudget(
            rows,
            store.tables.state,
            "marketo",
            MARKETO_LIMIT.share(settings.marketo_rate_share),
            background_share=settings.background_share,
            sleep=sleep or time.sleep,
        ),
        dataverse=SharedRateBudget(
            rows,
            store.tables.state,
            "dataverse",
            DATAVERSE_LIMIT,
            background_share=settings.background_share,
            sleep=sleep or time.sleep,
        ),
    )
