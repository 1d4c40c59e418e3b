"""The webhooks' front door: size cap, shared secret, body schema (one per flow step).

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
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sync_core.core.flows import (
    DUE_IN_DAYS_DEFAULT,
    DUE_IN_DAYS_MAX,
    TASK_DESCRIPTION_MAX,
    TASK_STATUS_DEFAULT,
    TASK_SUBJECT_MAX,
    TaskStatus,
    task_status,
)

MAX_BODY_BYTES = 4096
# Marketo ids are far below this; the state store keys links by 12 digits (``state._keys.MAX_MARKETO_ID``).
MAX_LEAD_ID = 10**12 - 1
MAX_NESTING = 32  # a body this deeply nested is refused before the JSON parser sees it
MAX_REQUEST_ID = 128  # a Create Task requestId (a Marketo token's value)
SECRET_HEADER = "X-Sync-Secret"  # noqa: S105 - a header name, not a secret
R = TypeVar("R", bound="LeadRequest")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _guid(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _GUID.match(value.strip()):
        raise ValueError(f"must be a {what} GUID")
    return value.strip().lower()


class LeadRequest(BaseModel):
    """What every webhook body carries: the Marketo person's id, strictly (``{{lead.Id}}`` unquoted)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    lead_id: int = Field(alias="leadId")

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


class SyncPersonRequest(LeadRequest):
    """``{"leadId": <Marketo id>, "syncAs": "lead"|"contact", "ownerId": "<systemuser GUID>"}``."""

    sync_as: Literal["lead", "contact"] = Field(default="lead", alias="syncAs")
    owner_id: str | None = Field(default=None, alias="ownerId")

    @field_validator("sync_as", mode="before")
    @classmethod
    def _sync_as(cls, value: Any) -> Any:
        if value is None or value == "":
            return "lead"
        return value.lower() if isinstance(value, str) else value

    @field_validator("owner_id", mode="before")
    @classmethod
    def _owner(cls, value: Any) -> Any:
        return None if value is None or value == "" else _guid(value, "systemuser")


class ChangeOwnerRequest(LeadRequest):
    """``{"leadId", "ownerId": "<systemuser or team GUID>", "ownerType": "systemuser"|"team"}``."""

    owner_id: str = Field(alias="ownerId")
    owner_type: Literal["systemuser", "team"] = Field(default="systemuser", alias="ownerType")

    @field_validator("owner_id", mode="before")
    @classmethod
    def _owner(cls, value: Any) -> Any:
        return _guid(value, "systemuser or team")

    @field_validator("owner_type", mode="before")
    @classmethod
    def _owner_type(cls, value: Any) -> Any:
        if value is None or value == "":
            return "systemuser"
        return value.lower() if isinstance(value, str) else value


class CreateTaskRequest(LeadRequest):
    """``{"leadId", "subject", "description", "dueInDays", "status", "ownerId", "requestId"}``."""

    subject: str = Field(min_length=1, max_length=TASK_SUBJECT_MAX)
    description: str | None = Field(default=None, max_length=TASK_DESCRIPTION_MAX)
    due_in_days: int = Field(default=DUE_IN_DAYS_DEFAULT, ge=0, le=DUE_IN_DAYS_MAX, alias="dueInDays")
    status: TaskStatus = Field(default=TASK_STATUS_DEFAULT)
    owner_id: str | None = Field(default=None, alias="ownerId")
    request_id: str | None = Field(default=None, min_length=1, max_length=MAX_REQUEST_ID, alias="requestId")

    @field_validator("subject", mode="before")
    @classmethod
    def _subject(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("description", "request_id", mode="before")
    @classmethod
    def _optional_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
        return value or None

    @field_validator("due_in_days", mode="before")
    @classmethod
    def _due(cls, value: Any) -> Any:
        # Marketo may send a token as a string: digits are read, anything else is refused.
        if value is None or value == "":
            return DUE_IN_DAYS_DEFAULT
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number of days from 0 to {DUE_IN_DAYS_MAX}")
        return value

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> Any:
        return task_status(value)

    @field_validator("owner_id", mode="before")
    @classmethod
    def _owner(cls, value: Any) -> Any:
        return None if value is None or value == "" else _guid(value, "systemuser")


class CampaignRequest(LeadRequest):
    """``{"leadId", "campaignId": "<Dynamics campaign GUID>"}`` (Add to / Remove from Microsoft Campaign)."""

    campaign_id: str = Field(alias="campaignId")

    @field_validator("campaign_id", mode="before")
    @classmethod
    def _campaign(cls, value: Any) -> Any:
        return _guid(value, "Dynamics campaign")


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


def parse_body(body: bytes, model: type[R] = SyncPersonRequest) -> R | Refusal:  # type: ignore[assignment]
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
        return model.model_validate(payload)
    except ValidationError as err:
        reasons = []
        for issue in err.errors():
            where = ".".join(str(part) for part in issue["loc"]) or "body"
            message = (
                "unknown field" if issue["type"] == "extra_forbidden" else issue["msg"].removeprefix("Value error, ")
            )
            reasons.append(f"{where}: {message}")
        return Refusal(400, reasons)


def check_size(body: bytes) -> Refusal | None:
    return Refusal(413, [f"body is larger than {MAX_BODY_BYTES} bytes"]) if len(body) > MAX_BODY_BYTES else None


def read_request(
    body: bytes,
    headers: Mapping[str, str],
    secret: str | None,
    model: type[R] = SyncPersonRequest,  # type: ignore[assignment]
) -> R | Refusal:
    """Size first (cheap), then the secret, then the schema: the first refusal wins."""
    return check_size(body) or check_secret(headers, secret) or parse_body(body, model)
