"""The process-wide wiring (style §2): settings → field map, HTTP clients, API clients, state store.

Built once per process and shared by every function invocation (Microsoft's guidance for
Functions: reuse clients and connections). ``services_for(settings)`` caches one ``Services``
per (frozen, hashable) settings; ``build_services`` makes a fresh one and is what tests call
with their own transports or store. Everything downstream takes what it needs from here as
arguments; nothing else builds an ``httpx.Client``, a credential or a store. No I/O happens
while wiring: the first token, metadata read or table creation happens on first use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from sync_core.core.fieldmap import FieldMap, load_field_map
from sync_core.dataverse.client import DataverseClient
from sync_core.http.counters import ApiCounters
from sync_core.marketo.client import MarketoClient
from sync_core.settings import Settings
from sync_core.state import StateStore
from sync_core.state.queue import JobQueue
from sync_core.wiring.budget import SharedBudgets, build_shared_budgets
from sync_core.wiring.credentials import build_dataverse_credential
from sync_core.wiring.queue import build_job_queue
from sync_core.wiring.state import build_state_store

# httpx logs every request's URL at INFO, and our URLs carry person data (Marketo filterValues,
# Dataverse $filter on email): whatever level the host logs at, those lines never leave the process.
# The Azure SDK's HttpLoggingPolicy logs every Table Storage request at INFO too (URL, then each
# header on a line): ids only, but tens of thousands a cycle, which Application Insights would bill.
for _noisy in ("httpx", "httpcore", "azure.core.pipeline.policies.http_logging_policy"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

# Connections per API: Marketo allows 10 in flight per instance (we use a share of it),
# Dataverse 52 per user; keep-alive connections are reused across invocations.
_LIMITS = httpx.Limits(max_connections=20, max_keepalive_connections=10, keepalive_expiry=60.0)


@dataclass(frozen=True)
class Services:
    settings: Settings
    field_map: FieldMap
    counters: ApiCounters  # every API call of this process, per service and operation
    marketo: MarketoClient
    dataverse: DataverseClient
    store: StateStore
    queue: JobQueue | None = None  # chunked jobs' messages (``sync_core.jobs``); None: not configured
    http_clients: tuple[httpx.Client, ...] = ()  # owned here, closed by ``close``
    budgets: SharedBudgets | None = None  # the API budget shared with other instances; its leases go back on ``close``

    def close(self) -> None:
        if self.budgets is not None:
            self.budgets.close()
        for client in self.http_clients:
            client.close()


def build_services(
    settings: Settings,
    *,
    marketo_http: httpx.Client | None = None,
    dataverse_http: httpx.Client | None = None,
    store: StateStore | None = None,
    queue: JobQueue | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Services:
    """A fresh wiring for ``settings``; pass clients, a store, a queue or ``sleep`` to replace the real
    ones. A store passed in (tests) comes without a queue unless one is passed too."""
    field_map = load_field_map(settings.field_map)
    counters = ApiCounters()
    owned: list[httpx.Client] = []
    if marketo_http is None:
        marketo_http = httpx.Client(limits=_LIMITS)
        owned.append(marketo_http)
    if dataverse_http is None:
        dataverse_http = httpx.Client(limits=_LIMITS)
        owned.append(dataverse_http)
    state_store = store if store is not None else build_state_store(settings)
    budgets = build_shared_budgets(settings, state_store, sleep=sleep)
    marketo = MarketoClient(
        marketo_http,
        base_url=settings.marketo_base_url,
        client_id=settings.marketo_client_id,
        client_secret=settings.marketo_client_secret,
        rate_share=settings.marketo_rate_share,
        counters=counters,
        sleep=sleep or time.sleep,
        budget=None if budgets is None else budgets.marketo,
        background_share=settings.background_share,
    )
    dataverse = DataverseClient(
        dataverse_http,
        base_url=settings.dataverse_url,
        credential=build_dataverse_credential(settings),
        batch_size=settings.dataverse_batch_size,
        max_parallel=settings.dataverse_max_parallel,
        counters=counters,
        sleep=sleep or time.sleep,
        budget=None if budgets is None else budgets.dataverse,
    )
    return Services(
        settings=settings,
        field_map=field_map,
        counters=counters,
        marketo=marketo,
        dataverse=dataverse,
        store=state_store,
        queue=queue if queue is not None or store is not None else build_job_queue(settings),
        http_clients=tuple(owned),
        budgets=budgets,
    )


_BUILT: dict[Settings, Services] = {}
_LOCK = threading.Lock()


def services_for(settings: Settings) -> Services:
    """The process's wiring for ``settings``, built on first use (one per distinct settings)."""
    with _LOCK:
        services = _BUILT.get(settings)
        if services is None:
            services = _BUILT[settings] = build_services(settings)
        return services


def close_services() -> None:
    """Close every wiring built so far and forget them (process shutdown, or between tests)."""
    with _LOCK:
        built = list(_BUILT.values())
        _BUILT.clear()
    for services in built:
        services.close()


def services_from_env(environ: Mapping[str, str]) -> Services:
    """``Settings.from_env(environ)`` (``ConfigError`` naming every problem) and its wiring."""
    return services_for(Settings.from_env(environ))
