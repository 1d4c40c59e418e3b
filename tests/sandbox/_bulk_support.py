"""Helpers for the bulk extract tests: date ranges around the fake clock, job calls by kind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.sandbox._marketo_support import FakeClock, Marketo


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def around(clock: FakeClock, days_before: float = 1, days_after: float = 1) -> dict[str, str]:
    """A ``{startAt, endAt}`` range around the fake clock's now."""
    now = datetime.fromtimestamp(clock.now, UTC)
    return {"startAt": stamp(now - timedelta(days=days_before)), "endAt": stamp(now + timedelta(days=days_after))}


def create(marketo: Marketo, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    return marketo.post(f"/bulk/v1/{kind}/export/create.json", body)


def create_id(marketo: Marketo, clock: FakeClock, kind: str = "leads", **extra: Any) -> str:
    """A new job over everything created around now; its exportId."""
    body: dict[str, Any] = {"filter": {"createdAt": around(clock)}, **extra}
    if kind == "leads":
        body.setdefault("fields", ["id", "email"])
    answer = create(marketo, kind, body)
    assert answer["success"], answer
    return str(answer["result"][0]["exportId"])


def job(marketo: Marketo, export_id: str, action: str, kind: str = "leads") -> dict[str, Any]:
    """``enqueue``/``cancel`` (POST) or ``status`` (GET): the whole answer."""
    path = f"/bulk/v1/{kind}/export/{export_id}/{action}.json"
    return marketo.get(path) if action == "status" else marketo.post(path)


def state(marketo: Marketo, export_id: str, kind: str = "leads") -> dict[str, Any]:
    answer = job(marketo, export_id, "status", kind)
    assert answer["success"], answer
    result: dict[str, Any] = answer["result"][0]
    return result


def file(marketo: Marketo, export_id: str, kind: str = "leads", **headers: str) -> httpx.Response:
    return marketo.request("GET", f"/bulk/v1/{kind}/export/{export_id}/file.json", headers=headers)
