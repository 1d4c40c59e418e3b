"""``$batch`` wire format (reference B7): reading a multipart/mixed request into operations and
change sets, and writing the multipart/mixed answer.

Parts are ``application/http`` requests (``POST /api/data/v9.2/leads HTTP/1.1``, absolute
URLs, relative ones and ``$<Content-ID>`` references all occur) or nested change sets. This
module does the text work only; executing parts, atomicity and stop-or-continue live in the
app, which owns routing and the store.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sandbox._http import Request, Response
from sandbox.dataverse import _errors as err

_BOUNDARY_RE = re.compile(r'boundary="?([^";,\s]+)"?', re.IGNORECASE)
_REQUEST_LINE = re.compile(r"([A-Z]+) (.+?)(?: HTTP/1\.[01])?")


@dataclass
class Operation:
    method: str
    url: str
    headers: Message
    body: bytes
    content_id: str | None


@dataclass
class ChangeSet:
    operations: list[Operation] = field(default_factory=list)


def boundary_of(content_type: str) -> str | None:
    match = _BOUNDARY_RE.search(content_type)
    return match.group(1) if match else None


def _parts(text: str, boundary: str) -> list[str]:
    delimiter = f"--{boundary}"
    parts: list[str] = []
    current: list[str] | None = None
    closed = False
    for line in text.split("\n"):
        stripped = line.rstrip("\r")
        if stripped == delimiter:
            if current is not None:
                parts.append("\n".join(current))
            current = []
        elif stripped == delimiter + "--":
            if current is not None:
                parts.append("\n".join(current))
            closed = True
            break
        elif current is not None:
            current.append(stripped)
    if not closed:
        raise err.bad_argument(f"The batch body has no closing delimiter '--{boundary}--'.")
    return parts


def _split_head(block: str) -> tuple[list[str], str]:
    head, _, body = block.partition("\n\n")
    return [line for line in head.split("\n") if line.strip()], body


def _headers(lines: list[str]) -> Message:
    message = Message()
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise err.bad_argument(f"The batch part header line '{line[:80]}' is not 'Name: value'.")
        message[name.strip()] = value.strip()
    return message


def parse_batch(body: bytes, content_type: str) -> list[Operation | ChangeSet]:
    boundary = boundary_of(content_type)
    if not content_type.lower().startswith("multipart/mixed") or boundary is None:
        raise err.bad_argument("A $batch request must be 'Content-Type: multipart/mixed; boundary=...'.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise err.bad_argument("The $batch body is not UTF-8 text.") from exc
    items: list[Operation | ChangeSet] = []
    for block in _parts(text, boundary):
        head, rest = _split_head(block)
        headers = _headers(head)
        part_type = headers.get("Content-Type", "")
        if part_type.lower().startswith("multipart/mixed"):
            inner = boundary_of(part_type)
            if inner is None:
                raise err.bad_argument("A change set part needs a boundary.")
            change_set = ChangeSet()
            for inner_block in _parts(rest, inner):
                inner_head, inner_rest = _split_head(inner_block)
                change_set.operations.append(_operation(_headers(inner_head), inner_rest))
            items.append(change_set)
        else:
            items.append(_operation(headers, rest))
    return items


def _operation(part_headers: Message, text: str) -> Operation:
    head, body = _split_head(text.lstrip("\n"))
    if not head:
        raise err.bad_argument("A batch part has no request line.")
    match = _REQUEST_LINE.fullmatch(head[0].strip())
    if match is None:
        raise err.bad_argument(f"'{head[0][:80]}' is not an HTTP request line.")
    headers = _headers(head[1:])
    content_id = part_headers.get("Content-ID") or headers.get("Content-ID")
    return Operation(match.group(1), match.group(2), headers, body.strip().encode("utf-8"), content_id)


def to_request(operation: Operation, url: str, base_url: str, api_path: str) -> Request:
    """The operation as a ``Request`` to the same app (``url`` already has ``$n`` resolved)."""
    split = urlsplit(url)
    path = split.path if split.scheme or url.startswith("/") else api_path + split.path
    target = path + (f"?{split.query}" if split.query else "")
    return Request(
        method=operation.method,
        path=path,
        query=parse_qs(split.query, keep_blank_values=True),
        headers=operation.headers,
        body=operation.body,
        base_url=base_url,
        raw_target=target,
    )


def resolve_references(operation: Operation, entities: dict[str, str]) -> tuple[str, bytes]:
    """Replace ``$n`` (URL head, and ``@odata.bind`` values) with the entity URL part n produced."""

    def lookup(reference: str) -> str:
        if reference[1:] not in entities:
            raise err.bad_argument(f"Content-ID Reference: '{reference}' does not exist in the batch context.")
        return entities[reference[1:]]

    url = operation.url
    if url.startswith("$"):
        head, sep, tail = url.partition("/")
        url = lookup(head) + sep + tail
    body = operation.body
    if body and b"@odata.bind" in body and b'"$' in body:
        try:
            data: Any = json.loads(body)
        except json.JSONDecodeError:
            return url, body
        if isinstance(data, dict):
            for name, value in data.items():
                if name.endswith("@odata.bind") and isinstance(value, str) and value.startswith("$"):
                    data[name] = lookup(value)
            body = json.dumps(data).encode("utf-8")
    return url, body


def _http_text(response: Response) -> str:
    phrase = HTTPStatus(response.status).phrase
    lines = [f"HTTP/1.1 {response.status} {phrase}"]
    if response.content_type and response.body:
        lines.append(f"Content-Type: {response.content_type}")
    lines += [f"{name}: {value}" for name, value in response.headers]
    return "\r\n".join(lines) + "\r\n\r\n" + response.body.decode("utf-8")


def _part(response: Response, content_id: str | None) -> str:
    head = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    if content_id is not None:
        head += f"Content-ID: {content_id}\r\n"
    return head + "\r\n" + _http_text(response) + "\r\n"


Result = tuple[str | None, Response] | list[tuple[str | None, Response]]


def build_response(results: list[Result], status: int) -> Response:
    """The multipart answer: one part per operation, a nested multipart per committed change set."""
    boundary = f"batchresponse_{uuid.uuid4()}"
    chunks: list[str] = []
    for result in results:
        chunks.append(f"--{boundary}\r\n")
        if isinstance(result, list):
            inner = f"changesetresponse_{uuid.uuid4()}"
            chunks.append(f"Content-Type: multipart/mixed; boundary={inner}\r\n\r\n")
            for content_id, response in result:
                chunks.append(f"--{inner}\r\n" + _part(response, content_id))
            chunks.append(f"--{inner}--\r\n")
        else:
            chunks.append(_part(result[1], result[0]))
    chunks.append(f"--{boundary}--\r\n")
    return Response(
        status=status,
        body="".join(chunks).encode("utf-8"),
        content_type=f"multipart/mixed; boundary={boundary}",
    )
