"""The "Sync Person to Microsoft" webhook's front door: size cap, shared secret, body schema.

Everything here happens before any API call or state write, so a bad request is refused with a
4xx and a reason and leaves nothing behind. The body carries only ids and options (design §7);
person values are read from Marketo, never trusted from the body.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_BODY_BYTES = 4096
# Marketo ids are far below this; the state store keys links by 12 digits (``state._keys.MAX_MARKETO_ID``).
MAX_LEAD_ID = 10**12 - 1
MAX_NESTING = 32  # a body this deeply nested is refused before the JSON parser sees it
SECRET_HEADER = "X-Sync-Secret"  # noqa: S105 - a header name, not a secret
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class SyncPersonRequest(BaseModel):
    """``{"leadId": <Marketo id>, "syncAs": "lead"|"contact", "ownerId": "<systemuser GUID>"}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    lead_id: int = Field(alias="leadId")
    sync_as: Literal["lead", "contact"] = Field(default="lead", alias="syncAs")
    owner_id: str | None = Field(default=None, alias="ownerId")

    @field_validator("lead_id", mode="before")
    @classmethod
    def _lead_id(cls, value: Any) -> Any:
        # Only a JSON integer: the webhook template sends {{lead.Id}} unquoted. A string, a float
        # (1.0 or 1e3), a boolean or an id outside 1..MAX_LEAD_ID is refused with this reason.
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_LEAD_ID:
            raise ValueError(
                f"must be a Marketo lead id: a JSON integer from 1 to {MAX_LEAD_ID}, not quoted "
                '(in the webhook template write "leadId": {{lead.Id}})'
            )
        return value

    @field_validator("sync_as", mode="before")
    @classmethod
    def _sync_as(cls, value: Any) -> Any:
        if value is None or value == "":
            return "lead"
        return value.lower() if isinstance(value, str) else value

    @field_validator("owner_id", mode="before")
    @classmethod
    def _owner(cls, value: Any) -> Any:
        if value is None or value == "":
            return None
        if not isinstance(value, str) or not _GUID.match(value.strip()):
            raise ValueError("must be a systemuser GUID")
        return value.strip().lower()


@dataclass(frozen=True)
class Refusal:
    """A 4xx answer, with reasons an admin configuring the webhook can act on."""

    status: int
    reasons: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {"status": "refused", "reasons": self.reasons}


def check_secret(headers: Mapping[str, str], expected: str | None) -> Refusal | None:
    """Constant-time comparison of ``X-Sync-Secret``; refuses everything when no secret is configured."""
    supplied = next((v for k, v in headers.items() if k.lower() == SECRET_HEADER.lower()), None)
    if not expected:
        return Refusal(401, ["the webhook is not configured: WEBHOOK_SHARED_SECRET is not set"])
    if supplied is None or not hmac.compare_digest(supplied.encode("utf-8"), expected.encode("utf-8")):
        return Refusal(401, [f"missing or wrong {SECRET_HEADER} header"])
    return None


def _nesting(body: bytes) -> int:
    """How deep ``[``/``{`` nest outside strings: counted without parsing, so no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def parse_body(body: bytes) -> SyncPersonRequest | Refusal:
    if _nesting(body) > MAX_NESTING:
        return Refusal(400, [f"body nests JSON deeper than {MAX_NESTING} levels"])
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return Refusal(400, [f"body is not valid JSON: {err.__class__.__name__} at position {getattr(err, 'pos', 0)}"])
    except (RecursionError, ValueError) as err:  # e.g. an integer with too many digits
        return Refusal(400, [f"body is not usable JSON: {err.__class__.__name__}"])
    if not isinstance(payload, dict):
        return Refusal(400, ["body must be a JSON object"])
    try:
        return SyncPersonRequest.model_validate(payload)
    except ValidationError as err:
        reasons = []
        for issue in err.errors():
            where = ".".join(str(part) for part in issue["loc"]) or "body"
            message = "unknown field" if issue["type"] == "extra_forbidden" else issue["msg"]
            reasons.append(f"{where}: {message}")
        return Refusal(400, reasons)


def check_size(body: bytes) -> Refusal | None:
    return Refusal(413, [f"body is larger than {MAX_BODY_BYTES} bytes"]) if len(body) > MAX_BODY_BYTES else None


def read_request(body: bytes, headers: Mapping[str, str], secret: str | None) -> SyncPersonRequest | Refusal:
    """Size first (cheap), then the secret, then the schema: the first refusal wins."""
    return check_size(body) or check_secret(headers, secret) or parse_body(body)
