"""A world for end-to-end tests: both simulators over real HTTP, the state store on Azurite, and
the ``sync_cycle`` timer function called the way the Functions host calls it.

Each test gets fresh simulators, its own table prefix and its own settings in the environment
(``monkeypatch``), so the process-wide wiring builds a fresh set of clients for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from azure.functions.timer import TimerRequest

import function_app
from demo.sandbox_env import sandbox_settings
from sandbox import DataverseOptions, MarketoOptions, SandboxServers
from sandbox.azurite import AzuriteNotInstalled, run_azurite_queue
from sync_core.core.models import EntityType, Link, RunReport
from sync_core.settings import Settings
from sync_core.state import TableStateStore
from sync_core.wiring.services import close_services

LEAD, CONTACT = EntityType.LEAD, EntityType.CONTACT
SECRET = "e2e-webhook-secret"


@dataclass
class World:
    sandbox: SandboxServers
    store: TableStateStore
    env: dict[str, str]

    @property
    def marketo(self) -> Any:
        return self.sandbox.marketo

    @property
    def dataverse(self) -> Any:
        return self.sandbox.dataverse

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    def cycle(self) -> RunReport:
        """Fire the timer function once, as the host would; the cycle's stored run report."""
        function_app.sync_cycle.build().get_user_function()(TimerRequest(past_due=False))
        return self.store.list_run_reports(limit=1)[0]

    # -- acting as users of each system -------------------------------------------------------

    def dynamics_lead(self, i: int, **values: Any) -> str:
        body = {
            "emailaddress1": f"lead{i}@example.com",
            "firstname": f"Lead{i}",
            "lastname": f"Person{i}",
            "companyname": f"Company {i}",
            "subject": "e2e",
            **values,
        }
        return str(self.dataverse.create("leads", {k: v for k, v in body.items() if v is not None}))

    def dynamics_contact(self, i: int, **values: Any) -> str:
        body = {
            "emailaddress1": f"contact{i}@example.com",
            "firstname": f"Contact{i}",
            "lastname": f"Person{i}",
            **values,
        }
        return str(self.dataverse.create("contacts", {k: v for k, v in body.items() if v is not None}))

    def person_of(self, dataverse_id: str) -> dict[str, Any]:
        found = self.marketo.find_leads("microsoftId", dataverse_id)
        assert len(found) == 1, f"expected one person for {dataverse_id}, found {len(found)}"
        return dict(found[0])

    def link_of(self, marketo_id: int) -> Link | None:
        return self.store.get_links_by_marketo_ids([marketo_id]).get(marketo_id)

    def dynamics_row(self, entity: EntityType, dataverse_id: str) -> dict[str, Any] | None:
        row = self.dataverse.get(f"{entity.value}s", dataverse_id)
        return None if row is None else dict(row)

    def api_creates(self) -> int:
        """Dataverse records created through the API (the sync), not by a Dynamics user."""
        writes = self.dataverse.stats.to_json()["writes"]
        return sum(ops.get("create", 0) for ops in writes.values())

    def failure_activities(self, lead_id: int) -> list[dict[str, Any]]:
        return [a for a in self.marketo.custom_activities(lead_id) if a["apiName"] == "microsoftSyncFailed"]


def environment(sandbox: SandboxServers, connection: str, prefix: str, **extra: str) -> dict[str, str]:
    return sandbox_settings(
        sandbox.marketo_url,
        sandbox.dataverse_url,
        tables_connection=connection,
        table_prefix=prefix,
        **{"WEBHOOK_SHARED_SECRET": SECRET, **extra},
    )


@pytest.fixture(scope="module")
def queue_connection() -> Iterator[str]:
    """Azurite's Queue service for the job queue (a module's tests share it; each names its own queue)."""
    try:
        with run_azurite_queue() as conn:
            yield conn
    except AzuriteNotInstalled as err:
        pytest.skip(str(err))


@pytest.fixture
def world_factory(azurite_connection_string: str, table_prefix: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``world_factory(**settings)``: a world whose environment carries extra settings."""
    started: list[SandboxServers] = []

    def make(
        *, marketo: MarketoOptions | None = None, dataverse: DataverseOptions | None = None, **extra: str
    ) -> World:
        sandbox = SandboxServers(marketo=marketo or MarketoOptions(), dataverse=dataverse or DataverseOptions()).start()
        started.append(sandbox)
        env = environment(sandbox, azurite_connection_string, table_prefix, **extra)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        store = TableStateStore.from_connection_string(azurite_connection_string, prefix=table_prefix)
        return World(sandbox, store, env)

    yield make
    close_services()
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def world(world_factory: Any) -> World:
    return world_factory()


def field_map_json(*extra: dict[str, Any], drop: tuple[str, ...] = ()) -> str:
    """The default field map minus ``drop`` plus ``extra`` mappings, as inline JSON."""
    from sync_core.core.fieldmap import DEFAULT_PATH

    spec = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    spec["fields"] = [f for f in spec["fields"] if f["marketo"] not in drop] + list(extra)
    return json.dumps(spec)
