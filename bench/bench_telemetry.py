"""What recording telemetry costs (issue 19): one cycle's ``record_cycle`` and one webhook call's
``record_webhook``, with the OpenTelemetry API's no-op providers (no telemetry configured) and with
the SDK's providers (spans, metrics and events into in-memory exporters, as ``configure_telemetry``
sets up without the network). Also the cost of importing and configuring Azure Monitor's distro,
once per process, in a subprocess (nothing is sent: the ingestion endpoint is a closed loopback
port). Prints one JSON object. Run from the repository root:

    .venv/bin/python bench/bench_telemetry.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sync_core.core.models import RunReport
from sync_core.core.report import CycleReport
from sync_core.telemetry import Telemetry

ROOT = Path(__file__).resolve().parent.parent
REPORT = RunReport(
    run_id="20261204T120000Z-bench001",
    started_at=datetime(2026, 12, 4, 12, tzinfo=UTC),
    finished_at=datetime(2026, 12, 4, 12, tzinfo=UTC) + timedelta(seconds=4),
    outcome="partial",
    report=CycleReport.model_validate(
        {
            "pulled": {"marketo": 1200, "dynamics": 800},
            "written": {"marketo": 700, "dynamics": 1100},
            "collisions": 3,
            "failures": 2,
            "new_failures": 1,
            "api_calls": {"marketo": 9, "dataverse": 4},
            "backlog": {"marketo": 0, "retries": 5},
            "seconds": 4.0,
        }
    ),
)


def _sdk_telemetry() -> tuple[Telemetry, list[object]]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(InMemoryLogRecordExporter()))
    events = logging.getLogger("bench.telemetry.events")
    events.setLevel(logging.INFO)
    events.propagate = False
    events.addHandler(LoggingHandler(logger_provider=logger_provider))
    return Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider, events=events), [
        tracer_provider,
        meter_provider,
        logger_provider,
    ]


def _per_call_us(telemetry: Telemetry, calls: int) -> dict[str, float]:
    started = time.perf_counter()
    for _ in range(calls):
        telemetry.record_cycle(REPORT)
    cycle = (time.perf_counter() - started) / calls * 1e6
    started = time.perf_counter()
    for _ in range(calls):
        telemetry.record_webhook(status=200, outcome="created", started_ns=time.time_ns(), seconds=0.04)
    webhook = (time.perf_counter() - started) / calls * 1e6
    return {"record_cycle_us": round(cycle, 1), "record_webhook_us": round(webhook, 1)}


def _azure_monitor_setup_seconds() -> float:
    code = (
        "import os, time; t = time.perf_counter()\n"
        "from sync_core.telemetry import configure_telemetry\n"
        "configure_telemetry(os.environ); print(time.perf_counter() - t); os._exit(0)\n"
    )
    env = {
        **os.environ,
        "APPLICATIONINSIGHTS_CONNECTION_STRING": (
            "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9/"
        ),
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=120
    )
    return round(float(done.stdout.split()[-1]), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    sdk, providers = _sdk_telemetry()
    result = {
        "calls": args.calls,
        "no_op": _per_call_us(Telemetry(), args.calls),
        "sdk_in_memory": _per_call_us(sdk, args.calls),
        "azure_monitor_import_and_configure_s": _azure_monitor_setup_seconds(),
    }
    for provider in providers:
        provider.shutdown()  # type: ignore[attr-defined]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
