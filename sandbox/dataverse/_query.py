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
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import quote, unquote

from sandbox._http import Request
from sandbox.dataverse import _errors as err
from sandbox.dataverse._odata import Node, comparable, evaluate, parse_filter, parse_orderby, parse_select
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
    ) -> None:
        self.store = store
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

    def _sort_key(self, row: Row) -> tuple[Any, ...]:
        cols = self.table.by_prop
        return (*(comparable(row.values.get(cols[p].name)) for p, _ in self.order), row.id)

    def _compare(self, a: tuple[Any, ...], b: tuple[Any, ...]) -> int:
        directions = [desc for _, desc in self.order] + [False]
        for x, y, desc in zip(a, b, directions, strict=True):
            if x == y:
                continue
            if x is None:
                result = -1
            elif y is None:
                result = 1
            else:
                result = -1 if x < y else 1
            return -result if desc else result
        return 0

    def _rows(self) -> dict[str, Any]:
        cursor = _read_skiptoken(self.request.arg("$skiptoken"))
        snapshot = cursor.get("s") if cursor else self.store.version
        rows = list(self.store.tables[self.table.logical].rows.values())
        if self.filter is not None:
            node = self.filter
            rows = [r for r in rows if evaluate(node, getter(self.table, r))]
        total = len(rows)
        if cursor:
            last = tuple(_thaw(v) for v in cursor["k"])
            rows = [r for r in rows if self._compare(self._sort_key(r), last) > 0]
        # Stable sorts, last key first: the primary key breaks ties; nulls sort lowest, as in SQL Server.
        rows.sort(key=lambda r: r.id)
        for prop, desc in reversed(self.order):
            rows.sort(key=partial(_order_value, self.table.by_prop[prop].name), reverse=desc)
        limit = self.top if self.top is not None else self.page_size
        page = rows[:limit]
        out: dict[str, Any] = {"@odata.context": self.context}
        if self.count:
            out["@odata.count"] = min(total, 5000)
        out["value"] = [render(self.table, r, self.select, annotations=self.annotations) for r in page]
        more = len(rows) > limit and self.top is None
        if more:
            state = {"k": [_freeze(v) for v in self._sort_key(page[-1])], "s": snapshot}
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
                value.append(render(self.table, item, self.select, annotations=self.annotations))
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


def _order_value(name: str, row: Row) -> tuple[bool, Any]:
    value = comparable(row.values.get(name))
    return (value is not None, value)


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
