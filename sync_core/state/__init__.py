"""The state store: everything the sync remembers between runs (design §4).

``StateStore`` is the Protocol; ``MemoryStateStore`` serves fast tests and ``TableStateStore``
is Azure Table Storage (Azurite locally); ``wiring.build_state_store(settings)`` makes the one
the settings describe. The records it keeps are the core's models (``core.models``). One
contract test suite runs against both. The store does no clock reads: callers pass ``now``.
Conditional writes raise ``StateConflictError`` (``LeaseHeldError`` for the lease) and never
overwrite. Layout and batching: ``_store``; links, their partitions and their migration:
``_links``; row mapping, paging and counting: ``_rows``; keys and service limits: ``_keys``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from sync_core.core.golive import LinkGrowth
from sync_core.core.jobs import ChunkRecord, JobRecord
from sync_core.core.models import (
    ActionRecord,
    CampaignMember,
    Claim,
    Collision,
    Cursor,
    EntityType,
    Lease,
    Link,
    RecordFailure,
    RunReport,
    StoreCounters,
    WebhookCalls,
)
from sync_core.core.retention import PruneReport, Retention
from sync_core.state._links import LinkMigration
from sync_core.state._memory import MemoryStateStore
from sync_core.state._table import TableStateStore

__all__ = ["LinkMigration", "MemoryStateStore", "StateStore", "TableStateStore"]


class StateStore(Protocol):
    counters: StoreCounters  # what was sent to Table Storage so far; replace it to start afresh
    retention: Retention  # how long the append-style rows are kept (``prune_expired``)

    # -- cursors and the cycle lease (ETag optimistic concurrency) -------------------------
    def get_cursor(self, name: str) -> Cursor | None: ...

    def put_cursor(self, cursor: Cursor) -> Cursor:
        """Write ``cursor.value``. ``cursor.etag`` None: create, conflict if it exists;
        otherwise replace only if the stored ETag still matches. Returns the cursor with its new ETag."""
        ...

    def delete_cursor(self, cursor: Cursor) -> None:
        """Remove a cursor (e.g. an expired delta link). With ``cursor.etag`` only if it still
        matches (else ``StateConflictError``); without, whatever is there. Missing: no error."""
        ...

    def acquire_lease(self, owner: str, *, now: datetime, duration: timedelta) -> Lease:
        """Take the cycle lease if it is free or expired; raise ``LeaseHeldError`` otherwise."""
        ...

    def renew_lease(self, lease: Lease, *, now: datetime, duration: timedelta) -> Lease:
        """Extend the lease to ``now + duration``; ``StateConflictError`` if it changed since
        (it expired and another cycle took it)."""
        ...

    def release_lease(self, lease: Lease) -> None:
        """Give the lease up, only if it is still ours (``StateConflictError`` otherwise)."""
        ...

    # -- links and baselines ----------------------------------------------------------------
    def get_links_by_marketo_ids(self, marketo_ids: Iterable[int]) -> dict[int, Link]: ...

    def get_links_by_dataverse_ids(self, entity: EntityType, dataverse_ids: Iterable[str]) -> dict[str, Link]: ...

    def upsert_links(self, links: Sequence[Link], *, replaces: Sequence[Link] = ()) -> None:
        """Write links (and their baselines), findable by either id. ``replaces`` are the links'
        previous versions, whose Dataverse-id index rows are removed when the Dataverse side changed
        (qualification moves a person from a lead to a contact). Batched ≤ 100 ops per transaction,
        one partition each; a reader finds each link as it was or as written, never neither (the
        replaced rows go after the new ones). One link per record per call."""
        ...

    def delete_links(self, links: Sequence[Link]) -> None:
        """Remove links (both index rows); missing ones are ignored."""
        ...

    def iter_links(self, *, after_marketo_id: int | None = None) -> Iterable[Link]:
        """Every link (of the persons with a Marketo id above ``after_marketo_id``), in Marketo id
        order, in pages fetched as they are iterated (for full re-reads, the status view, and the
        initial sync's look-up of a range of persons: stop iterating past its end)."""
        ...

    def scratch_links(self, name: str) -> StateStore:
        """This store, its links in partitions ``{name}-NN`` that no reader of links uses: the same
        requests as the real link work, for measuring it (the go-live plan's probe). Delete what
        you write there."""
        ...

    def link_read_growth(self, links: int, *, like: Link) -> LinkGrowth:
        """On a ``scratch_links`` view: how a look-up of many links (by ``$filter``; by point read)
        and a range read grow with the links stored, up to ``links``, measured on this store with
        copies of ``like`` under new ids (spread over the view's partitions as links are), deleted
        before this returns (the go-live plan's probe)."""
        ...

    def migrate_links(self, *, pages: int) -> LinkMigration:
        """Move up to ``pages`` pages of links from the one-partition layout to the spread one;
        ``done`` when none is left. Idempotent, resumable; the caller holds the cycle lease."""
        ...

    # -- collisions, failures, run reports (newest first) --------------------------------------
    def add_collisions(self, collisions: Sequence[Collision]) -> None: ...

    def list_collisions(self, *, limit: int = 50) -> list[Collision]: ...

    def delete_collisions_of(self, marketo_ids: Iterable[int]) -> int:
        """Remove every collision of these persons, found through the person index (no scan);
        the number removed. Missing ones are ignored."""
        ...

    def upsert_failures(self, failures: Sequence[RecordFailure]) -> None: ...

    def get_failures(self, keys: Iterable[str]) -> dict[str, RecordFailure]: ...

    def resolve_failures(self, keys: Sequence[str]) -> None:
        """Delete failures that have since succeeded (missing keys are ignored)."""
        ...

    def iter_failures(self, *, page_size: int = 1000) -> Iterator[RecordFailure]:
        """Every open failure, read ``page_size`` (1 to 1000) at a time as the caller iterates, so
        a backlog of any size never sits in memory at once. In the store's key order, not by time."""
        ...

    def list_failures(self, *, limit: int = 100) -> list[RecordFailure]:
        """Open failures, newest ``last_failed_at`` first (the ``limit`` newest of a full read)."""
        ...

    def due_failures(self, *, now: datetime, limit: int = 1000) -> list[RecordFailure]:
        """Open failures whose ``next_retry_at`` is not after ``now``, oldest due first."""
        ...

    def add_run_report(self, report: RunReport) -> None: ...

    def list_run_reports(self, *, limit: int = 20) -> list[RunReport]: ...

    def add_action(self, action: ActionRecord) -> None:
        """Record an operator's action (the audit trail; kept as long as the run reports)."""
        ...

    def list_actions(self, *, limit: int = 20) -> list[ActionRecord]:
        """The newest operators' actions first."""
        ...

    # -- retention and erasure ---------------------------------------------------------------------
    def prune_expired(self, *, now: datetime) -> PruneReport:
        """Remove run reports and operators' actions (both with ``retention.run_reports``), collisions
        and claims past ``retention`` as of ``now``, in bounded work (a page of rows per table, a few
        transactions); ``more`` if some were left for later."""
        ...

    def get_last_prune(self) -> PruneReport | None: ...

    def put_last_prune(self, report: PruneReport) -> None: ...

    def count_rows(self, *, cap: int) -> dict[str, int]:
        """Records per table (links, collisions, failures, runs, claims, actions, members, state), each counted
        up to ``cap``."""
        ...

    # -- webhook claims ----------------------------------------------------------------------
    def try_claim(self, key: str, *, owner: str, now: datetime) -> Claim | None:
        """Insert-if-absent. The new claim if this caller took it, None if it was already taken."""
        ...

    def get_claim(self, key: str) -> Claim | None: ...

    def complete_claim(self, claim: Claim, result: dict[str, object]) -> Claim: ...

    def release_claim(self, claim: Claim) -> None:
        """Give a claim back (the work failed and may be retried)."""
        ...

    def delete_claims(self, keys: Iterable[str]) -> int:
        """Remove these claims whatever their state (erasure); how many were there."""
        ...

    # -- campaign-list members this sync added (flow steps) -------------------------------------
    def add_campaign_member(self, member: CampaignMember) -> None:
        """Record that this sync put the record on the list (a second record of it is ignored)."""
        ...

    def confirm_campaign_member(self, member: CampaignMember) -> None:
        """Dynamics took the add: the record of it says so (recorded again if it was forgotten)."""
        ...

    def get_campaign_member(self, list_id: str, dataverse_id: str) -> CampaignMember | None: ...

    def remove_campaign_member(self, member: CampaignMember) -> None:
        """Forget the membership (missing: no error)."""
        ...

    def campaign_list_ready(self, list_id: str) -> bool:
        """Whether the campaign list exists in Dynamics and is one of its campaign's (as of the last use)."""
        ...

    def mark_campaign_list_ready(self, list_id: str, campaign_id: str) -> None: ...

    def forget_campaign_list(self, list_id: str) -> None:
        """The list is gone in Dynamics: the next add makes it again."""
        ...

    def delete_campaign_members_of(self, dataverse_ids: Iterable[str]) -> int:
        """Forget every membership of these records (erasure); how many there were."""
        ...

    # -- webhook call statistics ---------------------------------------------------------------
    def record_webhook_call(self, name: str, *, outcome: str, ms: float, now: datetime) -> bool:
        """Count one call of webhook ``name`` in ``now``'s hour (best effort: False if dropped)."""
        ...

    def webhook_calls(self, *, now: datetime, hours: int = 24) -> dict[str, WebhookCalls]:
        """Each webhook's calls in the last ``hours`` (at most 24), by name."""
        ...

    # -- chunked jobs (``state._jobs``; the work itself: ``sync_core.jobs``) -------------------------
    def put_job(self, job: JobRecord) -> JobRecord:
        """Create the job (``etag`` None; ``StateConflictError`` if it exists) or replace it if its
        ETag still matches. Returns it with its new ETag."""
        ...

    def get_job(self, job_id: str) -> JobRecord | None: ...

    def list_jobs(self, *, limit: int = 20) -> list[JobRecord]:
        """Jobs, newest first."""
        ...

    def add_chunks(self, chunks: Sequence[ChunkRecord]) -> None:
        """Write new chunks (an upsert: writing the same chunk again changes nothing)."""
        ...

    def get_chunk(self, job_id: str, index: int) -> ChunkRecord | None: ...

    def put_chunk(self, chunk: ChunkRecord) -> ChunkRecord:
        """Replace a chunk only if its ETag still matches (``StateConflictError`` otherwise)."""
        ...

    def iter_chunks(self, job_id: str) -> Iterator[ChunkRecord]:
        """Every chunk of the job in index order, read a page at a time."""
        ...
