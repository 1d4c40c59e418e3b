"""The go-live plan's calibration on a real store (Azurite): it measures the link work the apply
will do with the real requests, in a scratch space, and leaves no row behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sync_core.core.fieldmap import load_field_map
from sync_core.core.golive import InitialPolicy
from sync_core.core.models import EntityType, Link
from sync_core.cycle.schema_cache import ActiveSchema
from sync_core.golive.plan import calibrate
from sync_core.golive.snapshot import Snapshot
from sync_core.state import MemoryStateStore, StateStore, TableStateStore
from sync_core.state._store import RowStateStore

PAIRS = 40


@pytest.fixture(params=["memory", pytest.param("table", marks=pytest.mark.azurite)])
def store(request: pytest.FixtureRequest, table_prefix: str) -> StateStore:
    if request.param == "memory":
        return MemoryStateStore(prefix=table_prefix)
    conn: str = request.getfixturevalue("azurite_connection_string")
    return TableStateStore.from_connection_string(conn, prefix=table_prefix)


@pytest.fixture
def snapshot(tmp_path: Path) -> Iterator[Snapshot]:
    with Snapshot(tmp_path / "plan.sqlite") as snap:
        snap.add_persons(
            (mid, f"p{mid}@example.com", None, None, {"id": mid, "email": f"p{mid}@example.com", "firstName": "Ann"})
            for mid in range(1, PAIRS + 1)
        )
        snap.add_records(
            "lead",
            (
                (
                    f"lead-{mid}",
                    f"p{mid}@example.com",
                    False,
                    {"leadid": f"lead-{mid}", "emailaddress1": f"p{mid}@example.com"},
                )
                for mid in range(1, PAIRS + 1)
            ),
        )
        snap.add_work((0, "link", "lead", mid, f"lead-{mid}", 0) for mid in range(1, PAIRS + 1))
        yield snap


def _link_rows(store: StateStore) -> list[tuple[str, str]]:
    assert isinstance(store, RowStateStore)
    return [(row.partition, row.row) for row in store._rows.scan_rows(store.tables.links)]


def test_the_calibration_measures_the_link_work_and_leaves_no_row_behind(store: StateStore, snapshot: Snapshot) -> None:
    existing = Link(marketo_id=7, entity=EntityType.LEAD, dataverse_id="lead-7", baseline={})
    store.upsert_links([existing])
    before = _link_rows(store)
    schema = ActiveSchema(metadata={}, described={}, drift=[], field_map=load_field_map(None))
    ticks = iter(range(1000))

    local = calibrate(store, snapshot, schema, InitialPolicy(), clock=lambda: float(next(ticks)), links_at_end=200)

    # Each timed step is one tick of the fake clock, spread over the sample's items.
    assert local.source == "measured"
    assert (local.cpu_s, local.lookup_s, local.write_s) == (1 / PAIRS, 1 / PAIRS, 1 / PAIRS)
    assert local.range_s == 1.0  # one range look-up per chunk, not per item
    # The growth is timed on the store itself (20 links filled and emptied), not by the fake clock.
    assert local.growth.point_s is not None
    assert local.growth.point_s > 0
    assert _link_rows(store) == before
    assert list(store.iter_links()) == [existing]


def test_without_a_link_to_measure_the_published_costs_are_kept(store: StateStore, tmp_path: Path) -> None:
    schema = ActiveSchema(metadata={}, described={}, drift=[], field_map=load_field_map(None))
    with Snapshot(tmp_path / "empty.sqlite") as empty:
        local = calibrate(store, empty, schema, InitialPolicy())
    assert local.source == "published"
    assert _link_rows(store) == []
