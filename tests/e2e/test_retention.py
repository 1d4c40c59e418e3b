"""What the sync keeps (issue 22), end to end on Azurite: erasure after a Marketo delete, a Dynamics
delete and ``forget``, each leaving no value of the person in any table nor in our logs; and a
cycle's Table cost that does not grow with the run reports a deployment has piled up."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.data.tables import TableServiceClient

from sync_core.core.models import CampaignMember, EntityType
from sync_core.core.report import TableOps
from sync_core.core.retention import Retention
from sync_core.privacy.forget import forget_main
from sync_core.state._keys import RowOp, newest_first_key
from sync_core.state._layout import PRUNE_PAGE, PRUNE_PARTITIONS
from tests.e2e.conftest import LEAD, World
from tests.e2e.test_sync_cycle import linked_lead


def _values(i: int) -> list[str]:
    """Every value of person ``i`` that reaches our state (baseline, collision, failure)."""
    return [
        f"lead{i}@example.com",
        f"Lead{i}",
        f"Person{i}",
        f"Company {i}",
        f"Analyst {i}",
        f"Marketing title {i}",
        f"Sales title {i}",
        f"Long{i}" + "X" * 60,
    ]


def _person_with_history(world: World, i: int) -> tuple[str, int]:
    """A linked lead whose person has a collision (with both sides' values) and an open failure."""
    lead_id, person = linked_lead(world, i, jobtitle=f"Analyst {i}")
    world.marketo.update_lead(person, {"title": f"Marketing title {i}"})
    world.dataverse.update("leads", lead_id, {"jobtitle": f"Sales title {i}"})
    assert world.cycle().report.collisions == 1
    world.marketo.update_lead(person, {"firstName": f"Long{i}" + "X" * 60})  # Dynamics allows 50
    assert world.cycle().report.failures == 1
    return lead_id, person


def _state_text(world: World) -> str:
    """Every row of every table of this world's state, as text."""
    service = TableServiceClient.from_connection_string(world.settings.tables_connection_string or "")
    names = world.store.tables
    rows = []
    for table in (names.state, names.links, names.collisions, names.failures, names.runs, names.claims):
        rows += [
            json.dumps(dict(entity), default=str, ensure_ascii=False)
            for entity in service.get_table_client(table).list_entities()
        ]
    return "\n".join(sorted(rows))


def _leaks(text: str, values: Iterable[str]) -> list[str]:
    return [value for value in values if value in text]


def _our_log(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("sync_core"))


def test_a_dynamics_delete_erases_the_person_from_every_table_in_the_same_cycle(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    lead_id, _ = _person_with_history(world, 1)
    _person_with_history(world, 2)
    assert _leaks(_state_text(world), _values(1)) != []  # the check can see them
    world.dataverse.delete("leads", lead_id)
    with caplog.at_level(logging.DEBUG):
        report = world.cycle()
    assert report.report.unlinked == 1
    state = _state_text(world)
    assert _leaks(state, _values(1)) == []
    assert "lead2@example.com" in state  # only that person went
    assert _leaks(_our_log(caplog), _values(1)) == []


def test_a_marketo_delete_erases_the_person_from_every_table_in_the_same_cycle(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    lead_id, person = _person_with_history(world, 1)
    world.marketo.delete_lead(person)
    world.dataverse.update("leads", lead_id, {"jobtitle": "Changed in Dynamics"})
    with caplog.at_level(logging.DEBUG):
        report = world.cycle()
    assert report.report.unlinked == 1
    assert world.link_of(person) is None
    assert _leaks(_state_text(world), _values(1)) == []
    assert _leaks(_our_log(caplog), _values(1)) == []


def _forget(world: World, *argv: str) -> dict[str, Any]:
    out = io.StringIO()
    assert forget_main(list(argv), environ=world.env, stdout=out) == 0
    return dict(json.loads(out.getvalue()))


def test_forget_by_email_erases_the_person_and_a_second_run_finds_the_same_and_removes_nothing(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    lead_id, person = _person_with_history(world, 1)
    _person_with_history(world, 2)
    with caplog.at_level(logging.DEBUG):
        first = _forget(world, "--email", "LEAD1@example.com")
    after_first = _state_text(world)
    assert first == {
        "found_by": "marketo",
        "marketo_ids": [person],
        "dynamics_ids": [lead_id.lower()],
        "removed": {"links": 1, "collisions": 1, "failures": 1, "claims": 0, "members": 0},
    }
    assert _leaks(after_first, _values(1)) == []
    assert "lead2@example.com" in after_first
    assert _leaks(_our_log(caplog), _values(1)) == []
    second = _forget(world, "--email", "lead1@example.com")
    assert (second["found_by"], second["marketo_ids"]) == ("marketo", [person])
    assert second["removed"] == {"links": 0, "collisions": 0, "failures": 0, "claims": 0, "members": 0}
    assert _state_text(world) == after_first
    assert world.marketo.get_lead(person) is not None  # our state only: Marketo keeps the person
    assert world.dynamics_row(LEAD, lead_id) is not None


def test_forget_by_email_reads_the_links_when_marketo_no_longer_knows_the_person(world: World) -> None:
    _, person = _person_with_history(world, 1)
    world.marketo.delete_lead(person)
    erased = _forget(world, "--email", "lead1@example.com")
    assert (erased["found_by"], erased["marketo_ids"], erased["removed"]["links"]) == ("links", [person], 1)
    assert _leaks(_state_text(world), _values(1)) == []


@pytest.mark.parametrize("by", ["--marketo-id", "--dynamics-id"])
def test_forget_by_id_erases_the_person(world: World, by: str) -> None:
    lead_id, person = _person_with_history(world, 1)
    # Campaign lists this sync put the record on (Add to Microsoft Campaign), and someone else's.
    for list_id, record, marketo_id in [("l1", lead_id, person), ("l2", lead_id, person), ("l1", "other", 99)]:
        world.store.add_campaign_member(
            CampaignMember(
                campaign_id="c1",
                list_id=list_id,
                entity=EntityType.LEAD,
                dataverse_id=record.lower(),
                marketo_id=marketo_id,
                added_at=datetime.now(UTC),
            )
        )
    erased = _forget(world, by, str(person) if by == "--marketo-id" else lead_id.upper())
    assert erased["removed"] == {"links": 1, "collisions": 1, "failures": 1, "claims": 0, "members": 2}
    assert _leaks(_state_text(world), _values(1)) == []
    assert world.store.get_campaign_member("l1", lead_id.lower()) is None
    assert world.store.get_campaign_member("l1", "other") is not None
    assert _forget(world, by, str(person) if by == "--marketo-id" else lead_id)["removed"]["links"] == 0


def test_forget_answers_a_configuration_error_with_one_json_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert forget_main(["--marketo-id", "1"], environ={}) == 2
    line = json.loads(capsys.readouterr().err)
    assert set(line) == {"error", "setting", "hint"}


def _add_runs(world: World, times: list[datetime]) -> None:
    """Run reports as a long-running deployment leaves them: 100 per transaction per day."""
    store = world.store
    by_day: dict[str, list[RowOp]] = {}
    for index, at in enumerate(times):
        partition, row = newest_first_key(at, f"old-{index}")
        by_day.setdefault(partition, []).append(
            RowOp("upsert", row, {"run_id": f"old-{index}", "started_at": at, "outcome": "ok", "data": "{}"})
        )
    for partition, ops in by_day.items():
        for start in range(0, len(ops), 100):
            store._rows.transact(store.tables.runs, partition, ops[start : start + 100])


def _idle_cost(world: World) -> TableOps:
    """An idle cycle's Table operations. Its cursor writes depend on the clock (the feeds' tokens
    move on within seconds), not on the state, so every measured cycle starts after a pause."""
    time.sleep(2)
    return world.cycle().report.table


def test_a_cycle_after_10000_old_run_reports_costs_what_one_without_costs(world: World) -> None:
    linked_lead(world, 1)
    world.cycle()  # the echo of the creation
    fresh = _idle_cost(world)
    now = datetime.now(UTC)
    _add_runs(world, [now - timedelta(minutes=4 * index + 10) for index in range(10_000)])  # within 30 days
    assert _idle_cost(world) == fresh
    expired = now - Retention().run_reports
    # Past due, 100 in each of 100 days: every prune page is one day partition, so consecutive cycles
    # cost the same whatever the time of day (pages straddling two days cost one transaction more).
    day = (expired - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    _add_runs(world, [day - timedelta(days=back, minutes=-minute) for back in range(100) for minute in range(100)])
    backlog = _idle_cost(world)
    assert _idle_cost(world) == backlog  # 9,900 left: the same cost
    # The prune's price while a backlog lasts, whatever its size: no more reads (the prune's page
    # reads happen in every cycle), one transaction per day partition of one page of 100 rows,
    # and one for the "last prune" record.
    assert (backlog.reads, backlog.writes) == (fresh.reads, fresh.writes)
    assert 2 <= (backlog.transactions or 0) - (fresh.transactions or 0) <= PRUNE_PARTITIONS + 1
    assert (backlog.operations or 0) - (fresh.operations or 0) == PRUNE_PAGE + 1
