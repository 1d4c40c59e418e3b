"""A stateful property test of the whole sync: random interleavings of creates, edits, deletes and
qualifications on both sides, values Dynamics refuses, sync cycles, API outages and crashes before
the cursor commit, against both simulators over real HTTP and the state store on Azurite. Each
example draws the Marketo delete policy (``SYNC_MARKETO_DELETES``: ``ignore``, the default, or
``delete``) once.

After every ``quiesce`` (outages over, retries due, cycles until nothing moves) it checks:

- both sides agree on every synced field of every live linked pair;
- no update is lost: a field's value is the last edit of one of the sides; when the other side's
  last edit had been synced by a clean cycle before it, it is exactly the later edit; when both
  sides edited it between two clean cycles with no outage in between, it is the collision
  rule's winner (lead: Marketo, contact: Dynamics);
- the cycle never created a Dynamics record, and every Dynamics record has at most one person
  (exactly one unless its person was deleted in Marketo), linked by email when one existed;
- a record deleted in Dynamics has its person flagged and unlinked (B3);
- a person deleted in Marketo (B3): under ``ignore`` its Dynamics record stays; the link goes when
  the sync next writes to the person (until then it may stay, pointing at the deleted person: the
  design's "a person found missing on write is unlinked"); a new person is made for the record
  only after the record changed in Dynamics since the delete (a user's edit or the sync's own
  write of the person's last edits). Under ``delete`` the linked Dynamics record is deleted and
  nobody is linked to it. A person deleted before it was linked leaves its record to get a person
  of its own;
- a value longer than the Dataverse column allows (B7) is never written to Dynamics: while the
  person still holds it, a ``to_dynamics`` failure is open for the person and the person's
  activity log has a ``microsoftSyncFailed`` activity; the other records sync as usual; once the
  value is fixed in Marketo, the next cycle resolves the failure;
- the record's owner (a user or a team, changed at random) is on its person (id and name), and a
  contact's parent account (set, and edited, at random) gives its person's company, one way;
- one more cycle after quiescence writes nothing (no echo writes).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sandbox import DataverseOptions, MarketoOptions, SandboxServers
from sync_core.core.models import Direction, EntityType, RunReport
from sync_core.cycle import engine as engine_module
from sync_core.cycle.engine import ACCOUNTS_CURSOR, MARKETO_CHANGES, SyncEngine, dataverse_cursor
from sync_core.settings import Settings
from sync_core.state import TableStateStore
from sync_core.wiring.services import build_services
from tests.e2e.conftest import environment

pytestmark = [pytest.mark.azurite, pytest.mark.slow]

# 20 examples x 20 steps is the CI share (each example now also draws the Marketo delete policy and has the
# B3/B7 rules); a longer hunt: SYNC_PROPERTY_EXAMPLES=100 (and pytest --timeout=0).
EXAMPLES = int(os.environ.get("SYNC_PROPERTY_EXAMPLES", "20"))
STEPS = 20
# Synced fields the test edits: (Marketo field, Dataverse column); valid on both sides, not keys.
FIELDS = (("firstName", "firstname"), ("title", "jobtitle"), ("phone", "telephone1"))
# Values Dataverse refuses: longer than the column's MaxLength in the sandbox's metadata
# (sandbox/dataverse/_schema.py, leads and contacts alike); Marketo takes strings up to 255.
TOO_LONG = {"firstName": ("firstname", 50), "title": ("jobtitle", 100)}
POLICIES = ("ignore", "delete")  # SYNC_MARKETO_DELETES
PAGES = (2, engine_module.DATAVERSE_PAGE)  # rows per Dataverse delta page; the last is the engine's own
CURSORS = (MARKETO_CHANGES, dataverse_cursor(EntityType.CONTACT), dataverse_cursor(EntityType.LEAD), ACCOUNTS_CURSOR)
OUTAGES: dict[str, tuple[str, dict[str, Any]]] = {
    "dataverse writes down": ("dataverse", {"path": "UpdateMultiple", "action": {"status": 503, "retry_after": 0}}),
    "dataverse throttled": ("dataverse", {"path": "/(leads|contacts)$", "action": {"status": 429, "retry_after": 0}}),
    "marketo quota spent": ("marketo", {"path": "leads.json", "method": "POST", "action": {"marketo_error": "607"}}),
    "marketo flaky": ("marketo", {"path": "leadchanges", "action": {"status": 502}}),
}


class Crash(BaseException):
    """The process dies before a cursor commit: nothing the engine may catch."""


class CrashingStore:
    """The real Table store, except that ``put_cursor`` of an armed cursor name crashes once."""

    def __init__(self, store: TableStateStore) -> None:
        self._store = store
        self.armed: str | None = None

    def put_cursor(self, cursor: Any) -> Any:
        if cursor.name == self.armed:
            self.armed = None
            raise Crash
        return self._store.put_cursor(cursor)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@dataclass
class Edit:
    side: str  # "m" (Marketo) or "d" (Dynamics)
    value: str
    step: int


@dataclass
class Invalid:
    """A value Dynamics would refuse, set on the person in Marketo and not fixed yet."""

    marketo_field: str
    column: str
    value: str
    step: int
    person: int


@dataclass
class Record:
    entity: EntityType
    dataverse_id: str
    email: str
    matched_person: int | None = None  # a Marketo-only person with the same email, to be linked
    deleted_in_dynamics: bool = False
    deleted_in_marketo: bool = False
    qualified_from: str | None = None
    edits: dict[str, list[Edit]] = field(default_factory=dict)
    # The Dynamics delete: the person linked to the record then (None: not linked).
    person_at_dynamics_delete: int | None = None
    # The Marketo delete of the linked person: who, the record's row version then.
    deleted_person: int | None = None
    version_at_marketo_delete: int = 0
    held: Invalid | None = None  # a refused value the person holds now
    holds: list[tuple[int, int]] = field(default_factory=list)  # (set, fixed) steps of earlier ones


@dataclass
class Cycle:
    step: int
    clean: bool  # ended ok/partial with no outage or crash


@dataclass
class Env:
    sandbox: SandboxServers
    connection: str


ENV: Env | None = None


class SyncMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        assert ENV is not None
        self.sandbox = ENV.sandbox
        self.sandbox.marketo.reset()
        self.sandbox.dataverse.reset()
        self.sandbox.marketo.clear_faults()
        self.records: list[Record] = []
        self.marketo_only: list[int] = []
        self.fixed: list[int] = []  # persons whose refused value was fixed since the last quiesce
        self.cycles: list[Cycle] = []
        self.step = 0
        self.values = itertools.count(1)
        self.policy = "ignore"
        self.started = False
        # Owners and accounts (one way, Dynamics → Marketo): created as a Dynamics admin would.
        dataverse = self.sandbox.dataverse
        self.owners = [
            dataverse.create(
                "systemusers", {"firstname": "Ada", "lastname": "Owner", "internalemailaddress": "a@x.io"}
            ),
            dataverse.create("teams", {"name": "Property Team"}),
            DataverseOptions().ui_user_id,
        ]
        self.accounts = [dataverse.create("accounts", {"name": f"Account {i}"}) for i in range(2)]

    @initialize(policy=st.sampled_from(POLICIES), page=st.sampled_from(PAGES))
    def start(self, policy: str, page: int) -> None:
        assert ENV is not None
        self.policy = policy
        # Delta pages of 2 rows: a table's few changes come as several pages, each read ahead while
        # the page before is applied (its links looked up while that page writes links).
        engine_module.DATAVERSE_PAGE = page
        prefix = "p" + uuid.uuid4().hex[:10]
        # Bulk messages of 3 records: a cycle's few writes split into several messages, sent side by
        # side (the simulator hints a degree of parallelism of 4), so the rules are checked with
        # concurrent writes on.
        env = environment(self.sandbox, ENV.connection, prefix, SYNC_MARKETO_DELETES=policy, DATAVERSE_BATCH_SIZE="3")
        settings_ = Settings.from_env(env)
        self.table_store = TableStateStore.from_connection_string(ENV.connection, prefix=prefix)
        self.store = CrashingStore(self.table_store)
        self.services = build_services(settings_, store=self.store, sleep=lambda seconds: None)  # type: ignore[arg-type]
        self.engine = SyncEngine.from_services(self.services)
        self.started = True

    def teardown(self) -> None:
        if not self.started:
            return
        try:
            if self.records or self.marketo_only:
                self.quiesce()  # every run ends settled and checked
        finally:
            self._clean_up()

    def _clean_up(self) -> None:
        engine_module.DATAVERSE_PAGE = PAGES[-1]
        self.sandbox.dataverse.clear_faults()
        self.sandbox.marketo.clear_faults()
        self.services.close()

    # -- helpers ----------------------------------------------------------------------------------

    def tick(self) -> int:
        self.step += 1
        return self.step

    def person(self, record: Record) -> dict[str, Any] | None:
        found = self.sandbox.marketo.find_leads("microsoftId", record.dataverse_id)
        return dict(found[0]) if found else None

    def row(self, record: Record) -> dict[str, Any] | None:
        row = self.sandbox.dataverse.get(f"{record.entity.value}s", record.dataverse_id)
        return None if row is None else dict(row)

    def live(self) -> list[Record]:
        return [r for r in self.records if not r.deleted_in_dynamics]

    def editable_in_marketo(self) -> list[Record]:
        return [r for r in self.live() if not r.deleted_in_marketo and r.held is None and self.person(r) is not None]

    def editable_in_dynamics(self) -> list[Record]:
        # Under ``delete`` a record whose person went may be deleted by any cycle: users leave it be.
        # A record holding a refused value is left alone until the value is fixed (its checks stay exact).
        return [r for r in self.live() if r.held is None and not (r.deleted_in_marketo and self.policy == "delete")]

    def marketo_persons(self) -> list[tuple[Record | None, int]]:
        """Persons a Marketo user may delete: Marketo-only ones and those of live records, linked or not."""
        found: list[tuple[Record | None, int]] = [(None, person_id) for person_id in self.marketo_only]
        for record in self.live():
            if record.deleted_in_marketo or record.held is not None:
                continue
            found += [(record, int(p["id"])) for p in self.sandbox.marketo.find_leads("email", record.email)]
        return found

    def run_cycle(self) -> RunReport | None:
        try:
            return self.engine.run_cycle()
        except Crash:
            return None

    # -- what users do -----------------------------------------------------------------------------

    @precondition(lambda self: len(self.records) < 5)
    @rule(entity=st.sampled_from([EntityType.LEAD, EntityType.CONTACT]), with_person=st.booleans())
    def create_in_dynamics(self, entity: EntityType, with_person: bool) -> None:
        n = next(self.values)
        email = f"p{n}@example.com"
        matched = None
        if with_person:  # someone already has this email in Marketo: the record must link to them
            matched = self.sandbox.marketo.create_lead({"email": email, "lastName": f"M{n}"})
        values = {"emailaddress1": email, "firstname": f"F{n}", "lastname": f"L{n}"}
        if entity is EntityType.LEAD:
            values |= {"companyname": f"C{n}", "subject": "property"}
        record_id = self.sandbox.dataverse.create(f"{entity.value}s", values)
        self.records.append(Record(entity, record_id, email, matched_person=matched))
        self.tick()

    @precondition(lambda self: len(self.marketo_only) < 2)
    @rule()
    def create_marketo_only_person(self) -> None:
        n = next(self.values)
        self.marketo_only.append(self.sandbox.marketo.create_lead({"email": f"solo{n}@example.com", "lastName": "S"}))
        self.tick()

    @precondition(lambda self: bool(self.editable_in_marketo()))
    @rule(data=st.data(), which=st.sampled_from(FIELDS))
    def edit_in_marketo(self, data: st.DataObject, which: tuple[str, str]) -> None:
        record = data.draw(st.sampled_from(self.editable_in_marketo()))
        person = self.person(record)
        assert person is not None
        value = f"m{next(self.values)}"
        self.sandbox.marketo.update_lead(int(person["id"]), {which[0]: value})
        record.edits.setdefault(which[0], []).append(Edit("m", value, self.tick()))

    @precondition(lambda self: bool(self.editable_in_dynamics()))
    @rule(data=st.data(), which=st.sampled_from(FIELDS))
    def edit_in_dynamics(self, data: st.DataObject, which: tuple[str, str]) -> None:
        record = data.draw(st.sampled_from(self.editable_in_dynamics()))
        value = f"d{next(self.values)}"
        self.sandbox.dataverse.update(f"{record.entity.value}s", record.dataverse_id, {which[1]: value})
        record.edits.setdefault(which[0], []).append(Edit("d", value, self.tick()))

    @precondition(lambda self: bool(self.editable_in_dynamics()))
    @rule(data=st.data())
    def delete_in_dynamics(self, data: st.DataObject) -> None:
        record = data.draw(st.sampled_from(self.editable_in_dynamics()))
        link = self.table_store.get_links_by_dataverse_ids(record.entity, [record.dataverse_id])
        self.sandbox.dataverse.delete(f"{record.entity.value}s", record.dataverse_id)
        record.deleted_in_dynamics = True
        record.person_at_dynamics_delete = next((lk.marketo_id for lk in link.values()), None)
        self.tick()

    @precondition(lambda self: bool(self.marketo_persons()))
    @rule(data=st.data())
    def delete_in_marketo(self, data: st.DataObject) -> None:
        record, person_id = data.draw(st.sampled_from(self.marketo_persons()))
        linked = self.table_store.get_links_by_marketo_ids([person_id]).get(person_id)
        self.sandbox.marketo.delete_lead(person_id)
        self.tick()
        if record is None:
            self.marketo_only.remove(person_id)
        elif linked is None:  # a person with the record's email, not linked yet: the record gets its own
            record.matched_person = None
        else:
            row = self.row(record)
            record.deleted_in_marketo, record.deleted_person = True, person_id
            record.version_at_marketo_delete = int(row["versionnumber"]) if row is not None else 0

    @precondition(lambda self: bool(self.editable_in_marketo()))
    @rule(data=st.data(), name=st.sampled_from(sorted(TOO_LONG)))
    def set_refused_value_in_marketo(self, data: st.DataObject, name: str) -> None:
        """B7: a value Marketo takes and Dataverse refuses (longer than the column's MaxLength)."""
        record = data.draw(st.sampled_from(self.editable_in_marketo()))
        person = self.person(record)
        assert person is not None
        column, limit = TOO_LONG[name]
        value = f"bad{next(self.values)}-".ljust(limit + 5, "x")
        self.sandbox.marketo.update_lead(int(person["id"]), {name: value})
        record.held = Invalid(name, column, value, self.tick(), int(person["id"]))
        if record.held.person in self.fixed:  # refused again before a cycle could resolve the last one
            self.fixed.remove(record.held.person)

    @precondition(lambda self: any(r.held is not None for r in self.records))
    @rule(data=st.data())
    def fix_refused_value_in_marketo(self, data: st.DataObject) -> None:
        record = data.draw(st.sampled_from([r for r in self.records if r.held is not None]))
        held = record.held
        assert held is not None
        value = f"m{next(self.values)}"
        self.sandbox.marketo.update_lead(held.person, {held.marketo_field: value})
        step = self.tick()
        record.edits.setdefault(held.marketo_field, []).append(Edit("m", value, step))
        record.holds.append((held.step, step))
        record.held = None
        self.fixed.append(held.person)

    @precondition(lambda self: bool(self.editable_in_dynamics()))
    @rule(data=st.data(), owner=st.integers(0, 2))
    def change_owner_in_dynamics(self, data: st.DataObject, owner: int) -> None:
        record = data.draw(st.sampled_from(self.editable_in_dynamics()))
        entity_set = "teams" if owner == 1 else "systemusers"
        bind = {"ownerid@odata.bind": f"/{entity_set}({self.owners[owner]})"}
        self.sandbox.dataverse.update(f"{record.entity.value}s", record.dataverse_id, bind)
        self.tick()

    @precondition(lambda self: any(r.entity is EntityType.CONTACT for r in self.editable_in_dynamics()))
    @rule(data=st.data(), account=st.integers(0, 1))
    def set_parent_account_in_dynamics(self, data: st.DataObject, account: int) -> None:
        contacts = [r for r in self.editable_in_dynamics() if r.entity is EntityType.CONTACT]
        record = data.draw(st.sampled_from(contacts))
        bind = {"parentcustomerid_account@odata.bind": f"/accounts({self.accounts[account]})"}
        self.sandbox.dataverse.update("contacts", record.dataverse_id, bind)
        self.tick()

    @rule(account=st.integers(0, 1))
    def edit_account_in_dynamics(self, account: int) -> None:
        self.sandbox.dataverse.update("accounts", self.accounts[account], {"name": f"Account a{next(self.values)}"})
        self.tick()

    @precondition(lambda self: any(r.entity is EntityType.LEAD for r in self.editable_in_dynamics()))
    @rule(data=st.data())
    def qualify_lead(self, data: st.DataObject) -> None:
        record = data.draw(st.sampled_from([r for r in self.editable_in_dynamics() if r.entity is EntityType.LEAD]))
        contact_id = self.sandbox.dataverse.qualify_lead(record.dataverse_id)
        record.qualified_from, record.entity, record.dataverse_id = record.dataverse_id, EntityType.CONTACT, contact_id
        self.tick()

    # -- what the sync does, with things going wrong ------------------------------------------------

    @rule(trouble=st.sampled_from([None, None, None, "crash", *OUTAGES]), cursor=st.sampled_from(CURSORS))
    def sync_cycle(self, trouble: str | None, cursor: str) -> None:
        if trouble == "crash":
            self.store.armed = cursor
        elif trouble is not None:
            service, spec = OUTAGES[trouble]
            target = self.sandbox.marketo if service == "marketo" else self.sandbox.dataverse
            target.set_faults([{**spec, "times": -1}])
        report = self.run_cycle()
        self.store.armed = None
        self.sandbox.marketo.clear_faults()
        self.sandbox.dataverse.clear_faults()
        clean = report is not None and report.outcome in ("ok", "partial") and trouble is None
        self.cycles.append(Cycle(self.tick(), clean))

    @rule()
    def quiesce(self) -> None:
        """Outages over and retries due ("time passes"); cycles until nothing moves; then check."""
        for _ in range(6):
            due = [
                f.model_copy(update={"next_retry_at": datetime.now(UTC) - timedelta(seconds=1)})
                for f in self.table_store.list_failures(limit=1000)
            ]
            if due:
                self.table_store.upsert_failures(due)
            report = self.run_cycle()
            assert report is not None
            assert report.outcome in ("ok", "partial"), report.report.error
            self.cycles.append(Cycle(self.tick(), True))
            open_failures = self.table_store.list_failures(limit=1000)
            if self.fixed:  # a refused value fixed in Marketo: the next cycle resolves its failure
                still = [(f.key, f.code, f.reasons) for f in open_failures if f.marketo_id in self.fixed]
                assert not still, f"fixed in Marketo, still failing after a cycle: {still}"
                self.fixed.clear()
            moved = report.report.written.marketo + report.report.written.dynamics
            held = {r.held.person for r in self.records if r.held is not None}
            if not moved and all(f.marketo_id in held for f in open_failures):
                break
        else:
            raise AssertionError("the sync did not settle in 6 cycles")
        self.check_settled()

    # -- the checks ---------------------------------------------------------------------------------

    def check_settled(self) -> None:
        for record in self.records:
            self.check_record(record)
        assert self.sandbox.dataverse.stats.to_json()["writes"].get("leads", {}).get("create", 0) == 0
        assert self.sandbox.dataverse.stats.to_json()["writes"].get("contacts", {}).get("create", 0) == 0
        for person_id in self.marketo_only:
            assert self.table_store.get_links_by_marketo_ids([person_id]) == {}
        writes = self.sandbox.dataverse.stats.to_json()["writes"]
        echo = self.run_cycle()
        assert echo is not None
        assert echo.report.written.model_dump() == {"marketo": 0, "dynamics": 0}, "a quiet cycle wrote something"
        assert self.sandbox.dataverse.stats.to_json()["writes"] == writes
        self.cycles.append(Cycle(self.tick(), True))

    def check_record(self, record: Record) -> None:
        persons = self.sandbox.marketo.find_leads("email", record.email)
        assert len(persons) <= 1, f"{len(persons)} persons for one Dynamics record"
        if record.deleted_in_dynamics:
            for person in persons:
                links = self.table_store.get_links_by_marketo_ids([int(person["id"])])
                if record.qualified_from is not None and person.get("microsoftId") == record.qualified_from:
                    # The contact went before any cycle saw it: the person stays with the qualified
                    # lead, which still exists (a deletion names no originating lead to follow).
                    assert [link.dataverse_id for link in links.values()] == [record.qualified_from]
                    continue
                assert links == {}
                ours = {record.dataverse_id, record.qualified_from} - {None}
                if person.get("microsoftId") in ours:
                    assert person["microsoftIsDeleted"] is True
            linked = record.person_at_dynamics_delete
            flagged = self.sandbox.marketo.get_lead(linked) if linked is not None else None
            if linked is not None and flagged is not None:
                # The person linked when the record was deleted: flagged (the default policy) and unlinked.
                assert flagged["microsoftIsDeleted"] is True, "deleted in Dynamics, person not flagged"
                assert self.table_store.get_links_by_marketo_ids([linked]) == {}, "deleted in Dynamics, still linked"
            return
        if record.deleted_in_marketo:
            self.check_marketo_delete(record, persons)
            return
        assert len(persons) == 1, "a live Dynamics record without its person"
        person = persons[0]
        if record.matched_person is not None:
            assert person["id"] == record.matched_person, "a duplicate person instead of the match by email"
        assert person["microsoftId"] == record.dataverse_id
        assert person["microsoftType"] == ("Contact" if record.entity is EntityType.CONTACT else "Lead")
        link = self.table_store.get_links_by_marketo_ids([int(person["id"])]).get(int(person["id"]))
        assert link is not None
        assert link.dataverse_id == record.dataverse_id
        row = self.row(record)
        assert row is not None
        self.check_one_way(record, person, row)
        if record.held is not None:
            self.check_refused(record, person, row)
            return
        for marketo_field, column in FIELDS:
            assert person.get(marketo_field) == row.get(column), f"{marketo_field} differs between the sides"
            self.check_no_update_lost(record, marketo_field, row.get(column))

    def check_one_way(self, record: Record, person: dict[str, Any], row: dict[str, Any]) -> None:
        """The owner and (a contact) the parent account's name are on the person, as Dynamics has them."""
        dataverse = self.sandbox.dataverse
        owner = row["_ownerid_value"]
        principal = dataverse.get("systemusers", owner) or dataverse.get("teams", owner)
        assert principal is not None
        assert (person.get("microsoftOwnerId"), person.get("microsoftOwnerName")) == (
            owner,
            principal.get("fullname") or principal.get("name"),
        ), "the person's owner differs from the record's"
        account_id = row.get("_parentcustomerid_value") if record.entity is EntityType.CONTACT else None
        if account_id:
            account = dataverse.get("accounts", account_id)
            assert account is not None
            assert person.get("company") == account["name"], "the contact's company differs from its account's"

    def check_marketo_delete(self, record: Record, persons: list[dict[str, Any]]) -> None:
        """B3, a linked person deleted in Marketo (the record is live in Dynamics)."""
        gone = record.deleted_person
        assert gone is not None
        assert self.sandbox.marketo.get_lead(gone) is None
        stale = self.table_store.get_links_by_marketo_ids([gone])
        row = self.row(record)
        if self.policy == "delete":
            assert row is None, "SYNC_MARKETO_DELETES=delete: the person's Dynamics record was not deleted"
            assert stale == {}, "the deleted person is still linked"
            assert persons == [], "a person for a record deleted with its person"
            return
        assert row is not None, "SYNC_MARKETO_DELETES=ignore: a Marketo delete reached Dynamics"
        ours = {record.dataverse_id, record.qualified_from} - {None}
        if stale:
            # Not noticed yet: the sync has not written to the person since (found missing on write).
            assert {link.dataverse_id for link in stale.values()} <= ours
            assert persons == [], "a new person while the record is still linked to the deleted one"
            return
        linked = self.table_store.get_links_by_dataverse_ids(record.entity, [record.dataverse_id])
        if not persons:
            assert linked == {}, "the record is linked to nobody in Marketo"
            return
        [person] = persons
        assert person["id"] != gone
        assert int(row["versionnumber"]) > record.version_at_marketo_delete, (
            "a new person for a record that did not change in Dynamics since its person was deleted"
        )
        assert [link.marketo_id for link in linked.values()] == [person["id"]]
        assert person["microsoftId"] == record.dataverse_id
        for marketo_field, column in FIELDS:
            assert person.get(marketo_field) == row.get(column), f"{marketo_field} differs between the sides"

    def check_refused(self, record: Record, person: dict[str, Any], row: dict[str, Any]) -> None:
        """B7: the person holds (or held) a value Dynamics refuses; it never reaches Dynamics."""
        held = record.held
        assert held is not None
        limit = TOO_LONG[held.marketo_field][1]
        assert row.get(held.column) != held.value, "a refused value was written to Dynamics"
        assert len(row.get(held.column) or "") <= limit
        if person.get(held.marketo_field) != held.value:
            # Overwritten by a Dynamics edit that won the collision (contact): nothing left to refuse.
            assert person.get(held.marketo_field) == row.get(held.column)
            return
        failures = [
            f
            for f in self.table_store.list_failures(limit=1000)
            if f.marketo_id == held.person and f.direction is Direction.TO_DYNAMICS
        ]
        assert len(failures) == 1, f"{len(failures)} open to_dynamics failures for a refused value"
        [failure] = failures
        assert any(held.column in reason for reason in failure.reasons), failure.reasons
        assert held.marketo_field in failure.fields
        assert failure.next_retry_at > failure.last_failed_at, "a refused value with no retry scheduled"
        logged = [
            a
            for a in self.sandbox.marketo.custom_activities(held.person)
            if a["apiName"] == "microsoftSyncFailed" and a["attributes"].get("direction") == "to_dynamics"
        ]
        assert any(held.column in a["attributes"].get("reason", "") for a in logged), (
            "no microsoftSyncFailed activity on the person for the refused value"
        )

    def check_no_update_lost(self, record: Record, name: str, final: Any) -> None:
        edits = record.edits.get(name, [])
        if not edits:
            return
        last = {side: next((e for e in reversed(edits) if e.side == side), None) for side in ("m", "d")}
        latest = edits[-1]
        other = last["d" if latest.side == "m" else "m"]
        if other is None:
            assert final == latest.value, f"{name}: the only side's last edit was lost"
            return
        assert final in (latest.value, other.value), f"{name}: {final!r} is neither side's last edit"

        def clean(c: Cycle) -> bool:
            # A cycle while the person held a refused value synced nothing of theirs to Dynamics.
            return c.clean and not any(start < c.step < end for start, end in record.holds)

        if any(clean(c) and other.step < c.step < latest.step for c in self.cycles):
            assert final == latest.value, f"{name}: a later edit lost to an already-synced one"
            return
        start = min(other.step, latest.step)
        settle = next((c for c in self.cycles if c.step > latest.step and clean(c)), None)
        troubled = any(not clean(c) and start < c.step < (settle.step if settle else 10**9) for c in self.cycles)
        if not troubled and record.qualified_from is None:
            winner = last["m"] if record.entity is EntityType.LEAD else last["d"]
            assert winner is not None
            assert final == winner.value, f"{name}: the collision rule's winner lost"

    @invariant()
    def lease_is_free_between_cycles(self) -> None:
        # A finished or crashed cycle never leaves the lease behind for the next one.
        lease = self.table_store.acquire_lease("probe", now=datetime.now(UTC), duration=timedelta(seconds=1))
        self.table_store.release_lease(lease)


@pytest.fixture(scope="module")
def property_env(azurite_connection_string: str) -> Iterator[Env]:
    with SandboxServers(marketo=MarketoOptions(limits=False), dataverse=DataverseOptions(limits=False)) as sandbox:
        yield Env(sandbox, azurite_connection_string)


def test_random_interleavings_keep_both_sides_in_step(property_env: Env) -> None:
    global ENV
    ENV = property_env
    run_state_machine_as_test(
        SyncMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
