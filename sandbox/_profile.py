"""How fast and how roomy the simulated services are: the latency and capacity model (issue 17).

A ``Profile`` is plain data: per-request and per-record service times for Dataverse, per-call
times for Marketo, the services' limits, and how long a Marketo bulk export takes to process.
Two named profiles exist: ``instant`` (the default: no latency, so tests stay fast) and
``realistic`` (the figures below). ``--profile-file F`` overrides any figure from a JSON file
shaped like ``Profile.to_json()``, e.g. ``{"time_scale": 0.1, "dataverse": {"dop_hint": 8}}``.

Latency is simulated by sleeping in the handler thread (the servers are threaded), inside the
limits: a sleeping Dataverse request holds a concurrency slot and its sleep is counted as
execution time; a sleeping Marketo call is "in flight" for the 10-call limit.

``time_scale`` multiplies every latency and the bulk processing time (not the limits' windows,
budgets or the daily quota, which stay in real seconds). Keep it at 1 when measuring a service
floor; lower it to run the same traffic faster in tests.

Sources of the figures (each field says which one it rests on):
  [DV-LIM]  learn.microsoft.com/power-apps/developer/data-platform/api-limits
            (service protection API limits: 6,000 requests, 1,200,000 ms execution time per
            5-minute sliding window per user, 52 concurrent requests; 429 + Retry-After)
  [DV-PAR]  learn.microsoft.com/power-apps/developer/data-platform/send-parallel-requests
            (use the integer in the ``x-ms-dop-hint`` response header as the degree of parallelism)
  [DV-SMP]  github.com/microsoft/PowerApps-Samples, dataverse/orgsvc/C#-NETCore/BulkOperations
            and xMultipleSamples READMEs, Microsoft's published sample outputs against a standard
            table: SimpleLoop 100 creates in 10 s, 100 updates in 12 s; CreateMultiple 100 in 1 s;
            UpdateMultiple 100 in 3 s; UpsertMultiple 100 in 1 s; ExecuteMultiple 2,000 creates
            in 58 s and 2,000 updates in 76 s; ``RecommendedDegreesOfParallelism:4``
  [MKT-LIM] experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/
            marketo-integration-best-practices (100 calls / 20 s, 10 concurrent, 50,000 a day)
  [MKT-BLK] experienceleague.adobe.com/en/docs/marketo-developer/marketo/rest/bulk-extract/
            bulk-extract (jobs run asynchronously; status is polled; 2 processing, 10 queued)
  [ASSUMED] no published figure: an assumption, to be replaced by a measurement when one exists
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.dataverse._options import DataverseOptions
    from sandbox.marketo._options import MarketoOptions

NAMES = ("instant", "realistic")


@dataclass(frozen=True)
class DataverseProfile:
    """Dataverse service time: ``overhead + Σ records * per-record cost`` for each HTTP request."""

    # Per HTTP request (auth, routing, serialisation, network round trip). Fitted [DV-SMP]: with
    # the $batch per-record costs below it reproduces SimpleLoop (100 creates in 10 s, i.e.
    # 70 + 29 ≈ 100 ms a create) and ExecuteMultiple (2 * 70 ms + 2,000 * 29 ms ≈ 58 s).
    request_overhead_ms: float = 0.0
    # CreateMultiple: 100 records in 1 s [DV-SMP] → ≈ 10 ms a record.
    create_multiple_ms_per_record: float = 0.0
    # UpdateMultiple: 100 records in 3 s [DV-SMP] → ≈ 30 ms a record.
    update_multiple_ms_per_record: float = 0.0
    # UpsertMultiple: 100 records in 1 s [DV-SMP] → ≈ 10 ms a record.
    upsert_multiple_ms_per_record: float = 0.0
    # A create in $batch or on its own (POST): ExecuteMultiple 2,000 creates in 58 s [DV-SMP] → 29 ms.
    create_ms_per_record: float = 0.0
    # An update, upsert or delete in $batch or on its own: ExecuteMultiple 2,000 updates in 76 s
    # [DV-SMP] → 38 ms (deletes costed like updates [ASSUMED]).
    update_ms_per_record: float = 0.0
    # Each row a query, delta or retrieve returns [ASSUMED]: 0.2 ms, so a 5,000-row page ≈ 1.07 s.
    read_ms_per_record: float = 0.0
    # QualifyLead (a lead update plus a contact create) [ASSUMED: create + update cost].
    qualify_ms: float = 0.0
    # ``x-ms-dop-hint`` on every answer [DV-PAR]; 4 is what Microsoft's sample printed [DV-SMP].
    dop_hint: int = 4
    # Service protection per user, 5-minute sliding window [DV-LIM].
    max_requests: int = 6000
    window_seconds: float = 300.0
    max_execution_ms: float = 1_200_000.0
    max_concurrent: int = 52
    time_scale: float = 1.0

    def scaled(self, ms: float) -> float:
        return ms * self.time_scale


# Marketo endpoints by the key ``"<METHOD> <route template>"`` the simulator's stats use.
_MARKETO_CALL_MS: dict[str, float] = {
    "GET /identity/oauth/token": 100.0,
    "POST /identity/oauth/token": 100.0,
    "GET /rest/v1/leads.json": 500.0,  # query by filterType, ≤300 values
    "POST /rest/v1/leads.json": 400.0,  # sync leads (plus the per-record cost below)
    "DELETE /rest/v1/leads.json": 400.0,
    "POST /rest/v1/leads/delete.json": 400.0,
    "GET /rest/v1/activities/pagingtoken.json": 200.0,
    "GET /rest/v1/activities/leadchanges.json": 600.0,
    "GET /rest/v1/activities.json": 600.0,
    "GET /rest/v1/activities/deletedleads.json": 400.0,
    "GET /rest/v1/leads/describe.json": 300.0,
    "GET /rest/v1/leads/describe2.json": 300.0,
}
_MARKETO_RECORD_MS: dict[str, float] = {
    "POST /rest/v1/leads.json": 5.0,  # 300 records ≈ 1.9 s a call
    "DELETE /rest/v1/leads.json": 2.0,
    "POST /rest/v1/leads/delete.json": 2.0,
    "GET /rest/v1/leads.json": 1.0,  # each lead returned
}


@dataclass(frozen=True)
class MarketoProfile:
    """Marketo service time: ``call_ms[endpoint] + records * record_ms[endpoint]`` per call.

    Adobe publishes no response times [ASSUMED: every latency figure here]; the server
    time-outs the docs give (30 s for most calls, 90 s for sync) only bound them.
    """

    call_ms: dict[str, float] = field(default_factory=dict)  # by "<METHOD> <route template>"
    record_ms: dict[str, float] = field(default_factory=dict)  # per result record, same keys
    default_call_ms: float = 0.0  # endpoints not listed in call_ms
    # Bulk export: seconds from enqueue to Completed. Adobe says jobs run asynchronously and are
    # polled [MKT-BLK]; it gives no duration [ASSUMED: 5 minutes]. Read by the bulk simulator.
    bulk_export_processing_seconds: float = 0.0
    # Limits [MKT-LIM].
    rate_limit_calls: int = 100
    rate_limit_window: float = 20.0
    max_concurrent: int = 10
    daily_quota: int = 50_000
    time_scale: float = 1.0

    def call_seconds(self, endpoint: str, records: int = 0) -> float:
        """Simulated time of one served call, scaled, in seconds."""
        ms = self.call_ms.get(endpoint, self.default_call_ms) + records * self.record_ms.get(endpoint, 0.0)
        return ms * self.time_scale / 1000.0

    @property
    def bulk_export_seconds(self) -> float:
        return self.bulk_export_processing_seconds * self.time_scale


@dataclass(frozen=True)
class Profile:
    name: str = "instant"
    time_scale: float = 1.0
    dataverse: DataverseProfile = field(default_factory=DataverseProfile)
    marketo: MarketoProfile = field(default_factory=MarketoProfile)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for service in ("dataverse", "marketo"):
            del out[service]["time_scale"]  # one scale for both, at the top
        return out


REALISTIC = Profile(
    name="realistic",
    dataverse=DataverseProfile(
        request_overhead_ms=70.0,
        create_multiple_ms_per_record=10.0,
        update_multiple_ms_per_record=30.0,
        upsert_multiple_ms_per_record=10.0,
        create_ms_per_record=29.0,
        update_ms_per_record=38.0,
        read_ms_per_record=0.2,
        qualify_ms=67.0,
    ),
    marketo=MarketoProfile(
        call_ms=dict(_MARKETO_CALL_MS),
        record_ms=dict(_MARKETO_RECORD_MS),
        default_call_ms=300.0,
        bulk_export_processing_seconds=300.0,
    ),
)
PROFILES = {"instant": Profile(), "realistic": REALISTIC}


def named(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}: expected one of {', '.join(NAMES)}") from None


def with_overrides(base: Profile, overrides: dict[str, Any]) -> Profile:
    """``base`` with the figures in ``overrides`` (a partial ``to_json()``); unknown keys are errors."""
    data = base.to_json()
    _merge(data, overrides, "")
    scale = float(data.pop("time_scale"))
    if scale < 0:
        raise ValueError("time_scale must not be negative")
    return Profile(
        name=str(data["name"]),
        time_scale=scale,
        dataverse=DataverseProfile(**data["dataverse"], time_scale=scale),
        marketo=MarketoProfile(**data["marketo"], time_scale=scale),
    )


def load(name: str = "instant", file: str | Path | None = None) -> Profile:
    """The named profile, with the overrides of a JSON ``file`` when given."""
    base = named(name)
    if file is None:
        return with_overrides(base, {})  # spreads the top-level time_scale to both services
    overrides = json.loads(Path(file).read_text(encoding="utf-8"))
    if not isinstance(overrides, dict):
        raise ValueError(f"{file}: expected a JSON object of profile figures")
    return with_overrides(base, overrides)


def _merge(into: dict[str, Any], overrides: dict[str, Any], where: str) -> None:
    for key, value in overrides.items():
        if key not in into and not where.rstrip(".").endswith(("call_ms", "record_ms")):
            raise ValueError(f"unknown profile figure {where + key!r}")
        current = into.get(key)
        if isinstance(current, dict):
            if not isinstance(value, dict):
                raise ValueError(f"profile figure {where + key!r} must be a JSON object")
            _merge(current, value, f"{where}{key}.")
        elif isinstance(current, bool) or not isinstance(value, (int, float)) or isinstance(value, bool):
            if key == "name" and isinstance(value, str):
                into[key] = value
            else:
                raise ValueError(f"profile figure {where + key!r} must be a number")
        else:
            into[key] = value


def apply(profile: Profile, *, marketo: MarketoOptions, dataverse: DataverseOptions) -> None:
    """Put ``profile`` on both simulators' options, with its limits.

    A limit the options already set away from their default (a ``--dataverse-max-*`` or
    ``--marketo-*`` flag) wins over the profile's figure. The bulk processing time goes to the
    Marketo bulk simulator's ``bulk_processing_seconds`` option when it has one and the profile
    gives a time.
    """
    dataverse.profile = profile.dataverse
    marketo.profile = profile.marketo
    _limits(dataverse, profile.dataverse, ("max_requests", "window_seconds", "max_execution_ms", "max_concurrent"))
    _limits(marketo, profile.marketo, ("rate_limit_calls", "rate_limit_window", "max_concurrent", "daily_quota"))
    if profile.marketo.bulk_export_processing_seconds > 0 and hasattr(marketo, "bulk_processing_seconds"):
        marketo.bulk_processing_seconds = profile.marketo.bulk_export_seconds


def _limits(options: Any, figures: Any, names: tuple[str, ...]) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(options)}
    for name in names:
        if getattr(options, name) == defaults[name]:
            setattr(options, name, getattr(figures, name))
