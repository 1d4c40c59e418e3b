"""Dynamics records without a link: a qualification, a match, or a new person (B8, B9).

An unlinked contact qualified from a linked lead takes over the lead's link (the person moves,
``core.entities.qualified_link``); a qualified lead gets no person of its own; any other record is
linked to the Marketo person the matching rule names (``core.matching``: its id in
``microsoftId``, or its email) when that person is free, recorded as a duplicate when it is not,
and otherwise created in Marketo (``createOnly``, converted and validated by ``core.convert``).
Marketo-only persons are never sent to Dynamics here. The sync filter (issue 19) comes first: a
record the Dynamics filter excludes, a matching person the Marketo filter excludes, or a person
to be created whose values the Marketo filter would exclude, is left alone (counted, not linked,
not created, not a failure); when the filter admits it later, its change brings it back here: a
Dynamics record's through its delta, a person's through ``link_admitted_persons`` (an unlinked person
whose Marketo filter fields changed and who is admitted now is linked to a free Dynamics record with
their email, as that record would have been linked when new; nothing is created in Dynamics, B8).
Called by ``Applier``, which owns the merge of what is linked; this module only decides and creates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sync_core.core import oneway
from sync_core.core.convert import to_marketo
from sync_core.core.entities import (
    CREATED_ON,
    ENTITY_SETS,
    MICROSOFT_TYPES,
    is_qualified_lead,
    microsoft_fields,
    originating_lead,
    qualified_link,
    row_id,
)
from sync_core.core.fieldmap import FieldValueError, canonical_values
from sync_core.core.matching import RECORD_ORDER, PersonIndex, email_key
from sync_core.core.models import EntityType, Link
from sync_core.core.syncfilter import Side
from sync_core.cycle.ledger import Batch, Pending, record_key

if TYPE_CHECKING:
    from sync_core.cycle.apply import Applier, Take


class NewRecords:
    """Links or creates persons for unlinked Dynamics records (see the module docstring)."""

    def __init__(self, applier: Applier) -> None:
        self._applier = applier

    def link_new(self, entity: EntityType, rows: Sequence[Mapping[str, Any]], take: Take) -> None:
        """Move a qualified lead's link, link a match, or create a person."""
        applier = self._applier
        applier.prepare()
        admitted = [row for row in rows if applier.admits_row(row)]
        if len(admitted) < len(rows):
            applier.tally.filtered_dynamics += len(rows) - len(admitted)
            # Kept out is not a failure: an old failure of such a record is closed.
            admitted_ids = {row_id(entity, row) for row in admitted}
            applier.ledger.resolve_now(
                record_key(entity, row_id(entity, row)) for row in rows if row_id(entity, row) not in admitted_ids
            )
            rows = admitted
        batch = Batch()
        pending: list[Pending] = []
        rest: list[Mapping[str, Any]] = []
        moved = self._qualifications(entity, rows, take)
        for row in rows:
            if row_id(entity, row) in moved:
                pending.append(moved[row_id(entity, row)])
            elif not is_qualified_lead(entity, row):
                rest.append(row)
        matched, to_create = self._match(entity, rest, batch, take)
        pending += matched
        applier.ledger.record(batch)
        applier.sync_linked(pending)
        if to_create:
            self.create_persons(entity, to_create)

    def link_admitted_persons(self, staged: Mapping[int, Mapping[str, Any]]) -> None:
        """Unlinked persons whose Marketo filter fields changed (``staged``: their staged changes):
        those admitted now are linked to the free Dynamics records with their email, contacts first."""
        applier = self._applier
        flt = applier.sync_filter.marketo
        changed = sorted(i for i, values in staged.items() if any(name in values for name in flt.fields))
        if not changed:
            return
        applier.prepare()
        fields = ["id", *applier.change_fields()]
        persons = [p for p in applier.marketo.get_leads(changed, fields=fields) if applier.admits_person(p)]
        for entity in RECORD_ORDER:
            mapping = applier.field_map.email_field(entity)
            column = mapping.column(entity) if mapping is not None else None
            if not persons or mapping is None or column is None:
                continue
            emails = sorted({str(p[mapping.marketo]).strip() for p in persons if email_key(p.get(mapping.marketo))})
            if not emails:
                continue
            rows = applier.dataverse.find_by_emails(
                ENTITY_SETS[entity], emails, select=applier.dataverse_columns(entity), attribute=column
            )
            linked = applier.store.get_links_by_dataverse_ids(entity, sorted({row_id(entity, row) for row in rows}))
            free = [row for row in rows if row_id(entity, row) not in linked]
            if free:
                self.link_new(entity, free, lambda ids: {})
            # A person now linked (to a contact) is not offered to a lead with the same email as well.
            now_linked = applier.store.get_links_by_marketo_ids([int(p["id"]) for p in persons])
            persons = [p for p in persons if int(p["id"]) not in now_linked]

    def _qualifications(self, entity: EntityType, rows: Sequence[Mapping[str, Any]], take: Take) -> dict[str, Pending]:
        """Contacts qualified from a linked lead (B9): the person's link moves to the contact."""
        origins = {row_id(entity, row): lead for row in rows if (lead := originating_lead(entity, row))}
        if not origins:
            return {}
        applier = self._applier
        lead_links = applier.store.get_links_by_dataverse_ids(EntityType.LEAD, sorted(set(origins.values())))
        by_contact = {contact: lead_links[lead] for contact, lead in origins.items() if lead in lead_links}
        if not by_contact:
            return {}
        staged = take([link.marketo_id for link in by_contact.values()])
        keys = {mapping.key for mapping in applier.field_map.for_entity(EntityType.CONTACT)}
        rows_by_id = {row_id(entity, row): row for row in rows}
        return {
            contact_id: Pending(
                # The person's Marketo verdict moves with it (the contact's own is read from its row),
                # and what it holds of the Dynamics-owned fields (core.oneway).
                qualified_link(old, contact_id, keys | oneway.baseline_keys(old.baseline), now=applier.now).model_copy(
                    update={"filtered_out": tuple(side for side in old.filtered_out if side is Side.MARKETO)}
                ),
                marketo=staged.get(old.marketo_id),
                dynamics=rows_by_id[contact_id],
                replaces=old,
                marketo_extra={"microsoftType": MICROSOFT_TYPES[EntityType.CONTACT], "microsoftId": contact_id},
                event="qualified",
            )
            for contact_id, old in by_contact.items()
        }

    def _match(
        self, entity: EntityType, rows: Sequence[Mapping[str, Any]], batch: Batch, take: Take
    ) -> tuple[list[Pending], list[Mapping[str, Any]]]:
        """Link each row to a free Marketo person the matching rule names; the rest are new.

        A matched person's values are read now, so its staged changes (older) are dropped."""
        if not rows:
            return [], []
        applier = self._applier
        email_mapping = applier.field_map.email_field(entity)
        column = email_mapping.column(entity) if email_mapping is not None else None
        emails = {row_id(entity, row): row.get(column) for row in rows if column and email_key(row.get(column))}
        fields = ["id", "microsoftId", *applier.change_fields()]
        persons: dict[int, dict[str, Any]] = {}
        lookup_emails = sorted({str(e) for e in emails.values() if "," not in str(e)})
        if lookup_emails:
            for person in applier.marketo.find_leads("email", lookup_emails, fields=fields):
                persons[int(person["id"])] = person
        no_email = sorted(row_id(entity, row) for row in rows if row_id(entity, row) not in emails)
        if no_email:
            for person in applier.marketo.find_leads("microsoftId", no_email, fields=fields):
                persons[int(person["id"])] = person
        index = PersonIndex.of(persons.items())
        taken = applier.store.get_links_by_marketo_ids(persons)
        claimed: dict[int, str] = {}  # person -> row id, within this batch
        pending: list[Pending] = []
        new: list[Mapping[str, Any]] = []
        new_emails: dict[str, str] = {}
        ledger = applier.ledger
        for row in rows:
            record = row_id(entity, row)
            email = emails.get(record)
            if email is not None and "," in str(email):
                reason = "email: contains a comma, which a Marketo lookup cannot express"
                ledger.fail_record(batch, entity, record, [reason])
                continue
            candidates = index.candidates(record, email)
            # A person whose link names this very record is linked half-way (a write killed between
            # the link's two rows, which live in two partitions): it is free for this record.
            own = {p: taken[p] for p in candidates if p in taken and _names(taken[p], entity, record)}
            free = [p for p in candidates if (p not in taken or p in own) and p not in claimed]
            if free and not applier.admits_person(persons[free[0]]):
                # The person is kept out by the Marketo filter: not linked, and no second person made.
                applier.tally.filtered_marketo += 1
                ledger.resolve(batch, record_key(entity, record))
                continue
            if free:
                claimed[free[0]] = record
                baseline = own[free[0]].baseline if free[0] in own else {}
                link = Link(
                    marketo_id=free[0], entity=entity, dataverse_id=record, baseline=baseline, updated_at=applier.now
                )
                extra = microsoft_fields(entity, record, row.get(CREATED_ON))
                pending.append(
                    Pending(
                        link,
                        marketo=persons[free[0]],
                        marketo_full=True,
                        dynamics=row,
                        marketo_extra=extra,
                        event="linked",
                    )
                )
            elif candidates:
                holder = taken.get(candidates[0])
                where = (
                    f"{holder.entity.value} {holder.dataverse_id}"
                    if holder
                    else f"{entity.value} {claimed.get(candidates[0])}"
                )
                reason = f"Marketo person {candidates[0]} has the same email and is linked to {where} already"
                ledger.fail_record(batch, entity, record, [reason], code="duplicate")
            elif (key := email_key(email)) is not None and key in new_emails:
                reason = f"{entity.value} {new_emails[key]} has the same email and gets the new person"
                ledger.fail_record(batch, entity, record, [reason], code="duplicate")
            else:
                if key is not None:
                    new_emails[key] = record
                new.append(row)
        if claimed:
            take(sorted(claimed))
        return pending, new

    def create_persons(self, entity: EntityType, rows: Sequence[Mapping[str, Any]]) -> None:
        applier = self._applier
        ledger = applier.ledger
        batch = Batch()
        mappings = applier.field_map.for_entity(entity)
        email_mapping = applier.field_map.email_field(entity)
        by_lookup: dict[str, list[tuple[str, dict[str, Any], dict[str, Any]]]] = {}
        owned = applier.one_way.values_for(entity, rows)  # the owner's and account's fields (core.oneway)
        for row, one_way in zip(rows, owned, strict=True):
            record = row_id(entity, row)
            try:
                values = canonical_values(mappings, row, side=entity.value)
            except FieldValueError as err:
                ledger.fail_record(batch, entity, record, [str(err)], code="unreadable")
                continue
            person = to_marketo(applier.field_map, entity, values, described=applier.described or {}, creating=True)
            if person.problems:
                ledger.fail_record(batch, entity, record, person.problems, code="validation")
                continue
            writes = oneway.writes(one_way, {}, applier.one_way_fields)
            payload = {**writes, **person.payload, **microsoft_fields(entity, record, row.get(CREATED_ON))}
            if not applier.admits_person(payload):  # the person it would make is kept out in Marketo
                applier.tally.filtered_marketo += 1
                ledger.resolve(batch, record_key(entity, record))
                continue
            has_email = email_mapping is not None and payload.get(email_mapping.marketo)
            lookup = email_mapping.marketo if email_mapping is not None and has_email else "microsoftId"
            owner = applier.one_way.owner(oneway.owner_id(row))
            baseline = oneway.settled(values, {}, edits={}, written=writes, owner=owner)
            by_lookup.setdefault(lookup, []).append((record, payload, baseline))
        for lookup, group in by_lookup.items():
            results = applier.marketo.sync_leads(
                [payload for _, payload, _ in group], action="createOnly", lookup_field=lookup
            )
            for (record, _, values), result in zip(group, results, strict=True):
                if result.ok and result.id is not None:
                    batch.links.append(
                        Link(
                            marketo_id=result.id,
                            entity=entity,
                            dataverse_id=record,
                            baseline=values,
                            updated_at=applier.now,
                            filter_key=applier.sync_filter.key,  # both filters admitted it just now
                        )
                    )
                    ledger.resolve(batch, record_key(entity, record))
                    ledger.tally.created += 1
                    ledger.tally.written_marketo += 1
                else:
                    reasons = [f"Marketo: {r.message}" + (f" ({r.code})" if r.code else "") for r in result.reasons]
                    code = result.outcome.value
                    ledger.fail_record(
                        batch, entity, record, reasons or ["Marketo did not create the person"], code=code
                    )
        ledger.record(batch)


def _names(link: Link, entity: EntityType, record: str) -> bool:
    return link.entity is entity and link.dataverse_id == record
