"""Tokens, service protection, fault injection, the admin API and the command-line options of
the Dataverse simulator."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sandbox.dataverse import UI_USER_ID, PluginRule, add_arguments, default_plugin_rules, options_from_args
from tests.sandbox.test_dataverse_api import Org, error_of, running

TOKEN_PATH = "/00000000-0000-0000-0000-0000000000aa/oauth2/v2.0/token"
FORM = {
    "grant_type": "client_credentials",
    "client_id": "sandbox-client-id",
    "client_secret": "sandbox-client-secret",
    "scope": "https://contoso.crm.dynamics.com/.default",
}


@pytest.fixture
def org() -> Iterator[Org]:
    with running(seed_leads=3) as org:
        yield org


# ---------------------------------------------------------------------------- tokens


def test_api_without_a_bearer_token_is_401_with_a_challenge(org: Org) -> None:
    response = httpx.get(f"{org.api}/leads")
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer authorization_uri=")
    assert "error=" not in challenge
    wrong = httpx.get(f"{org.api}/leads", headers={"Authorization": "Bearer not-a-token"})
    assert wrong.status_code == 401
    assert "error=invalid_token" in wrong.headers["WWW-Authenticate"]


def test_token_endpoint_issues_an_entra_shaped_token_the_api_accepts_until_it_expires(org: Org) -> None:
    response = httpx.post(f"{org.root}{TOKEN_PATH}", data=FORM)
    assert response.status_code == 200
    body = response.json()
    assert (body["token_type"], body["expires_in"], body["ext_expires_in"]) == ("Bearer", 3600, 3600)
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert httpx.get(f"{org.api}/WhoAmI", headers=bearer).status_code == 200
    org.clock.advance(3599)
    assert httpx.get(f"{org.api}/WhoAmI", headers=bearer).status_code == 200
    org.clock.advance(2)
    expired = httpx.get(f"{org.api}/WhoAmI", headers=bearer)
    assert expired.status_code == 401
    assert "error=invalid_token" in expired.headers["WWW-Authenticate"]
    assert httpx.get(f"{org.api}/WhoAmI", headers={"Authorization": "Bearer sandbox-token"}).status_code == 200


@pytest.mark.parametrize(
    ("change", "status", "error", "code"),
    [
        ({"client_secret": "wrong"}, 401, "invalid_client", 7000215),
        ({"client_id": "someone-else"}, 401, "invalid_client", 700016),
        ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
        ({"scope": "https://contoso.crm.dynamics.com/user_impersonation"}, 400, "invalid_scope", 1002012),
        ({"scope": ""}, 400, "invalid_request", 900144),
    ],
)
def test_token_endpoint_refuses_bad_requests_like_entra(
    org: Org, change: dict[str, str], status: int, error: str, code: int
) -> None:
    response = httpx.post(f"{org.root}{TOKEN_PATH}", data={**FORM, **change})
    body = response.json()
    assert (response.status_code, body["error"], body["error_codes"]) == (status, error, [code])
    assert body["error_description"].startswith(f"AADSTS{code}:")


# ---------------------------------------------------------------------------- service protection


def test_request_count_limit_answers_429_with_retry_after_until_the_window_moves() -> None:
    with running(max_requests=3, window_seconds=300) as org:
        for _ in range(3):
            assert org.http.get("WhoAmI").status_code == 200
        refused = org.http.get("WhoAmI")
        assert error_of(refused) == (
            429,
            "0x80072322",
            "Number of requests exceeded the limit of 3 over time window of 300 seconds.",
        )
        assert refused.headers["Retry-After"] == "300"
        org.clock.advance(120)
        assert org.http.get("WhoAmI").headers["Retry-After"] == "180"
        org.clock.advance(181)
        assert org.http.get("WhoAmI").status_code == 200
        assert org.sandbox.stats.to_json()["throttled"] == 2


def test_concurrency_limit_refuses_the_request_over_the_limit_at_once() -> None:
    entered, release = threading.Event(), threading.Event()

    def held(_: float) -> None:  # the delay fault parks the first request here
        entered.set()
        release.wait(10)

    with running(max_concurrent=1, sleep=held) as org:
        org.sandbox.set_faults([{"method": "GET", "path": "/leads$", "times": 1, "action": {"delay": 1}}])
        slow: list[int] = []
        worker = threading.Thread(target=lambda: slow.append(org.http.get("leads").status_code))
        worker.start()
        assert entered.wait(10)
        refused = org.http.get("WhoAmI")
        release.set()
        worker.join(10)
        assert error_of(refused) == (429, "0x80072326", "Number of concurrent requests exceeded the limit of 1.")
        assert refused.headers["Retry-After"] == "1"
        assert slow == [200]
        assert org.http.get("WhoAmI").status_code == 200


def test_execution_time_limit_answers_429_after_slow_requests() -> None:
    with running(max_execution_ms=40) as org:
        org.sandbox.set_faults([{"method": "GET", "path": "/leads$", "times": 1, "action": {"delay": 0.06}}])
        assert org.http.get("leads").status_code == 200
        status, code, message = error_of(org.http.get("WhoAmI"))
        assert (status, code) == (429, "0x80072321")
        assert message.startswith("Combined execution time of incoming requests exceeded limit of 40 milliseconds")
        org.clock.advance(301)
        assert org.http.get("WhoAmI").status_code == 200


def test_no_limits_turns_service_protection_off() -> None:
    with running(limits=False, max_requests=1) as org:
        assert [org.http.get("WhoAmI").status_code for _ in range(3)] == [200, 200, 200]


# ---------------------------------------------------------------------------- faults


def test_injected_429_uses_the_service_protection_answer_then_clears(org: Org) -> None:
    rule = {"method": "GET", "path": "/leads", "times": 1, "action": {"status": 429, "retry_after": 2}}
    assert org.http.post(f"{org.root}/_sandbox/faults", json={"rules": [rule]}).status_code == 200
    assert org.http.post("leads", json={"lastname": "x", "companyname": "c"}).status_code == 204  # method differs
    throttled = org.http.get("leads")
    assert error_of(throttled)[:2] == (429, "0x80072322")
    assert throttled.headers["Retry-After"] == "2"
    assert org.http.get("leads").status_code == 200
    assert org.http.get(f"{org.root}/_sandbox/faults").json() == {"rules": []}


def test_injected_server_errors_count_down_and_forever_rules_stay(org: Org) -> None:
    org.sandbox.set_faults(
        [
            {"method": None, "path": "WhoAmI", "times": 2, "action": {"status": 503}},
            {
                "path": "EntityDefinitions",
                "times": -1,
                "action": {"status": 500, "body": {"error": {"code": "x", "message": "boom"}}},
            },
        ]
    )
    assert [org.http.get("WhoAmI").status_code for _ in range(3)] == [503, 503, 200]
    assert [error_of(org.http.get("EntityDefinitions"))[1] for _ in range(3)] == ["x", "x", "x"]
    rules = org.http.get(f"{org.root}/_sandbox/faults").json()["rules"]
    assert [(r["path"], r["times"]) for r in rules] == [("EntityDefinitions", -1)]
    assert org.http.delete(f"{org.root}/_sandbox/faults").json() == {"rules": []}
    assert org.http.get("EntityDefinitions").status_code == 200
    assert org.sandbox.stats.to_json()["faults"] == 5


def test_injected_drop_closes_the_connection_without_an_answer(org: Org) -> None:
    org.sandbox.set_faults([{"path": "/leads", "action": {"drop": True}}])
    with pytest.raises(httpx.TransportError):
        org.http.get("leads")
    assert org.http.get("leads").status_code == 200


def test_injected_delay_goes_through_the_injected_sleep() -> None:
    slept: list[float] = []
    with running(sleep=slept.append) as org:
        org.sandbox.set_faults([{"path": "/leads", "action": {"delay": 1.5}}])
        assert org.http.get("leads").status_code == 200
        assert slept == [1.5]


@pytest.mark.parametrize(
    "payload",
    [
        {"rules": [{"path": "(", "action": {"status": 500}}]},
        {"rules": [{"path": "x", "action": {}}]},
        {"rules": [{"path": "x", "times": 0, "action": {"status": 500}}]},
        {"rules": "not a list"},
    ],
)
def test_bad_fault_rules_are_refused_and_change_nothing(org: Org, payload: object) -> None:
    org.sandbox.set_faults([{"path": "keep", "times": -1, "action": {"status": 500}}])
    response = org.http.post(f"{org.root}/_sandbox/faults", json=payload)
    assert response.status_code == 400
    assert [r["path"] for r in org.http.get(f"{org.root}/_sandbox/faults").json()["rules"]] == ["keep"]


# ---------------------------------------------------------------------------- admin API


def test_admin_api_acts_as_a_dynamics_user_and_is_not_counted(org: Org) -> None:
    admin = f"{org.root}/_sandbox"
    created = org.http.post(
        f"{admin}/leads", json={"lastname": "UI", "companyname": "c", "emailaddress1": "ui@example.com"}
    )
    assert created.status_code == 201
    lead_id = created.json()["leadid"]
    assert created.json()["_modifiedby_value"] == UI_USER_ID
    patched = org.http.patch(f"{admin}/leads({lead_id})", json={"jobtitle": "Edited"})
    assert patched.json()["jobtitle"] == "Edited"
    contact_id = org.http.post(f"{admin}/leads({lead_id})/qualify").json()["contactid"]
    assert org.http.get(f"{admin}/contacts({contact_id})").json()["_originatingleadid_value"] == lead_id
    refused = org.http.post(f"{admin}/leads", json={"lastname": "x" * 51, "companyname": "c"})
    assert error_of(refused)[:2] == (400, "0x80044331")
    assert org.http.delete(f"{admin}/contacts({contact_id})").status_code == 204
    stats = org.http.get(f"{admin}/stats").json()
    assert (stats["requests"], stats["writes"]) == (0, {})
    assert stats["user_writes"] == {
        "leads": {"create": 1, "update": 2, "qualify": 1},
        "contacts": {"create": 1, "delete": 1},
    }


def test_admin_reset_empties_reseeds_and_clears(org: Org) -> None:
    org.lead()
    org.sandbox.set_faults([{"path": "x", "times": -1, "action": {"status": 500}}])
    org.http.get("WhoAmI")
    assert org.http.post(f"{org.root}/_sandbox/reset").status_code == 200
    assert sorted(r["emailaddress1"] for r in org.sandbox.rows("lead")) == [
        f"seed.lead.{i}@example.com" for i in (1, 2, 3)
    ]
    assert org.sandbox.faults.to_json() == []
    assert org.sandbox.stats.to_json()["requests"] == 0


def test_seeded_people_match_the_marketo_seed() -> None:
    with running(seed_leads=51, seed_contacts=1) as org:
        [lead] = org.sandbox.find("lead", emailaddress1="seed.lead.51@example.com")
        assert {k: lead[k] for k in ("firstname", "lastname", "companyname", "jobtitle", "telephone1", "subject")} == {
            "firstname": "Seed51",
            "lastname": "Lead51",
            "companyname": "Seed Co 1",
            "jobtitle": "Buyer",
            "telephone1": "+1 555 010051",
            "subject": "Seeded lead",
        }
        [contact] = org.sandbox.rows("contact")
        assert (contact["emailaddress1"], contact["firstname"], contact["lastname"]) == (
            "seed.contact.1@example.com",
            "Seed1",
            "Contact1",
        )


# ---------------------------------------------------------------------------- command line


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed-leads", type=int, default=0)
    parser.add_argument("--seed-contacts", type=int, default=0)
    parser.add_argument("--no-limits", action="store_true")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_options_from_args_honours_shared_and_dataverse_flags(tmp_path: Path) -> None:
    defaults = options_from_args(parse([]))
    assert (defaults.limits, defaults.seed_leads, defaults.plugin_rules) == (True, 0, default_plugin_rules())
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([{"kind": "required", "entity": "contact", "column": "jobtitle", "message": "Title!"}]))
    options = options_from_args(
        parse(
            [
                "--no-limits",
                "--seed-leads=4",
                "--seed-contacts=2",
                f"--dataverse-plugin-rules={rules}",
                "--dataverse-change-retention=60",
                "--dataverse-max-requests=10",
            ]
        )
    )
    assert (options.limits, options.seed_leads, options.seed_contacts) == (False, 4, 2)
    assert options.plugin_rules == [PluginRule("required", "contact", "jobtitle", "Title!")]
    assert (options.change_retention, options.max_requests) == (60.0, 10)
    assert options_from_args(parse(["--dataverse-plugin-rules=none"])).plugin_rules == []
