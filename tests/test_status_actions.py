"""The operators' actions through their two front ends, over a Table store on Azurite: the status
page's HTTP function (``POST /api/status/actions/{action}``, behind the admin key) and the
commands (``failures``, ``resync``, ``reset-cursor``, ``export``, ``migrate-state``). What each action does to the sync
is ``tests/unit/test_operate.py``'s; here: the forms, the second steps, the answers, the audit."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import azure.functions as func
import pytest

import function_app
from sync_core.__main__ import main
from sync_core.core.models import Cursor, Direction, EntityType, Link, RecordFailure, person_failure_key
from sync_core.cycle.engine import dataverse_cursor
from sync_core.cycle.operate_cli import (
    export_main,
    failures_main,
    migrate_state_main,
    reset_cursor_main,
    resync_main,
)
from sync_core.state import TableStateStore
from sync_core.status.view import get_status_page
from sync_core.wiring.services import close_services
from tests.test_state_contract import seed_one_partition_layout

pytestmark = pytest.mark.azurite

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
FORM = "application/x-www-form-urlencoded"
ORPHAN = person_failure_key(Direction.TO_DYNAMICS, 1001)  # its person is not linked (any more)
OTHER = person_failure_key(Direction.TO_MARKETO, 2002)


def _failure(key: str, marketo_id: int, now: datetime) -> RecordFailure:
    return RecordFailure(
        key=key,
        direction=Direction(key.split(":")[0]),
        entity=EntityType.LEAD,
        marketo_id=marketo_id,
        reasons=["=jobtitle: longer than the 100 characters Dynamics allows"],
        code="validation",
        fields=["title"],
        first_failed_at=now - timedelta(minutes=10),
        last_failed_at=now - timedelta(minutes=10),
        next_retry_at=now + timedelta(minutes=5),
    )


@pytest.fixture
def env(
    azurite_connection_string: str, table_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, str], TableStateStore]:
    values = {
        "MARKETO_BASE_URL": "http://127.0.0.1:9",
        "MARKETO_CLIENT_ID": "id",
        "MARKETO_CLIENT_SECRET": "secret",
        "DATAVERSE_URL": "http://127.0.0.1:9",
        "SYNC_TABLES_CONNECTION": azurite_connection_string,
        "SYNC_TABLE_PREFIX": table_prefix,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    store = TableStateStore.from_connection_string(azurite_connection_string, prefix=table_prefix)
    now = datetime.now(UTC)
    store.upsert_failures([_failure(ORPHAN, 1001, now), _failure(OTHER, 2002, now)])
    store.put_cursor(Cursor(name=dataverse_cursor(EntityType.LEAD), value="https://org/leads?$deltatoken=1"))
    yield values, store
    close_services()


def _post(action: str, form: dict[str, str], *, accept: str = BROWSER, **headers: str) -> func.HttpResponse:
    request = func.HttpRequest(
        method="POST",
        url=f"/api/status/actions/{action}",
        params={"code": "the-admin-key"},
        route_params={"action": action},
        headers={"Content-Type": FORM, "Accept": accept, **headers},
        body=urlencode(form).encode(),
    )
    response: func.HttpResponse = function_app.status_action.build().get_user_function()(request)
    return response


def test_the_actions_function_is_a_post_behind_the_admin_key() -> None:
    binding = json.loads(function_app.status_action.build().get_function_json())["bindings"][0]
    assert (binding["route"], binding["methods"], binding["authLevel"]) == (
        "status/actions/{action}",
        ["POST"],
        "ADMIN",
    )


def test_retry_from_the_page_resolves_the_failure_and_a_second_click_has_nothing_to_do(env: tuple) -> None:
    _, store = env
    first = _post("retry", {"key": ORPHAN})
    again = _post("retry", {"key": ORPHAN}, accept="application/json")
    assert first.status_code == 200
    assert b'data-outcome="done"' in first.get_body()
    assert b'href="../../status?code=the-admin-key"' in first.get_body()  # back, with the key
    assert ORPHAN not in store.get_failures([ORPHAN, OTHER])
    assert (again.status_code, json.loads(again.get_body())["outcome"]) == (200, "nothing to do")
    assert [(a.action, a.via, a.by) for a in store.list_actions()][-1] == ("retry", "page", "admin key")


def test_dismiss_asks_for_a_reason_first_then_records_who_and_why(env: tuple) -> None:
    _, store = env
    ask = _post("dismiss", {"key": OTHER})
    assert ask.status_code == 200
    assert b'name="reason"' in ask.get_body()
    assert b'action="dismiss?code=the-admin-key"' in ask.get_body()
    assert OTHER in store.get_failures([OTHER])  # nothing done yet
    assert _post("dismiss", {"key": OTHER}, accept="application/json").status_code == 400
    done = _post("dismiss", {"key": OTHER, "reason": "test person"}, **{"X-MS-CLIENT-PRINCIPAL-NAME": "ana@contoso"})
    assert done.status_code == 200
    assert store.get_failures([OTHER]) == {}
    [action] = store.list_actions(limit=1)
    assert (action.action, action.target, action.by, action.reason) == ("dismiss", OTHER, "ana@contoso", "test person")


def test_reset_cursor_needs_its_confirmation_and_the_page_then_says_who_reset_it(env: tuple) -> None:
    values, store = env
    ask = _post("reset-cursor", {"feed": "lead"})
    assert ask.status_code == 200
    assert b"Yes, reset the lead cursor" in ask.get_body()
    assert store.get_cursor(dataverse_cursor(EntityType.LEAD)) is not None
    assert _post("reset-cursor", {"feed": "lead", "confirm": "contact"}, accept="application/json").status_code == 400
    done = _post("reset-cursor", {"feed": "lead", "confirm": "lead"})
    assert done.status_code == 200
    assert store.get_cursor(dataverse_cursor(EntityType.LEAD)) is None
    page = get_status_page(values, accept=BROWSER, query={"format": "json"})
    assert any(
        detail.startswith("cursor lead reset by admin key at ") for detail in json.loads(page.body)["health"]["details"]
    )


def test_export_answers_a_csv_file_without_person_values(env: tuple) -> None:
    answer = _post("export", {"kind": "failures"})
    assert answer.status_code == 200
    assert answer.mimetype == "text/csv"
    assert answer.headers["Content-Disposition"].startswith('attachment; filename="sync-failures-')
    rows = list(csv.DictReader(io.StringIO(answer.get_body().decode())))
    assert sorted(row["key"] for row in rows) == sorted([ORPHAN, OTHER])
    assert all(row["reasons"].startswith("'=") for row in rows)  # a spreadsheet does not run it


@pytest.mark.parametrize(
    "headers",
    [{"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example", "Host": "sync.azurewebsites.net"}],
)
def test_a_cross_site_post_is_refused_and_changes_nothing(env: tuple, headers: dict[str, str]) -> None:
    _, store = env
    answer = _post("dismiss", {"key": OTHER, "reason": "forged"}, **headers)
    assert answer.status_code == 403
    assert OTHER in store.get_failures([OTHER])
    assert store.list_actions() == []


def test_bad_requests_are_refused_with_a_reason_and_nothing_written(env: tuple) -> None:
    _, store = env
    cases = [
        ("explode", {}),
        ("retry", {}),
        ("resync", {"marketo_id": "12a"}),
        ("resync", {}),
        ("resync", {"dynamics_id": "someone@example.com"}),
        ("dismiss", {"key": "someone@example.com", "reason": "typed in the wrong box"}),
        ("reset-cursor", {"feed": "accounts"}),
        ("export", {"kind": "links"}),
    ]
    for action, form in cases:
        answer = _post(action, form, accept="application/json")
        assert 400 <= answer.status_code < 500, (action, form)
        assert json.loads(answer.get_body())["error"]
    assert store.list_actions() == []


def test_a_script_may_post_json_and_gets_json(env: tuple) -> None:
    _, store = env
    request = func.HttpRequest(
        method="POST",
        url="/api/status/actions/dismiss",
        params={},
        route_params={"action": "dismiss"},
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        body=json.dumps({"key": OTHER, "reason": "scripted"}).encode(),
    )
    answer = function_app.status_action.build().get_user_function()(request)
    assert (answer.status_code, json.loads(answer.get_body())["outcome"]) == (200, "done")
    assert store.list_actions(limit=1)[0].reason == "scripted"


def test_the_page_shows_the_buttons_with_the_key_and_runs_the_checks_on_demand(env: tuple) -> None:
    values, _ = env
    plain = get_status_page(values, accept=BROWSER, query={"code": "k&y"})
    assert 'action="status/actions/retry?code=k%26y"' in plain.body
    assert "Run setup checks" in plain.body
    assert 'id="checks"' not in plain.body
    assert "form-action 'self'" in plain.headers["Content-Security-Policy"]
    checked = get_status_page(values, accept=BROWSER, query={"checks": "1", "format": "json"})
    checks = json.loads(checked.body)["checks"]
    statuses = {check["name"]: check["status"] for check in checks["checks"]}
    assert checks["ok"] is False
    assert statuses["marketo.reachable"] == "fail"  # nothing listens on port 9
    assert statuses["tables"] == "pass"


# -- the commands -------------------------------------------------------------------------------


def test_failures_commands_retry_and_dismiss_are_idempotent(env: tuple) -> None:
    values, store = env
    out = io.StringIO()
    assert failures_main(["retry", ORPHAN, "--by", "ops"], environ=values, stdout=out) == 0
    assert json.loads(out.getvalue())["outcome"] == "done"
    out = io.StringIO()
    assert failures_main(["retry", ORPHAN], environ=values, stdout=out) == 0
    assert json.loads(out.getvalue())["outcome"] == "nothing to do"
    out = io.StringIO()
    assert failures_main(["dismiss", OTHER, "--reason", "known test record"], environ=values, stdout=out) == 0
    assert json.loads(out.getvalue())["outcome"] == "done"
    assert store.list_failures() == []
    with pytest.raises(SystemExit):
        failures_main(["retry"], environ=values)  # keys or --all
    err = io.StringIO()
    assert failures_main(["retry", "ana@example.com"], environ=values, stderr=err) == 2
    assert "is not a failure key" in json.loads(err.getvalue())["error"]
    actions = store.list_actions()
    assert [(a.action, a.via) for a in actions] == [("dismiss", "cli"), ("retry", "cli"), ("retry", "cli")]
    assert actions[-1].by == "ops"


def test_reset_cursor_command_needs_yes_and_twice_is_once(env: tuple) -> None:
    values, store = env
    with pytest.raises(SystemExit) as refused:
        reset_cursor_main(["lead"], environ=values)
    assert refused.value.code == 2
    assert store.get_cursor(dataverse_cursor(EntityType.LEAD)) is not None
    for expected in ("done", "nothing to do"):
        out = io.StringIO()
        assert reset_cursor_main(["lead", "--yes"], environ=values, stdout=out) == 0
        assert json.loads(out.getvalue())["outcome"] == expected
    assert store.get_cursor(dataverse_cursor(EntityType.LEAD)) is None


def test_resync_command_of_an_unlinked_person_is_refused(env: tuple) -> None:
    values, _ = env
    out = io.StringIO()
    assert resync_main(["--marketo-id", "424242"], environ=values, stdout=out) == 1
    assert json.loads(out.getvalue())["outcome"] == "refused"


def test_export_command_writes_the_csv_file(env: tuple, tmp_path: Path) -> None:
    values, _ = env
    target = tmp_path / "failures.csv"
    err = io.StringIO()
    assert export_main(["failures", "--out", str(target)], environ=values, stderr=err) == 0
    assert json.loads(err.getvalue())["details"]["rows"] == 2
    assert target.read_text(encoding="utf-8").startswith("key,direction,entity,marketo_id")


def test_migrate_state_waits_for_a_running_cycle_then_moves_the_links_page_by_page(env: tuple) -> None:
    values, store = env
    links = [
        Link(
            marketo_id=marketo_id, entity=EntityType.LEAD, dataverse_id=f"{marketo_id:08d}-0000-0000-0000-000000000000"
        )
        for marketo_id in range(1, 601)
    ]
    seed_one_partition_layout(store, links)  # 1,200 rows: two pages
    lease = store.acquire_lease("a-cycle", now=datetime.now(UTC), duration=timedelta(minutes=5))
    out = io.StringIO()
    assert migrate_state_main(["--pages", "1"], environ=values, stdout=out) == 3
    assert json.loads(out.getvalue())["outcome"] == "busy"
    store.release_lease(lease)

    answers = []
    for _ in range(3):
        out = io.StringIO()
        assert migrate_state_main(["--pages", "1"], environ=values, stdout=out) == 0
        answers.append(json.loads(out.getvalue()))
    assert [(a["outcome"], a["details"]["moved"], a["details"]["done"]) for a in answers] == [
        ("done", 1000, False),
        ("done", 200, True),
        ("nothing to do", 0, True),
    ]
    fresh = TableStateStore.from_connection_string(values["SYNC_TABLES_CONNECTION"], prefix=values["SYNC_TABLE_PREFIX"])
    assert fresh.get_links_by_marketo_ids(range(1, 601)) == {link.marketo_id: link for link in links}
    assert [action.action for action in store.list_actions()].count("migrate-state") == 4


def test_python_dash_m_sync_core_failures_runs_as_a_command(env: tuple) -> None:
    values, _ = env
    done = subprocess.run(
        [sys.executable, "-m", "sync_core", "failures", "retry", "--all"],
        env={**values, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["details"]["resolved"] == [ORPHAN, OTHER]


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "failures"],
        ["failures", "dismiss", OTHER, "--reason", "x"],
        ["reset-cursor", "lead", "--yes"],
    ],
)
def test_the_commands_answer_a_configuration_error_with_one_json_line(
    env: tuple, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    monkeypatch.setenv("SYNC_TABLES_CONNECTION", "AccountName=x;garbage")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("{")]
    assert json.loads(line)["setting"] == "SYNC_TABLES_CONNECTION"
