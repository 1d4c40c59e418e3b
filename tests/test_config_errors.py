"""Misconfiguration (issue 16): every command answers one JSON line {"error", "setting", "hint"} on
stderr and exit 2, never a traceback; the timer logs the same line and fails the execution."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.functions.timer import TimerRequest

import function_app
from demo.sandbox_env import sandbox_settings
from sandbox import SandboxServers
from sync_core.__main__ import main
from sync_core.core.errors import ConfigError
from sync_core.wiring.preflight import config_error_line
from sync_core.wiring.services import close_services

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["run-once", "status", "host"]
UNREACHABLE_TABLES = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "TableEndpoint=http://127.0.0.1:1/devstoreaccount1;"
)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServers]:
    servers = SandboxServers().start()
    yield servers
    servers.stop()


@pytest.fixture
def env(
    sandbox: SandboxServers, azurite_connection_string: str, table_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    good = sandbox_settings(
        sandbox.marketo_url,
        sandbox.dataverse_url,
        tables_connection=azurite_connection_string,
        table_prefix=table_prefix,
    )
    for name, value in good.items():
        monkeypatch.setenv(name, value)
    yield good
    close_services()


def _one_json_line(stderr: str) -> dict[str, Any]:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 1, stderr
    answer = json.loads(lines[0])
    assert set(answer) == {"error", "setting", "hint"}
    assert answer["hint"]
    return dict(answer)


def _refused(command: str, capsys: pytest.CaptureFixture[str], *options: str) -> dict[str, Any]:
    argv = [command, *options] + (["--port", "0", "--no-timers"] if command == "host" else [])
    assert main(argv) == 2
    return _one_json_line(capsys.readouterr().err)


CASES: list[tuple[str, dict[str, str], str, str, list[str]]] = [
    # id, settings changed, the setting named, a word of the error, commands
    (
        "tables-malformed",
        {"SYNC_TABLES_CONNECTION": "AccountName=x;garbage"},
        "SYNC_TABLES_CONNECTION",
        "connection",
        COMMANDS,
    ),
    (
        "tables-unreachable",
        {"SYNC_TABLES_CONNECTION": UNREACHABLE_TABLES},
        "SYNC_TABLES_CONNECTION",
        "cannot be used",
        COMMANDS,
    ),
    (
        "tables-endpoint-malformed",
        {"SYNC_TABLES_CONNECTION": "", "SYNC_TABLES_ENDPOINT": "table.example"},
        "SYNC_TABLES_ENDPOINT",
        "URL",
        COMMANDS,
    ),
    ("dataverse-not-https", {"DATAVERSE_URL": "http://contoso.crm.dynamics.com"}, "DATAVERSE_URL", "https", COMMANDS),
    (
        "dataverse-unreachable",
        {"DATAVERSE_URL": "http://127.0.0.1:1"},
        "DATAVERSE_URL",
        "cannot be reached",
        ["run-once", "host"],
    ),
    (
        "marketo-secret-wrong",
        {"MARKETO_CLIENT_SECRET": "wrong"},
        "MARKETO_CLIENT_SECRET",
        "rejected",
        ["run-once", "host"],
    ),
    ("field-map-invalid", {"SYNC_FIELD_MAP": '{"fields": [{"marketo": 1}]}'}, "SYNC_FIELD_MAP", "fields", COMMANDS),
    ("field-map-not-json", {"SYNC_FIELD_MAP": "{nope"}, "SYNC_FIELD_MAP", "JSON", COMMANDS),
]


@pytest.mark.azurite
@pytest.mark.parametrize(("changed", "setting", "word", "commands"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_misconfiguration_is_one_json_line_and_exit_2(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    changed: dict[str, str],
    setting: str,
    word: str,
    commands: list[str],
) -> None:
    for name, value in changed.items():
        monkeypatch.setenv(name, value)
    for command in commands:
        answer = _refused(command, capsys)
        assert setting in answer["setting"], (command, answer)
        assert word in answer["error"], (command, answer)


@pytest.mark.azurite
def test_a_dataverse_url_that_is_not_a_dataverse_org_is_named(
    env: dict[str, str], sandbox: SandboxServers, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATAVERSE_URL", sandbox.marketo_url)  # an http server, but not Dataverse
    for command in ("run-once", "host"):
        answer = _refused(command, capsys)
        assert answer["setting"] == "DATAVERSE_URL"
        assert "not answer as a Dataverse organisation" in answer["error"]


@pytest.mark.azurite
def test_the_command_line_prints_no_traceback(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sync_core", "run-once"],
        env={**env, "MARKETO_CLIENT_SECRET": "wrong", "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert _one_json_line(done.stderr)["setting"] == "MARKETO_CLIENT_ID, MARKETO_CLIENT_SECRET"


@pytest.mark.azurite
@pytest.mark.parametrize(
    "changed",
    [{"MARKETO_CLIENT_SECRET": "wrong"}, {"SYNC_FIELD_MAP": "{nope"}, {"MARKETO_BASE_URL": ""}],
    ids=["marketo-secret-wrong", "field-map-not-json", "setting-missing"],
)
def test_the_timer_logs_the_same_line_and_fails_the_execution(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, changed: dict[str, str]
) -> None:
    for name, value in changed.items():
        monkeypatch.setenv(name, value)
    timer = function_app.sync_cycle.build().get_user_function()
    with caplog.at_level(logging.ERROR, logger="function_app"), pytest.raises(ConfigError):
        timer(TimerRequest(past_due=False))
    lines = [r.getMessage() for r in caplog.records if r.name == "function_app" and r.levelno == logging.ERROR]
    assert len(lines) == 1
    answer = json.loads(lines[0].split(" ", 4)[-1])
    assert set(answer) == {"error", "setting", "hint"}


def test_help_needs_no_configuration(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MARKETO_BASE_URL", raising=False)
    with pytest.raises(SystemExit) as done:
        main(["status", "--help"])
    assert done.value.code == 0


def test_the_line_names_every_setting_of_every_problem() -> None:
    line = json.loads(
        config_error_line(ConfigError(["DATAVERSE_CLIENT_ID: missing", "SYNC_SCHEDULE: must be six fields"]))
    )
    assert line["setting"] == "DATAVERSE_CLIENT_ID, SYNC_SCHEDULE"
    assert "DATAVERSE_CLIENT_ID: missing" in line["error"]
