"""A world for unit tests of the cycle: the real engine and clients over the in-memory fakes of both
services (``httpx.MockTransport``), the memory state store, and one fake clock for all of them.

``World.cycle()`` moves the clock a minute on and runs one cycle, as the timer would; no network,
no disk beyond the cycle's stage file, no waiting. ``World.latency`` (default 0) is the fake time
each request to either service takes: with it, a cycle's time budget is spent by the work it does,
deterministically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from sync_core.core.fieldmap import DEFAULT_PATH, FieldMap, load_field_map
from sync_core.core.models import EntityType, Link, RunReport
from sync_core.cycle import engine as engine_module
from sync_core.cycle.engine import CycleOptions, SyncEngine
from sync_core.dataverse.client import DataverseClient
from sync_core.http.counters import ApiCounters
from sync_core.marketo.client import MarketoClient
from sync_core.state import MemoryStateStore
from sync_core.telemetry import Telemetry
from sync_core.wiring.credentials import StaticTokenCredential
from tests.fakes import Clock, FakeDataverse, FakeMarketo
from tests.fakes import dataverse as fake_dataverse

LEAD, CONTACT = EntityType.LEAD, EntityType.CONTACT


@dataclass
class World:
    clock: Clock
    marketo: FakeMarketo
    dataverse: FakeDataverse
    store: MemoryStateStore
    counters: ApiCounters
    engine: SyncEngine
    marketo_client: MarketoClient
    dataverse_client: DataverseClient
    field_map: FieldMap = field(default_factory=lambda: load_field_map(None))
    latency: float = 0.0  # fake seconds each API request takes (the clock moves on by it)

    def cycle(self) -> RunReport:
        self.clock.advance(minutes=1)
        return self.engine.run_cycle()

    # -- acting as users of each system ------------------------------------------------------------

    def dynamics_lead(self, i: int, **values: Any) -> str:
        defaults = {"emailaddress1": f"lead{i}@example.com", "firstname": f"Lead{i}", "lastname": f"Person{i}"}
        return self.dataverse.create("leads", **{**defaults, "companyname": f"Company {i}", **values})

    def dynamics_contact(self, i: int, **values: Any) -> str:
        defaults = {"emailaddress1": f"contact{i}@example.com", "firstname": f"Contact{i}", "lastname": f"Person{i}"}
        return self.dataverse.create("contacts", **{**defaults, **values})

    def linked_lead(self, i: int, **values: Any) -> tuple[str, int]:
        """A Dynamics lead, synced: its id and its Marketo person's id."""
        lead_id = self.dynamics_lead(i, **values)
        assert self.cycle().outcome == "ok"
        return lead_id, self.person_of(lead_id)

    def linked_contact(self, i: int, **values: Any) -> tuple[str, int]:
        contact_id = self.dynamics_contact(i, **values)
        assert self.cycle().outcome == "ok"
        return contact_id, self.person_of(contact_id)

    def person_of(self, dataverse_id: str) -> int:
        [person] = self.marketo.find("microsoftId", dataverse_id)
        return int(person["id"])

    def link_of(self, marketo_id: int) -> Link | None:
        return self.store.get_links_by_marketo_ids([marketo_id]).get(marketo_id)


def make_world(
    *, options: CycleOptions | None = None, field_map: FieldMap | None = None, telemetry: Telemetry | None = None
) -> World:
    clock = Clock()
    marketo, dataverse = FakeMarketo(clock), FakeDataverse(clock)
    counters = ApiCounters()
    worlds: list[World] = []  # the one made below: its latency is read at each request

    def timed(service: Any) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            if worlds and worlds[0].latency:
                clock.sleep(worlds[0].latency)
            return service(request)  # type: ignore[no-any-return]

        return httpx.MockTransport(handle)

    marketo_client = MarketoClient(
        httpx.Client(transport=timed(marketo)),
        base_url="https://123-abc-456.mktorest.test",
        client_id="unit-client",
        client_secret="unit-secret",
        counters=counters,
        sleep=clock.sleep,
        clock=clock.monotonic,
    )
    dataverse_client = DataverseClient(
        httpx.Client(transport=timed(dataverse)),
        base_url="https://contoso.crm.test",
        credential=StaticTokenCredential(fake_dataverse.TOKEN, clock=clock.monotonic),
        counters=counters,
        sleep=clock.sleep,
        clock=clock.monotonic,
        wall_clock=clock.monotonic,
    )
    store = MemoryStateStore()
    field_map = field_map or load_field_map(None)
    engine = SyncEngine(
        marketo=marketo_client,
        dataverse=dataverse_client,
        store=store,
        field_map=field_map,
        counters=counters,
        options=options,
        clock=clock,
        telemetry=telemetry,
    )
    worlds.append(
        World(clock, marketo, dataverse, store, counters, engine, marketo_client, dataverse_client, field_map)
    )
    return worlds[0]


def no_head_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cycles without the persons step's head start (``_Cycle._top_up``, and ``_write_early``
    while the change feed is read): its persons are written by the persons step, after the pages."""
    monkeypatch.setattr(engine_module._Cycle, "_top_up", lambda self: None)
    no_early_writes(monkeypatch)


def no_early_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cycles whose persons step starts only once the change feed is read (``_Cycle._write_early``
    off). With it on, a person the feed names on two pages may be written twice, depending on
    whether its first write went before the second page came: the write totals of two runs of the
    same backlog then differ, while the state they reach does not."""
    monkeypatch.setattr(engine_module._Cycle, "_write_early", lambda self, lead_ids: None)


@pytest.fixture
def world() -> World:
    return make_world()


def field_map_with(*extra: dict[str, Any], drop: tuple[str, ...] = ()) -> FieldMap:
    """The default field map minus the ``drop`` Marketo fields, plus ``extra`` mappings."""
    spec = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    spec["fields"] = [f for f in spec["fields"] if f["marketo"] not in drop] + list(extra)
    return load_field_map(json.dumps(spec))
