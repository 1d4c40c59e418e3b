"""The rules of the flow-step webhooks (Change Owner, Create Task, Add to / Remove from Campaign):
task status reasons, due dates, deterministic record ids and the campaign lists' names. Pure: no
I/O, no clock (callers pass ``now``).

Deterministic ids are how a retried or concurrent call creates one record: the id is a UUID v5
of what identifies the work (the flow, the Marketo person, the request id), and Dataverse creates
it with ``If-None-Match: *`` (one wins, the others find it exists).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sync_core.core.models import EntityType

# Every webhook, by the name of its route under /api/marketo/ (the status view has a row for each).
SYNC_PERSON = "sync-person"
CHANGE_OWNER = "change-owner"
CREATE_TASK = "create-task"
ADD_TO_CAMPAIGN = "add-to-campaign"
REMOVE_FROM_CAMPAIGN = "remove-from-campaign"
WEBHOOKS = (SYNC_PERSON, CHANGE_OWNER, CREATE_TASK, ADD_TO_CAMPAIGN, REMOVE_FROM_CAMPAIGN)

# The namespace of every id this sync derives (a fixed, random UUID: ids never collide with others').
ID_NAMESPACE = uuid.UUID("6f1d3c5e-0a44-4c1e-9a52-3b8e2f4d7c10")
MAX_LIST_NAME = 128  # list.listname
TASK_SUBJECT_MAX = 200  # task.subject
TASK_DESCRIPTION_MAX = 2000  # task.description
DUE_IN_DAYS_DEFAULT = 5  # the native flow step's default
DUE_IN_DAYS_MAX = 3650
CAMPAIGN_ACTIVE = 0  # campaign.statecode: 0 Active, 1 Inactive


@dataclass(frozen=True)
class TaskStatus:
    label: str
    state: int  # task.statecode: 0 Open, 1 Completed, 2 Canceled
    status: int  # task.statuscode (Status Reason)


# A default org's task status reasons (task.statuscode), by their label.
TASK_STATUSES = (
    TaskStatus("Not Started", 0, 2),
    TaskStatus("In Progress", 0, 3),
    TaskStatus("Waiting on someone else", 0, 4),
    TaskStatus("Deferred", 0, 7),
    TaskStatus("Completed", 1, 5),
    TaskStatus("Canceled", 2, 6),
)
TASK_STATUS_DEFAULT = TASK_STATUSES[0]


def task_status(value: str | int | None) -> TaskStatus:
    """A status reason by label (any case) or by its ``statuscode`` value; ``ValueError`` names the choices."""
    if value is None or value == "":
        return TASK_STATUS_DEFAULT
    for status in TASK_STATUSES:
        if (isinstance(value, int) and not isinstance(value, bool) and value == status.status) or (
            isinstance(value, str) and value.strip().casefold() == status.label.casefold()
        ):
            return status
    choices = ", ".join(f"{s.label!r} ({s.status})" for s in TASK_STATUSES)
    raise ValueError(f"must be a task status reason: one of {choices}")


def task_due(now: datetime, due_in_days: int) -> str:
    """``scheduledend``: ``due_in_days`` after ``now``, in UTC, to the second."""
    return (now + timedelta(days=due_in_days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def derived_id(*parts: str) -> str:
    """A UUID v5 of the parts: the same work always names the same record."""
    return str(uuid.uuid5(ID_NAMESPACE, "\x1f".join(parts)))


def task_request_key(request_id: str | None, content: dict[str, Any], *, now: datetime) -> str:
    """What makes two Create Task calls the same task. With a ``requestId`` (a Marketo token the
    template sends) that id; without one, the call's content and the UTC day, so a retry of the same
    call that day creates nothing more, and the same task for the same person is made once a day."""
    if request_id:
        return f"request:{request_id}"
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]
    return f"content:{now.strftime('%Y-%m-%d')}:{digest}"


def task_id(lead_id: int, key: str) -> str:
    return derived_id("create-task", str(lead_id), key)


def campaign_list_id(campaign_id: str, entity: EntityType) -> str:
    """The marketing list of ``entity`` members this sync keeps for a campaign (one per campaign and type)."""
    return derived_id("campaign-list", campaign_id.lower(), entity.value)


def campaign_list_name(campaign_name: str | None, campaign_id: str, entity: EntityType) -> str:
    """``Mkto-leads-<campaign name>`` (or ``-contacts-``), within the column's 128 characters; the
    campaign's id when it has no name. The native sync names its lists ``Mkto-leads-<id>`` alike."""
    prefix = f"Mkto-{entity.value}s-"
    name = (campaign_name or "").strip() or campaign_id.lower()
    return prefix + name[: MAX_LIST_NAME - len(prefix)]


def list_member_type(entity: EntityType) -> int:
    """``list.createdfromcode``: the table a marketing list's members come from (2 contact, 4 lead)."""
    return {EntityType.CONTACT: 2, EntityType.LEAD: 4}[entity]
