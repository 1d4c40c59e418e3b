"""``python -m sync_core host``: a local stand-in for the Azure Functions host.

The real host (Functions Core Tools) cannot be installed on every machine, so this serves the
HTTP functions of ``function_app.py`` under ``/api/…`` and fires its timers on their schedules,
by calling the decorated functions the way the host does: ``func.HttpRequest`` in,
``func.HttpResponse`` out; ``TimerRequest`` for timers, never two runs of one timer at once
(missed occurrences are skipped, as the host does). Like Core Tools locally, it does not check
function keys; everything else (routes, methods, ``%SETTING%`` schedules) comes from the
functions' own binding metadata. It owns no sync logic.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import os
import re
import signal
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
from azure.functions.timer import TimerRequest

from sync_core.core.schedule import Schedule
from sync_core.settings import DEFAULT_SCHEDULE
from sync_core.wiring.services import close_services

log = logging.getLogger(__name__)

_SETTING = re.compile(r"^%([^%]+)%$")


@dataclass(frozen=True)
class HttpRoute:
    name: str
    methods: frozenset[str]
    pattern: re.Pattern[str]
    function: Callable[..., Any]


@dataclass(frozen=True)
class Timer:
    name: str
    schedule: Schedule
    function: Callable[..., Any]


def _route_pattern(route: str) -> re.Pattern[str]:
    """``items/{id}`` / ``items/{id?}`` / ``items/{id:int}`` → a regex with named groups."""
    regex = ""
    for piece in re.split(r"(\{[^}]+\})", route.strip("/")):
        if piece.startswith("{"):
            name = piece[1:-1].split(":")[0]
            optional = name.endswith("?")
            name = name.rstrip("?")
            regex += f"(?P<{name}>[^/]+)" + ("?" if optional else "")
        else:
            regex += re.escape(piece)
    return re.compile(f"^/api/{regex}/?$")


def _resolve(value: str, environ: Mapping[str, str]) -> str:
    match = _SETTING.match(value)
    if not match:
        return value
    if match.group(1) not in environ:
        raise KeyError(f"the schedule refers to app setting {match.group(1)}, which is not set")
    return environ[match.group(1)]


def _call(function: Callable[..., Any], *args: Any) -> Any:
    result = function(*args)
    return asyncio.run(result) if inspect.iscoroutine(result) else result


# azure-functions 1.26 lets ``get_functions()`` run once per app (a second call raises), so the
# index is kept per app for the life of the process.
_INDEX: weakref.WeakKeyDictionary[func.FunctionApp, list[tuple[str, dict[str, Any], Callable[..., Any]]]] = (
    weakref.WeakKeyDictionary()
)
_INDEX_LOCK = threading.Lock()


def _index(app: func.FunctionApp) -> list[tuple[str, dict[str, Any], Callable[..., Any]]]:
    with _INDEX_LOCK:
        if app not in _INDEX:
            entries = []
            for function in app.get_functions():
                bindings = json.loads(function.get_function_json())["bindings"]
                trigger = next(b for b in bindings if b["direction"] == "IN" and b["type"].endswith("Trigger"))
                name = function.get_function_name() or function.get_user_function().__name__
                entries.append((name, trigger, function.get_user_function()))
            _INDEX[app] = entries
        return _INDEX[app]


def discover(app: func.FunctionApp, environ: Mapping[str, str]) -> tuple[list[HttpRoute], list[Timer]]:
    """Routes and timers from the functions' binding metadata, as the host indexes them."""
    routes: list[HttpRoute] = []
    timers: list[Timer] = []
    for name, trigger, user_function in _index(app):
        if trigger["type"] == "httpTrigger":
            route = trigger.get("route") or name
            methods = frozenset(m.upper() for m in trigger.get("methods") or ["GET", "POST"])
            routes.append(HttpRoute(name, methods, _route_pattern(route), user_function))
        elif trigger["type"] == "timerTrigger":
            timers.append(Timer(name, Schedule.parse(_resolve(trigger["schedule"], environ)), user_function))
    return routes, timers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle on, a keep-alive client's delayed ACK
    # holds the body back ~40 ms on every answer.
    disable_nagle_algorithm = True
    server: _HostServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        path_matched = False
        for route in self.server.routes:
            match = route.pattern.match(split.path)
            if not match:
                continue
            path_matched = True
            if self.command.upper() not in route.methods:
                continue
            request = func.HttpRequest(
                method=self.command.upper(),
                url=f"http://{self.headers.get('Host', 'localhost')}{self.path}",
                headers=dict(self.headers.items()),
                params=dict(parse_qsl(split.query, keep_blank_values=True)),
                route_params={k: v for k, v in match.groupdict().items() if v is not None},
                body=body,
            )
            try:
                response = _call(route.function, request)
            except Exception:
                log.exception("function %s failed", route.name)
                response = func.HttpResponse(status_code=500)
            self._write(response)
            return
        self._write(func.HttpResponse(status_code=405 if path_matched else 404))

    def _write(self, response: func.HttpResponse) -> None:
        body = response.get_body() or b""
        self.send_response(response.status_code)
        headers = dict(response.headers.items())
        if response.mimetype and "content-type" not in {k.lower() for k in headers}:
            headers["Content-Type"] = f"{response.mimetype}; charset={response.charset or 'utf-8'}"
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command.upper() != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch


class _HostServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, routes: list[HttpRoute]) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.routes = routes


class LocalHost:
    """Serve ``app``'s HTTP functions on 127.0.0.1 and run its timers until ``stop()``."""

    def __init__(
        self,
        app: func.FunctionApp,
        *,
        port: int = 0,
        environ: Mapping[str, str] | None = None,
        run_timers: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        # Settings with a documented default (design §7) resolve to it when unset, as Settings does.
        settings = {"SYNC_SCHEDULE": DEFAULT_SCHEDULE, **(os.environ if environ is None else environ)}
        self.routes, self.timers = discover(app, settings)
        self._server = _HostServer(port, self.routes)
        self._clock = clock
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._server.serve_forever, name="host-http", daemon=True)]
        if run_timers:
            self._threads += [
                threading.Thread(target=self._run_timer, args=(timer,), name=f"host-timer-{timer.name}", daemon=True)
                for timer in self.timers
            ]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _run_timer(self, timer: Timer) -> None:
        due = timer.schedule.next_after(self._clock())
        while not self._stopping.wait(max(0.0, (due - self._clock()).total_seconds())):
            past_due = (self._clock() - due).total_seconds() > 1
            try:
                _call(timer.function, TimerRequest(past_due=past_due))
            except Exception:
                log.exception("timer %s failed", timer.name)
            # Occurrences missed while the function ran are skipped, not queued (as the host does).
            due = timer.schedule.next_after(self._clock())

    def start(self) -> LocalHost:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=30)

    def __enter__(self) -> LocalHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_app(module: str = "function_app") -> func.FunctionApp:
    """Import the Functions entry module the way the host does and return its ``app``."""
    app = importlib.import_module(module).app
    if not isinstance(app, func.FunctionApp):
        raise TypeError(f"{module}.app is not an azure.functions.FunctionApp")
    return app


def host_main(argv: Sequence[str] | None = None) -> int:
    """``python -m sync_core host --port P``: serve ``function_app`` until SIGINT/SIGTERM.

    Prints one JSON line (``{"url": …, "routes": […], "timers": […]}``) once it listens."""
    parser = argparse.ArgumentParser(
        prog="python -m sync_core host",
        description="A local stand-in for the Functions host: serves function_app's HTTP functions under "
        "/api/... on 127.0.0.1 and fires its timers on their schedules (SYNC_SCHEDULE).",
    )
    parser.add_argument("--port", type=int, default=7071, help="port on 127.0.0.1 (default 7071; 0: any free port)")
    parser.add_argument("--no-timers", action="store_true", help="serve HTTP only; do not run the sync timer")
    parser.add_argument("--app", default="function_app", help="module holding the FunctionApp (default: function_app)")
    args = parser.parse_args(argv)
    try:
        host = LocalHost(load_app(args.app), port=args.port, run_timers=not args.no_timers)
    except (KeyError, ImportError, TypeError, OSError) as err:
        print(f"host: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        host.start()
        line = {
            "url": host.base_url,
            "routes": sorted(r.pattern.pattern for r in host.routes),
            "timers": [t.name for t in host.timers] if not args.no_timers else [],
        }
        print(json.dumps(line), flush=True)
        stop.wait()
    finally:
        host.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        close_services()  # the wiring the functions built, if any
    return 0
