"""Change tracking in the Dataverse simulator (reference B4): the initial tracked read, delta
links, creates/updates before deletes, paging of deltas, refused options and expiry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.dataverse import INTEGRATION_USER_ID, UI_USER_ID
from sandbox.dataverse._options import parse_fault
from tests.sandbox.test_dataverse_api import Org, error_of, running

TRACK = {"Prefer": "odata.track-changes"}


@pytest.fixture
def org() -> Iterator[Org]:
    with running(seed_leads=5) as org:
        yield org


def read_all(org: Org, url: str, prefer: str) -> tuple[list[dict[str, Any]], str, int]:
    """Follow nextLinks; return every row, the delta link of the last page and the page count."""
    rows: list[dict[str, Any]] = []
    pages = 0
    while True:
        body = org.http.get(url, headers={"Prefer": prefer}).json()
        pages += 1
        rows += body["value"]
        if "@odata.nextLink" not in body:
            return rows, body["@odata.deltaLink"], pages
        assert "@odata.deltaLink" not in body  # only the last page carries it
        url = body["@odata.nextLink"]


def initial(org: Org, page_size: int = 5000) -> str:
    _, delta, _ = read_all(
        org, "leads?$select=firstname,lastname", f"odata.track-changes,odata.maxpagesize={page_size}"
    )
    return delta


def test_initial_tracked_read_pages_and_ends_with_a_delta_link(org: Org) -> None:
    response = org.http.get(
        "leads", params={"$select": "firstname"}, headers={"Prefer": "odata.track-changes,odata.maxpagesize=2"}
    )
    assert response.headers["Preference-Applied"] == "odata.track-changes,odata.maxpagesize=2"
    rows, delta, pages = read_all(org, "leads?$select=firstname", "odata.track-changes,odata.maxpagesize=2")
    assert (len(rows), pages) == (5, 3)
    assert delta.startswith(f"{org.api}/leads?$select=firstname&$deltatoken=")
    token = delta.split("$deltatoken=")[1]
    assert token.split("%21")[0].isdigit()  # <version>!<MM/dd/yyyy HH:mm:ss>, URL-encoded


def test_delta_returns_new_and_updated_rows_then_deleted_ones(org: Org) -> None:
    delta = initial(org)
    seeded = [row["leadid"] for row in org.sandbox.rows("lead")]
    new_id = org.lead(firstname="New")
    org.sandbox.update("lead", seeded[0], {"firstname": "Changed"})
    org.sandbox.delete("lead", seeded[1])
    response = org.http.get(delta, headers=TRACK)
    body = response.json()
    assert body["@odata.context"] == f"{org.api}/$metadata#leads(firstname,lastname)/$delta"
    assert [row.get("leadid") or row["id"] for row in body["value"]] == [new_id, seeded[0], seeded[1]]
    assert body["value"][1]["firstname"] == "Changed"
    assert body["value"][2] == {
        "@odata.context": f"{org.api}/$metadata#leads/$deletedEntity",
        "id": seeded[1],
        "reason": "deleted",
    }
    assert body["@odata.deltaLink"] != delta
    assert org.http.get(body["@odata.deltaLink"], headers=TRACK).json()["value"] == []


def test_row_created_and_deleted_between_polls_shows_as_deleted(org: Org) -> None:
    delta = initial(org)
    short_lived = org.lead(firstname="Brief")
    org.sandbox.delete("lead", short_lived)
    body = org.http.get(delta, headers=TRACK).json()
    assert body["value"] == [
        {"@odata.context": f"{org.api}/$metadata#leads/$deletedEntity", "id": short_lived, "reason": "deleted"}
    ]


def test_delta_pages_when_changes_exceed_the_page_size(org: Org) -> None:
    delta = initial(org)
    seeded = [row["leadid"] for row in org.sandbox.rows("lead")]
    ids = [org.lead(firstname=f"N{i}") for i in range(5)]
    for record_id in seeded[:3]:
        org.sandbox.delete("lead", record_id)
    rows, next_delta, pages = read_all(org, delta, "odata.track-changes,odata.maxpagesize=3")
    assert pages == 3  # 5 changed + 3 deleted, 3 a page
    assert [row.get("leadid") for row in rows[:5]] == ids  # new/updated first, in change order
    assert [row["id"] for row in rows[5:]] == seeded[:3]  # then the deletions
    assert org.http.get(next_delta, headers=TRACK).json()["value"] == []


def test_changes_made_while_paging_land_in_the_next_delta(org: Org) -> None:
    first = org.http.get(
        "leads?$select=firstname", headers={"Prefer": "odata.track-changes,odata.maxpagesize=2"}
    ).json()
    late = org.lead(firstname="Late")  # written after page 1 of the initial read
    _, delta, _ = read_all(org, first["@odata.nextLink"], "odata.track-changes,odata.maxpagesize=2")
    body = org.http.get(delta, headers=TRACK).json()
    assert late in [row["leadid"] for row in body["value"]]


@pytest.mark.parametrize(
    ("option", "value"),
    [("$filter", "firstname eq 'a'"), ("$orderby", "firstname"), ("$top", "1"), ("$expand", "ownerid")],
)
def test_tracking_refuses_query_options_the_real_service_refuses(org: Org, option: str, value: str) -> None:
    response = org.http.get("leads", params={"$select": "firstname", option: value}, headers=TRACK)
    assert error_of(response)[::2] == (
        400,
        f'The "{option}" query parameter isn\'t supported when Change Tracking is enabled.',
    )


def test_delta_token_older_than_the_retention_is_expired(org: Org) -> None:
    delta = initial(org)
    org.clock.advance(7 * 24 * 3600 - 60)
    assert org.http.get(delta, headers=TRACK).status_code == 200
    org.clock.advance(120)
    assert error_of(org.http.get(delta, headers=TRACK)) == (
        400,
        "0x80044352",
        "Version stamp associated with the client has expired. Please perform a full sync.",
    )


def test_expire_change_tracking_expires_outstanding_tokens_only(org: Org) -> None:
    delta = initial(org)
    assert org.http.post(f"{org.root}/_sandbox/expire-change-tracking").status_code == 200
    assert error_of(org.http.get(delta, headers=TRACK))[1] == "0x80044352"
    fresh = initial(org)
    assert org.http.get(fresh, headers=TRACK).status_code == 200


def test_malformed_delta_token_is_refused(org: Org) -> None:
    response = org.http.get("leads", params={"$select": "firstname", "$deltatoken": "12!not a date"}, headers=TRACK)
    assert error_of(response)[:2] == (400, "0x80040203")


def test_delta_rows_tell_integration_writes_from_user_writes(org: Org) -> None:
    delta = f"leads?$select=firstname,_modifiedby_value&$deltatoken={initial(org).split('$deltatoken=')[1]}"
    by_user = org.lead(firstname="Typed in Dynamics")
    org.http.post("leads", json={"firstname": "From the sync", "lastname": "S", "companyname": "c"})
    body = org.http.get(delta, headers=TRACK).json()
    by_row = {row["firstname"]: row["_modifiedby_value"] for row in body["value"]}
    assert by_row == {"Typed in Dynamics": UI_USER_ID, "From the sync": INTEGRATION_USER_ID}
    assert body["value"][0]["leadid"] == by_user


def test_contacts_are_tracked_too() -> None:
    with running(seed_contacts=2) as org:
        _, delta, _ = read_all(org, "contacts?$select=emailaddress1", "odata.track-changes")
        org.sandbox.create("contact", {"lastname": "Added", "emailaddress1": "added@example.com"})
        body = org.http.get(delta, headers=TRACK).json()
        assert [row["emailaddress1"] for row in body["value"]] == ["added@example.com"]


@pytest.mark.parametrize("answer", ["empty", "no_link"])
def test_a_delta_answer_fault_drops_the_body_or_the_new_delta_link(org: Org, answer: str) -> None:
    delta = initial(org)
    [first, *_] = [row["leadid"] for row in org.sandbox.rows("lead")]
    org.sandbox.update("lead", first, {"firstname": "Late"})
    org.sandbox.set_faults([{"method": "GET", "path": "/leads$", "times": 2, "action": {"delta_answer": answer}}])
    plain = org.http.get("leads", params={"$select": "firstname"})
    assert plain.status_code == 200  # not a delta read: served normally
    assert "value" in plain.json()
    response = org.http.get(delta, headers=TRACK)
    assert response.status_code == 200
    if answer == "empty":
        assert response.content == b""
    else:
        body = response.json()
        assert [row["firstname"] for row in body["value"]] == ["Late"]
        assert "@odata.deltaLink" not in body
        assert "@odata.nextLink" not in body
    again = org.http.get(delta, headers=TRACK).json()  # the old link still reads the same window
    assert [row["firstname"] for row in again["value"]] == ["Late"]
    assert "@odata.deltaLink" in again


def test_the_dataverse_fault_flag_knows_delta_answer() -> None:
    rule = parse_fault("path=/leads;delta_answer=no_link;times=3")
    assert (rule.action.kind, rule.action.value, rule.times) == ("delta_answer", "no_link", 3)
