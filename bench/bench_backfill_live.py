"""Live changes while a field backfill runs (issue 18): prints JSON and a table.

The sandbox with its limits on (Marketo's 100 calls / 20 s and 10 in flight) in a process of its
own, Azurite's Table and Queue services, H local hosts (default 3) polling the job queue and
sharing the API budget (``SYNC_SHARED_BUDGET=true``, ``SYNC_BACKGROUND_SHARE``). N Dynamics leads
(default 2,000) go live without the ``title`` field, then Marketo gets a title for each person and
the map gains ``title``. Measured twice — idle, then while ``backfill --field title`` fills the N
leads through the queue — with Marketo's window left to empty in between:

- W webhooks (default 10, one every 0.5 s, each a new person, spread over the hosts): answer
  time p50/p90/max;
- one ``run-once`` cycle (a process, as the timer's run is; its start-up counted in both phases)
  with C new Dynamics leads (default 20), with the go-live's map: wall time.

Reported: both phases and their ratios (during ÷ idle), the backfill's wall time and links, and the
Marketo calls of the busiest 20 s window against the shared budget (``MARKETO_RATE_SHARE`` of 100).

    .venv/bin/python bench/bench_backfill_live.py [--leads 2000] [--chunk-size 50] [--hosts 3] [--webhooks 10]
        [--cycle-leads 20] [--background-share 0.5] [--rate-share 0.5] [--per-process-budget] [--keep-request-log]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._hosts import NO_TIMER, local_hosts, stop
from bench.bench_webhook import ROUTE, SECRET, percentiles
from demo.sandbox_env import sandbox_settings
from sandbox import DataverseOptions, MarketoOptions, SandboxServers
from sandbox.azurite import run_azurite, run_azurite_queue
from sync_core.core.fieldmap import DEFAULT_PATH

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 20.0  # Marketo's rate window


def sandbox_process(conn: Any, request_log: str) -> None:
    """The simulators (limits on), and the few things a user of each system does, on request."""
    with open(request_log, "w", encoding="utf-8") as log:
        servers = SandboxServers(marketo=MarketoOptions(), dataverse=DataverseOptions(), request_log=log).start()
        conn.send((servers.marketo_url, servers.dataverse_url))
        leads: list[str] = []
        while True:
            command, arg = conn.recv()
            if command == "stop":
                break
            if command == "leads":  # (first index, count): new Dynamics leads
                first, count = arg
                new = [
                    str(
                        servers.dataverse.create(
                            "leads",
                            {
                                "emailaddress1": f"lead{i}@example.com",
                                "firstname": f"Lead{i}",
                                "lastname": f"Person{i}",
                                "companyname": f"Company {i}",
                            },
                        )
                    )
                    for i in range(first, first + count)
                ]
                leads += new
                conn.send(len(new))
            elif command == "titles":  # a Marketo title for each linked lead's person
                titled = 0
                for lead in leads:
                    for person in servers.marketo.find_leads("microsoftId", lead):
                        servers.marketo.update_lead(int(person["id"]), {"title": f"Title {lead[:8]}"})
                        titled += 1
                conn.send(titled)
            elif command == "persons":  # new Marketo persons for the webhooks
                conn.send(
                    [
                        servers.marketo.create_lead(
                            {"email": f"web{uuid.uuid4().hex[:10]}@example.com", "lastName": "Web", "company": "Acme"}
                        )
                        for _ in range(arg)
                    ]
                )
            elif command == "filled":  # Dynamics leads whose jobtitle is set
                conn.send(sum(1 for row in servers.dataverse.rows("leads") if row.get("jobtitle")))
            log.flush()
        servers.stop()


def _ask(conn: Any, command: str, arg: Any = None) -> Any:
    conn.send((command, arg))
    return conn.recv()


def _field_map_without_title() -> str:
    spec = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    spec["fields"] = [f for f in spec["fields"] if f["marketo"] != "title"]
    return json.dumps(spec)


def _run(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "sync_core", *args], cwd=ROOT, env=env, check=True, capture_output=True, timeout=900
    )
    return time.perf_counter() - started


def _webhooks(urls: list[str], persons: list[int]) -> list[float]:
    answers: list[float] = []
    failures: list[int] = []

    def call(i: int, person: int) -> None:
        started = time.perf_counter()
        response = httpx.post(
            urls[i % len(urls)] + ROUTE, json={"leadId": person}, headers={"X-Sync-Secret": SECRET}, timeout=60
        )
        answers.append(time.perf_counter() - started)
        if response.status_code != 200:
            failures.append(response.status_code)

    threads = []
    for i, person in enumerate(persons):
        threads.append(threading.Thread(target=call, args=(i, person)))
        threads[-1].start()
        time.sleep(0.5)
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"webhooks answered {failures}")
    return answers


def _phase(
    conn: Any, urls: list[str], env: dict[str, str], *, webhooks: int, cycle_leads: int, first: int
) -> dict[str, Any]:
    persons = _ask(conn, "persons", webhooks)
    _ask(conn, "leads", (first, cycle_leads))
    cycle: dict[str, float] = {}
    runner = threading.Thread(target=lambda: cycle.update(seconds=_run(["run-once"], env)))
    runner.start()
    answers = _webhooks(urls, persons)
    runner.join()
    return {"webhook": percentiles(answers), "cycle_seconds": round(cycle["seconds"], 2)}


def _busiest_window(request_log: str, since: float) -> int:
    starts = sorted(
        r["start"]
        for r in (json.loads(line) for line in Path(request_log).read_text(encoding="utf-8").splitlines())
        if r["service"] == "marketo" and not r["path"].startswith("/identity") and r["start"] >= since
    )
    best, low = 0, 0
    for high, start in enumerate(starts):
        while starts[low] <= start - WINDOW:
            low += 1
        best = max(best, high - low + 1)
    return best


def run(
    *,
    leads: int,
    chunk_size: int,
    hosts: int,
    webhooks: int,
    cycle_leads: int,
    background_share: float,
    rate_share: float,
    shared: bool = True,
    keep_request_log: bool = False,
) -> dict[str, Any]:
    request_log = tempfile.mktemp(suffix=".jsonl")  # noqa: S306 (the child process creates it)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    sandbox = ctx.Process(target=sandbox_process, args=(child, request_log))
    sandbox.start()
    marketo_url, dataverse_url = parent.recv()
    procs: list[subprocess.Popen[str]] = []  # the backfill (the hosts are ``local_hosts``')
    try:
        with run_azurite() as tables, run_azurite_queue() as queues, ExitStack() as running:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("SYNC_", "MARKETO_", "DATAVERSE_"))},
                **sandbox_settings(
                    marketo_url,
                    dataverse_url,
                    tables_connection=tables,
                    table_prefix="b" + uuid.uuid4().hex[:10],
                    WEBHOOK_SHARED_SECRET=SECRET,
                ),
                "AzureWebJobsStorage": queues,
                "SYNC_QUEUE_CONNECTION": queues,
                "SYNC_JOBS_QUEUE": "q" + uuid.uuid4().hex[:12],
                "SYNC_SHARED_BUDGET": str(shared).lower(),
                "SYNC_BACKGROUND_SHARE": str(background_share),
                "MARKETO_RATE_SHARE": str(rate_share),
                "SYNC_SCHEDULE": NO_TIMER,  # no timer cycle: the bench runs its own
            }
            _ask(parent, "leads", (0, leads))
            golive = _run(["run-once"], {**env, "SYNC_FIELD_MAP": _field_map_without_title()})
            titled = _ask(parent, "titles")
            # The measured cycles keep the go-live's map: a cycle whose map gained a field restarts its
            # Dataverse delta (a new $select) and fills the field itself, which would leave the backfill
            # nothing to write. This one moves the cursor past the title changes.
            cycle_env = {**env, "SYNC_FIELD_MAP": _field_map_without_title()}
            _run(["run-once"], cycle_env)
            urls = running.enter_context(local_hosts(env, hosts))
            _webhooks(urls, _ask(parent, "persons", hosts))  # warm-up: each host builds its clients
            time.sleep(WINDOW + 1)  # Marketo's window empties of the go-live's calls
            idle = _phase(parent, urls, cycle_env, webhooks=webhooks, cycle_leads=cycle_leads, first=leads)
            time.sleep(WINDOW + 1)
            since = time.time()
            backfill_started = time.perf_counter()
            backfill = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sync_core",
                    "backfill",
                    "--field",
                    "title",
                    "--quiet",
                    "--chunk-size",
                    str(chunk_size),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append(backfill)
            time.sleep(2.0)  # its chunks are on the queue and running
            during = _phase(
                parent, urls, cycle_env, webhooks=webhooks, cycle_leads=cycle_leads, first=leads + cycle_leads
            )
            out, err = backfill.communicate(timeout=1800)
            backfill_seconds = time.perf_counter() - backfill_started
            if backfill.returncode != 0:
                raise RuntimeError(f"backfill failed: {err[-500:]}")
            summary = json.loads(out)
            filled = _ask(parent, "filled")
            busiest = _busiest_window(request_log, since)
    finally:
        stop(procs)
        parent.send(("stop", None))
        sandbox.join(timeout=30)
        if keep_request_log:
            print(f"request log kept: {request_log}", file=sys.stderr)
        else:
            Path(request_log).unlink(missing_ok=True)

    def ratio(key: str) -> float:
        return round(during["webhook"][key] / idle["webhook"][key], 2)

    return {
        "leads": leads,
        "chunk_size": chunk_size,
        "hosts": hosts,
        "shared_budget": shared,
        "background_share": background_share,
        "marketo_rate_share": rate_share,
        "golive_seconds": round(golive, 1),
        "persons_titled": titled,
        "idle": idle,
        "during_backfill": during,
        "ratio_during_over_idle": {
            "webhook_p50": ratio("p50_ms"),
            "webhook_max": ratio("max_ms"),
            "cycle": round(during["cycle_seconds"] / idle["cycle_seconds"], 2),
        },
        "backfill": {
            "seconds": round(backfill_seconds, 1),
            "chunks": summary["chunks"],
            "written": summary["totals"].get("written", 0),
            "failed": summary["totals"].get("failed", 0),
            "dynamics_leads_with_title": filled,
        },
        "marketo_busiest_20s": {"calls": busiest, "shared_budget": int(100 * rate_share)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=2000)
    parser.add_argument("--chunk-size", type=int, default=50, help="links per backfill chunk (default 50)")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--webhooks", type=int, default=10)
    parser.add_argument("--cycle-leads", type=int, default=20)
    parser.add_argument("--background-share", type=float, default=0.5)
    parser.add_argument("--rate-share", type=float, default=0.5)
    parser.add_argument("--per-process-budget", action="store_true", help="SYNC_SHARED_BUDGET=false (to compare)")
    parser.add_argument(
        "--keep-request-log", action="store_true", help="keep the simulators' request log (start and ms per request)"
    )
    args = parser.parse_args()
    result = run(
        leads=args.leads,
        chunk_size=args.chunk_size,
        hosts=args.hosts,
        webhooks=args.webhooks,
        cycle_leads=args.cycle_leads,
        background_share=args.background_share,
        rate_share=args.rate_share,
        shared=not args.per_process_budget,
        keep_request_log=args.keep_request_log,
    )
    print(json.dumps(result, indent=2))
    idle, during = result["idle"], result["during_backfill"]
    print("\n| measure | idle | during backfill | ratio |\n|---|---|---|---|", file=sys.stderr)
    for key in ("p50_ms", "max_ms"):
        print(
            f"| webhook {key} | {idle['webhook'][key]} | {during['webhook'][key]} | "
            f"{round(during['webhook'][key] / idle['webhook'][key], 2)} |",
            file=sys.stderr,
        )
    cycle_ratio = result["ratio_during_over_idle"]["cycle"]
    print(f"| run-once (s) | {idle['cycle_seconds']} | {during['cycle_seconds']} | {cycle_ratio} |", file=sys.stderr)


if __name__ == "__main__":
    main()
