"""``python -m sync_core check``: each check passes on a healthy setup and fails, with its fix, when
its piece is broken (one at a time), against both simulators over HTTP and Azurite."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from sandbox import DataverseOptions, MarketoOptions
from sync_core.__main__ import main
from tests.e2e.conftest import field_map_json

pytestmark = pytest.mark.azurite

NAMES = [
    "keyvault",
    "marketo.reachable",
    "marketo.fields",
    "marketo.activity_type",
    "dataverse.reachable",
    "dataverse.privileges",
    "dataverse.change_tracking",
    "fieldmap",
    "syncfilter",
    "tables",
]


def run_check(capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["check", *options])
    out, err = capsys.readouterr()
    return code, out, err


def checks_by_name(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, dict[str, Any]]]:
    code, out, err = run_check(capsys, "--json")
    assert out, err
    report = json.loads(out)
    assert [check["name"] for check in report["checks"]] == NAMES
    assert report["ok"] is (code == 0)
    return code, {check["name"]: check for check in report["checks"]}


def test_healthy_setup_passes_every_check(world_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    world_factory()
    code, out, err = run_check(capsys)
    assert code == 0, out
    lines = [line for line in out.splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")]
    assert len(lines) == len(NAMES)
    assert all(line.startswith("PASS") for line in lines), out
    assert out.rstrip().endswith("all checks passed")
    assert err == ""


def test_json_shape(world_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    world_factory()
    code, checks = checks_by_name(capsys)
    assert code == 0
    for check in checks.values():
        assert set(check) == {"name", "title", "status", "detail", "hint"}
        assert check["status"] == "pass"
        assert check["hint"] is None


def test_nothing_is_written_to_either_service(world_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    world = world_factory()
    rows = {name: len(world.dataverse.rows(name)) for name in ("leads", "contacts")}
    code, _, _ = run_check(capsys)
    assert code == 0
    assert world.api_creates() == 0
    assert not any(world.dataverse.stats.to_json()["writes"].values())
    assert {name: len(world.dataverse.rows(name)) for name in ("leads", "contacts")} == rows


BROKEN: dict[str, tuple[dict[str, Any], str, str]] = {
    # check name -> (world settings, what the detail says, what the fix says)
    "marketo.reachable": ({"MARKETO_CLIENT_SECRET": "not-the-secret"}, "MARKETO", "LaunchPoint"),
    "marketo.fields": ({"marketo": MarketoOptions(missing_fields=["microsoftId"])}, "microsoftId missing", "Field"),
    "marketo.activity_type": (
        {"marketo": MarketoOptions(missing_activity_types=["microsoftSyncFailed"])},
        "microsoftSyncFailed",
        "Marketo Custom Activities",
    ),
    "dataverse.reachable": ({"DATAVERSE_STATIC_TOKEN": "not-the-token"}, "DATAVERSE", "security role"),
    "dataverse.privileges": (
        {"dataverse": DataverseOptions(denied_privileges=["prvWriteLead"])},
        "prvWriteLead missing",
        "security role",
    ),
    "dataverse.change_tracking": (
        {"dataverse": DataverseOptions(change_tracking_off=["contact"])},
        "off for contact",
        "Track changes",
    ),
    "fieldmap": (
        {
            "SYNC_FIELD_MAP": field_map_json(
                {"marketo": "title", "lead": "no_such_column", "contact": "jobtitle"}, drop=("title",)
            )
        },
        "no_such_column",
        "SYNC_FIELD_MAP",
    ),
    "syncfilter": (
        {"MARKETO_SYNC_FILTER_FIELD": "noSuchField", "DATAVERSE_SYNC_FILTER": "cr123_segment ne 'test'"},
        "noSuchField missing in Marketo",
        "MARKETO_SYNC_FILTER_FIELD",
    ),
    "tables": ({"SYNC_TABLES_CONNECTION": "<azurite on a closed port>"}, "SYNC_TABLES_CONNECTION", "Table Storage"),
}
SKIPPED = {
    "marketo.reachable": {"marketo.fields", "marketo.activity_type", "fieldmap", "syncfilter"},
    "dataverse.reachable": {"dataverse.privileges", "dataverse.change_tracking", "fieldmap", "syncfilter"},
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_each_broken_piece_fails_its_check_with_a_fix(
    broken: str, world_factory: Any, azurite_connection_string: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, detail, hint = BROKEN[broken]
    if broken == "tables":  # a well-formed connection string to where no Table service listens
        settings = {"SYNC_TABLES_CONNECTION": re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:9", azurite_connection_string)}
    world_factory(**settings)
    code, checks = checks_by_name(capsys)
    assert code == 1
    assert checks[broken]["status"] == "fail"
    assert detail in checks[broken]["detail"]
    assert hint in (checks[broken]["hint"] or ""), checks[broken]
    skipped = SKIPPED.get(broken, set())
    for name, check in checks.items():
        if name == broken:
            continue
        expected = {"skip"} if name in skipped else {"pass"}
        assert check["status"] in expected, (name, check)


def test_broken_setup_text_output(world_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    world_factory(dataverse=DataverseOptions(change_tracking_off=["lead"]))
    code, out, _ = run_check(capsys)
    assert code == 1
    assert "FAIL  Dataverse change tracking on for lead and contact: off for lead" in out
    assert "      fix: turn on 'Track changes'" in out
    assert out.rstrip().endswith("1 check(s) failed")


def test_unresolved_key_vault_reference_is_told_apart_from_a_wrong_secret(
    world_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = "@Microsoft.KeyVault(SecretUri=https://kv-sync.vault.azure.net/secrets/marketo-secret/)"
    world_factory(MARKETO_CLIENT_SECRET=reference)
    code, checks = checks_by_name(capsys)
    assert code == 1
    assert checks["keyvault"]["status"] == "fail"
    assert "MARKETO_CLIENT_SECRET" in checks["keyvault"]["detail"]
    assert "Key Vault Secrets User" in checks["keyvault"]["hint"]
    assert {check["status"] for name, check in checks.items() if name != "keyvault"} == {"skip"}
    # Other commands tell it the same way, as a configuration error (exit 2), not as a wrong secret.
    capsys.readouterr()
    assert main(["status"]) == 2
    line = json.loads(capsys.readouterr().err)
    assert line["setting"] == "MARKETO_CLIENT_SECRET"
    assert "unresolved Key Vault reference" in line["error"]
    assert "Key Vault Secrets User" in line["hint"]


def test_a_configuration_error_stops_it_before_checking(
    world_factory: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    world_factory()
    monkeypatch.delenv("MARKETO_BASE_URL")
    code, out, err = run_check(capsys, "--json")
    assert code == 2
    assert out == ""
    line = json.loads(err)
    assert set(line) == {"error", "setting", "hint"}
    assert line["setting"] == "MARKETO_BASE_URL"


def test_a_denied_privilege_is_the_documented_403(world_factory: Any) -> None:
    world = world_factory(dataverse=DataverseOptions(denied_privileges=["prvWriteLead"]))
    lead_id = world.dynamics_lead(1)
    headers = {"Authorization": "Bearer sandbox-token", "If-Match": "*"}
    url = f"{world.sandbox.dataverse_url}/api/data/v9.2/leads({lead_id})"
    answer = httpx.patch(url, json={"firstname": "X"}, headers=headers)
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "0x80040220"
    assert httpx.get(url, headers=headers).status_code == 200  # reading is still allowed


def test_flow_step_privileges_are_optional_and_named_and_an_owner_change_needs_assign(
    world_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    world_factory()
    _, healthy = checks_by_name(capsys)
    assert "flow steps" not in healthy["dataverse.privileges"]["detail"]
    world = world_factory(dataverse=DataverseOptions(denied_privileges=["prvAssignContact", "prvCreateActivity"]))
    code, checks = checks_by_name(capsys)
    assert code == 0  # the sync itself needs neither
    detail = checks["dataverse.privileges"]["detail"]
    assert "change-owner (prvAssignContact)" in detail
    assert "create-task (prvCreateActivity)" in detail
    assert "campaign" not in detail
    contact_id = world.dynamics_contact(1)
    headers = {"Authorization": "Bearer sandbox-token", "If-Match": "*"}
    url = f"{world.sandbox.dataverse_url}/api/data/v9.2/contacts({contact_id})"
    assert httpx.patch(url, json={"firstname": "X"}, headers=headers).status_code == 204
    owner = {"ownerid@odata.bind": "/systemusers(8d9f5c1e-1b71-4b7a-9f0e-5a5e2f1c0003)"}
    refused = httpx.patch(url, json=owner, headers=headers)
    assert refused.status_code == 403
    assert "prvAssignContact" in refused.json()["error"]["message"]


def test_a_mapped_field_of_the_wrong_type_fails_the_field_map_check(
    world_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = field_map_json(
        {"marketo": "title", "lead": "jobtitle", "contact": "jobtitle", "type": "boolean"}, drop=("title",)
    )
    world_factory(SYNC_FIELD_MAP=spec)
    code, checks = checks_by_name(capsys)
    assert code == 1
    assert checks["fieldmap"]["status"] == "fail"
    assert "Marketo type string cannot hold a boolean" in checks["fieldmap"]["detail"]
    assert "lead.jobtitle is String, which cannot hold a boolean" in checks["fieldmap"]["detail"]
