"""The state store's logic over rows: which table, which keys, which batches (design §4).

``RowStateStore`` implements the ``StateStore`` Protocol on top of a ``Rows`` backend (Azure
Table Storage or memory), so both stores share every decision below and differ only in where
rows live. It must not talk to a service itself, read a clock, or log person data.

Tables (``{prefix}`` + name), keys and why:

    state       PK cursor / RK name, PK lease / RK cycle      ETag-conditional point rows
    links       PK link-{hash of the RK mod 32:02d}            two rows per link, each in the
                / RK m:{marketo id:012d} and                   partition its key hashes to: a
                RK d:{entity}:{dataverse id}                   $filter per 14 ids of a partition
    collisions  PK inverted day / RK inverted µs:id            a scan of the day partitions lists
                                                               newest first; the values live here
                PK person / RK {marketo id:012d}:{day}:{row}   the person index: a pointer per
                                                               collision, no values
    runs        PK inverted day / RK inverted µs:run id        a plain scan lists newest first
    failures    PK failure / RK key                            upsert replaces; point reads by key;
                                                               all of them read a page at a time
    claims      PK claim / RK key                              insert-if-absent
    actions     PK inverted day / RK inverted µs:id            operators' actions (audit), newest first
    members     PK member / RK {dataverse id}:{list id}        campaign-list members this sync added
                PK list / RK {list id}                         a campaign list made and added to
                                                               its campaign (done once, for good)
    webhooks    PK calls / RK {webhook}:{hour of day}:{shard}  a ring of hourly call statistics:
                                                               a row is reset when its hour comes
                                                               round again, so it never grows
    state       PK prune / RK last                             the last prune that removed rows
                PK layout / RK links                           the links' layout version (``_links``)
    jobs        PK job / RK id, PK {job id} / RK {chunk}       chunked jobs (``_jobs``)

Every batched write is packed into single-partition transactions of ≤ 100 operations; those of
different partitions go side by side (up to ``query_workers`` at once) when nothing orders them.

Retention and erasure (``core.retention``, ``privacy``). The date-keyed tables are pruned by key
range: the rows at or before a cutoff are one query from the cutoff's day to the oldest row
(``expired_range``), so finding them costs one page read however many rows the table holds, and
``prune_expired`` deletes at most a fixed number of pages per table per call. A person's
collisions are found through the person index (one partition, so a prefix query per 7 persons),
never by a scan; because every index row is in that one partition, the index rows of a pruned
page of collisions go in one transaction whatever persons they belong to. Index rows are written
before their collision and deleted after it, so a collision is never unreachable by its person.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta

from azure.data.tables import EdmType, EntityProperty

from sync_core.core.errors import LeaseHeldError, StateConflictError
from sync_core.core.models import (
    ActionRecord,
    CampaignMember,
    Claim,
    Collision,
    Cursor,
    Lease,
    RecordFailure,
    RunReport,
    WebhookCalls,
)
from sync_core.state._jobs import JobRows
from sync_core.state._keys import (
    RowOp,
    as_utc,
    aware,
    check_entity,
    encode_key,
    newest_first_key,
    to_json,
)
from sync_core.state._layout import (
    CAMPAIGN_LIST,
    CLAIM,
    CURSOR,
    DAYS_END,
    FAILURE,
    LEASE,
    LEASE_ROW,
    MEMBER,
    PAGE,
    PERSON,
    WEBHOOK_CALLS,
    page_size,
    person_key,
    pointer,
)
from sync_core.state._links import LinkRows
from sync_core.state._retention import RetentionRows
from sync_core.state._rows import RowFilter, StoredRow

logger = logging.getLogger(__name__)


class RowStateStore(LinkRows, JobRows, RetentionRows):
    """``StateStore`` over a ``Rows`` backend; see the module docstring for the layout.

    ``query_workers``: how many of one call's independent requests (a lookup's queries, the
    transactions of different partitions) may be in flight at once: a backend over
    the network (each a round trip) sends them side by side; in memory there is nothing to overlap."""

    # -- cursors --------------------------------------------------------------------------------
    def get_cursor(self, name: str) -> Cursor | None:
        row = self._rows.get_row(self.tables.state, CURSOR, encode_key(name))
        return None if row is None else Cursor(name=name, value=str(row.props["value"]), etag=row.etag)

    def put_cursor(self, cursor: Cursor) -> Cursor:
        row = encode_key(cursor.name)
        props = {"name": cursor.name, "value": cursor.value}
        check_entity(CURSOR, row, props, what=f"cursor {cursor.name!r}")
        if cursor.etag is None:
            etag = self._rows.insert_row(self.tables.state, CURSOR, row, props)
        else:
            etag = self._rows.replace_row(self.tables.state, CURSOR, row, props, etag=cursor.etag)
        return cursor.model_copy(update={"etag": etag})

    def delete_cursor(self, cursor: Cursor) -> None:
        # etag None deletes whatever is there; with an ETag, only the version the caller read.
        self._rows.delete_row(self.tables.state, CURSOR, encode_key(cursor.name), etag=cursor.etag)

    # -- the cycle lease ------------------------------------------------------------------------
    def acquire_lease(self, owner: str, *, now: datetime, duration: timedelta) -> Lease:
        now = aware(now, what="now")
        expires_at = now + duration
        props = {"owner": owner, "expires_at": expires_at}
        current = self._rows.get_row(self.tables.state, LEASE, LEASE_ROW)
        try:
            if current is None:
                etag = self._rows.insert_row(self.tables.state, LEASE, LEASE_ROW, props)
            else:
                held_until = as_utc(current.props["expires_at"])
                if held_until > now:
                    raise LeaseHeldError(
                        f"the cycle lease is held by {current.props.get('owner')!r} until {held_until.isoformat()}"
                    )
                etag = self._rows.replace_row(self.tables.state, LEASE, LEASE_ROW, props, etag=current.etag)
        except LeaseHeldError:
            raise
        except StateConflictError as err:
            raise LeaseHeldError("another cycle took the lease between our read and our write") from err
        logger.info("lease taken by %s until %s", owner, expires_at.isoformat())
        return Lease(owner=owner, expires_at=expires_at, etag=etag)

    def renew_lease(self, lease: Lease, *, now: datetime, duration: timedelta) -> Lease:
        etag = _need_etag(lease.etag, "lease")
        expires_at = aware(now, what="now") + duration
        props = {"owner": lease.owner, "expires_at": expires_at}
        new_etag = self._rows.replace_row(self.tables.state, LEASE, LEASE_ROW, props, etag=etag)
        return Lease(owner=lease.owner, expires_at=expires_at, etag=new_etag)

    def release_lease(self, lease: Lease) -> None:
        self._rows.delete_row(self.tables.state, LEASE, LEASE_ROW, etag=_need_etag(lease.etag, "lease"))
        logger.info("lease released by %s", lease.owner)

    # -- collisions and run reports (newest first) ------------------------------------------------
    def add_collisions(self, collisions: Sequence[Collision]) -> None:
        by_day: dict[str, list[list[RowOp]]] = {}
        index: list[list[RowOp]] = []
        for collision in collisions:
            partition, row = newest_first_key(collision.at, collision.id)
            index.append([RowOp("upsert", person_key(collision.marketo_id, partition, row), pointer(partition, row))])
            props = {
                "at": collision.at,
                "run_id": collision.run_id,
                "marketo_id": EntityProperty(collision.marketo_id, EdmType.INT64),
                "entity": collision.entity.value,
                "field": collision.field,
                "winner": collision.winner,
                "data": collision.model_dump_json(),
            }
            check_entity(partition, row, props, what=f"collision {collision.id!r}")
            by_day.setdefault(partition, []).append([RowOp("upsert", row, props)])
        for groups in by_day.values():
            _unique_rows(groups, what="collision")
        # The index first: a crash between the two leaves a pointer to nothing, never a collision
        # (with values) its person cannot be found by.
        self._transact(self.tables.collisions, PERSON, index)
        for partition, groups in by_day.items():
            self._transact(self.tables.collisions, partition, groups)

    def list_collisions(self, *, limit: int = 50) -> list[Collision]:
        rows = self._rows.scan_rows(
            self.tables.collisions, where=RowFilter(partition_to=DAYS_END), page_size=page_size(limit)
        )
        return [Collision.model_validate_json(row.props["data"]) for row in itertools.islice(rows, limit)]

    def add_run_report(self, report: RunReport) -> None:
        partition, row = newest_first_key(report.started_at, report.run_id)
        props = {
            "run_id": report.run_id,
            "started_at": report.started_at,
            "finished_at": report.finished_at,
            "outcome": report.outcome,
            "data": report.model_dump_json(),
        }
        check_entity(partition, row, props, what=f"run report {report.run_id!r}")
        self._transact(self.tables.runs, partition, [[RowOp("upsert", row, props)]])

    def list_run_reports(self, *, limit: int = 20) -> list[RunReport]:
        rows = self._rows.scan_rows(self.tables.runs, page_size=page_size(limit))
        return [RunReport.model_validate_json(row.props["data"]) for row in itertools.islice(rows, limit)]

    # -- operators' actions (audit), newest first ------------------------------------------------------
    def add_action(self, action: ActionRecord) -> None:
        partition, row = newest_first_key(action.at, action.id)
        props = {"at": action.at, "action": action.action, "data": action.model_dump_json()}
        check_entity(partition, row, props, what=f"action {action.id!r}")
        self._transact(self.tables.actions, partition, [[RowOp("upsert", row, props)]])

    def list_actions(self, *, limit: int = 20) -> list[ActionRecord]:
        rows = self._rows.scan_rows(self.tables.actions, page_size=page_size(limit))
        return [ActionRecord.model_validate_json(row.props["data"]) for row in itertools.islice(rows, limit)]

    # -- record failures ----------------------------------------------------------------------------
    def upsert_failures(self, failures: Sequence[RecordFailure]) -> None:
        groups: list[list[RowOp]] = []
        for failure in failures:
            row = encode_key(failure.key)
            props = {
                "key": failure.key,
                "direction": failure.direction.value,
                "entity": failure.entity.value,
                "attempts": failure.attempts,
                "last_failed_at": failure.last_failed_at,
                "next_retry_at": failure.next_retry_at,
                "data": failure.model_dump_json(),
            }
            check_entity(FAILURE, row, props, what=f"failure {failure.key!r}")
            groups.append([RowOp("upsert", row, props)])
        self._transact(self.tables.failures, FAILURE, _unique_rows(groups, what="failure"))

    def get_failures(self, keys: Iterable[str]) -> dict[str, RecordFailure]:
        rows = self._query(self.tables.failures, FAILURE, {encode_key(key) for key in keys})
        return {failure.key: failure for failure in _failures(rows)}

    def resolve_failures(self, keys: Sequence[str]) -> None:
        rows = {encode_key(key) for key in keys}
        self._transact(self.tables.failures, FAILURE, [[RowOp("delete", row)] for row in sorted(rows)])

    def iter_failures(self, *, page_size: int = PAGE) -> Iterator[RecordFailure]:
        if not 1 <= page_size <= PAGE:
            raise ValueError(f"page_size must be from 1 to {PAGE}, got {page_size}")
        rows = self._rows.scan_rows(self.tables.failures, partition=FAILURE, page_size=page_size)
        return _failures(rows)

    def list_failures(self, *, limit: int = 100) -> list[RecordFailure]:
        # Holds at most ``limit`` failures, whatever the number of open ones.
        return heapq.nlargest(limit, self.iter_failures(), key=lambda failure: (failure.last_failed_at, failure.key))

    def due_failures(self, *, now: datetime, limit: int = 1000) -> list[RecordFailure]:
        now = aware(now, what="now")
        rows = self._rows.scan_rows(
            self.tables.failures, partition=FAILURE, at_most=("next_retry_at", now), page_size=PAGE
        )
        return heapq.nsmallest(limit, _failures(rows), key=lambda failure: (failure.next_retry_at, failure.key))

    # -- webhook claims ----------------------------------------------------------------------------
    def try_claim(self, key: str, *, owner: str, now: datetime) -> Claim | None:
        created_at = aware(now, what="now")
        props = {"key": key, "owner": owner, "created_at": created_at}
        try:
            etag = self._rows.insert_row(self.tables.claims, CLAIM, encode_key(key), props)
        except StateConflictError:
            return None
        return Claim(key=key, owner=owner, created_at=created_at, etag=etag)

    def get_claim(self, key: str) -> Claim | None:
        row = self._rows.get_row(self.tables.claims, CLAIM, encode_key(key))
        if row is None:
            return None
        result = row.props.get("result")
        return Claim(
            key=str(row.props["key"]),
            owner=str(row.props["owner"]),
            created_at=as_utc(row.props["created_at"]),
            result=None if result is None else json.loads(result),
            etag=row.etag,
        )

    def complete_claim(self, claim: Claim, result: dict[str, object]) -> Claim:
        row = encode_key(claim.key)
        props = {
            "key": claim.key,
            "owner": claim.owner,
            "created_at": claim.created_at,
            "result": to_json(result, what=f"result of claim {claim.key!r}"),
        }
        check_entity(CLAIM, row, props, what=f"claim {claim.key!r}")
        etag = self._rows.replace_row(self.tables.claims, CLAIM, row, props, etag=_need_etag(claim.etag, "claim"))
        return claim.model_copy(update={"result": dict(result), "etag": etag})

    def release_claim(self, claim: Claim) -> None:
        self._rows.delete_row(self.tables.claims, CLAIM, encode_key(claim.key), etag=_need_etag(claim.etag, "claim"))

    def delete_claims(self, keys: Iterable[str]) -> int:
        """Remove these claims whatever state they are in (erasure); the number that were there."""
        found = self._query(self.tables.claims, CLAIM, {encode_key(key) for key in keys})
        self._transact(self.tables.claims, CLAIM, [[RowOp("delete", row.row)] for row in found])
        return len(found)

    # -- campaign-list members this sync added ---------------------------------------------------
    # Keyed record first, so a record's memberships are one prefix query (erasure).
    def add_campaign_member(self, member: CampaignMember) -> None:
        row = _member_key(member.dataverse_id, member.list_id)
        with contextlib.suppress(StateConflictError):  # already recorded: the first record stands
            self._rows.insert_row(self.tables.members, MEMBER, row, {"data": member.model_dump_json()})

    def confirm_campaign_member(self, member: CampaignMember) -> None:
        row = _member_key(member.dataverse_id, member.list_id)
        props = {"data": member.model_copy(update={"confirmed": True}).model_dump_json()}
        current = self._rows.get_row(self.tables.members, MEMBER, row)
        if current is None:  # forgotten meanwhile (an erasure): recorded again, as it is on the list
            with contextlib.suppress(StateConflictError):
                self._rows.insert_row(self.tables.members, MEMBER, row, props)
        elif current.props != props:  # calls on one record run one at a time: no one races this
            self._rows.replace_row(self.tables.members, MEMBER, row, props, etag=current.etag)

    def get_campaign_member(self, list_id: str, dataverse_id: str) -> CampaignMember | None:
        row = self._rows.get_row(self.tables.members, MEMBER, _member_key(dataverse_id, list_id))
        return None if row is None else CampaignMember.model_validate_json(row.props["data"])

    def remove_campaign_member(self, member: CampaignMember) -> None:
        self._rows.delete_row(self.tables.members, MEMBER, _member_key(member.dataverse_id, member.list_id))

    def campaign_list_ready(self, list_id: str) -> bool:
        return self._rows.get_row(self.tables.members, CAMPAIGN_LIST, encode_key(list_id.lower())) is not None

    def mark_campaign_list_ready(self, list_id: str, campaign_id: str) -> None:
        props = {"campaign_id": campaign_id.lower()}
        with contextlib.suppress(StateConflictError):  # marked already
            self._rows.insert_row(self.tables.members, CAMPAIGN_LIST, encode_key(list_id.lower()), props)

    def forget_campaign_list(self, list_id: str) -> None:
        self._rows.delete_row(self.tables.members, CAMPAIGN_LIST, encode_key(list_id.lower()))

    def delete_campaign_members_of(self, dataverse_ids: Iterable[str]) -> int:
        """Forget every membership of these records (erasure): a prefix query per record."""
        found = [
            row
            for dataverse_id in sorted({d.lower() for d in dataverse_ids})
            for row in self._rows.scan_rows(
                self.tables.members, partition=MEMBER, row_prefix=_member_key(dataverse_id, ""), page_size=PAGE
            )
        ]
        self._transact(self.tables.members, MEMBER, [[RowOp("delete", row.row)] for row in found])
        return len(found)

    # -- webhook call statistics (the status view's webhook rows) ----------------------------------
    def record_webhook_call(self, name: str, *, outcome: str, ms: float, now: datetime) -> bool:
        """Count one call in its hour. Concurrent calls spread over ``WEBHOOK_SHARDS`` rows and
        retry on an ETag conflict; after ``WEBHOOK_ATTEMPTS`` the sample is dropped (False)."""
        hour = aware(now, what="now").strftime("%Y%m%d%H")
        for _ in range(WEBHOOK_ATTEMPTS):
            row = f"{name}:{hour[-2:]}:{random.randrange(WEBHOOK_SHARDS)}"  # noqa: S311 - spreading load
            current = self._rows.get_row(self.tables.webhooks, WEBHOOK_CALLS, row)
            fresh = current is None or current.props.get("hour") != hour
            calls = WebhookCalls() if fresh else WebhookCalls.model_validate_json(current.props["data"])  # type: ignore[union-attr]
            props = {"name": name, "hour": hour, "data": calls.add(outcome, ms).model_dump_json()}
            try:
                if current is None:
                    self._rows.insert_row(self.tables.webhooks, WEBHOOK_CALLS, row, props)
                else:
                    self._rows.replace_row(self.tables.webhooks, WEBHOOK_CALLS, row, props, etag=current.etag)
            except StateConflictError:
                continue
            return True
        return False

    def webhook_calls(self, *, now: datetime, hours: int = 24) -> dict[str, WebhookCalls]:
        """Each webhook's calls in the last ``hours`` (≤ 24: the ring holds one day), by name."""
        since = (aware(now, what="now") - timedelta(hours=min(hours, 24) - 1)).strftime("%Y%m%d%H")
        totals: dict[str, WebhookCalls] = {}
        for row in self._rows.scan_rows(self.tables.webhooks, partition=WEBHOOK_CALLS):
            if str(row.props.get("hour", "")) < since:
                continue
            name = str(row.props["name"])
            calls = WebhookCalls.model_validate_json(row.props["data"])
            totals[name] = totals[name].merge(calls) if name in totals else calls
        return totals


def _member_key(dataverse_id: str, list_id: str) -> str:
    return encode_key(f"{dataverse_id.lower()}:{list_id.lower()}")


WEBHOOK_SHARDS = 8  # rows per webhook and hour, so a burst of calls rarely writes the same row
WEBHOOK_ATTEMPTS = 4


def _failures(rows: Iterable[StoredRow]) -> Iterator[RecordFailure]:
    return (RecordFailure.model_validate_json(row.props["data"]) for row in rows)


def _need_etag(etag: str | None, what: str) -> str:
    if etag is None:
        raise ValueError(f"this {what} has no ETag: pass the {what} the store returned")
    return etag


def _unique_rows(groups: list[list[RowOp]], *, what: str) -> list[list[RowOp]]:
    rows = [op.row for group in groups for op in group]
    if len(set(rows)) != len(rows):
        raise ValueError(f"two {what}s with the same key in one call; pass each once")
    return groups
