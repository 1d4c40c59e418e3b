"""The simulated instance's data: one in-memory lead database and its activity log.

Owns the person records, the look-up indexes on searchable fields, and the append-only activity
log (New Lead 12, Change Data Value 13 per changed field, Merge Leads 32, Delete Lead 37, custom
activities) with the position arithmetic behind paging tokens. Every write appends its
activities under the same lock, so ids and log times only grow and a page boundary never splits
a write. It knows nothing of HTTP, tokens or limits; values arrive already checked
(``_schema.clean_values``).
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sandbox.marketo import _schema as schema
from sandbox.marketo._schema import CHANGE_DATA_VALUE, DELETE_LEAD, MERGE_LEADS, NEW_LEAD, FieldDef


@dataclass(slots=True)
class Activity:
    id: int
    lead_id: int
    logged_at: float  # epoch seconds the service logged it; paging tokens are positions in this order
    activity_date: str  # what the API shows (a custom activity carries the date its sender gave)
    type_id: int
    primary_id: int | None = None
    primary_value: str | None = None
    attributes: tuple[tuple[str, Any], ...] = ()
    change: tuple[FieldDef, Any, Any] | None = None  # (field, old, new) for Change Data Value
    custom: dict[str, Any] | None = None  # attribute API name -> value, for custom activities
    # Committed late (epoch seconds): until then a reader passes its place in the log without seeing
    # it, so a paging token issued meanwhile is already past it (Marketo records some activities
    # after their date; see the knowledge-base article "REST API Paging Tokens Use Case").
    visible_at: float | None = None


@dataclass(frozen=True)
class Position:
    """Where a reader is in the activity log: after ``last_id``, at or after ``since``."""

    since: float
    last_id: int


def lead_name(record: dict[str, Any]) -> str:
    name = " ".join(str(record[k]) for k in ("firstName", "lastName") if record.get(k))
    return name or str(record.get("email") or "")


class LeadDatabase:
    """Leads plus activity log, guarded by one re-entrant lock (``lock``) shared with callers."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.lock = threading.RLock()
        self.clear()

    def clear(self) -> None:
        with self.lock:
            self._leads: dict[int, dict[str, Any]] = {}
            self._next_lead_id = 1
            self._index: dict[str, dict[str, set[int]]] = {name: {} for name in schema.SEARCHABLE if name != "id"}
            self._log: list[Activity] = []
            self._log_ids: list[int] = []
            self._log_times: list[float] = []
            self._next_activity_id = 1
            self._last_stamp = 0.0

    # ---- reads ---------------------------------------------------------------------------

    def get(self, lead_id: int) -> dict[str, Any] | None:
        with self.lock:
            record = self._leads.get(lead_id)
            return dict(record) if record is not None else None

    def exists(self, lead_id: int) -> bool:
        with self.lock:
            return lead_id in self._leads

    def count(self) -> int:
        with self.lock:
            return len(self._leads)

    def lookup(self, field: str, value: Any) -> list[int]:
        """Ids of leads whose ``field`` equals ``value`` (case-insensitive for text), sorted."""
        with self.lock:
            if field == "id":
                try:
                    lead_id = int(value)
                except (TypeError, ValueError):
                    return []
                return [lead_id] if lead_id in self._leads else []
            index = self._index.get(field)
            if index is not None:
                return sorted(index.get(_key(value), ()))
            wanted = _key(value)
            return sorted(i for i, r in self._leads.items() if r.get(field) is not None and _key(r[field]) == wanted)

    def lookup_many(self, field: str, values: Iterable[Any]) -> list[int]:
        with self.lock:
            found: set[int] = set()
            for value in values:
                found.update(self.lookup(field, value))
            return sorted(found)

    def lead_ids(self) -> list[int]:
        with self.lock:
            return sorted(self._leads)

    # ---- writes ------------------------------------------------------------------------

    def create(self, values: dict[str, Any], *, source: str) -> int:
        with self.lock:
            stamp = self._stamp()
            lead_id = self._next_lead_id
            self._next_lead_id += 1
            when = schema.format_epoch(stamp)
            record: dict[str, Any] = {"id": lead_id}
            record.update((k, v) for k, v in values.items() if v is not None)
            record["createdAt"] = record["updatedAt"] = when
            self._leads[lead_id] = record
            self._index_add(lead_id, record)
            self._append(
                lead_id,
                stamp,
                NEW_LEAD,
                primary_id=lead_id,
                primary_value=lead_name(record),
                attributes=(("Created Date", when[:10]), ("Source Type", source)),
            )
            return lead_id

    def update(self, lead_id: int, values: dict[str, Any], *, source: str, visible_after: float = 0.0) -> list[str]:
        """Apply ``values`` (``None`` clears); one Change Data Value per changed field. Returns them.

        With ``visible_after`` the activities become visible to readers that many seconds late."""
        with self.lock:
            record = self._leads[lead_id]
            changed = [name for name, new in values.items() if record.get(name) != new]
            if not changed:
                return []
            stamp = self._stamp()
            self._index_remove(lead_id, record)
            for name in changed:
                old, new = record.get(name), values[name]
                if new is None:
                    record.pop(name, None)
                else:
                    record[name] = new
                fdef = schema.BY_NAME[name]
                self._append(
                    lead_id,
                    stamp,
                    CHANGE_DATA_VALUE,
                    primary_id=fdef.id,
                    primary_value=fdef.display_name,
                    attributes=(
                        ("New Value", schema.render_value(new)),
                        ("Old Value", schema.render_value(old)),
                        ("Reason", source),
                        ("Source", source),
                    ),
                    change=(fdef, old, new),
                    visible_at=stamp + visible_after if visible_after > 0 else None,
                )
            record["updatedAt"] = schema.format_epoch(stamp)
            self._index_add(lead_id, record)
            return changed

    def delete(self, lead_id: int) -> bool:
        with self.lock:
            record = self._leads.pop(lead_id, None)
            if record is None:
                return False
            self._index_remove(lead_id, record)
            self._append(lead_id, self._stamp(), DELETE_LEAD, primary_id=lead_id, primary_value=lead_name(record))
            return True

    def merge(self, winner: int, losers: list[int], *, source: str) -> None:
        """Losers disappear into the winner, whose values are kept; one Merge Leads activity."""
        with self.lock:
            for loser in losers:
                record = self._leads.pop(loser)
                self._index_remove(loser, record)
            self._append(
                winner,
                self._stamp(),
                MERGE_LEADS,
                primary_id=winner,
                primary_value=lead_name(self._leads[winner]),
                attributes=(
                    ("Merge IDs", ",".join(str(i) for i in losers)),
                    ("Merge Source", source),
                    ("Merged in Sales", False),
                ),
            )

    def add_custom(
        self,
        lead_id: int,
        ctype: schema.CustomActivityType,
        *,
        activity_date: str,
        primary_value: str,
        attributes: dict[str, Any],
    ) -> int:
        with self.lock:
            shown = tuple(
                (attr.name, attributes[attr.api_name]) for attr in ctype.attributes if attr.api_name in attributes
            )
            activity = self._append(
                lead_id,
                self._stamp(),
                ctype.id,
                primary_value=primary_value,
                attributes=shown,
                custom=dict(attributes),
                activity_date=activity_date,
            )
            return activity.id

    # ---- the log -------------------------------------------------------------------------

    def activities(self, accept: Callable[[Activity], bool] | None = None) -> list[Activity]:
        with self.lock:
            return [a for a in self._log if accept is None or accept(a)]

    def page(
        self, position: Position, batch: int, accept: Callable[[Activity], bool]
    ) -> tuple[list[Activity], Position, bool]:
        """Up to ``batch`` accepted activities after ``position``; the next position; more to come?

        The next position sits just before the next accepted activity (or at the end of the log),
        so the following page does not rescan what this one skipped.
        """
        now = self._clock()
        with self.lock:
            start = max(bisect_left(self._log_times, position.since), bisect_right(self._log_ids, position.last_id))
            found: list[Activity] = []
            i, n = start, len(self._log)
            while i < n and len(found) < batch:
                activity = self._log[i]
                if (activity.visible_at is None or activity.visible_at <= now) and accept(activity):
                    found.append(activity)  # one not visible yet is passed over: the late-commit hazard
                i += 1
            while i < n and not accept(self._log[i]):
                i += 1
            more = i < n
            end = i - 1  # last index consumed
            if end < start:
                return found, position, more
            return found, Position(since=_to_ms(self._log_times[end]), last_id=self._log_ids[end]), more

    # ---- internals -----------------------------------------------------------------------

    def _stamp(self) -> float:
        # Log times never go backwards, so (time, id) order is one order and tokens stay valid.
        self._last_stamp = max(self._clock(), self._last_stamp)
        return self._last_stamp

    def _append(
        self,
        lead_id: int,
        stamp: float,
        type_id: int,
        *,
        activity_date: str | None = None,
        **fields: Any,
    ) -> Activity:
        activity = Activity(
            id=self._next_activity_id,
            lead_id=lead_id,
            logged_at=stamp,
            activity_date=activity_date or schema.format_epoch(stamp),
            type_id=type_id,
            **fields,
        )
        self._next_activity_id += 1
        self._log.append(activity)
        self._log_ids.append(activity.id)
        self._log_times.append(stamp)
        return activity

    def _index_add(self, lead_id: int, record: dict[str, Any]) -> None:
        for name, index in self._index.items():
            if record.get(name) is not None:
                index.setdefault(_key(record[name]), set()).add(lead_id)

    def _index_remove(self, lead_id: int, record: dict[str, Any]) -> None:
        for name, index in self._index.items():
            if record.get(name) is not None:
                ids = index.get(_key(record[name]))
                if ids is not None:
                    ids.discard(lead_id)
                    if not ids:
                        del index[_key(record[name])]


def _key(value: Any) -> str:
    # Marketo matches look-ups without regard to case (emails above all).
    return schema.render_value(value).casefold() if value is not None else ""  # type: ignore[union-attr]


def _to_ms(seconds: float) -> float:
    # Tokens carry milliseconds; rounding down keeps "at or after" true for the next activity.
    return int(seconds * 1000) / 1000
