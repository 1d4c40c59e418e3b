"""Erase one person from the sync's own state on request: ``python -m sync_core forget``.

``forget`` removes everything the state store holds of the persons and records given: the link
and its baseline (the values both sides agreed on), the collisions (both sides' values), the
record failures and the webhook claims. Marketo and Dynamics are not touched: the person is
erased from *our* tables; erasing them at the source is the source's business (and when it
happens, the cycle erases our rows anyway). Every step deletes what is there and ignores what is
not, so running it again removes nothing more and answers the same ids.

Finding a person: by Marketo id (a point read of the link), by Dataverse id (a point read per
entity), or by email. Emails are not keys anywhere in our state (an index of emails would be one
more copy of personal data), so ``--email`` asks Marketo which persons have it (one API call:
``find_leads``); when Marketo knows none (the person may be gone there already) or cannot be
asked, it reads the links a page at a time and compares their baselines' email: a full read of
the links table, acceptable for an on-request command and never on the cycle's path.

Nothing is logged but counts; the answer (stdout) names ids, never the email.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TextIO

from pydantic import BaseModel

from sync_core.core.errors import ConfigError, SyncError
from sync_core.core.fieldmap import FieldMap
from sync_core.core.models import Direction, EntityType, Link, person_failure_key, record_failure_key
from sync_core.marketo.client import MarketoClient
from sync_core.settings import Settings
from sync_core.state import StateStore
from sync_core.wiring.preflight import config_error_line
from sync_core.wiring.services import services_for

log = logging.getLogger(__name__)


class Erasure(BaseModel):
    """What ``forget`` found and removed (``removed``: rows per kind)."""

    found_by: str  # "marketo-id" | "dynamics-id" | "marketo" (email looked up there) | "links" (a read of every link)
    marketo_ids: list[int]
    dynamics_ids: list[str]
    removed: dict[str, int]


def claim_key(marketo_id: int) -> str:
    """The webhook's claim for a person (``webhook.handler``: ``sync-person:<leadId>``)."""
    return f"sync-person:{marketo_id}"


def forget(
    store: StateStore, *, marketo_ids: Iterable[int] = (), dynamics_ids: Iterable[str] = (), found_by: str
) -> Erasure:
    """Remove every row of these persons and records from ``store``; idempotent."""
    wanted_persons = sorted(set(marketo_ids))
    wanted_records = sorted({dataverse_id.lower() for dataverse_id in dynamics_ids})
    links: dict[int, Link] = dict(store.get_links_by_marketo_ids(wanted_persons)) if wanted_persons else {}
    for entity in EntityType:
        if wanted_records:
            for link in store.get_links_by_dataverse_ids(entity, wanted_records).values():
                links[link.marketo_id] = link
    persons = sorted(set(wanted_persons) | set(links))
    records = {(link.entity, link.dataverse_id.lower()) for link in links.values()}
    records |= {(entity, dataverse_id) for entity in EntityType for dataverse_id in wanted_records}
    failure_keys = [person_failure_key(direction, person) for person in persons for direction in Direction]
    failure_keys += [record_failure_key(entity, dataverse_id) for entity, dataverse_id in sorted(records)]
    failures = sorted(store.get_failures(failure_keys)) if failure_keys else []
    if failures:
        store.resolve_failures(failures)
    collisions = store.delete_collisions_of(persons) if persons else 0
    claims = store.delete_claims([claim_key(person) for person in persons]) if persons else 0
    members = store.delete_campaign_members_of({dataverse_id for _, dataverse_id in records})
    # The links last: they are how a Dataverse id leads to the person, so an interrupted run
    # can be repeated and still find everything.
    if links:
        store.delete_links(list(links.values()))
    removed = {
        "links": len(links),
        "collisions": collisions,
        "failures": len(failures),
        "claims": claims,
        "members": members,
    }
    log.info(
        "forget: %d person(s): removed %d link(s), %d collision(s), %d failure(s), %d claim(s), "
        "%d campaign membership record(s)",
        len(persons),
        *removed.values(),
    )
    dataverse_ids = sorted({dataverse_id for _, dataverse_id in records} | set(wanted_records))
    return Erasure(found_by=found_by, marketo_ids=persons, dynamics_ids=dataverse_ids, removed=removed)


def persons_with_email(
    store: StateStore, email: str, *, marketo: MarketoClient | None, field_map: FieldMap
) -> tuple[list[int], str]:
    """The Marketo ids of the persons with ``email``, and where they were found ("marketo" or "links")."""
    if marketo is not None:
        try:
            found = marketo.find_leads("email", [email], fields=["id"])
        except (SyncError, OSError) as err:  # a RecordError too: e.g. a comma Marketo cannot express
            log.warning("forget: Marketo could not be asked (%s); reading the links instead", type(err).__name__)
        else:
            ids = sorted({int(person["id"]) for person in found})
            if ids:
                return ids, "marketo"
    return _linked_with_email(store, email, field_map), "links"


def _linked_with_email(store: StateStore, email: str, field_map: FieldMap) -> list[int]:
    keys = {mapping.key for mapping in (field_map.email_field(entity) for entity in EntityType) if mapping is not None}
    wanted = email.strip().casefold()
    return sorted(
        link.marketo_id
        for link in store.iter_links()
        if any(
            isinstance(link.baseline.get(key), str) and link.baseline[key].strip().casefold() == wanted for key in keys
        )
    )


def forget_main(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``python -m sync_core forget --email ADDRESS | --marketo-id N | --dynamics-id GUID``.

    Prints what was removed as JSON. Exit 0 when the state holds nothing more of the person (also
    when there was nothing to remove), 1 when the state store could not be written, 2 for a
    configuration error."""
    parser = argparse.ArgumentParser(
        prog="python -m sync_core forget",
        description="Erase one person's data from the sync's own state (links, baselines, collisions, "
        "failures, claims); not from Marketo or Dynamics. Idempotent; prints what it removed (JSON).",
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--email", help="the person's email (looked up in Marketo, else in the links' baselines)")
    who.add_argument("--marketo-id", type=int, help="the Marketo person id")
    who.add_argument("--dynamics-id", help="the Dataverse lead or contact id (GUID)")
    args = parser.parse_args(argv)
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        services = services_for(Settings.from_env(os.environ if environ is None else environ))
    except ConfigError as error:
        print(config_error_line(error), file=err)
        return 2
    store = services.store
    try:
        if args.marketo_id is not None:
            erasure = forget(store, marketo_ids=[args.marketo_id], found_by="marketo-id")
        elif args.dynamics_id is not None:
            erasure = forget(store, dynamics_ids=[args.dynamics_id], found_by="dynamics-id")
        else:
            ids, found_by = persons_with_email(
                store, args.email, marketo=services.marketo, field_map=services.field_map
            )
            erasure = forget(store, marketo_ids=ids, found_by=found_by)
    except (SyncError, OSError) as error:
        print(json.dumps({"error": f"the state store could not be erased: {type(error).__name__}"}), file=err)
        return 1
    out.write(erasure.model_dump_json(indent=2) + "\n")
    return 0
