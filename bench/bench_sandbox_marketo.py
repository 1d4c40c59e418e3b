"""How many requests a second the Marketo simulator serves on this machine (its ceiling for benchmarks).

Starts ``python -m sandbox serve --no-limits --seed-leads N`` in its own process, then for each
scenario runs a few client threads for a fixed time, each on one keep-alive connection:
``get_lead_by_id`` (``GET /rest/v1/lead/{id}.json``) and ``lead_changes_page_300``
(``GET /rest/v1/activities/leadchanges.json``, 300-item gzip pages walked from a paging token,
restarting at the end). The load generator is the standard library's ``http.client``, because
a heavier client in the same process (httpx costs ~1 ms of CPU a call) would be what is measured
on a 2-core machine. Prints one JSON object.

    .venv/bin/python bench/bench_sandbox_marketo.py [--threads 4] [--seconds 5] [--seed-leads 3000]
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

REPO = Path(__file__).resolve().parents[1]
CREDENTIALS = {
    "grant_type": "client_credentials",
    "client_id": "sandbox-client-id",
    "client_secret": "sandbox-client-secret",
}

Step = Callable[[http.client.HTTPConnection, dict[str, str]], dict[str, Any]]


def _get(
    conn: http.client.HTTPConnection, path: str, params: dict[str, str], headers: dict[str, str]
) -> dict[str, Any]:
    conn.request("GET", f"{path}?{urlencode(params)}", headers={"Accept-Encoding": "gzip", **headers})
    response = conn.getresponse()
    raw = response.read()
    if response.getheader("Content-Encoding") == "gzip":
        raw = gzip.decompress(raw)
    body: dict[str, Any] = json.loads(raw) if response.status == 200 else {"success": False}
    return body


def _lead_by_id(seed: int) -> Callable[[], Step]:
    def make() -> Step:
        rng = random.Random()
        fields = {"fields": "email,firstName"}
        return lambda conn, headers: _get(conn, f"/rest/v1/lead/{rng.randint(1, seed)}.json", fields, headers)

    return make


def _lead_changes(first_token: str) -> Callable[[], Step]:
    def make() -> Step:
        state = {"token": first_token}

        def step(conn: http.client.HTTPConnection, headers: dict[str, str]) -> dict[str, Any]:
            params = {"nextPageToken": state["token"], "fields": "email,firstName", "batchSize": "300"}
            body = _get(conn, "/rest/v1/activities/leadchanges.json", params, headers)
            state["token"] = body["nextPageToken"] if body.get("moreResult") else first_token
            return body

        return step

    return make


def _run(port: int, token: str, make_step: Callable[[], Step], threads: int, seconds: float) -> dict[str, Any]:
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    deadline = time.perf_counter() + seconds

    def worker(n: int) -> None:
        step = make_step()
        headers = {"Authorization": f"Bearer {token}"}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                body = step(conn, headers)
                latencies[n].append(time.perf_counter() - started)
                errors[n] += 0 if body.get("success") else 1
        finally:
            conn.close()

    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    every = sorted(x for per_thread in latencies for x in per_thread)
    return {
        "requests": len(every),
        "errors": sum(errors),
        "requests_per_second": round(len(every) / elapsed, 1),
        "p50_ms": round(statistics.median(every) * 1000, 2),
        "p99_ms": round(every[max(0, int(len(every) * 0.99) - 1)] * 1000, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--seed-leads", type=int, default=3000)
    args = parser.parse_args()

    command = [sys.executable, "-m", "sandbox", "serve", "--no-limits", "--seed-leads", str(args.seed_leads)]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None
            port = int(urlsplit(json.loads(server.stdout.readline())["marketo"]).port or 0)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            token = _get(conn, "/identity/oauth/token", CREDENTIALS, {})["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            paging = _get(conn, "/rest/v1/activities/pagingtoken.json", {"sinceDatetime": "2000-01-01T00:00:00Z"}, auth)
            conn.close()
            scenarios = {
                "get_lead_by_id": _lead_by_id(args.seed_leads),
                "lead_changes_page_300": _lead_changes(paging["nextPageToken"]),
            }
            results = {name: _run(port, token, make, args.threads, args.seconds) for name, make in scenarios.items()}
        finally:
            server.terminate()
            server.wait(10)

    report = {
        "bench": "sandbox_marketo",
        "threads": args.threads,
        "seconds_per_scenario": args.seconds,
        "seed_leads": args.seed_leads,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "results": results,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
