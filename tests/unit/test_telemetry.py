"""Telemetry (``sync_core.telemetry``): what a real cycle and real webhook calls export, collected by
the OpenTelemetry SDK's in-memory span exporter, metric reader and log exporter, checked for names
and attributes and for the absence of every person value and record id the world was seeded with.

The cycle and the webhook run over the in-memory fakes (``tests/unit/conftest.py``); the providers
are the test's own (``Telemetry(tracer_provider=…, meter_provider=…, events=…)``), so nothing global
is touched. The process-wide set-up (``configure_telemetry``) runs in subprocesses.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from sync_core.core.models import RunReport
from sync_core.core.report import CycleReport, Outcome, PerSide
from sync_core.core.syncfilter import SyncFilter
from sync_core.cycle.engine import CycleOptions
from sync_core.settings import Settings
from sync_core.telemetry import CYCLE_EVENT, INSTRUMENTS, WEBHOOK_EVENT, Telemetry
from sync_core.webhook.handler import handle_sync_person
from sync_core.wiring.services import Services
from tests.unit.conftest import World, make_world

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "telemetry-test-secret-value"
CYCLE_INSTRUMENTS = {name for name in INSTRUMENTS if not name.startswith("sync.webhook.")}
WEBHOOK_INSTRUMENTS = {"sync.webhook.requests", "sync.webhook.duration"}


@dataclass
class Collected:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    logs: InMemoryLogRecordExporter
    telemetry: Telemetry

    def finished_spans(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """metric name -> [(attributes, point)] of what the reader collects now."""
        data = self.metrics.get_metrics_data()
        found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        found.setdefault(metric.name, []).append((dict(point.attributes or {}), point))
        return found

    def events(self) -> list[dict[str, Any]]:
        return [
            {"body": item.log_record.body, **dict(item.log_record.attributes or {})}
            for item in self.logs.get_finished_logs()
        ]

    def exported_text(self) -> list[str]:
        """Every string exported: span names, status texts, attribute keys and values, metric names
        and attributes, log bodies and attributes."""
        texts: list[str] = []
        for span in self.finished_spans():
            texts += [span.name, span.status.description or ""]
            texts += [f"{key}={value}" for key, value in (span.attributes or {}).items()]
        for name, points in self.points().items():
            texts.append(name)
            texts += [f"{key}={value}" for attributes, _ in points for key, value in attributes.items()]
        for event in self.events():
            texts += [f"{key}={value}" for key, value in event.items()]
        return texts


@pytest.fixture
def collected() -> Iterator[Collected]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    events = logging.getLogger(f"tests.telemetry.{uuid.uuid4().hex}")
    events.setLevel(logging.INFO)
    events.propagate = False
    handler = LoggingHandler(logger_provider=logger_provider)
    events.addHandler(handler)
    telemetry = Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider, events=events)
    yield Collected(spans, reader, logs, telemetry)
    events.removeHandler(handler)
    tracer_provider.shutdown()
    meter_provider.shutdown()
    logger_provider.shutdown()


def _person_values(world: World) -> set[str]:
    """Every value of every person and record on both sides, and every record id."""
    values: set[str] = set()
    for lead_id, person in world.marketo.leads.items():
        values.add(str(lead_id))
        values |= {str(value) for value in person.values() if isinstance(value, str) and len(value) > 3}
    for rows in world.dataverse.rows.values():
        for row_id, row in rows.items():
            values.add(str(row_id))
            values |= {str(value) for value in row.values() if isinstance(value, str) and len(value) > 3}
    return values


def _leaks(collected: Collected, world: World) -> list[tuple[str, str]]:
    exported = collected.exported_text()
    return [(value, text) for value in _person_values(world) for text in exported if value in text]


# -- a cycle ---------------------------------------------------------------------------------------


def _busy_cycles(world: World) -> tuple[RunReport, RunReport]:
    """Two cycles: the first links two leads (creating their persons), the second writes both ways,
    settles a collision and holds back a value Dynamics would refuse (a new failure)."""
    for i in (1, 2, 3):
        world.dynamics_lead(i, jobtitle=f"Title {i}", telephone1=f"+1 555 010{i}")
    first = world.cycle()
    one, two, three = (world.person_of(row) for row in sorted(world.dataverse.rows["leads"]))
    lead_one = next(iter(sorted(world.dataverse.rows["leads"])))
    world.marketo.edit(one, title="From Marketo")
    world.dataverse.update("leads", lead_one, jobtitle="From Dynamics")  # a collision: Marketo wins on a lead
    world.marketo.edit(two, firstName="x" * 51)  # longer than Dynamics allows: a failure
    world.marketo.edit(three, phone="+1 555 0199")
    second = world.cycle()
    return first, second


def test_a_cycle_exports_its_span_metrics_and_event_with_the_report_counts(collected: Collected) -> None:
    world = make_world(telemetry=collected.telemetry)
    first, second = _busy_cycles(world)
    assert (first.outcome, second.outcome) == ("ok", "partial")
    assert (second.report.collisions, second.report.failures, second.report.new_failures) == (1, 1, 1)

    spans = collected.finished_spans()
    assert [span.name for span in spans] == [CYCLE_EVENT, CYCLE_EVENT]
    span = spans[1].attributes or {}
    assert span["sync.run_id"] == second.run_id
    assert (span["sync.outcome"], span["sync.cycle.failed"]) == ("partial", False)
    assert (span["sync.collisions"], span["sync.failures"], span["sync.failures.new"]) == (1, 1, 1)
    assert (span["sync.pulled.marketo"], span["sync.written.dynamics"]) == (
        second.report.pulled.marketo,
        second.report.written.dynamics,
    )
    assert span["sync.api_calls.marketo"] == second.report.api_calls.marketo
    assert span["sync.backlog.retries"] == 1
    assert (spans[1].start_time, spans[1].end_time) == (
        int(second.started_at.timestamp() * 1e9),
        int(second.finished_at.timestamp() * 1e9),  # type: ignore[union-attr]
    )
    assert spans[1].status.status_code is StatusCode.UNSET

    points = collected.points()
    assert set(points) == CYCLE_INSTRUMENTS
    for name, found in points.items():
        assert {key for attributes, _ in found for key in attributes} <= set(INSTRUMENTS[name].attributes), name
    runs = {attributes["sync.outcome"]: point.value for attributes, point in points["sync.cycle.runs"]}
    assert runs == {"ok": 1, "partial": 1}
    changes = {(a["sync.side"], a["sync.direction"]): p.value for a, p in points["sync.cycle.changes"]}
    both = (first.report, second.report)
    assert changes == {
        ("marketo", "read"): sum(r.pulled.marketo or 0 for r in both),
        ("dynamics", "read"): sum(r.pulled.dynamics or 0 for r in both),
        ("marketo", "written"): sum(r.written.marketo or 0 for r in both),
        ("dynamics", "written"): sum(r.written.dynamics or 0 for r in both),
    }
    calls = {a["sync.service"]: p.value for a, p in points["sync.api.calls"]}
    assert calls == {s: sum(getattr(r.api_calls, s) or 0 for r in both) for s in ("marketo", "dataverse")}
    failures = {a["sync.failure.kind"]: p.value for a, p in points["sync.cycle.failures"]}
    assert failures == {"new": 1, "again": 0}
    assert [p.value for _, p in points["sync.cycle.collisions"]] == [1]
    backlog = {a["sync.backlog.part"]: p.value for a, p in points["sync.backlog"]}
    assert backlog == {"marketo": 0, "retries": 1}  # the gauge holds the last cycle's values
    [(_, duration)] = [(a, p) for a, p in points["sync.cycle.duration"] if a["sync.outcome"] == "partial"]
    assert duration.count == 1

    events = collected.events()
    assert [event["sync.event"] for event in events] == [CYCLE_EVENT, CYCLE_EVENT]
    assert events[1]["body"] == f"sync cycle {second.run_id}: partial"
    assert {key: value for key, value in events[1].items() if key not in ("body", "sync.event")} == span

    assert _leaks(collected, world) == []


def test_a_failed_cycle_is_an_error_span_without_its_error_text() -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    started = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    report = RunReport(
        run_id="20261201T080000Z-abc12345",
        started_at=started,
        finished_at=started + timedelta(seconds=3),
        outcome=Outcome.ERROR,
        # a service's refusal can quote a person's value; telemetry must not carry it
        report=CycleReport(error="dataverse refused a request: 'jane.doe@example.com' is not valid", seconds=3.0),
    )
    Telemetry(tracer_provider=provider).record_cycle(report)
    [span] = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["sync.cycle.failed"] is True
    assert (span.attributes or {})["sync.outcome"] == "error"
    exported = [span.status.description or "", *(f"{k}={v}" for k, v in (span.attributes or {}).items())]
    assert not any("jane.doe" in text or "refused" in text for text in exported)


# -- the webhook -----------------------------------------------------------------------------------


def _services(world: World) -> Services:
    settings = Settings.from_env(
        {
            "MARKETO_BASE_URL": "https://123-abc-456.mktorest.test",
            "MARKETO_CLIENT_ID": "unit-client",
            "MARKETO_CLIENT_SECRET": "unit-secret",
            "DATAVERSE_URL": "https://contoso.crm.test",
            "SYNC_TABLES_CONNECTION": "UseDevelopmentStorage=true",
            "WEBHOOK_SHARED_SECRET": SECRET,
        }
    )
    return Services(
        settings=settings,
        field_map=world.field_map,
        counters=world.counters,
        marketo=world.marketo_client,
        dataverse=world.dataverse_client,
        store=world.store,
    )


def test_webhook_calls_export_their_outcome_status_and_latency(collected: Collected) -> None:
    world = make_world(telemetry=collected.telemetry)
    _, person = world.linked_lead(1)
    cycle_spans = len(collected.finished_spans())
    services = _services(world)

    def call(body: dict[str, Any], secret: str, *, configured: bool = True) -> int:
        answer = handle_sync_person(
            {},  # with no services given, the settings come from here: none, a configuration error
            body=json.dumps(body).encode(),
            headers={"X-Sync-Secret": secret, "Content-Type": "application/json"},
            services=services if configured else None,
            telemetry=collected.telemetry,
        )
        return answer.status

    assert call({"leadId": person}, SECRET) == 200  # linked already: exists
    assert call({"leadId": 987654321}, SECRET) == 404  # no such person
    assert call({"leadId": person}, "wrong") == 401
    assert call({"leadId": person}, SECRET, configured=False) == 500
    spans = collected.finished_spans()[cycle_spans:]
    assert [span.name for span in spans] == [WEBHOOK_EVENT] * 4
    assert [dict(span.attributes or {}) for span in spans] == [
        {"sync.webhook": "sync-person", "sync.webhook.outcome": "exists", "http.response.status_code": 200},
        {"sync.webhook": "sync-person", "sync.webhook.outcome": "refused", "http.response.status_code": 404},
        {"sync.webhook": "sync-person", "sync.webhook.outcome": "refused", "http.response.status_code": 401},
        {"sync.webhook": "sync-person", "sync.webhook.outcome": "error", "http.response.status_code": 500},
    ]
    assert [span.status.status_code for span in spans] == [StatusCode.UNSET] * 3 + [StatusCode.ERROR]
    assert all(span.end_time is not None and span.start_time is not None for span in spans)
    points = collected.points()
    assert set(points) >= WEBHOOK_INSTRUMENTS
    requests = {
        (a["sync.webhook.outcome"], a["http.response.status_code"]): p.value for a, p in points["sync.webhook.requests"]
    }
    assert requests == {("exists", 200): 1, ("refused", 404): 1, ("refused", 401): 1, ("error", 500): 1}
    assert sum(p.count for _, p in points["sync.webhook.duration"]) == 4
    events = [event for event in collected.events() if event["sync.event"] == WEBHOOK_EVENT]
    assert [(event["sync.webhook.outcome"], event["http.response.status_code"]) for event in events] == [
        ("exists", 200),
        ("refused", 404),
        ("refused", 401),
        ("error", 500),
    ]
    assert _leaks(collected, world) == []
    assert not any(SECRET in text or "wrong" in text for text in collected.exported_text())


# -- the process's set-up ------------------------------------------------------------------------------

_RECORD_ONE_CYCLE = """
import os, sys
from datetime import UTC, datetime
from sync_core.core.models import RunReport
from sync_core.core.report import CycleReport
from sync_core.telemetry import configure_telemetry, default_telemetry, flush_telemetry
print(configure_telemetry(os.environ), flush=True)
report = RunReport(run_id="run-1", started_at=datetime.now(UTC), report=CycleReport(seconds=1.5, failures=2))
default_telemetry().record_cycle(report)
flush_telemetry()
"""


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS_", "SYNC_TELEMETRY"))}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def test_without_settings_telemetry_goes_nowhere() -> None:
    done = _python(_RECORD_ONE_CYCLE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["none"]
    assert "sync.cycle" not in done.stderr


def test_console_telemetry_prints_spans_metrics_and_events_on_stderr_only() -> None:
    done = _python(_RECORD_ONE_CYCLE, SYNC_TELEMETRY_CONSOLE="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["console"]  # stdout stays the command's own
    for name in ('"name": "sync.cycle"', '"name": "sync.cycle.runs"', '"sync.event": "sync.cycle"'):
        assert name in done.stderr, name


def test_a_malformed_console_setting_is_a_configuration_error() -> None:
    done = _python(_RECORD_ONE_CYCLE, SYNC_TELEMETRY_CONSOLE="maybe")
    assert done.returncode != 0
    assert "SYNC_TELEMETRY_CONSOLE" in done.stderr


def test_azure_monitor_exports_only_the_sync_s_own_telemetry() -> None:
    code = """
import logging, os
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from sync_core.telemetry import EVENTS_LOGGER, configure_telemetry
print(configure_telemetry(os.environ))
print(isinstance(trace.get_tracer_provider(), TracerProvider), isinstance(metrics.get_meter_provider(), MeterProvider))
from azure.core.settings import settings
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
instrumentors = (HTTPXClientInstrumentor(), RequestsInstrumentor(), URLLib3Instrumentor())
print([i.is_instrumented_by_opentelemetry for i in instrumentors], settings.tracing_implementation())
events, root = logging.getLogger(EVENTS_LOGGER), logging.getLogger()
print(events.propagate, [type(h).__name__ for h in events.handlers], [type(h).__name__ for h in root.handlers])
os._exit(0)  # no export at exit: the ingestion endpoint below does not exist
"""
    done = _python(
        code,
        APPLICATIONINSIGHTS_CONNECTION_STRING=(
            "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9/"
        ),
        APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL="true",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "azure_monitor",
        "True True",
        "[False, False, False] None",  # no auto-instrumentation: URLs carry filter values
        "False ['LoggingHandler'] []",  # only the events logger is exported, and it does not propagate
    ]


def test_a_cycle_reports_the_records_each_sides_sync_filter_kept_out(collected: Collected) -> None:
    world = make_world(
        options=CycleOptions(sync_filter=SyncFilter.of(dynamics_field="new_synctomkto")), telemetry=collected.telemetry
    )
    world.dynamics_lead(1, new_synctomkto=False)
    world.dynamics_lead(2)
    assert world.cycle().report.filtered == PerSide(marketo=0, dynamics=1)
    [span] = collected.finished_spans()
    attributes = span.attributes or {}
    assert (attributes["sync.filtered.dynamics"], attributes["sync.filtered.marketo"]) == (1, 0)


def test_a_cycle_reports_an_account_fan_out_and_marketo_edits_of_dynamics_owned_fields(collected: Collected) -> None:
    world = make_world(telemetry=collected.telemetry)
    account = world.dataverse.create("accounts", name="Contoso", accountnumber="AC-1")
    _, person = world.linked_contact(1, _parentcustomerid_value=account)
    world.marketo.edit(person, company="Edited In Marketo")
    world.dataverse.update("accounts", account, accountnumber="AC-2")
    report = world.cycle().report
    assert (report.accounts, report.account_contacts, report.one_way_edits) == (1, 1, 1)
    attributes = collected.finished_spans()[-1].attributes or {}
    assert (attributes["sync.accounts"], attributes["sync.account_contacts"], attributes["sync.one_way_edits"]) == (
        1,
        1,
        1,
    )


def test_a_cycle_cut_by_its_budget_is_a_completed_cycle_that_says_where_it_stopped(collected: Collected) -> None:
    world = make_world(
        options=CycleOptions(dataverse_batch_size=1, budget=timedelta(seconds=2)), telemetry=collected.telemetry
    )
    persons = [world.linked_lead(i)[1] for i in range(4)]
    for person in persons:
        world.marketo.edit(person, title="Edited")
    world.latency = 1.0  # fake seconds per request: the budget is spent by the work
    report = world.cycle()
    assert report.outcome == "partial"
    assert report.report.left is not None
    attributes = collected.finished_spans()[-1].attributes or {}
    assert attributes["sync.cycle.failed"] is False
    assert attributes["sync.cycle.cut"] == report.report.left.step
    assert attributes["sync.left.persons"] == report.report.left.persons > 0
    assert not _leaks(collected, world)
