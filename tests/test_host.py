"""The local host serves a FunctionApp's HTTP functions over real HTTP and fires its timers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import azure.functions as func
import httpx
import pytest

from sync_core.host import server
from sync_core.host.server import LocalHost, discover


def _app(fired: threading.Event) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.route(route="items/{item_id}", methods=["GET", "POST"])
    def item(req: func.HttpRequest) -> func.HttpResponse:
        payload = {
            "id": req.route_params["item_id"],
            "method": req.method,
            "q": req.params.get("q"),
            "body": req.get_body().decode(),
            "secret": req.headers.get("X-Sync-Secret"),
        }
        return func.HttpResponse(json.dumps(payload), status_code=201, mimetype="application/json")

    @app.route(route="boom", methods=["GET"])
    def boom(req: func.HttpRequest) -> func.HttpResponse:
        raise RuntimeError("function bug")

    @app.timer_trigger(schedule="%TEST_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
    def tick(timer: func.TimerRequest) -> None:
        fired.set()

    return app


def test_http_function_is_served_under_api_with_route_params_query_headers_and_body() -> None:
    fired = threading.Event()
    with LocalHost(_app(fired), environ={"TEST_SCHEDULE": "0 0 0 1 1 *"}) as host:
        response = httpx.post(
            f"{host.base_url}/api/items/42?q=x", content=b"hello", headers={"X-Sync-Secret": "s"}, timeout=5
        )
    assert response.status_code == 201
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"id": "42", "method": "POST", "q": "x", "body": "hello", "secret": "s"}


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/nothing", 404),
        ("DELETE", "/api/items/1", 405),
        ("GET", "/api/boom", 500),
        ("GET", "/items/1", 404),
    ],
)
def test_unknown_routes_wrong_methods_and_failures_get_http_errors(method: str, path: str, status: int) -> None:
    with LocalHost(_app(threading.Event()), environ={"TEST_SCHEDULE": "0 0 0 1 1 *"}) as host:
        assert httpx.request(method, f"{host.base_url}{path}", timeout=5).status_code == status


def test_timer_fires_on_the_schedule_named_by_an_app_setting() -> None:
    fired = threading.Event()
    with LocalHost(_app(fired), environ={"TEST_SCHEDULE": "* * * * * *"}):
        assert fired.wait(timeout=5)


def test_timer_can_be_left_off() -> None:
    fired = threading.Event()
    with LocalHost(_app(fired), environ={"TEST_SCHEDULE": "* * * * * *"}, run_timers=False):
        assert not fired.wait(timeout=1.5)


def test_missing_schedule_setting_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="TEST_SCHEDULE"):
        discover(_app(threading.Event()), {})


# -- HTTP framing and timeouts (issue 16): what a hand-made server got wrong ----------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    monkeypatch.setattr(server, "READ_TIMEOUT", 1.0)
    with LocalHost(_app(threading.Event()), environ={"TEST_SCHEDULE": "0 0 0 1 1 *"}, run_timers=False) as host:
        yield "127.0.0.1", int(host.base_url.rsplit(":", 1)[1])


def _exchange(address: tuple[str, int], raw: bytes, *, wait: float = 5.0) -> bytes:
    """Send ``raw`` and read until the server closes the connection (or ``wait`` passes)."""
    with socket.create_connection(address, timeout=wait) as sock:
        sock.sendall(raw)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        return received


def test_both_transfer_encoding_and_content_length_is_refused_and_nothing_is_smuggled(
    served: tuple[str, int],
) -> None:
    smuggled = b"GET /api/items/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = (
        b"POST /api/items/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + smuggled
    )
    received = _exchange(served, raw)
    assert received.startswith(b"HTTP/1.1 400 ")
    assert b"smuggled" not in received
    assert received.count(b"HTTP/1.1 ") == 1


def test_a_chunked_body_is_read_as_one_body(served: tuple[str, int]) -> None:
    raw = (
        b"POST /api/items/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    received = _exchange(served, raw)
    assert received.startswith(b"HTTP/1.1 201 ")
    assert b'"body": "hello"' in received


def test_a_content_length_larger_than_the_body_times_out_with_408(served: tuple[str, int]) -> None:
    started = time.monotonic()
    received = _exchange(served, b"POST /api/items/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort")
    assert received.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 4


def test_a_head_that_never_finishes_is_dropped(served: tuple[str, int]) -> None:
    started = time.monotonic()
    assert _exchange(served, b"POST /api/items/1 HTTP/1.1\r\nHost: x\r\n") == b""
    assert time.monotonic() - started < 4


def test_an_oversized_body_is_refused_by_its_length(served: tuple[str, int]) -> None:
    length = server.MAX_REQUEST_BYTES + 1
    received = _exchange(served, f"POST /api/items/1 HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
    assert received.startswith(b"HTTP/1.1 413 ")


def test_keep_alive_serves_several_requests_on_one_connection(served: tuple[str, int]) -> None:
    with httpx.Client(base_url=f"http://{served[0]}:{served[1]}", timeout=5) as client:
        answers = [client.post("/api/items/1", content=f"n{i}".encode()) for i in range(3)]
    assert [a.json()["body"] for a in answers] == ["n0", "n1", "n2"]


def test_fifty_concurrent_connections_are_all_answered(served: tuple[str, int]) -> None:
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=0)
    with (
        httpx.Client(base_url=f"http://{served[0]}:{served[1]}", timeout=10, limits=limits) as client,
        ThreadPoolExecutor(max_workers=50) as pool,
    ):
        statuses = list(pool.map(lambda i: client.post(f"/api/items/{i}", content=b"x").status_code, range(50)))
    assert statuses == [201] * 50


def test_the_shipped_code_never_imports_the_local_host() -> None:
    """``sync_core/host/`` and uvicorn are dev-only (.funcignore, requirements-dev.txt)."""
    code = (
        "import sys, function_app, sync_core.__main__; "
        "bad = sorted(m for m in sys.modules if m.startswith(('sync_core.host', 'uvicorn'))); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert "sync_core/host/" in (Path(__file__).resolve().parents[1] / ".funcignore").read_text().split()
