"""Marketo simulator envelope: request ids, HTTP 200 with success:false, string codes, sizes, gzip."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.marketo import MarketoOptions
from tests.sandbox._marketo_support import Marketo, error_code


@pytest.fixture(scope="module")
def marketo() -> Iterator[Marketo]:
    with Marketo.running(MarketoOptions(limits=False, seed_leads=3)) as m:
        yield m


def test_success_envelope_has_request_id_result_success_and_nothing_empty(marketo: Marketo) -> None:
    response = marketo.request("GET", "/rest/v1/lead/1.json")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json;charset=UTF-8"
    body = response.json()
    assert list(body) == ["requestId", "result", "success"]
    assert re.fullmatch(r"[0-9a-f]+#[0-9a-f]+", body["requestId"])
    assert body["success"] is True


def test_request_ids_differ_between_calls(marketo: Marketo) -> None:
    ids = {marketo.get("/rest/v1/leads/describe.json")["requestId"] for _ in range(5)}

    assert len(ids) == 5


JSON = {"Content-Type": "application/json"}
ONE = {"filterType": "id", "filterValues": "1"}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "code"),
    [
        ("GET", "/rest/v1/leads/delete.json", {}, "605"),
        ("PUT", "/rest/v1/leads.json", {}, "605"),
        ("GET", "/rest/v1/no/such/thing.json", {}, "610"),
        ("POST", "/rest/v1/leads.json", {"content": b"{not json", "headers": JSON}, "609"),
        ("POST", "/rest/v1/leads.json", {"content": b"input=1", "headers": {"Content-Type": "text/plain"}}, "612"),
        ("POST", "/rest/v1/leads.json", {"json": {"action": "createOnly"}}, "701"),
        ("GET", "/rest/v1/leads.json", {"params": {"filterType": "email"}}, "701"),
        ("GET", "/rest/v1/activities/pagingtoken.json", {"params": {"sinceDatetime": "last tuesday"}}, "1003"),
        ("GET", "/rest/v1/leads.json", {"params": {**ONE, "batchSize": "301"}}, "1003"),
        ("GET", "/rest/v1/leads.json", {"params": {**ONE, "batchSize": "x"}}, "1001"),
    ],
    ids=[
        "605-get-on-post-only",
        "605-put",
        "610-unknown-path",
        "609-bad-json",
        "612-content-type",
        "701-no-input",
        "701-no-filter-values",
        "1003-bad-date",
        "1003-batch-over-300",
        "1001-batch-not-integer",
    ],
)
def test_response_level_errors_are_http_200_with_success_false_and_a_string_code(
    marketo: Marketo, method: str, path: str, kwargs: dict[str, Any], code: str
) -> None:
    response = marketo.request(method, path, **kwargs)

    assert response.status_code == 200
    body = response.json()
    assert error_code(body) == code
    assert isinstance(body["errors"][0]["message"], str)
    assert "result" not in body


def test_bodies_of_1kib_or_more_are_gzipped_only_when_the_client_accepts_it(marketo: Marketo) -> None:
    zipped = marketo.request("GET", "/rest/v1/leads/describe.json", headers={"Accept-Encoding": "gzip"})
    plain = marketo.request("GET", "/rest/v1/leads/describe.json", headers={"Accept-Encoding": "identity"})
    small = marketo.request("GET", "/rest/v1/lead/1.json", headers={"Accept-Encoding": "gzip"})

    assert zipped.headers["content-encoding"] == "gzip"
    assert "content-encoding" not in plain.headers
    assert "content-encoding" not in small.headers
    assert zipped.json() == {**plain.json(), "requestId": zipped.json()["requestId"]}


def test_uri_over_8_kib_answers_414(marketo: Marketo) -> None:
    response = marketo.request("GET", "/rest/v1/leads.json", params={"filterType": "id", "filterValues": "1" * 9000})

    assert response.status_code == 414


def test_body_over_1_mib_answers_413(marketo: Marketo) -> None:
    big = {"input": [{"email": "a@example.com", "address": "y" * 2**20}]}

    response = marketo.request("POST", "/rest/v1/leads.json", json=big)

    assert response.status_code == 413


def test_asset_programs_probe_answers_success_with_the_no_assets_warning(marketo: Marketo) -> None:
    body = marketo.request("GET", "/rest/asset/v1/programs.json").json()

    assert body["success"] is True
    assert body["errors"] == []
    assert body["warnings"] == ["No assets found for the given search criteria."]
    assert "result" not in body
