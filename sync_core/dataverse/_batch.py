"""The OData ``$batch`` multipart format: build a request of independent operations, read the answers.

Used only to isolate the records a bulk message rejected: each record becomes its own part (no
change sets, so each stands alone) and, with ``Prefer: odata.continue-on-error``, every part
gets its own status. Pure functions over bytes; no HTTP, no knowledge of which table or why.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CRLF = "\r\n"
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_STATUS_LINE = re.compile(r"^HTTP/\d(?:\.\d)?\s+(\d{3})")


@dataclass(frozen=True)
class BatchPart:
    method: str
    url: str  # absolute path of the operation, e.g. /api/data/v9.2/leads(<guid>)
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class PartResponse:
    status: int
    headers: Mapping[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None when empty / not JSON


def build_batch(parts: Sequence[BatchPart]) -> tuple[str, bytes]:
    """``(content_type, body)`` of a ``$batch`` request holding ``parts`` in order."""
    boundary = f"batch_{uuid.uuid4()}"
    lines: list[str] = []
    for number, part in enumerate(parts, start=1):
        lines += [
            f"--{boundary}",
            "Content-Type: application/http",
            "Content-Transfer-Encoding: binary",
            f"Content-ID: {number}",
            "",
            f"{part.method} {part.url} HTTP/1.1",
        ]
        for name, value in (part.headers or {}).items():
            lines.append(f"{name}: {value}")
        if part.body is not None:
            lines += ["Content-Type: application/json; type=entry", "", json.dumps(part.body, separators=(",", ":"))]
        else:
            lines.append("")
        lines.append("")
    lines.append(f"--{boundary}--")
    lines.append("")
    return f"multipart/mixed; boundary={boundary}", CRLF.join(lines).encode("utf-8")


def _headers_and_rest(text: str) -> tuple[dict[str, str], str]:
    if text.startswith("\n"):
        return {}, text[1:]  # no headers at all
    head, _, rest = text.partition("\n\n")
    headers: dict[str, str] = {}
    for line in head.split("\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers, rest


def read_batch(content_type: str, body: bytes) -> list[PartResponse]:
    """The embedded HTTP responses of a ``$batch`` answer, in order (change sets flattened)."""
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise ValueError("$batch answer has no multipart boundary")
    text = body.decode("utf-8").replace("\r\n", "\n")
    return _read_parts(text, match.group(1))


def _read_parts(text: str, boundary: str) -> list[PartResponse]:
    responses: list[PartResponse] = []
    delimiter = f"--{boundary}"
    for chunk in text.split(delimiter)[1:]:
        if chunk.startswith("--"):
            break  # closing delimiter
        part_headers, payload = _headers_and_rest(chunk.lstrip("\n"))
        nested = _BOUNDARY.search(part_headers.get("content-type", ""))
        if part_headers.get("content-type", "").lower().startswith("multipart/") and nested:
            responses += _read_parts(payload, nested.group(1))
            continue
        status_line, _, rest = payload.lstrip("\n").partition("\n")
        status = _STATUS_LINE.match(status_line.strip())
        if status is None:
            raise ValueError("$batch answer part without an HTTP status line")
        headers, raw = _headers_and_rest(rest)
        raw = raw.strip()
        parsed: Any = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
        responses.append(PartResponse(int(status.group(1)), headers, parsed))
    return responses
