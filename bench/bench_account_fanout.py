"""API calls of the one-way owner and account fields on the sandbox (limits off), measured: prints JSON.

Sets up A accounts with C contacts each (all linked to Marketo persons, settled), then measures:
- ``account_edit``: one account edited (name and employees): the cycle that fans it out to its C
  contacts' persons, with its API calls per operation next to the floor (Marketo: ⌈C/300⌉ Sync
  Leads + 1 change-feed read; Dataverse: 3 delta reads + ⌈1/100⌉ contact reads);
- ``owner_change``: the C contacts of that account given a new owner (a user), in the cycle after
  the fan-out: the cycle that writes their owner fields (floor: ⌈C/300⌉ Sync Leads; the 3 deltas,
  one users read and one accounts read per delta page; its change-feed read also reads back the
  fan-out's own 2 x C activities, 300 a page, as echoes);
- ``idle``: a cycle with nothing to do.
The state store is in memory (this measures API calls, not Table Storage).

    .venv/bin/python bench/bench_account_fanout.py [--contacts 1000] [--accounts 3]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.sandbox_env import sandbox_settings
from sandbox import DataverseOptions, MarketoOptions, SandboxServers
from sync_core.cycle.engine import SyncEngine
from sync_core.settings import Settings
from sync_core.state import MemoryStateStore
from sync_core.wiring.services import build_services


def _measured(engine: SyncEngine) -> dict[str, Any]:
    started = time.perf_counter()
    report = engine.run_cycle()
    body = report.report
    return {
        "outcome": str(report.outcome),
        "written_marketo": body.written.marketo,
        "account_contacts": body.account_contacts,
        "calls": {"marketo": body.api_calls.marketo, "dataverse": body.api_calls.dataverse},
        "by_operation": body.api_calls.by_operation,
        "seconds": round(time.perf_counter() - started, 2),
    }


def run(contacts: int, accounts: int) -> dict[str, Any]:
    servers = SandboxServers(marketo=MarketoOptions(limits=False), dataverse=DataverseOptions(limits=False)).start()
    try:
        dataverse = servers.dataverse
        account_ids = [
            dataverse.create("accounts", {"name": f"Account {a}", "numberofemployees": 10}) for a in range(accounts)
        ]
        contact_ids: list[str] = []
        for a, account in enumerate(account_ids):
            for i in range(contacts):
                contact_ids.append(
                    dataverse.create(
                        "contacts",
                        {
                            "lastname": f"Person {a}-{i}",
                            "emailaddress1": f"c{a}-{i}@example.com",
                            "parentcustomerid_account@odata.bind": f"/accounts({account})",
                        },
                    )
                )
        env = sandbox_settings(
            servers.marketo_url,
            servers.dataverse_url,
            tables_connection="UseDevelopmentStorage=true",
            table_prefix="b" + uuid.uuid4().hex[:10],
            MARKETO_RATE_SHARE="1",
        )
        services = build_services(Settings.from_env(env), store=MemoryStateStore(prefix=env["SYNC_TABLE_PREFIX"]))
        engine = SyncEngine.from_services(services)
        for _ in range(4):  # create the persons, then read the echoes back
            engine.run_cycle()
        dataverse.update("accounts", account_ids[0], {"name": "Account 0 renamed", "numberofemployees": 42})
        account_edit = _measured(engine)
        owner = dataverse.create(
            "systemusers", {"firstname": "New", "lastname": "Owner", "internalemailaddress": "o@x.example"}
        )
        for contact in contact_ids[:contacts]:
            dataverse.update("contacts", contact, {"ownerid@odata.bind": f"/systemusers({owner})"})
        owner_change = _measured(engine)
        engine.run_cycle()  # the echoes
        idle = _measured(engine)
        services.close()
    finally:
        servers.stop()
    floor_marketo = math.ceil(contacts / 300) + 1
    return {
        "contacts_per_account": contacts,
        "accounts": accounts,
        "account_edit": {**account_edit, "floor": {"marketo": floor_marketo, "dataverse": 3 + 1}},
        "owner_change": {
            **owner_change,
            "floor": {
                "marketo": math.ceil(contacts / 300) + math.ceil(2 * contacts / 300) + 1,
                "dataverse": 3 + 2 * math.ceil(contacts / 5000),
            },
        },
        "idle": {**idle, "floor": {"marketo": 1, "dataverse": 3}},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1000, help="contacts per account (default 1000)")
    parser.add_argument("--accounts", type=int, default=3, help="accounts (default 3; one is edited)")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.contacts, args.accounts), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(argv=None))
