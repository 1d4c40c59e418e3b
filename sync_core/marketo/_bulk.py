"""Bulk Lead Extract (``/bulk/v1/leads/export/…``, api-protocols §A11): the typed job status and the
streamed reading of a finished job's CSV file.

A job is created with a ``createdAt`` window (at most 31 days, ISO-8601 without milliseconds),
enqueued, polled until ``Completed`` (or ``Failed``/``Canceled``), and its file read. The file
can be far larger than memory: it is parsed as it arrives (``csv`` over the byte stream), one
row at a time, with Marketo's literal ``null`` for an empty value turned into ``None``. Nothing
here decides which windows to read or what to do with the rows; no row value is logged.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from sync_core.core.errors import ApiError, TransientError
from sync_core.http.retry import Failure, RetryableFailure
from sync_core.marketo._envelope import RETRYABLE_STATUS, SERVICE

MAX_WINDOW = timedelta(days=31)
FINISHED = frozenset({"Completed", "Failed", "Canceled"})
_EXPORT_ID = re.compile(r"^[0-9A-Za-z-]{1,64}$")
_NULL = "null"


@dataclass(frozen=True, slots=True)
class ExportJob:
    """A bulk export job's status (``Created|Queued|Processing|Canceled|Completed|Failed``)."""

    export_id: str
    status: str
    number_of_records: int | None = None
    file_size: int | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def of(cls, item: dict[str, Any]) -> ExportJob:
        export_id = str(item.get("exportId") or "")
        if not export_id:
            raise ApiError("marketo bulk export: no exportId in the answer", service=SERVICE)
        return cls(
            export_id, str(item.get("status") or ""), _int(item.get("numberOfRecords")), _int(item.get("fileSize"))
        )


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def export_path(export_id: str, action: str) -> str:
    """``/bulk/v1/leads/export/{id}/{action}``; an id that is not an export id is refused, never sent."""
    if not _EXPORT_ID.match(export_id):
        raise ValueError("not a Marketo export id")
    return f"/bulk/v1/leads/export/{export_id}/{action}"


def window_body(fields: list[str], start: datetime, end: datetime) -> dict[str, Any]:
    """The create body for persons created in ``[start, end]`` (timezone-aware, at most 31 days)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("export windows must be timezone-aware")
    if end < start or end - start > MAX_WINDOW:
        raise ValueError("an export window is 0 to 31 days")

    def iso(moment: datetime) -> str:
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    return {"fields": fields, "format": "CSV", "filter": {"createdAt": {"startAt": iso(start), "endAt": iso(end)}}}


def windows(oldest: datetime, until: datetime, *, size: timedelta = MAX_WINDOW) -> list[tuple[datetime, datetime]]:
    """``[oldest, until]`` in consecutive windows of at most ``size`` (whole seconds; Marketo's
    filter is inclusive on both ends, so each window starts a second after the last one ends)."""
    start = oldest.astimezone(UTC).replace(microsecond=0)
    end_all = until.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
    out: list[tuple[datetime, datetime]] = []
    while start <= end_all:
        end = min(start + size, end_all)
        out.append((start, end))
        start = end + timedelta(seconds=1)
    return out


def check_file_answer(response: httpx.Response, export_id: str) -> None:
    """Raise the error a file answer stands for (404 plain text: unknown or not Completed)."""
    status = response.status_code
    if status == 200:
        return
    where = "marketo bulk export file"
    if status == 429 or status in RETRYABLE_STATUS:
        raise RetryableFailure(TransientError(f"{where}: HTTP {status}", service=SERVICE), failure=Failure.REFUSED)
    raise ApiError(f"{where}: HTTP {status} for export {export_id}", service=SERVICE, status=status)


def iter_csv_rows(response: httpx.Response) -> Iterator[dict[str, str | None]]:
    """The file's rows as ``{field: value or None}``, parsed as the bytes arrive (RFC 4180, UTF-8)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()

    def text() -> Iterator[str]:
        pending = ""
        for chunk in response.iter_bytes():
            pending += decoder.decode(chunk)
            # Hand the csv reader whole lines; a quoted newline simply continues the record.
            cut = pending.rfind("\n") + 1
            if cut:
                for line in pending[:cut].split("\n")[:-1]:
                    yield line + "\n"
                pending = pending[cut:]
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending

    reader = csv.reader(text())
    header = next(reader, None)
    if header is None:
        return
    for row in reader:
        if not row:
            continue
        yield {name: (None if value == _NULL else value) for name, value in zip(header, row, strict=False)}
