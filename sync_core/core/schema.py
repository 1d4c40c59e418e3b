"""What each side says about its own fields: Dataverse attribute metadata and Marketo describe.

The API clients build these from the services' answers; the pure core (field map conversion,
validation) reads them. Plain typed models, no I/O, no raw JSON beyond the client boundary.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class RequiredLevel(StrEnum):
    NONE = "None"
    RECOMMENDED = "Recommended"
    APPLICATION_REQUIRED = "ApplicationRequired"
    SYSTEM_REQUIRED = "SystemRequired"


class AttributeMeta(BaseModel):
    """One Dataverse column, from ``EntityDefinitions(LogicalName=…)/Attributes`` and its casts."""

    model_config = ConfigDict(frozen=True)

    logical_name: str
    attribute_type: str  # String, Memo, Picklist, State, Status, Boolean, DateTime, Integer, Decimal, Lookup, ...
    required_level: RequiredLevel = RequiredLevel.NONE
    max_length: int | None = None  # String/Memo
    format: str | None = None  # StringAttributeMetadata.Format: Email, Phone, Text, Url, ...
    options: dict[int, str] = Field(default_factory=dict)  # option-set value -> label
    is_valid_for_create: bool = True
    is_valid_for_update: bool = True


class EntityMeta(BaseModel):
    """One Dataverse table (``lead`` or ``contact``) as the sync needs to know it."""

    model_config = ConfigDict(frozen=True)

    logical_name: str
    entity_set: str
    primary_id: str
    attributes: dict[str, AttributeMeta]


class MarketoFieldMeta(BaseModel):
    """One Marketo person field, from ``/rest/v1/leads/describe2.json`` (or describe.json)."""

    model_config = ConfigDict(frozen=True)

    name: str  # REST API name
    data_type: str  # string, email, phone, text, boolean, integer, float, currency, date, datetime, ...
    length: int | None = None
    updateable: bool = True
