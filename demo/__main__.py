"""``make demo`` (``python -m demo``): the sync's story, end to end, on a laptop.

Starts Azurite (in memory, free port), both simulators (seeded with 200 leads on both sides and
100 contacts in Dynamics) and the local Functions host, then plays the rules through the real
APIs and the real functions: every sync cycle is the ``sync_cycle`` timer function, the webhook
and the status view are called over HTTP on the host. Each step prints what it did and whether
the outcome is the one the rules promise; a wrong outcome is marked WRONG and makes the exit
code 1. Everything started is stopped at the end, whatever happens.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from azure.functions.timer import TimerRequest

from demo.sandbox_env import sandbox_settings
from sandbox import DataverseOptions, MarketoOptions, SandboxServers
from sandbox.azurite import AzuriteNotInstalled, run_azurite

SEED_LEADS = 200
SEED_CONTACTS = 100
SECRET = "demo-webhook-secret"  # noqa: S105 - the sandbox webhook secret of this run


class Story:
    def __init__(self) -> None:
        self.steps = 0
        self.wrong = 0
        self.started = time.perf_counter()

    def check(self, what: str, ok: bool, outcome: str) -> bool:
        self.steps += 1
        self.wrong += not ok
        print(f"{self.steps:2d}. {what:<62} {'ok' if ok else 'WRONG':>5}  {outcome}", flush=True)
        return ok

    def attempt(self, what: str, step: Callable[[], tuple[bool, str]]) -> None:
        """One step; an exception in it is a wrong outcome, not the end of the story."""
        try:
            ok, outcome = step()
        except Exception as err:
            ok, outcome = False, f"raised {type(err).__name__}: {err}"
        self.check(what, ok, outcome)


class Demo:
    """The world of the story: simulators, state store, local host, and the functions' own wiring."""

    def __init__(self, sandbox: SandboxServers, host_url: str, store: Any) -> None:
        self.sandbox = sandbox
        self.marketo = sandbox.marketo
        self.dataverse = sandbox.dataverse
        self.http = httpx.Client(base_url=host_url, timeout=60)
        self.store = store

    def cycle(self) -> dict[str, Any]:
        import function_app

        function_app.sync_cycle.build().get_user_function()(TimerRequest(past_due=False))
        report = self.store.list_run_reports(limit=1)[0]
        return report.as_json()

    def person_of(self, dataverse_id: str) -> dict[str, Any] | None:
        found = self.marketo.find_leads("microsoftId", dataverse_id)
        return dict(found[0]) if len(found) == 1 else None

    def link(self, marketo_id: int) -> Any:
        return self.store.get_links_by_marketo_ids([marketo_id]).get(marketo_id)

    def webhook(self, lead_id: int, **extra: Any) -> httpx.Response:
        return self.http.post(
            "/api/marketo/sync-person", json={"leadId": lead_id, **extra}, headers={"X-Sync-Secret": SECRET}
        )


def story(demo: Demo, out: Story) -> None:
    def first_cycle() -> tuple[bool, str]:
        report = demo.cycle()
        ok = report["outcome"] == "ok" and report["linked"] == SEED_LEADS and report["created"] == SEED_CONTACTS
        return ok, f"{report['linked']} leads linked by email, {report['created']} persons created for contacts"

    out.attempt(f"first cycle: {SEED_LEADS} leads and {SEED_CONTACTS} contacts meet Marketo", first_cycle)

    def settles() -> tuple[bool, str]:
        report = demo.cycle()
        calls = report["api_calls"]["marketo"] + report["api_calls"]["dataverse"]
        written = report["written"]["marketo"] + report["written"]["dynamics"]
        return report["outcome"] == "ok" and written == 0, f"nothing to write; {calls} API calls"

    out.attempt("the next cycle finds both sides in step", settles)

    state: dict[str, Any] = {}

    def dynamics_lead() -> tuple[bool, str]:
        lead = demo.dataverse.create(
            "leads",
            {
                "emailaddress1": "new.lead@example.com",
                "firstname": "Nadia",
                "lastname": "Newlead",
                "companyname": "Fabrikam",
                "subject": "Trade show",
            },
        )
        demo.cycle()
        person = demo.person_of(lead)
        state["lead"], state["lead_person"] = lead, person and int(person["id"])
        ok = person is not None and person["microsoftType"] == "Lead" and person["company"] == "Fabrikam"
        return ok, f"Marketo person {state['lead_person']} with microsoftType Lead, microsoftId {lead[:8]}…"

    out.attempt("a lead created in Dynamics appears in Marketo", dynamics_lead)

    def marketo_edit() -> tuple[bool, str]:
        demo.marketo.update_lead(state["lead_person"], {"title": "Head of Events"})
        report = demo.cycle()
        row = demo.dataverse.get("leads", state["lead"]) or {}
        return row.get("jobtitle") == "Head of Events", f"jobtitle updated; {report['written']['dynamics']} write(s)"

    out.attempt("a person edited in Marketo updates the Dynamics lead", marketo_edit)

    def lead_collision() -> tuple[bool, str]:
        demo.marketo.update_lead(state["lead_person"], {"title": "Marketing Director"})
        demo.dataverse.update("leads", state["lead"], {"jobtitle": "Sales Director"})
        report = demo.cycle()
        row = demo.dataverse.get("leads", state["lead"]) or {}
        person = demo.marketo.get_lead(state["lead_person"]) or {}
        ok = row.get("jobtitle") == person.get("title") == "Marketing Director" and report["collisions"] == 1
        return ok, "title changed on both sides: Marketo's value won on both; collision recorded"

    out.attempt("a collision on a lead: Marketo wins", lead_collision)

    def contact_collision() -> tuple[bool, str]:
        contact = demo.dataverse.find("contacts", emailaddress1="seed.contact.1@example.com")[0]["contactid"]
        person = demo.person_of(contact) or {}
        demo.marketo.update_lead(int(person["id"]), {"phone": "+1 555 0199"})
        demo.dataverse.update("contacts", contact, {"telephone1": "+1 555 0142"})
        report = demo.cycle()
        row = demo.dataverse.get("contacts", contact) or {}
        after = demo.marketo.get_lead(int(person["id"])) or {}
        ok = row.get("telephone1") == after.get("phone") == "+1 555 0142" and report["collisions"] == 1
        return ok, "phone changed on both sides: Dynamics' value won on both; collision recorded"

    out.attempt("a collision on a contact: Dynamics wins", contact_collision)

    def delete_flagged() -> tuple[bool, str]:
        lead = demo.dataverse.find("leads", emailaddress1="seed.lead.2@example.com")[0]["leadid"]
        person = demo.person_of(lead) or {}
        demo.dataverse.delete("leads", lead)
        report = demo.cycle()
        after = demo.marketo.get_lead(int(person["id"])) or {}
        ok = after.get("microsoftIsDeleted") is True and demo.link(int(person["id"])) is None
        return ok, f"person kept, microsoftIsDeleted set, unlinked ({report['flagged_deleted']} flagged)"

    out.attempt("a lead deleted in Dynamics: flagged in Marketo, not deleted", delete_flagged)

    def qualified() -> tuple[bool, str]:
        lead = demo.dataverse.find("leads", emailaddress1="seed.lead.3@example.com")[0]["leadid"]
        person = int((demo.person_of(lead) or {})["id"])
        contact = demo.dataverse.qualify_lead(lead)
        report = demo.cycle()
        after = demo.marketo.get_lead(person) or {}
        link = demo.link(person)
        ok = after.get("microsoftType") == "Contact" and after.get("microsoftId") == contact
        ok = ok and link is not None and link.dataverse_id == contact and report["qualified"] == 1
        return ok, "the link moved to the new contact; microsoftType is Contact; Dynamics now wins collisions"

    out.attempt("a lead qualified into a contact in Dynamics", qualified)

    def webhook_created() -> tuple[bool, str]:
        person = demo.marketo.create_lead(
            {"email": "webinar.guest@example.com", "firstName": "Wen", "lastName": "Guest", "company": "Contoso"}
        )
        state["web_person"] = person
        answer = demo.webhook(person)
        body = answer.json()
        row = demo.dataverse.get("leads", body.get("dynamicsId", "")) if body.get("dynamicsId") else None
        ok = answer.status_code == 200 and body.get("status") == "created" and row is not None
        return (
            ok,
            f"HTTP {answer.status_code} {body.get('status')}: lead {str(body.get('dynamicsId'))[:8]}… in Dynamics",
        )

    out.attempt('webhook "Sync Person to Microsoft" creates a lead in real time', webhook_created)

    def webhook_exists() -> tuple[bool, str]:
        answer = demo.webhook(state["web_person"])
        body = answer.json()
        leads = demo.dataverse.find("leads", emailaddress1="webinar.guest@example.com")
        ok = answer.status_code == 200 and body.get("status") == "exists" and len(leads) == 1
        return ok, f"HTTP {answer.status_code} {body.get('status')}: nothing written, still one lead"

    out.attempt("the same webhook again answers exists", webhook_exists)

    def invalid_value() -> tuple[bool, str]:
        demo.marketo.update_lead(state["lead_person"], {"title": "Chief " + "Very " * 25 + "Important Officer"})
        report = demo.cycle()
        row = demo.dataverse.get("leads", state["lead"]) or {}
        activities = [
            a for a in demo.marketo.custom_activities(state["lead_person"]) if a["apiName"] == "microsoftSyncFailed"
        ]
        reason = activities[-1]["attributes"]["reason"] if activities else "none"
        ok = row.get("jobtitle") == "Marketing Director" and report["failures"] == 1 and len(activities) == 1
        return ok, f"not sent; on the person's activity log: {reason!r}"

    out.attempt("a value Dynamics would refuse is held back and logged", invalid_value)

    def status_view() -> tuple[bool, str]:
        answer = demo.http.get("/api/status")
        body = answer.json()
        page = demo.http.get("/api/status", headers={"Accept": "text/html"})
        ok = answer.status_code == 200 and page.status_code == 200 and "<svg" in page.text
        failures = body.get("failures", {})
        open_failures = failures.get("open") if isinstance(failures, dict) else failures
        count = len(open_failures) if isinstance(open_failures, list) else open_failures
        return ok, f"JSON and HTML pages served; open failures: {count}"

    out.attempt("the status view (GET /api/status) shows it all", status_view)


@contextmanager
def world() -> Iterator[Demo]:
    from sync_core.host.server import LocalHost, load_app
    from sync_core.state import TableStateStore
    from sync_core.wiring.services import close_services

    with run_azurite() as connection:
        sandbox = SandboxServers(
            marketo=MarketoOptions(seed_leads=SEED_LEADS),
            dataverse=DataverseOptions(seed_leads=SEED_LEADS, seed_contacts=SEED_CONTACTS),
        ).start()
        try:
            prefix = "demo" + uuid.uuid4().hex[:8]
            os.environ.update(
                sandbox_settings(
                    sandbox.marketo_url,
                    sandbox.dataverse_url,
                    tables_connection=connection,
                    table_prefix=prefix,
                    WEBHOOK_SHARED_SECRET=SECRET,
                )
            )
            store = TableStateStore.from_connection_string(connection, prefix=prefix)
            # The demo fires the timer itself, step by step, so the host serves HTTP only.
            with LocalHost(load_app(), port=0, run_timers=False) as host:
                demo = Demo(sandbox, host.base_url, store)
                try:
                    yield demo
                finally:
                    demo.http.close()
                    close_services()
        finally:
            sandbox.stop()


def main() -> int:
    import logging

    logging.basicConfig(level=logging.ERROR)  # the steps say what happens; warnings are expected
    out = Story()
    print("Marketo <-> Dynamics 365 sync: the demo (Azurite, both simulators, the local Functions host)\n")
    try:
        with world() as demo:
            story(demo, out)
            print("\nThe status view (python -m sync_core status --format text):\n")
            from sync_core.status.view import status_main

            status_main(["--format", "text", "--cycles", "5"])
    except AzuriteNotInstalled as err:
        print(f"cannot run the demo: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - out.started
    print(f"\n{out.steps - out.wrong} of {out.steps} steps as expected in {seconds:.0f} s")
    return 1 if out.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
