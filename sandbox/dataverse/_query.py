"""Reading a table: ``$select``/``$filter``/``$orderby``/``$top``/``$count``, server-driven paging
with ``Prefer: odata.maxpagesize`` and absolute ``@odata.nextLink``s, and change tracking
(``Prefer: odata.track-changes``, ``$deltatoken``, ``$deletedEntity`` rows, expiry).

Paging is keyset paging: the ``$skiptoken`` cookie carries the sort key of the last row sent
(and, when tracking, the version the snapshot was taken at), so rows created or deleted
between pages never shift a page. Delta tokens look like the real ones,
``<version>!<MM/dd/yyyy HH:mm:ss>``. Callers hold ``Store.lock``; nothing here writes rows.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from bisect import bisect_right
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any
from urllib.parse import quote, unquote

from sandbox._http import Request
from sandbox.dataverse import _errors as err
from sandbox.dataverse._odata import (
    Node,
    comparable,
    evaluate,
    key_values,
    parse_filter,
    parse_orderby,
    parse_select,
)
from sandbox.dataverse._records import render
from sandbox.dataverse._schema import Table
from sandbox.dataverse._store import Row, Store

_TOKEN_RE = re.compile(r"(\d+)!(\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2})")
_COOKIE_RE = re.compile(r'pagingcookie="([^"]*)"')
_STATE_RE = re.compile(r'sandbox="([^"]*)"')
TRACKING_REFUSED = ("$filter", "$orderby", "$expand", "$top")


def resolver(table: Table) -> Any:
    def resolve(name: str) -> str:
        column = table.by_prop.get(name)
        if column is None:
            raise err.no_property(name, table.logical)
        return column.edm

    return resolve


def getter(table: Table, row: Row) -> Any:
    return lambda prop: row.values.get(table.by_prop[prop].name)


class Query:
    """One GET on an entity set, from its query options and preferences."""

    def __init__(
        self,
        store: Store,
        table: Table,
        request: Request,
        prefs: dict[str, str],
        *,
        api: str,
        max_page: int,
        retention: float,
        cache: OrderCache,
    ) -> None:
        self.store = store
        self.cache = cache
        self.retention = retention
        self.table = table
        self.request = request
        self.prefs = prefs
        self.api = api
        self.applied: list[str] = []
        for option in ("$skip", "$apply"):
            if request.arg(option) is not None:
                raise err.bad_query(f"The query parameter {option} is not supported")
        self.tracking = "odata.track-changes" in prefs
        self.delta = request.arg("$deltatoken")
        if self.tracking or self.delta is not None:
            for option in TRACKING_REFUSED:
                if request.arg(option) is not None:
                    raise err.bad_query(
                        f'The "{option}" query parameter isn\'t supported when Change Tracking is enabled.'
                    )
            self.applied.append("odata.track-changes")
        if request.arg("$expand") is not None:
            raise err.bad_query("The sandbox does not simulate $expand on leads or contacts.")
        select_text = request.arg("$select")
        self.select = parse_select(select_text, resolver(table)) if select_text else None
        self.page_size = max_page
        self.top: int | None = None
        if "odata.maxpagesize" in prefs:
            size = prefs["odata.maxpagesize"]
            if not size.isdigit() or int(size) < 1:
                raise err.bad_query(
                    f"The value '{size}' of the odata.maxpagesize preference is not a positive integer."
                )
            self.page_size = min(int(size), max_page)
            self.applied.append(f"odata.maxpagesize={self.page_size}")
        elif request.arg("$top") is not None:
            top = request.arg("$top") or ""
            if not top.isdigit():
                raise err.bad_query(f"Invalid value '{top}' for $top query option found.")
            self.top = min(int(top), max_page)
        self.annotations = "odata.include-annotations" in prefs
        if self.annotations:
            self.applied.append(f"odata.include-annotations={prefs['odata.include-annotations']}")
        filter_text = request.arg("$filter")
        self.filter: Node | None = parse_filter(filter_text, resolver(table), table.odata_type) if filter_text else None
        order_text = request.arg("$orderby")
        self.order = parse_orderby(order_text, resolver(table)) if order_text else []
        self.count = (request.arg("$count") or "").lower() == "true"

    @property
    def context(self) -> str:
        shape = f"{self.table.entity_set}({','.join(self.select)})" if self.select else self.table.entity_set
        return f"{self.api}/$metadata#{shape}"

    def run(self) -> dict[str, Any]:
        return self._changes() if self.delta is not None else self._rows()

    # ------------------------------------------------------------------ full reads

    def _cursor_values(self, row: Row) -> list[Any]:
        """What a paging cookie remembers of the last row: its order-by values and its id."""
        cols = self.table.by_prop
        return [*(comparable(row.values.get(cols[p].name)) for p, _ in self.order), row.id]

    def _key(self, values: list[Any]) -> tuple[Any, ...]:
        """Sort key: nulls lowest (as in SQL Server), descending columns reversed, the primary key last."""
        parts: list[Any] = []
        for (_, desc), value in zip(self.order, values, strict=False):
            part = (value is not None, value)
            parts.append(_Descending(part) if desc else part)
        parts.append(values[-1])
        return tuple(parts)

    def _ordered(self) -> tuple[list[tuple[Any, ...]], list[Row]]:
        """Matching rows in order, with their keys; reused while the org has not changed."""
        signature = (self.table.logical, self.request.arg("$filter"), self.request.arg("$orderby"))
        cached = self.cache.get(signature, self.store.version)
        if cached is not None:
            return cached
        stored = self.store.tables[self.table.logical].rows
        ids = key_values(self.filter, self.table.primary_id) if self.filter is not None else None
        rows: list[Row] = list(stored.values()) if ids is None else [stored[i] for i in ids if i in stored]
        if self.filter is not None:
            node = self.filter
            rows = [r for r in rows if evaluate(node, getter(self.table, r))]
        keyed = sorted(((self._key(self._cursor_values(r)), r) for r in rows), key=itemgetter(0))
        result = ([k for k, _ in keyed], [r for _, r in keyed])
        self.cache.put(signature, self.store.version, result)
        return result

    def _rows(self) -> dict[str, Any]:
        cursor = _read_skiptoken(self.request.arg("$skiptoken"))
        snapshot = cursor.get("s") if cursor else self.store.version
        keys, rows = self._ordered()
        start = bisect_right(keys, self._key([_thaw(v) for v in cursor["k"]])) if cursor else 0
        limit = self.top if self.top is not None else self.page_size
        page = rows[start : start + limit]
        out: dict[str, Any] = {"@odata.context": self.context}
        if self.count:
            out["@odata.count"] = min(len(rows), 5000)
        out["value"] = [
            render(self.table, r, self.select, annotations=self.annotations, store=self.store) for r in page
        ]
        if start + limit < len(rows) and self.top is None:
            state = {"k": [_freeze(v) for v in self._cursor_values(page[-1])], "s": snapshot}
            number = int(cursor.get("p", 1)) + 1 if cursor else 2
            out["@odata.nextLink"] = self._link(skiptoken=_skiptoken(state, number, self.tracking, self.table, page))
        elif self.tracking:
            out["@odata.deltaLink"] = self._link(deltatoken=self._token(int(str(snapshot))))
        return out

    # ------------------------------------------------------------------ change tracking

    def _changes(self) -> dict[str, Any]:
        since = self._check_token(self.delta or "")
        cursor = _read_skiptoken(self.request.arg("$skiptoken"))
        upto = int(cursor["s"]) if cursor else self.store.version
        tables = self.store.tables[self.table.logical]
        now = self.store.clock()
        tables.prune_deleted(now - self.retention)
        changed, gone = tables.changes(since, upto)
        items: list[tuple[tuple[int, int, str], Any]] = [((0, r.version, r.id), r) for r in changed]
        items += [((1, version, record_id), record_id) for record_id, version in gone]
        if cursor:
            last = tuple(cursor["k"])
            items = [item for item in items if item[0] > last]
        page = items[: self.page_size]
        value: list[dict[str, Any]] = []
        for (phase, _, record_id), item in page:
            if phase == 0:
                value.append(render(self.table, item, self.select, annotations=self.annotations, store=self.store))
            else:
                value.append(
                    {
                        "@odata.context": f"{self.api}/$metadata#{self.table.entity_set}/$deletedEntity",
                        "id": record_id,
                        "reason": "deleted",
                    }
                )
        out: dict[str, Any] = {"@odata.context": self.context + "/$delta", "value": value}
        if len(items) > self.page_size:
            state = {"k": list(page[-1][0]), "s": upto}
            number = int(cursor.get("p", 1)) + 1 if cursor else 2
            out["@odata.nextLink"] = self._link(skiptoken=_skiptoken(state, number, True, self.table, []))
        else:
            out["@odata.deltaLink"] = self._link(deltatoken=self._token(upto), drop=("$deltatoken",))
        return out

    def _check_token(self, token: str) -> int:
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            raise err.bad_argument("The $deltatoken is not a change tracking token issued by this organization.")
        version = int(match.group(1))
        issued = datetime.strptime(match.group(2), "%m/%d/%Y %H:%M:%S").replace(tzinfo=UTC).timestamp()
        if version < self.store.expired_below or issued < self.store.clock() - self.retention:
            raise err.expired_version_stamp()
        if version > self.store.version:
            raise err.bad_argument("The $deltatoken is not a change tracking token issued by this organization.")
        return version

    def _token(self, version: int) -> str:
        stamp = datetime.fromtimestamp(self.store.clock(), UTC).strftime("%m/%d/%Y %H:%M:%S")
        return f"{version}!{stamp}"

    def _link(self, *, skiptoken: str | None = None, deltatoken: str | None = None, drop: tuple[str, ...] = ()) -> str:
        """The request's own URL (options kept as the client encoded them) with a new token."""
        _, _, raw_query = self.request.raw_target.partition("?")
        removed = {"$skiptoken", *drop}
        params = [p for p in raw_query.split("&") if p and unquote(p.partition("=")[0]) not in removed]
        if skiptoken is not None:
            params.append("$skiptoken=" + quote(skiptoken, safe=""))
        if deltatoken is not None:
            params.append("$deltatoken=" + quote(deltatoken, safe=""))
        return f"{self.api}/{self.table.entity_set}?" + "&".join(params)


class _Descending:
    """Wraps a sort-key part so that tuples order it backwards (``$orderby … desc``)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.value == other.value

    def __lt__(self, other: _Descending) -> bool:
        return bool(self.value > other.value)

    def __gt__(self, other: _Descending) -> bool:
        return bool(self.value < other.value)

    __hash__ = None  # type: ignore[assignment]


class OrderCache:
    """The last few ordered results per (table, $filter, $orderby), valid for one org version.

    Paging through N rows would otherwise filter and sort the whole table once per page.
    """

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._entries: dict[tuple[Any, ...], tuple[int, Any]] = {}
        self._lock = threading.Lock()

    def get(self, signature: tuple[Any, ...], version: int) -> Any:
        with self._lock:
            entry = self._entries.get(signature)
            return entry[1] if entry is not None and entry[0] == version else None

    def put(self, signature: tuple[Any, ...], version: int, value: Any) -> None:
        with self._lock:
            self._entries.pop(signature, None)
            self._entries[signature] = (version, value)
            while len(self._entries) > self.size:
                del self._entries[next(iter(self._entries))]


def _freeze(value: Any) -> Any:
    return {"d": value.isoformat()} if isinstance(value, datetime) else value


def _thaw(value: Any) -> Any:
    return datetime.fromisoformat(value["d"]) if isinstance(value, dict) else value


def _skiptoken(state: dict[str, Any], number: int, tracking: bool, table: Table, page: list[Row]) -> str:
    """A cookie shaped like Dataverse's; the ``sandbox`` attribute holds the keyset position."""
    state = {**state, "p": number}
    encoded = base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":")).encode()).decode().rstrip("=")
    bounds = ""
    if page:
        bounds = f'<{table.primary_id} last="{{{page[-1].id.upper()}}}" first="{{{page[0].id.upper()}}}" />'
    inner = f'<cookie page="{number - 1}" sandbox="{encoded}">{bounds}</cookie>'
    return (
        f'<cookie pagenumber="{number}" pagingcookie="{quote(quote(inner, safe=""), safe="")}" '
        f'istracking="{"True" if tracking else "False"}" />'
    )


def _read_skiptoken(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        cookie = _COOKIE_RE.search(text)
        inner = unquote(unquote(cookie.group(1))) if cookie else ""
        state = _STATE_RE.search(inner)
        if state is None:
            raise ValueError("no position")
        raw = state.group(1)
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if not isinstance(data, dict) or not isinstance(data.get("k"), list):
            raise ValueError("bad position")
        return data
    except (ValueError, json.JSONDecodeError) as exc:
        raise err.bad_argument("The $skiptoken is not a paging cookie issued by this organization.") from exc
