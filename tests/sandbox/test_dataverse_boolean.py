"""The simulator's Two Options column ``new_synctomkto`` (the native Marketo sync's filter), on lead
and contact, as the real Web API renders, validates, filters and describes a Boolean column."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sandbox.test_dataverse_api import Org, error_of, running


@pytest.fixture
def org() -> Iterator[Org]:
    with running(seed_leads=2) as org:
        yield org


@pytest.mark.parametrize("logical", ["lead", "contact"])
def test_the_column_is_described_as_boolean_attribute_metadata_with_its_two_options(org: Org, logical: str) -> None:
    attributes = org.http.get(
        f"EntityDefinitions(LogicalName='{logical}')/Attributes", params={"$select": "LogicalName,AttributeType"}
    ).json()["value"]
    assert {"LogicalName": "new_synctomkto", "AttributeType": "Boolean"} in [
        {k: a[k] for k in ("LogicalName", "AttributeType")} for a in attributes
    ]
    [column] = org.http.get(
        f"EntityDefinitions(LogicalName='{logical}')/Attributes/Microsoft.Dynamics.CRM.BooleanAttributeMetadata",
        params={"$select": "LogicalName,DefaultValue,IsCustomAttribute", "$expand": "OptionSet"},
    ).json()["value"]
    assert (column["LogicalName"], column["DefaultValue"], column["IsCustomAttribute"]) == (
        "new_synctomkto",
        True,
        True,
    )
    options = column["OptionSet"]
    assert options["OptionSetType"] == "Boolean"
    assert options["TrueOption"]["Value"] == 1
    assert options["TrueOption"]["Label"]["UserLocalizedLabel"]["Label"] == "Yes"
    assert options["FalseOption"]["Label"]["UserLocalizedLabel"]["Label"] == "No"


def test_a_create_without_the_column_gets_its_default_and_seeded_rows_are_empty(org: Org) -> None:
    response = org.http.post("contacts", json={"lastname": "Hopper"})
    assert response.status_code == 204
    contact_id = response.headers["OData-EntityId"][-37:-1]
    assert (
        org.http.get(f"contacts({contact_id})", params={"$select": "new_synctomkto"}).json()["new_synctomkto"] is True
    )
    seeded = org.http.get("leads", params={"$select": "new_synctomkto"}).json()["value"]
    assert [row["new_synctomkto"] for row in seeded] == [None, None]  # rows older than the column


def test_only_a_json_boolean_is_written_and_a_filter_and_annotations_read_it(org: Org) -> None:
    refused = org.http.post("leads", json={"lastname": "A", "companyname": "B", "new_synctomkto": "No"})
    assert error_of(refused)[0] == 400
    assert error_of(refused)[2].endswith("Cannot convert the literal 'No' to the expected type 'Edm.Boolean'.")
    created = org.http.post("leads", json={"lastname": "A", "companyname": "B", "new_synctomkto": False})
    lead_id = created.headers["OData-EntityId"][-37:-1]
    found = org.http.get(
        "leads",
        params={"$select": "leadid,new_synctomkto", "$filter": "new_synctomkto eq false"},
        headers={"Prefer": 'odata.include-annotations="*"'},
    ).json()["value"]
    assert [row["leadid"] for row in found] == [lead_id]
    assert found[0]["new_synctomkto@OData.Community.Display.V1.FormattedValue"] == "No"
    mismatched = org.http.get("leads", params={"$filter": "new_synctomkto eq 'No'"})
    assert error_of(mismatched)[0] == 400
