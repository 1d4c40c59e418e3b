"""Marketo simulator identity: client-credentials tokens, their lifetime, and the bearer check."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from sandbox.marketo import MarketoOptions
from tests.sandbox._marketo_support import CREDENTIALS, FakeClock, Marketo, error_code


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def marketo(clock: FakeClock) -> Iterator[Marketo]:
    with Marketo.running(MarketoOptions(token_ttl=3600, seed_leads=1), clock=clock) as m:
        yield m


def test_token_from_query_has_the_real_shape_and_no_store_headers(marketo: Marketo) -> None:
    response = marketo.http.get("/identity/oauth/token", params=CREDENTIALS)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json;charset=UTF-8"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:int", body["access_token"])
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3599
    assert body["scope"] == "sandbox-api@example.com"


def test_token_from_a_form_body_is_accepted(marketo: Marketo) -> None:
    response = marketo.http.post("/identity/oauth/token", data=CREDENTIALS)

    assert response.status_code == 200
    assert response.json()["access_token"].endswith(":int")


def test_asking_again_before_expiry_returns_the_same_token_with_its_remaining_lifetime(
    marketo: Marketo, clock: FakeClock
) -> None:
    first = marketo.http.get("/identity/oauth/token", params=CREDENTIALS).json()
    clock.advance(100)
    second = marketo.http.get("/identity/oauth/token", params=CREDENTIALS).json()

    assert second["access_token"] == first["access_token"]
    assert second["expires_in"] == 3499


def test_expired_token_answers_602_and_identity_then_issues_a_new_one(marketo: Marketo, clock: FakeClock) -> None:
    old = marketo.token()
    clock.advance(3600)

    body = marketo.get("/rest/v1/lead/1.json")
    new = marketo.token(fresh=True)

    assert error_code(body) == "602"
    assert body["errors"][0]["message"] == "Access token expired"
    assert new != old
    assert marketo.get("/rest/v1/lead/1.json")["success"] is True


@pytest.mark.parametrize(
    "params",
    [
        {**CREDENTIALS, "client_secret": "wrong"},
        {**CREDENTIALS, "client_id": "someone-else"},
        {"grant_type": "client_credentials"},
    ],
    ids=["bad-secret", "bad-id", "no-credentials"],
)
def test_bad_client_credentials_answer_401_invalid_client(marketo: Marketo, params: dict[str, str]) -> None:
    response = marketo.http.get("/identity/oauth/token", params=params)

    assert response.status_code == 401
    assert response.json() == {"error": "invalid_client", "error_description": "Bad client credentials"}


@pytest.mark.parametrize(
    ("grant", "error"), [(None, "invalid_request"), ("password", "unsupported_grant_type")], ids=["missing", "other"]
)
def test_grant_type_other_than_client_credentials_answers_400(marketo: Marketo, grant: str | None, error: str) -> None:
    params = {k: v for k, v in CREDENTIALS.items() if k != "grant_type"}
    if grant:
        params["grant_type"] = grant

    response = marketo.http.get("/identity/oauth/token", params=params)

    assert response.status_code == 400
    assert response.json()["error"] == error


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({}, {}),
        ({"Authorization": "Bearer 00000000-0000-0000-0000-000000000000:int"}, {}),
        ({"Authorization": "Basic c2FuZGJveDpzZWNyZXQ="}, {}),
        ({}, {"access_token": "__TOKEN__"}),
    ],
    ids=["no-token", "unknown-token", "not-bearer", "query-token-retired"],
)
def test_missing_or_invalid_bearer_answers_601_in_an_http_200_envelope(
    marketo: Marketo, headers: dict[str, str], params: dict[str, str]
) -> None:
    params = {k: marketo.token() if v == "__TOKEN__" else v for k, v in params.items()}

    response = marketo.http.get("/rest/v1/lead/1.json", headers=headers, params=params)

    assert response.status_code == 200
    assert error_code(response.json()) == "601"


def test_query_token_is_accepted_when_the_option_allows_it() -> None:
    with Marketo.running(MarketoOptions(allow_query_token=True, seed_leads=1)) as marketo:
        response = marketo.http.get("/rest/v1/lead/1.json", params={"access_token": marketo.token()})

    assert response.json()["success"] is True
    assert response.json()["result"][0]["id"] == 1


def test_identity_calls_are_not_charged_to_usage(marketo: Marketo) -> None:
    for _ in range(3):
        marketo.token(fresh=True)

    usage = marketo.get("/rest/v1/stats/usage.json")

    assert usage["result"][0]["total"] == 1  # the usage call itself
    assert marketo.sandbox.stats()["identity"] == 3
