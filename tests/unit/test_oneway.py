"""Dynamics-owned person fields (``core.oneway``, ``cycle.oneway``) over the fakes: the record's
owner (a user or a team) and a contact's parent account reach the person, one way; an account
edit reaches every linked contact's person in bulk; a Marketo edit of them is counted and
overwritten at the next Dynamics change; a missing field or an unreadable table does not stop
the cycle. The end-to-end versions are in ``tests/e2e/test_oneway.py``."""

from __future__ import annotations

from typing import Any

import pytest

from sync_core.core import oneway
from sync_core.core.errors import ConfigError
from sync_core.core.fieldmap import load_field_map
from sync_core.core.models import EntityType
from sync_core.cycle import apply
from tests.fakes import marketo as fake_marketo
from tests.unit.conftest import World, field_map_with

OWNER_FIELDS = ("microsoftOwnerId", "microsoftOwnerName", "microsoftOwnerEmail")
COMPANY = ("company", "website", "industry", "numberOfEmployees", "annualRevenue", "microsoftAccountNumber")


def _user(world: World, name: str, email: str) -> str:
    return world.dataverse.create("systemusers", fullname=name, internalemailaddress=email)


def _team(world: World, name: str) -> str:
    return world.dataverse.create("teams", name=name, emailaddress=None)


def _account(world: World, **values: Any) -> str:
    defaults = {
        "name": "Contoso",
        "websiteurl": "https://contoso.example",
        "industrycode": 7,
        "numberofemployees": 250,
        "revenue": 1250000.5,
        "accountnumber": "AC-1",
    }
    return world.dataverse.create("accounts", **{**defaults, **values})


def _owner(world: World, person: int) -> tuple[Any, ...]:
    values = world.marketo.person(person)
    return tuple(values.get(name) for name in OWNER_FIELDS)


def _sync_leads_calls(world: World) -> int:
    return world.marketo.calls("leads.json", "POST")


def test_a_user_or_a_team_owner_reaches_the_person_and_an_owner_change_the_next_cycle(world: World) -> None:
    ada = _user(world, "Ada Owner", "ada@contoso.example")
    team = _team(world, "EMEA Sales")
    leads = [world.dynamics_lead(i, _ownerid_value=ada if i % 2 else team) for i in range(6)]
    contact, contact_person = world.linked_contact(9, _ownerid_value=team)
    persons = [world.person_of(lead) for lead in leads]
    assert _owner(world, persons[1]) == (ada, "Ada Owner", "ada@contoso.example")
    assert _owner(world, persons[0]) == (team, "EMEA Sales", None)  # a team is named (the native sync: empty)
    assert _owner(world, contact_person) == (team, "EMEA Sales", None)

    for i, lead in enumerate(leads):
        world.dataverse.update("leads", lead, _ownerid_value=team if i % 2 else ada)
    world.dataverse.update("contacts", contact, _ownerid_value=ada)
    before = len(world.dataverse.requests)
    report = world.cycle()
    assert _owner(world, persons[1]) == (team, "EMEA Sales", None)
    assert _owner(world, persons[0]) == (ada, "Ada Owner", "ada@contoso.example")
    assert _owner(world, contact_person) == (ada, "Ada Owner", "ada@contoso.example")
    assert report.report.written.marketo == 7
    reads = [r.url.path.rsplit("/", 1)[-1] for r in world.dataverse.requests[before:]]
    # per delta page: one read of the users, one of the teams for the ids left (not one per record)
    assert (reads.count("systemusers"), reads.count("teams")) == (2, 1)

    world.dataverse.update("leads", leads[0], jobtitle="CTO")  # the same owner: no look-up again
    before = len(world.dataverse.requests)
    again = world.cycle()
    assert again.report.written.marketo == 1
    reads = [r.url.path.rsplit("/", 1)[-1] for r in world.dataverse.requests[before:]]
    assert reads.count("systemusers") == reads.count("teams") == 0
    idle = world.cycle()  # the echo of those writes: nothing written again
    assert idle.report.written.model_dump() == {"marketo": 0, "dynamics": 0}
    assert idle.report.one_way_edits == 0


def test_an_owner_is_never_written_to_dynamics_and_cannot_be_mapped(world: World) -> None:
    ada = _user(world, "Ada Owner", "ada@contoso.example")
    lead, person = world.linked_lead(1, _ownerid_value=ada)
    world.marketo.edit(person, microsoftOwnerName="Someone Else")
    report = world.cycle()
    assert world.dataverse.api_writes == []
    assert report.report.one_way_edits == 1
    assert world.marketo.person(person)["microsoftOwnerName"] == "Someone Else"  # until Dynamics changes it
    world.dataverse.update("leads", lead, jobtitle="CTO")
    world.cycle()
    assert _owner(world, person) == (ada, "Ada Owner", "ada@contoso.example")
    with pytest.raises(ConfigError, match="filled from the record's owner"):
        field_map_with({"marketo": "microsoftOwnerName", "lead": "fullname", "type": "string"})
    with pytest.raises(ConfigError, match="map it for leads only"):
        field_map_with({"marketo": "website", "contact": "websiteurl", "type": "string"})


def test_a_contacts_account_reaches_its_person_and_an_account_edit_reaches_every_contact_in_bulk(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apply, "ACCOUNT_FAN_OUT", 400)  # two batches: 400 + 250 contacts
    account = _account(world)
    other = _account(world, name="Fabrikam", accountnumber="AC-2")
    contacts = [world.dynamics_contact(i, _parentcustomerid_value=account) for i in range(650)]
    elsewhere = world.dynamics_contact(1000, _parentcustomerid_value=other)
    lone = world.dynamics_contact(1001)
    assert world.cycle().outcome == "ok"
    first = world.marketo.person(world.person_of(contacts[0]))
    assert {name: first.get(name) for name in COMPANY} == {
        "company": "Contoso",
        "website": "https://contoso.example",
        "industry": "Consulting",  # the option's label
        "numberOfEmployees": 250,
        "annualRevenue": 1250000.5,
        "microsoftAccountNumber": "AC-1",
    }
    assert world.marketo.person(world.person_of(lone)).get("company") is None

    world.dataverse.update("accounts", account, name="Contoso Ltd", industrycode=1)
    marketo_before, dataverse_before = _sync_leads_calls(world), len(world.dataverse.requests)
    report = world.cycle()
    for contact in contacts:
        person = world.marketo.person(world.person_of(contact))
        assert (person["company"], person["industry"], person["website"]) == (
            "Contoso Ltd",
            "Accounting",
            "https://contoso.example",
        )
    assert world.marketo.person(world.person_of(elsewhere))["company"] == "Fabrikam"
    assert (report.report.accounts, report.report.account_contacts) == (1, 650)
    assert report.report.written.marketo == 650
    assert _sync_leads_calls(world) - marketo_before == 3  # ⌈400/300⌉ + ⌈250/300⌉: bulk, not one per person
    # contacts, leads and accounts deltas, then one read of the account's contacts
    assert len(world.dataverse.requests) - dataverse_before == 4
    idle = world.cycle()
    assert idle.report.written.model_dump() == {"marketo": 0, "dynamics": 0}
    assert world.dataverse.api_writes == []  # one way: nothing went to Dynamics


def test_a_marketo_edit_of_an_account_field_is_counted_and_overwritten_at_the_next_account_change(
    world: World,
) -> None:
    account = _account(world)
    _, person = world.linked_contact(1, _parentcustomerid_value=account)
    world.marketo.edit(person, website="https://elsewhere.example", company="Edited In Marketo")
    report = world.cycle()
    assert report.report.one_way_edits == 2
    assert world.dataverse.api_writes == []
    assert world.marketo.person(person)["company"] == "Edited In Marketo"
    world.dataverse.update("accounts", account, numberofemployees=300)
    world.cycle()
    values = world.marketo.person(person)
    assert (values["company"], values["website"], values["numberOfEmployees"]) == (
        "Contoso",
        "https://contoso.example",
        300,
    )
    # an edit and an account change in the same window: overwritten in that cycle
    world.marketo.edit(person, industry="Edited Again")
    world.dataverse.update("accounts", account, accountnumber="AC-9")
    report = world.cycle()
    assert report.report.one_way_edits == 1
    assert (world.marketo.person(person)["industry"], world.marketo.person(person)["microsoftAccountNumber"]) == (
        "Consulting",
        "AC-9",
    )


def test_a_contact_moved_to_another_account_or_qualified_from_a_lead_gets_its_accounts_fields(world: World) -> None:
    first, second = _account(world), _account(world, name="Fabrikam", accountnumber="AC-2")
    contact, person = world.linked_contact(1, _parentcustomerid_value=first)
    world.dataverse.update("contacts", contact, _parentcustomerid_value=second)
    world.cycle()
    assert (world.marketo.person(person)["company"], world.marketo.person(person)["microsoftAccountNumber"]) == (
        "Fabrikam",
        "AC-2",
    )
    lead, lead_person = world.linked_lead(2, companyname="Lead Company")
    qualified = world.dataverse.qualify(lead)
    world.dataverse.update("contacts", qualified, _parentcustomerid_value=first)
    world.cycle()
    assert world.person_of(qualified) == lead_person
    assert world.marketo.person(lead_person)["company"] == "Contoso"


def test_a_missing_marketo_field_is_drift_and_the_rest_is_filled(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    fields = {k: v for k, v in fake_marketo.FIELDS.items() if k != "microsoftOwnerEmail"}
    monkeypatch.setattr(fake_marketo, "FIELDS", fields)
    ada = _user(world, "Ada Owner", "ada@contoso.example")
    _, person = world.linked_lead(1, _ownerid_value=ada)
    values = world.marketo.person(person)
    assert (values["microsoftOwnerId"], values["microsoftOwnerName"]) == (ada, "Ada Owner")
    assert "microsoftOwnerEmail" not in values
    drift = world.store.list_run_reports(limit=1)[0].report.drift
    assert [d.name for d in drift] == ["microsoftOwnerEmail"]
    before = len(world.marketo.requests)
    idle = world.cycle()  # the change feed is read without the missing field: no refusal, no schema re-read
    assert idle.outcome == "ok"
    assert len(world.marketo.requests) - before == 1


def test_tables_the_role_may_not_read_leave_those_fields_unknown_and_the_cycle_goes_on(world: World) -> None:
    world.dataverse.denied |= {"systemusers", "teams", "accounts"}
    ada = _user(world, "Ada Owner", "ada@contoso.example")
    account = _account(world)
    _, person = world.linked_contact(1, _ownerid_value=ada, _parentcustomerid_value=account)
    values = world.marketo.person(person)
    assert (values.get("microsoftOwnerId"), values.get("microsoftOwnerName"), values.get("company")) == (
        ada,
        None,
        None,
    )
    report = world.store.list_run_reports(limit=1)[0]
    assert report.outcome == "ok"
    assert sorted(d.name for d in report.report.drift) == ["account", "systemuser", "team"]  # once each


# -- the rules, pure (core.oneway) ------------------------------------------------------------------


def test_writes_send_only_what_differs_from_what_marketo_holds_and_never_clear_an_unwritten_field() -> None:
    values = {"company": None, "website": "https://a.example", "industry": "Consulting"}
    baseline = {">website": "https://a.example", ">industry": "Retail"}
    assert oneway.writes(values, baseline, ["company", "website", "industry"]) == {"industry": "Consulting"}
    assert oneway.writes({"company": None}, {">company": "Old"}, ["company"]) == {"company": None}
    assert oneway.writes({"industry": "X"}, {}, ["company"]) == {}  # Marketo lacks the field


def test_marketo_edits_are_the_staged_values_that_differ_from_the_baseline() -> None:
    baseline = {">company": "Contoso", ">microsoftOwnerName": "Ada", "company": "Lead Co"}
    staged = {"company": "Contoso", "microsoftOwnerName": "Bob", "title": "CEO"}
    assert oneway.marketo_edits(EntityType.CONTACT, staged, baseline) == {"microsoftOwnerName": "Bob"}
    # a value the sync never wrote (a form's) is what Marketo holds, not an edit to count
    seen = oneway.marketo_edits(EntityType.CONTACT, {"website": "https://form.example", **staged}, baseline)
    assert oneway.edited(seen, baseline) == ["microsoftOwnerName"]
    # for a lead, company is the field map's (companyname), not the account's
    assert oneway.marketo_edits(EntityType.LEAD, {"company": "Other"}, baseline) == {}


def test_company_values_take_the_option_label_and_canonical_numbers() -> None:
    row = {
        "name": "Contoso",
        "industrycode": 7,
        "industrycode" + oneway.FORMATTED: "Consulting",
        "numberofemployees": 12,
        "revenue": 10,
        "accountnumber": "",
    }
    values = oneway.company_values(row)
    assert (values["industry"], values["numberOfEmployees"]) == ("Consulting", 12)
    assert (values["microsoftAccountNumber"], values["website"]) == (None, None)
    assert oneway.company_values(None) == dict.fromkeys(COMPANY)
    assert load_field_map(None).marketo_fields  # the default map still loads with these rules
