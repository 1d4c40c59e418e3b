"""The status view: the model built from a store, its JSON / HTML / text renderings, content
negotiation, the HTTP function and the ``status`` command."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from typing import Any

import azure.functions as func
import pytest

import function_app
from sync_core.core.errors import TransientError
from sync_core.core.models import ActionRecord, EntityType, Link, RunReport
from sync_core.privacy.prune import prune_state
from sync_core.state import MemoryStateStore, TableStateStore
from sync_core.status import view as status_module
from sync_core.status.html import DASH, SERIES_COLOURS, _nice_ceiling
from sync_core.status.models import DriftItem, HealthLevel, Total
from sync_core.status.view import (
    build_status,
    choose_format,
    get_status_page,
    render_html,
    render_json,
    render_text,
    status_main,
)
from tests import status_data
from tests.status_data import NOW

SCHEDULE = "0 */5 * * * *"


def _filled_store() -> MemoryStateStore:
    store = MemoryStateStore()
    status_data.fill(store)
    return store


def _report(minutes_ago: float, outcome: str = "ok", **report: Any) -> RunReport:
    started = NOW - timedelta(minutes=minutes_ago)
    return RunReport(run_id=f"r{minutes_ago}", started_at=started, outcome=outcome, report=report)


def _env(connection_string: str, prefix: str) -> dict[str, str]:
    return {
        "MARKETO_BASE_URL": "http://127.0.0.1:9",
        "MARKETO_CLIENT_ID": "id",
        "MARKETO_CLIENT_SECRET": "secret",
        "DATAVERSE_URL": "http://127.0.0.1:9",
        "SYNC_TABLES_CONNECTION": connection_string,
        "SYNC_TABLE_PREFIX": prefix,
        "SYNC_SCHEDULE": SCHEDULE,
    }


# -- the model -------------------------------------------------------------------------------


def test_cycles_show_records_each_way_api_calls_and_duration_newest_first() -> None:
    status = build_status(_filled_store(), now=NOW, schedule=SCHEDULE)

    assert [cycle.run_id for cycle in status.cycles] == [f"run-{i:02d}" for i in range(status_data.CYCLES)]
    newest = status.cycles[0]
    expected = status_data.cycle_report(0).as_json()
    assert newest.written.dynamics == expected["written"]["dynamics"]
    assert newest.written.marketo == expected["written"]["marketo"]
    assert newest.pulled.marketo == expected["pulled"]["marketo"]
    assert (newest.api_calls.marketo, newest.api_calls.dataverse) == (3, 2)
    assert newest.api_calls.by_operation == {"get_lead_changes": 1}
    assert newest.seconds == pytest.approx(2.5)
    assert status.cycles[status_data.FAILED_CYCLE].failed
    assert status.last_cycle_at == newest.started_at


def test_totals_count_open_and_due_failures_and_collisions_of_the_last_day() -> None:
    status = build_status(_filled_store(), now=NOW, schedule=SCHEDULE)

    assert status.totals.failures_open.count == 2
    assert status.totals.failures_due.count == 1
    assert status.totals.collisions_24h.count == 4  # the one from two days ago is listed, not counted
    assert len(status.collisions) == 5
    assert [failure.due for failure in status.failures] == [False, True]
    assert status.failures[0].reasons == [status_data.HOSTILE_REASON]


def test_empty_store_says_no_cycle_yet_with_backlog_and_drift_unknown() -> None:
    status = build_status(MemoryStateStore(), now=NOW, schedule=SCHEDULE)

    assert status.health.headline == "No cycle yet"
    assert status.health.level is HealthLevel.WARNING
    assert not status.backlog.known
    assert not status.drift.known
    assert status.cycles == []
    assert "No cycle has run yet." in render_html(status)
    assert "Backlog: unknown" in render_text(status)


@pytest.mark.parametrize(
    ("reports", "failures", "now", "headline", "level"),
    [
        ([_report(1), _report(6)], False, NOW, "OK", HealthLevel.OK),
        ([_report(1, outcome="lease_held"), _report(6)], False, NOW, "OK", HealthLevel.OK),
        ([_report(1, outcome="partial")], True, NOW, "Failures open", HealthLevel.WARNING),
        ([_report(1, outcome="transient"), _report(6)], True, NOW, "Last cycle failed", HealthLevel.FAILING),
        ([_report(1, outcome="quota")], False, NOW, "Last cycle failed", HealthLevel.FAILING),
        ([_report(1, drift=[{"field": "jobtitle"}])], False, NOW, "Field-map drift", HealthLevel.WARNING),
        # The last cycle started at 12:01:30; the third 5-minute occurrence after it is 12:15:00.
        ([_report(1)], False, NOW.replace(minute=15, second=0), "OK", HealthLevel.OK),
        ([_report(1)], True, NOW.replace(minute=15, second=1), "No cycle for 13 minutes", HealthLevel.FAILING),
        ([_report(1)], False, NOW + timedelta(hours=5), "No cycle for 5 hours", HealthLevel.FAILING),
    ],
)
def test_health_headline(
    reports: list[RunReport], failures: bool, now: datetime, headline: str, level: HealthLevel
) -> None:
    store = MemoryStateStore()
    for report in reports:
        store.add_run_report(report)
    if failures:
        store.upsert_failures(status_data.failures()[:1])

    health = build_status(store, now=now, schedule=SCHEDULE).health

    assert (health.headline, health.level) == (headline, level)


def test_failed_last_cycle_names_its_outcome_and_the_last_completed_one() -> None:
    store = MemoryStateStore()
    store.add_run_report(_report(6))
    store.add_run_report(_report(1, outcome="transient"))

    details = build_status(store, now=NOW, schedule=SCHEDULE).health.details

    assert details[0] == (
        "the last cycle ended with outcome 'transient' — it retries by itself on the next tick; "
        "last completed cycle 2025-03-14 11:56:30 UTC"
    )


def test_a_failed_cycle_shows_its_reason_and_whether_a_person_must_act() -> None:
    store = MemoryStateStore()
    store.add_run_report(_report(6))
    store.add_run_report(_report(1, outcome="error", error="configuration: MARKETO_CLIENT_SECRET refused"))

    status = build_status(store, now=NOW, schedule=SCHEDULE)

    assert status.health.details[0].startswith(
        "the last cycle ended with outcome 'error' (configuration: MARKETO_CLIENT_SECRET refused); last completed"
    )
    assert status.cycles[0].reason == "configuration: MARKETO_CLIENT_SECRET refused"
    assert status.cycles[1].reason is None
    assert 'title="configuration: MARKETO_CLIENT_SECRET refused"' in render_html(status)


def test_unreadable_schedule_skips_the_staleness_check_and_says_so() -> None:
    store = MemoryStateStore()
    store.add_run_report(_report(600))

    health = build_status(store, now=NOW, schedule="0 */5 * * * nonsense").health

    assert health.headline == "OK"
    assert any("could not be read" in detail for detail in health.details)


@pytest.mark.parametrize(
    ("backlog", "total", "parts"),
    [
        (7, 7, {}),
        ({"marketo": 1, "dynamics": 2}, 3, {"marketo": 1, "dynamics": 2}),
        ({"total": 10, "lead": 4}, 10, {"lead": 4}),
        ({"marketo": "many", "dynamics": 5}, 5, {"dynamics": 5}),
    ],
)
def test_backlog_is_read_from_the_latest_report_in_any_reasonable_shape(
    backlog: Any, total: int, parts: dict[str, int]
) -> None:
    store = MemoryStateStore()
    store.add_run_report(_report(1, backlog=backlog))

    result = build_status(store, now=NOW, schedule=SCHEDULE).backlog

    assert (result.known, result.total, result.parts, result.run_id) == (True, total, parts, "r1")


@pytest.mark.parametrize("backlog", [None, "lots", -3, True, {"marketo": "x"}, [1, 2]])
def test_backlog_without_a_usable_estimate_is_unknown(backlog: Any) -> None:
    store = MemoryStateStore()
    store.add_run_report(_report(1, **({} if backlog is None else {"backlog": backlog})))

    assert not build_status(store, now=NOW, schedule=SCHEDULE).backlog.known


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            {"side": "marketo", "entity": None, "name": "phone", "fields": ["phone"]},
            DriftItem(side="marketo", field="phone", keys=["phone"]),
        ),
        (
            {"side": "dynamics", "entity": "lead", "field": "jobtitle", "detail": "column deleted"},
            DriftItem(side="dynamics", entity="lead", field="jobtitle", detail="column deleted"),
        ),
        ({"fields": "title", "keys": [1]}, DriftItem()),
        ("schema changed", DriftItem(detail="schema changed")),
    ],
)
def test_drift_items_are_read_in_either_shape(item: Any, expected: DriftItem) -> None:
    store = MemoryStateStore()
    store.add_run_report(_report(1, drift=[item]))

    assert build_status(store, now=NOW, schedule=SCHEDULE).drift.items == [expected]


def test_backlog_and_drift_come_from_the_newest_report_that_has_them() -> None:
    store = MemoryStateStore()
    store.add_run_report(_report(11, backlog=42, drift=[{"side": "marketo", "field": "phone", "detail": "gone"}]))
    store.add_run_report(_report(6, drift=[]))
    store.add_run_report(_report(1, outcome="lease_held"))

    status = build_status(store, now=NOW, schedule=SCHEDULE)

    assert (status.backlog.total, status.backlog.run_id) == (42, "r11")
    assert (status.drift.known, status.drift.items, status.drift.run_id) == (True, [], "r6")


def test_missing_and_malformed_report_keys_read_as_unknown_not_a_crash() -> None:
    store = MemoryStateStore()
    store.add_run_report(
        _report(
            1,
            seconds="fast",
            pulled="lots",
            written={"marketo": -1, "dynamics": True},
            api_calls={"marketo": 2.0, "dataverse": "3", "by_operation": ["x"]},
            collisions=None,
            drift=["schema changed", {"field": {"nested": 1}}],
        )
    )
    store.add_run_report(_report(6))  # an empty report

    status = build_status(store, now=NOW, schedule=SCHEDULE)

    first, second = status.cycles
    assert (first.seconds, first.pulled.marketo, first.written.marketo, first.written.dynamics) == (
        None,
        None,
        None,
        None,
    )
    assert (first.api_calls.marketo, first.api_calls.dataverse, first.api_calls.by_operation) == (2, None, {})
    assert first.collisions is None
    assert second.api_calls.marketo is None
    assert [(item.field, item.detail) for item in status.drift.items] == [(None, "schema changed"), (None, None)]
    page = render_html(status)
    assert page.count(f'<td class="num">{DASH}</td>') >= 15
    assert f"records Marketo→Dynamics {DASH}" in render_text(status)


# -- renderings ------------------------------------------------------------------------------


def test_json_rendering_carries_the_whole_model() -> None:
    data = json.loads(render_json(build_status(_filled_store(), now=NOW, schedule=SCHEDULE)))

    assert data["health"]["headline"] == "Failures open"
    assert len(data["cycles"]) == status_data.CYCLES
    assert data["cycles"][0]["written"] == {"marketo": 25, "dynamics": 40}
    assert data["backlog"] == {
        "known": True,
        "total": 160,
        "parts": {"marketo": 120, "dynamics": 40},
        "run_id": "run-00",
        "as_of": "2025-03-14T12:02:00Z",
    }
    assert data["failures"][1]["next_retry_at"] == "2025-03-14T11:37:30Z"
    assert data["drift"]["items"] == [
        {"side": "dynamics", "entity": "lead", "field": "jobtitle", "keys": ["title"], "detail": None}
    ]


def test_collision_values_never_leave_the_store() -> None:
    status = build_status(_filled_store(), now=NOW, schedule=SCHEDULE)

    for rendering in (render_json(status), render_html(status), render_text(status)):
        assert "secret-marketo-value@example.com" not in rendering
        assert "Secret Dynamics Name" not in rendering
    assert {"field", "winner", "rule", "marketo_id", "dataverse_id"} <= json.loads(render_json(status))["collisions"][
        0
    ].keys()


def test_html_escapes_every_value_from_the_store() -> None:
    store = MemoryStateStore()
    hostile = '"><img src=x onerror=alert(1)>'
    store.add_run_report(
        RunReport(
            run_id=f"run{hostile}",
            started_at=NOW - timedelta(minutes=1),
            outcome=f"<b>{hostile}",
            report={"drift": [{"side": "<i>", "entity": hostile, "field": "</td>", "detail": "<script>x</script>"}]},
        )
    )
    store.upsert_failures(status_data.failures())

    page = render_html(build_status(store, now=NOW, schedule=SCHEDULE))

    assert "<script" not in page
    assert "<img" not in page
    assert "<b>" not in page
    assert "<i>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; jobtitle longer than 100 characters &amp; more" in page
    assert 'data-run="run&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"' in page


def test_html_page_has_headline_tiles_charts_and_tables() -> None:
    page = render_html(build_status(_filled_store(), now=NOW, schedule=SCHEDULE))

    assert '<p class="word">Failures open</p>' in page
    assert page.count('<tr class="cycle-row') == status_data.CYCLES
    assert page.count('<tr class="cycle-row failed">') == 1
    assert page.count('<tr class="failure-row">') == 2
    assert page.count('<tr class="collision-row">') == 5
    assert page.count('<tr class="drift-row">') == 1
    for chart in ("chart-records", "chart-api-calls"):
        assert f'<svg class="chart" id="{chart}"' in page
    assert page.count('<g class="cycle"') == 2 * status_data.CYCLES
    assert page.count('<circle class="failed"') == 2  # the failed cycle, marked on both charts
    assert "<script" not in page.replace("&lt;script", "")
    assert "http://" not in page.replace("http://www.w3.org", "")


def test_each_series_keeps_its_colour_place_and_legend_entry_on_every_chart() -> None:
    page = render_html(build_status(_filled_store(), now=NOW, schedule=SCHEDULE))
    charts = page.split('<figure class="chart-box">')[1:]
    assert len(charts) == 2
    colours: dict[str, set[str]] = {}
    stacks: set[tuple[str, ...]] = set()
    for chart in charts:
        for group in chart.split('<g class="cycle"')[1:]:
            bars = re.findall(r'<rect class="bar" data-series="(\w+)"[^>]* fill="(#[0-9a-f]{6})"', group)
            stacks.add(tuple(series for series, _ in bars))  # bottom to top
            for series, colour in bars:
                colours.setdefault(series, set()).add(colour)
        legend = re.findall(r'<span data-series="(\w+)"><i style="background:(#[0-9a-f]{6})">', chart)
        assert [series for series, _ in legend] == list(SERIES_COLOURS)  # the same order as the stack
        for series, colour in legend:
            colours.setdefault(series, set()).add(colour)
    assert colours == {series: {colour} for series, colour in SERIES_COLOURS.items()}  # one colour per series
    assert len(set(SERIES_COLOURS.values())) == len(SERIES_COLOURS)
    assert stacks == {tuple(SERIES_COLOURS)}  # same place in every bar of every chart


def test_text_summary_names_the_headline_last_cycle_and_totals() -> None:
    text = render_text(build_status(_filled_store(), now=NOW, schedule=SCHEDULE))

    assert text.splitlines()[0] == "Sync status: Failures open  (as of 2025-03-14 12:02:30 UTC)"
    assert "Last cycle: 2025-03-14 12:02:00 UTC, ok, 2.5 s; records Marketo→Dynamics 40, Dynamics→Marketo 25" in text
    assert "Failures: 2 open, 1 due for retry" in text
    assert "Collisions: 4 in the last 24 h" in text


def test_text_lists_each_failure_with_its_reason_direction_and_next_retry() -> None:
    text = render_text(build_status(_filled_store(), now=NOW, schedule=SCHEDULE))

    assert (
        "  - to marketo Marketo 2002, contact 6f1c2d4e-0000-4000-8000-000000000002 [1003]: "
        "Marketo 1003: email field is invalid (1 attempt, due now; key to_marketo:contact:abc)"
    ) in text
    assert (
        f"  - to dynamics Marketo 1001 [length]: {status_data.HOSTILE_REASON} (2 attempts, next retry 2025-03-14 "
        in text
    )


def test_totals_beyond_the_cap_read_as_at_least() -> None:
    store = MemoryStateStore()
    template = status_data.failures()[1]
    store.upsert_failures(
        [template.model_copy(update={"key": f"to_marketo:contact:{i}"}) for i in range(status_module.TOTAL_CAP + 5)]
    )

    status = build_status(store, now=NOW, schedule=SCHEDULE, failures=10)

    assert (status.totals.failures_open.count, status.totals.failures_open.at_least) == (1000, True)
    assert "1,000+ open failures, 1,000+ due for retry" in status.health.details
    assert len(status.failures) == 10
    assert "…and 990 more (newest shown)." in render_html(status)


# -- content negotiation ----------------------------------------------------------------------

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"


@pytest.mark.parametrize(
    ("accept", "requested", "chosen"),
    [
        (BROWSER_ACCEPT, None, "html"),
        ("*/*", None, "json"),
        (None, None, "json"),
        ("application/json", None, "json"),
        ("text/html;q=0.5, application/json", None, "json"),
        ("application/json;q=0.5, text/html", None, "html"),
        ("text/html;q=0", None, "json"),
        ("TEXT/HTML", None, "html"),
        (BROWSER_ACCEPT, "json", "json"),
        ("application/json", "html", "html"),
        ("application/json", " HTML ", "html"),
        (BROWSER_ACCEPT, "", "html"),
    ],
)
def test_format_follows_accept_unless_asked_for(accept: str | None, requested: str | None, chosen: str) -> None:
    assert choose_format(accept, requested) == chosen


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="format must be json or html"):
        choose_format(None, "xml")


# -- the HTTP function and the command, over Azurite -----------------------------------------


@pytest.fixture
def table_env(azurite_connection_string: str, table_prefix: str) -> dict[str, str]:
    env = _env(azurite_connection_string, table_prefix)
    store = TableStateStore.from_connection_string(azurite_connection_string, prefix=table_prefix)
    status_data.fill(store, datetime.now(NOW.tzinfo))
    return env


def _call_status(params: dict[str, str], headers: dict[str, str]) -> func.HttpResponse:
    request = func.HttpRequest(method="GET", url="/api/status", params=params, headers=headers, body=b"")
    response: func.HttpResponse = function_app.status.build().get_user_function()(request)
    return response


@pytest.mark.azurite
def test_status_function_answers_json_to_scripts_and_html_to_browsers(
    table_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in table_env.items():
        monkeypatch.setenv(name, value)

    as_json = _call_status({}, {"Accept": "*/*"})
    as_html = _call_status({}, {"Accept": BROWSER_ACCEPT})
    forced = _call_status({"format": "json"}, {"Accept": BROWSER_ACCEPT})
    with_links = _call_status({"links": "1"}, {})

    assert as_json.status_code == 200
    assert as_json.mimetype == "application/json"
    assert json.loads(as_json.get_body())["health"]["headline"] == "Failures open"
    assert as_html.status_code == 200
    assert as_html.mimetype == "text/html"
    assert as_html.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert b'<p class="word">Failures open</p>' in as_html.get_body()
    assert forced.mimetype == "application/json"
    assert json.loads(with_links.get_body())["totals"]["links"] == {"lead": 0, "contact": 0}
    assert json.loads(as_json.get_body())["totals"]["links"] is None


def test_status_page_names_every_missing_setting_without_secrets() -> None:
    page = get_status_page({"MARKETO_CLIENT_SECRET": "hunter2"}, accept="*/*", query={})

    assert page.status_code == 500
    body = json.loads(page.body)
    assert body["error"] == "the sync is not configured"
    assert any(problem.startswith("MARKETO_BASE_URL") for problem in body["problems"])
    assert "hunter2" not in page.body


def test_status_page_refuses_an_unknown_format() -> None:
    page = get_status_page({}, accept=BROWSER_ACCEPT, query={"format": "<svg>"})

    assert page.status_code == 400
    assert "format must be json or html" in json.loads(page.body)["error"]


class _UnreachableStore(MemoryStateStore):
    def list_run_reports(self, *, limit: int = 20) -> list[RunReport]:
        raise TransientError("table service timed out", service="tables")


def test_status_page_answers_503_when_the_store_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_module, "state_store_for", lambda settings: _UnreachableStore())

    page = get_status_page(_env("UseDevelopmentStorage=true", "sync"), accept=BROWSER_ACCEPT, query={})

    assert page.status_code == 503
    assert page.mimetype == "text/html"
    assert "Status unavailable" in page.body
    assert "cannot be read right now" in page.body


@pytest.mark.azurite
@pytest.mark.parametrize(
    ("argv", "check"),
    [
        ([], lambda out: json.loads(out)["totals"]["failures_open"] == {"count": 2, "at_least": False}),
        (["--format", "text"], lambda out: out.startswith("Sync status: Failures open")),
        (["--format", "html"], lambda out: out.startswith("<!doctype html>")),
        (["--count-links", "--cycles", "3"], lambda out: len(json.loads(out)["cycles"]) == 3),
    ],
)
def test_status_command_prints_the_status_and_exits_0(table_env: dict[str, str], argv: list[str], check: Any) -> None:
    out = io.StringIO()

    assert status_main(argv, environ=table_env, stdout=out) == 0
    assert check(out.getvalue())


def test_status_command_exits_2_on_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert status_main([], environ={}, stdout=io.StringIO()) == 2
    assert "MARKETO_BASE_URL: missing" in capsys.readouterr().err


def test_link_counts_are_read_only_when_asked_for() -> None:
    store = MemoryStateStore()
    store.upsert_links(
        [
            Link(marketo_id=i, entity=EntityType.LEAD if i < 3 else EntityType.CONTACT, dataverse_id=f"d{i}")
            for i in range(5)
        ]
    )

    assert build_status(store, now=NOW, schedule=SCHEDULE).totals.links is None
    counted = build_status(store, now=NOW, schedule=SCHEDULE, count_links=True)
    assert counted.totals.links == {"lead": 3, "contact": 2}
    assert "Links: lead 3, contact 2" in render_text(counted)


@pytest.mark.azurite
def test_python_dash_m_sync_core_status_prints_a_summary(table_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sync_core", "status", "--format", "text"],
        env={**os.environ, **table_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Sync status: Failures open")
    assert "Failures: 2 open, 1 due for retry" in result.stdout


@pytest.mark.parametrize(
    ("largest", "top"), [(0, 1), (1, 1), (2, 2), (3, 5), (7, 10), (11, 20), (160, 200), (1001, 2000)]
)
def test_chart_axis_tops_at_a_round_number(largest: int, top: int) -> None:
    assert _nice_ceiling(largest) == top


def test_status_function_is_a_get_behind_a_function_key() -> None:
    binding = json.loads(function_app.status.build().get_function_json())["bindings"][0]

    assert (binding["route"], binding["methods"], binding["authLevel"]) == ("status", ["GET"], "FUNCTION")


def test_last_completed_cycle_skips_failed_and_lease_held_ones() -> None:
    store = MemoryStateStore()
    store.add_run_report(_report(11, outcome="partial"))
    store.add_run_report(_report(6, outcome="lease_held"))
    store.add_run_report(_report(1, outcome="error"))

    status = build_status(store, now=NOW, schedule=SCHEDULE)

    assert status.last_cycle_at == NOW - timedelta(minutes=1)
    assert status.last_completed_at == NOW - timedelta(minutes=11)


def test_the_state_size_per_table_and_the_last_prune_are_shown() -> None:
    store = MemoryStateStore()
    for index in range(3):
        store.add_run_report(RunReport(run_id=f"r{index}", started_at=NOW - timedelta(minutes=5 * index)))
    store.add_run_report(RunReport(run_id="old", started_at=NOW - timedelta(days=31)))
    assert build_status(store, now=NOW, schedule=SCHEDULE).state.last_prune is None  # type: ignore[union-attr]
    prune_state(store, now=NOW)
    status = build_status(store, now=NOW, schedule=SCHEDULE)
    assert status.state is not None
    assert status.state.tables["runs"] == Total(count=3)
    assert status.state.retention_days == {"runs": 30, "actions": 30, "collisions": 90, "claims": 1}
    assert status.state.last_prune is not None
    assert (status.state.last_prune.at, status.state.last_prune.removed) == (NOW, {"runs": 1})
    assert "What the sync keeps" in render_html(status)
    assert "Last prune:" in render_text(status)


def test_records_kept_out_by_each_sides_filter_are_shown_in_every_view() -> None:
    store = MemoryStateStore()
    store.add_run_report(_report(1, filtered={"dynamics": 7, "marketo": 3}, failures=0))
    status = build_status(store, now=NOW, schedule=SCHEDULE)

    assert json.loads(render_json(status))["cycles"][0]["filtered"] == {"dynamics": 7, "marketo": 3}
    assert "Filtered out (last cycle, not synced, not failures): by the Dynamics filter 7, by the Marketo filter 3" in (
        render_text(status)
    )
    page = render_html(status)
    assert '<th colspan="2" class="group">Filtered out by</th>' in page
    assert '<td class="num">7</td><td class="num">3</td>' in page
    assert status.health.headline == "OK"  # kept out is not a failure


def test_operator_actions_are_listed_and_a_recent_cursor_reset_is_named_in_the_headline() -> None:
    store = _filled_store()
    store.add_action(
        ActionRecord(
            id="a1",
            at=NOW - timedelta(hours=2),
            action="reset-cursor",
            target="contact",
            by="ana@contoso",
            via="page",
            outcome="done",
        )
    )
    store.add_action(
        ActionRecord(
            id="a0",
            at=NOW - timedelta(days=2),
            action="reset-cursor",
            target="lead",
            by="old",
            via="cli",
            outcome="done",
        )
    )
    status = build_status(store, now=NOW, schedule=SCHEDULE)

    assert [action.target for action in status.actions] == ["contact", "lead"]
    assert "cursor contact reset by ana@contoso at 2025-03-14 10:02:30 UTC" in status.health.details
    assert not any("cursor lead" in detail for detail in status.health.details)  # older than a day
    text = render_text(status)
    assert "Action: 2025-03-14 10:02:30 UTC reset-cursor contact by ana@contoso via page: done" in text
    assert 'class="action-row"' in render_html(status)


def test_a_cycle_cut_by_its_time_budget_is_completed_and_says_what_the_next_tick_continues() -> None:
    store = MemoryStateStore()
    left = {"step": "dataverse leads", "persons": 1200, "tables": ["lead", "account"], "retries": True}
    store.add_run_report(_report(1, outcome="partial", left=left, backlog={"marketo": 1200, "retries": 0}))

    status = build_status(store, now=NOW, schedule=SCHEDULE)

    [cycle] = status.cycles
    assert not cycle.failed
    assert cycle.reason is not None
    assert "time budget reached in step 'dataverse leads'" in cycle.reason
    assert "1,200 Marketo person(s) carried" in cycle.reason
    assert "Dataverse lead, account" in cycle.reason
    assert status.health.level is HealthLevel.OK
    assert f"the last cycle: {cycle.reason}" in status.health.details
    assert "time budget reached" in render_html(status)  # the outcome pill's title
