"""What a request handler is given: the parsed parameters and the instance it acts on.

Owns parameter reading the way Marketo accepts it (query string, or the form body of a
``POST …?_method=GET``; lists comma-joined or repeated) and the common parameter errors
(``batchSize`` out of 1-300, JSON bodies that do not parse → 609, wrong content type → 612).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox._http import Request
from sandbox.marketo._bulk_jobs import ExportQueue
from sandbox.marketo._db import LeadDatabase
from sandbox.marketo._envelope import MarketoError
from sandbox.marketo._limits import DailyUsage
from sandbox.marketo._options import MarketoOptions

MAX_BATCH = 300


class Params:
    """Request parameters from one or more sources (query string, form body), in that order."""

    def __init__(self, *sources: dict[str, list[str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for source in sources:
            for name, values in source.items():
                self._values.setdefault(name, []).extend(values)

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def first(self, name: str) -> str | None:
        values = self._values.get(name)
        return values[0] if values else None

    def items(self, name: str) -> list[str]:
        """A list parameter, comma-joined (``fields=a,b``) or repeated (``fields=a&fields=b``)."""
        return [v.strip() for raw in self._values.get(name, []) for v in raw.split(",") if v.strip()]

    def integer(self, name: str) -> int | None:
        raw = self.first(name)
        if raw is None or raw == "":
            return None
        try:
            return int(raw)
        except ValueError as err:
            raise MarketoError("1001", f"Invalid value '{raw}'. Required of type 'Integer'") from err

    def integers(self, name: str) -> list[int]:
        out = []
        for raw in self.items(name):
            try:
                out.append(int(raw))
            except ValueError as err:
                raise MarketoError("1001", f"Invalid value '{raw}'. Required of type 'Integer'") from err
        return out


@dataclass
class Call:
    request: Request
    params: Params
    match: re.Match[str]
    db: LeadDatabase
    usage: DailyUsage
    options: MarketoOptions
    clock: Callable[[], float]
    bulk: ExportQueue
    user: str  # the API user (client id) whose token the call carries

    def json_body(self) -> Any:
        """The JSON body, or None if there is none."""
        if not self.request.body.strip():
            return None
        if self.request.content_type != "application/json":
            raise MarketoError("612")
        try:
            return json.loads(self.request.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise MarketoError("609") from err

    def batch_size(self) -> int:
        size = self.params.integer("batchSize")
        if size is None:
            return MAX_BATCH
        if not 1 <= size <= MAX_BATCH:
            raise MarketoError("1003", f"Invalid batchSize '{size}': must be between 1 and {MAX_BATCH}")
        return size
