"""Sync cycles of N changes against the simulators' realistic latency model, next to the floor.

For each N (default 10,000): the scenario of ``bench_cycle.py`` (N/2 leads and N/2 contacts in
Dataverse, the persons of the leads in Marketo; set-up cycles link or create them all; then N/2
persons edited in Marketo and N/2 other records edited in Dynamics). The set-up runs with the
simulators instant and their limits off; the ``realistic`` profile (``sandbox/_profile.py``) and
the services' limits are switched on only after the edits, for the measured cycles. Those run
one after the other, each in a fresh process (a cold instance), until one writes nothing and
has no backlog (the last is the echo cycle reading the sync's own writes back). The simulators
run in a process of their own and log every request (``start``, ``ms``) to a request log.

Per cycle:
- wall seconds (the engine's ``run_cycle``), the service floor and wall ÷ floor. The floor is the
  largest of, per service, over the requests the request log has in that cycle's time span:
  - Marketo: Σ request time ÷ (10 in flight x MARKETO_RATE_SHARE); calls ÷ (100 x share) x 20 s;
  - Dataverse: Σ request time ÷ the allowed concurrency (the profile's ``x-ms-dop-hint``, capped
    by the 52-request limit and by what the sync is configured to use, ``--dataverse-cap``);
    requests ÷ 6,000 x 300 s; Σ request time ÷ 1,200 s x 300 s (execution time per user).
  The rate bounds are sustained rates: a burst shorter than a window may beat them. ``time_scale``
  scales every latency but not the limits' windows, so at ``--time-scale 0.1`` the rate bounds
  weigh ten times more; the report says which bound dominates;
- API calls per service next to the call floor for what the cycle did (Marketo ⌈changes read
  /300⌉ + ⌈persons written/300⌉; Dataverse, per table, ⌈records its bulk messages wrote/1000⌉ (a
  message writes one table; the request log's ``records``) + ⌈rows/5000⌉ delta pages per table),
  Table transactions, peak RSS of the cycle's process;
- where the time goes: per service, Σ ms and requests by method and path pattern; the time any
  request was in flight, so ``wall - in flight`` is the time spent on neither service (Table
  Storage, the engine's CPU); the CPU seconds Azurite and the simulators' process used during the
  cycle (``cpu_beside``, from ``/proc``): Azurite serves every request on one thread, so its CPU
  seconds bound the wall as a service's time does, a bound of this machine, not of Table Storage;
  and, not in the floor, the change feed's chain (first page's start to last page's end: each page
  needs the token the one before returned) plus the Dataverse writes' latency bound, what this
  design (the persons step's writes wait for the whole feed) cannot beat.

With ``--cycle-budget S`` each size runs twice from the same scenario: once as above (cycles with
no budget: one uninterrupted cycle does the work) and once with ``SYNC_CYCLE_BUDGET_SECONDS=S``,
each cycle killed if it passes ``--function-timeout`` (the host's ``functionTimeout``); it then
prints the ticks the budgeted run took, its total wall ÷ the uninterrupted run's and its API calls
÷ the uninterrupted run's (each total up to and including the cycle that finds nothing left).

    .venv/bin/python bench/bench_realworld.py [--sizes 10000,100000] [--time-scale 0.1]
    .venv/bin/python bench/bench_realworld.py --sizes 100000 --cycle-budget 420 --function-timeout 600 --store memory

``--store memory`` keeps the state in a memory store pickled between the cycles' processes (as
``bench_cycle.py --store memory``): the same API calls, without Azurite's time, for large N.

Human tables go to stderr, the JSON to stdout (and ``--json-out FILE``).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import pickle
import re
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_cycle import _edit, measured_cycle, settle

from demo.sandbox_env import sandbox_settings
from sandbox import DataverseOptions, MarketoOptions, SandboxServers, _profile
from sandbox.azurite import azurite_version, run_azurite
from sandbox.dataverse._latency import Meter
from sync_core.cycle.engine import SyncEngine
from sync_core.settings import Settings
from sync_core.state import MemoryStateStore
from sync_core.wiring.services import build_services

MARKETO_IDENTITY = "/identity/oauth/token"
DATAVERSE_API = "/api/data/"


# -- CPU time of the processes beside the cycle's (Linux's /proc; None elsewhere) ----------------


def cpu_seconds_of(pid: int | None) -> float | None:
    """User + system CPU seconds process ``pid`` has used so far (its threads included)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def azurite_pid(connection: str) -> int | None:
    """The Azurite process serving ``connection`` (its Table port on its command line)."""
    found = re.search(r"TableEndpoint=https?://[^:/]+:(\d+)", connection)
    if found is None:
        return None
    wanted = ["--tablePort", found.group(1)]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(args[i : i + 2] == wanted for i in range(len(args) - 1)):
            return int(proc.name)
    return None


class CpuMeter:
    """CPU seconds Azurite and the simulators' process use between ``start`` and ``stop`` (one cycle)."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self._pids = pids
        self._before: dict[str, float | None] = {}

    def start(self) -> None:
        self._before = {name: cpu_seconds_of(pid) for name, pid in self._pids.items()}

    def stop(self) -> dict[str, float | None]:
        used: dict[str, float | None] = {}
        for name, pid in self._pids.items():
            now, before = cpu_seconds_of(pid), self._before.get(name)
            used[name] = round(now - before, 2) if now is not None and before is not None else None
        return used


# -- the simulators' process -------------------------------------------------------------------


def sandbox_process(conn: Any, n: int, profile: _profile.Profile, log_path: str) -> None:
    """The simulators, seeded, instant until told ``realistic``; edits on command through the pipe.

    The profile's limit figures are on the options from the start (the limiters are built from
    them), but enforced (``limits``) and slept (the Dataverse meter, the Marketo profile) only
    from ``realistic`` on, so the set-up of N records does not take the realistic time."""
    marketo = MarketoOptions(limits=False, seed_leads=n)
    dataverse = DataverseOptions(limits=False, seed_leads=n, seed_contacts=n)
    _profile.apply(profile, marketo=marketo, dataverse=dataverse)
    with open(log_path, "a", encoding="utf-8") as log:
        servers = SandboxServers(marketo=marketo, dataverse=dataverse, request_log=log).start()
        try:
            realistic_meter = servers.dataverse.meter
            servers.dataverse.meter = Meter(_profile.DataverseProfile(), time.sleep)
            marketo.profile = _profile.MarketoProfile()
            conn.send((servers.marketo_url, servers.dataverse_url))
            while True:
                command, arg = conn.recv()
                if command == "edit":
                    conn.send(_edit(servers, arg))
                elif command == "realistic":
                    servers.dataverse.meter = realistic_meter
                    marketo.profile = profile.marketo
                    marketo.limits = dataverse.limits = True
                    conn.send("realistic")
                elif command == "stop":
                    break
        finally:
            servers.stop()
    conn.send("stopped")


# -- the request log ---------------------------------------------------------------------------


class RequestLog:
    """The simulators' request log, read as it grows; requests by the interval they started in."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._requests: list[dict[str, Any]] = []

    def _read(self) -> None:
        with self.path.open("r", encoding="utf-8") as file:
            file.seek(self._offset)
            for line in file:
                if not line.endswith("\n"):
                    break  # a line still being written: read it next time
                self._offset += len(line.encode("utf-8"))
                self._requests.append(json.loads(line))

    def between(self, start: float, end: float) -> list[dict[str, Any]]:
        self._read()
        return [r for r in self._requests if start <= r["start"] <= end]


_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_NUMBER = re.compile(r"(?<=/)\d+(?=[/.]|$)")


def pattern(request: dict[str, Any]) -> str:
    """``METHOD path`` with ids, keys and numbers replaced, e.g. ``PATCH /api/data/v9.2/leads({id})``."""
    path = _NUMBER.sub("{n}", _GUID.sub("{id}", request["path"]))
    return f"{request['method']} {path}"


def in_flight_seconds(requests: list[dict[str, Any]]) -> float:
    """The length of the union of the requests' intervals: time at least one was being served."""
    total, end = 0.0, -math.inf
    for start, stop in sorted((r["start"], r["start"] + r["ms"] / 1000) for r in requests):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def time_by_pattern(requests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per service, per request pattern: requests and Σ seconds, largest first."""
    out: dict[str, dict[str, Any]] = {}
    for service in ("dataverse", "marketo"):
        sums: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for r in requests:
            if r["service"] == service:
                sums[pattern(r)][0] += 1
                sums[pattern(r)][1] += r["ms"] / 1000
        out[service] = {
            key: {"requests": int(count), "seconds": round(seconds, 2)}
            for key, (count, seconds) in sorted(sums.items(), key=lambda item: -item[1][1])
        }
    return out


# -- the floor ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What the floor divides by: the profile's limits and what the sync is configured to use."""

    profile: _profile.Profile
    marketo_share: float
    dataverse_cap: int | None
    rate_bound: str = "sustained"  # or "window" (see service_floor)

    @property
    def dataverse_concurrency(self) -> int:
        dv = self.profile.dataverse
        allowed = min(dv.dop_hint, dv.max_concurrent)
        return min(allowed, self.dataverse_cap) if self.dataverse_cap else allowed

    @property
    def marketo_concurrency(self) -> float:
        return self.profile.marketo.max_concurrent * self.marketo_share


def service_floor(requests: list[dict[str, Any]], limits: Limits) -> dict[str, Any]:
    """The bounds per service (seconds) for these requests; the floor is the largest."""
    mk, dv = limits.profile.marketo, limits.profile.dataverse
    marketo = [r for r in requests if r["service"] == "marketo" and not r["path"].startswith("/_sandbox")]
    marketo_calls = [r for r in marketo if r["path"] != MARKETO_IDENTITY]  # the identity call is not rate-limited
    dataverse = [r for r in requests if r["service"] == "dataverse" and r["path"].startswith(DATAVERSE_API)]
    marketo_ms = sum(r["ms"] for r in marketo)
    dataverse_ms = sum(r["ms"] for r in dataverse)
    # A rate limit of `limit` per `window` (sliding): the sustained bound is used / limit x window;
    # the window bound, (⌈used / limit⌉ - 1) x window, is what a single burst starting on an empty
    # window must take at least (the first `limit` go at once).
    rates = {
        "marketo.rate": (len(marketo_calls), mk.rate_limit_calls * limits.marketo_share, mk.rate_limit_window),
        "dataverse.requests": (len(dataverse), dv.max_requests, dv.window_seconds),
        "dataverse.execution": (dataverse_ms, dv.max_execution_ms, dv.window_seconds),
    }
    sustained = {name: used / limit * window for name, (used, limit, window) in rates.items()}
    windowed = {name: max(0, math.ceil(used / limit) - 1) * window for name, (used, limit, window) in rates.items()}
    bounds = {
        "marketo.latency": marketo_ms / 1000 / limits.marketo_concurrency,
        "dataverse.latency": dataverse_ms / 1000 / limits.dataverse_concurrency,
        **(sustained if limits.rate_bound == "sustained" else windowed),
    }
    other = windowed if limits.rate_bound == "sustained" else sustained
    dominant = max(bounds, key=lambda name: bounds[name])
    statuses: dict[str, int] = defaultdict(int)
    for r in requests:
        if r["status"] >= 400:
            statuses[f"{r['service']} {r['status']}"] += 1
    # Not in the floor: the change feed is one paging token after the other (each page's request
    # needs the token the page before returned), and the persons step's bulk writes need the whole
    # feed read (a person's latest change may be on its last page). So this design cannot end before
    # the feed's chain plus the Dataverse writes' latency bound.
    feed = [r for r in marketo if r["path"].endswith("/activities/leadchanges.json")]
    feed_chain = max(r["start"] + r["ms"] / 1000 for r in feed) - min(r["start"] for r in feed) if feed else 0.0
    writes_ms = sum(r["ms"] for r in dataverse if r["method"] != "GET")
    return {
        "floor_seconds": round(bounds[dominant], 2),
        "dominant": dominant,
        "feed_chain_seconds": round(feed_chain, 2),
        "feed_then_writes_seconds": round(feed_chain + writes_ms / 1000 / limits.dataverse_concurrency, 2),
        "bounds": {name: round(seconds, 2) for name, seconds in bounds.items()},
        "rate_bound": limits.rate_bound,
        "other_rate_bounds": {name: round(seconds, 2) for name, seconds in other.items()},  # not in the floor
        "requests": {
            "marketo": len(marketo),
            "marketo_rate_limited_calls": len(marketo_calls),
            "dataverse": len(dataverse),
        },
        "service_seconds": {"marketo": round(marketo_ms / 1000, 2), "dataverse": round(dataverse_ms / 1000, 2)},
        "in_flight_seconds": {
            "marketo": round(in_flight_seconds(marketo), 2),
            "dataverse": round(in_flight_seconds(dataverse), 2),
            "either": round(in_flight_seconds(marketo + dataverse), 2),
        },
        "error_statuses": dict(statuses),
    }


def call_floor(report: dict[str, Any], requests: list[dict[str, Any]]) -> dict[str, int]:
    """The fewest API calls the batch sizes allow for what this cycle read and wrote. A bulk message
    writes one table, so the Dataverse writes' floor is, per table, ⌈records / 1000⌉ (the records of
    its bulk messages answered, from the request log), plus ⌈records written otherwise / 1000⌉."""
    pulled, written = report.get("pulled", {}), report.get("written", {})
    marketo = max(1, math.ceil(pulled.get("marketo", 0) / 300)) + math.ceil(written.get("marketo", 0) / 300)
    # One delta read per table at least (leads, contacts), 5,000 rows a page; rows split evenly.
    delta = 2 * max(1, math.ceil(pulled.get("dynamics", 0) / 2 / 5000))
    bulk: dict[str, int] = defaultdict(int)
    for r in requests:
        if r["service"] == "dataverse" and r.get("records") and r["status"] < 300:
            bulk[r["path"].rsplit("/", 2)[-2]] += r["records"]  # …/leads/Microsoft.Dynamics.CRM.UpdateMultiple
    other = max(0, written.get("dynamics", 0) - sum(bulk.values()))
    writes = sum(math.ceil(records / 1000) for records in bulk.values()) + math.ceil(other / 1000)
    return {"marketo": marketo, "dataverse": writes + delta}


# -- the measured cycles -----------------------------------------------------------------------


class CycleTimeout(RuntimeError):
    pass


def cycle_in_fresh_process(env: dict[str, str], timeout: float, store_file: str | None = None) -> dict[str, Any]:
    """``bench_cycle.measured_cycle`` in a fresh process; killed after ``timeout`` seconds. With
    ``store_file`` the state is the memory store pickled there (``--store memory``)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=measured_cycle, args=(child, env, store_file))
    process.start()
    deadline = time.monotonic() + timeout
    try:
        while not parent.poll(1.0):
            if not process.is_alive():
                raise RuntimeError(f"the cycle's process ended without a result (exit code {process.exitcode})")
            if time.monotonic() > deadline:
                raise CycleTimeout(f"the cycle did not finish within {timeout:g} s")
        result: dict[str, Any] = parent.recv()
        process.join(timeout=60)
        return result
    finally:
        if process.is_alive():
            process.kill()
            process.join()


def cycle_row(
    index: int,
    result: dict[str, Any],
    requests: list[dict[str, Any]],
    limits: Limits,
    beside: dict[str, float | None],
) -> dict[str, Any]:
    report = result["report"]
    floor = service_floor(requests, limits)
    calls, table = report.get("api_calls", {}), report.get("table", {})
    call_floors = call_floor(report, requests)
    wall = result["wall_seconds"]
    return {
        "cycle": index,
        "outcome": result["outcome"],
        "error": report.get("error"),  # why a cycle ended early (an outage, a refused request)
        "wall_seconds": wall,
        "floor": floor,
        "wall_over_floor": round(wall / floor["floor_seconds"], 2) if floor["floor_seconds"] else None,
        # Time no request to either service was in flight: the engine's CPU and Table Storage.
        "outside_services_seconds": round(wall - floor["in_flight_seconds"]["either"], 2),
        "outside_services_less_cpu_seconds": round(
            wall - floor["in_flight_seconds"]["either"] - result["cpu_seconds"], 2
        ),
        "api_calls": {
            service: {"calls": calls.get(service, 0), "floor": call_floors[service]}
            for service in ("marketo", "dataverse")
        },
        "by_operation": calls.get("by_operation", {}),
        "table_transactions": table.get("transactions", 0) + table.get("writes", 0),
        "table": table,
        "pulled": report.get("pulled", {}),
        "written": report.get("written", {}),
        "backlog": report.get("backlog"),
        "left": report.get("left"),
        "cpu_seconds": result["cpu_seconds"],
        # CPU seconds the processes beside the cycle's used meanwhile (None: not measured): Azurite
        # serves Table Storage on one thread, so its figure bounds the wall as a service's does.
        "cpu_beside": beside,
        "peak_rss_mb": result["peak_rss_mb"],
        "time_by_pattern": time_by_pattern(requests),
    }


def finished(row: dict[str, Any]) -> bool:
    """Everything applied: the cycle did its work, was not cut by its budget, wrote nothing and left no backlog."""
    written, backlog = row["written"], row["backlog"] or {}
    return (
        row["outcome"] in ("ok", "partial")
        and not row.get("left")
        and not written.get("marketo")
        and not written.get("dynamics")
        and not sum(backlog.values())
    )


def _stop_sandbox(parent: Any, sandbox: Any) -> None:
    try:
        parent.send(("stop", None))
        if parent.poll(30):
            parent.recv()
    except (OSError, EOFError):
        pass
    sandbox.join(timeout=30)
    if sandbox.is_alive():
        sandbox.kill()
        sandbox.join()


def _answer(parent: Any, sandbox: Any, timeout: float) -> Any:
    if not parent.poll(timeout):
        raise RuntimeError(f"the simulators' process did not answer within {timeout:g} s (alive: {sandbox.is_alive()})")
    return parent.recv()


def run_size(n: int, connection: str, args: argparse.Namespace, profile: _profile.Profile) -> dict[str, Any]:
    """N changes (n/2 a side): set up, edit, then measured cycles until all are applied."""
    half = n // 2
    store_file: str | None = None  # --store memory: the state between the cycles' processes
    if args.request_log:
        log_path = Path(args.request_log)
    else:
        handle, name = tempfile.mkstemp(prefix="realworld-", suffix=".jsonl")
        os.close(handle)
        log_path = Path(name)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    sandbox = ctx.Process(target=sandbox_process, args=(child, half, profile, str(log_path)))
    sandbox.start()
    try:
        marketo_url, dataverse_url = _answer(parent, sandbox, 600)
        env = sandbox_settings(
            marketo_url,
            dataverse_url,
            tables_connection=connection,
            table_prefix="r" + uuid.uuid4().hex[:10],
            MARKETO_RATE_SHARE=str(args.marketo_rate_share),
            **dict(item.split("=", 1) for item in args.env),
        )
        memory = MemoryStateStore(prefix=env["SYNC_TABLE_PREFIX"]) if args.store == "memory" else None
        services = build_services(Settings.from_env(env), store=memory)
        started = time.perf_counter()
        try:
            setup = settle(SyncEngine.from_services(services))
        finally:
            services.close()
        setup_seconds = time.perf_counter() - started
        if memory is not None:
            handle, store_file = tempfile.mkstemp(prefix="realworld-", suffix=".pickle")
            os.close(handle)
            Path(store_file).write_bytes(pickle.dumps(memory._rows._tables))
        parent.send(("edit", 2 * half))
        changes = _answer(parent, sandbox, 600)
        parent.send(("realistic", None))
        _answer(parent, sandbox, 60)
        limits = Limits(profile, args.marketo_rate_share, args.dataverse_cap, args.rate_bound)
        log = RequestLog(log_path)
        meter = CpuMeter({"azurite": azurite_pid(connection) if memory is None else None, "simulators": sandbox.pid})
        cycles: list[dict[str, Any]] = []
        error = None
        for index in range(1, args.max_cycles + 1):
            span_start = time.time()
            meter.start()
            try:
                result = cycle_in_fresh_process(env, args.cycle_timeout, store_file)
            except (CycleTimeout, RuntimeError) as exc:
                error = str(exc)
                break
            row = cycle_row(index, result, log.between(span_start, time.time()), limits, meter.stop())
            cycles.append(row)
            print(_row_line(n, row), file=sys.stderr, flush=True)
            if row["error"]:
                print(f"  cycle {row['cycle']} ended {row['outcome']}: {row['error']}", file=sys.stderr, flush=True)
            if finished(row):
                break
        else:
            error = f"not all applied after {args.max_cycles} cycles"
        return {
            "n": sum(changes.values()),
            "changes": changes,
            "setup": {"cycles": len(setup), "seconds": round(setup_seconds, 1), "profile": "instant, limits off"},
            "limits": {
                "dataverse_concurrency": limits.dataverse_concurrency,
                "dop_hint": profile.dataverse.dop_hint,
                "dataverse_cap": args.dataverse_cap,
                "marketo_concurrency": limits.marketo_concurrency,
                "marketo_rate_share": args.marketo_rate_share,
                "rate_bound": args.rate_bound,
            },
            "all_applied": error is None,
            "error": error,
            "request_log": str(log_path),
            "cycles": cycles,
            "total": _total(cycles),
        }
    finally:
        _stop_sandbox(parent, sandbox)
        if args.request_log is None and not args.keep_log:
            log_path.unlink(missing_ok=True)
        if store_file is not None:
            Path(store_file).unlink(missing_ok=True)


def _total(cycles: list[dict[str, Any]]) -> dict[str, Any]:
    wall = sum(c["wall_seconds"] for c in cycles)
    floor = sum(c["floor"]["floor_seconds"] for c in cycles)
    return {
        "wall_seconds": round(wall, 2),
        "floor_seconds": round(floor, 2),
        "wall_over_floor": round(wall / floor, 2) if floor else None,
        "api_calls": {
            service: sum(c["api_calls"][service]["calls"] for c in cycles) for service in ("marketo", "dataverse")
        },
        "table_transactions": sum(c["table_transactions"] for c in cycles),
        "peak_rss_mb": max((c["peak_rss_mb"] for c in cycles), default=None),
    }


# -- output ------------------------------------------------------------------------------------

_HEADER = (
    "| N | cycle | wall s | floor s (dominant) | wall/floor | Marketo calls (floor) | Dataverse calls (floor) "
    "| Table tx | written M/D | peak RSS MB |"
)


def _row_line(n: int, row: dict[str, Any]) -> str:
    floor, calls, written = row["floor"], row["api_calls"], row["written"]
    return (
        f"| {n:,} | {row['cycle']} | {row['wall_seconds']:.1f} | {floor['floor_seconds']:.1f} ({floor['dominant']}) "
        f"| {row['wall_over_floor']} | {calls['marketo']['calls']} ({calls['marketo']['floor']}) "
        f"| {calls['dataverse']['calls']} ({calls['dataverse']['floor']}) | {row['table_transactions']} "
        f"| {written.get('marketo', 0)}/{written.get('dynamics', 0)} | {row['peak_rss_mb']:.0f} |"
    )


def print_tables(results: list[dict[str, Any]], file: Any) -> None:
    print(_HEADER, file=file)
    print("|" + "---|" * 10, file=file)
    for result in results:
        for row in result["cycles"]:
            print(_row_line(result["n"], row), file=file)
    print("\nBounds per cycle (s):", file=file)
    for result in results:
        for row in result["cycles"]:
            floor = row["floor"]
            print(
                f"  N={result['n']:,} cycle {row['cycle']}: {floor['bounds']} (other rate reading, not in the floor: "
                f"{floor['other_rate_bounds']}); in flight {floor['in_flight_seconds']}, "
                f"the feed's chain {floor['feed_chain_seconds']} s, then the Dataverse writes: "
                f"{floor['feed_then_writes_seconds']} s; "
                f"outside both services {row['outside_services_seconds']} s (engine CPU {row['cpu_seconds']} s, "
                f"the rest, mostly Table Storage, {row['outside_services_less_cpu_seconds']} s); "
                f"CPU beside it {row['cpu_beside']}"
                + (f"; errors {floor['error_statuses']}" if floor["error_statuses"] else ""),
                file=file,
            )
    print("\nWhere the time goes (Σ seconds of service time, requests):", file=file)
    for result in results:
        for row in result["cycles"]:
            print(f"  N={result['n']:,} cycle {row['cycle']}:", file=file)
            for service, patterns in row["time_by_pattern"].items():
                for key, figures in list(patterns.items())[:6]:
                    print(f"    {service:9} {figures['seconds']:9.2f} s {figures['requests']:6}  {key}", file=file)


def compare_budget(plain: dict[str, Any], ticks: dict[str, Any], budget: float) -> dict[str, Any]:
    """The budgeted run next to the uninterrupted one: ticks, wall and API calls as ratios."""
    one, many = plain["total"], ticks["total"]
    cut = [c for c in ticks["cycles"] if c.get("left")]
    calls_one = sum(one["api_calls"].values())
    calls_many = sum(many["api_calls"].values())
    return {
        "budget_seconds": budget,
        "ticks": len(ticks["cycles"]),
        "ticks_cut": len(cut),
        "cut_steps": [c["left"].get("step") for c in cut],
        "longest_tick_seconds": max((c["wall_seconds"] for c in ticks["cycles"]), default=None),
        "cycles_uninterrupted": len(plain["cycles"]),
        "wall_seconds": {"uninterrupted": one["wall_seconds"], "ticks": many["wall_seconds"]},
        "wall_ratio": round(many["wall_seconds"] / one["wall_seconds"], 2) if one["wall_seconds"] else None,
        "api_calls": {"uninterrupted": one["api_calls"], "ticks": many["api_calls"]},
        "api_calls_ratio": round(calls_many / calls_one, 2) if calls_one else None,
        "both_applied": plain["all_applied"] and ticks["all_applied"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000", help="comma-separated N (changes, half a side)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies every simulated latency")
    parser.add_argument("--profile-file", help="JSON overriding figures of the realistic profile (sandbox/_profile.py)")
    parser.add_argument("--marketo-rate-share", type=float, default=1.0, help="the sync's MARKETO_RATE_SHARE")
    parser.add_argument(
        "--dataverse-cap",
        type=int,
        default=None,
        help="the Dataverse concurrency the sync is configured to use (the floor divides by min(dop hint, this))",
    )
    parser.add_argument(
        "--rate-bound",
        choices=["sustained", "window"],
        default="sustained",
        help="rate limits in the floor as sustained rates (used / limit x window, default) or as the least a "
        "burst from an empty window takes ((⌈used / limit⌉ - 1) x window); the other is reported too",
    )
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="an extra sync setting")
    parser.add_argument("--max-cycles", type=int, default=8)
    parser.add_argument("--cycle-timeout", type=float, default=3600.0, help="seconds before a cycle is killed")
    parser.add_argument("--request-log", help="keep the simulators' request log in this file")
    parser.add_argument("--keep-log", action="store_true", help="keep the temporary request log")
    parser.add_argument("--json-out", help="also write the JSON to this file")
    parser.add_argument(
        "--store",
        choices=["azurite", "memory"],
        default="azurite",
        help="state store: Azurite (default), or in memory (pickled between the cycles' processes), to reach "
        "large N without Azurite's time",
    )
    parser.add_argument(
        "--cycle-budget",
        type=int,
        help="also run each size in ticks of this SYNC_CYCLE_BUDGET_SECONDS and compare with the uninterrupted run",
    )
    parser.add_argument(
        "--function-timeout", type=float, default=600.0, help="with --cycle-budget: a tick passing this is killed"
    )
    args = parser.parse_args(argv)
    profile = _profile.with_overrides(_profile.load("realistic", args.profile_file), {"time_scale": args.time_scale})
    version = azurite_version()
    if tuple(int(part) for part in version.split(".")[:2]) < (3, 37):
        print(f"warning: Azurite {version}; issue 17 measures on 3.37 or later (AZURITE_DIR)", file=sys.stderr)
    results = []
    budgeted: list[dict[str, Any]] = []
    with run_azurite() as connection:
        for n in (int(size) for size in args.sizes.split(",")):
            results.append(run_size(n, connection, args, profile))
            if args.cycle_budget is not None:
                ticks_args = argparse.Namespace(**vars(args))
                ticks_args.env = [*args.env, f"SYNC_CYCLE_BUDGET_SECONDS={args.cycle_budget:g}"]
                ticks_args.max_cycles = max(args.max_cycles, 60)
                ticks_args.cycle_timeout = args.function_timeout
                ticks = run_size(n, connection, ticks_args, profile)
                comparison = compare_budget(results[-1], ticks, args.cycle_budget)
                budgeted.append({"n": ticks["n"], "run": ticks, **comparison})
    summary = {
        "azurite": version,
        "store": args.store,
        "profile": "realistic" + (f" + {args.profile_file}" if args.profile_file else ""),
        "time_scale": args.time_scale,
        "results": results,
        **({"budgeted": budgeted} if args.cycle_budget is not None else {}),
    }
    print(file=sys.stderr)
    print_tables(results, sys.stderr)
    for entry in budgeted:
        print(
            f"\nN={entry['n']:,} in ticks of {entry['budget_seconds']:g} s: {entry['ticks']} ticks "
            f"({entry['ticks_cut']} cut: {entry['cut_steps']}), longest {entry['longest_tick_seconds']} s; "
            f"wall {entry['wall_seconds']['ticks']} s vs {entry['wall_seconds']['uninterrupted']} s "
            f"(x{entry['wall_ratio']}); API calls {entry['api_calls']['ticks']} vs "
            f"{entry['api_calls']['uninterrupted']} (x{entry['api_calls_ratio']})",
            file=sys.stderr,
        )
    text = json.dumps(summary, indent=2)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n", encoding="utf-8")
    print(text)
    applied = all(result["all_applied"] for result in results) and all(e["both_applied"] for e in budgeted)
    return 0 if applied else 1


if __name__ == "__main__":
    raise SystemExit(main())
