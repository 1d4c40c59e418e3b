"""The initial sync's pure rules and small parts: first-contact winners, the job's chunk marks, what
a chunk costs, the export windows, the bulk file's CSV, and the status view's line."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from sync_core.core.fieldmap import DEFAULT_PATH, load_field_map
from sync_core.core.golive import (
    CHUNKS_IN_FLIGHT,
    DATAVERSE_IN_FLIGHT,
    JOB_CURSOR,
    PUBLISHED,
    QUEUE_PARTS_PER_INSTANCE,
    ApplyTime,
    InitialPolicy,
    JobState,
    JobStatus,
    LinkGrowth,
    LocalCosts,
    MarketoOnlyPolicy,
    Share,
    WorkKind,
    chunk_seconds,
    link_chunk_cost,
    person_chunk_cost,
    queue_time,
    write_floor,
)
from sync_core.core.merge import merge_record
from sync_core.core.models import Cursor, EntityType
from sync_core.dataverse._types import WriteOutcome
from sync_core.dataverse.client import RATE_LIMIT as DATAVERSE_LIMIT
from sync_core.golive.apply import ChunkWork, chunk_payload
from sync_core.golive.snapshot import WorkItem
from sync_core.marketo._bulk import iter_csv_rows, window_body, windows
from sync_core.settings import DynamicsDeletePolicy, MarketoDeletePolicy
from sync_core.state import MemoryStateStore
from sync_core.status.text import render_text
from sync_core.status.view import build_status
from tests.unit.conftest import World, make_world

LEAD, CONTACT = EntityType.LEAD, EntityType.CONTACT
FIELDS = load_field_map(None)


@pytest.mark.parametrize(
    ("entity", "policy", "winner", "rule"),
    [
        (LEAD, InitialPolicy(), "marketo", "first contact: lead Marketo wins"),
        (CONTACT, InitialPolicy(), "dynamics", "first contact: contact Dynamics wins"),
        (LEAD, InitialPolicy(lead_winner="dynamics"), "dynamics", "first contact: lead Dynamics wins"),
        (CONTACT, InitialPolicy(contact_winner="marketo"), "marketo", "first contact: contact Marketo wins"),
    ],
)
def test_first_contact_winner_follows_the_policy(
    entity: EntityType, policy: InitialPolicy, winner: str, rule: str
) -> None:
    merge = merge_record(
        FIELDS.for_entity(entity),
        entity,
        marketo={"firstName": "M"},
        dynamics={"firstName": "D"},
        baseline={},
        first_contact=policy.first_contact,
    )
    assert [(c.key, c.winner, c.rule) for c in merge.collisions] == [("firstName", winner, rule)]
    assert merge.merged["firstName"] == ("M" if winner == "marketo" else "D")


def test_first_contact_policy_does_not_touch_a_field_with_a_baseline() -> None:
    policy = InitialPolicy(lead_winner="dynamics")
    merge = merge_record(
        FIELDS.for_entity(LEAD),
        LEAD,
        marketo={"firstName": "M"},
        dynamics={"firstName": "D"},
        baseline={"firstName": "B"},
        first_contact=policy.first_contact,
    )
    assert [(c.winner, c.rule) for c in merge.collisions] == [("marketo", "lead: Marketo wins")]


def test_an_empty_side_takes_the_other_value_without_a_conflict() -> None:
    merge = merge_record(
        FIELDS.for_entity(CONTACT),
        CONTACT,
        marketo={"title": "CEO"},
        dynamics={"title": None},
        baseline={},
        first_contact=InitialPolicy().first_contact,
    )
    assert merge.collisions == ()
    assert merge.to_dynamics == {"title": "CEO"}


def test_job_marks_chunks_started_and_done() -> None:
    job = JobState(job_id="j", snapshot="s", chunks=20)
    job = job.with_started(0).with_started(9).with_done(0, {"linked": 5}, 1.5).with_done(9, {"linked": 2}, 0.5)
    job = job.with_started(19)
    assert [n for n in range(20) if job.is_started(n)] == [0, 9, 19]
    assert [n for n in range(20) if job.is_done(n)] == [0, 9]
    assert job.done_count == 2
    assert job.outcome == {"linked": 7}
    again = JobState.model_validate_json(job.model_dump_json())
    assert again.is_done(9)
    assert not again.is_done(19)
    assert again.progress()["eta_seconds"] == pytest.approx(1.0 * 18)


@pytest.mark.parametrize(
    ("pairs", "dynamics", "marketo_calls", "dataverse_calls"),
    [(3000, 3000, 10, 3), (3000, 0, 10, 0), (1, 1, 1, 1), (301, 1001, 2, 2)],
)
def test_link_chunk_cost(pairs: int, dynamics: int, marketo_calls: int, dataverse_calls: int) -> None:
    cost = link_chunk_cost(pairs, dynamics, batch_size=1000)
    assert (cost.marketo_calls, cost.dataverse_calls) == (marketo_calls, dataverse_calls)


def test_persons_cost_a_call_per_300_per_lookup_field_and_the_floor_pools_chunks() -> None:
    assert person_chunk_cost(300, 1).marketo_calls == 2
    floor = write_floor(
        linked=6000, dynamics_updates=2500, persons_email=301, persons_other=0, leads=0, batch_size=1000
    )
    assert (floor.marketo, floor.dataverse) == (20 + 2, 3)


def test_chunk_time_is_the_slower_side_under_the_share_then_the_link_lookups_and_writes() -> None:
    # 3,000 pairs, 300 leads written. Marketo at a quarter share: 2 in flight, 25 calls / 20 s, so
    # 10 calls of 300 take 5 waves x 1.9 s = 9.5 s (more than the 9 / 1.25 s the rate allows).
    # Dataverse: one bulk message, 70 ms + 300 x 30 ms = 9.07 s. Then the links: looked up (the
    # persons as a range, 3 pages; the records by 3,000 point reads, 8 at a time; 10 ms each) and
    # written (60 transactions x 40 ms).
    cost = link_chunk_cost(3000, 300, batch_size=1000)
    seconds = chunk_seconds(cost, Share(marketo_rate_share=0.25, dataverse_parallel=4))
    assert seconds == pytest.approx(9.5 + (3 + 3000 / 8) * 0.010 + 60 * 0.040)
    # With Marketo's whole budget the Dataverse message is the slower side.
    assert chunk_seconds(cost, Share(marketo_rate_share=1.0, dataverse_parallel=4)) == pytest.approx(
        9.07 + (3 + 3000 / 8) * 0.010 + 60 * 0.040
    )


def test_apply_time_is_the_busiest_service_when_chunks_overlap() -> None:
    share = Share(marketo_rate_share=0.25, dataverse_parallel=4)
    # 100 link chunks writing Marketo only: Marketo's 1,000 calls of 1.9 s, 2 in flight (950 s),
    # more than the calls at 1.25 a second (799 s) or the chunks' own times over the chunks in flight.
    marketo_bound = ApplyTime(share)
    for _ in range(100):
        marketo_bound.add(link_chunk_cost(3000, 0, batch_size=1000))
    assert marketo_bound.seconds == pytest.approx(1000 * 1.9 / 2)
    alone = chunk_seconds(link_chunk_cost(3000, 0, batch_size=1000), share)
    assert marketo_bound.seconds < 100 * alone
    assert marketo_bound.seconds > 100 * alone / CHUNKS_IN_FLIGHT
    # Ten chunks updating 3,000 leads each: 30 messages of 30.07 s, 4 in flight.
    dataverse_bound = ApplyTime(share)
    for _ in range(10):
        dataverse_bound.add(link_chunk_cost(3000, 3000, batch_size=1000))
    assert dataverse_bound.seconds == pytest.approx(30 * 30.07 / 4)
    # One chunk alone is its own time: nothing overlaps it.
    single = ApplyTime(share)
    single.add(link_chunk_cost(3000, 0, batch_size=1000))
    assert single.seconds == pytest.approx(alone)


def test_on_the_job_queue_the_apply_takes_the_background_share_and_spreads_the_rest_over_the_instances() -> None:
    app = Share(marketo_rate_share=0.5, dataverse_parallel=8)
    parts = [link_chunk_cost(600, 0, batch_size=1000) for _ in range(50)]  # 2 Marketo calls each
    local = LocalCosts(lookup_s=0.0, write_s=0.0, cpu_s=0.01)  # 6 s of CPU a part

    def on(instances: int) -> ApplyTime:
        time = queue_time(app, background_share=0.5, instances=instances, local=local)
        for part in parts:
            time.add(part)
        return time

    one, three = on(1), on(3)
    # One instance: its CPU, 300 s, decides; its four parts at once do not share one interpreter's CPU.
    assert one.seconds == pytest.approx(50 * 6.0)
    assert one.parts()["bound"] == "cpu"
    # Three: 100 s of CPU each. Six: 50 s each, and Marketo decides for every instance together:
    # its 100 calls of 1.9 s on 2 places (10 x 0.5 x 0.5), 95 s, longer than the calls at
    # 100 x 0.5 x 0.5 / 20 s = 1.25 a second (79.2 s).
    assert three.parts()["bound"] == "cpu"
    assert three.seconds == pytest.approx(100.0)
    six = on(6)
    assert six.parts()["bound"] == "marketo"
    assert six.seconds == pytest.approx(100 * 1.9 / 2)
    assert six.parts()["chunks_in_flight"] == 6 * QUEUE_PARTS_PER_INSTANCE


def test_on_the_job_queue_dataverses_places_are_shared_by_the_instances_not_multiplied() -> None:
    # Dataverse's execution-time limit is 4 requests in flight per user over every instance (the
    # shared budget's places): the queue's background half is 2, however many instances run.
    assert DATAVERSE_LIMIT.max_concurrent == DATAVERSE_IN_FLIGHT
    app = Share(marketo_rate_share=0.5, dataverse_parallel=8)
    local = LocalCosts(lookup_s=0.0, write_s=0.0, cpu_s=0.0)
    part = link_chunk_cost(1000, 1000, batch_size=1000)  # one UpdateMultiple of 1,000: 30.07 s

    def on(instances: int) -> ApplyTime:
        time = queue_time(app, background_share=0.5, instances=instances, local=local)
        for _ in range(12):
            time.add(part)
        return time

    for instances in (1, 3, 6):
        time = on(instances)
        assert time.parts()["bound"] == "dataverse"
        assert time.seconds == pytest.approx(12 * 30.07 / 2)


def test_the_queue_parts_per_instance_are_host_json_batch_size() -> None:
    host = json.loads((Path(__file__).resolve().parents[2] / "host.json").read_text(encoding="utf-8"))
    assert host["extensions"]["queues"]["batchSize"] == QUEUE_PARTS_PER_INSTANCE


QUARTER = Share(marketo_rate_share=0.25, dataverse_parallel=4)


def _ten_link_chunks(local: LocalCosts, *, start_s: float = 0.0) -> ApplyTime:
    time = ApplyTime(QUARTER, local=local, fixed_s=start_s)
    for _ in range(10):
        time.add(link_chunk_cost(3000, 0, batch_size=1000))  # Marketo 10 calls: 9.5 s a chunk
    return time


@pytest.mark.parametrize(
    ("local", "eta", "bound"),
    [
        # Table Storage measured at 8 ms an item: 30,000 items one at a time is 240 s, more than the
        # chunks' paths ((9.5 + 24 + 3) x 10 / 2 = 182.5 s), Marketo's 95 s or the CPU's 30 s.
        (LocalCosts(lookup_s=0.004, write_s=0.004, cpu_s=0.001), 5 + 240.0, "table_storage"),
        # 2 ms of Table work and 2 ms of CPU an item: each chunk is 9.5 + 6 + 6 s, two overlap.
        (LocalCosts(lookup_s=0.001, write_s=0.001, cpu_s=0.002), 5 + 21.5 * 10 / 2, "chunks"),
        # CPU-bound: one process, so the chunks' preparation adds up (10 ms x 30,000).
        (LocalCosts(lookup_s=0.0001, write_s=0.0001, cpu_s=0.010), 5 + 300.0, "cpu"),
        # Next to nothing between the requests: Marketo's 100 calls of 1.9 s, 2 in flight.
        (LocalCosts(lookup_s=0.0, write_s=0.0, cpu_s=0.0), 5 + 95.0, "marketo"),
    ],
)
def test_the_eta_adds_what_happens_between_requests_where_it_does_not_overlap(
    local: LocalCosts, eta: float, bound: str
) -> None:
    time = _ten_link_chunks(local, start_s=5.0)
    assert time.seconds == pytest.approx(eta)
    parts = time.parts()
    assert parts["bound"] == bound
    assert parts["eta_seconds"] == pytest.approx(eta, abs=0.05)
    assert parts["start_s"] == 5.0
    assert parts["table_storage_s"] == pytest.approx(30000 * (local.lookup_s + local.write_s), abs=0.05)
    assert parts["local_cpu_s"] == pytest.approx(30000 * local.cpu_s, abs=0.05)
    assert parts["services_s"] == pytest.approx(95.0)  # the services' share, whatever else is measured


def test_a_range_look_up_costs_once_per_chunk_of_existing_persons() -> None:
    local = LocalCosts(lookup_s=0.0, write_s=0.0, range_s=0.5)
    links = ApplyTime(QUARTER, local=local)
    links.add(link_chunk_cost(3000, 0, batch_size=1000))
    persons = ApplyTime(QUARTER, local=local)
    persons.add(person_chunk_cost(3000, 0))  # new persons: their links are looked up by record only
    assert links.table_s == 0.5
    assert persons.table_s == 0.0


def test_each_chunks_table_work_is_priced_at_the_links_stored_when_it_starts() -> None:
    # Filters 1 ms a key in an empty table and 0.1 µs more per link stored, capped by point reads
    # at 2 ms; a range read 0.1 s and 10 µs more per link. Ten chunks of 3,000 links each: chunk k
    # starts with 3,000 k links.
    local = LocalCosts(
        lookup_s=0.001,
        write_s=0.0,
        range_s=0.1,
        growth=LinkGrowth(filter_growth_s=1e-7, point_s=0.002, range_growth_s=1e-5),
    )
    lookups = [min(0.001 + 1e-7 * 3000 * k, 0.002) for k in range(10)]  # 1.0, 1.3, 1.6, 1.9, then 2 ms
    ranges = [0.1 + 1e-5 * 3000 * k for k in range(10)]
    fresh = ApplyTime(QUARTER, local=local)
    for _ in range(10):
        fresh.add(link_chunk_cost(3000, 0, batch_size=1000))
    assert fresh.table_s == pytest.approx(3000 * sum(lookups) + sum(ranges))
    assert fresh.links == 30_000
    assert fresh.parts()["per_item_ms"]["link_lookup_at_end"] == 2.0
    # With 100,000 links there already every look-up costs a point read's.
    full = ApplyTime(QUARTER, local=local, links=100_000)
    for _ in range(10):
        full.add(link_chunk_cost(3000, 0, batch_size=1000))
    assert full.table_s == pytest.approx(30_000 * 0.002 + sum(range_ + 1.0 for range_ in ranges))
    # No growth measured (the published costs): the empty table's costs throughout.
    flat = _ten_link_chunks(LocalCosts(lookup_s=0.001, write_s=0.0, range_s=0.1))
    assert flat.table_s == pytest.approx(30_000 * 0.001 + 10 * 0.1)


def test_a_look_up_costs_the_cheaper_way_and_grows_without_a_point_read_figure() -> None:
    cheap_points = LocalCosts(lookup_s=0.002, write_s=0.0, growth=LinkGrowth(filter_growth_s=1e-7, point_s=0.001))
    assert cheap_points.lookup_at(0) == 0.001
    filters_only = LocalCosts(lookup_s=0.002, write_s=0.0, growth=LinkGrowth(filter_growth_s=1e-8))
    assert filters_only.lookup_at(10**5) == pytest.approx(0.003)


def test_the_published_costs_are_azures_latencies_and_no_cpu() -> None:
    # A point read of 10 ms, 8 at a time, and a range page of 1,000 per 1,000 items; a transaction of
    # 40 ms per 50 links (100 rows): the model the ETA had before it measured anything.
    assert PUBLISHED.lookup_s * 3000 == pytest.approx((3 + 3000 / 8) * 0.010)
    assert PUBLISHED.write_s * 3000 == pytest.approx(60 * 0.040)
    assert PUBLISHED.cpu_s == 0.0
    assert _ten_link_chunks(PUBLISHED).parts()["per_item_ms"]["source"] == "published"


def test_export_windows_cover_the_span_in_31_days_and_never_overlap() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    parts = windows(start, start + timedelta(days=70))
    assert parts[0][0] == start
    assert parts[-1][1] >= start + timedelta(days=70)
    for (_, end), (next_start, _) in itertools.pairwise(parts):
        assert next_start == end + timedelta(seconds=1)
    assert all(end - begin <= timedelta(days=31) for begin, end in parts)
    body = window_body(["id"], *parts[0])
    assert body["filter"]["createdAt"] == {"startAt": "2024-01-01T00:00:00Z", "endAt": "2024-02-01T00:00:00Z"}
    with pytest.raises(ValueError, match="0 to 31 days"):
        window_body(["id"], start, start + timedelta(days=32))


def test_bulk_file_rows_are_read_as_they_stream() -> None:
    body = (
        b'id,email,title\n1,a@example.com,null\n2,"b,c@example.com","line one\nline two"\n'
        b'3,d@example.com,"say ""hi"""\n'
    )

    def chunks() -> httpx.SyncByteStream:
        class Stream(httpx.SyncByteStream):
            def __iter__(self):  # type: ignore[no-untyped-def]
                for start in range(0, len(body), 7):  # split everywhere, quotes and newlines included
                    yield body[start : start + 7]

        return Stream()

    response = httpx.Response(200, stream=chunks())
    rows = list(iter_csv_rows(response))
    assert rows == [
        {"id": "1", "email": "a@example.com", "title": None},
        {"id": "2", "email": "b,c@example.com", "title": "line one\nline two"},
        {"id": "3", "email": "d@example.com", "title": 'say "hi"'},
    ]


def test_status_shows_the_initial_sync_progress() -> None:
    store = MemoryStateStore()
    job = JobState(job_id="20250101T000000Z-abc", snapshot="s", chunks=4, status=JobStatus.APPLYING)
    job = job.with_started(0).with_done(0, {"linked": 3000, "collisions": 12}, 30.0)
    store.put_cursor(Cursor(name=JOB_CURSOR, value=job.model_dump_json()))
    status = build_status(store, now=datetime(2025, 1, 1, tzinfo=UTC))
    assert status.initial_sync is not None
    assert (status.initial_sync.chunks_done, status.initial_sync.percent) == (1, 25.0)
    assert status.initial_sync.eta_seconds == pytest.approx(90.0)
    assert "Initial sync 20250101T000000Z-abc: applying, 25.0 % (1/4 chunks)" in render_text(status)
    assert "linked 3,000" in render_text(status)


class _CreatingDataverse:
    """The real client over the fake, plus what the fake lacks: ``WhoAmI`` and ``CreateMultiple``
    (a lead created without an ``ownerid`` is owned by the calling user, as in Dynamics)."""

    def __init__(self, world: World, caller: str) -> None:
        self._world, self._caller = world, caller
        self.who_am_i_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._world.dataverse_client, name)

    def who_am_i(self) -> str:
        self.who_am_i_calls += 1
        return self._caller

    def create_multiple(self, metadata: Any, rows: list[dict[str, Any]]) -> list[WriteOutcome]:
        created = [self._world.dataverse.create("leads", **row, _ownerid_value=self._caller) for row in rows]
        return [WriteOutcome(index=i, ok=True, id=lead_id) for i, lead_id in enumerate(created)]


@pytest.mark.parametrize("resumed", [False, True])
def test_the_cycle_after_creating_leads_for_marketo_only_persons_writes_nothing(resumed: bool) -> None:
    """The job writes each Marketo-only person what the cycle would on reading its new lead (the
    microsoft fields, the lead owner's fields) and keeps it in the baseline: the first cycle, which
    reads the new leads through the delta feed, writes no person again (no echo). Resumed, a lead
    the interrupted run made is found by email, with its owner and creation time."""
    spec = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    spec.pop("createDefaults")  # the fake's lead has no required topic: a default would be trimmed away
    world = make_world(field_map=load_field_map(json.dumps(spec)))
    caller = world.dataverse.create("systemusers", fullname="Sync App", internalemailaddress="sync@example.com")
    persons = [world.marketo.create_person(email=f"only{i}@example.com", lastName=f"Only{i}") for i in range(3)]
    dataverse = _CreatingDataverse(world, caller)
    settings = SimpleNamespace(
        dynamics_delete_policy=DynamicsDeletePolicy.FLAG, marketo_delete_policy=MarketoDeletePolicy.IGNORE
    )
    services = SimpleNamespace(
        marketo=world.marketo_client,
        dataverse=dataverse,
        store=world.store,
        field_map=world.field_map,
        settings=settings,
    )
    work = ChunkWork(
        services,  # type: ignore[arg-type]
        job_id="j1",
        policy=InitialPolicy(marketo_only=MarketoOnlyPolicy.CREATE_LEAD),
        clock=world.clock,
    )
    items = [
        WorkItem(WorkKind.LEAD, EntityType.LEAD.value, mid, None, world.marketo.person(mid), None) for mid in persons
    ]
    found = None
    if resumed:  # the interrupted run created the first person's lead; someone reassigned it since
        other = world.dataverse.create("systemusers", fullname="Sales", internalemailaddress="sales@example.com")
        found = world.dataverse.create(
            "leads", emailaddress1="only0@example.com", lastname="Only0", _ownerid_value=other
        )
    counts = work.apply_chunk("0", chunk_payload(items), items, resumed=resumed)
    assert counts["leads_created"] == 3
    assert world.cycle().report.written.model_dump() == {"marketo": 0, "dynamics": 0}
    assert dataverse.who_am_i_calls == 1  # once for the job, not per person
    for mid in persons:
        person = world.marketo.person(mid)
        owner = ("Sales", "sales@example.com") if found and mid == persons[0] else ("Sync App", "sync@example.com")
        assert (person["microsoftOwnerName"], person["microsoftOwnerEmail"]) == owner
    if found:
        first = world.marketo.person(persons[0])
        assert first["microsoftId"] == found
        assert first["microsoftCreatedDate"] == world.dataverse.rows["leads"][found]["createdon"]
