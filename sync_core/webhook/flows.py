"""The flow-step webhooks Marketo users have with the native sync, beside "Sync Person to Microsoft"
(reference native-sync items 39 to 41): Change Owner, Create Task, Add to and Remove from Microsoft Campaign.

Each is a ``handler.Flow``: the same front door (size, ``X-Sync-Secret``, strict body), deadline,
503s and error answers as Sync Person, and the same way to the person's record
(``handler.person_record``: the link, else the person synced first as Sync Person does, under its
claim). What each adds:

- **Change Owner**: read the record's owner; the same → ``unchanged``; else ``ownerid@odata.bind``.
  An owner Dynamics does not know → 422 with its reason.
- **Create Task**: a task ``regarding`` the record, created with a deterministic ``activityid``
  (``core.flows.task_id`` of the person and the request id) by ``PATCH`` + ``If-None-Match: *``,
  so a retried or concurrent call makes one task and answers ``exists``.
- **Add to Campaign**: the campaign must exist and be active (else 422); its marketing list for the
  record's type (one per campaign and type, a deterministic ``listid``, created on first use and
  added to the campaign, then marked done in the state store, so a failure between the two steps
  is made good by the next call) gets the record (``AddMemberList``). The membership is recorded in the
  state store *before* the add, unconfirmed, confirmed after it, and forgotten again when the add
  fails; so a crash in between leaves an unconfirmed record, and the next call adds the record
  (``AddMemberList`` is safe to repeat) instead of answering ``exists``: never a member we forgot
  we added, never ``exists`` for a record not on the list. A record already on the list (put there
  by a Dynamics user) is answered ``exists`` and not recorded as ours.
- **Remove from Campaign**: only a membership this sync recorded is removed (``RemoveMemberList``):
  the record's, and for a contact the one of the lead it was qualified from (added as a lead, the
  person may be a contact by now).

Calls on one record run one at a time (a claim ``change-owner:<record>`` or
``campaign-member:<list>:<record>``), so concurrent retries give one result: one ``changed`` or
``added``, the others ``unchanged`` or ``exists``.
A refusal (422) also goes to the person's activity log as ``microsoftSyncFailed``. Logs carry ids
and outcomes, never person values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sync_core.core import flows as names
from sync_core.core.entities import ENTITY_SETS
from sync_core.core.errors import RecordError, SyncError
from sync_core.core.flows import (
    CAMPAIGN_ACTIVE,
    campaign_list_id,
    campaign_list_name,
    list_member_type,
    task_due,
    task_id,
    task_request_key,
)
from sync_core.core.models import CampaignMember, EntityType
from sync_core.dataverse.client import DataverseClient
from sync_core.webhook.handler import (
    WEBHOOK_RETRY,
    Answer,
    Call,
    Flow,
    log_failure,
    person_record,
    release_claim,
    take_claim,
    unavailable,
)
from sync_core.webhook.request import CampaignRequest, ChangeOwnerRequest, CreateTaskRequest

log = logging.getLogger(__name__)

OWNER_SETS = {"systemuser": "systemusers", "team": "teams"}
NOT_FOUND = "0x80040217"  # Dataverse: the record (or list) with that id does not exist


def _dataverse(call: Call) -> DataverseClient:
    return call.services.dataverse.with_retry_policy(WEBHOOK_RETRY)


def _reject(call: Call, lead_id: int, entity: EntityType, step: str, reasons: list[str]) -> Answer:
    """422 with the reasons, and the same reasons on the person's activity log."""
    log_failure(
        call.services.marketo.with_retry_policy(WEBHOOK_RETRY), lead_id, entity, [f"{step}: {r}" for r in reasons]
    )
    return Answer(422, {"status": "rejected", "reasons": reasons})


def _record_body(entity: EntityType, record_id: str, **extra: Any) -> dict[str, Any]:
    return {"entity": entity.value, "dynamicsId": record_id, **extra}


# -- Change Owner in Microsoft ------------------------------------------------------------------------


def change_owner(request: ChangeOwnerRequest, call: Call) -> Answer:
    found = person_record(request.lead_id, call)
    if isinstance(found, Answer):
        return found
    entity, record_id = found
    body = _record_body(entity, record_id, ownerId=request.owner_id)

    def assign() -> Answer:
        dataverse = _dataverse(call)
        rows = dataverse.get_rows(ENTITY_SETS[entity], [record_id], select=["_ownerid_value"])
        if not rows:
            reasons = [f"the person's {entity.value} {record_id} is not in Dynamics"]
            return _reject(call, request.lead_id, entity, "Change Owner", reasons)
        current = str(rows[0].get("_ownerid_value") or "").lower() or None
        if current == request.owner_id:
            return Answer(200, {"status": "unchanged", **body})
        call.before_writing()
        bind = f"/{OWNER_SETS[request.owner_type]}({request.owner_id})"
        try:
            dataverse.update(ENTITY_SETS[entity], record_id, {"ownerid@odata.bind": bind})
        except RecordError as err:
            reasons = [f"Dynamics refused the owner {request.owner_type} {request.owner_id}: {r}" for r in err.reasons]
            return _reject(call, request.lead_id, entity, "Change Owner", reasons)
        return Answer(200, {"status": "changed", **body, "previousOwnerId": current})

    return _one_at_a_time(call, f"change-owner:{record_id}", assign)


# -- Create Task in Microsoft --------------------------------------------------------------------------


def create_task(request: CreateTaskRequest, call: Call) -> Answer:
    found = person_record(request.lead_id, call)
    if isinstance(found, Answer):
        return found
    entity, record_id = found
    now = call.clock()
    content = request.model_dump(mode="json", exclude={"request_id"})
    activity_id = task_id(request.lead_id, task_request_key(request.request_id, content, now=now))
    task: dict[str, Any] = {
        "subject": request.subject,
        "scheduledend": task_due(now, request.due_in_days),
        f"regardingobjectid_{entity.value}_task@odata.bind": f"/{ENTITY_SETS[entity]}({record_id})",
        "statecode": request.status.state,
        "statuscode": request.status.status,
    }
    if request.description:
        task["description"] = request.description
    if request.owner_id:
        task["ownerid@odata.bind"] = f"/systemusers({request.owner_id})"
    call.before_writing()
    try:
        created = _dataverse(call).create_if_absent("tasks", activity_id, task)
    except RecordError as err:
        return _reject(
            call, request.lead_id, entity, "Create Task", [f"Dynamics refused the task: {r}" for r in err.reasons]
        )
    return Answer(
        200, {"status": "created" if created else "exists", "taskId": activity_id, **_record_body(entity, record_id)}
    )


# -- Add to / Remove from Microsoft Campaign -------------------------------------------------------


def _campaign(call: Call, request: CampaignRequest, entity: EntityType, step: str) -> dict[str, Any] | Answer:
    """The campaign's name and state; a 422 when Dynamics has no such campaign or it is inactive."""
    rows = _dataverse(call).get_rows("campaigns", [request.campaign_id], select=["name", "statecode"])
    if not rows:
        return _reject(call, request.lead_id, entity, step, [f"no Dynamics campaign has id {request.campaign_id}"])
    if rows[0].get("statecode") != CAMPAIGN_ACTIVE:
        return _reject(
            call, request.lead_id, entity, step, [f"the Dynamics campaign {request.campaign_id} is inactive"]
        )
    return rows[0]


def _one_at_a_time(call: Call, key: str, work: Callable[[], Answer]) -> Answer:
    """``work()`` holding the claim ``key`` (released after, always): calls on one record run in turn."""
    store = call.services.store
    taken = take_claim(store, key, clock=call.clock, sleep=call.sleep)
    if taken is None or isinstance(taken, dict):
        return unavailable("another call for this record is still in progress", 5)
    try:
        result: Answer = work()
        return result
    finally:
        release_claim(store, taken)


def add_to_campaign(request: CampaignRequest, call: Call) -> Answer:
    found = person_record(request.lead_id, call)
    if isinstance(found, Answer):
        return found
    entity, record_id = found
    campaign = _campaign(call, request, entity, "Add to Campaign")
    if isinstance(campaign, Answer):
        return campaign
    list_id = campaign_list_id(request.campaign_id, entity)
    body = _record_body(entity, record_id, campaignId=request.campaign_id, listId=list_id)

    def add() -> Answer:
        store = call.services.store
        recorded = store.get_campaign_member(list_id, record_id)
        if recorded is not None and recorded.confirmed:
            return Answer(200, {"status": "exists", **body})
        dataverse = _dataverse(call)
        call.before_writing()
        marketing_list = {
            "listname": campaign_list_name(campaign.get("name"), request.campaign_id, entity),
            "createdfromcode": list_member_type(entity),
            "description": "Kept by the Marketo sync: Add to / Remove from Microsoft Campaign",
        }

        def make_list() -> bool:
            """Make the list and add it to the campaign, then mark it so: a failure in between is
            made good by the next call (both steps are safe to repeat). True when made now."""
            made = dataverse.create_if_absent("lists", list_id, marketing_list)
            dataverse.add_list_to_campaign(list_id, request.campaign_id)
            store.mark_campaign_list_ready(list_id, request.campaign_id)
            return made

        member = recorded or CampaignMember(
            campaign_id=request.campaign_id,
            list_id=list_id,
            entity=entity,
            dataverse_id=record_id,
            marketo_id=request.lead_id,
            added_at=call.clock(),
            confirmed=False,
        )
        try:
            created = False if store.campaign_list_ready(list_id) else make_list()
            if recorded is None:  # (recorded, unconfirmed: a call stopped between recording and adding)
                if not created and dataverse.is_list_member(list_id, record_id):
                    return Answer(200, {"status": "exists", **body, "addedBySync": False})
                store.add_campaign_member(member)  # before the add: a crash leaves no member we forgot
            try:
                try:
                    dataverse.add_list_member(list_id, record_id)
                except RecordError as err:
                    if err.code != NOT_FOUND or created:
                        raise
                    # Marked made, yet unknown to Dynamics: a user deleted the list. Made again.
                    store.forget_campaign_list(list_id)
                    make_list()
                    dataverse.add_list_member(list_id, record_id)
            except SyncError:
                if recorded is None:  # refused or unavailable: not added, not ours
                    store.remove_campaign_member(member)
                raise  # (an unconfirmed record from an earlier call stays: that call may have added it)
            store.confirm_campaign_member(member)
        except RecordError as err:
            return _reject(
                call, request.lead_id, entity, "Add to Campaign", [f"Dynamics refused: {r}" for r in err.reasons]
            )
        return Answer(200, {"status": "added", **body})

    return _one_at_a_time(call, f"campaign-member:{list_id}:{record_id}", add)


def remove_from_campaign(request: CampaignRequest, call: Call) -> Answer:
    link = call.services.store.get_links_by_marketo_ids([request.lead_id]).get(request.lead_id)
    if link is None:  # never synced: nothing of theirs can be on a list we keep
        return Answer(200, {"status": "not-added", "campaignId": request.campaign_id})
    campaign = _campaign(call, request, link.entity, "Remove from Campaign")
    if isinstance(campaign, Answer):
        return campaign
    # The person's record, and the lead it was qualified from: added as a lead, a person may be a
    # contact by now, and what we put on the campaign's lead list is still ours to take off.
    records = [(link.entity, link.dataverse_id.lower())]
    if link.entity is EntityType.CONTACT and link.originating_lead_id:
        records.append((EntityType.LEAD, link.originating_lead_id.lower()))
    answers = [_remove_member(request, call, entity, record_id) for entity, record_id in records]
    return next((a for a in answers if a.body["status"] != "not-added"), answers[0])


def _remove_member(request: CampaignRequest, call: Call, entity: EntityType, record_id: str) -> Answer:
    """Take ``record_id`` off the campaign's list for ``entity`` if this sync put it there."""
    list_id = campaign_list_id(request.campaign_id, entity)
    body = _record_body(entity, record_id, campaignId=request.campaign_id, listId=list_id)

    def remove() -> Answer:
        store = call.services.store
        member = store.get_campaign_member(list_id, record_id)
        if member is None:  # not added by this sync (maybe by a Dynamics user): left alone
            return Answer(200, {"status": "not-added", **body})
        call.before_writing()
        try:
            _dataverse(call).remove_list_member(list_id, record_id)
        except RecordError as err:
            if err.code != NOT_FOUND:  # the list or record is gone: so is the membership
                reasons = [f"Dynamics refused: {r}" for r in err.reasons]
                return _reject(call, request.lead_id, entity, "Remove from Campaign", reasons)
        store.remove_campaign_member(member)
        return Answer(200, {"status": "removed", **body})

    return _one_at_a_time(call, f"campaign-member:{list_id}:{record_id}", remove)


CHANGE_OWNER: Flow[ChangeOwnerRequest] = Flow(names.CHANGE_OWNER, ChangeOwnerRequest, change_owner)
CREATE_TASK: Flow[CreateTaskRequest] = Flow(names.CREATE_TASK, CreateTaskRequest, create_task)
ADD_TO_CAMPAIGN: Flow[CampaignRequest] = Flow(names.ADD_TO_CAMPAIGN, CampaignRequest, add_to_campaign)
REMOVE_FROM_CAMPAIGN: Flow[CampaignRequest] = Flow(names.REMOVE_FROM_CAMPAIGN, CampaignRequest, remove_from_campaign)
FLOW_STEPS = (CHANGE_OWNER, CREATE_TASK, ADD_TO_CAMPAIGN, REMOVE_FROM_CAMPAIGN)
