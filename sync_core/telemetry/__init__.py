"""Telemetry: the sync's metrics, spans and events through OpenTelemetry (README "Operating:
Telemetry").

``record`` owns the instrument names and their attributes, and the one place where a cycle's run
report and a webhook call become telemetry; ``setup`` sends it to Application Insights in Azure
(``APPLICATIONINSIGHTS_CONNECTION_STRING``), to the console when asked (``SYNC_TELEMETRY_CONSOLE``),
or nowhere (the OpenTelemetry API's no-op providers: recording costs next to nothing). Telemetry
carries counts, outcomes, service names and run ids only: never a person's values, never a
Marketo or Dataverse id, never an error text (a service's message can quote a value).
"""

from sync_core.telemetry.record import (
    CYCLE_EVENT,
    EVENTS_LOGGER,
    INSTRUMENTS,
    WEBHOOK_EVENT,
    Telemetry,
    WebhookTimer,
    default_telemetry,
)
from sync_core.telemetry.setup import configure_telemetry, flush_telemetry

__all__ = [
    "CYCLE_EVENT",
    "EVENTS_LOGGER",
    "INSTRUMENTS",
    "WEBHOOK_EVENT",
    "Telemetry",
    "WebhookTimer",
    "configure_telemetry",
    "default_telemetry",
    "flush_telemetry",
]
