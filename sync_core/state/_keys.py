"""How state rows are keyed and sized for Table Storage: row-key encoding, newest-first keys, limits.

Pure functions, no I/O; both stores use them so the memory store keys and limits rows exactly as
the Table service would. It must not decide what a row means (that is ``_store``).

Service facts relied on here: PartitionKey/RowKey may not contain ``/ \\ # ?`` or control
characters and are at most 1 KiB; a property is at most 64 KiB and an entity at most 1 MiB
(strings count as UTF-16); a transaction holds at most 100 operations on one partition and a
4 MiB body; a ``$filter`` allows at most 15 discrete comparisons. Rows sort by PartitionKey, then
RowKey, as ordinal strings: every key built here is ASCII so Python sorts them the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple
from urllib.parse import quote

from sync_core.core.errors import RecordError

MAX_TRANSACTION_OPS = 100
MAX_TRANSACTION_BYTES = 3_500_000  # the service takes 4 MiB per transaction body; keep headroom for framing
MAX_PROPERTY_BYTES = 64 * 1024
MAX_ENTITY_BYTES = 1024 * 1024
# 15 comparisons per $filter, and the PartitionKey comparison is one of them.
MAX_KEYS_PER_QUERY = 14
_MAX_ENCODED_KEY = 250  # well under the 1 KiB key limit, leaving room for our own prefixes
MAX_MARKETO_ID = 10**12 - 1  # link row keys hold 12 digits so that they sort numerically

_DAY_ZERO = datetime(1, 1, 1, tzinfo=UTC)


class RowOp(NamedTuple):
    """One operation in a single-partition transaction.

    ``upsert`` replaces the row whatever it held; ``merge`` writes these properties into the row
    (inserting it if absent) and keeps any others it holds: it cannot remove a property, so one set
    to None is written as ``""`` (``_rows._mapped``), which the reader must take as absent;
    ``insert`` fails the whole transaction if the row exists; ``delete`` removes the row if it is
    there (a missing row is not an error) and, with an ``etag``, only if it is still that version
    (else the whole transaction fails with a conflict).
    """

    kind: Literal["upsert", "merge", "insert", "delete"]
    row: str
    props: Mapping[str, Any] = {}
    etag: str | None = None


def encode_key(value: str) -> str:
    """A RowKey-safe, ASCII, collision-free form of ``value``.

    Percent-encoding turns ``/ \\ # ?``, ``%``, control and non-ASCII characters into ``%XX``; a
    value that would still be too long becomes ``=`` + its SHA-256, and ``=`` never appears in
    percent-encoded output, so the two forms cannot collide. The original value is always stored
    in the row's properties, so nothing needs to decode a key.
    """
    encoded = quote(value, safe="")
    if len(encoded) <= _MAX_ENCODED_KEY:
        return encoded
    return "=" + hashlib.sha256(value.encode("utf-8")).hexdigest()


def marketo_link_key(marketo_id: int) -> str:
    if isinstance(marketo_id, bool) or not isinstance(marketo_id, int) or not 0 <= marketo_id <= MAX_MARKETO_ID:
        raise ValueError(f"marketo id must be an integer from 0 to {MAX_MARKETO_ID}, got {marketo_id!r}")
    return f"m:{marketo_id:012d}"


def dataverse_link_key(entity: str, dataverse_id: str) -> str:
    # Dataverse ids are GUIDs, which compare case-insensitively; Marketo's microsoftId may hold
    # either case, so both spellings must find the same row.
    if not dataverse_id:
        raise ValueError("dataverse id must not be empty")
    return f"d:{entity}:{encode_key(dataverse_id.lower())}"


def aware(value: datetime, *, what: str) -> datetime:
    """``value`` in UTC; a naive datetime is refused (its instant is unknown)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got a naive one")
    return value.astimezone(UTC)


def as_utc(value: datetime) -> datetime:
    """A plain ``datetime`` in UTC from whatever the Table SDK returned (its own subclass)."""
    value = value.astimezone(UTC)
    return datetime(
        value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond, tzinfo=UTC
    )


def _inverted_day(at: datetime) -> str:
    return f"{99_999_999 - (at.year * 10_000 + at.month * 100 + at.day):08d}"


def _inverted_micros(at: datetime) -> str:
    return f"{10**19 - (at - _DAY_ZERO) // timedelta(microseconds=1):019d}"


def newest_first_key(at: datetime, unique: str) -> tuple[str, str]:
    """(PartitionKey, RowKey) that sort newest first: one partition per day, inverted.

    A plain scan of the table then returns the newest day first and, within it, the newest row
    first, so "the last 50" is the first page of a scan. ``unique`` tells rows of the same
    microsecond apart (and makes re-adding the same row idempotent).
    """
    at = aware(at, what="timestamp")
    return _inverted_day(at), f"{_inverted_micros(at)}:{encode_key(unique)}"


def expired_range(cutoff: datetime) -> tuple[str, str]:
    """(first PartitionKey, RowKey floor) of the ``newest_first_key`` rows at or before ``cutoff``.

    The inverted microseconds count from day zero, not from the day, so every row at or before
    ``cutoff`` has PartitionKey ≥ the first and RowKey > the floor (a row exactly at ``cutoff``
    has the floor followed by ``:``), and no later row does: the expired rows are one range query
    that starts at the cutoff's day and runs to the oldest row, whatever the table's size.
    """
    cutoff = aware(cutoff, what="cutoff")
    return _inverted_day(cutoff), _inverted_micros(cutoff)


def to_json(value: Any, *, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} is not JSON-compatible: {err}") from err


def _value_bytes(value: Any) -> int:
    if isinstance(value, str):
        return 4 + len(value.encode("utf-16-le"))
    if isinstance(value, bytes):
        return 4 + len(value)
    return 8


def check_entity(partition: str, row: str, props: Mapping[str, Any], *, what: str) -> None:
    """Refuse an entity the service would refuse, before anything is written, naming the culprit.

    Sizes follow the service's formula (strings as UTF-16 plus a 4-byte length, 8 bytes per
    property name overhead).
    """
    total = 4 + len(partition.encode("utf-16-le")) + 2 + len(row.encode("utf-16-le")) + 2
    for name, value in props.items():
        if value is None:
            continue
        size = _value_bytes(value)
        if isinstance(value, str | bytes) and size - 4 > MAX_PROPERTY_BYTES:
            raise RecordError(
                [
                    f"{what}: property {name!r} is {(size - 4) // 1024} KiB, over the Table Storage limit "
                    f"of {MAX_PROPERTY_BYTES // 1024} KiB per property"
                ],
                code="state_too_large",
            )
        total += 8 + len(name.encode("utf-16-le")) + size
    if total > MAX_ENTITY_BYTES:
        raise RecordError(
            [f"{what}: row is {total // 1024} KiB, over the Table Storage limit of 1024 KiB per entity"],
            code="state_too_large",
        )


def body_bytes(op: RowOp) -> int:
    """About how much ``op`` adds to a transaction body (the SDK sends JSON, non-ASCII escaped)."""
    return 300 + len(op.row) + len(json.dumps(dict(op.props), default=str))


def pack_transactions(groups: Iterable[Sequence[RowOp]]) -> list[list[RowOp]]:
    """Pack groups of operations into transactions of ≤ 100 operations and ≤ ~3.5 MB.

    A group (e.g. both rows of one link and the removal of its old index row) never straddles two
    transactions, so each group is written atomically.
    """
    batches: list[list[RowOp]] = []
    current: list[RowOp] = []
    current_bytes = 0
    for group in groups:
        size = sum(body_bytes(op) for op in group)
        if len(group) > MAX_TRANSACTION_OPS or size > MAX_TRANSACTION_BYTES:
            raise ValueError(f"a group of {len(group)} operations does not fit one transaction")
        if current and (
            len(current) + len(group) > MAX_TRANSACTION_OPS or current_bytes + size > MAX_TRANSACTION_BYTES
        ):
            batches.append(current)
            current, current_bytes = [], 0
        current.extend(group)
        current_bytes += size
    if current:
        batches.append(current)
    return batches


def check_key_count(rows: Sequence[str]) -> None:
    if not 0 < len(rows) <= MAX_KEYS_PER_QUERY:
        raise ValueError(f"a lookup takes 1 to {MAX_KEYS_PER_QUERY} row keys per $filter, got {len(rows)}")


def chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
