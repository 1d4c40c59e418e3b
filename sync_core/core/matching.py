"""The matching rule: when is a Marketo person the same as a Dynamics lead or contact? One rule,
used both ways — by the cycle (a new Dynamics record: link it to a person rather than create one)
and by the webhook (a person: does Dynamics have them already?).

A person and a record are the same when the person's ``microsoftId`` names the record, or when
their emails are equal ignoring case and surrounding space. An id match comes before an email
match. Among several records, a contact comes before a lead and an open lead before a qualified
one (it lives on as its contact). Ambiguity is never guessed away: every candidate is returned,
in that order, and the caller decides (the cycle takes the first free person and records the
rest as duplicates). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sync_core.core.entities import is_qualified_lead
from sync_core.core.models import EntityType

RECORD_ORDER = (EntityType.CONTACT, EntityType.LEAD)


def email_key(value: Any) -> str | None:
    """The form two emails are compared in; None when there is no email."""
    return value.strip().casefold() if isinstance(value, str) and value.strip() else None


def known_record(person: Mapping[str, Any], entity: EntityType) -> str | None:
    """The record of ``entity`` the person's ``microsoftId``/``microsoftType`` name, lower case."""
    known_id = str(person.get("microsoftId") or "").strip().lower()
    known_type = str(person.get("microsoftType") or "").strip().lower()
    return known_id if known_id and known_type == entity.value else None


@dataclass
class PersonIndex:
    """Persons by the two keys a record can match them on."""

    by_record_id: dict[str, list[int]] = field(default_factory=dict)
    by_email: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, persons: Iterable[tuple[int, Mapping[str, Any]]], *, email_field: str = "email") -> PersonIndex:
        index = cls()
        for person_id, person in sorted(persons, key=lambda item: item[0]):
            known = str(person.get("microsoftId") or "").strip().lower()
            if known:
                index.by_record_id.setdefault(known, []).append(person_id)
            email = email_key(person.get(email_field))
            if email is not None:
                index.by_email.setdefault(email, []).append(person_id)
        return index

    def candidates(self, record_id: str, email: Any) -> list[int]:
        """The persons a record may be, best first: those naming it by id, then those with its email."""
        by_id = self.by_record_id.get(record_id.lower(), [])
        by_mail = self.by_email.get(email_key(email) or "", [])
        return list(dict.fromkeys(by_id + by_mail))


def best_record(
    found: Mapping[EntityType, Sequence[Mapping[str, Any]]], primary: Mapping[EntityType, str]
) -> tuple[EntityType, str] | None:
    """Of the records found for one person, the one the person is: a contact before a lead, an open
    lead before a qualified one."""
    for entity in RECORD_ORDER:
        rows = sorted(found.get(entity, ()), key=lambda row: is_qualified_lead(entity, row))
        if rows:
            return entity, str(rows[0][primary[entity]]).lower()
    return None
