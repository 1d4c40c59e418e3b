"""Owners and account company fields, Dynamics → Marketo one way, over both simulators and
Azurite: the wiring of ``core.oneway`` (the rules are unit-tested in ``tests/unit/test_oneway.py``)."""

from __future__ import annotations

from typing import Any

from sandbox import DataverseOptions
from sync_core.check.run import run_checks
from tests.e2e.conftest import World

OWNER = ("microsoftOwnerId", "microsoftOwnerName", "microsoftOwnerEmail")


def _owner(world: World, dataverse_id: str) -> tuple[object, ...]:
    person = world.person_of(dataverse_id)
    return tuple(person.get(name) for name in OWNER)


def test_a_user_owner_then_a_team_owner_reach_the_person_and_nothing_goes_back(world: World) -> None:
    ada = world.dataverse.create(
        "systemusers",
        {"firstname": "Ada", "lastname": "Owner", "internalemailaddress": "ada@contoso.example"},
    )
    team = world.dataverse.create("teams", {"name": "EMEA Sales"})
    lead = world.dynamics_lead(1, **{"ownerid@odata.bind": f"/systemusers({ada})"})
    assert world.cycle().outcome == "ok"
    assert _owner(world, lead) == (ada, "Ada Owner", "ada@contoso.example")

    world.dataverse.update("leads", lead, {"ownerid@odata.bind": f"/teams({team})"})
    report = world.cycle()
    assert report.outcome == "ok"
    assert _owner(world, lead) == (team, "EMEA Sales", None)
    assert report.report.written.model_dump() == {"marketo": 1, "dynamics": 0}
    assert report.report.api_calls.by_operation["dataverse.get_rows"] == 2  # the users, then the teams
    writes = world.dataverse.stats.to_json()["writes"]
    assert all(ops.get("update", 0) == 0 for ops in writes.values())  # one way


def test_an_account_edit_reaches_every_linked_contact_in_bulk_over_a_marketo_edit(world: World) -> None:
    account = world.dataverse.create(
        "accounts",
        {"name": "Contoso", "websiteurl": "https://contoso.example", "industrycode": 7, "accountnumber": "AC-1"},
    )
    bind = {"parentcustomerid_account@odata.bind": f"/accounts({account})"}
    contacts = [world.dynamics_contact(i, **bind) for i in range(320)]
    assert world.cycle().outcome == "ok"
    first = world.person_of(contacts[0])
    assert (first["company"], first["industry"], first["microsoftAccountNumber"]) == ("Contoso", "Consulting", "AC-1")

    world.marketo.update_lead(first["id"], {"website": "https://edited-in-marketo.example"})
    world.dataverse.update("accounts", account, {"name": "Contoso Ltd", "numberofemployees": 42})
    report = world.cycle()
    assert report.outcome == "ok"
    for contact in contacts:
        person = world.person_of(contact)
        assert (person["company"], person["numberOfEmployees"], person["website"]) == (
            "Contoso Ltd",
            42,
            "https://contoso.example",  # the Marketo edit, overwritten
        )
    assert (report.report.accounts, report.report.account_contacts, report.report.one_way_edits) == (1, 320, 1)
    calls = report.report.api_calls.by_operation
    assert calls["marketo.sync_leads"] == 2  # ⌈320/300⌉, not one call per person
    assert calls["dataverse.find_by_lookup"] == 1


def test_a_role_that_may_not_read_accounts_syncs_the_rest_and_check_says_so(world_factory: Any) -> None:
    world: World = world_factory(dataverse=DataverseOptions(denied_privileges=["prvReadAccount"]))
    checks = {check.name: check for check in run_checks(world.env).checks}
    assert checks["dataverse.privileges"].status == "pass"
    assert "prvReadAccount (company fields)" in checks["dataverse.privileges"].detail
    contact = world.dynamics_contact(1)
    report = world.cycle()
    assert report.outcome == "ok"
    assert world.person_of(contact)["lastName"] == "Person1"
    assert [item.name for item in report.report.drift] == ["account"]
