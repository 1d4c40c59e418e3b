"""What the sync knows of the two Dataverse tables it keeps in step with Marketo persons: their
entity sets, primary ids, the columns it reads beside the mapped ones, the sync-owned person
fields (design §7) and the qualification rule (B9). Facts and pure functions; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sync_core.core.models import EntityType, Link

ENTITY_SETS = {EntityType.LEAD: "leads", EntityType.CONTACT: "contacts"}
PRIMARY_IDS = {EntityType.LEAD: "leadid", EntityType.CONTACT: "contactid"}
MICROSOFT_TYPES = {EntityType.LEAD: "Lead", EntityType.CONTACT: "Contact"}
ORIGINATING_LEAD = "_originatingleadid_value"  # on a contact: the lead it was qualified from
OWNER = "_ownerid_value"  # a user or a team
PARENT_CUSTOMER = "_parentcustomerid_value"  # on a contact: its account (or a contact)
LEAD_STATE = "statecode"
LEAD_QUALIFIED = 1
CREATED_ON = "createdon"
MICROSOFT_FIELDS = ("microsoftType", "microsoftId", "microsoftIsDeleted", "microsoftCreatedDate")


def row_id(entity: EntityType, row: Mapping[str, Any]) -> str:
    """A row's primary id, lower case (the form links and failure keys use)."""
    return str(row[PRIMARY_IDS[entity]]).lower()


def read_columns(entity: EntityType, mapped: list[str]) -> list[str]:
    """Every column the sync reads of ``entity``: the id, the creation time, qualification, the owner
    and (contacts) the parent account (``core.oneway``), the map's."""
    extra = [ORIGINATING_LEAD, PARENT_CUSTOMER] if entity is EntityType.CONTACT else [LEAD_STATE]
    return [PRIMARY_IDS[entity], CREATED_ON, OWNER, *extra, *mapped]


def is_qualified_lead(entity: EntityType, row: Mapping[str, Any]) -> bool:
    """A lead qualified into a contact lives on as the contact: it gets no person of its own (B9)."""
    return entity is EntityType.LEAD and row.get(LEAD_STATE) == LEAD_QUALIFIED


def originating_lead(entity: EntityType, row: Mapping[str, Any]) -> str | None:
    """The lead a contact was qualified from, if any."""
    value = row.get(ORIGINATING_LEAD) if entity is EntityType.CONTACT else None
    return str(value).lower() if value else None


def qualified_link(lead_link: Link, contact_id: str, contact_keys: set[str], *, now: datetime) -> Link:
    """The person's link moved from its lead to the contact qualified from it (B9): the baseline of
    the fields both tables map goes along, so the collision rule flips without a spurious change."""
    return Link(
        marketo_id=lead_link.marketo_id,
        entity=EntityType.CONTACT,
        dataverse_id=contact_id,
        baseline={key: value for key, value in lead_link.baseline.items() if key in contact_keys},
        originating_lead_id=lead_link.dataverse_id,
        updated_at=now,
    )


def microsoft_fields(entity: EntityType, dataverse_id: str, created_on: Any) -> dict[str, Any]:
    """The sync-owned person fields (design §7) for a person linked to this record."""
    return {
        "microsoftType": MICROSOFT_TYPES[entity],
        "microsoftId": dataverse_id,
        "microsoftCreatedDate": created_on if isinstance(created_on, str) and created_on else None,
        "microsoftIsDeleted": False,
    }
