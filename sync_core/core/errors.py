"""The one error tree of ``sync_core``; every module raises from it, chained with ``raise … from``.

    SyncError
     ├── ConfigError            settings or field map unusable: fail fast at start-up
     ├── TransientError         network, 5xx, throttling: retried, then the cycle ends, cursors kept
     │    ├── RateLimitedError  the service asked us to wait (``retry_after`` seconds)
     │    └── QuotaExceededError  Marketo daily quota (607): end the cycle cleanly, cursors kept
     ├── ApiError               permanent answer from a service: status, service code, request id
     │    └── DeltaTokenExpiredError  Dataverse change-tracking token too old: re-read the table
     ├── RecordError            one record cannot be written: recorded, skipped, never blocks others
     ├── StateConflictError     Table Storage ETag mismatch: someone else wrote first
     │    └── LeaseHeldError    another cycle holds the lease
     └── CycleFailedError       a cycle ended with outcome ``error``: the timer's execution fails

Nothing here carries personal data: messages name ids, fields and codes, never emails or names.
"""

from __future__ import annotations


class SyncError(Exception):
    """Base of every error ``sync_core`` raises on purpose."""


class ConfigError(SyncError):
    """Configuration is missing or malformed; ``problems`` lists each one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration: " + "; ".join(self.problems))


class TransientError(SyncError):
    """Worth retrying later: timeouts, dropped connections, 5xx, throttling."""

    def __init__(self, message: str, *, service: str = "", request_id: str | None = None) -> None:
        super().__init__(message)
        self.service = service
        self.request_id = request_id


class RateLimitedError(TransientError):
    def __init__(
        self, message: str, *, service: str = "", retry_after: float | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message, service=service, request_id=request_id)
        self.retry_after = retry_after


class QuotaExceededError(TransientError):
    """A daily quota is spent; nothing more can be done until it resets."""


class ApiError(SyncError):
    """A permanent answer from a service (a retry would get the same answer)."""

    def __init__(
        self,
        message: str,
        *,
        service: str,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.service = service
        self.status = status
        self.code = code
        self.request_id = request_id

    def __str__(self) -> str:
        parts = [super().__str__(), f"service={self.service}"]
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.code:
            parts.append(f"code={self.code}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class DeltaTokenExpiredError(ApiError):
    """The stored change-tracking token is no longer accepted; the table must be fully re-read."""


class RecordError(SyncError):
    """One record cannot be written; ``reasons`` says why, in words an admin can act on."""

    def __init__(self, reasons: list[str], *, code: str | None = None) -> None:
        self.reasons = list(reasons)
        self.code = code
        super().__init__("; ".join(self.reasons))


class StateConflictError(SyncError):
    """An ETag-conditional write lost: the row changed (or appeared) since it was read."""


class LeaseHeldError(StateConflictError):
    """Another cycle holds the lease and it has not expired."""


class CycleFailedError(SyncError):
    """A cycle ended with outcome ``error`` (a person must act); raised by the timer function so the
    execution fails and Azure Monitor can alert. The run report holds the reason."""
