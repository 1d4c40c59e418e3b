from __future__ import annotations

import json

import azure.functions as func

import function_app


def test_health_answers_ok_without_a_key() -> None:
    response = function_app.health.build().get_user_function()(
        func.HttpRequest(method="GET", url="/api/health", body=b"")
    )
    assert response.status_code == 200
    assert json.loads(response.get_body())["status"] == "ok"
