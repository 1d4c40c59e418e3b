"""What the sync filter costs: API calls and Table operations of a cycle, and the rule's own time.

On the simulators (in process, limits off) with a memory state store: N Dynamics leads are
synced without a filter (the set-up cycles create their N persons). Then three cycles, each after
the same N Marketo-only edits (``title`` of every person), and set-up cycles that read the
echoes of its writes back (so the measured cycle sees only the edits):

- ``no filter``: ``DATAVERSE_SYNC_FILTER_FIELD`` empty, no Marketo filter;
- ``filters just set``: ``new_synctomkto`` and ``MARKETO_SYNC_FILTER="leadSource ne 'Partner'"``;
  the links' verdicts were decided under other settings, so each pair's other side is read once
  (its Dynamics row; the person too, as the feed lacks ``leadSource``) and each link is written
  once more with its new fingerprint (the same Table transactions: the baseline changes anyway);
- ``filters decided``: the same settings again: the links' verdicts stand, nothing extra.

Then the rule alone: microseconds per ``SideFilter.admits`` for the native field and for a
compound condition. Prints one JSON object.

    .venv/bin/python bench/bench_sync_filter.py [--leads 2000]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.sandbox_env import sandbox_settings
from sandbox import DataverseOptions, MarketoOptions, SandboxServers
from sync_core.core.syncfilter import SyncFilter
from sync_core.cycle.engine import SyncEngine
from sync_core.settings import Settings
from sync_core.state import MemoryStateStore
from sync_core.wiring.services import build_services

NO_FILTER = {"DATAVERSE_SYNC_FILTER_FIELD": ""}
FILTERS = {"DATAVERSE_SYNC_FILTER_FIELD": "new_synctomkto", "MARKETO_SYNC_FILTER": "leadSource ne 'Partner'"}
CONDITION = "statecode eq 0 and not endswith(emailaddress1,'@test.example.com') and leadsourcecode ne 8"


def _cycle(env: dict[str, str], store: MemoryStateStore) -> dict[str, Any]:
    services = build_services(Settings.from_env(env), store=store)
    try:
        report = SyncEngine.from_services(services).run_cycle()
    finally:
        services.close()
    counts = report.report.as_json()
    return {
        "outcome": str(report.outcome),
        "api_calls": counts["api_calls"],
        "table": {key: counts["table"][key] for key in ("reads", "transactions", "writes")},
        "written": counts["written"],
        "filtered": counts["filtered"],
    }


def _settle(env: dict[str, str], store: MemoryStateStore) -> None:
    """Cycles until one writes nothing (so the next measured cycle sees only the edits)."""
    for _ in range(6):
        if not any(_cycle(env, store)["written"].values()):
            return


def _edit_all(servers: SandboxServers) -> int:
    tag = uuid.uuid4().hex[:6]
    ids = list(servers.marketo.db.lead_ids())
    for lead_id in ids:
        servers.marketo.update_lead(lead_id, {"title": f"t-{tag}-{lead_id}"})
    return len(ids)


def _rule_us(sync_filter: SyncFilter, rows: list[dict[str, Any]]) -> float:
    side = sync_filter.dynamics
    started = time.perf_counter()
    for row in rows:
        side.admits(row)
    return round((time.perf_counter() - started) / len(rows) * 1e6, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=2000)
    n = parser.parse_args(argv).leads
    servers = SandboxServers(
        marketo=MarketoOptions(limits=False), dataverse=DataverseOptions(limits=False, seed_leads=n)
    ).start()
    try:
        base = sandbox_settings(
            servers.marketo_url,
            servers.dataverse_url,
            tables_connection="UseDevelopmentStorage=true",
            table_prefix="b" + uuid.uuid4().hex[:10],
            MARKETO_RATE_SHARE="1",
        )
        store = MemoryStateStore(prefix=base["SYNC_TABLE_PREFIX"])
        _settle({**base, **NO_FILTER}, store)  # set-up: create the persons, read the echoes back
        cycles = {}
        for name, settings in (("no filter", NO_FILTER), ("filters just set", FILTERS), ("filters decided", FILTERS)):
            edited = _edit_all(servers)
            cycles[name] = {"marketo_edits": edited, **_cycle({**base, **settings}, store)}
            _settle({**base, **settings}, store)  # the echo of the writes, not measured
    finally:
        servers.stop()
    rows = [
        {"new_synctomkto": i % 3 != 0, "statecode": i % 2, "emailaddress1": f"p{i}@example.com", "leadsourcecode": i}
        for i in range(100_000)
    ]
    rule = {
        "native field (us/record)": _rule_us(SyncFilter.of(dynamics_field="new_synctomkto"), rows),
        "field + 3-part condition (us/record)": _rule_us(
            SyncFilter.of(dynamics_field="new_synctomkto", dynamics_condition=CONDITION), rows
        ),
    }
    print(json.dumps({"leads": n, "python": platform.python_version(), "cycles": cycles, "rule": rule}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
