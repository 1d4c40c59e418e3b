"""The person's activity log in Marketo (design B7): one ``microsoftSyncFailed`` entry per failure.

Both the background cycle and the webhook write failures here, the same way: the custom
activity type ``microsoftSyncFailed`` (design §7), primary attribute the Dynamics entity,
attributes ``reason`` and ``direction``. The type's instance-specific id is looked up once per
process (the client caches it) and only when there is something to log. Reasons name fields
and rules, never values, so nothing personal lands in the log beyond what the person already is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sync_core.core.models import Direction, EntityType
from sync_core.marketo.client import ActivityResult, CustomActivity, MarketoClient

log = logging.getLogger(__name__)

ACTIVITY_TYPE = "microsoftSyncFailed"
MAX_REASON = 255  # a string attribute holds 255 characters


@dataclass(frozen=True, slots=True)
class SyncFailure:
    """One failure to show on a person's activity log."""

    lead_id: int
    entity: EntityType
    direction: Direction
    reasons: tuple[str, ...]


def reason_text(reasons: Sequence[str]) -> str:
    text = "; ".join(reasons) or "rejected"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def log_sync_failures(marketo: MarketoClient, failures: Sequence[SyncFailure]) -> list[ActivityResult]:
    """Add one ``microsoftSyncFailed`` activity per failure (300 a call); results in input order."""
    if not failures:
        return []
    type_id = marketo.get_activity_type_id(ACTIVITY_TYPE)
    results = marketo.add_activities(
        [
            CustomActivity(
                lead_id=failure.lead_id,
                activity_type_id=type_id,
                primary_attribute_value=failure.entity.value,
                attributes={"reason": reason_text(failure.reasons), "direction": failure.direction.value},
            )
            for failure in failures
        ]
    )
    refused = sum(1 for result in results if not result.ok)
    if refused:
        log.warning("marketo: %d of %d failure activit(ies) were not added", refused, len(results))
    return results
