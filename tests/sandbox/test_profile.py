"""The latency and capacity model (``sandbox._profile``): figures, overrides, the latency each
simulator sleeps, the limits it must still apply (with the real errors), ``x-ms-dop-hint``, the
request log's ``start``/``ms`` and the ``--profile`` command-line options. Latencies are tens of
milliseconds here, so the file runs in a few seconds."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox import _profile
from sandbox.__main__ import main
from sandbox._http import HttpServer, Request, Response
from sandbox._profile import DataverseProfile, MarketoProfile, Profile
from sandbox.dataverse import DataverseOptions, DataverseSandbox
from sandbox.marketo import MarketoOptions
from tests.sandbox._marketo_support import CREDENTIALS, FakeClock, Marketo, error_code
from tests.sandbox.test_dataverse_api import Org, error_of, running

REPO = Path(__file__).resolve().parents[2]
LEADS = "/rest/v1/leads.json"
_SSL = httpx.create_ssl_context()  # built once: a context per client costs ~150 ms


class Sleeps:
    """A ``sleep`` that really sleeps and remembers each duration."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)
        time.sleep(seconds)


def profiled(overrides: dict[str, Any], *, base: str = "instant") -> tuple[MarketoOptions, DataverseOptions]:
    """Both simulators' options with a profile applied, as ``python -m sandbox serve`` builds them."""
    marketo, dataverse = MarketoOptions(seed_leads=3), DataverseOptions(seed_leads=3)
    _profile.apply(_profile.with_overrides(_profile.named(base), overrides), marketo=marketo, dataverse=dataverse)
    return marketo, dataverse


@contextmanager
def dataverse_with(overrides: dict[str, Any], sleep: Callable[[float], None] = time.sleep) -> Iterator[Org]:
    _, options = profiled(overrides)
    fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name != "clock"}
    with running(sleep=sleep, **fields) as org:
        yield org


def at_once(count: int, url: str, headers: dict[str, str]) -> list[httpx.Response]:
    """``count`` GETs of ``url`` started together, each on its own thread and connection."""
    clients = [httpx.Client(headers=headers, timeout=10, verify=_SSL) for _ in range(count)]
    barrier = threading.Barrier(count)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def one(client: httpx.Client) -> None:
        barrier.wait()
        answer = client.get(url)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=one, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    for client in clients:
        client.close()
    return answers


# ---------------------------------------------------------------------------- the model


def test_instant_is_the_default_and_sleeps_nothing() -> None:
    profile = _profile.load()
    assert profile.name == "instant"
    assert profile.dataverse.request_overhead_ms == 0
    assert profile.marketo.call_seconds(f"GET {LEADS}", 300) == 0
    assert DataverseOptions().profile == DataverseProfile()
    assert MarketoOptions().profile == MarketoProfile()


def test_realistic_figures_and_their_limits() -> None:
    p = _profile.load("realistic")
    dv, mkt = p.dataverse, p.marketo
    assert (dv.max_requests, dv.window_seconds, dv.max_execution_ms, dv.max_concurrent) == (6000, 300, 1_200_000, 52)
    assert (mkt.rate_limit_calls, mkt.rate_limit_window, mkt.max_concurrent, mkt.daily_quota) == (100, 20, 10, 50_000)
    assert dv.dop_hint == 4
    # Microsoft's published sample timings come out of the fitted figures.
    assert dv.request_overhead_ms + dv.create_ms_per_record == pytest.approx(100, abs=5)  # SimpleLoop create
    assert 2 * dv.request_overhead_ms + 2000 * dv.create_ms_per_record == pytest.approx(58_000, rel=0.02)
    assert 2 * dv.request_overhead_ms + 2000 * dv.update_ms_per_record == pytest.approx(76_000, rel=0.02)
    assert dv.request_overhead_ms + 100 * dv.create_multiple_ms_per_record == pytest.approx(1000, rel=0.1)
    assert dv.request_overhead_ms + 100 * dv.update_multiple_ms_per_record == pytest.approx(3000, rel=0.1)
    assert mkt.bulk_export_processing_seconds >= 60  # minutes, not seconds
    assert mkt.call_seconds(f"POST {LEADS}", 300) == pytest.approx(0.4 + 300 * 0.005)


def test_a_profile_file_overrides_any_figure_and_refuses_unknown_ones(tmp_path: Path) -> None:
    file = tmp_path / "profile.json"
    file.write_text(
        json.dumps(
            {
                "time_scale": 0.5,
                "dataverse": {"dop_hint": 16, "max_concurrent": 8},
                "marketo": {"call_ms": {f"GET {LEADS}": 1000, "GET /bulk/v1/x.json": 10}},
            }
        )
    )
    p = _profile.load("realistic", file)
    assert (p.name, p.time_scale, p.dataverse.dop_hint, p.dataverse.max_concurrent) == ("realistic", 0.5, 16, 8)
    assert p.dataverse.request_overhead_ms == 70  # untouched figures keep the base profile's
    assert p.marketo.call_seconds(f"GET {LEADS}") == 0.5  # 1000 ms, scaled by 0.5
    assert p.marketo.call_seconds("GET /bulk/v1/x.json") == 0.005
    assert p.marketo.call_seconds(f"POST {LEADS}") == 0.2  # other endpoints kept
    assert p.marketo.bulk_export_seconds == 150
    assert p.dataverse.scaled(70) == 35
    for bad in ({"dataverse": {"dop_hnt": 1}}, {"marketo": {"daily_quota": "lots"}}, {"dataverse": 3}):
        file.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="profile figure"):
            _profile.load("realistic", file)


def test_apply_sets_limits_unless_a_flag_changed_them_and_feeds_the_bulk_option() -> None:
    @dataclasses.dataclass
    class WithBulk(MarketoOptions):
        bulk_processing_seconds: float = 2.0  # the bulk simulator's option (issue 17, parallel work)

    marketo, dataverse = WithBulk(), DataverseOptions(max_concurrent=5)  # as if --dataverse-max-concurrent 5
    profile = _profile.with_overrides(
        _profile.REALISTIC, {"time_scale": 0.1, "dataverse": {"max_concurrent": 9, "max_requests": 7}}
    )
    _profile.apply(profile, marketo=marketo, dataverse=dataverse)
    assert (dataverse.max_concurrent, dataverse.max_requests) == (5, 7)
    assert dataverse.profile is profile.dataverse
    assert marketo.profile is profile.marketo
    assert marketo.bulk_processing_seconds == pytest.approx(30.0)  # 300 s at time_scale 0.1


# ---------------------------------------------------------------------------- Dataverse


def test_dataverse_sleeps_overhead_plus_per_record_costs_and_sends_the_dop_hint() -> None:
    sleeps = Sleeps()
    figures = {
        "request_overhead_ms": 20,
        "create_multiple_ms_per_record": 3,
        "read_ms_per_record": 1,
        "create_ms_per_record": 2,
        "dop_hint": 7,
    }
    with dataverse_with({"dataverse": figures}, sleep=sleeps) as org:
        targets = [
            {"@odata.type": "Microsoft.Dynamics.CRM.lead", "lastname": f"L{i}", "companyname": "C"} for i in range(10)
        ]
        started = time.perf_counter()
        created = org.http.post("leads/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
        elapsed = time.perf_counter() - started
        page = org.http.get("leads", params={"$select": "lastname"})
        who = org.http.get("WhoAmI")
    assert created.status_code == 200
    assert page.status_code == 200
    assert who.status_code == 200
    assert len(page.json()["value"]) == 13
    assert sleeps.seconds == pytest.approx([0.020 + 10 * 0.003, 0.020 + 13 * 0.001, 0.020])
    assert elapsed >= 0.05
    assert {r.headers["x-ms-dop-hint"] for r in (created, page, who)} == {"7"}


def test_dataverse_batch_parts_are_charged_per_record() -> None:
    sleeps = Sleeps()
    with dataverse_with({"dataverse": {"request_overhead_ms": 10, "create_ms_per_record": 4}}, sleep=sleeps) as org:
        parts = "".join(
            "--b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            "POST /api/data/v9.2/leads HTTP/1.1\r\nContent-Type: application/json\r\n\r\n"
            f'{{"lastname":"B{i}","companyname":"C"}}\r\n'
            for i in range(3)
        )
        response = org.http.post(
            "$batch", content=parts + "--b--\r\n", headers={"Content-Type": 'multipart/mixed; boundary="b"'}
        )
    assert response.status_code == 200, response.text
    assert sleeps.seconds == pytest.approx([0.010 + 3 * 0.004])


def test_dataverse_dop_hint_is_on_every_answer_even_refusals() -> None:
    with dataverse_with({"dataverse": {"max_requests": 1}}) as org:
        ok = org.http.get("WhoAmI")
        throttled = org.http.get("WhoAmI")
        unauthorized = httpx.get(f"{org.api}/WhoAmI")
        elsewhere = httpx.get(f"{org.root}/nothing-here")
    assert [r.status_code for r in (ok, throttled, unauthorized, elsewhere)] == [200, 429, 401, 404]
    assert all(r.headers["x-ms-dop-hint"] == "4" for r in (ok, throttled, unauthorized, elsewhere))


def test_dataverse_number_of_requests_limit_from_the_profile() -> None:
    with dataverse_with({"dataverse": {"max_requests": 3, "request_overhead_ms": 1}}) as org:
        answers = [org.http.get("WhoAmI") for _ in range(4)]
        org.clock.advance(300)
        after_window = org.http.get("WhoAmI")
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert error_of(answers[3]) == (
        429,
        "0x80072322",
        "Number of requests exceeded the limit of 3 over time window of 300 seconds.",
    )
    assert int(answers[3].headers["Retry-After"]) == 300  # the fake clock stood still: the whole window
    assert after_window.status_code == 200


def test_dataverse_latency_counts_as_execution_time() -> None:
    figures = {"request_overhead_ms": 30, "max_execution_ms": 50}
    with dataverse_with({"dataverse": figures}) as org:
        answers = [org.http.get("WhoAmI") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert error_of(answers[2]) == (
        429,
        "0x80072321",
        "Combined execution time of incoming requests exceeded limit of 50 milliseconds over time window of "
        "300 seconds. Decrease number of concurrent requests or reduce the duration of requests and try again later.",
    )
    assert int(answers[2].headers["Retry-After"]) >= 1


def test_dataverse_latency_holds_a_concurrency_slot() -> None:
    with dataverse_with({"dataverse": {"request_overhead_ms": 500, "max_concurrent": 2}}) as org:
        answers = at_once(3, f"{org.api}/WhoAmI", {"Authorization": "Bearer sandbox-token"})
    assert sorted(r.status_code for r in answers) == [200, 200, 429]
    refused = next(r for r in answers if r.status_code == 429)
    assert error_of(refused) == (429, "0x80072326", "Number of concurrent requests exceeded the limit of 2.")
    assert refused.headers["Retry-After"] == "1"


# ---------------------------------------------------------------------------- Marketo


@contextmanager
def marketo_with(overrides: dict[str, Any], **kwargs: Any) -> Iterator[Marketo]:
    options, _ = profiled(overrides)
    with Marketo.running(options, **kwargs) as marketo:
        yield marketo


def test_marketo_sleeps_the_endpoint_latency_and_per_record_cost() -> None:
    sleeps = Sleeps()
    figures = {"call_ms": {f"GET {LEADS}": 30, "GET /identity/oauth/token": 5}, "record_ms": {f"GET {LEADS}": 2}}
    with marketo_with({"marketo": figures}, sleep=sleeps) as marketo:
        marketo.token()
        started = time.perf_counter()
        body = marketo.get(LEADS, filterType="id", filterValues="1,2,3")
        elapsed = time.perf_counter() - started
    assert len(body["result"]) == 3
    assert sleeps.seconds == pytest.approx([0.005, 0.030 + 3 * 0.002])
    assert elapsed >= 0.036


def test_marketo_latency_keeps_a_call_in_flight_615() -> None:
    figures = {"call_ms": {"GET /rest/v1/lead/{id}.json": 500}, "max_concurrent": 2}
    with marketo_with({"marketo": figures}) as marketo:
        token = marketo.token()
        answers = at_once(3, f"{marketo.url}/rest/v1/lead/1.json", {"Authorization": f"Bearer {token}"})
    bodies = [r.json() for r in answers]
    refused = [b for b in bodies if not b["success"]]
    assert len(refused) == 1
    assert sum(b["success"] for b in bodies) == 2
    assert error_code(refused[0]) == "615"
    assert refused[0]["errors"][0]["message"] == "Concurrent access limit '2' reached"


def test_marketo_rate_limit_606_and_daily_quota_607_from_the_profile() -> None:
    with marketo_with({"marketo": {"rate_limit_calls": 2, "default_call_ms": 1}}) as marketo:
        rate = [marketo.get("/rest/v1/lead/1.json") for _ in range(3)]
    assert [b["success"] for b in rate] == [True, True, False]
    assert error_code(rate[2]) == "606"
    assert rate[2]["errors"][0]["message"] == "Max rate limit '2' exceeded with in '20' secs"
    with marketo_with({"marketo": {"daily_quota": 2}}, clock=FakeClock()) as marketo:
        quota = [marketo.get("/rest/v1/lead/1.json") for _ in range(3)]
    assert [b["success"] for b in quota] == [True, True, False]
    assert error_code(quota[2]) == "607"


# ---------------------------------------------------------------------------- request log and CLI


def test_request_log_has_each_requests_start_and_duration() -> None:
    def slow(_: Request) -> Response:
        time.sleep(0.03)
        return Response.json({})

    log = io.StringIO()
    with HttpServer(slow, service="x", request_log=log) as server:
        before = time.time()
        httpx.get(f"{server.base_url}/a")
    entry = json.loads(log.getvalue().splitlines()[0])
    assert set(entry) == {"service", "method", "path", "status", "start", "ms"}
    assert before <= entry["start"] <= before + 1
    assert entry["ms"] >= 30


def test_request_log_has_the_records_of_each_bulk_message() -> None:
    """A bulk message's line carries its ``records`` (a benchmark's call floor per table); others none."""
    log = io.StringIO()
    sandbox = DataverseSandbox(DataverseOptions(clock=FakeClock()), sleep=time.sleep)
    with HttpServer(sandbox.handle, service="dataverse", request_log=log) as server:
        headers = {"Authorization": "Bearer sandbox-token", "Accept": "application/json"}
        with httpx.Client(base_url=f"{server.base_url}/api/data/v9.2/", headers=headers, verify=_SSL) as http:
            targets = [
                {"@odata.type": "Microsoft.Dynamics.CRM.lead", "lastname": f"L{i}", "companyname": "C"}
                for i in range(7)
            ]
            created = http.post("leads/Microsoft.Dynamics.CRM.CreateMultiple", json={"Targets": targets})
            page = http.get("leads", params={"$select": "lastname"})
    assert created.status_code == 200, created.text
    assert page.status_code == 200
    bulk, read = map(json.loads, log.getvalue().splitlines())
    assert (bulk["path"], bulk["records"]) == ("/api/data/v9.2/leads/Microsoft.Dynamics.CRM.CreateMultiple", 7)
    assert "records" not in read


def test_cli_refuses_an_unknown_profile_or_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--profile", "fast"])
    assert exited.value.code == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"dataverse": {"overhead": 1}}')
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--profile", "realistic", "--profile-file", str(bad)])
    assert exited.value.code == 2
    assert "unknown profile figure 'dataverse.overhead'" in capsys.readouterr().err


def test_serve_with_the_realistic_profile(tmp_path: Path) -> None:
    log, file = tmp_path / "requests.jsonl", tmp_path / "fast.json"
    file.write_text(json.dumps({"time_scale": 0.1, "dataverse": {"dop_hint": 12}}))
    command = [sys.executable, "-m", "sandbox", "serve", "--seed-leads", "2", "--request-log", str(log)]
    command += ["--profile", "realistic", "--profile-file", str(file)]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            ready = json.loads(process.stdout.readline())
            who = httpx.get(
                f"{ready['dataverse']}/api/data/v9.2/WhoAmI", headers={"Authorization": "Bearer sandbox-token"}
            )
            token = httpx.get(f"{ready['marketo']}/identity/oauth/token", params=CREDENTIALS)
        finally:
            process.terminate()
            process.wait(10)
    assert who.status_code == 200
    assert who.headers["x-ms-dop-hint"] == "12"
    assert token.status_code == 200
    logged = {e["service"]: e for e in map(json.loads, log.read_text().splitlines())}
    assert logged["dataverse"]["ms"] >= 7  # 70 ms overhead at time_scale 0.1
    assert logged["marketo"]["ms"] >= 10  # 100 ms identity at time_scale 0.1
    assert logged["dataverse"]["start"] <= logged["marketo"]["start"]


def test_profile_model_is_plain_data() -> None:
    data = _profile.REALISTIC.to_json()
    assert json.loads(json.dumps(data)) == data
    assert _profile.with_overrides(Profile(), data) == _profile.REALISTIC
