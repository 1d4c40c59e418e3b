"""Where this process's telemetry goes, decided once at start-up (``function_app.py`` on import,
``python -m sync_core`` before its command).

- ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set (the Bicep sets it): Azure Monitor's OpenTelemetry
  distro, ``configure_azure_monitor()``, authenticated as the app's identity (the exporter reads
  ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING``). Only the sync's own telemetry: every
  auto-instrumentation is off, because request URLs carry filter values (an email in a Marketo
  ``filterValues``, an OData ``$filter``), and only the ``sync_core.events`` logger is exported (the
  Functions host already collects the other log lines; the events do not propagate to it, so they
  are not there twice). No live metrics, no performance counters.
- else ``SYNC_TELEMETRY_CONSOLE`` true: spans, metrics and events printed on stderr (stdout is
  ``run-once``'s JSON report).
- else nothing: the OpenTelemetry API's no-op providers.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping
from typing import Literal

from opentelemetry import _logs, metrics, trace

from sync_core.settings import TelemetrySettings
from sync_core.telemetry.record import EVENTS_LOGGER

log = logging.getLogger(__name__)

Destination = Literal["azure_monitor", "console", "none"]
SERVICE_NAME = "marketo-dynamics-sync"
# Every instrumentation the distro would turn on by itself (its names), all off.
AUTO_INSTRUMENTATIONS = (
    "azure_sdk",
    "django",
    "fastapi",
    "flask",
    "httpx",
    "psycopg2",
    "requests",
    "urllib",
    "urllib3",
)
FLUSH_MILLIS = 10_000

_lock = threading.Lock()
_configured: Destination | None = None


def configure_telemetry(environ: Mapping[str, str]) -> Destination:
    """Set up the process's providers once (later calls return the first answer); a malformed
    ``SYNC_TELEMETRY_CONSOLE`` is a ``ConfigError``."""
    global _configured
    with _lock:
        if _configured is not None:
            return _configured
        settings = TelemetrySettings.from_env(environ)
        if settings.connection_string:
            _configure_azure_monitor(settings.connection_string)
            _configured = "azure_monitor"
        elif settings.console:
            _configure_console()
            _configured = "console"
        else:
            _configured = "none"
        # The events go to telemetry only: not a second time into the process's own log lines.
        events = logging.getLogger(EVENTS_LOGGER)
        events.setLevel(logging.INFO)
        events.propagate = False
        log.info("telemetry: %s", _configured)
        return _configured


def _configure_azure_monitor(connection_string: str) -> None:
    from azure.monitor.opentelemetry import configure_azure_monitor

    configure_azure_monitor(
        connection_string=connection_string,
        logger_name=EVENTS_LOGGER,
        instrumentation_options={name: {"enabled": False} for name in AUTO_INSTRUMENTATIONS},
        enable_live_metrics=False,
        enable_performance_counters=False,
    )


def _configure_console() -> None:
    from opentelemetry.instrumentation.logging.handler import LoggingHandler
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter, SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    resource = Resource.create({"service.name": SERVICE_NAME})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr))
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader], resource=resource))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(ConsoleLogRecordExporter(out=sys.stderr)))
    _logs.set_logger_provider(logger_provider)
    logging.getLogger(EVENTS_LOGGER).addHandler(LoggingHandler(logger_provider=logger_provider))


def flush_telemetry() -> None:
    """Export what is buffered now (after a timer execution: the instance may be stopped before the
    next periodic export). A no-op without providers."""
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider(), _logs.get_logger_provider()):
        flush = getattr(provider, "force_flush", None)
        if callable(flush):
            try:
                flush(FLUSH_MILLIS)
            except Exception:  # telemetry never fails the caller
                log.warning("telemetry: flush failed", exc_info=True)
