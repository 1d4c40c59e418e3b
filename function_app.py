"""Azure Functions entry points (Python v2 programming model). Triggers only: each function parses
its input, makes one call into ``sync_core`` and maps the result to a response or a log line."""

from __future__ import annotations

import json
import logging
import os

import azure.functions as func

from sync_core import __version__
from sync_core.core.errors import ConfigError, CycleFailedError
from sync_core.core.report import Outcome
from sync_core.cycle import engine
from sync_core.status import actions as status_actions
from sync_core.status import view as sync_status
from sync_core.telemetry import configure_telemetry, flush_telemetry
from sync_core.webhook import handler as webhook
from sync_core.wiring import preflight

log = logging.getLogger("function_app")
configure_telemetry(os.environ)  # once per worker process: Application Insights in Azure (README "Telemetry")
app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness for monitoring: the worker is up and the code imports."""
    return func.HttpResponse(
        json.dumps({"status": "ok", "version": __version__}), status_code=200, mimetype="application/json"
    )


@app.route(route="status", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def status(req: func.HttpRequest) -> func.HttpResponse:
    """The admin status view: JSON, or an HTML page when a browser asks for one."""
    page = sync_status.get_status_page(os.environ, accept=req.headers.get("Accept"), query=dict(req.params))
    return func.HttpResponse(
        page.body, status_code=page.status_code, mimetype=page.mimetype, charset="utf-8", headers=dict(page.headers)
    )


@app.route(route="status/actions/{action}", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
def status_action(req: func.HttpRequest) -> func.HttpResponse:
    """The status page's buttons (retry, dismiss, resync, reset-cursor, export): behind the admin key."""
    page = status_actions.post_action(
        os.environ,
        action=req.route_params.get("action", ""),
        body=req.get_body(),
        headers=dict(req.headers),
        query=dict(req.params),
    )
    return func.HttpResponse(
        page.body, status_code=page.status_code, mimetype=page.mimetype, charset="utf-8", headers=dict(page.headers)
    )


@app.route(route="marketo/sync-person", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def sync_person(req: func.HttpRequest) -> func.HttpResponse:
    """ "Sync Person to Microsoft" (design B4): create the person in Dynamics if no record exists."""
    answer = webhook.handle_sync_person(os.environ, body=req.get_body(), headers=dict(req.headers))
    return func.HttpResponse(
        answer.json(), status_code=answer.status, mimetype="application/json", headers=answer.headers
    )


@app.timer_trigger(schedule="%SYNC_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def sync_cycle(timer: func.TimerRequest) -> None:
    """The background sync (design §3): one cycle per SYNC_SCHEDULE occurrence."""
    if timer.past_due:
        log.warning("sync cycle: the timer is past due")
    try:
        report = engine.run_cycle_from_env(os.environ)
    except ConfigError as err:  # the same JSON line the commands print; the execution fails
        log.error("sync cycle: configuration error %s", preflight.config_error_line(err))
        raise
    finally:
        flush_telemetry()  # the instance may be stopped before the next periodic export
    log.info("sync cycle %s: %s", report.run_id, report.outcome)
    if report.outcome is Outcome.ERROR:  # a person must act: fail the execution so Azure Monitor sees it
        raise CycleFailedError(f"sync cycle {report.run_id} failed: {report.report.error}")
