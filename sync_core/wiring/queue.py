"""The job queue the settings describe (``SYNC_QUEUE_CONNECTION``, ``AzureWebJobsStorage`` or
``SYNC_QUEUE_ENDPOINT`` + the managed identity), or None when none is configured.

Wiring, not storage: ``state.queue`` knows Queue Storage, this module knows the settings.
"""

from __future__ import annotations

from collections.abc import Callable

from azure.core.credentials import TokenCredential

from sync_core.core.errors import ConfigError
from sync_core.settings import Settings
from sync_core.state.queue import AzureJobQueue
from sync_core.wiring.state import default_credential


def build_job_queue(
    settings: Settings, *, credential_factory: Callable[[], TokenCredential] = default_credential
) -> AzureJobQueue | None:
    connection_string = settings.queue_connection_string
    if connection_string is not None:
        try:
            return AzureJobQueue.from_connection_string(connection_string, settings.jobs_queue)
        except (ValueError, TypeError) as err:
            name = "SYNC_QUEUE_CONNECTION" if settings.queue_connection is not None else "AzureWebJobsStorage"
            raise ConfigError([f"{name}: not a usable Queue Storage connection string ({err})"]) from err
    if settings.queue_endpoint is not None:
        try:
            return AzureJobQueue.from_endpoint(settings.queue_endpoint, credential_factory(), settings.jobs_queue)
        except ValueError as err:
            raise ConfigError([f"SYNC_QUEUE_ENDPOINT: {err}"]) from err
    return None
