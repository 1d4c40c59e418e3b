"""Both API clients against the sandbox servers over real HTTP, with faults injected by the admin API.

Sleeps are injected (recorded, not waited) so the retries are instant, but every request, fault,
dropped connection and token refresh goes over a real loopback socket to the simulators.
"""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from azure.identity import ClientSecretCredential

from sandbox import DataverseOptions, SandboxServers
from sync_core.core.errors import DeltaTokenExpiredError, TransientError
from sync_core.dataverse.client import DataverseClient
from sync_core.http.counters import ApiCounters
from sync_core.marketo.client import CustomActivity, LeadOutcome, MarketoClient, WriteStatus
from sync_core.wiring.credentials import StaticTokenCredential
from tests.integration.conftest import api_writes, fault_rules_left

CRAFTED_EMAIL = "x' or 1 eq 1 or 'a"
LEAD_FIELDS = ["email", "firstName", "lastName"]


class Sleeps(list[float]):
    """An injected ``sleep`` that records the wait instead of taking it."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def counters() -> ApiCounters:
    return ApiCounters()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


@pytest.fixture
def marketo(sandbox: SandboxServers, http: httpx.Client, sleeps: Sleeps, counters: ApiCounters) -> MarketoClient:
    return MarketoClient(
        http,
        base_url=sandbox.marketo_url,
        client_id="sandbox-client-id",
        client_secret="sandbox-client-secret",
        counters=counters,
        sleep=sleeps,
    )


@pytest.fixture
def dataverse(sandbox: SandboxServers, http: httpx.Client, sleeps: Sleeps, counters: ApiCounters) -> DataverseClient:
    return DataverseClient(
        http,
        base_url=sandbox.dataverse_url,
        credential=StaticTokenCredential("sandbox-token"),
        batch_size=100,
        counters=counters,
        sleep=sleeps,
    )


def _new_leads(sandbox: SandboxServers, count: int) -> list[str]:
    ids = []
    for n in range(count):
        values = {"lastname": f"Lead{n}", "companyname": "Acme", "emailaddress1": f"it.lead.{n}@example.com"}
        ids.append(sandbox.dataverse.create("lead", values))
    return ids


# -- Marketo ------------------------------------------------------------------------------------------


def test_marketo_reads_every_lead_change_through_606_615_601_and_502(
    sandbox: SandboxServers, marketo: MarketoClient, arm_faults: Any, sleeps: Sleeps, counters: ApiCounters
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    lead_ids = sandbox.marketo.seed(700)
    token = marketo.get_paging_token(since)
    arm_faults(
        sandbox.marketo_url,
        {"method": "GET", "path": "leadchanges", "times": 1, "action": {"marketo_error": "606"}},
        {"method": "GET", "path": "leadchanges", "times": 1, "action": {"marketo_error": "615"}},
        {"method": "GET", "path": "leadchanges", "times": 1, "action": {"marketo_error": "601"}},
        {"method": "GET", "path": "leadchanges", "times": 1, "action": {"status": 502}},
    )
    pages = list(marketo.iter_lead_changes(token, fields=LEAD_FIELDS))
    activities = [activity for page in pages for activity in page.activities]
    assert sorted({a.lead_id for a in activities}) == sorted(lead_ids)
    assert len({a.marketo_guid for a in activities}) == len(activities)  # no duplicates
    assert pages[-1].more_result is False
    assert fault_rules_left(sandbox.marketo_url) == []
    assert 20.0 in sleeps  # the 606 waited out the window
    snapshot = counters.snapshot()["marketo"]
    assert snapshot["token_calls"] == 2  # 601: one refresh
    assert snapshot["throttled"] == 2
    assert snapshot["retries"] == 3  # 606, 615, 502 (the 601 is replayed inside the auth flow)


def test_marketo_sync_leads_lands_once_through_a_dropped_connection(
    sandbox: SandboxServers, marketo: MarketoClient, arm_faults: Any
) -> None:
    lead_ids = sandbox.marketo.seed(3)
    arm_faults(sandbox.marketo_url, {"method": "POST", "path": r"/rest/v1/leads\.json", "action": {"drop": True}})
    records = [{"id": lead_id, "title": f"Title {lead_id}"} for lead_id in lead_ids] + [{"id": 999_999, "title": "x"}]
    results = marketo.sync_leads(records, action="updateOnly", lookup_field="id")
    assert [r.status for r in results] == [WriteStatus.UPDATED] * 3 + [WriteStatus.SKIPPED]
    assert results[3].outcome is LeadOutcome.NOT_FOUND
    for lead_id in lead_ids:
        lead = sandbox.marketo.get_lead(lead_id)
        assert lead is not None
        assert lead["title"] == f"Title {lead_id}"
        changes = sandbox.marketo.activities(lead_id=lead_id, type_id=13)
        assert sum(1 for a in changes for f in a.get("fields", []) if f["name"] == "title") == 1


def test_marketo_custom_activity_is_never_logged_twice(
    sandbox: SandboxServers, marketo: MarketoClient, arm_faults: Any
) -> None:
    [lead_id] = sandbox.marketo.seed(1)
    type_id = marketo.get_activity_type_id("microsoftSyncFailed")
    activity = CustomActivity(lead_id, type_id, "lead", {"reason": "lastname too long", "direction": "toDynamics"})
    arm_faults(
        sandbox.marketo_url, {"method": "POST", "path": "activities/external", "action": {"marketo_error": "606"}}
    )
    [result] = marketo.add_activities([activity])  # refused by the rate limit: safe to resend
    assert result.ok
    arm_faults(sandbox.marketo_url, {"method": "POST", "path": "activities/external", "action": {"drop": True}})
    with pytest.raises(TransientError):
        marketo.add_activities([activity])  # may or may not have landed: not resent
    # The simulator drops before handling: one activity from the first call, none from the second.
    logged = sandbox.marketo.custom_activities(lead_id=lead_id)
    assert [item["attributes"]["reason"] for item in logged] == ["lastname too long"]


def test_marketo_crafted_filter_value_matches_nothing(sandbox: SandboxServers, marketo: MarketoClient) -> None:
    sandbox.marketo.seed(5)
    assert marketo.find_leads("email", [CRAFTED_EMAIL], fields=LEAD_FIELDS) == []
    assert [lead["email"] for lead in marketo.find_leads("email", ["seed.lead.2@example.com"], fields=LEAD_FIELDS)] == [
        "seed.lead.2@example.com"
    ]


# -- Dataverse ----------------------------------------------------------------------------------------


def test_dataverse_update_multiple_lands_every_row_once_through_429_503_and_a_drop(
    sandbox: SandboxServers, dataverse: DataverseClient, arm_faults: Any, sleeps: Sleeps
) -> None:
    ids = _new_leads(sandbox, 250)
    arm_faults(
        sandbox.dataverse_url,
        {"method": "POST", "path": "UpdateMultiple", "times": 1, "action": {"status": 429, "retry_after": 1}},
        {"method": "POST", "path": "UpdateMultiple", "times": 1, "action": {"status": 503}},
        {"method": "POST", "path": "UpdateMultiple", "times": 1, "action": {"drop": True}},
    )
    outcomes = dataverse.update_multiple("lead", [{"leadid": row_id, "jobtitle": "Updated"} for row_id in ids])
    assert all(outcome.ok for outcome in outcomes)
    assert {row["jobtitle"] for row in sandbox.dataverse.rows("lead")} == {"Updated"}
    assert api_writes(sandbox.dataverse_url) == {"leads": {"update": 250}}  # each row once
    assert 1.0 in sleeps  # Retry-After honoured
    assert fault_rules_left(sandbox.dataverse_url) == []


def test_dataverse_create_multiple_is_not_resent_after_a_502(
    sandbox: SandboxServers, dataverse: DataverseClient, arm_faults: Any
) -> None:
    rows = [{"lastname": f"New{n}", "companyname": "Acme"} for n in range(5)]
    arm_faults(sandbox.dataverse_url, {"method": "POST", "path": "CreateMultiple", "action": {"status": 502}})
    with pytest.raises(TransientError):
        dataverse.create_multiple("lead", rows)
    outcomes = dataverse.create_multiple("lead", rows)  # the next cycle
    assert all(outcome.ok for outcome in outcomes)
    names = Counter(row["lastname"] for row in sandbox.dataverse.rows("lead"))
    assert names == Counter(f"New{n}" for n in range(5))
    assert api_writes(sandbox.dataverse_url) == {"leads": {"create": 5}}


def test_dataverse_create_refused_with_429_is_resent_and_lands_once(
    sandbox: SandboxServers, dataverse: DataverseClient, arm_faults: Any
) -> None:
    arm_faults(
        sandbox.dataverse_url, {"method": "POST", "path": r"/leads$", "action": {"status": 429, "retry_after": 2}}
    )
    new_id = dataverse.create("leads", {"lastname": "Once", "companyname": "Acme"})
    assert [row["leadid"] for row in sandbox.dataverse.find("lead", lastname="Once")] == [new_id]
    assert api_writes(sandbox.dataverse_url) == {"leads": {"create": 1}}


def test_dataverse_bulk_write_isolates_the_bad_record_over_http(
    sandbox: SandboxServers, dataverse: DataverseClient
) -> None:
    ids = _new_leads(sandbox, 10)
    rows = [{"leadid": row_id, "firstname": f"F{n}"} for n, row_id in enumerate(ids)]
    rows[4]["firstname"] = "x" * 51  # firstname is 50 characters at most
    outcomes = dataverse.update_multiple("lead", rows)
    assert [o.ok for o in outcomes] == [n != 4 for n in range(10)]
    assert outcomes[4].code == "0x80044331"
    stored = {row["leadid"]: row["firstname"] for row in sandbox.dataverse.rows("lead")}
    assert [stored[row_id] for row_id in ids] == [f"F{n}" if n != 4 else None for n in range(10)]
    assert api_writes(sandbox.dataverse_url) == {"leads": {"update": 9}}


def test_dataverse_crafted_email_matches_nothing_when_only_other_rows_exist(
    sandbox: SandboxServers, dataverse: DataverseClient
) -> None:
    _new_leads(sandbox, 5)
    quoted = sandbox.dataverse.create(
        "lead", {"lastname": "OBrien", "companyname": "A", "emailaddress1": "o'brien@x.io"}
    )
    assert dataverse.find_by_emails("leads", [CRAFTED_EMAIL], select=["lastname"]) == []
    found = dataverse.find_by_emails("leads", ["o'brien@x.io", CRAFTED_EMAIL], select=["lastname"])
    assert [row["leadid"] for row in found] == [quoted]


def test_dataverse_delta_reads_changes_deletes_and_expiry(
    sandbox: SandboxServers, dataverse: DataverseClient, arm_faults: Any
) -> None:
    ids = _new_leads(sandbox, 12)
    arm_faults(sandbox.dataverse_url, {"method": "GET", "path": r"/leads$", "action": {"drop": True}})
    pages = list(dataverse.iter_changes("leads", select=["lastname"], delta_link=None, page_size=5))
    assert [len(page.rows) for page in pages] == [5, 5, 2]
    assert [page.delta_link is not None for page in pages] == [False, False, True]
    delta_link = pages[-1].delta_link
    sandbox.dataverse.update("lead", ids[0], {"lastname": "Changed"})
    sandbox.dataverse.delete("lead", ids[1])
    [page] = dataverse.iter_changes("leads", select=["lastname"], delta_link=delta_link)
    assert [(row["leadid"], row["lastname"]) for row in page.rows] == [(ids[0], "Changed")]
    assert page.deleted_ids == [ids[1]]
    sandbox.dataverse.expire_change_tracking()
    with pytest.raises(DeltaTokenExpiredError):
        list(dataverse.iter_changes("leads", select=["lastname"], delta_link=page.delta_link))


def test_dataverse_401_fetches_a_token_again_and_replays(
    sandbox: SandboxServers, dataverse: DataverseClient, arm_faults: Any, counters: ApiCounters
) -> None:
    ids = _new_leads(sandbox, 2)
    arm_faults(sandbox.dataverse_url, {"method": "GET", "path": r"/leads$", "action": {"status": 401}})
    rows = dataverse.get_rows("leads", ids, select=["lastname"])
    assert sorted(row["leadid"] for row in rows) == sorted(ids)
    assert counters.token_calls("dataverse") == 2


def test_dataverse_over_tls_with_azure_identity_client_secret_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    """The production credential path: azure-identity gets a token from the sandbox's Entra-shaped
    endpoint; the client caches it across calls and talks https to the simulator."""
    with SandboxServers(dataverse=DataverseOptions(seed_leads=3), tls=True) as servers:
        assert servers.ca_bundle is not None
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(servers.ca_bundle))  # azure-identity's transport
        credential = ClientSecretCredential(
            "8d9f5c1e-1b71-4b7a-9f0e-5a5e2f1c00aa",
            "sandbox-client-id",
            "sandbox-client-secret",
            authority=servers.dataverse_url.removeprefix("https://"),
            disable_instance_discovery=True,
        )
        counters = ApiCounters()
        context = ssl.create_default_context(cafile=str(servers.ca_bundle))
        with httpx.Client(verify=context) as http, credential:
            client = DataverseClient(http, base_url=servers.dataverse_url, credential=credential, counters=counters)
            pages = list(client.iter_changes("leads", select=["lastname"], delta_link=None))
            ids = [row["leadid"] for page in pages for row in page.rows]
            outcomes = client.update_multiple("lead", [{"leadid": row_id, "jobtitle": "TLS"} for row_id in ids])
        assert len(ids) == 3
        assert all(outcome.ok for outcome in outcomes)
        assert {row["jobtitle"] for row in servers.dataverse.rows("lead")} == {"TLS"}
        assert counters.token_calls("dataverse") == 1
        assert counters.calls("dataverse") == 3  # delta read, definition look-up, UpdateMultiple


def test_metadata_of_a_table_without_option_set_columns_reads_cleanly(dataverse: DataverseClient) -> None:
    # contact has no Picklist column: the cast collection is empty, and still answers.
    contact = dataverse.get_entity_metadata("contact")
    lead = dataverse.get_entity_metadata("lead")
    assert contact.attributes["lastname"].max_length == 50
    assert all(not a.options for a in contact.attributes.values() if a.attribute_type == "Picklist")
    assert lead.attributes["leadsourcecode"].options[8] == "Web"
