"""Table Storage throughput on Azurite: single-entity upserts vs batched transactions (issue 2).

Starts its own in-memory Azurite on a free loopback port, writes the same entities one request
at a time and then in transactions of 100, and does the same through the state store (links: two
rows each, batched lookups; failures read back a page at a time), then looks links up in a table
that holds many (``--stored``), each way of reading many keys on its own (a ``$filter`` per 14 keys
of a partition, a point read per key: ``state._layout.LookupChoice``) and then as the store
chooses once it has timed both (the cost should not grow with the links stored). Prints one JSON object;
stops Azurite. Run from the repository root:

    .venv/bin/python bench/bench_tables.py [--entities 2000] [--payload 100] [--stored 20000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from azure.data.tables import TableServiceClient, UpdateMode

from sandbox.azurite import azurite_version, run_azurite
from sync_core.core.models import Direction, EntityType, Link, RecordFailure, StoreCounters
from sync_core.state import TableStateStore
from sync_core.state._layout import LookupChoice


def _rate(operations: int, seconds: float, cpu_seconds: float | None = None) -> dict[str, Any]:
    """``cpu_seconds``: this process's CPU (the client's; Azurite runs in a process of its own)."""
    out = {"ops": operations, "seconds": round(seconds, 3), "ops_per_s": round(operations / seconds, 1)}
    if cpu_seconds is not None:
        out["client_cpu_ms_per_op"] = round(cpu_seconds * 1000 / operations, 4)
    return out


def _timed_lookups(store: TableStateStore, links: list[Link], *, counted: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``links`` looked up by Marketo id, then by Dataverse id, each timed with its read requests
    (as ``counted``); every link must be found."""
    store.counters = StoreCounters()
    start = time.perf_counter()
    found = store.get_links_by_marketo_ids(link.marketo_id for link in links)
    by_marketo = _rate(len(found), time.perf_counter() - start) | {counted: store.counters.reads}
    store.counters = StoreCounters()
    start = time.perf_counter()
    found_dv = store.get_links_by_dataverse_ids(EntityType.LEAD, (link.dataverse_id for link in links))
    by_dataverse = _rate(len(found_dv), time.perf_counter() - start) | {counted: store.counters.reads}
    if len(found) != len(links) or len(found_dv) != len(links):
        raise SystemExit(f"lookups found {len(found)} / {len(found_dv)} of {len(links)} links")
    return by_marketo, by_dataverse


def bench_raw(service: TableServiceClient, entities: int, payload: int) -> dict[str, Any]:
    table = service.create_table("bench" + uuid.uuid4().hex[:8])
    body = "x" * payload

    start = time.perf_counter()
    for index in range(entities):
        table.upsert_entity({"PartitionKey": "single", "RowKey": f"{index:06d}", "v": body}, mode=UpdateMode.REPLACE)
    single = _rate(entities, time.perf_counter() - start)

    start = time.perf_counter()
    for first in range(0, entities, 100):
        table.submit_transaction(
            [
                (
                    "upsert",
                    {"PartitionKey": "batched", "RowKey": f"{index:06d}", "v": body},
                    {"mode": UpdateMode.REPLACE},
                )
                for index in range(first, min(first + 100, entities))
            ]
        )
    batched = _rate(entities, time.perf_counter() - start)
    batched["transactions"] = -(-entities // 100)

    start = time.perf_counter()
    for index in range(0, entities, 10):
        table.get_entity("batched", f"{index:06d}")
    point_reads = _rate(len(range(0, entities, 10)), time.perf_counter() - start)
    return {"single_upsert": single, "batched_upsert_100": batched, "point_read": point_reads}


def bench_store(connection_string: str, links: int) -> dict[str, Any]:
    store = TableStateStore.from_connection_string(connection_string, prefix="bench" + uuid.uuid4().hex[:6])
    batch = [
        Link(
            marketo_id=marketo_id,
            entity=EntityType.LEAD,
            dataverse_id=str(uuid.UUID(int=marketo_id)),
            baseline={"email": f"person{marketo_id}@example.com", "firstName": "Ada", "lastName": "Lovelace"},
        )
        for marketo_id in range(1, links + 1)
    ]
    store.get_links_by_marketo_ids([1])  # create the table outside the timings
    store.counters = StoreCounters()

    start, cpu = time.perf_counter(), time.process_time()
    store.upsert_links(batch)
    write = _rate(links, time.perf_counter() - start, time.process_time() - cpu) | {
        "transactions": store.counters.transactions
    }

    lookup, lookup_dv = _timed_lookups(store, batch, counted="queries")

    now = datetime.now(UTC)
    store.upsert_failures(
        [
            RecordFailure(
                key=f"to_dynamics:lead:{marketo_id}",
                direction=Direction.TO_DYNAMICS,
                entity=EntityType.LEAD,
                marketo_id=marketo_id,
                reasons=["emailaddress1: not a valid email"],
                first_failed_at=now,
                last_failed_at=now,
                next_retry_at=now,
            )
            for marketo_id in range(1, links + 1)
        ]
    )
    store.counters = StoreCounters()
    start = time.perf_counter()
    read = sum(1 for _ in store.iter_failures())
    failures = _rate(read, time.perf_counter() - start) | {"pages": store.counters.reads}
    if read != links:
        raise SystemExit(f"iter_failures read {read} of {links} failures")
    return {
        "upsert_links": write,
        "get_links_by_marketo_ids": lookup,
        "get_links_by_dataverse_ids": lookup_dv,
        "iter_failures": failures,
    }


def bench_stored(connection_string: str, stored: int, asked: int) -> dict[str, Any]:
    """``asked`` links looked up by either id in a table holding ``stored`` links."""
    store = TableStateStore.from_connection_string(connection_string, prefix="bench" + uuid.uuid4().hex[:6])
    links = [
        Link(
            marketo_id=marketo_id,
            entity=EntityType.LEAD,
            dataverse_id=str(uuid.UUID(int=marketo_id)),
            baseline={"email": f"person{marketo_id}@example.com", "firstName": "Ada", "lastName": "Lovelace"},
        )
        for marketo_id in range(1, stored + 1)
    ]
    store.get_links_by_marketo_ids([1])  # create the table (and settle its layout) outside the timings
    store.counters = StoreCounters()
    start, cpu = time.perf_counter(), time.process_time()
    for first in range(0, stored, 5000):  # as a cycle writes them: a Dataverse page at a time
        store.upsert_links(links[first : first + 5000])
    fill = _rate(stored, time.perf_counter() - start, time.process_time() - cpu) | {
        "transactions": store.counters.transactions
    }
    wanted = random.Random(17).sample(links, asked)
    out: dict[str, Any] = {"stored_links": stored, "upsert_links": fill}
    chosen = store.lookups
    for way in (LookupChoice.FILTER, LookupChoice.POINT, "chosen"):
        # each way on its own (the store's choice set aside), then the store's own after it has timed both
        store.lookups = chosen if way == "chosen" else _Forced(way)
        if way == "chosen":
            for _ in range(2 * LookupChoice.PROBE_EVERY):  # reads that probe both ways
                store.get_links_by_marketo_ids(link.marketo_id for link in wanted[:1000])
        by_marketo, by_dataverse = _timed_lookups(store, wanted, counted="reads")
        out[way] = {"get_links_by_marketo_ids": by_marketo, "get_links_by_dataverse_ids": by_dataverse}
    out["chosen"]["seconds_a_key"] = {name: round(cost, 6) for name, cost in chosen.costs(store.tables.links).items()}
    return out


class _Forced(LookupChoice):
    """One way of reading many keys, always (to time each way on its own)."""

    def __init__(self, way: str) -> None:
        super().__init__()
        self._way = way

    def way(self, table: str, keys: int) -> tuple[str | None, str | None]:
        return self._way, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=2000)
    parser.add_argument("--payload", type=int, default=100, help="bytes of string payload per entity")
    parser.add_argument("--stored", type=int, default=20000, help="links in the table for the lookups at scale")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    with run_azurite() as conn:
        service = TableServiceClient.from_connection_string(conn)
        raw = bench_raw(service, args.entities, args.payload)
        store = bench_store(conn, args.entities)
        stored = bench_stored(conn, args.stored, min(args.entities, args.stored))
    raw["batched_speedup"] = round(raw["batched_upsert_100"]["ops_per_s"] / raw["single_upsert"]["ops_per_s"], 1)
    result = {
        "bench": "tables",
        "target": f"azurite {azurite_version()} in memory, 127.0.0.1",
        "entities": args.entities,
        "payload_bytes": args.payload,
        "raw": raw,
        "store": store,
        "lookups_at_scale": stored,
        "total_seconds": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
