"""A cycle's bookkeeping: what it counted, what each batch produced, and the open failures.

``Tally`` counts as the cycle goes (the run report is built from it). ``Batch`` collects one
batch's results for the state store; ``Ledger.record`` writes them (links, collisions, failures,
resolutions) and then the person's activity log. An unlinked person's rows leave the state in
that same write: the link and its baseline, its collisions, its open failures (erasure follows
the source; ``privacy`` has the on-request erasure). ``OpenFailures`` knows which failures are open
without holding them all: the keys are read in pages at the start of the cycle, a failure's
details only when a record fails again. Failure keys: ``to_dynamics:m<marketo id>`` /
``to_marketo:m<marketo id>`` for a linked person, ``to_marketo:<entity>:<dataverse id>`` for a
Dynamics record no person could be made for. Nothing here reads a feed or calls Dynamics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sync_core.core.models import Collision, Direction, EntityType, Link, RecordFailure, retry_delay
from sync_core.core.models import person_failure_key as person_key
from sync_core.core.models import record_failure_key as record_key
from sync_core.core.oneway import Principal
from sync_core.marketo.activity import SyncFailure, log_sync_failures
from sync_core.marketo.client import MarketoClient
from sync_core.state import StateStore

FAILURE_PAGE = 1000


__all__ = ["Batch", "Ledger", "LinkWatch", "OpenFailures", "Pending", "Tally", "person_key", "record_key"]


@dataclass
class Tally:
    """What a cycle did, counted as it goes; the run report is built from it."""

    pulled_marketo: int = 0  # change activities read
    pulled_dynamics: int = 0  # rows and deletions read
    written_marketo: int = 0  # persons written (created or updated)
    written_dynamics: int = 0  # Dynamics records updated or deleted
    created: int = 0  # Marketo persons created for new Dynamics records
    linked: int = 0  # new Dynamics records linked to an existing person
    unlinked: int = 0
    flagged_deleted: int = 0  # persons marked microsoftIsDeleted
    deleted_in_dynamics: int = 0  # Dynamics records deleted after their person was (policy "delete")
    qualified: int = 0  # links moved from a lead to its contact
    filtered_dynamics: int = 0  # records the Dynamics sync filter kept out (nothing written)
    filtered_marketo: int = 0  # records the Marketo sync filter kept out (nothing written)
    collisions: int = 0
    failures: int = 0  # records that failed this cycle (new or again)
    new_failures: int = 0  # of those, records with no open failure before
    resolved: int = 0  # open failures that succeeded this cycle
    retried: int = 0  # due failures tried again
    activities: int = 0  # microsoftSyncFailed entries written
    full_reads: list[str] = field(default_factory=list)  # tables re-read after an expired delta token
    accounts: int = 0  # changed accounts read
    account_contacts: int = 0  # linked contacts whose company fields an account change rewrote
    one_way_edits: int = 0  # Marketo edits of Dynamics-owned fields seen (overwritten at the next Dynamics change)


@dataclass
class Pending:
    """A linked record to merge, with what is known of each side."""

    link: Link
    marketo: Mapping[str, Any] | None = None  # raw values by Marketo field (only the changed ones, unless full)
    marketo_full: bool = False
    dynamics: Mapping[str, Any] | None = None  # the Dataverse row (every selected column), or unknown
    replaces: Link | None = None  # the link this one takes the place of (qualification)
    marketo_extra: Mapping[str, Any] = field(default_factory=dict)  # sync-owned person fields to write
    event: str | None = None  # "linked" | "qualified": counted once the link is written
    # Dynamics-owned person values (core.oneway): computed from the row, or given (an account changed)
    one_way: Mapping[str, Any] | None = None
    one_way_seen: dict[str, Any] = field(default_factory=dict)  # those Marketo holds away from the baseline
    one_way_writes: dict[str, Any] = field(default_factory=dict)  # those to write to the person
    owner: Principal | None = None  # the record's owner as read from Dynamics (kept in the baseline)


@dataclass
class Batch:
    """What one batch produced for the state store."""

    links: list[Link] = field(default_factory=list)
    replaced: list[Link] = field(default_factory=list)
    unlinked: list[Link] = field(default_factory=list)
    collisions: list[Collision] = field(default_factory=list)
    failures: list[RecordFailure] = field(default_factory=list)
    resolved: set[str] = field(default_factory=set)
    activities: list[SyncFailure] = field(default_factory=list)

    def touched_links(self) -> list[Link]:
        """The links the batch writes, replaces or deletes."""
        return [*self.links, *self.replaced, *self.unlinked]


class OpenFailures:
    """The keys of the open failures (read in pages, on first use), and their details on demand."""

    def __init__(self, store: StateStore, *, page_size: int = FAILURE_PAGE) -> None:
        self._store = store
        self._page_size = page_size
        self._loaded: set[str] | None = None
        self._details: dict[str, RecordFailure] = {}

    def load(self) -> None:
        """Read the open failures' keys, a page at a time (the details stay in the store)."""
        self._loaded = self._read()

    def _read(self) -> set[str]:
        return {failure.key for failure in self._store.iter_failures(page_size=self._page_size)}

    @property
    def _keys(self) -> set[str]:
        if self._loaded is None:
            self._loaded = self._read()
        return self._loaded

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> set[str]:
        return set(self._keys)

    def get(self, key: str) -> RecordFailure | None:
        if key not in self._keys:
            return None
        if key not in self._details:
            self._details.update(self._store.get_failures([key]))
        return self._details.get(key)

    def update(self, failures: Mapping[str, RecordFailure]) -> None:
        self._keys.update(failures)
        self._details.update(failures)

    def pop(self, key: str) -> bool:
        """Forget a key; True if it was open."""
        self._details.pop(key, None)
        if key in self._keys:
            self._keys.discard(key)
            return True
        return False


@dataclass
class LinkWatch:
    """The links ``Ledger.record`` wrote, replaced or deleted while this watch was on (by record and
    by person): what a look-up made meanwhile may have read before or after (``Ledger.watch_links``)."""

    records: set[tuple[EntityType, str]] = field(default_factory=set)
    persons: set[int] = field(default_factory=set)

    def add(self, links: Iterable[Link]) -> None:
        for link in links:
            self.records.add((link.entity, link.dataverse_id.lower()))
            self.persons.add(link.marketo_id)

    def touched(self, link: Link) -> bool:
        """Whether a write while the watch was on can have changed ``link``: its record's link or
        its person's was written."""
        return (link.entity, link.dataverse_id.lower()) in self.records or link.marketo_id in self.persons

    def untouched(self, entity: EntityType, links: Mapping[str, Link]) -> dict[str, Link]:
        """Those of ``links`` (by lowercase Dataverse id of ``entity``) that no write while the watch
        was on can have changed: neither their record's link nor their person's was written."""
        return {
            i: link
            for i, link in links.items()
            if (entity, i) not in self.records and link.marketo_id not in self.persons
        }


class Ledger:
    """Failures, resolutions and the batch's writes to the state store (see the module docstring)."""

    def __init__(
        self,
        *,
        store: StateStore,
        marketo: MarketoClient,
        tally: Tally,
        open_failures: OpenFailures,
        run_id: str,
        now: datetime,
    ) -> None:
        self._store = store
        self._marketo = marketo
        self.tally = tally
        self.open = open_failures
        self._run_id = run_id
        self._now = now
        self._watches: list[LinkWatch] = []
        self._holding = False
        self._held: list[Batch] = []

    def watch_links(self) -> LinkWatch:
        """From now on, until ``unwatch_links``, every link ``record`` writes, replaces or deletes is
        added to the returned watch (``record`` is the cycle's only writer of links), and so are
        those of the batches held now (``hold``), which are written later."""
        watch = LinkWatch()
        for batch in self._held:  # written after the watch starts: a look-up may read either
            watch.add(batch.touched_links())
        self._watches.append(watch)
        return watch

    def unwatch_links(self, watch: LinkWatch) -> None:
        self._watches = [w for w in self._watches if w is not watch]

    def hold(self) -> None:
        """From now on, until ``flush``, ``record`` tells the watches what a batch writes at once but
        keeps its writes, so that they may overlap requests the cycle makes next (a Dataverse page's,
        written while the next page's or the persons step's first messages are in flight). Whoever holds
        must not read what a held batch writes before ``flush`` (``touches`` says whether it
        does), nor move a cursor past it."""
        self._holding = True

    @property
    def holding(self) -> bool:
        """Whether batches are held or may be (``hold`` until ``flush``)."""
        return self._holding

    def touches(self, marketo_ids: Iterable[int]) -> bool:
        """Whether a held batch writes, replaces or deletes the link of any of these persons."""
        held = {link.marketo_id for batch in self._held for link in batch.touched_links()}
        return not held.isdisjoint(marketo_ids)

    def flush(self) -> None:
        """Write the held batches, in the order they were recorded; ``record`` writes at once again."""
        self._holding = False
        while self._held:
            self._write(self._held.pop(0))

    def has_open_failure(self, marketo_id: int) -> bool:
        return any(person_key(direction, marketo_id) in self.open for direction in Direction)

    def unlink(self, batch: Batch, link: Link) -> None:
        batch.unlinked.append(link)
        self.resolve_person(batch, link.marketo_id)
        self.tally.unlinked += 1

    def resolve_person(self, batch: Batch, marketo_id: int) -> None:
        """The person's open failures, either way: resolved with the batch."""
        for direction in Direction:
            self.resolve(batch, person_key(direction, marketo_id))

    def resolve(self, batch: Batch, key: str) -> None:
        if key in self.open:
            batch.resolved.add(key)

    def resolve_now(self, keys: Iterable[str]) -> None:
        """Failures whose record is gone or linked meanwhile: nothing left to retry."""
        stale = sorted(key for key in keys if key in self.open)
        if stale:
            self._store.resolve_failures(stale)
            self._forget(stale)

    def fail_person(
        self,
        batch: Batch,
        link: Link,
        direction: Direction,
        reasons: list[str],
        *,
        code: str | None,
        keys: list[str],
        transient: bool = False,
    ) -> None:
        failure = self._failure(
            person_key(direction, link.marketo_id),
            direction,
            link.entity,
            reasons,
            code,
            keys,
            link.marketo_id,
            link.dataverse_id,
        )
        batch.failures.append(failure)
        if not transient and _is_news(self.open.get(failure.key), failure):
            batch.activities.append(SyncFailure(link.marketo_id, link.entity, direction, tuple(reasons)))

    def fail_record(
        self, batch: Batch, entity: EntityType, dataverse_id: str, reasons: list[str], *, code: str | None = None
    ) -> None:
        key = record_key(entity, dataverse_id)
        batch.failures.append(self._failure(key, Direction.TO_MARKETO, entity, reasons, code, [], None, dataverse_id))

    def _failure(
        self,
        key: str,
        direction: Direction,
        entity: EntityType,
        reasons: list[str],
        code: str | None,
        keys: list[str],
        marketo_id: int | None,
        dataverse_id: str | None,
    ) -> RecordFailure:
        previous = self.open.get(key)
        attempts = previous.attempts + 1 if previous is not None else 1
        return RecordFailure(
            key=key,
            direction=direction,
            entity=entity,
            marketo_id=marketo_id,
            dataverse_id=dataverse_id,
            reasons=reasons,
            code=code,
            fields=keys,
            attempts=attempts,
            first_failed_at=previous.first_failed_at if previous is not None else self._now,
            last_failed_at=self._now,
            next_retry_at=self._now + retry_delay(attempts),
            run_id=self._run_id,
        )

    def _forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            if self.open.pop(key):
                self.tally.resolved += 1

    def record(self, batch: Batch) -> None:
        """The batch's Table writes: links, collisions, failures; then the activity log (held until
        ``flush`` while the ledger holds)."""
        for watch in self._watches:  # before the writes: a look-up running meanwhile may see either
            watch.add(batch.touched_links())
        if self._holding:
            self._held.append(batch)
            return
        self._write(batch)

    def _write(self, batch: Batch) -> None:
        if batch.links or batch.replaced:
            self._store.upsert_links(batch.links, replaces=batch.replaced)
        # A link re-written in the same batch (e.g. qualified, then deleted) is not deleted twice.
        written = {link.marketo_id for link in batch.links}
        gone = [link for link in batch.unlinked if link.marketo_id not in written]
        if gone:
            # Erasure follows the source: with the link and its baseline go the collisions (both
            # sides' values) of the pair; its failures are resolved below (``unlink``).
            self._store.delete_collisions_of(link.marketo_id for link in gone)
            self._store.delete_links(gone)
        if batch.collisions:
            self._store.add_collisions(batch.collisions)
            self.tally.collisions += len(batch.collisions)
        failed = {failure.key: failure for failure in batch.failures}  # the last verdict per key wins
        resolved = sorted(batch.resolved - failed.keys())
        if failed:
            self._store.upsert_failures(list(failed.values()))
            self.tally.new_failures += sum(1 for key in failed if key not in self.open)
            self.open.update(failed)
            self.tally.failures += len(failed)
        if resolved:
            self._store.resolve_failures(resolved)
            self._forget(resolved)
        if batch.activities:
            results = log_sync_failures(self._marketo, batch.activities)
            self.tally.activities += sum(1 for result in results if result.ok)


def _is_news(previous: RecordFailure | None, failure: RecordFailure) -> bool:
    """Worth a line on the activity log: a new failure, or one whose reasons changed."""
    return previous is None or previous.reasons != failure.reasons
