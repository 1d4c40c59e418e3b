"""Which mapped fields have been filled for every linked record: the map change a backfill closes.

A field added to the field map syncs from then on only when a record changes; the records linked
before keep it empty on one side until ``python -m sync_core backfill --field NAME`` fills them.
So the state keeps the set of field keys known to be filled for every link (the cursor
``fieldmap.synced``, a JSON list): the first successful cycle records the map it ran with (go-live
links every record with every mapped field), a completed backfill adds its field. A mapped field
not in the set is "added, not backfilled" in the status view. Writes are ETag-conditional.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from sync_core.core.errors import StateConflictError
from sync_core.core.fieldmap import FieldMap
from sync_core.core.models import Cursor
from sync_core.state import StateStore

CURSOR = "fieldmap.synced"
_TRIES = 5


def synced_fields(store: StateStore) -> set[str] | None:
    """The recorded field keys, or None when nothing was recorded yet (no cycle has completed)."""
    cursor = store.get_cursor(CURSOR)
    return None if cursor is None else set(json.loads(cursor.value))


def mark_synced(store: StateStore, keys: Iterable[str], *, only_if_absent: bool = False) -> None:
    """Add ``keys`` to the recorded set (``only_if_absent``: only if there is no record yet)."""
    added = set(keys)
    for _ in range(_TRIES):
        cursor = store.get_cursor(CURSOR)
        if cursor is not None and only_if_absent:
            return
        known = set() if cursor is None else set(json.loads(cursor.value))
        if cursor is not None and added <= known:
            return
        value = json.dumps(sorted(known | added))
        try:
            store.put_cursor(Cursor(name=CURSOR, value=value, etag=None if cursor is None else cursor.etag))
            return
        except StateConflictError:
            continue  # written meanwhile: read again
    raise StateConflictError(f"cursor {CURSOR}: kept changing under {_TRIES} tries")


def unsynced_fields(store: StateStore, field_map: FieldMap) -> list[str]:
    """Mapped fields added since the record was made and not backfilled (none before any record)."""
    known = synced_fields(store)
    if known is None:
        return []
    return [mapping.key for mapping in field_map.fields if mapping.key not in known]
