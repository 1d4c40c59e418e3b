"""Person fields Dynamics owns (native sync items 15, 17, 51): the record's owner on every linked
person, and the parent account's company data on a contact's person. One-way: they are computed
from Dynamics, written to Marketo, never sent to Dynamics and never part of a collision.

    owner    microsoftOwnerId / microsoftOwnerName / microsoftOwnerEmail ← the lead's or contact's
             ``ownerid``: a user (full name, primary email) or a team (its name, its email), which
             the native sync leaves empty
    company  company ← account name, website ← websiteurl, industry ← industrycode (its label),
             numberOfEmployees ← numberofemployees, annualRevenue ← revenue,
             microsoftAccountNumber ← accountnumber; for contacts only

What Marketo holds of them is kept in the link's baseline under ``>``-prefixed keys (field-map
keys never start so), and the owner as last read from Dynamics under ``>owner``: a record whose
owner did not change needs no look-up (a user's later rename reaches the person when the record's
owner changes). A value is written when it differs from that baseline; a field never
written is not cleared (a contact without an account keeps the company a form gave it). A
Marketo edit to one of them (seen in the change feed, different from the value written) is counted
and becomes the baseline, so the next Dynamics change of the record or its account overwrites it,
as the native sync does. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sync_core.core.entities import OWNER as OWNER_COLUMN
from sync_core.core.entities import PARENT_CUSTOMER as PARENT_COLUMN
from sync_core.core.fieldmap import COMPANY_FIELDS, OWNER_FIELDS, FieldType, FieldValueError, canonical
from sync_core.core.models import EntityType
from sync_core.core.schema import EntityMeta

KEY_PREFIX = ">"
OWNER_KEY = ">owner"  # [id, kind, name, email] of the owner as read from Dynamics (not what Marketo holds)
FORMATTED = "@OData.Community.Display.V1.FormattedValue"

ACCOUNT = EntityMeta(logical_name="account", entity_set="accounts", primary_id="accountid", attributes={})
SYSTEMUSER = EntityMeta(logical_name="systemuser", entity_set="systemusers", primary_id="systemuserid", attributes={})
TEAM = EntityMeta(logical_name="team", entity_set="teams", primary_id="teamid", attributes={})
USER_COLUMNS = ("fullname", "internalemailaddress")
TEAM_COLUMNS = ("name", "emailaddress")


@dataclass(frozen=True)
class CompanyField:
    marketo: str
    column: str
    type: FieldType = FieldType.STRING  # optionset: the label Dataverse formats is sent


COMPANY = (
    CompanyField("company", "name"),
    CompanyField("website", "websiteurl"),
    CompanyField("industry", "industrycode", FieldType.OPTIONSET),
    CompanyField("numberOfEmployees", "numberofemployees", FieldType.INTEGER),
    CompanyField("annualRevenue", "revenue", FieldType.DECIMAL),
    CompanyField("microsoftAccountNumber", "accountnumber"),
)
assert tuple(f.marketo for f in COMPANY) == COMPANY_FIELDS
ACCOUNT_COLUMNS = tuple(f.column for f in COMPANY)
_TYPES: dict[str, FieldType] = {
    **{f.marketo: FieldType.STRING if f.type is FieldType.OPTIONSET else f.type for f in COMPANY},
    "microsoftOwnerId": FieldType.STRING,
    "microsoftOwnerName": FieldType.STRING,
    "microsoftOwnerEmail": FieldType.EMAIL,
}
# The person fields each table fills (a table the sync may not read leaves them unfilled).
READ_FROM = {"systemuser": OWNER_FIELDS[1:], "team": OWNER_FIELDS[1:], "account": COMPANY_FIELDS}
# The custom person fields an admin creates for these (the others are Marketo's standard fields).
CUSTOM_FIELDS = (*OWNER_FIELDS, "microsoftAccountNumber")


@dataclass(frozen=True)
class Principal:
    """A record's owner: a user or a team."""

    id: str
    kind: str  # "systemuser" | "team"
    name: str | None
    email: str | None


def fields_for(entity: EntityType) -> tuple[str, ...]:
    """The Dynamics-owned person fields of a person linked to ``entity``."""
    return OWNER_FIELDS + (COMPANY_FIELDS if entity is EntityType.CONTACT else ())


def owner_id(row: Mapping[str, Any]) -> str | None:
    value = row.get(OWNER_COLUMN)
    return str(value).lower() if value else None


def parent_account(row: Mapping[str, Any]) -> str | None:
    """The contact's parent account (None when its parent customer is a contact, or none)."""
    value = row.get(PARENT_COLUMN)
    kind = row.get(PARENT_COLUMN + "@Microsoft.Dynamics.CRM.lookuplogicalname")
    return str(value).lower() if value and kind in (None, "account") else None


def known_owner(baseline: Mapping[str, Any], principal_id: str | None) -> Principal | None:
    """The owner as last read from Dynamics for this link (``OWNER_KEY``), if it is still the owner:
    no look-up is needed for a record whose owner did not change (e.g. the echo of our own write)."""
    known = baseline.get(OWNER_KEY)
    if principal_id is None or not isinstance(known, list) or len(known) != 4 or known[0] != principal_id:
        return None
    return Principal(known[0], known[1], known[2], known[3])


def owner_values(principal_id: str | None, principal: Principal | None) -> dict[str, Any]:
    """The owner fields for an owner id and what is known of it (a user or team not found: id only)."""
    return {
        "microsoftOwnerId": principal_id,
        "microsoftOwnerName": principal.name if principal else None,
        "microsoftOwnerEmail": principal.email if principal else None,
    }


def company_values(account: Mapping[str, Any] | None) -> dict[str, Any]:
    """The company fields from an account row (read with formatted values); no account: all None."""
    out: dict[str, Any] = {}
    for field in COMPANY:
        raw = None if account is None else account.get(field.column)
        if field.type is FieldType.OPTIONSET:
            label = None if account is None else account.get(field.column + FORMATTED)
            out[field.marketo] = label if raw is not None and isinstance(label, str) else None
        else:
            out[field.marketo] = _canonical_or_none(field.marketo, raw)
    return out


def writes(values: Mapping[str, Any], baseline: Mapping[str, Any], available: Iterable[str]) -> dict[str, Any]:
    """The fields to write: those Marketo has (``available``) whose value differs from what Marketo
    holds by the baseline; a field never written is not cleared."""
    have = set(available)
    out: dict[str, Any] = {}
    for name, value in values.items():
        key = KEY_PREFIX + name
        if name in have and (baseline[key] != value if key in baseline else value is not None):
            out[name] = value
    return out


def edited(seen: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[str]:
    """Of ``marketo_edits``, the fields whose value the sync had written (a Marketo user changed a
    Dynamics-owned value; a value a form gave before the sync wrote the field is not an edit)."""
    return [name for name in seen if KEY_PREFIX + name in baseline]


def marketo_edits(entity: EntityType, staged: Mapping[str, Any] | None, baseline: Mapping[str, Any]) -> dict[str, Any]:
    """Dynamics-owned fields a person's Marketo values (staged changes, or a full read) hold away from
    the baseline (not the echo of our own write), canonical: what Marketo holds now."""
    if not staged:
        return {}
    edits: dict[str, Any] = {}
    for name in fields_for(entity):
        if name in staged:
            value = _canonical_or_none(name, staged[name])
            if value != baseline.get(KEY_PREFIX + name):
                edits[name] = value
    return edits


def baseline_keys(baseline: Mapping[str, Any]) -> set[str]:
    """The keys of a link's baseline that are this module's (what Marketo holds, the owner read)."""
    return {key for key in baseline if key.startswith(KEY_PREFIX)}


def settled(
    new: Mapping[str, Any],
    old: Mapping[str, Any],
    *,
    edits: Mapping[str, Any],
    written: Mapping[str, Any],
    owner: Principal | None = None,
) -> dict[str, Any]:
    """A link's next baseline: ``new`` (the merged fields) with the Dynamics-owned keys carried over
    from ``old``, then what Marketo was seen to hold (``edits``), then what was written to it, and
    the owner read from Dynamics (when one was found)."""
    out = dict(new)
    out.update({key: old[key] for key in baseline_keys(old)})
    out.update({KEY_PREFIX + name: value for name, value in edits.items()})
    out.update({KEY_PREFIX + name: value for name, value in written.items()})
    if owner is not None:
        out[OWNER_KEY] = [owner.id, owner.kind, owner.name, owner.email]
    return out


def _canonical_or_none(name: str, raw: Any) -> Any:
    try:
        return canonical(_TYPES[name], raw)
    except FieldValueError:
        return None
