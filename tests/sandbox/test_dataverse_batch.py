"""``$batch`` in the Dataverse simulator (reference B7): stop at the first failure or continue
on error, atomic change sets, Content-ID references, and the refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.sandbox.test_dataverse_api import Org, running

Part = tuple[str, str, dict[str, Any] | None]  # method, url, JSON body


@pytest.fixture
def org() -> Iterator[Org]:
    with running(seed_leads=2) as org:
        yield org


def request_part(method: str, url: str, body: dict[str, Any] | None, content_id: int | None = None) -> str:
    head = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    if content_id is not None:
        head += f"Content-ID: {content_id}\r\n"
    inner = f"{method} {url} HTTP/1.1\r\n"
    if body is not None:
        inner += "Content-Type: application/json; type=entry\r\n\r\n" + json.dumps(body)
    else:
        inner += "\r\n"
    return head + "\r\n" + inner + "\r\n"


def batch_body(items: list[Part | list[Part]]) -> str:
    chunks = []
    content_id = 0
    for item in items:
        chunks.append("--batch_AAA\r\n")
        if isinstance(item, list):
            chunks.append('Content-Type: multipart/mixed; boundary="changeset_BBB"\r\n\r\n')
            for method, url, body in item:
                content_id += 1
                chunks.append("--changeset_BBB\r\n" + request_part(method, url, body, content_id))
            chunks.append("--changeset_BBB--\r\n")
        else:
            chunks.append(request_part(*item))
    chunks.append("--batch_AAA--\r\n")
    return "".join(chunks)


def send(org: Org, items: list[Part | list[Part]], *, keep_going: bool = False) -> tuple[int, list[tuple[int, str]]]:
    """Post a batch; return its status and each embedded response's (status, body)."""
    headers = {"Content-Type": 'multipart/mixed; boundary="batch_AAA"'}
    if keep_going:
        headers["Prefer"] = "odata.continue-on-error"
    response = org.http.post("$batch", content=batch_body(items), headers=headers)
    assert response.headers["Content-Type"].startswith("multipart/mixed; boundary=batchresponse_")
    statuses = []
    for block in response.text.split("HTTP/1.1 ")[1:]:
        status = int(block[:3])
        body = block.split("\r\n\r\n", 1)[1].split("\r\n--", 1)[0].strip()
        statuses.append((status, body))
    return response.status_code, statuses


def lead(name: str, **extra: Any) -> dict[str, Any]:
    return {"lastname": name, "companyname": "c", **extra}


def names(org: Org) -> list[str]:
    return sorted(row["lastname"] for row in org.sandbox.rows("lead"))


def test_batch_stops_at_the_first_failure_and_answers_400_with_that_part(org: Org) -> None:
    status, parts = send(
        org,
        [
            ("POST", "/api/data/v9.2/leads", lead("First")),
            ("POST", "leads", lead("x" * 51)),
            ("POST", "leads", lead("Never")),
        ],
    )
    assert status == 400
    [(part_status, body)] = parts
    assert part_status == 400
    assert json.loads(body)["error"]["code"] == "0x80044331"
    assert names(org) == ["First", "Lead1", "Lead2"]  # parts before the failure stay written


def test_batch_with_continue_on_error_answers_every_part(org: Org) -> None:
    status, parts = send(
        org,
        [
            ("POST", f"{org.api}/leads", lead("First")),
            ("POST", "leads", lead("Bad", emailaddress1="nope")),
            ("GET", "leads?$select=lastname&$filter=lastname eq 'First'", None),
            ("POST", "leads", lead("Last")),
        ],
        keep_going=True,
    )
    assert status == 200
    assert [p[0] for p in parts] == [204, 400, 200, 204]
    assert json.loads(parts[1][1])["error"]["code"] == "0x80040265"
    assert [row["lastname"] for row in json.loads(parts[2][1])["value"]] == ["First"]
    assert names(org) == ["First", "Last", "Lead1", "Lead2"]


def test_change_set_is_atomic(org: Org) -> None:
    status, parts = send(
        org,
        [
            [("POST", "leads", lead("InSet1")), ("POST", "leads", lead("InSet2", leadsourcecode=99))],
            ("POST", "leads", lead("After")),
        ],
        keep_going=True,
    )
    assert status == 200
    assert [p[0] for p in parts] == [400, 204]  # the failed change set answers with its failing part
    assert json.loads(parts[0][1])["error"]["code"] == "0x8004431A"
    assert names(org) == ["After", "Lead1", "Lead2"]
    assert org.sandbox.stats.to_json()["writes"] == {"leads": {"create": 1}}  # rolled-back writes are not counted


def test_change_set_content_id_references_earlier_parts(org: Org) -> None:
    status, parts = send(
        org,
        [
            [
                ("POST", "leads", lead("Referenced")),
                ("PATCH", "$1", {"jobtitle": "Set via $1"}),
                ("POST", "contacts", {"lastname": "C", "originatingleadid@odata.bind": "$1"}),
            ]
        ],
    )
    assert (status, [p[0] for p in parts]) == (200, [204, 204, 204])
    [row] = org.sandbox.find("lead", lastname="Referenced")
    assert row["jobtitle"] == "Set via $1"
    assert org.sandbox.rows("contact")[0]["_originatingleadid_value"] == row["leadid"]


@pytest.mark.parametrize(
    ("change_set", "message"),
    [
        ([("GET", "leads", None)], "A change set cannot contain GET requests."),
        (
            [("PATCH", "$2", {"jobtitle": "x"}), ("POST", "leads", lead("Late"))],
            "Content-ID Reference: '$2' does not exist",
        ),
    ],
)
def test_change_set_refusals(org: Org, change_set: list[Part], message: str) -> None:
    status, [(part_status, body)] = send(org, [change_set])
    assert (status, part_status) == (400, 400)
    assert message in json.loads(body)["error"]["message"]
    assert names(org) == ["Lead1", "Lead2"]


def test_batch_over_the_request_limit_is_refused_whole() -> None:
    with running(max_batch_requests=2) as org:
        body = batch_body([("POST", "leads", lead(f"L{i}")) for i in range(3)])
        response = org.http.post(
            "$batch", content=body, headers={"Content-Type": 'multipart/mixed; boundary="batch_AAA"'}
        )
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "Number of requests in a batch exceeded the limit of 2."
        assert org.sandbox.rows("lead") == []


def test_batch_counts_as_one_call_with_its_operations_listed(org: Org) -> None:
    send(org, [("POST", "leads", lead("A")), ("GET", "leads?$top=1", None)])
    stats = org.sandbox.stats.to_json()
    assert stats["calls"] == {"$batch": {"POST": 1}}
    assert stats["batch_operations"] == {"leads": {"create": 1, "query": 1}}
