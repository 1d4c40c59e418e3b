"""The initial sync's rules and sums, pure: its policy, how work is cut into chunks, the API calls
a chunk spends, the floor those calls are measured against, and the time the apply should take.

The go-live plan (``sync_core.golive``) reads both databases and decides what to link or create;
this module says what that costs. Calls are counted the way the clients send them: Marketo 300
records a call, Dataverse ``DATAVERSE_BATCH_SIZE`` records a bulk message. The floor is what the
same records would cost with no chunking at all; the ETA is a model of the services' published
speeds (the same figures as the sandbox's ``realistic`` profile: README "Real-world speed") under
the share of the rate limits the job may use. No I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sync_core.core.fieldmap import Winner
from sync_core.core.jobs import JobProgress
from sync_core.core.models import EntityType

MARKETO_BATCH = 300
DATAVERSE_PAGE = 5000
CHUNK_SIZE = 3000  # work items per chunk: a multiple of 300 (Marketo) and of 1,000 (Dataverse)
CHUNKS_IN_FLIGHT = 2  # the apply works on two chunks at once: one's Table work overlaps the other's calls
BULK_CALLS_PER_WINDOW = 4  # create, enqueue, one status read that finds it Completed, the file
# Per call, from the published figures (README "Real-world speed"): Marketo sync 400 ms + 5 ms a
# record; Dataverse 70 ms a request + 30 ms a record updated, 10 ms a record created.
MARKETO_SYNC_MS = (400.0, 5.0)
DATAVERSE_REQUEST_MS = 70.0
DATAVERSE_UPDATE_MS = 30.0
DATAVERSE_CREATE_MS = 10.0
MARKETO_RATE = (100, 20.0)  # calls per window (seconds), per instance
MARKETO_IN_FLIGHT = 10
# Requests in flight per user that never meet Dataverse's execution-time limit (1,200 s per 300 s;
# dataverse.client.RATE_LIMIT, which the shared budget keeps over every instance).
DATAVERSE_IN_FLIGHT = 4
TABLE_TRANSACTION_MS = 40.0  # one Table transaction of ≤ 100 operations (a link is 2 rows)
LINKS_PER_TRANSACTION = 50
# Before its writes a chunk looks its links up: its persons as one range of the links table (pages
# of 1,000 rows), its records by one point read each, 8 side by side (the state store's workers).
TABLE_READ_MS = 10.0  # one point read, or one page of a range
LINKS_PER_PAGE, READS_IN_FLIGHT = 1000, 8


class MarketoOnlyPolicy(StrEnum):
    """What the initial sync does with a Marketo person no Dynamics record matches."""

    LEAVE = "leave"  # left alone, as the native sync does (B8; the webhook creates leads on demand)
    CREATE_LEAD = "create-lead"  # a Dynamics lead is created for it


class WorkKind(StrEnum):
    LINK = "link"  # a person and a record, matched: linked, the first-contact merge written
    PERSON = "person"  # a Dynamics record without a person: a person is created (B8)
    LEAD = "lead"  # a Marketo-only person (policy create-lead): a lead is created


@dataclass(frozen=True)
class InitialPolicy:
    """Who wins a field both sides hold differently on first contact, per entity, and what
    happens to Marketo-only persons. Defaults as the native sync: B2 and B8."""

    lead_winner: Winner = "marketo"
    contact_winner: Winner = "dynamics"
    marketo_only: MarketoOnlyPolicy = MarketoOnlyPolicy.LEAVE

    @property
    def first_contact(self) -> dict[EntityType, Winner]:
        return {EntityType.LEAD: self.lead_winner, EntityType.CONTACT: self.contact_winner}


@dataclass
class ChunkCost:
    """The calls one chunk spends and the records it writes on each side."""

    marketo_calls: int = 0
    dataverse_calls: int = 0
    marketo_records: int = 0
    dataverse_updated: int = 0
    dataverse_created: int = 0
    ranges: int = 0  # range look-ups of its persons' links (one per chunk of existing persons)

    def add(self, other: ChunkCost) -> None:
        self.marketo_calls += other.marketo_calls
        self.dataverse_calls += other.dataverse_calls
        self.marketo_records += other.marketo_records
        self.dataverse_updated += other.dataverse_updated
        self.dataverse_created += other.dataverse_created
        self.ranges += other.ranges

    @property
    def items(self) -> int:
        """Its work items: one link looked up and written for each."""
        return max(self.marketo_records, self.dataverse_created)


def calls(records: int, per_call: int) -> int:
    return math.ceil(records / per_call) if records > 0 else 0


# On the job queue (``golive.queued``) a plan chunk goes as parts of ``QUEUE_CHUNK`` work items: a
# part's ids (a Marketo id and a Dataverse GUID a pair: ≤ 50 characters) fit the 64 KiB (UTF-16)
# payload of one chunk row. Its worker reads its records again by id: Marketo 300 a call, Dataverse
# 100 GUIDs a ``$filter`` (the client's ``FILTER_MAX_VALUES``).
QUEUE_CHUNK = 600
REREAD_MARKETO, REREAD_DATAVERSE = 300, 100


def reread_cost(kind: WorkKind, items: int) -> ChunkCost:
    """The reads a queued part of ``items`` work items of ``kind`` adds: its persons (links, leads)
    from Marketo and its records (links, persons) from Dataverse."""
    return ChunkCost(
        marketo_calls=calls(items, REREAD_MARKETO) if kind in (WorkKind.LINK, WorkKind.LEAD) else 0,
        dataverse_calls=calls(items, REREAD_DATAVERSE) if kind in (WorkKind.LINK, WorkKind.PERSON) else 0,
    )


def chunk_cost(kind: WorkKind, items: int, flagged: int, *, batch_size: int) -> ChunkCost:
    """The writes of a chunk of ``items`` of ``kind``; ``flagged``: links that also update the record,
    or persons created by email."""
    if kind is WorkKind.LINK:
        return link_chunk_cost(items, flagged, batch_size=batch_size)
    if kind is WorkKind.PERSON:
        return person_chunk_cost(flagged, items - flagged)
    return lead_chunk_cost(items, batch_size=batch_size)


def link_chunk_cost(pairs: int, dynamics_writes: int, *, batch_size: int) -> ChunkCost:
    """Linking ``pairs`` (every person gets its ``microsoft*`` fields and the values Dynamics wins),
    ``dynamics_writes`` of them also updating the record."""
    return ChunkCost(
        marketo_calls=calls(pairs, MARKETO_BATCH),
        dataverse_calls=calls(dynamics_writes, batch_size),
        marketo_records=pairs,
        dataverse_updated=dynamics_writes,
        ranges=1,
    )


def person_chunk_cost(with_email: int, without_email: int) -> ChunkCost:
    """Creating persons: one Sync Leads call per 300, per lookup field (email, or microsoftId)."""
    return ChunkCost(
        marketo_calls=calls(with_email, MARKETO_BATCH) + calls(without_email, MARKETO_BATCH),
        marketo_records=with_email + without_email,
    )


# The new leads' owner (``golive.apply.ChunkWork``): the calling user (``WhoAmI``) and its row, read
# at most once by a chunk's worker (once a job in-process: an upper bound there).
LEAD_OWNER_READS = 2


def lead_chunk_cost(leads: int, *, batch_size: int) -> ChunkCost:
    """Creating leads for Marketo-only persons, then writing the persons' ``microsoft*`` fields and
    their new lead's owner fields."""
    return ChunkCost(
        marketo_calls=calls(leads, MARKETO_BATCH),
        dataverse_calls=calls(leads, batch_size) + (LEAD_OWNER_READS if leads > 0 else 0),
        marketo_records=leads,
        dataverse_created=leads,
        ranges=1,
    )


@dataclass(frozen=True)
class Share:
    """The part of the services' limits the job may use (the rest stays with the cycle and the webhook)."""

    marketo_rate_share: float  # of Marketo's 100 calls / 20 s and 10 in flight
    dataverse_parallel: int  # bulk messages in flight


@dataclass(frozen=True)
class _Load:
    """What one chunk asks of each service and of Table Storage, in seconds of work."""

    marketo_request_s: float  # Σ of its Marketo calls' times
    marketo_path_s: float  # its Marketo calls under the share: in-flight waves or the rate, the longer
    dataverse_request_s: float  # Σ of its bulk messages' times
    dataverse_path_s: float  # its messages in waves of ``dataverse_parallel``
    table_s: float  # its link look-ups (both ids) and its link writes
    cpu_s: float  # its preparation on this machine


@dataclass(frozen=True)
class LinkGrowth:
    """How a link's Table reads grow with the links stored, as the store measures it
    (``StateStore.link_read_growth``): a look-up by ``$filter`` costs ``filter_growth_s`` more a key
    per link stored (the service reads the key's partition for it), a point read costs ``point_s``
    a key whatever the table holds (None: not measured), and the store reads by whichever costs
    less (``state._layout.LookupChoice``); a range read (a chunk's persons) costs
    ``range_growth_s`` more per link stored. All zero: reads that do not grow."""

    filter_growth_s: float = 0.0
    point_s: float | None = None
    range_growth_s: float = 0.0


@dataclass(frozen=True)
class LocalCosts:
    """What happens between the requests, in seconds: a work item's links looked up before its
    chunk writes (``lookup_s``: one point read per record, and the persons' range past the first
    page), its link written after (``write_s``: its share of the chunk's Table transactions), the
    local CPU of preparing it (``cpu_s``: reading it from the snapshot, the merge, validation, the
    payloads); and per chunk, the first page of its persons' range (``range_s``: one scan per links
    partition, merged). ``lookup_s`` and ``range_s`` are their costs in an empty table; ``growth``
    says how they grow with the links stored (``lookup_at``, ``range_at``). ``PUBLISHED`` assumes
    Azure Table Storage's published latencies, no growth and no CPU; the plan measures the
    configured store and this machine (``golive.plan.calibrate``) and says which it used
    (``source``)."""

    lookup_s: float
    write_s: float
    cpu_s: float = 0.0
    range_s: float = 0.0
    source: str = "published"
    growth: LinkGrowth = LinkGrowth()

    def lookup_at(self, links: int) -> float:
        """A work item's look-up with ``links`` stored: the filters' cost grown, or a point read's
        if that is less (the store reads the cheaper way)."""
        grown = self.lookup_s + self.growth.filter_growth_s * links
        point = self.growth.point_s
        return grown if point is None else min(grown, point)

    def range_at(self, links: int) -> float:
        """A chunk's range read with ``links`` stored."""
        return self.range_s + self.growth.range_growth_s * links


PUBLISHED = LocalCosts(
    lookup_s=(1 / LINKS_PER_PAGE + 1 / READS_IN_FLIGHT) * TABLE_READ_MS / 1000.0,
    write_s=TABLE_TRANSACTION_MS / LINKS_PER_TRANSACTION / 1000.0,
)


def _load(cost: ChunkCost, share: Share, local: LocalCosts = PUBLISHED, links: int = 0) -> _Load:
    """What ``cost`` asks of each service and of Table Storage, with ``links`` stored before it."""
    marketo_calls = cost.marketo_calls
    per_call = MARKETO_SYNC_MS[0] + MARKETO_SYNC_MS[1] * min(cost.marketo_records / max(marketo_calls, 1), 300)
    in_flight = _marketo_in_flight(share)
    marketo = max(math.ceil(marketo_calls / in_flight) * per_call / 1000.0, max(marketo_calls - 1, 0) / _rate(share))
    dataverse_ms = (
        cost.dataverse_calls * DATAVERSE_REQUEST_MS
        + cost.dataverse_updated * DATAVERSE_UPDATE_MS
        + cost.dataverse_created * DATAVERSE_CREATE_MS
    )
    waves = math.ceil(cost.dataverse_calls / max(share.dataverse_parallel, 1)) if cost.dataverse_calls else 0
    per_message = dataverse_ms / cost.dataverse_calls if cost.dataverse_calls else 0.0
    items = cost.items
    return _Load(
        marketo_request_s=marketo_calls * per_call / 1000.0,
        marketo_path_s=marketo,
        dataverse_request_s=dataverse_ms / 1000.0,
        dataverse_path_s=waves * per_message / 1000.0,
        table_s=items * (local.lookup_at(links) + local.write_s) + cost.ranges * local.range_at(links),
        cpu_s=items * local.cpu_s,
    )


def _marketo_in_flight(share: Share) -> int:
    return max(1, math.floor(MARKETO_IN_FLIGHT * share.marketo_rate_share))


def _rate(share: Share) -> float:
    """Marketo calls a second under the share."""
    return max(1, math.floor(MARKETO_RATE[0] * share.marketo_rate_share)) / MARKETO_RATE[1]


def chunk_seconds(cost: ChunkCost, share: Share, local: LocalCosts = PUBLISHED) -> float:
    """How long a chunk takes on its own: the look-ups of its links by both ids, its preparation,
    both sides' writes at once (the longer counts), then its Table transactions."""
    load = _load(cost, share, local)
    return max(load.marketo_path_s, load.dataverse_path_s) + load.table_s + load.cpu_s


@dataclass
class ApplyTime:
    """The apply's time, its chunks added one by one. ``in_flight`` chunks run at once
    (``CHUNKS_IN_FLIGHT`` in one process), so the apply takes the longest of: its chunks' own times
    (``chunk_seconds``: Table look-ups, CPU, the services, Table writes, one after the other) over
    the chunks in flight, or its longest chunk; Marketo's work under the share (every call's time
    over the calls allowed in flight, or every call at the allowed rate); Dataverse's (every
    message's time over the messages in flight, ``share.dataverse_parallel`` per process and at most
    ``dataverse_in_flight`` over all of them); Table
    Storage's (one chunk's look-ups and writes at a time per process); the CPU's (the chunks'
    preparation does not overlap within a process). Plus ``fixed_s`` once (the apply's start: its
    clients, the schema, the open failures). Each chunk's Table work is priced at the links stored
    when it starts (``links``: those there before the apply, then every chunk's items; see
    ``LocalCosts.lookup_at``), as look-ups grow with the table.

    On the job queue (``queue_time``) the chunks are the queued parts (their re-reads included),
    ``processes`` Function instances run ``QUEUE_PARTS_PER_INSTANCE`` parts each, and the share is
    the background share of both services' limits, for all instances together."""

    share: Share
    local: LocalCosts = PUBLISHED
    fixed_s: float = 0.0
    in_flight: int = CHUNKS_IN_FLIGHT
    processes: int = 1
    dataverse_in_flight: int | None = None  # messages in flight over every process; None: per process only
    links: int = 0  # links stored when the next chunk starts
    path_s: float = 0.0
    longest_s: float = 0.0
    marketo_calls: int = 0
    marketo_request_s: float = 0.0
    dataverse_request_s: float = 0.0
    table_s: float = 0.0
    cpu_s: float = 0.0
    services_path_s: float = 0.0

    def add(self, cost: ChunkCost) -> None:
        load = _load(cost, self.share, self.local, self.links)
        self.links += cost.items
        services = max(load.marketo_path_s, load.dataverse_path_s)
        own = services + load.table_s + load.cpu_s
        self.path_s += own
        self.services_path_s += services
        self.longest_s = max(self.longest_s, own)
        self.marketo_calls += cost.marketo_calls
        self.marketo_request_s += load.marketo_request_s
        self.dataverse_request_s += load.dataverse_request_s
        self.table_s += load.table_s
        self.cpu_s += load.cpu_s

    def _bounds(self) -> dict[str, float]:
        share = self.share
        return {
            "chunks": max(self.path_s / self.in_flight, self.longest_s),
            "marketo": max(
                self.marketo_request_s / _marketo_in_flight(share), max(self.marketo_calls - 1, 0) / _rate(share)
            ),
            "dataverse": self.dataverse_request_s / self._dataverse_places(),
            "table_storage": self.table_s / self.processes,
            "cpu": self.cpu_s / self.processes,
        }

    def _dataverse_places(self) -> int:
        places = max(self.share.dataverse_parallel, 1) * self.processes
        return places if self.dataverse_in_flight is None else max(1, min(places, self.dataverse_in_flight))

    @property
    def seconds(self) -> float:
        return self.fixed_s + max(self._bounds().values())

    def parts(self) -> dict[str, Any]:
        """The ETA and what it is made of, for the plan's output: each part's total over the whole
        apply (``services_s``: the chunks' API calls by the published speeds, ``table_storage_s``,
        ``local_cpu_s``, ``start_s``), the chunks' paths over the chunks in flight (``chunks_s``:
        where the parts overlap), the bound that decides, and the costs per item assumed: in an empty
        table, and grown to the links stored at the end (``links_at_end``)."""
        bounds = self._bounds()
        bound = max(bounds, key=lambda name: bounds[name])
        return {
            "eta_seconds": round(self.seconds, 1),
            "start_s": round(self.fixed_s, 1),
            "services_s": round(max(self.services_path_s / self.in_flight, bounds["marketo"], bounds["dataverse"]), 1),
            "table_storage_s": round(bounds["table_storage"], 1),
            "local_cpu_s": round(bounds["cpu"], 1),
            "chunks_s": round(bounds["chunks"], 1),
            "bound": bound,
            "chunks_in_flight": self.in_flight,
            "per_item_ms": {
                "link_lookup": round(self.local.lookup_s * 1000.0, 3),
                "link_write": round(self.local.write_s * 1000.0, 3),
                "cpu": round(self.local.cpu_s * 1000.0, 3),
                "range_per_chunk": round(self.local.range_s * 1000.0, 1),
                "link_lookup_at_end": round(self.local.lookup_at(self.links) * 1000.0, 3),
                "range_per_chunk_at_end": round(self.local.range_at(self.links) * 1000.0, 1),
                "source": self.local.source,
            },
            "links_at_end": self.links,
        }


# On the job queue one Function instance runs this many parts at once: host.json's
# ``extensions.queues.batchSize`` (the local host's as Azure's; Azure may fetch the next batch at
# ``newBatchThreshold``, so this is the lower figure).
QUEUE_PARTS_PER_INSTANCE = 4


def queue_time(
    share: Share,
    *,
    background_share: float,
    instances: int,
    local: LocalCosts = PUBLISHED,
    fixed_s: float = 0.0,
    links: int = 0,
) -> ApplyTime:
    """An ``ApplyTime`` for the apply on the job queue: its parts (add each part's cost, its
    re-reads included) on ``instances`` instances, under ``background_share`` of the limits (the
    queue's calls are background work, their budget shared by every instance): Marketo's rate and
    places, and Dataverse's ``DATAVERSE_IN_FLIGHT`` requests, shared by the instances, each of which
    sends at most its own ``share.dataverse_parallel``. ``links``: stored before the apply."""
    instances = max(1, instances)
    places = max(1, math.floor(DATAVERSE_IN_FLIGHT * background_share))
    queued = Share(
        marketo_rate_share=share.marketo_rate_share * background_share,
        dataverse_parallel=max(1, min(share.dataverse_parallel, places)),
    )
    return ApplyTime(
        queued,
        local=local,
        fixed_s=fixed_s,
        in_flight=instances * QUEUE_PARTS_PER_INSTANCE,
        processes=instances,
        dataverse_in_flight=places,
        links=links,
    )


@dataclass
class Floor:
    """The fewest calls the same work can take: every record of a kind in full batches."""

    marketo: int = 0
    dataverse: int = 0
    detail: dict[str, int] = field(default_factory=dict)


def write_floor(
    *, linked: int, dynamics_updates: int, persons_email: int, persons_other: int, leads: int, batch_size: int
) -> Floor:
    marketo = calls(linked, MARKETO_BATCH) + calls(persons_email, MARKETO_BATCH) + calls(persons_other, MARKETO_BATCH)
    marketo += calls(leads, MARKETO_BATCH)
    dataverse = calls(dynamics_updates, batch_size) + calls(leads, batch_size)
    return Floor(marketo, dataverse)


def read_floor(*, windows: int, dataverse_rows: dict[str, int]) -> Floor:
    """Reading both sides: a bulk export per 31-day window, Dataverse pages of 5,000, the service's
    largest (one at least; the plan reads smaller pages, ``golive.plan.READ_PAGE``)."""
    pages = sum(max(1, calls(rows, DATAVERSE_PAGE)) for rows in dataverse_rows.values())
    return Floor(BULK_CALLS_PER_WINDOW * windows, pages)


# -- the job's checkpoint row (state table, one row; the status view reads it) -------------------

JOB_CURSOR = "initial-sync"


class JobStatus(StrEnum):
    PLANNED = "planned"
    APPLYING = "applying"
    DONE = "done"


class JobState(BaseModel):
    """The initial sync job as the state store keeps it: which chunks are started and done (a
    bitmap each, hex), what the done chunks did, and the plan's headline numbers. Small: a few KiB
    at a million records (≈ 340 chunks)."""

    model_config = ConfigDict(extra="ignore")

    job_id: str
    snapshot: str
    status: JobStatus = JobStatus.PLANNED
    chunks: int = 0
    started: str = ""
    done: str = ""
    outcome: dict[str, int] = Field(default_factory=dict)  # summed over the done chunks
    plan: dict[str, Any] = Field(default_factory=dict)  # the plan's numbers (no ids, no values)
    planned_at: str | None = None
    apply_started_at: str | None = None
    finished_at: str | None = None
    apply_seconds: float = 0.0  # time spent applying, over every run of --apply
    # The job-queue job applying the chunks not done in this process (``golive.queued``), if any:
    # its chunk rows, not the bitmaps, then say what is done.
    queue_job: str | None = None

    def is_started(self, chunk: int) -> bool:
        return _bit(self.started, chunk)

    def is_done(self, chunk: int) -> bool:
        return _bit(self.done, chunk)

    @property
    def done_count(self) -> int:
        return sum(bin(int(self.done[i : i + 2], 16)).count("1") for i in range(0, len(self.done), 2))

    def with_started(self, chunk: int) -> JobState:
        return self.model_copy(update={"started": _set_bit(self.started, chunk, self.chunks)})

    def with_done(self, chunk: int, counts: Mapping[str, int], seconds: float) -> JobState:
        outcome = dict(self.outcome)
        for key, value in counts.items():
            outcome[key] = outcome.get(key, 0) + value
        return self.model_copy(
            update={
                "done": _set_bit(self.done, chunk, self.chunks),
                "outcome": outcome,
                "apply_seconds": self.apply_seconds + seconds,
            }
        )

    def progress(self, queued: JobProgress | None = None) -> dict[str, Any]:
        """For the status view: chunks done of all, and the time left at the pace so far (else the plan's
        ETA). ``queued``: the progress of ``queue_job``, whose chunks (parts of the plan's chunks) are
        then counted, with what they did added to what this process did before."""
        done, chunks, running = self.done_count, self.chunks, 0
        outcome = dict(self.outcome)
        if queued is not None:
            done, chunks, running = queued.done, queued.job.chunks, queued.running
            for key, value in queued.totals.items():
                outcome[key] = outcome.get(key, 0) + value
        left = chunks - done
        if done and self.apply_seconds and queued is None:
            eta = self.apply_seconds / done * left
        else:
            eta = float(self.plan.get("eta_seconds") or 0.0) * (left / chunks if chunks else 0.0)
        return {
            "job_id": self.job_id,
            "status": self.status.value,
            "chunks_done": done,
            "chunks": chunks,
            "percent": round(100.0 * done / chunks, 1) if chunks else 100.0,
            "eta_seconds": round(eta, 1),
            "outcome": outcome,
            "queue_job": self.queue_job,
            "running": running,
        }


def _bit(bits: str, index: int) -> bool:
    byte = index // 8
    return byte * 2 < len(bits) and bool(int(bits[byte * 2 : byte * 2 + 2], 16) & (1 << (index % 8)))


def _set_bit(bits: str, index: int, size: int) -> str:
    raw = bytearray.fromhex(bits) if bits else bytearray()
    need = max((size + 7) // 8, index // 8 + 1)
    raw.extend(b"\0" * (need - len(raw)))
    raw[index // 8] |= 1 << (index % 8)
    return raw.hex()
