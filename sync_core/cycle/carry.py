"""What a cycle cut short by its time budget leaves for the next tick (issue 17).

A cycle that reaches ``SYNC_CYCLE_BUDGET_SECONDS`` stops taking new work and moves the Marketo
paging token to the end of what it read: the persons it staged but did not apply would be lost
with the stage (a temporary file), so they are kept here, by id with the names of the fields that
changed. The next tick stages them again (``Stage.add_carried``) and, when it applies one, reads
those fields' current values from Marketo: the values themselves are not kept (person data stays
out of these rows), and the current value is the latest the feed would have given. Reading only
the changed fields keeps the merge the one a feed read gives (a field read in full counts as
changed wherever Marketo holds something other than the baseline).

It also keeps, per Dataverse table the cut stopped in, the delta link that table is read from and
how many pages of that read the cut tick applied (``Resume``): the next tick reads those pages
again (an intermediate ``@odata.nextLink`` is not taken as a durable position; they are echoes
now) and lets the budget stop it only past them, so every tick gets further than the last.

Kept as cursor rows of the state store (ETag-conditional, like every cursor): ``marketo.carry``
(the manifest) says which of two generations (``a``/``b``) holds the persons and in how many
parts, the field names and the tables' resume points; ``marketo.carry.<gen>.<i>`` hold
``PART_SIZE`` persons each, sorted, as ``<id difference>.<field bitmask>`` in base 36 (well under
Table Storage's 64 KiB per property). A save writes the other generation's parts, then switches
the manifest (the one write that makes them current), then removes the old parts: a crash at any
point leaves one complete carry, the old or the new. The engine saves it before the paging token
moves (cursors last): a crash between the two leaves the new carry with the old token, and the
next tick applies both, the repeat being an echo (values equal to the baseline write nothing).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from sync_core.core.errors import StateConflictError
from sync_core.core.models import Cursor
from sync_core.cycle.lease import LeaseLost
from sync_core.state import StateStore

CARRY = "marketo.carry"
PART_SIZE = 1000  # persons per row: ~20 base-36 characters each at most, ~40 KB in UTF-16

Person = tuple[int, Sequence[str]]  # a Marketo id and the names of its changed fields


@dataclass(frozen=True)
class Resume:
    """Where a cut tick left a Dataverse table: the delta link it read from ("" for a full read)
    and the pages of that read it applied."""

    link: str
    pages: int


@dataclass(frozen=True)
class Carry:
    """The stored carry: its manifest row (None: nothing carried), generation, parts, persons,
    field names and the tables' resume points."""

    manifest: Cursor | None = None
    generation: str = "b"
    parts: int = 0
    count: int = 0
    fields: tuple[str, ...] = ()
    tables: Mapping[str, Resume] = field(default_factory=dict)

    def persons(self, store: StateStore) -> Iterator[list[Person]]:
        """The carried persons with their changed fields, one part at a time."""
        for index in range(self.parts):
            row = store.get_cursor(_part(self.generation, index))
            if row is not None:
                yield decode(row.value, self.fields)

    def pages_done(self, table: str, link: str | None) -> int:
        """The pages of ``table`` a cut tick applied from ``link`` (0 when it read from another)."""
        resume = self.tables.get(table)
        return resume.pages if resume is not None and resume.link == (link or "") else 0


def load(store: StateStore) -> Carry:
    """The carry as stored; an unreadable manifest reads as nothing carried."""
    manifest = store.get_cursor(CARRY)
    if manifest is None:
        return Carry()
    try:
        data = json.loads(manifest.value)
        generation, parts, count = str(data["generation"]), int(data["parts"]), int(data["count"])
        names = tuple(str(name) for name in data["fields"])
        tables = {
            str(name): Resume(str(resume["link"]), int(resume["pages"]))
            for name, resume in dict(data.get("tables") or {}).items()
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        return Carry(manifest=manifest)
    if generation not in ("a", "b"):
        return Carry(manifest=manifest)
    return Carry(manifest, generation, max(parts, 0), max(count, 0), names, tables)


def save(
    store: StateStore,
    previous: Carry,
    chunks: Iterable[Sequence[Person]],
    *,
    tables: Mapping[str, Resume] | None = None,
) -> int:
    """Replace the carry with these persons (ascending ids, a chunk at a time) and the tables'
    resume points; how many persons. Nothing to carry: the manifest is removed.

    Raises ``LeaseLost`` when the manifest changed since ``previous`` was loaded (another cycle
    wrote it: this one lost its lease), checked before the parts are written and again by the
    manifest's ETag."""
    current = store.get_cursor(CARRY)
    if (current.etag if current else None) != (previous.manifest.etag if previous.manifest else None):
        # Another cycle saved meanwhile: its parts are the other generation, not to be written over.
        raise LeaseLost("the carry was written by someone else meanwhile")
    generation = "a" if previous.generation == "b" else "b"
    names: dict[str, int] = {}  # field name -> bit, in order of first sight
    parts = count = 0
    buffer: list[Person] = []
    for chunk in chunks:
        buffer.extend(chunk)
        while len(buffer) >= PART_SIZE:
            _put(store, _part(generation, parts), encode(buffer[:PART_SIZE], names))
            parts, count, buffer = parts + 1, count + PART_SIZE, buffer[PART_SIZE:]
    if buffer:
        _put(store, _part(generation, parts), encode(buffer, names))
        parts, count = parts + 1, count + len(buffer)
    try:
        if count or tables:
            manifest = {
                "generation": generation,
                "parts": parts,
                "count": count,
                "fields": list(names),
                "tables": {name: {"link": r.link, "pages": r.pages} for name, r in (tables or {}).items()},
            }
            etag = previous.manifest.etag if previous.manifest else None
            store.put_cursor(Cursor(name=CARRY, value=json.dumps(manifest, separators=(",", ":")), etag=etag))
        elif previous.manifest is not None:
            store.delete_cursor(previous.manifest)
    except StateConflictError as err:
        raise LeaseLost("the carry was written by someone else meanwhile") from err
    for index in range(previous.parts):  # the old generation's parts: no longer read
        store.delete_cursor(Cursor(name=_part(previous.generation, index), value=""))
    return count


def encode(persons: Sequence[Person], names: dict[str, int]) -> str:
    """Ascending persons as ``<id difference>.<field bitmask>`` in base 36; ``names`` gives each
    field its bit (new names are added to it)."""
    out, last = [], 0
    for lead_id, fields in persons:
        mask = 0
        for name in fields:
            mask |= 1 << names.setdefault(name, len(names))
        out.append(f"{_base36(lead_id - last)}.{_base36(mask)}")
        last = lead_id
    return ",".join(out)


def decode(value: str, names: Sequence[str]) -> list[Person]:
    persons: list[Person] = []
    last = 0
    for item in value.split(",") if value else []:
        delta, _, mask_text = item.partition(".")
        last += int(delta, 36)
        mask = int(mask_text or "0", 36)
        persons.append((last, [name for bit, name in enumerate(names) if mask >> bit & 1]))
    return persons


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if number <= 0:
        return "0"
    out = []
    while number:
        number, rest = divmod(number, 36)
        out.append(digits[rest])
    return "".join(reversed(out))


def _part(generation: str, index: int) -> str:
    return f"{CARRY}.{generation}.{index}"


def _put(store: StateStore, name: str, value: str) -> None:
    """Write a part, over a stale one of the same name (left by a crash after an earlier save)."""
    existing = store.get_cursor(name)
    store.put_cursor(Cursor(name=name, value=value, etag=existing.etag if existing else None))
