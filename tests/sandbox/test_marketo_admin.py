"""Marketo simulator admin API, scripted faults, command line and TLS."""

from __future__ import annotations

import argparse
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import marketo as marketo_module
from sandbox._tls import LocalCA
from sandbox.marketo import MarketoOptions, MarketoSandbox, parse_spec
from tests.sandbox._marketo_support import CREDENTIALS, Marketo, error_code

LEAD = "/rest/v1/lead/1.json"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def slept() -> list[float]:
    return []


@pytest.fixture
def marketo(slept: list[float]) -> Iterator[Marketo]:
    with Marketo.running(MarketoOptions(seed_leads=2), sleep=slept.append) as m:
        yield m


def _arm(marketo: Marketo, *rules: dict[str, Any]) -> httpx.Response:
    return marketo.http.post("/_sandbox/faults", json={"rules": list(rules)})


def _outcome(marketo: Marketo, path: str = LEAD) -> str:
    body = marketo.get(path)
    return "ok" if body["success"] else error_code(body)


# ---- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [("606", "Max rate limit '100' exceeded with in '20' secs"), ("608", "API Temporarily Unavailable"), ("604", None)],
)
def test_marketo_error_fault_answers_http_200_with_that_code(marketo: Marketo, code: str, message: str | None) -> None:
    _arm(marketo, {"path": "lead/", "action": {"marketo_error": code}})

    response = marketo.request("GET", LEAD)

    assert response.status_code == 200
    assert error_code(response.json()) == code
    if message:
        assert response.json()["errors"][0]["message"] == message
    assert _outcome(marketo) == "ok"


def test_status_fault_answers_an_nginx_page_with_retry_after(marketo: Marketo) -> None:
    _arm(marketo, {"method": "GET", "path": "lead/", "action": {"status": 502, "retry_after": 3}})

    response = marketo.request("GET", LEAD)

    assert response.status_code == 502
    assert response.headers["retry-after"] == "3"
    assert "502 Bad Gateway" in response.text


def test_delay_fault_waits_then_serves_normally(marketo: Marketo, slept: list[float]) -> None:
    _arm(marketo, {"path": "lead/", "action": {"delay": 1.5}})

    assert _outcome(marketo) == "ok"
    assert slept == [1.5]


def test_drop_fault_closes_the_connection_without_an_answer(marketo: Marketo) -> None:
    _arm(marketo, {"path": "lead/", "action": {"drop": True}})

    with pytest.raises(httpx.TransportError):
        marketo.request("GET", LEAD)
    assert _outcome(marketo) == "ok"


def test_rules_apply_in_order_each_for_its_times_and_can_be_listed_and_cleared(marketo: Marketo) -> None:
    _arm(
        marketo,
        {"path": "lead/", "times": 2, "action": {"marketo_error": "606"}},
        {"path": "lead/", "times": 1, "action": {"marketo_error": "608"}},
        {"method": "POST", "path": "leads", "times": -1, "action": {"marketo_error": "611"}},
    )

    outcomes = [_outcome(marketo) for _ in range(4)]
    listed = marketo.http.get("/_sandbox/faults").json()["rules"]
    still = [error_code(marketo.post("/rest/v1/leads.json", {"input": [{"email": "a@x.io"}]})) for _ in range(3)]
    cleared = marketo.http.delete("/_sandbox/faults").json()

    assert outcomes == ["606", "606", "608", "ok"]
    assert listed == [{"method": "POST", "path": "leads", "times": -1, "action": {"marketo_error": "611"}}]
    assert still == ["611"] * 3
    assert cleared == {"rules": []}
    assert marketo.post("/rest/v1/leads.json", {"input": [{"email": "a@x.io"}]})["success"] is True


def test_faults_armed_at_start_fire_in_each_instance_made_from_the_options() -> None:
    options = MarketoOptions(seed_leads=1, faults=[parse_spec("path=lead/;error=615;times=1")])
    for _ in range(2):
        with Marketo.running(options) as marketo:
            assert [_outcome(marketo) for _ in range(2)] == ["615", "ok"]


@pytest.mark.parametrize(
    "rule",
    [
        {"path": "(", "action": {"drop": True}},
        {"path": "x", "action": {}},
        {"path": "x", "action": {"drop": True, "delay": 1}},
        {"path": "x", "times": 0, "action": {"drop": True}},
        {"path": "x", "action": {"status": 42}},
        {"path": "x", "action": {"delay": -1}},
        {"path": "x", "colour": "red", "action": {"drop": True}},
    ],
    ids=["bad-regex", "no-action", "two-actions", "zero-times", "bad-status", "negative-delay", "unknown-key"],
)
def test_a_bad_rule_is_refused_with_400_and_nothing_is_armed(marketo: Marketo, rule: dict[str, Any]) -> None:
    response = _arm(marketo, {"path": "lead/", "action": {"drop": True}}, rule)

    assert response.status_code == 400
    assert response.json()["error"]
    assert marketo.http.get("/_sandbox/faults").json() == {"rules": []}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "path=leadchanges;error=606;times=2",
            {"method": None, "path": "leadchanges", "times": 2, "action": {"marketo_error": "606"}},
        ),
        (
            "method=post;path=leads;status=502;retry_after=5",
            {"method": "POST", "path": "leads", "times": 1, "action": {"status": 502, "retry_after": 5.0}},
        ),
        ("delay=0.5;times=-1", {"method": None, "path": "", "times": -1, "action": {"delay": 0.5}}),
        ("drop", {"method": None, "path": "", "times": 1, "action": {"drop": True}}),
        (
            '{"path": "lead/", "action": {"marketo_error": "601"}}',
            {"method": None, "path": "lead/", "times": 1, "action": {"marketo_error": "601"}},
        ),
    ],
)
def test_fault_spec_short_form_and_json(spec: str, expected: dict[str, Any]) -> None:
    assert parse_spec(spec).as_json() == expected


@pytest.mark.parametrize("spec", ["error=606;colour=red", "times=x;drop", "{not json", "status=abc"])
def test_a_bad_fault_spec_is_a_clear_error(spec: str) -> None:
    with pytest.raises(ValueError, match="fault"):
        parse_spec(spec)


# ---- admin: reset, stats, leads as a UI user ------------------------------------------------


def test_admin_calls_are_not_charged_and_stats_count_served_calls_per_endpoint(marketo: Marketo) -> None:
    for _ in range(150):
        marketo.http.get("/_sandbox/stats")
    for _ in range(2):
        marketo.post("/rest/v1/leads.json", {"input": [{"email": "a@x.io"}]})
    marketo.get(LEAD)

    stats = marketo.http.get("/_sandbox/stats").json()

    assert stats["endpoints"] == {
        "GET /identity/oauth/token": 1,
        "GET /rest/v1/lead/{id}.json": 1,
        "POST /rest/v1/leads.json": 2,
    }
    assert (stats["total"], stats["identity"], stats["rest"], stats["usageToday"]) == (4, 1, 3, 3)


def test_reset_empties_the_database_and_counters_but_keeps_options_and_tokens(marketo: Marketo) -> None:
    marketo.get(LEAD)

    reset = marketo.http.post("/_sandbox/reset").json()

    assert reset == {"reset": True, "leads": 0}
    assert marketo.get(LEAD)["result"] == []
    assert marketo.sandbox.stats()["endpoints"] == {"GET /rest/v1/lead/{id}.json": 1}
    assert marketo.http.post("/_sandbox/reset", params={"seed": "true"}).json()["leads"] == 2


def test_admin_leads_act_as_a_marketo_user(marketo: Marketo) -> None:
    created = marketo.http.post("/_sandbox/leads", json={"email": "ui@example.com", "firstName": "Ui"})
    lead_id = created.json()["id"]
    edited = marketo.http.patch(f"/_sandbox/leads/{lead_id}", params={"source": "Sales Insight"}, json={"title": "VP"})

    assert created.status_code == 201
    assert edited.json() == {"id": lead_id, "changed": ["title"]}
    assert marketo.http.get(f"/_sandbox/leads/{lead_id}").json()["title"] == "VP"
    (new_lead,) = marketo.sandbox.activities(lead_id=lead_id, type_id=12)
    assert {"name": "Source Type", "value": "Marketo UI"} in new_lead["attributes"]
    (change,) = marketo.sandbox.activities(lead_id=lead_id, type_id=13)
    assert {"name": "Source", "value": "Sales Insight"} in change["attributes"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/_sandbox/leads", {"email": "not-an-email"}, 400),
        ("POST", "/_sandbox/leads", {"shoeSize": 9}, 400),
        ("PATCH", "/_sandbox/leads/999", {"title": "VP"}, 404),
        ("PATCH", "/_sandbox/leads/1", {"numberOfEmployees": "many"}, 400),
        ("GET", "/_sandbox/nothing", None, 404),
    ],
)
def test_admin_refuses_bad_input_and_changes_nothing(
    marketo: Marketo, method: str, path: str, body: Any, status: int
) -> None:
    before = marketo.sandbox.activities()

    response = marketo.http.request(method, path, json=body)

    assert response.status_code == status
    assert response.json()["error"]
    assert marketo.sandbox.activities() == before


# ---- command line and TLS ---------------------------------------------------------------------


def test_options_from_args_honour_the_shared_and_marketo_flags() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-limits", action="store_true")
    parser.add_argument("--seed-leads", type=int, default=0)
    marketo_module.add_arguments(parser)

    args = parser.parse_args(
        [
            *("--no-limits", "--seed-leads", "7", "--marketo-token-ttl", "60", "--marketo-daily-quota", "10"),
            *("--marketo-fault", "path=lead/;error=606", "--marketo-allow-query-token"),
        ]
    )
    options = marketo_module.options_from_args(args)

    assert (options.limits, options.seed_leads, options.token_ttl, options.daily_quota) == (False, 7, 60, 10)
    assert options.allow_query_token is True
    assert [rule.as_json()["action"] for rule in options.faults] == [{"marketo_error": "606"}]  # type: ignore[union-attr]


def test_serve_command_seeds_logs_requests_and_arms_faults(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    command = [sys.executable, "-m", "sandbox", "serve", "--seed-leads", "3", "--request-log", str(log)]
    command += ["--marketo-fault", "path=lead/2;error=608;times=1"]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            ready = json.loads(process.stdout.readline())
            with httpx.Client(base_url=ready["marketo"], timeout=10) as http:
                token = http.get("/identity/oauth/token", params=CREDENTIALS).json()["access_token"]
                headers = {"Authorization": f"Bearer {token}"}
                faulted = http.get("/rest/v1/lead/2.json", headers=headers).json()
                lead = http.get("/rest/v1/lead/3.json", headers=headers).json()
        finally:
            process.terminate()
            process.wait(10)

    assert error_code(faulted) == "608"
    assert lead["result"][0]["email"] == "seed.lead.3@example.com"
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["service"], e["method"], e["path"], e["status"]) for e in logged][-2:] == [
        ("marketo", "GET", "/rest/v1/lead/2.json", 200),
        ("marketo", "GET", "/rest/v1/lead/3.json", 200),
    ]


def test_tls_serves_https_trusted_through_the_local_ca(tmp_path: Path) -> None:
    ca = LocalCA()
    bundle = ca.write_ca_bundle(tmp_path / "ca.pem")
    with MarketoSandbox(MarketoOptions()).serve(tls=ca.server_context()) as server:
        assert server.base_url.startswith("https://")
        with httpx.Client(
            base_url=server.base_url, verify=ssl.create_default_context(cafile=bundle), timeout=10
        ) as http:
            response = http.get("/identity/oauth/token", params=CREDENTIALS)

    assert response.status_code == 200
    assert response.json()["token_type"] == "bearer"
