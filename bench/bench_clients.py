"""API calls per synced change, against the floor set by the batch sizes (issue 5, design §6).

Starts both sandbox servers on loopback with their limits off, then:

- Marketo: seeds N persons, takes a paging token, changes one field on each (N Change Data
  Value activities), and reads them all with ``MarketoClient.iter_lead_changes``.
  Floor: ⌈N/300⌉ pages + 1 paging-token call.
- Dataverse: seeds N leads and updates them all with ``DataverseClient.update_multiple``.
  Floor: ⌈N/batch⌉ UpdateMultiple calls.

Token calls are counted apart (Marketo does not charge them). Prints one JSON object; stops the
servers. Run from the repository root:

    .venv/bin/python bench/bench_clients.py [--changes 12000] [--updates 12000] [--batch-size 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from sandbox import DataverseOptions, MarketoOptions, SandboxServers
from sync_core.core.schema import EntityMeta
from sync_core.dataverse.client import DataverseClient
from sync_core.http.counters import ApiCounters
from sync_core.marketo.client import BATCH_SIZE as MARKETO_BATCH
from sync_core.marketo.client import MarketoClient
from sync_core.wiring.credentials import StaticTokenCredential

LEAD = EntityMeta(logical_name="lead", entity_set="leads", primary_id="leadid", attributes={})


def bench_marketo(servers: SandboxServers, http: httpx.Client, changes: int) -> dict[str, Any]:
    lead_ids = servers.marketo.seed(changes)
    counters = ApiCounters()
    client = MarketoClient(
        http,
        base_url=servers.marketo_url,
        client_id=servers.marketo.options.client_id,
        client_secret=servers.marketo.options.client_secret,
        counters=counters,
    )
    time.sleep(1.1)  # paging tokens have one-second resolution: start after the seeding
    token = client.get_paging_token(datetime.now(UTC))
    for lead_id in lead_ids:
        servers.marketo.update_lead(lead_id, {"title": f"Changed {lead_id}"})
    start = time.perf_counter()
    read = 0
    pages = 0
    for page in client.iter_lead_changes(token, fields=["title"]):
        pages += 1
        read += len(page.activities)
    seconds = time.perf_counter() - start
    snapshot = counters.snapshot()["marketo"]
    return {
        "changes_made": changes,
        "changes_read": read,
        "pages": pages,
        "api_calls": snapshot["calls"],
        "floor": math.ceil(changes / MARKETO_BATCH) + 1,
        "token_calls": snapshot["token_calls"],
        "by_operation": snapshot["by_operation"],
        "seconds": round(seconds, 3),
    }


def bench_dataverse(servers: SandboxServers, http: httpx.Client, updates: int, batch_size: int) -> dict[str, Any]:
    ids = [row["leadid"] for row in servers.dataverse.rows("lead")][:updates]
    counters = ApiCounters()
    client = DataverseClient(
        http,
        base_url=servers.dataverse_url,
        credential=StaticTokenCredential("sandbox-token"),
        batch_size=batch_size,
        counters=counters,
    )
    start = time.perf_counter()
    outcomes = client.update_multiple(LEAD, [{"leadid": row_id, "jobtitle": "Benchmarked"} for row_id in ids])
    seconds = time.perf_counter() - start
    snapshot = counters.snapshot()["dataverse"]
    return {
        "updates": len(ids),
        "written": sum(1 for outcome in outcomes if outcome.ok),
        "api_calls": snapshot["calls"],
        "floor": math.ceil(len(ids) / batch_size),
        "token_calls": snapshot["token_calls"],
        "by_operation": snapshot["by_operation"],
        "seconds": round(seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=12_000, help="Marketo lead changes to read")
    parser.add_argument("--updates", type=int, default=12_000, help="Dataverse rows to update")
    parser.add_argument("--batch-size", type=int, default=1000, help="rows per UpdateMultiple call")
    args = parser.parse_args()
    with (
        SandboxServers(
            marketo=MarketoOptions(limits=False), dataverse=DataverseOptions(limits=False, seed_leads=args.updates)
        ) as servers,
        httpx.Client() as http,
    ):
        result = {
            "marketo": bench_marketo(servers, http, args.changes),
            "dataverse": bench_dataverse(servers, http, args.updates, args.batch_size),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
