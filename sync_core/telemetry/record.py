"""What the sync records: its instruments (names, units, attributes) and the one place a cycle's
run report, or a webhook call's answer, becomes metrics, a span and a structured event.

Recording goes through the OpenTelemetry API: whatever providers the process has (``setup``), or
the API's no-op ones. A cycle is recorded once, after it ended, from its ``RunReport`` (the span
gets the cycle's own start and end times); a webhook call once, from its answer. Attribute values
are counts, outcomes, service names, HTTP status codes and the run id; nothing here may read a
person's values, a record id or an error message (those can quote a value).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from sync_core import __version__
from sync_core.core.models import RunReport
from sync_core.core.report import COMPLETED_OUTCOMES

log = logging.getLogger(__name__)

SCOPE = "sync_core"  # the instrumentation scope of every meter and tracer here
EVENTS_LOGGER = "sync_core.events"  # one structured log record per cycle and per webhook call
CYCLE_EVENT = "sync.cycle"  # span name and event name
WEBHOOK_EVENT = "sync.webhook"

SIDES = ("marketo", "dynamics")
SERVICES = ("marketo", "dataverse")
BACKLOG_PARTS = ("marketo", "retries")  # staged Marketo changes left for later; open failures

AttributeValue = str | int | float | bool


@dataclass(frozen=True)
class Instrument:
    kind: Literal["counter", "histogram", "gauge"]
    unit: str
    description: str
    attributes: tuple[str, ...]


# The stable names (README "Operating: Telemetry"; alerts in infra/app/alerts.bicep query them).
INSTRUMENTS: dict[str, Instrument] = {
    "sync.cycle.runs": Instrument("counter", "{cycle}", "sync cycles, by outcome", ("sync.outcome",)),
    "sync.cycle.duration": Instrument("histogram", "s", "wall time of a sync cycle", ("sync.outcome",)),
    "sync.cycle.changes": Instrument(
        "counter",
        "{change}",
        "changes read from a side (activities, rows, deletions) and records written to it",
        ("sync.side", "sync.direction"),
    ),
    "sync.cycle.failures": Instrument(
        "counter", "{record}", "records a cycle could not write (new or again)", ("sync.failure.kind",)
    ),
    "sync.cycle.collisions": Instrument("counter", "{collision}", "fields changed on both sides", ()),
    "sync.api.calls": Instrument("counter", "{call}", "API calls of the sync cycle, per service", ("sync.service",)),
    "sync.backlog": Instrument(
        "gauge",
        "{record}",
        "left for later after a cycle: staged Marketo changes, open failures",
        ("sync.backlog.part",),
    ),
    "sync.webhook.requests": Instrument(
        "counter", "{request}", "Sync Person to Microsoft calls", ("sync.webhook.outcome", "http.response.status_code")
    ),
    "sync.webhook.duration": Instrument(
        "histogram", "s", "time to answer a webhook call", ("sync.webhook.outcome", "http.response.status_code")
    ),
}


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


def cycle_attributes(report: RunReport) -> dict[str, AttributeValue]:
    """The span's and the event's attributes of one cycle: its id, outcome and counts (unknown ones left out)."""
    counts = report.report
    values: dict[str, int | float | None] = {
        "sync.pulled.marketo": counts.pulled.marketo,
        "sync.pulled.dynamics": counts.pulled.dynamics,
        "sync.written.marketo": counts.written.marketo,
        "sync.written.dynamics": counts.written.dynamics,
        "sync.collisions": counts.collisions,
        "sync.failures": counts.failures,
        "sync.failures.new": counts.new_failures,
        "sync.filtered.marketo": counts.filtered.marketo,  # kept out by each side's sync filter
        "sync.filtered.dynamics": counts.filtered.dynamics,
        "sync.accounts": counts.accounts,  # changed accounts, and the linked contacts they reached
        "sync.account_contacts": counts.account_contacts,
        "sync.one_way_edits": counts.one_way_edits,  # Marketo edits of Dynamics-owned fields (overwritten)
        "sync.api_calls.marketo": counts.api_calls.marketo,
        "sync.api_calls.dataverse": counts.api_calls.dataverse,
        "sync.duration_s": counts.seconds,
    }
    for part in BACKLOG_PARTS:
        values[f"sync.backlog.{part}"] = (counts.backlog or {}).get(part)
    # Cut short by its time budget: where, and the persons carried to the next tick.
    cut: dict[str, AttributeValue] = {}
    if counts.left is not None:
        cut["sync.cycle.cut"] = counts.left.step or "unknown"
        values["sync.left.persons"] = counts.left.persons
    return {
        "sync.run_id": report.run_id,
        "sync.outcome": str(report.outcome),
        "sync.cycle.failed": report.outcome not in COMPLETED_OUTCOMES,
        **cut,
        **{name: value for name, value in values.items() if value is not None},
    }


class Telemetry:
    """The sync's instruments on a tracer and a meter (the process's, unless given: tests pass
    in-memory ones), and the structured events on the ``sync_core.events`` logger."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        events: logging.Logger | None = None,
    ) -> None:
        self._tracer = trace.get_tracer(SCOPE, __version__, tracer_provider)
        meter = metrics.get_meter(SCOPE, __version__, meter_provider)
        self._events = events or logging.getLogger(EVENTS_LOGGER)
        self._counters = {
            name: meter.create_counter(name, unit=spec.unit, description=spec.description)
            for name, spec in INSTRUMENTS.items()
            if spec.kind == "counter"
        }
        self._histograms = {
            name: meter.create_histogram(name, unit=spec.unit, description=spec.description)
            for name, spec in INSTRUMENTS.items()
            if spec.kind == "histogram"
        }
        self._gauges = {
            name: meter.create_gauge(name, unit=spec.unit, description=spec.description)
            for name, spec in INSTRUMENTS.items()
            if spec.kind == "gauge"
        }

    # -- a cycle ------------------------------------------------------------------------------------

    def record_cycle(self, report: RunReport) -> None:
        """A finished cycle: metrics, a span over its run time and one ``sync.cycle`` event. Never raises."""
        try:
            self._record_cycle(report)
        except Exception:  # telemetry never fails a cycle
            log.warning("telemetry: cycle %s not recorded", report.run_id, exc_info=True)

    def _record_cycle(self, report: RunReport) -> None:
        counts = report.report
        outcome = {"sync.outcome": str(report.outcome)}
        self._counters["sync.cycle.runs"].add(1, outcome)
        if counts.seconds is not None:
            self._histograms["sync.cycle.duration"].record(counts.seconds, outcome)
        changes = self._counters["sync.cycle.changes"]
        for side in SIDES:
            for direction, per_side in (("read", counts.pulled), ("written", counts.written)):
                changes.add(getattr(per_side, side) or 0, {"sync.side": side, "sync.direction": direction})
        new = counts.new_failures or 0
        failures = self._counters["sync.cycle.failures"]
        failures.add(new, {"sync.failure.kind": "new"})
        failures.add(max((counts.failures or 0) - new, 0), {"sync.failure.kind": "again"})
        self._counters["sync.cycle.collisions"].add(counts.collisions or 0)
        for service in SERVICES:
            calls = getattr(counts.api_calls, service) or 0
            self._counters["sync.api.calls"].add(calls, {"sync.service": service})
        for part in BACKLOG_PARTS:
            if counts.backlog is not None and part in counts.backlog:
                self._gauges["sync.backlog"].set(counts.backlog[part], {"sync.backlog.part": part})

        attributes = cycle_attributes(report)
        started, finished = report.started_at, report.finished_at or report.started_at
        span = self._tracer.start_span(
            CYCLE_EVENT, kind=SpanKind.INTERNAL, start_time=_ns(started), attributes=attributes
        )
        if attributes["sync.cycle.failed"]:
            span.set_status(Status(StatusCode.ERROR, f"cycle ended {report.outcome}"))
        span.end(end_time=_ns(finished))
        self._event(CYCLE_EVENT, "sync cycle %s: %s", (report.run_id, str(report.outcome)), attributes)

    # -- a webhook call -----------------------------------------------------------------------------

    def record_webhook(
        self, *, webhook: str = "sync-person", status: int, outcome: str, started_ns: int, seconds: float
    ) -> None:
        """One answered webhook call (which webhook, its answer's status and ``status`` word). Never raises."""
        try:
            self._record_webhook(webhook, status, outcome, started_ns, seconds)
        except Exception:  # telemetry never fails a webhook call
            log.warning("telemetry: webhook call not recorded", exc_info=True)

    def _record_webhook(self, webhook: str, status: int, outcome: str, started_ns: int, seconds: float) -> None:
        attributes: dict[str, AttributeValue] = {
            "sync.webhook": webhook,
            "sync.webhook.outcome": outcome,
            "http.response.status_code": status,
        }
        self._counters["sync.webhook.requests"].add(1, attributes)
        self._histograms["sync.webhook.duration"].record(seconds, attributes)
        span = self._tracer.start_span(
            WEBHOOK_EVENT, kind=SpanKind.INTERNAL, start_time=started_ns, attributes=attributes
        )
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, f"answered {status}"))
        span.end(end_time=started_ns + int(seconds * 1_000_000_000))
        self._event(
            WEBHOOK_EVENT,
            "%s answered %d %s in %.3f s",
            (webhook, status, outcome, seconds),
            {**attributes, "sync.duration_s": round(seconds, 3)},
        )

    def _event(
        self, name: str, message: str, args: tuple[object, ...], attributes: Mapping[str, AttributeValue]
    ) -> None:
        self._events.info(message, *args, extra={"sync.event": name, **attributes})


class WebhookTimer:
    """The start of a webhook call, in the two clocks a span and a duration need."""

    def __init__(self) -> None:
        self.started_ns = time.time_ns()
        self._monotonic = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self._monotonic


_DEFAULT: Telemetry | None = None


def default_telemetry() -> Telemetry:
    """The process's telemetry, on the global providers (real ones once ``setup`` configured them:
    the API's proxies forward to them, so this may be made before)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Telemetry()
    return _DEFAULT
