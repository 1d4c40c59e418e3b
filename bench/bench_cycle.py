"""A sync cycle of N changes on the sandbox (limits off), measured: prints JSON.

For each N (default 1,000 / 10,000 / 100,000): the Dataverse simulator is seeded with N leads
and N contacts, Marketo with the N persons of the leads; set-up cycles link or create them all
and settle. Then N changes, mixed directions: N/2 persons edited in Marketo, N/2 other records
edited in Dynamics (half leads, half contacts; one field each). The measured cycle runs in a
fresh process (a cold Functions instance: no token, no client cache; the schema comes from the
state store), so its peak RSS is the engine's own; the simulators run in a process of their own.

Reported per N, next to the floor the batch sizes allow:
- API calls per service. Marketo: ⌈changes read/300⌉ + ⌈persons written/300⌉; Dataverse:
  ⌈records written/1000⌉ per table (a bulk message writes one table; the edits are half leads,
  half contacts) and the delta reads, ⌈rows/5000⌉ per table; the goal is ≤ 1.10 x floor + 4 per
  service;
- Table transactions next to ⌈N/100⌉ (a link is two rows, written together);
- wall and CPU seconds, peak RSS, and the Table seconds: the wall time during which at least one
  Table Storage request of the state store was in flight (requests overlap, so this is not their
  sum); then the echo cycle that follows and an idle cycle, warm and cold.

    .venv/bin/python bench/bench_cycle.py [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing as mp
import os
import pickle
import resource
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.sandbox_env import sandbox_settings
from sandbox import DataverseOptions, MarketoOptions, SandboxServers
from sandbox.azurite import azurite_version, run_azurite
from sync_core.cycle.engine import SyncEngine
from sync_core.settings import Settings
from sync_core.state import MemoryStateStore
from sync_core.wiring.services import build_services


def sandbox_process(conn: Any, n: int) -> None:
    """The simulators, seeded, in their own process; edits on command through the pipe."""
    servers = SandboxServers(
        marketo=MarketoOptions(limits=False, seed_leads=n),
        dataverse=DataverseOptions(limits=False, seed_leads=n, seed_contacts=n),
    ).start()
    conn.send((servers.marketo_url, servers.dataverse_url))
    while True:
        command, arg = conn.recv()
        if command == "edit":
            conn.send(_edit(servers, arg))
        elif command == "stop":
            servers.stop()
            conn.send("stopped")
            return


def _edit(servers: SandboxServers, n: int) -> dict[str, int]:
    """n changes: n/2 persons edited in Marketo, n/2 other records in Dynamics, half leads, half contacts."""
    marketo, dataverse = servers.marketo, servers.dataverse
    quarter = n // 4
    leads = [row["leadid"] for row in dataverse.rows("leads")]
    contacts = [row["contactid"] for row in dataverse.rows("contacts")]
    tag = uuid.uuid4().hex[:6]
    person_of = {}
    for lead_id in marketo.db.lead_ids():
        person = marketo.get_lead(lead_id)
        if person and person.get("microsoftId"):
            person_of[person["microsoftId"]] = lead_id
    edited = {"marketo": 0, "dynamics": 0}
    for ids in (leads[:quarter], contacts[:quarter]):
        for record_id in ids:
            marketo.update_lead(person_of[record_id], {"title": f"m-{tag}-{record_id[:8]}"})
            edited["marketo"] += 1
    for entity_set, ids in (("leads", leads[quarter : 2 * quarter]), ("contacts", contacts[quarter : 2 * quarter])):
        for record_id in ids:
            dataverse.update(entity_set, record_id, {"jobtitle": f"d-{tag}-{record_id[:8]}"})
            edited["dynamics"] += 1
    return edited


def _proc_status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


class TableClock:
    """Wall seconds during which at least one Table request was in flight."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._busy = 0
        self._since = 0.0
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._busy == 0:
                self._since = time.perf_counter()
            self._busy += 1

    def stop(self) -> None:
        with self._lock:
            self._busy -= 1
            if self._busy == 0:
                self.seconds += time.perf_counter() - self._since


def time_table_requests(store: Any) -> TableClock:
    """Time the requests of ``store``'s row backend: each verb, and each page of a query or scan
    as it is fetched (the store's own code and the engine's are outside)."""
    clock = TableClock()
    rows = store._rows

    def timed(verb: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            clock.start()
            try:
                return verb(*args, **kwargs)
            finally:
                clock.stop()

        return call

    def timed_pages(fetch: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def pages(*args: Any, **kwargs: Any) -> Iterator[Any]:
            source = fetch(*args, **kwargs)
            while True:
                clock.start()
                try:
                    page = list(next(source))
                except StopIteration:
                    return
                finally:
                    clock.stop()
                yield page

        return pages

    for name in ("_get", "_insert", "_replace", "_delete", "_transact"):
        setattr(rows, name, timed(getattr(rows, name)))
    for name in ("_query_pages", "_scan_pages"):
        setattr(rows, name, timed_pages(getattr(rows, name)))
    return clock


def measured_cycle(conn: Any, env: dict[str, str], store_file: str | None) -> None:
    """One cycle in a fresh process: its report, wall/CPU seconds and peak RSS.

    With ``store_file`` (``--store memory``) the state is a memory store loaded from that pickle
    (and saved back after the cycle); the peak is then reset after loading (Linux
    ``/proc/self/clear_refs``), so ``cycle_added_mb`` is what the cycle itself adds."""
    store = None
    before_store = _proc_status_mb("VmRSS")
    if store_file is not None:
        store = MemoryStateStore(prefix=env["SYNC_TABLE_PREFIX"])
        store._rows._tables = pickle.loads(Path(store_file).read_bytes())  # noqa: S301 - this run's own temp file
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
    base = _proc_status_mb("VmRSS")
    services = build_services(Settings.from_env(env), store=store)
    table_clock = time_table_requests(services.store)
    started, cpu = time.perf_counter(), time.process_time()
    report = SyncEngine.from_services(services).run_cycle()
    peak = _proc_status_mb("VmHWM") if store is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    conn.send(
        {
            "outcome": str(report.outcome),
            "report": report.report.as_json(),
            "wall_seconds": round(time.perf_counter() - started, 2),
            "cpu_seconds": round(time.process_time() - cpu, 2),
            "table_seconds": round(table_clock.seconds, 2),
            "peak_rss_mb": round(peak, 1),
            "cycle_added_mb": round(peak - base, 1),
            # The peak without the loaded state (what a process whose state is in Table Storage holds).
            "peak_rss_without_state_mb": round(peak - (base - before_store), 1),
        }
    )
    services.close()
    if store is not None and store_file is not None:
        Path(store_file).write_bytes(pickle.dumps(store._rows._tables))


def settle(engine: SyncEngine, max_cycles: int = 6) -> list[float | None]:
    """Cycles until one writes and pulls nothing (everything linked or created, the echoes
    read back); each cycle's seconds."""
    seconds = []
    for _ in range(max_cycles):
        body = engine.run_cycle().report
        seconds.append(body.seconds)
        if not (body.written.marketo or body.written.dynamics or body.pulled.marketo):
            break
    return seconds


def in_fresh_process(env: dict[str, str], store_file: str | None = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=measured_cycle, args=(child, env, store_file))
    process.start()
    result: dict[str, Any] = parent.recv()
    process.join()
    return result


def floors(changes: dict[str, int], n: int) -> dict[str, Any]:
    m, d = changes["marketo"], changes["dynamics"]
    # The Marketo edits are half leads, half contacts, and a bulk message writes one table.
    dataverse_writes = 2 * math.ceil(m / 2 / 1000)
    dataverse_reads = 2 * max(1, math.ceil((d / 2) / 5000))
    return {
        "marketo": math.ceil(m / 300) + math.ceil(d / 300),
        "dataverse_writes": dataverse_writes,
        "dataverse_reads": dataverse_reads,
        "dataverse": dataverse_writes + dataverse_reads,
        "table_transactions": math.ceil((m + d) / 100),
    }


def api_summary(result: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    calls = result["report"]["api_calls"]
    out: dict[str, Any] = {}
    for service in ("marketo", "dataverse"):
        goal = 1.10 * floor[service] + 4
        out[service] = {"calls": calls[service], "floor": floor[service], "goal": round(goal, 1)}
        out[service]["within_goal"] = calls[service] <= goal
    out["dataverse"]["floor_writes_only"] = floor["dataverse_writes"]
    out["by_operation"] = calls["by_operation"]
    out["token_calls"] = result["report"]["token_calls"]
    return out


def run_size(n: int, connection: str, *, memory: bool = False) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    sandbox = ctx.Process(target=sandbox_process, args=(child, n))
    sandbox.start()
    marketo_url, dataverse_url = parent.recv()
    env = sandbox_settings(
        marketo_url,
        dataverse_url,
        tables_connection=connection,
        table_prefix="b" + uuid.uuid4().hex[:10],
        MARKETO_RATE_SHARE="1",
    )
    store = MemoryStateStore(prefix=env["SYNC_TABLE_PREFIX"]) if memory else None
    store_file = None
    try:
        services = build_services(Settings.from_env(env), store=store)
        engine = SyncEngine.from_services(services)
        setup_started = time.perf_counter()
        setup = settle(engine)
        setup_seconds = time.perf_counter() - setup_started
        parent.send(("edit", 2 * n))
        changes = parent.recv()
        if store is not None:
            handle, store_file = tempfile.mkstemp(suffix=".pickle")
            os.close(handle)
            Path(store_file).write_bytes(pickle.dumps(store._rows._tables))
        result = in_fresh_process(env, store_file)
        floor = floors(changes, n)
        echo = in_fresh_process(env, store_file)
        idle_cold = in_fresh_process(env, store_file)
        if store is not None and store_file is not None:
            store._rows._tables = pickle.loads(Path(store_file).read_bytes())  # noqa: S301 - this run's own temp file
        idle_warm = engine.run_cycle().report.as_json()
        table = result["report"]["table"]
        return {
            "n": sum(changes.values()),
            "changes": changes,
            "setup": {"cycles": len(setup), "seconds": round(setup_seconds, 1), "first_cycle_seconds": setup[0]},
            "cycle": {
                "outcome": result["outcome"],
                "api": api_summary(result, floor),
                "table_transactions": {
                    "batches": table["transactions"],
                    "single_writes": table["writes"],
                    "reads": table["reads"],
                    "floor": floor["table_transactions"],
                },
                "written": result["report"]["written"],
                "wall_seconds": result["wall_seconds"],
                "cpu_seconds": result["cpu_seconds"],
                "table_seconds": result["table_seconds"],
                "peak_rss_mb": result["peak_rss_mb"],
                "cycle_added_mb": result["cycle_added_mb"],
                "peak_rss_without_state_mb": result["peak_rss_without_state_mb"],
                "report": result["report"],
            },
            "echo_cycle": {
                "api_calls": {k: echo["report"]["api_calls"][k] for k in ("marketo", "dataverse")},
                "written": echo["report"]["written"],
                "seconds": echo["wall_seconds"],
                "table_seconds": echo["table_seconds"],
                "table": {k: echo["report"]["table"][k] for k in ("reads", "writes", "transactions")},
            },
            "idle_cycle": {
                "warm": {
                    "api_calls": idle_warm["api_calls"]["marketo"] + idle_warm["api_calls"]["dataverse"],
                    "token_calls": idle_warm["token_calls"],
                },
                "cold": {
                    "api_calls": idle_cold["report"]["api_calls"]["marketo"]
                    + idle_cold["report"]["api_calls"]["dataverse"],
                    "token_calls": idle_cold["report"]["token_calls"],
                },
            },
        }
    finally:
        if store_file is not None:
            Path(store_file).unlink(missing_ok=True)
        parent.send(("stop", None))
        parent.recv()
        sandbox.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated N (changes per cycle)")
    parser.add_argument("--full-report", action="store_true", help="include each measured cycle's whole run report")
    parser.add_argument(
        "--store",
        choices=["azurite", "memory"],
        default="azurite",
        help="state store: Azurite (default), or in memory, to measure the engine without the Azure SDK's "
        "and Azurite's CPU (the engine's API calls and Table operations are the same)",
    )
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    results = []
    with run_azurite() as connection:
        for n in sizes:
            result = run_size(n // 2, connection, memory=args.store == "memory")
            if not args.full_report:
                result["cycle"].pop("report")
            results.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    summary: dict[str, Any] = {"store": args.store, "azurite": azurite_version(), "results": results}
    by_n = {r["n"]: r["cycle"] for r in results}
    if 10_000 in by_n and 100_000 in by_n:
        summary["rss_100k_over_10k"] = round(by_n[100_000]["peak_rss_mb"] / by_n[10_000]["peak_rss_mb"], 2)
        summary["peak_without_state_100k_over_10k"] = round(
            by_n[100_000]["peak_rss_without_state_mb"] / by_n[10_000]["peak_rss_without_state_mb"], 2
        )
        summary["cycle_added_100k_over_10k"] = round(
            by_n[100_000]["cycle_added_mb"] / max(0.1, by_n[10_000]["cycle_added_mb"]), 2
        )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
