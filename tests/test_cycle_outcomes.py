"""How a cycle that ended on an error reports it (issue 16): ``transient`` retries by itself on the
next tick, ``error`` needs a person, and the reason says which."""

from __future__ import annotations

import pytest

from sync_core.core.errors import ApiError, ConfigError, QuotaExceededError, SyncError, TransientError
from sync_core.core.report import Outcome
from sync_core.cycle.engine import failure_outcome


@pytest.mark.parametrize(
    ("error", "outcome", "reason"),
    [
        (
            TransientError("dataverse unavailable after 3 attempts", service="dataverse"),
            Outcome.TRANSIENT,
            "unavailable",
        ),
        (ApiError("Internal Server Error", service="dataverse", status=500), Outcome.TRANSIENT, "server error"),
        (ApiError("token endpoint failed", service="marketo", status=503), Outcome.TRANSIENT, "server error"),
        (ConnectionResetError("reset by peer"), Outcome.TRANSIENT, "ConnectionResetError"),
        (ApiError("Unauthorized", service="dataverse", status=401), Outcome.ERROR, "credentials"),
        (ApiError("Forbidden", service="dataverse", status=403), Outcome.ERROR, "permission"),
        (ConfigError(["MARKETO_CLIENT_SECRET: refused by Marketo's identity service"]), Outcome.ERROR, "configuration"),
        (ApiError("Bad Request", service="dataverse", status=400, code="0x0"), Outcome.ERROR, "refused a request"),
        (QuotaExceededError("607", service="marketo"), Outcome.TRANSIENT, "607"),
        (SyncError("something else"), Outcome.ERROR, "SyncError"),
    ],
)
def test_a_failed_cycle_says_whether_it_retries_by_itself(error: Exception, outcome: Outcome, reason: str) -> None:
    got, text = failure_outcome(error)  # type: ignore[arg-type]
    assert got is outcome
    assert reason in text
