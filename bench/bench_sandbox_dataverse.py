"""How fast the Dataverse simulator answers, so end-to-end tests and benchmarks of the sync know
the sandbox is not their bottleneck.

Starts ``python -m sandbox serve --no-limits --seed-leads N`` in a separate process, then over
one keep-alive connection measures (1) a full paged read of the leads at ``odata.maxpagesize``
5000 and at 500 (requests/s and records/s), and (2) ``UpdateMultiple`` calls of 1000 records
each (requests/s and records/s). Prints one JSON object. Usage:

    .venv/bin/python bench/bench_sandbox_dataverse.py [--leads 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
SELECT = "firstname,lastname,emailaddress1,companyname,modifiedon"


def start_sandbox(leads: int) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "serve", "--no-limits", f"--seed-leads={leads}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    ready = json.loads(process.stdout.readline())
    return process, ready["dataverse"]


def paged_read(client: httpx.Client, page_size: int) -> tuple[int, int, float]:
    prefer = {"Prefer": f"odata.maxpagesize={page_size}"}
    started = time.perf_counter()
    response = client.get("leads", params={"$select": SELECT}, headers=prefer)
    requests, records = 1, 0
    while True:
        response.raise_for_status()
        body = response.json()
        records += len(body["value"])
        link = body.get("@odata.nextLink")
        if not link:
            break
        response = client.get(link, headers=prefer)
        requests += 1
    return requests, records, time.perf_counter() - started


def update_multiple(client: httpx.Client, ids: list[str], round_no: int) -> tuple[int, int, float]:
    started = time.perf_counter()
    calls = 0
    for start in range(0, len(ids), 1000):
        targets = [
            {"@odata.type": "Microsoft.Dynamics.CRM.lead", "leadid": i, "jobtitle": f"Round {round_no}"}
            for i in ids[start : start + 1000]
        ]
        client.post("leads/Microsoft.Dynamics.CRM.UpdateMultiple", json={"Targets": targets}).raise_for_status()
        calls += 1
    return calls, len(ids), time.perf_counter() - started


def rates(samples: list[tuple[int, int, float]]) -> dict[str, Any]:
    requests = sum(s[0] for s in samples)
    records = sum(s[1] for s in samples)
    seconds = sum(s[2] for s in samples)
    return {
        "requests": requests,
        "records": records,
        "seconds": round(seconds, 3),
        "requests_per_s": round(requests / seconds, 1),
        "records_per_s": round(records / seconds),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--leads", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    process, url = start_sandbox(args.leads)
    try:
        headers = {"Authorization": "Bearer sandbox-token", "Accept": "application/json"}
        with httpx.Client(base_url=f"{url}/api/data/v9.2/", headers=headers, timeout=120) as client:
            ids = [row["leadid"] for row in client.get("leads", params={"$select": "leadid"}).json()["value"]]
            ids = ids[: (len(ids) // 1000) * 1000]
            big = [paged_read(client, 5000) for _ in range(args.rounds)]
            small = [paged_read(client, 500) for _ in range(args.rounds)]
            updates = [update_multiple(client, ids, n) for n in range(args.rounds)]
        report = {
            "leads": args.leads,
            "rounds": args.rounds,
            "paged_read_maxpagesize_5000": rates(big),
            "paged_read_maxpagesize_500": rates(small),
            "update_multiple_1000": rates(updates),
        }
        print(json.dumps(report, indent=2))
    finally:
        process.terminate()
        process.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
