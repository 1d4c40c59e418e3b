"""API calls and latency per call of the flow-step webhooks (Change Owner, Create Task, Add to /
Remove from Microsoft Campaign) through the local host, against the sandbox: prints JSON.

The simulators (limits off) run in a process of their own with N Marketo persons, one Dynamics
user and one active campaign; the local host serves ``function_app`` in this process with the
state store on Azurite. Each person is first synced by "Sync Person to Microsoft" (so the steps
below run on a linked person, the usual case), then each step runs N times, one call after
another, on every path worth a figure: the first call and its repeat (a Marketo retry). One
extra person, never synced, shows what "synced first" adds (Change Owner on an unlinked person).
API calls are the host's own counters (Marketo and Dataverse, token calls apart), per call.

    .venv/bin/python bench/bench_flows.py [--calls 100]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import function_app
from demo.sandbox_env import sandbox_settings
from sandbox import DataverseOptions, MarketoOptions, SandboxServers
from sandbox.azurite import run_azurite
from sync_core.host.server import LocalHost
from sync_core.settings import Settings
from sync_core.wiring.services import close_services, services_for

SECRET = "bench-secret"  # noqa: S105 - the sandbox webhook secret of this run


def sandbox_process(conn: Any, persons: int) -> None:
    servers = SandboxServers(
        marketo=MarketoOptions(limits=False, seed_leads=persons), dataverse=DataverseOptions(limits=False)
    ).start()
    user = servers.dataverse.create("systemuser", {"firstname": "Bench", "lastname": "Owner"})
    campaign = servers.dataverse.create("campaigns", {"name": "Bench campaign"})
    conn.send((servers.marketo_url, servers.dataverse_url, str(user), str(campaign)))
    conn.recv()  # until told to stop
    servers.stop()


def run(calls: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    sandbox = ctx.Process(target=sandbox_process, args=(child, calls + 2))
    sandbox.start()
    marketo_url, dataverse_url, user, campaign = parent.recv()
    paths: dict[str, dict[str, Any]] = {}
    try:
        with run_azurite() as connection:
            env = sandbox_settings(
                marketo_url,
                dataverse_url,
                tables_connection=connection,
                table_prefix="f" + uuid.uuid4().hex[:10],
                WEBHOOK_SHARED_SECRET=SECRET,
            )
            os.environ.update(env)
            counters = services_for(Settings.from_env(env)).counters
            with (
                LocalHost(function_app.app, port=0, run_timers=False) as host,
                httpx.Client(base_url=host.base_url, timeout=60) as client,
            ):

                def post(step: str, body: dict[str, Any]) -> tuple[float, str]:
                    started = time.perf_counter()
                    answer = client.post(f"/api/marketo/{step}", json=body, headers={"X-Sync-Secret": SECRET})
                    return time.perf_counter() - started, f"{answer.status_code} {answer.json().get('status')}"

                def measure(name: str, step: str, bodies: list[dict[str, Any]]) -> None:
                    before = {s: counters.calls(s) for s in ("marketo", "dataverse")}
                    seconds: list[float] = []
                    outcomes: dict[str, int] = {}
                    for body in bodies:
                        took, outcome = post(step, body)
                        seconds.append(took)
                        outcomes[outcome] = outcomes.get(outcome, 0) + 1
                    api = {s: round((counters.calls(s) - before[s]) / len(bodies), 2) for s in before}
                    ordered = sorted(seconds)
                    paths[name] = {
                        "outcomes": outcomes,
                        "api_calls_per_call": {**api, "total": round(sum(api.values()), 2)},
                        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
                        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1000, 1),
                        "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
                    }

                def each(body: Callable[[int], dict[str, Any]]) -> list[dict[str, Any]]:
                    return [body(person) for person in range(1, calls + 1)]

                post("sync-person", {"leadId": calls + 2})  # warm-up: tokens, schema cache, connections
                post("add-to-campaign", {"leadId": calls + 2, "campaignId": campaign})  # the campaign's list
                measure("sync-person (created, for reference)", "sync-person", each(lambda p: {"leadId": p}))
                owner = each(lambda p: {"leadId": p, "ownerId": user})
                measure("change-owner: changed", "change-owner", owner)
                measure("change-owner: repeat (unchanged)", "change-owner", owner)
                measure(
                    "change-owner: unlinked person (synced first)",
                    "change-owner",
                    [{"leadId": calls + 1, "ownerId": user}],
                )
                task = each(lambda p: {"leadId": p, "subject": "Follow up", "requestId": f"bench-{p}"})
                measure("create-task: created", "create-task", task)
                measure("create-task: repeat (exists)", "create-task", task)
                member = each(lambda p: {"leadId": p, "campaignId": campaign})
                measure("add-to-campaign: added", "add-to-campaign", member)
                measure("add-to-campaign: repeat (exists)", "add-to-campaign", member)
                measure("remove-from-campaign: removed", "remove-from-campaign", member)
                measure("remove-from-campaign: repeat (not-added)", "remove-from-campaign", member)
            close_services()
    finally:
        parent.send("stop")
        sandbox.join(timeout=30)
    return {"calls_per_path": calls, "paths": paths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(run(args.calls), indent=2))


if __name__ == "__main__":
    main()
