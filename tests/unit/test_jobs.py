"""The chunked-job layer (sync_core.jobs) over the memory store and queue: every chunk is marked
done exactly once whatever the deliveries, a dead worker's chunk is taken over after its lease, a
failing chunk is released with its error, a throttled one waits for the service instead of
spending its deliveries, and the job completes once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest

from sync_core import jobs
from sync_core.core.errors import QuotaExceededError, RateLimitedError
from sync_core.core.jobs import ChunkRecord, ChunkState, JobRecord, JobState
from sync_core.jobs import JobKind, JobProgress
from sync_core.settings import Settings
from sync_core.state import MemoryStateStore
from sync_core.state.queue import MemoryJobQueue
from sync_core.wiring.services import Services, build_services

KIND = "unit-test"
ENV = {
    "MARKETO_BASE_URL": "http://127.0.0.1:9",
    "MARKETO_CLIENT_ID": "id",
    "MARKETO_CLIENT_SECRET": "secret",
    "DATAVERSE_URL": "http://127.0.0.1:9",
    "DATAVERSE_STATIC_TOKEN": "token",
    "SYNC_TABLES_CONNECTION": "UseDevelopmentStorage=true",
}


class Recorder:
    def __init__(self) -> None:
        self.runs: list[int] = []
        self.completions: list[str] = []
        self.fail_on: set[int] = set()
        self.throttle: Exception | None = None  # raised once, by the next chunk run

    def run_chunk(self, services: Services, job: JobRecord, chunk: ChunkRecord) -> Mapping[str, int]:
        self.runs.append(chunk.index)
        if self.throttle is not None:
            err, self.throttle = self.throttle, None
            raise err
        if chunk.index in self.fail_on:
            raise RuntimeError("the service said no")
        return {"records": len(chunk.payload["ids"])}

    def complete(self, services: Services, job: JobRecord, progress: JobProgress) -> None:
        self.completions.append(job.id)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def recorder() -> Recorder:
    recorder = Recorder()
    jobs.register(JobKind(KIND, recorder.run_chunk, recorder.complete))
    return recorder


@pytest.fixture
def services() -> Services:
    return build_services(Settings.from_env(ENV), store=MemoryStateStore(), queue=MemoryJobQueue())


def _queue(services: Services) -> MemoryJobQueue:
    assert isinstance(services.queue, MemoryJobQueue)
    return services.queue


def drain(services: Services, *, owner: str = "w1", clock: Clock | None = None) -> list[str]:
    outcomes = []
    queue = _queue(services)
    while messages := queue.receive(max_messages=32, visibility_timeout=60):
        for message in messages:
            outcomes.append(jobs.process_message(services, message.body, owner=owner, now=clock or Clock()))
            queue.delete(message)
    return outcomes


def test_every_chunk_runs_once_even_when_each_message_is_delivered_twice(
    services: Services, recorder: Recorder
) -> None:
    job = jobs.start_job(services, KIND, {"field": "x"}, ({"ids": [i, i + 1]} for i in range(0, 10, 2)))
    for index in range(job.chunks):  # every message a second time
        _queue(services).send(jobs.message_body(job.id, index))
    outcomes = drain(services)
    assert sorted(recorder.runs) == [0, 1, 2, 3, 4]
    assert sorted(outcomes) == ["done"] * 5 + ["duplicate"] * 5
    progress = jobs.job_progress(services.store, job.id)
    assert progress is not None
    assert progress.done == 5
    assert progress.totals == {"records": 10}
    assert progress.job.state is JobState.DONE
    assert recorder.completions == [job.id]


def test_a_chunk_held_by_a_live_worker_is_deferred_until_its_lease_ends(services: Services, recorder: Recorder) -> None:
    job = jobs.start_job(services, KIND, {}, [{"ids": [1]}], enqueue=False)
    clock = Clock()
    chunk = services.store.get_chunk(job.id, 0)
    assert chunk is not None
    services.store.put_chunk(
        chunk.model_copy(
            update={"state": ChunkState.RUNNING, "owner": "w0", "lease_until": clock.now + timedelta(seconds=30)}
        )
    )
    assert jobs.process_message(services, jobs.message_body(job.id, 0), owner="w1", now=clock) == "deferred"
    assert recorder.runs == []
    # sent again, invisible for the rest of the lease
    assert len(_queue(services)) == 1
    assert _queue(services).receive(max_messages=1, visibility_timeout=60) == []


def test_a_dead_workers_chunk_is_taken_over_after_its_lease(services: Services, recorder: Recorder) -> None:
    job = jobs.start_job(services, KIND, {}, [{"ids": [1]}], enqueue=False)
    clock = Clock()
    chunk = services.store.get_chunk(job.id, 0)
    assert chunk is not None
    services.store.put_chunk(
        chunk.model_copy(update={"state": ChunkState.RUNNING, "owner": "dead", "lease_until": clock.now, "attempts": 1})
    )
    assert jobs.process_message(services, jobs.message_body(job.id, 0), owner="w1", now=clock) == "done"
    done = services.store.get_chunk(job.id, 0)
    assert done is not None
    assert done.state is ChunkState.DONE
    assert done.owner == "w1"
    assert done.attempts == 2


def test_a_failing_chunk_is_released_with_its_error_and_the_error_raised(
    services: Services, recorder: Recorder
) -> None:
    recorder.fail_on = {1}
    job = jobs.start_job(services, KIND, {}, [{"ids": [1]}, {"ids": [2]}], enqueue=False)
    with pytest.raises(RuntimeError, match="said no"):
        jobs.process_message(services, jobs.message_body(job.id, 1), owner="w1")
    failed = services.store.get_chunk(job.id, 1)
    assert failed is not None
    assert failed.state is ChunkState.PENDING
    assert "said no" in (failed.error or "")
    progress = jobs.job_progress(services.store, job.id)
    assert progress is not None
    assert progress.errors == [f"chunk 1: {failed.error}"]
    recorder.fail_on = set()
    assert jobs.resume_job(services, job.id) == 2  # chunk 0 was never sent (enqueue=False), chunk 1 failed
    drain(services)
    final = jobs.job_progress(services.store, job.id)
    assert final is not None
    assert final.complete
    assert final.job.state is JobState.DONE
    assert recorder.completions == [job.id]


def test_a_message_that_is_not_a_chunk_is_dropped(services: Services, recorder: Recorder) -> None:
    assert jobs.process_message(services, "not json", owner="w1") == "unknown"
    assert jobs.process_message(services, json.dumps({"job": "nope", "chunk": 0}), owner="w1") == "unknown"
    assert recorder.runs == []


def test_a_job_without_chunks_is_done_at_once(services: Services, recorder: Recorder) -> None:
    job = jobs.start_job(services, KIND, {}, [])
    assert job.state is JobState.DONE
    assert recorder.completions == [job.id]


class QueueClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("throttle", "wait"),
    [
        (RateLimitedError("dataverse: 429 0x80072321", service="dataverse", retry_after=41.2), 42),
        (RateLimitedError("marketo: 606", service="marketo"), jobs.THROTTLED_WAIT),
        (QuotaExceededError("marketo: 607 daily quota reached", service="marketo"), jobs.QUOTA_WAIT),
    ],
)
def test_a_throttled_chunk_is_sent_again_for_when_the_service_asks_without_spending_a_delivery(
    recorder: Recorder, throttle: Exception, wait: int
) -> None:
    clock = QueueClock()
    queue = MemoryJobQueue(clock=clock)
    services = build_services(Settings.from_env(ENV), store=MemoryStateStore(), queue=queue)
    job = jobs.start_job(services, KIND, {}, [{"ids": [1, 2]}])
    recorder.throttle = throttle
    [message] = queue.receive(max_messages=1, visibility_timeout=10)
    # The delivery ends well (the host deletes its message: no step towards the poison queue) ...
    assert jobs.process_message(services, message.body, owner="w1") == "throttled"
    queue.delete(message)
    released = services.store.get_chunk(job.id, 0)
    assert released is not None
    assert released.state is ChunkState.PENDING
    assert released.error is not None
    assert released.error.endswith(f"sent again in {wait} s")
    assert type(throttle).__name__ in released.error
    # ... and a new message waits for the service's time.
    assert len(queue) == 1
    clock.now = wait - 0.5
    assert queue.receive(max_messages=1, visibility_timeout=10) == []
    clock.now = wait
    assert drain(services) == ["done"]
    assert recorder.runs == [0, 0]
    assert queue.poison_count() == 0
    final = jobs.job_progress(services.store, job.id)
    assert final is not None
    assert final.job.state is JobState.DONE
    assert final.errors == []


def test_without_a_queue_a_throttled_chunk_is_released_and_the_error_raised(recorder: Recorder) -> None:
    local = build_services(Settings.from_env(ENV), store=MemoryStateStore())
    assert local.queue is None
    job = jobs.start_job(local, KIND, {}, [{"ids": [1]}], enqueue=False)
    recorder.throttle = RateLimitedError("dataverse: 429", service="dataverse", retry_after=3.0)
    with pytest.raises(RateLimitedError):
        jobs.process_message(local, jobs.message_body(job.id, 0), owner="inline")
    released = local.store.get_chunk(job.id, 0)
    assert released is not None
    assert released.state is ChunkState.PENDING
    assert "RateLimitedError" in (released.error or "")
