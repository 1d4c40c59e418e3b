"""Tokens the simulated service hands out: OAuth access tokens and paging tokens.

Access tokens look like the real ones (``<uuid>:int``); asking again before expiry returns the
same token with its remaining lifetime. Paging tokens are opaque to clients; here they are, like
the classic real ones, base32 of ``"<datetime>,<lastActivityId>"`` (activities) or of
``"L,<lastLeadId>"`` (lead queries). No HTTP here; the app maps problems to error codes.
"""

from __future__ import annotations

import base64
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from sandbox.marketo._db import Position
from sandbox.marketo._schema import parse_datetime

_KEEP_TOKENS = 1000  # old tokens remembered, so a stale one is "expired" (602), not "invalid" (601)


class AccessTokens:
    def __init__(self, ttl: int, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self._clock = clock
        self._issued: OrderedDict[str, float] = OrderedDict()  # token -> expiry (epoch seconds)
        self._current: str | None = None
        self._lock = threading.Lock()

    def issue(self) -> tuple[str, int]:
        """The live token and its remaining lifetime in whole seconds (a fresh one shows ttl - 1)."""
        with self._lock:
            now = self._clock()
            if self._current is None or self._issued[self._current] - now <= 0:
                self._current = f"{uuid.uuid4()}:int"
                self._issued[self._current] = now + self.ttl
                while len(self._issued) > _KEEP_TOKENS:
                    self._issued.popitem(last=False)
            remaining = self._issued[self._current] - now
            return self._current, max(0, math.ceil(remaining) - 1)

    def check(self, token: str) -> str | None:
        """None if usable, else the error code: 601 unknown, 602 expired."""
        with self._lock:
            expiry = self._issued.get(token)
        if expiry is None:
            return "601"
        return "602" if expiry <= self._clock() else None


def _b32(text: str) -> str:
    return base64.b32encode(text.encode("ascii")).decode("ascii")


def _unb32(token: str) -> str:
    padded = token.strip() + "=" * (-len(token.strip()) % 8)
    return base64.b32decode(padded.upper()).decode("ascii")


def encode_position(position: Position) -> str:
    moment = datetime.fromtimestamp(position.since, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"
    return _b32(f"{text},{position.last_id}")


def decode_position(token: str) -> Position:
    """Raises ValueError for anything that is not one of our activity paging tokens."""
    try:
        text = _unb32(token)
        when, _, last_id = text.rpartition(",")
        return Position(since=parse_datetime(when).timestamp(), last_id=int(last_id))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError("invalid paging token") from err


def encode_lead_offset(last_id: int) -> str:
    return _b32(f"L,{last_id}")


def decode_lead_offset(token: str) -> int:
    try:
        kind, _, last_id = _unb32(token).partition(",")
        if kind != "L":
            raise ValueError("not a lead query token")
        return int(last_id)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError("invalid paging token") from err
