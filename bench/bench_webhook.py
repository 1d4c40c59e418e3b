"""Latency of "Sync Person to Microsoft" through the local host, against the sandbox: prints JSON.

The simulators (limits off) run in a process of their own with N Marketo persons and no Dynamics
records; the local host serves ``function_app`` in this process with the state store on Azurite.
One warm-up call (token, schema, activity type), then N calls, each for a new person (each
creates a lead), started ``--rate`` per second (Marketo trigger campaigns fire per person; 0: one
after another as fast as they go), then the same N again at once (each answers ``exists``).
Reported: p50 / p90 / p99 / max milliseconds per path, and the API calls per created lead
(goal <= 4), from the host's own API counters.

A created lead costs 2 Marketo calls, and the Marketo client keeps to its share of Marketo's
100 calls per 20 s (``MARKETO_RATE_SHARE``, here ``--rate-share``, default 1): unpaced, calls
beyond 50 leads per 20 s wait for the budget, which shows as a p99 of up to 20 s. That is the
real limit of a Marketo instance, not the webhook's own cost; the default pace stays under it.

    .venv/bin/python bench/bench_webhook.py [--calls 500] [--rate 2] [--rate-share 1]
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
ROUTE = "/api/marketo/sync-person"


def sandbox_process(conn: Any, persons: int) -> None:
    servers = SandboxServers(
        marketo=MarketoOptions(limits=False, seed_leads=persons), dataverse=DataverseOptions(limits=False)
    ).start()
    conn.send((servers.marketo_url, servers.dataverse_url))
    conn.recv()  # until told to stop
    servers.stop()


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1] * 1000, 1),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
    }


def run(calls: int, *, rate: float, rate_share: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    sandbox = ctx.Process(target=sandbox_process, args=(child, calls + 1))
    sandbox.start()
    marketo_url, dataverse_url = parent.recv()
    try:
        with run_azurite() as connection:
            env = sandbox_settings(
                marketo_url,
                dataverse_url,
                tables_connection=connection,
                table_prefix="w" + uuid.uuid4().hex[:10],
                WEBHOOK_SHARED_SECRET=SECRET,
                MARKETO_RATE_SHARE=str(rate_share),
            )
            os.environ.update(env)
            counters = services_for(Settings.from_env(env)).counters
            with (
                LocalHost(function_app.app, port=0, run_timers=False) as host,
                httpx.Client(base_url=host.base_url, timeout=60) as client,
            ):

                def post(lead_id: int) -> tuple[float, dict[str, Any]]:
                    started = time.perf_counter()
                    answer = client.post(ROUTE, json={"leadId": lead_id}, headers={"X-Sync-Secret": SECRET})
                    return time.perf_counter() - started, answer.json()

                post(calls + 1)  # warm-up: token, schema cache, connections
                before = {s: counters.calls(s) for s in ("marketo", "dataverse")}
                tokens_before = {s: counters.token_calls(s) for s in ("marketo", "dataverse")}
                created: list[float] = []
                outcomes: dict[str, int] = {}
                paced_from = time.perf_counter()
                for lead_id in range(1, calls + 1):
                    if rate > 0:
                        time.sleep(max(0.0, paced_from + (lead_id - 1) / rate - time.perf_counter()))
                    seconds, body = post(lead_id)
                    created.append(seconds)
                    outcomes[body["status"]] = outcomes.get(body["status"], 0) + 1
                api = {s: counters.calls(s) - before[s] for s in before}
                tokens = {s: counters.token_calls(s) - tokens_before[s] for s in tokens_before}
                exists: list[float] = []
                for lead_id in range(1, calls + 1):
                    seconds, body = post(lead_id)
                    exists.append(seconds)
                    outcomes["repeat_" + body["status"]] = outcomes.get("repeat_" + body["status"], 0) + 1
            close_services()
    finally:
        parent.send("stop")
        sandbox.join(timeout=30)
    return {
        "calls": calls,
        "rate_per_second": rate or "unpaced",
        "marketo_rate_share": rate_share,
        "outcomes": outcomes,
        "created": percentiles(created),
        "exists": percentiles(exists),
        "api_calls_per_created_lead": {
            "marketo": round(api["marketo"] / calls, 2),
            "dataverse": round(api["dataverse"] / calls, 2),
            "total": round(sum(api.values()) / calls, 2),
            "goal": 4,
        },
        "token_calls": tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rate", type=float, default=2.0, help="created-lead calls started per second (0: unpaced)")
    parser.add_argument("--rate-share", type=float, default=1.0, help="MARKETO_RATE_SHARE (default 1)")
    args = parser.parse_args()
    print(json.dumps(run(args.calls, rate=args.rate, rate_share=args.rate_share), indent=2))


if __name__ == "__main__":
    main()
