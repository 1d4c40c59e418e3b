"""Bulk writes: ``CreateMultiple`` / ``UpdateMultiple`` / ``UpsertMultiple``, one outcome per input row.

Rows go ``batch_size`` to a message. A message the service rejects as a whole for one record's
fault is re-sent as a ``$batch`` of single-row operations with continue-on-error, so one bad
record cannot stop the others (a message too large is halved first); a schema error or an
outage is raised, never hidden in outcomes. Creates are never resent blindly.

The bulk messages are not enabled on every table yet ("All tables that support Create and Update
will eventually support CreateMultiple and UpdateMultiple, but some tables may not support them
yet", Microsoft's bulk-operation pages). The service then refuses the message itself (SDK fault
0x80040800, "The 'UpdateMultiple' method does not support entities of type '…'", or "… is not
enabled on the entity"): nothing was written, so the rows go as a ``$batch`` instead, and
``BulkSupport`` remembers the table and message so later writes go straight to ``$batch``.

It sends through ``WebApi``, decides nothing about syncing, and logs only counts and table names.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sync_core.core.errors import ApiError
from sync_core.dataverse import odata as _odata
from sync_core.dataverse._api import SERVICE, TIMEOUT_WRITE, WebApi, is_record_level, request_id
from sync_core.dataverse._batch import BatchPart, PartResponse
from sync_core.dataverse._metadata import EntityRef
from sync_core.dataverse._types import WriteOutcome
from sync_core.http.parallel import in_parallel

log = logging.getLogger(__name__)

ENTITY_ID = re.compile(r"\(([0-9a-fA-F-]{36})\)\s*$")  # the GUID at the end of an OData-EntityId
MESSAGE_NOT_SUPPORTED = "0x80040800"  # SdkEntityDoesNotSupportMessage: the table has no such message
_NOT_SUPPORTED_TEXT = re.compile(r"does not support entities of type|is not enabled on the entity", re.IGNORECASE)


class Write(StrEnum):
    CREATE = "CreateMultiple"
    UPDATE = "UpdateMultiple"
    UPSERT = "UpsertMultiple"


def is_not_supported(err: ApiError) -> bool:
    """The service refused the bulk message itself for this table (nothing was written)."""
    if err.status is None or err.status == 429 or not 400 <= err.status < 600:
        return False
    if (err.code or "").lower() == MESSAGE_NOT_SUPPORTED:
        return True
    return bool(_NOT_SUPPORTED_TEXT.search(str(err.args[0]) if err.args else ""))


class BulkSupport:
    """The bulk messages this process found not enabled, per table; thread-safe, shared by copies
    of a client. ``fallbacks()`` is ``{"<entity set>/<message>": reason}`` for the run report."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refused: dict[str, str] = {}

    @staticmethod
    def _key(kind: Write, ref: EntityRef) -> str:
        return f"{ref.entity_set}/{kind.value}"

    def refused(self, kind: Write, ref: EntityRef) -> bool:
        with self._lock:
            return self._key(kind, ref) in self._refused

    def refuse(self, kind: Write, ref: EntityRef, err: ApiError) -> None:
        reason = f"{err.code or err.status}: {str(err.args[0]) if err.args else 'not supported'}"[:300]
        with self._lock:
            self._refused.setdefault(self._key(kind, ref), reason)

    def fallbacks(self) -> dict[str, str]:
        with self._lock:
            return dict(self._refused)


@dataclass(frozen=True)
class _Target:
    """One input row of a bulk write: its values, how to address it alone, and its position."""

    index: int
    values: dict[str, Any]  # columns to write (key columns of an upsert left to the address)
    segment: str | None  # leads(<guid>) or leads(emailaddress1='…'); None for a create
    row_id: str | None  # primary key when known

    @classmethod
    def of(
        cls, kind: Write, ref: EntityRef, index: int, row: Mapping[str, Any], key: tuple[str, ...] | None
    ) -> _Target:
        values = {name: value for name, value in row.items() if not name.startswith("@")}
        if kind is Write.CREATE:
            return cls(index, values, None, None)
        row_id: str | None
        if key is None:
            if not row.get(ref.primary_id):
                raise ValueError(f"row has no {ref.primary_id}")
            row_id = _odata.guid_literal(str(row[ref.primary_id]))
            segment = _odata.key_segment(ref.entity_set, {"": row_id})
            key_columns: tuple[str, ...] = (ref.primary_id,)
        else:
            missing = [column for column in key if row.get(column) in (None, "")]
            if missing:
                raise ValueError(f"row has no value for key column(s) {', '.join(missing)}")
            segment = _odata.key_segment(ref.entity_set, {column: row[column] for column in key})
            row_id = _odata.guid_literal(str(row[ref.primary_id])) if row.get(ref.primary_id) else None
            key_columns = key
        # The address carries the key; the service refuses (or ignores) it repeated in the record.
        values = {name: value for name, value in values.items() if name not in key_columns}
        return cls(index, values, segment, row_id)

    def message_body(self, kind: Write, ref: EntityRef) -> dict[str, Any]:
        """This row as a target of CreateMultiple / UpdateMultiple / UpsertMultiple."""
        body: dict[str, Any] = {"@odata.type": f"Microsoft.Dynamics.CRM.{ref.logical_name}", **self.values}
        if kind is Write.UPDATE:
            body[ref.primary_id] = self.row_id
        elif kind is Write.UPSERT:
            body["@odata.id"] = self.segment
        return body

    def batch_part(self, kind: Write, ref: EntityRef, api_path: str) -> BatchPart:
        """This row alone, as one operation of a ``$batch``."""
        if kind is Write.CREATE:
            return BatchPart("POST", f"{api_path}/{ref.entity_set}", self.values)
        if kind is Write.UPDATE:
            return BatchPart("PATCH", f"{api_path}/{self.segment}", self.values, {"If-Match": "*"})
        # upsert: a PATCH without If-Match creates the row when the key finds none
        return BatchPart("PATCH", f"{api_path}/{self.segment}", self.values)

    def failed(self, status: int | None, code: str | None, message: str) -> WriteOutcome:
        return WriteOutcome(self.index, False, id=self.row_id, status=status, code=code, message=message)

    def answered(self, answer: PartResponse) -> WriteOutcome:
        """The outcome from this row's own answer inside a $batch."""
        if answer.status < 300:
            match = ENTITY_ID.search(answer.headers.get("odata-entityid", ""))
            new_id = match.group(1).lower() if match else self.row_id
            return WriteOutcome(self.index, True, id=new_id, status=answer.status)
        error = answer.body.get("error") if isinstance(answer.body, dict) else None
        code = str(error.get("code")) if isinstance(error, dict) and error.get("code") else None
        message = str(error.get("message", ""))[:500] if isinstance(error, dict) else f"HTTP {answer.status}"
        return self.failed(answer.status, code, message)


def message_sizes(counts: Sequence[int], *, batch_size: int, places: int = 1) -> list[list[int]]:
    """Per table, the records of each bulk message its ``counts[i]`` rows go in.

    With ``places`` 1: the fewest messages, ``batch_size`` each and the rest in the last (the
    chunks each table would have alone). With more places (the messages in flight at once), the
    rows that the fewest messages would send in an unfilled last wave are spread over that wave:
    more messages, up to a whole wave (at most ``places - 1`` more, and none below half of
    ``batch_size``), each table's rows split evenly. The service's time for a message grows with
    its records and the messages share the places, so the last message ends when the wave's
    average does: two tables of 2,500 rows on 4 places go as 8 messages of 625 (two waves of
    625), not 6 of 1,000, 1,000 and 500 (1,500 on the two places that take two)."""
    size = max(1, batch_size)
    wanted = [-(-count // size) for count in counts]
    if places <= 1:
        return [
            [size] * (messages - 1) + [count - size * (messages - 1)] if messages else []
            for count, messages in zip(counts, wanted, strict=True)
        ]
    fewest, total = sum(wanted), sum(counts)
    if fewest % places:
        spread = min(places * -(-fewest // places), max(fewest, total // max(1, size // 2)))
        for _ in range(spread - fewest):
            # One more message for the table whose messages are the largest, while it has rows for it.
            split = [i for i, count in enumerate(counts) if count > wanted[i]]
            if not split:
                break
            widest = max(split, key=lambda i: -(-counts[i] // wanted[i]))
            wanted[widest] += 1
    return [_even(count, messages) for count, messages in zip(counts, wanted, strict=True)]


def _even(count: int, messages: int) -> list[int]:
    """``count`` rows in ``messages`` messages whose sizes differ by at most one, the larger first."""
    if not messages:
        return []
    base, extra = divmod(count, messages)
    return [base + 1] * extra + [base] * (messages - extra)


def write_multiple(
    api: WebApi,
    kind: Write,
    tables: Sequence[tuple[EntityRef, Sequence[Mapping[str, Any]]]],
    *,
    key: tuple[str, ...] | None,
    batch_size: int,
    support: BulkSupport,
    parallel: int = 1,
    fill_places: bool = False,
    on_written: Callable[[int, Sequence[WriteOutcome]], None] | None = None,
) -> list[list[WriteOutcome]]:
    """Per table, one outcome per row, in input order; rows that cannot be addressed are refused unsent.

    Each table's rows go in chunks of ``batch_size``; the chunks of all the tables go up to
    ``parallel`` at a time (each is independent: the service applies or rolls back one message as a
    whole), the full ones first, so that a short chunk does not hold a place while a full one waits
    (the service's time grows with a message's records). The chunks, and so the calls, are those
    each table would have alone; with ``fill_places``, those of ``message_sizes`` over ``parallel``
    places (an unfilled last wave spread over more messages). Where ``support`` knows the message
    is not enabled on a table, each of its chunks goes as a ``$batch``. ``on_written(table
    position, outcomes)`` is called, on the thread that wrote it, as each chunk's rows are answered
    (the others may still be in flight), so a caller may use those outcomes before the slowest
    chunk ends; the rows refused unsent come only in the answer."""
    outcomes: list[dict[int, WriteOutcome]] = [{} for _ in tables]
    ready: list[list[_Target]] = [[] for _ in tables]
    for position, (ref, rows) in enumerate(tables):
        for index, row in enumerate(rows):
            try:
                ready[position].append(_Target.of(kind, ref, index, row, key))
            except ValueError as err:
                outcomes[position][index] = WriteOutcome(index, False, code="invalid_input", message=str(err))
    sizes = message_sizes([len(r) for r in ready], batch_size=batch_size, places=parallel if fill_places else 1)
    chunks: list[tuple[int, EntityRef, list[_Target]]] = []
    for position, ((ref, _), targets, table_sizes) in enumerate(zip(tables, ready, sizes, strict=True)):
        start = 0
        for size in table_sizes:
            chunks.append((position, ref, targets[start : start + size]))
            start += size
    chunks.sort(key=lambda chunk: -len(chunk[2]))  # stable: each table's chunks keep their order

    def write(chunk: tuple[int, EntityRef, list[_Target]]) -> list[WriteOutcome]:
        position, ref, targets = chunk
        if support.refused(kind, ref):
            written = _isolate(api, kind, ref, targets)
        else:
            written = _write_chunk(api, kind, ref, targets, support)
        if on_written is not None:
            on_written(position, written)
        return written

    for (position, _, _), written in zip(
        chunks, in_parallel(write, chunks, workers=parallel, name="dataverse-write"), strict=True
    ):
        for outcome in written:
            outcomes[position][outcome.index] = outcome
    answers: list[list[WriteOutcome]] = []
    for (ref, rows), found in zip(tables, outcomes, strict=True):
        failed = sum(1 for outcome in found.values() if not outcome.ok)
        if failed:
            log.warning("dataverse %s %s: %d of %d row(s) failed", kind.value, ref.entity_set, failed, len(rows))
        answers.append([found[index] for index in range(len(rows))])
    return answers


def _write_chunk(
    api: WebApi, kind: Write, ref: EntityRef, chunk: Sequence[_Target], support: BulkSupport
) -> list[WriteOutcome]:
    try:
        response = api.send(
            kind.value.lower(),
            "POST",
            api.url(f"{ref.entity_set}/Microsoft.Dynamics.CRM.{kind.value}"),
            json={"Targets": [target.message_body(kind, ref) for target in chunk]},
            idempotent=kind is not Write.CREATE,
            timeout=TIMEOUT_WRITE,
        )
    except ApiError as err:
        if is_not_supported(err):
            log.warning(
                "dataverse %s %s: the message is not enabled on this table (%s); writing with $batch from now on",
                kind.value,
                ref.entity_set,
                err.code or err.status,
            )
            support.refuse(kind, ref, err)
            return _isolate(api, kind, ref, chunk)
        if not is_record_level(err):
            raise
        if len(chunk) == 1:
            return [chunk[0].failed(err.status, err.code, str(err.args[0]))]
        if err.status == 413:  # too large as a whole: halve it
            middle = len(chunk) // 2
            return _write_chunk(api, kind, ref, chunk[:middle], support) + _write_chunk(
                api, kind, ref, chunk[middle:], support
            )
        # Standard tables roll the whole message back on one bad record, so nothing landed:
        # send the rows again one by one in a $batch that carries on past failures.
        log.info(
            "dataverse %s %s: batch of %d rejected (%s); isolating with $batch",
            kind.value,
            ref.entity_set,
            len(chunk),
            err.code or err.status,
        )
        return _isolate(api, kind, ref, chunk)
    if kind is Write.CREATE:
        ids = (response.json() or {}).get("Ids") or []
        if len(ids) != len(chunk):
            raise ApiError(
                f"dataverse CreateMultiple: {len(ids)} ids for {len(chunk)} rows",
                service=SERVICE,
                status=response.status_code,
                request_id=request_id(response),
            )
        return [WriteOutcome(t.index, True, id=str(new_id)) for t, new_id in zip(chunk, ids, strict=True)]
    return [WriteOutcome(t.index, True, id=t.row_id) for t in chunk]


def _isolate(api: WebApi, kind: Write, ref: EntityRef, chunk: Sequence[_Target]) -> list[WriteOutcome]:
    parts = [target.batch_part(kind, ref, api.root_url.path) for target in chunk]
    try:
        answers = api.send_batch("batch", parts, idempotent=kind is not Write.CREATE, timeout=TIMEOUT_WRITE)
    except ApiError as err:
        # Without continue-on-error honoured the service stops at the first failure and says 400
        # with that one answer; what follows it was not attempted.
        if err.status != 400:
            raise
        answers = []
    return [
        target.answered(answers[position])
        if position < len(answers)
        else target.failed(None, "not_attempted", "the $batch stopped before this record")
        for position, target in enumerate(chunk)
    ]
