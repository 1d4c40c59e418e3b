"""Azure Functions entry points (Python v2 programming model). Triggers only: each function parses
its input, makes one call into ``sync_core`` and maps the result to a response or a log line."""

from __future__ import annotations

import json

import azure.functions as func

from sync_core import __version__

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness for monitoring: the worker is up and the code imports."""
    return func.HttpResponse(
        json.dumps({"status": "ok", "version": __version__}), status_code=200, mimetype="application/json"
    )
