"""Field backfill (sync_core.backfill) over the unit fakes: a field added to the map is reported
as not backfilled, and the job fills it from the winning side — Marketo for leads, Dynamics for
contacts — in bulk, sets its baseline, records a refused value as a failure, and clears the report;
a backfill stopped midway resumes with only the chunks not done."""

from __future__ import annotations

import dataclasses

import pytest

from sync_core import backfill, jobs
from sync_core.core.fieldmap import load_field_map
from sync_core.core.jobs import ChunkState, JobState
from sync_core.core.models import Direction
from sync_core.jobs import fields
from sync_core.settings import Settings
from sync_core.state.queue import MemoryJobQueue
from sync_core.status.text import render_text
from sync_core.status.view import build_status
from sync_core.wiring.services import Services
from tests.unit.conftest import World, field_map_with, make_world
from tests.unit.test_jobs import ENV


@pytest.fixture
def world() -> World:
    return make_world(field_map=field_map_with(drop=("title",)))  # go-live without the title field


def services_with_title(world: World) -> Services:
    return Services(
        settings=Settings.from_env(ENV),
        field_map=load_field_map(None),  # the map now has title
        counters=world.counters,
        marketo=world.marketo_client,
        dataverse=world.dataverse_client,
        store=world.store,
        queue=MemoryJobQueue(),
    )


def drain(services: Services) -> None:
    queue = services.queue
    assert isinstance(queue, MemoryJobQueue)
    while messages := queue.receive(max_messages=10, visibility_timeout=60):
        for message in messages:
            jobs.process_message(services, message.body, owner="unit")
            queue.delete(message)


def test_an_added_field_is_filled_from_the_winning_side_of_each_link(world: World) -> None:
    leads = [world.linked_lead(i, jobtitle=f"Dynamics title {i}") for i in range(3)]
    contacts = [world.linked_contact(i, jobtitle=f"Contact title {i}") for i in range(2)]
    for i, (_, person) in enumerate(leads):
        world.marketo.edit(person, title=f"Marketo title {i}")
    services = services_with_title(world)
    assert fields.unsynced_fields(world.store, services.field_map) == ["title"]

    mapping = backfill.field_mapping(services, "jobtitle")
    job = jobs.start_job(
        services,
        backfill.KIND,
        {"field": mapping.key},
        backfill.plan_chunks(world.store, mapping, since=None, chunk_size=2),
    )
    assert job.chunks == 3  # 5 links, 2 a chunk
    drain(services)

    for i, (lead_id, person) in enumerate(leads):  # leads: Marketo wins
        assert world.dataverse.row("leads", lead_id)["jobtitle"] == f"Marketo title {i}"
        link = world.link_of(person)
        assert link is not None
        assert link.baseline["title"] == f"Marketo title {i}"
    for i, (_, person) in enumerate(contacts):  # contacts: Dynamics wins
        assert world.marketo.person(person)["title"] == f"Contact title {i}"
    progress = jobs.job_progress(world.store, job.id)
    assert progress is not None
    assert progress.complete
    assert progress.totals["written"] == 5
    assert fields.unsynced_fields(world.store, services.field_map) == []


def test_a_value_dynamics_refuses_is_recorded_as_a_failure_and_the_rest_written(world: World) -> None:
    leads = [world.linked_lead(i) for i in range(2)]
    world.marketo.edit(leads[0][1], title="x" * 500)  # longer than jobtitle's 100 characters
    world.marketo.edit(leads[1][1], title="Fine")
    services = services_with_title(world)
    mapping = backfill.field_mapping(services, "title")
    job = jobs.start_job(
        services, backfill.KIND, {"field": "title"}, backfill.plan_chunks(world.store, mapping, since=None)
    )
    drain(services)
    progress = jobs.job_progress(world.store, job.id)
    assert progress is not None
    assert (progress.totals["written"], progress.totals["failed"]) == (1, 1)
    assert world.dataverse.row("leads", leads[1][0])["jobtitle"] == "Fine"
    [failure] = world.store.list_failures()
    assert failure.direction is Direction.TO_DYNAMICS
    assert failure.marketo_id == leads[0][1]
    assert any("jobtitle" in reason for reason in failure.reasons)


def test_since_keeps_only_links_updated_from_that_date(world: World) -> None:
    world.linked_lead(1)
    services = services_with_title(world)
    mapping = backfill.field_mapping(services, "title")
    later = world.clock().replace(year=2100)
    assert list(backfill.plan_chunks(world.store, mapping, since=later)) == []
    assert [len(c["ids"]) for c in backfill.plan_chunks(world.store, mapping, since=None)] == [1]


def test_an_unmapped_field_is_refused(world: World) -> None:
    with pytest.raises(ValueError, match="not in the field map"):
        backfill.field_mapping(services_with_title(world), "fax")


def test_the_status_view_shows_the_field_not_backfilled_the_job_and_the_poison_queue(world: World) -> None:
    world.linked_lead(1)
    services = services_with_title(world)
    assert isinstance(services.queue, MemoryJobQueue)
    services.queue.send_poison('{"job": "x", "chunk": 0}')
    status = build_status(world.store, now=world.clock(), field_map=services.field_map, queue=services.queue)
    assert status.jobs is not None
    assert status.jobs.unbackfilled_fields == ["title"]
    assert status.jobs.poison_messages == 1
    assert any("backfill --field title" in detail for detail in status.health.details)
    assert any("poison queue" in detail for detail in status.health.details)

    mapping = backfill.field_mapping(services, "title")
    job = jobs.start_job(
        services, backfill.KIND, {"field": "title"}, backfill.plan_chunks(world.store, mapping, since=None)
    )
    running = build_status(world.store, now=world.clock(), field_map=services.field_map, queue=services.queue)
    assert running.jobs is not None
    assert [(j.id, j.state, j.done, j.pending) for j in running.jobs.recent] == [(job.id, "running", 0, 1)]
    assert f"Job {job.id[:8]} backfill title: running, 0/1 chunks" in render_text(running)
    drain(services)
    done = build_status(world.store, now=world.clock(), field_map=services.field_map, queue=services.queue)
    assert done.jobs is not None
    assert done.jobs.unbackfilled_fields == []
    assert done.jobs.recent[0].state == "done"


def test_a_backfill_stopped_midway_resumes_and_fills_every_link_once(world: World) -> None:
    leads = [world.linked_lead(i) for i in range(6)]
    for i, (_, person) in enumerate(leads):
        world.marketo.edit(person, title=f"Marketo title {i}")
    services = services_with_title(world)
    mapping = backfill.field_mapping(services, "title")
    job = jobs.start_job(
        services,
        backfill.KIND,
        {"field": "title"},
        backfill.plan_chunks(world.store, mapping, since=None, chunk_size=2),
    )
    queue = services.queue
    assert isinstance(queue, MemoryJobQueue)
    # The stop: one chunk done, one held by a worker that died (its lease ran out), the rest of the
    # messages lost with the queue.
    [first] = queue.receive(max_messages=1, visibility_timeout=60)
    assert jobs.process_message(services, first.body, owner="w1") == "done"
    dead = world.store.get_chunk(job.id, 1)
    assert dead is not None
    world.store.put_chunk(
        dead.model_copy(
            update={"state": ChunkState.RUNNING, "owner": "dead", "lease_until": world.clock(), "attempts": 1}
        )
    )
    services = dataclasses.replace(services, queue=MemoryJobQueue())
    progress = jobs.job_progress(world.store, job.id)
    assert progress is not None
    assert (progress.done, progress.complete) == (1, False)

    assert jobs.resume_job(services, job.id) == 2  # the dead worker's chunk and the lost one
    drain(services)

    chunks = list(world.store.iter_chunks(job.id))
    assert [(c.state, c.attempts) for c in chunks] == [(ChunkState.DONE, 1), (ChunkState.DONE, 2), (ChunkState.DONE, 1)]
    progress = jobs.job_progress(world.store, job.id)
    assert progress is not None
    assert progress.job.state is JobState.DONE
    assert progress.totals["written"] == 6
    for i, (lead_id, _) in enumerate(leads):
        assert world.dataverse.row("leads", lead_id)["jobtitle"] == f"Marketo title {i}"
    assert fields.unsynced_fields(world.store, services.field_map) == []
