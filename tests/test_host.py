"""The local host serves a FunctionApp's HTTP functions over real HTTP and fires its timers."""

from __future__ import annotations

import json
import threading

import azure.functions as func
import httpx
import pytest

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
