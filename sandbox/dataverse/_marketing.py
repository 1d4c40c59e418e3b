"""Marketing-list membership and campaign items, written only through their actions.

``POST lists(<id>)/Microsoft.Dynamics.CRM.AddMemberList`` (``{"EntityId"}`` → ``AddMemberListResponse
{"Id"}``: the list member's id; a record already on the list keeps its one membership),
``…/RemoveMemberList`` (``{"EntityId"}`` → 204) and ``…/AddItemCampaign`` (``{"Campaign":
{"campaignid"}}``: the list becomes one of the campaign's marketing lists → the ``campaignitem``).
A member must be a record of the list's type (``createdfromcode``: 4 lead, 2 contact, 1 account)
that exists (else the Web API's 404 ``<table> With Id = … Does Not Exist``). Members are
``listmember`` rows in the store, so ``GET listmembers?$filter=_listid_value eq …`` reads them the
way every other query does; the table refuses direct writes, as the platform does. Deleting a
list, a lead or contact, or a campaign removes its memberships and campaign items with it (the
platform's cascades). Callers hold ``Store.lock``. No HTTP here.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sandbox.dataverse import _errors as err
from sandbox.dataverse._odata import GUID_RE
from sandbox.dataverse._schema import BY_LOGICAL, CAMPAIGN, LIST_MEMBER, LIST_MEMBER_TYPES, MARKETING_LIST
from sandbox.dataverse._stats import Stats
from sandbox.dataverse._store import Row, Store

ADD_MEMBER = "Microsoft.Dynamics.CRM.AddMemberList"
REMOVE_MEMBER = "Microsoft.Dynamics.CRM.RemoveMemberList"
ADD_ITEM_CAMPAIGN = "Microsoft.Dynamics.CRM.AddItemCampaign"
LIST_ACTIONS = (ADD_MEMBER, REMOVE_MEMBER, ADD_ITEM_CAMPAIGN)
_MEMBER_TABLES = {code: logical for logical, code in LIST_MEMBER_TYPES.items()}


class MarketingLists:
    def __init__(self, store: Store, stats: Stats) -> None:
        self.store = store
        self.stats = stats
        self.campaign_items: dict[tuple[str, str], str] = {}  # (campaign id, list id) -> campaignitem id

    def clear(self) -> None:
        self.campaign_items.clear()

    def _members(self) -> dict[str, Row]:
        return self.store.tables[LIST_MEMBER.logical].rows

    def member_of(self, list_id: str, entity_id: str) -> Row | None:
        return next(
            (
                r
                for r in self._members().values()
                if r.values["listid"] == list_id and r.values["entityid"] == entity_id
            ),
            None,
        )

    def members(self, list_id: str) -> list[str]:
        """The ids of a list's members."""
        return sorted(r.values["entityid"] for r in self._members().values() if r.values["listid"] == list_id)

    def _member_table(self, marketing_list: Row) -> str:
        code = marketing_list.values.get("createdfromcode")
        logical = _MEMBER_TABLES.get(code) if isinstance(code, int) else None
        if logical is None:
            raise err.bad_argument(f"The list {marketing_list.id} has no member type (createdfromcode).")
        return logical

    @staticmethod
    def _entity_id(data: Any, action: str) -> str:
        value = data.get("EntityId") if isinstance(data, dict) else None
        if not isinstance(value, str) or not GUID_RE.fullmatch(value):
            raise err.bad_argument(f"{action.rsplit('.', 1)[-1]} needs the Edm.Guid parameter 'EntityId'.")
        return value.lower()

    def add_member(self, marketing_list: Row, data: Any) -> str:
        entity_id = self._entity_id(data, ADD_MEMBER)
        logical = self._member_table(marketing_list)
        table = BY_LOGICAL.get(logical)
        if table is None or self.store.tables[logical].get(entity_id) is None:
            raise err.not_found(logical, entity_id)
        if marketing_list.values.get("statecode") != 0:
            raise err.bad_argument("Members cannot be added to an inactive marketing list.")
        existing = self.member_of(marketing_list.id, entity_id)
        if existing is not None:
            return existing.id
        member_id = str(uuid.uuid4())
        version = self.store.next_version()
        values = {
            "listmemberid": member_id,
            "listid": marketing_list.id,
            "entityid": entity_id,
            "entitytype": logical,
            "createdon": self.store_now(),
            "versionnumber": version,
        }
        self.store.tables[LIST_MEMBER.logical].put(Row(member_id, values, version))
        self.stats.wrote(LIST_MEMBER.entity_set, "create", by_user=False)
        return member_id

    def remove_member(self, marketing_list: Row, data: Any) -> None:
        entity_id = self._entity_id(data, REMOVE_MEMBER)
        logical = self._member_table(marketing_list)
        if self.store.tables[logical].get(entity_id) is None:
            raise err.not_found(logical, entity_id)
        existing = self.member_of(marketing_list.id, entity_id)
        if existing is not None:  # not a member: nothing to do, as the platform answers
            self.store.tables[LIST_MEMBER.logical].remove(existing, self.store.next_version())
            self.stats.wrote(LIST_MEMBER.entity_set, "delete", by_user=False)

    def add_item_campaign(self, marketing_list: Row, data: Any) -> str:
        campaign = data.get("Campaign") if isinstance(data, dict) else None
        campaign_id = campaign.get("campaignid") if isinstance(campaign, dict) else None
        if not isinstance(campaign_id, str) or not GUID_RE.fullmatch(campaign_id):
            raise err.bad_argument("AddItemCampaign needs the parameter 'Campaign': a campaign with its 'campaignid'.")
        campaign_id = campaign_id.lower()
        if self.store.tables[CAMPAIGN.logical].get(campaign_id) is None:
            raise err.not_found(CAMPAIGN.logical, campaign_id)
        key = (campaign_id, marketing_list.id)
        if key not in self.campaign_items:
            self.campaign_items[key] = str(uuid.uuid4())
        return self.campaign_items[key]

    def record_deleted(self, record_id: str) -> None:
        """What the platform's cascades remove with a record: a list's members and campaign items,
        a lead's or contact's memberships, a campaign's items."""
        for member in [r for r in self._members().values() if record_id in (r.values["listid"], r.values["entityid"])]:
            self.store.tables[LIST_MEMBER.logical].remove(member, self.store.next_version())
            self.stats.wrote(LIST_MEMBER.entity_set, "delete", by_user=False)
        for key in [key for key in self.campaign_items if record_id in key]:
            del self.campaign_items[key]

    def campaign_lists(self, campaign_id: str) -> list[str]:
        return sorted(list_id for (campaign, list_id) in self.campaign_items if campaign == campaign_id.lower())

    def store_now(self) -> datetime:
        return datetime.fromtimestamp(self.store.clock(), UTC).replace(microsecond=0)


__all__ = ["LIST_ACTIONS", "MARKETING_LIST", "MarketingLists"]
