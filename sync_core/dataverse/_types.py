"""The typed results ``DataverseClient`` hands out: pages of a change-tracking read, bulk-write verdicts.

Plain frozen dataclasses; no I/O, no JSON reading. Callers import them from ``dataverse.client``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class DeltaPage:
    """One page of a change-tracking read. ``delta_link`` is set on the last page only."""

    rows: list[dict[str, Any]]
    deleted_ids: list[str]
    delta_link: str | None = None


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """The verdict on one input row of a bulk write; ``index`` is its position in the input."""

    index: int
    ok: bool
    id: str | None = None
    status: int | None = None
    code: str | None = None
    message: str | None = None

    @property
    def transient(self) -> bool:
        """Failed for a reason a later attempt may not meet (throttled, outage)."""
        return not self.ok and self.status is not None and (self.status == 429 or self.status >= 500)
