"""A burst of "Sync Person to Microsoft" calls against the sandbox with its limits on: prints JSON.

N calls (default 200), one per new person, all sent at once through the local host (the
simulators, with Marketo's 100 calls / 20 s and 10 in flight, in a process of their own; the
state store on Azurite). Marketo waits 30 s for a webhook, so a call answers by
``WEBHOOK_DEADLINE_SECONDS`` (default 20): created, or 503 + Retry-After when the rate budget
cannot fit it in time. Every 503 is then retried after its Retry-After, as Marketo retries,
until all are answered 200. Reported: p50/p99/max answer time of the burst, the share of 200 and
503, the retry rounds, and the check that each person is exactly once in Dynamics (one lead per
email, one link per person).

    .venv/bin/python bench/bench_webhook_burst.py [--calls 200] [--deadline 20] [--rate-share 1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_webhook import ROUTE, SECRET, percentiles, sandbox_process
from demo.sandbox_env import sandbox_settings
from sandbox.azurite import run_azurite
from sync_core.settings import Settings
from sync_core.state import TableStateStore


def dynamics_leads(dataverse_url: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    url: str | None = f"{dataverse_url}/api/data/v9.2/leads?$select=emailaddress1,leadid"
    with httpx.Client(headers={"Authorization": "Bearer sandbox-token"}, timeout=60) as client:
        while url:
            page = client.get(url).json()
            rows += page["value"]
            url = page.get("@odata.nextLink")
    return rows


def run(calls: int, *, deadline: float, rate_share: float, max_rounds: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    sandbox = ctx.Process(target=sandbox_process, args=(child, calls + 1))
    sandbox.start()
    marketo_url, dataverse_url = parent.recv()
    try:
        with run_azurite() as connection:
            prefix = "b" + uuid.uuid4().hex[:10]
            env = sandbox_settings(
                marketo_url,
                dataverse_url,
                tables_connection=connection,
                table_prefix=prefix,
                WEBHOOK_SHARED_SECRET=SECRET,
                MARKETO_RATE_SHARE=str(rate_share),
                WEBHOOK_DEADLINE_SECONDS=str(deadline),
            )
            os.environ.update(env)
            Settings.from_env(env)
            limits = httpx.Limits(max_connections=calls + 10, max_keepalive_connections=calls + 10)
            # The host in its own process, as the Functions host is: the 200 client threads here
            # must not hold its interpreter lock (Marketo's callers are on other machines).
            host = subprocess.Popen(
                [sys.executable, "-m", "sync_core", "host", "--port", "0", "--no-timers"],
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                base_url = json.loads(host.stdout.readline() if host.stdout else "{}")["url"]
            except (KeyError, ValueError):
                host.kill()
                raise
            with (
                httpx.Client(base_url=base_url, timeout=60, limits=limits) as client,
                ThreadPoolExecutor(max_workers=calls) as pool,
            ):

                def post(lead_id: int) -> tuple[int, float, int, float]:
                    started = time.perf_counter()
                    answer = client.post(ROUTE, json={"leadId": lead_id}, headers={"X-Sync-Secret": SECRET})
                    retry_after = float(answer.headers.get("Retry-After", 0))
                    return lead_id, time.perf_counter() - started, answer.status_code, retry_after

                post(calls + 1)  # warm-up: token, schema cache, connections
                time.sleep(20)  # let the warm-up's calls leave Marketo's 20 s window
                burst_started = time.perf_counter()
                burst = list(pool.map(post, range(1, calls + 1)))
                burst_seconds = time.perf_counter() - burst_started
                statuses = Counter(status for _, _, status, _ in burst)
                pending = [(lead_id, retry_after) for lead_id, _, status, retry_after in burst if status != 200]
                rounds: list[dict[str, Any]] = []
                retry_times: list[float] = []
                while pending and len(rounds) < max_rounds:
                    time.sleep(max(retry_after for _, retry_after in pending) or 1.0)
                    answers = list(pool.map(post, [lead_id for lead_id, _ in pending]))
                    retry_times += [seconds for _, seconds, _, _ in answers]
                    rounds.append({"calls": len(answers), "statuses": dict(Counter(a[2] for a in answers))})
                    pending = [(lead_id, retry_after) for lead_id, _, status, retry_after in answers if status != 200]
            host.terminate()
            host.wait(timeout=30)
            store = TableStateStore.from_connection_string(connection, prefix=prefix)
            links = store.get_links_by_marketo_ids(list(range(1, calls + 1)))
            leads = dynamics_leads(dataverse_url)
    finally:
        parent.send("stop")
        sandbox.join(timeout=30)
    per_email = Counter(str(row.get("emailaddress1")).lower() for row in leads)
    linked_ids = {link.dataverse_id for link in links.values()}
    return {
        "calls": calls,
        "deadline_seconds": deadline,
        "marketo_rate_share": rate_share,
        "burst": {
            **percentiles([seconds for _, seconds, _, _ in burst]),
            "seconds": round(burst_seconds, 1),
            "statuses": dict(statuses),
            "share_200": round(statuses[200] / calls, 3),
            "share_503": round(statuses[503] / calls, 3),
            "other_than_200_503": calls - statuses[200] - statuses[503],
        },
        "retries": {"rounds": rounds, **(percentiles(retry_times) if retry_times else {})},
        "unanswered_after_retries": len(pending),
        "exactly_once": {
            "dynamics_leads": len(leads),
            "expected": calls + 1,  # + the warm-up person
            "emails_more_than_once": sum(1 for n in per_email.values() if n > 1),
            "persons_linked": len(links),
            "links_to_distinct_leads": len(linked_ids),
            "ok": len(leads) == calls + 1 and max(per_email.values()) == 1 and len(links) == len(linked_ids) == calls,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--deadline", type=float, default=20.0, help="WEBHOOK_DEADLINE_SECONDS (default 20)")
    parser.add_argument("--rate-share", type=float, default=1.0, help="MARKETO_RATE_SHARE (default 1)")
    parser.add_argument("--max-rounds", type=int, default=20, help="retry rounds at most (default 20)")
    args = parser.parse_args()
    result = run(args.calls, deadline=args.deadline, rate_share=args.rate_share, max_rounds=args.max_rounds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
