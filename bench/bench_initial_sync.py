"""Go-live at N records against the simulators' realistic profile: ``initial-sync --plan`` then
``--apply``, each in a fresh process, measured.

Per N (default 100,000): Marketo holds 0.6 N persons (seeded ``seed.lead.{i}``), Dataverse 0.3 N
leads (the same people as persons 1..0.3 N; one in ten renamed in Dynamics, a first-contact
conflict that Marketo wins, so those leads are written) and 0.1 N contacts (nobody in Marketo):
so 0.3 N pairs to link, 0.1 N persons to create and 0.3 N Marketo-only persons left alone (the
issue's shape: 600k persons, 400k leads and contacts, mostly the same people). The simulators run
in their own process with the ``realistic`` profile and their limits on from the start (seeding is
in-process, not through the API), logging every request.

Printed per N: plan and apply wall seconds and peak RSS (each process's ``ru_maxrss``), API calls
of each phase next to the floor the plan computed and against Marketo's daily quota, the plan's
ETA for the apply against the apply's real time, and the apply's service floor from the request
log (``bench_realworld.service_floor``: latency ÷ allowed concurrency, rate limits). Then a table:
wall ÷ service floor, API calls ÷ the plan's floor, peak RSS of the plan and of the apply, ETA
error; with two sizes or more and none at 1,000,000, a last row *extrapolated* to 1,000,000
records (a straight line through the two largest sizes: time, calls and RSS), marked as such.

The plan's wall time is mostly the bulk export's processing time, a fixed assumption of the
profile (300 s): ``--bulk-seconds`` shortens it for a quick run without touching the latencies
the ETA models (``--time-scale`` scales those too, so the ETA is only comparable at 1).

    .venv/bin/python bench/bench_initial_sync.py [--sizes 100000,1000000] [--time-scale 1]
        [--bulk-seconds 300] [--poll-seconds 60] [--plan-only] [--queue-hosts H]

``--queue-hosts H``: the apply on the job queue (Azurite's Queue service), its parts run by H local
hosts sharing the API budget (``SYNC_SHARED_BUDGET``, ``SYNC_BACKGROUND_SHARE``); the plan is told
``--instances H`` and its ``eta_queue`` is the ETA compared with the apply's time.

Human lines and the table go to stderr, the JSON to stdout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _hosts import NO_TIMER, local_hosts
from bench_realworld import Limits, RequestLog, service_floor

from demo.sandbox_env import sandbox_settings
from sandbox import DataverseOptions, MarketoOptions, SandboxServers, _profile
from sandbox.azurite import run_azurite, run_azurite_queue

ROOT = Path(__file__).resolve().parents[1]


def sandbox_process(conn: Any, n: int, profile: _profile.Profile, log_path: str) -> None:
    persons, leads, contacts = int(0.6 * n), int(0.3 * n), int(0.1 * n)
    marketo = MarketoOptions(limits=True, seed_leads=persons)
    dataverse = DataverseOptions(limits=True, seed_leads=leads, seed_contacts=contacts)
    _profile.apply(profile, marketo=marketo, dataverse=dataverse)
    with open(log_path, "a", encoding="utf-8") as log:
        servers = SandboxServers(marketo=marketo, dataverse=dataverse, request_log=log).start()
        try:
            # One lead in ten has another first name in Dynamics: a first-contact conflict (Marketo wins,
            # so Dynamics is written), made as a Dynamics user would, before anything is read.
            for row in servers.dataverse.rows("leads")[::10]:
                servers.dataverse.update("leads", row["leadid"], {"firstname": "Renamed"}, bypass_plugins=True)
            conn.send((servers.marketo_url, servers.dataverse_url, persons, leads, contacts))
            conn.recv()
        finally:
            servers.stop()
    conn.send("stopped")


def run_size(n: int, connection: str, args: argparse.Namespace, profile: _profile.Profile) -> dict[str, Any]:
    handle, name = tempfile.mkstemp(prefix="initial-sync-", suffix=".jsonl")
    os.close(handle)
    log_path = Path(name)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    sandbox = ctx.Process(target=sandbox_process, args=(child, n, profile, str(log_path)))
    sandbox.start()
    try:
        if not parent.poll(1800):
            raise RuntimeError("the simulators did not start")
        marketo_url, dataverse_url, persons, leads, contacts = parent.recv()
        env = sandbox_settings(
            marketo_url,
            dataverse_url,
            tables_connection=connection,
            table_prefix="g" + uuid.uuid4().hex[:10],
            MARKETO_RATE_SHARE=str(args.marketo_rate_share),
            SYNC_INITIAL_API_SHARE=str(args.api_share),
        )
        if not args.queue_hosts:
            return _phases(n, env, log_path, args, profile, (persons, leads, contacts))
        with run_azurite_queue() as queues:
            env |= {
                "AzureWebJobsStorage": queues,
                "SYNC_QUEUE_CONNECTION": queues,
                "SYNC_JOBS_QUEUE": "q" + uuid.uuid4().hex[:12],
                "SYNC_SHARED_BUDGET": "true",
                "SYNC_BACKGROUND_SHARE": str(args.background_share),
                "SYNC_SCHEDULE": NO_TIMER,
            }
            host_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
            with local_hosts(host_env, args.queue_hosts):
                return _phases(n, env, log_path, args, profile, (persons, leads, contacts))
    finally:
        try:
            parent.send("stop")
            parent.poll(60)
        except (OSError, EOFError):
            pass
        sandbox.join(timeout=60)
        if sandbox.is_alive():
            sandbox.kill()
        log_path.unlink(missing_ok=True)


def _phases(
    n: int,
    env: dict[str, str],
    log_path: Path,
    args: argparse.Namespace,
    profile: _profile.Profile,
    seeded: tuple[int, int, int],
) -> dict[str, Any]:
    """The plan, then (unless ``--plan-only``) the apply, each a process, measured."""
    persons, leads, contacts = seeded
    log = RequestLog(log_path)
    workdir = tempfile.mkdtemp(prefix="initial-sync-")
    plan_start = time.time()
    instances = ["--instances", str(args.queue_hosts)] if args.queue_hosts else []
    plan = _measured(env, "--plan", "--dir", workdir, "--poll-seconds", str(args.poll_seconds), *instances)
    plan_end = time.time()
    print(f"N={n}: plan {plan['seconds']} s, peak RSS {plan['peak_rss_mb']} MB", file=sys.stderr, flush=True)
    if args.plan_only:
        return {
            "n": persons + leads + contacts,
            "plan": {
                "seconds": plan["seconds"],
                "peak_rss_mb": plan["peak_rss_mb"],
                "api_calls": plan["result"]["api_calls"]["plan_read"],
                "api_floor": plan["result"]["api_calls"]["plan_read_floor"],
                "eta": plan["result"].get("eta", {}),
            },
        }
    apply = _measured(env, "--apply")
    apply_end = time.time()
    if args.queue_hosts:  # the parts are background work, on every host together
        share = args.marketo_rate_share * args.background_share
        parallel = args.queue_hosts * min(8, int(52 * args.background_share / args.queue_hosts))
    else:
        share = args.marketo_rate_share * args.api_share
        parallel = max(1, int(8 * args.api_share))
    limits = Limits(profile, share, parallel, "sustained")
    floor = service_floor(log.between(plan_end, apply_end), limits)
    plan_json, apply_json = plan["result"], apply["result"]
    calls = plan_json["api_calls"]
    eta_parts = plan_json["eta_queue"] if args.queue_hosts else plan_json.get("eta", {})
    eta = float(eta_parts["eta_seconds"]) if args.queue_hosts else float(plan_json["eta_seconds"])
    apply_calls = apply_json["api_calls"]
    if args.queue_hosts:  # the command's own calls are few: the hosts made the rest (the request log)
        requests = floor["requests"]
        apply_calls = {"marketo": requests["marketo_rate_limited_calls"], "dataverse": requests["dataverse"]}
    row = {
        "n": persons + leads + contacts,
        "persons": persons,
        "leads": leads,
        "contacts": contacts,
        "plan": {
            "seconds": plan["seconds"],
            "peak_rss_mb": plan["peak_rss_mb"],
            "api_calls": calls["plan_read"],
            "api_floor": calls["plan_read_floor"],
            "read_floor_seconds": service_floor(log.between(plan_start, plan_end), limits)["floor_seconds"],
            "linked": plan_json["link"],
            "create_persons": plan_json["create_persons"],
            "marketo_only_left": plan_json["marketo_only_left"],
            "ambiguous_groups": plan_json["ambiguous"]["groups"],
        },
        "apply": {
            "seconds": apply["seconds"],
            "peak_rss_mb": apply["peak_rss_mb"],
            "api_calls": apply_calls,
            "api_floor": calls["apply_floor"],
            "api_planned": calls["apply_queue"] if args.queue_hosts else calls["apply"],
            "against_plan": apply_json["against_plan"],
            "eta_seconds": eta,
            "eta_error": round((eta - apply["seconds"]) / apply["seconds"], 3) if apply["seconds"] else None,
            "eta_parts": eta_parts,
            "queue_hosts": args.queue_hosts,
            "service_floor": floor,
        },
        "marketo_daily_quota": calls["marketo_daily_quota"],
    }
    marketo_total = calls["plan_read"]["marketo"] + apply_calls["marketo"]
    row["marketo_quota_share"] = round(marketo_total / calls["marketo_daily_quota"], 3)
    print(
        f"N={n}: the plan's ETA {eta} s = {json.dumps(eta_parts)}",
        file=sys.stderr,
        flush=True,
    )
    print(
        f"N={n}: apply {apply['seconds']} s (plan's ETA {eta} s), peak RSS {apply['peak_rss_mb']} MB, "
        f"calls {apply_calls} (floor {calls['apply_floor']}, planned {calls.get('apply_queue', calls['apply'])}), "
        "service floor "
        f"{floor['floor_seconds']} s ({floor['dominant']})",
        file=sys.stderr,
        flush=True,
    )
    return row


MILLION = 1_000_000
_LINEAR = (
    "plan_s",
    "apply_s",
    "floor_s",
    "eta_s",
    "mk_calls",
    "mk_floor",
    "dv_calls",
    "dv_floor",
    "plan_rss_mb",
    "rss_mb",
)


def summary(row: dict[str, Any]) -> dict[str, Any]:
    """One size's figures for the table: the apply's, and each phase's peak RSS."""
    apply = row["apply"]
    return {
        "n": row["n"],
        "measured": True,
        "plan_s": row["plan"]["seconds"],
        "apply_s": apply["seconds"],
        "floor_s": apply["service_floor"]["floor_seconds"],
        "eta_s": apply["eta_seconds"],
        "mk_calls": apply["api_calls"]["marketo"],
        "mk_floor": apply["api_floor"]["marketo"],
        "dv_calls": apply["api_calls"]["dataverse"],
        "dv_floor": apply["api_floor"]["dataverse"],
        "plan_rss_mb": row["plan"]["peak_rss_mb"],
        "rss_mb": apply["peak_rss_mb"],
        "quota": (row["plan"]["api_calls"]["marketo"] + apply["api_calls"]["marketo"]) / row["marketo_daily_quota"],
    }


def extrapolated(rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Figures at ``n`` records on the straight line through the two largest measured sizes."""
    a, b = sorted(rows, key=lambda row: row["n"])[-2:]
    out: dict[str, Any] = {"n": n, "measured": False}
    for key in _LINEAR:
        slope = (b[key] - a[key]) / (b["n"] - a["n"])
        out[key] = round(b[key] + slope * (n - b["n"]), 1)
    quota_slope = (b["quota"] - a["quota"]) / (b["n"] - a["n"])
    out["quota"] = b["quota"] + quota_slope * (n - b["n"])
    return out


def _ratio(x: float, y: float) -> str:
    return f"{x / y:.2f}" if y else "-"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'records':>10} {'plan s':>8} {'apply s':>8} {'floor s':>8} {'wall/floor':>10} {'ETA s':>8} "
        f"{'ETA err':>8} {'MKT calls/floor':>16} {'DV calls/floor':>15} {'RSS MB plan/apply':>17} {'quota':>6}"
    )
    lines = [head, "-" * len(head)]
    for row in rows:
        eta_err = f"{(row['eta_s'] - row['apply_s']) / row['apply_s']:+.0%}" if row["apply_s"] else "-"
        mark = "" if row["measured"] else "  (extrapolated)"
        lines.append(
            f"{row['n']:>10,} {row['plan_s']:>8.1f} {row['apply_s']:>8.1f} {row['floor_s']:>8.1f} "
            f"{_ratio(row['apply_s'], row['floor_s']):>10} {row['eta_s']:>8.1f} {eta_err:>8} "
            f"{row['mk_calls']:>7.0f}/{row['mk_floor']:<6.0f} {_ratio(row['mk_calls'], row['mk_floor']):>4} "
            f"{row['dv_calls']:>6.0f}/{row['dv_floor']:<6.0f} {_ratio(row['dv_calls'], row['dv_floor']):>4} "
            f"{row['plan_rss_mb']:>8.1f}/{row['rss_mb']:<8.1f} {row['quota']:>6.1%}{mark}"
        )
    print("\n".join(lines), file=sys.stderr, flush=True)


def _measured(env: dict[str, str], *args: str) -> dict[str, Any]:
    """A command in a fresh process; its peak RSS from ``wait4`` (this process's children's maximum
    would mix the two phases)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "sync_core", "initial-sync", *args, "--quiet"],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        assert process.stdout is not None
        out = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        err = errors.read()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"initial-sync {' '.join(args)} failed ({process.returncode}): {err.decode()[-3000:]}")
    return {"result": json.loads(out), "seconds": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000", help="records in both databases together, comma-separated")
    parser.add_argument("--time-scale", type=float, default=1.0, help="the realistic profile's latency multiplier")
    parser.add_argument("--marketo-rate-share", type=float, default=0.5, help="MARKETO_RATE_SHARE (default 0.5)")
    parser.add_argument("--api-share", type=float, default=0.5, help="SYNC_INITIAL_API_SHARE (default 0.5)")
    parser.add_argument(
        "--poll-seconds", type=float, default=60.0, help="bulk export status poll (default 60, as Marketo advises)"
    )
    parser.add_argument(
        "--bulk-seconds", type=float, default=None, help="a bulk export's processing time (the profile's: 300 s)"
    )
    parser.add_argument("--plan-only", action="store_true", help="only the plan: its time, peak RSS and calls")
    parser.add_argument(
        "--queue-hosts", type=int, default=0, help="apply on the job queue with H local hosts (default 0: in process)"
    )
    parser.add_argument("--background-share", type=float, default=0.5, help="SYNC_BACKGROUND_SHARE (default 0.5)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"time_scale": args.time_scale}
    if args.bulk_seconds is not None:
        overrides["marketo"] = {"bulk_export_processing_seconds": args.bulk_seconds}
    profile = _profile.with_overrides(_profile.load("realistic", None), overrides)
    results = []
    with run_azurite() as connection:
        for n in [int(size) for size in args.sizes.split(",")]:
            results.append(run_size(n, connection, args, profile))
    if args.plan_only:
        json.dump({"profile": "realistic", "plan_only": True, "results": results}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    rows = [summary(row) for row in results]
    if len(rows) >= 2 and all(row["n"] != MILLION for row in rows):
        rows.append(extrapolated(rows, MILLION))
    print_table(rows)
    json.dump(
        {
            "profile": "realistic",
            "time_scale": args.time_scale,
            "bulk_export_seconds": profile.marketo.bulk_export_seconds,
            "results": results,
            "table": rows,
        },
        sys.stdout,
        indent=2,
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
