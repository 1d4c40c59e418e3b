"""Microsoft's own Dataverse client (``powerplatform-dataverse-client`` 1.1.0), unmodified but
for its URL and credential, against the Dataverse simulator over real HTTP (and HTTPS).

Plain http needs the documented recipe: the constructor insists on https, the OData client is
built lazily from the private ``_base_url``. The TLS test uses the client as shipped, with
azure-identity's ``ClientSecretCredential`` for a token, trusting the sandbox's throw-away CA
through ``REQUESTS_CA_BUNDLE``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.identity import ClientSecretCredential
from PowerPlatform.Dataverse.client import DataverseClient
from PowerPlatform.Dataverse.core.errors import HttpError
from PowerPlatform.Dataverse.models import UpsertItem

from sandbox._http import HttpServer
from sandbox._tls import LocalCA
from sandbox.dataverse import INTEGRATION_USER_ID, DataverseOptions, DataverseSandbox

pytestmark = pytest.mark.conformance


class SandboxCredential:
    """A TokenCredential handing out the sandbox's static token (what DATAVERSE_STATIC_TOKEN does)."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes += scopes
        return AccessToken("sandbox-token", int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        raise NotImplementedError  # the client only calls get_token


@pytest.fixture
def sandbox() -> DataverseSandbox:
    return DataverseSandbox(DataverseOptions(seed_leads=7))


@pytest.fixture
def client(sandbox: DataverseSandbox) -> Iterator[DataverseClient]:
    with HttpServer(sandbox.handle, service="dataverse") as server:
        client = DataverseClient("https://contoso.crm.dynamics.com", SandboxCredential())
        client._base_url = server.base_url  # the only change: point it at loopback http
        with client:
            yield client


def test_client_pages_a_filtered_ordered_query(client: DataverseClient, sandbox: DataverseSandbox) -> None:
    pages = list(
        client.records.list_pages(
            "lead",
            select=["firstname", "emailaddress1", "modifiedon"],
            filter="modifiedon ge 2024-01-01T00:00:00Z and statecode eq 0",
            orderby=["firstname desc"],
            page_size=2,
        )
    )
    assert [len(page) for page in pages] == [2, 2, 2, 1]
    names = [record["firstname"] for page in pages for record in page]
    assert names == [f"Seed{i}" for i in range(7, 0, -1)]
    assert sandbox.stats.to_json()["calls"]["leads"]["query"] == 4


def test_client_creates_one_and_many(client: DataverseClient, sandbox: DataverseSandbox) -> None:
    one = client.records.create("lead", {"firstname": "Ada", "lastname": "Lovelace", "companyname": "Analytical"})
    many = client.records.create(
        "lead", [{"lastname": "Hopper", "companyname": "Navy"}, {"lastname": "Lamarr", "companyname": "MGM"}]
    )
    assert sandbox.get("lead", one)["fullname"] == "Ada Lovelace"  # type: ignore[index]
    assert [sandbox.get("lead", i)["lastname"] for i in many] == ["Hopper", "Lamarr"]  # type: ignore[index]
    assert sandbox.get("lead", one)["_createdby_value"] == INTEGRATION_USER_ID  # type: ignore[index]
    assert sandbox.stats.to_json()["calls"]["leads"] == {"create": 1, "CreateMultiple": 1}


def test_client_updates_one_and_many_and_reads_back(client: DataverseClient, sandbox: DataverseSandbox) -> None:
    ids = [row["leadid"] for row in sandbox.rows("lead")[:3]]
    client.records.update("lead", ids[0], {"jobtitle": "Countess"})
    client.records.update("lead", ids[1:], {"jobtitle": "Bulk"})
    record = client.records.retrieve("lead", ids[0], select=["jobtitle"])
    assert record is not None
    assert record["jobtitle"] == "Countess"
    assert [sandbox.get("lead", i)["jobtitle"] for i in ids[1:]] == ["Bulk", "Bulk"]  # type: ignore[index]
    assert client.records.retrieve("lead", "00000000-0000-0000-0000-000000000001") is None


def test_client_upserts_by_email_key_with_a_quote_in_it(client: DataverseClient, sandbox: DataverseSandbox) -> None:
    client.records.upsert(
        "lead",
        [
            UpsertItem(
                alternate_key={"emailaddress1": "o'brien@example.com"},
                record={"lastname": "OBrien", "companyname": "c"},
            )
        ],
    )
    client.records.upsert(
        "lead",
        [
            UpsertItem(alternate_key={"emailaddress1": "o'brien@example.com"}, record={"jobtitle": "CTO"}),
            UpsertItem(alternate_key={"emailaddress1": "seed.lead.1@example.com"}, record={"jobtitle": "Seeded"}),
            UpsertItem(
                alternate_key={"emailaddress1": "new@example.com"}, record={"lastname": "New", "companyname": "c"}
            ),
        ],
    )
    [obrien] = sandbox.find("lead", emailaddress1="o'brien@example.com")
    assert (obrien["lastname"], obrien["jobtitle"]) == ("OBrien", "CTO")
    assert sandbox.find("lead", emailaddress1="seed.lead.1@example.com")[0]["jobtitle"] == "Seeded"
    assert len(sandbox.rows("lead")) == 9
    assert sandbox.stats.to_json()["writes"]["leads"] == {"create": 2, "update": 2}


def test_client_deletes(client: DataverseClient, sandbox: DataverseSandbox) -> None:
    victim = sandbox.rows("lead")[0]["leadid"]
    client.records.delete("lead", victim)
    assert sandbox.get("lead", victim) is None
    with pytest.raises(HttpError) as caught:
        client.records.delete("lead", victim)
    assert (caught.value.status_code, caught.value.details["service_error_code"]) == (404, "0x80040217")


def test_client_batch_with_continue_on_error_reports_every_part(
    client: DataverseClient, sandbox: DataverseSandbox
) -> None:
    batch = client.batch.new()
    batch.records.create("lead", {"lastname": "Ok", "companyname": "c"})
    batch.records.create("lead", {"lastname": "x" * 51, "companyname": "c"})
    with batch.changeset() as change_set:
        ref = change_set.records.create("lead", {"lastname": "InSet", "companyname": "c"})
        change_set.records.update("lead", ref, {"jobtitle": "via $ref"})
    result = batch.execute(continue_on_error=True)
    assert [r.status_code for r in result.responses] == [204, 400, 204, 204]
    assert result.responses[1].error_code == "0x80044331"
    assert sandbox.find("lead", lastname="InSet")[0]["jobtitle"] == "via $ref"


def test_client_surfaces_validation_and_throttling_errors(client: DataverseClient, sandbox: DataverseSandbox) -> None:
    with pytest.raises(HttpError) as invalid:
        client.records.create("lead", {"lastname": "x" * 51, "companyname": "c"})
    assert (invalid.value.status_code, invalid.value.details["service_error_code"]) == (400, "0x80044331")
    sandbox.set_faults([{"method": "GET", "path": "/leads", "times": 1, "action": {"status": 429, "retry_after": 7}}])
    with pytest.raises(HttpError) as throttled:
        client.records.list("lead", select=["firstname"])
    error = throttled.value
    assert (error.status_code, error.is_transient, error.details["retry_after"]) == (429, True, 7)
    assert error.details["service_error_code"] == "0x80072322"
    assert error.details["service_request_id"]


def test_client_unmodified_over_tls_with_an_azure_identity_credential(
    sandbox: DataverseSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The production stack: azure-identity's ClientSecretCredential gets a token from the sandbox's
    Entra-shaped endpoint (its authority pointed at the sandbox), the client uses it over https."""
    ca = LocalCA()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca.write_ca_bundle(tmp_path / "ca.pem")))
    with HttpServer(sandbox.handle, service="dataverse", tls=ca.server_context()) as server:
        credential = ClientSecretCredential(
            "8d9f5c1e-1b71-4b7a-9f0e-5a5e2f1c00aa",
            "sandbox-client-id",
            "sandbox-client-secret",
            authority=server.base_url.removeprefix("https://"),
            disable_instance_discovery=True,
        )
        with DataverseClient(server.base_url, credential) as client:
            assert server.base_url.startswith("https://127.0.0.1:")
            created = client.records.create("lead", {"lastname": "Secure", "companyname": "c"})
            records = client.records.list("lead", select=["lastname"], filter="lastname eq 'Secure'", page_size=2)
            assert [r["leadid"] for r in records] == [created]
        credential.close()
    stats = sandbox.stats.to_json()
    assert (stats["tokens_issued"], stats["unauthorized"]) == (1, 0)  # one token, cached by MSAL, accepted
