"""The status page's buttons: ``POST /api/status/actions/{action}`` (``function_app.status_action``,
behind the Functions admin key), turned into one call of ``cycle.operate``.

Owns the HTTP half only: parsing the form, refusing what is not an admin's own click, the second
step of an action that needs one (a reason to dismiss, a confirmation to reset a cursor), and the
answer (an HTML page for a browser, JSON for a script, the CSV file of an export). The actions
themselves, their audit and their idempotency are ``cycle.operate``'s.

Why this is safe against cross-site requests: every action is a POST, never a GET (a link or an
image cannot trigger one); the admin key is in the request's URL or header, which another site
cannot know; and a browser's own word that the request comes from another site (``Sec-Fetch-Site:
cross-site``, or an ``Origin`` that is not this host) is refused with 403 before anything runs.
Who acted is App Service Authentication's signed-in user (``X-MS-CLIENT-PRINCIPAL-NAME``) when it
is on, else "admin key".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from azure.core.exceptions import AzureError

from sync_core.core.errors import ConfigError, SyncError
from sync_core.core.models import EntityType
from sync_core.cycle.operate import FEEDS, ActionResult, Operator, Outcome
from sync_core.settings import Settings
from sync_core.status.html import Controls, render_action_form, render_action_result
from sync_core.status.view import HTML_HEADERS, StatusPage, choose_format
from sync_core.wiring.services import services_for

log = logging.getLogger(__name__)

ACTIONS = ("retry", "dismiss", "resync", "reset-cursor", "export")
MAX_BODY = 8 * 1024
PRINCIPAL_HEADER = "x-ms-client-principal-name"
HTTP_STATUS = {Outcome.DONE: 200, Outcome.NOTHING: 200, Outcome.REFUSED: 404, Outcome.BUSY: 409, Outcome.FAILED: 502}
_HEADERS = HTML_HEADERS  # the status page's: no script, forms to this host only, no referrer to other sites


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _cross_site(headers: Mapping[str, str]) -> bool:
    """The browser says the request comes from another site: by ``Sec-Fetch-Site`` (every current
    browser sends it), else by an ``Origin`` naming another host. No such header: not a browser's
    cross-site request (a script with the key)."""
    fetch_site = headers.get("sec-fetch-site", "").lower()
    if fetch_site:
        return fetch_site == "cross-site"
    origin, host = headers.get("origin"), headers.get("host")
    if origin and origin != "null" and host:
        return urlsplit(origin).netloc.lower() != host.lower()
    return False


def _form(body: bytes, content_type: str) -> dict[str, str]:
    if len(body) > MAX_BODY:
        raise _BadRequest(413, f"the form is larger than {MAX_BODY} bytes")
    if not body:
        return {}
    media = content_type.split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _BadRequest(400, "the form is not UTF-8") from err
    if media == "application/json":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise _BadRequest(400, "the body is not JSON") from err
        if not isinstance(data, dict):
            raise _BadRequest(400, "the body must be a JSON object")
        return {str(name): "" if value is None else str(value) for name, value in data.items()}
    if media not in ("application/x-www-form-urlencoded", ""):
        raise _BadRequest(415, "send a form (application/x-www-form-urlencoded) or JSON")
    return dict(parse_qsl(text, keep_blank_values=True, max_num_fields=20))


def post_action(
    environ: Mapping[str, str],
    *,
    action: str,
    body: bytes,
    headers: Mapping[str, str],
    query: Mapping[str, str],
) -> StatusPage:
    """One operator action from the status page (or a script); see the module docstring."""
    lowered = _lower(headers)
    try:
        fmt = choose_format(lowered.get("accept"), query.get("format"))
    except ValueError as err:
        return _json(400, {"error": str(err)})
    controls = Controls(code=query.get("code") or None)
    if _cross_site(lowered):
        log.warning("status action %s: refused a cross-site request", action[:20])
        return _error(403, fmt, controls, "refused: the request comes from another site")
    if action not in ACTIONS:
        return _error(404, fmt, controls, f"no such action; one of {', '.join(ACTIONS)}")
    try:
        form = _form(body, lowered.get("content-type", ""))
        step = _second_step(action, form, fmt, controls)
        if step is not None:
            return step
        settings = Settings.from_env(environ)
    except _BadRequest as err:
        return _error(err.status, fmt, controls, str(err))
    except ConfigError as err:
        log.error("status action: configuration invalid (%d problems)", len(err.problems))
        return _error(500, fmt, controls, "the sync is not configured")
    by = lowered.get(PRINCIPAL_HEADER, "").strip() or "admin key"
    operator = Operator.from_services(services_for(settings), by=by, via="page")
    try:
        result = _act(operator, action, form)
    except _BadRequest as err:
        return _error(err.status, fmt, controls, str(err))
    except ValueError as err:
        return _error(400, fmt, controls, str(err))
    except (SyncError, AzureError, OSError) as err:
        log.warning("status action %s failed: %s", action, type(err).__name__)
        return _error(503, fmt, controls, f"the action could not finish ({type(err).__name__}); try again shortly")
    return _answer(action, result, fmt, controls)


def _second_step(action: str, form: Mapping[str, str], fmt: str, controls: Controls) -> StatusPage | None:
    """A dismissal without a reason, a reset without its confirmation: ask (HTML) or refuse (JSON)."""
    if action == "dismiss" and not form.get("reason", "").strip():
        key = form.get("key", "")
        if not key:
            raise _BadRequest(400, "key is required")
        if fmt == "json":
            raise _BadRequest(400, "reason is required to dismiss a failure")
        page = render_action_form(
            f"Dismiss failure {key}",
            "The failure is closed without a retry. The record is merged again when it next changes; if it fails "
            "then, that is a new failure. Say why (the reason is kept in the audit trail).",
            "dismiss",
            {"key": key},
            controls,
            button="Dismiss the failure",
            reason=True,
        )
        return StatusPage(200, "text/html", page, _HEADERS)
    if action == "reset-cursor":
        feed = form.get("feed", "")
        if feed not in FEEDS:
            raise _BadRequest(400, f"feed must be one of {', '.join(FEEDS)}")
        if form.get("confirm") != feed:
            if fmt == "json":
                raise _BadRequest(400, f"confirm={feed} is required to reset the {feed} cursor")
            what = (
                "The next cycle reads Marketo's changes from its own start: the changes waiting now are skipped."
                if feed == "marketo"
                else f"The next cycle re-reads every {feed} in Dynamics (a full read, merged by the baselines: "
                "nothing is written twice)."
            )
            page = render_action_form(
                f"Reset the {feed} cursor?",
                what + " The reset is audited with who and when, and shown on the status page.",
                "reset-cursor",
                {"feed": feed, "confirm": feed, **({"since": form["since"]} if form.get("since") else {})},
                controls,
                button=f"Yes, reset the {feed} cursor",
            )
            return StatusPage(200, "text/html", page, _HEADERS)
    return None


def _act(operator: Operator, action: str, form: Mapping[str, str]) -> ActionResult:
    if action == "retry":
        if form.get("all") in ("1", "true", "yes"):
            return operator.retry(None)
        key = form.get("key", "").strip()
        if not key:
            raise _BadRequest(400, "key (or all=1) is required")
        return operator.retry([key])
    if action == "dismiss":
        return operator.dismiss(form.get("key", "").strip(), form.get("reason", ""))
    if action == "resync":
        marketo_id, dynamics_id = form.get("marketo_id", "").strip(), form.get("dynamics_id", "").strip()
        entity = form.get("entity", "").strip()
        if bool(marketo_id) == bool(dynamics_id):
            raise _BadRequest(400, "give marketo_id or dynamics_id")
        if entity and entity not in (e.value for e in EntityType):
            raise _BadRequest(400, "entity must be lead or contact")
        if marketo_id:
            if not marketo_id.isdigit() or len(marketo_id) > 12:
                raise _BadRequest(400, "marketo_id must be a number")
            return operator.resync(marketo_id=int(marketo_id))
        return operator.resync(dataverse_id=dynamics_id[:64], entity=EntityType(entity) if entity else None)
    if action == "reset-cursor":
        since = form.get("since", "").strip()
        try:
            when = datetime.fromisoformat(since) if since else None
        except ValueError as err:
            raise _BadRequest(400, "since must be an ISO time with a zone") from err
        return operator.reset_cursor(form["feed"], since=when)
    return operator.export(form.get("kind", ""))


def _answer(action: str, result: ActionResult, fmt: str, controls: Controls) -> StatusPage:
    status = HTTP_STATUS[result.outcome]
    headers = dict(_HEADERS)
    if result.outcome is Outcome.BUSY:
        headers["Retry-After"] = "30"
    if result.csv is not None:
        kind = result.record.target
        headers["Content-Disposition"] = f'attachment; filename="sync-{kind}-{result.record.at:%Y%m%dT%H%M%SZ}.csv"'
        return StatusPage(status, "text/csv", result.csv, headers)
    if fmt == "json":
        return StatusPage(status, "application/json", json.dumps(result.as_json(), indent=2), headers)
    title = f"{action}: {result.record.target}"
    page = render_action_result(title, result.record.outcome, result.message, _shown(result.details), controls)
    return StatusPage(status, "text/html", page, headers)


def _shown(details: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: json.dumps(value) if isinstance(value, (list, dict)) else value
        for name, value in details.items()
        if value not in (None, [], {})
    }


def _json(status: int, body: Mapping[str, Any]) -> StatusPage:
    return StatusPage(status, "application/json", json.dumps(body), _HEADERS)


def _error(status: int, fmt: str, controls: Controls, message: str) -> StatusPage:
    if fmt == "json":
        return _json(status, {"error": message})
    page = render_action_result("Action refused" if status < 500 else "Action failed", "error", message, {}, controls)
    return StatusPage(status, "text/html", page, _HEADERS)
