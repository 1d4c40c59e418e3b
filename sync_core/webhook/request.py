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
SECRET_HEADER = "X-Sync-Secret"  # noqa: S105 - a header name, not a secret
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class SyncPersonRequest(BaseModel):
    """``{"leadId": <Marketo id>, "syncAs": "lead"|"contact", "ownerId": "<systemuser GUID>"}``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    lead_id: int = Field(alias="leadId", gt=0)
    sync_as: Literal["lead", "contact"] = Field(default="lead", alias="syncAs")
    owner_id: str | None = Field(default=None, alias="ownerId")

    @field_validator("lead_id", mode="before")
    @classmethod
    def _lead_id(cls, value: Any) -> Any:
        # Marketo's {{lead.Id}} token arrives as a number, or as a string when quoted in a template.
        if isinstance(value, bool):
            raise ValueError("must be a Marketo lead id (a positive integer)")
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        if isinstance(value, int):
            return value
        raise ValueError("must be a Marketo lead id (a positive integer)")

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


def parse_body(body: bytes) -> SyncPersonRequest | Refusal:
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return Refusal(400, [f"body is not valid JSON: {err.__class__.__name__} at position {getattr(err, 'pos', 0)}"])
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
