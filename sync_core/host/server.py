"""``python -m sync_core host``: a local stand-in for the Azure Functions host.

The real host (Functions Core Tools) cannot be installed on every machine, so this serves the
HTTP functions of ``function_app.py`` under ``/api/…``, fires its timers on their schedules and
polls the queues of its queue triggers (``host.queues``), by calling the decorated functions the
way the host does: ``func.HttpRequest`` in, ``func.HttpResponse`` out; ``TimerRequest`` for
timers, never two runs of one timer at once (missed occurrences are skipped, as the host does).
Like Core Tools locally, it does not check function keys; everything else (routes, methods,
``%SETTING%`` schedules and queue names) comes from the functions' own binding metadata. It owns
no sync logic.
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
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import azure.functions as func
import h11
import uvicorn
from azure.functions.timer import TimerRequest
from uvicorn.protocols.http.h11_impl import H11Protocol

from sync_core.core.schedule import Schedule
from sync_core.host.queues import QueueOptions, QueuePoller, discover_queues
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


def function_names(app: func.FunctionApp) -> set[str]:
    """The app's function names as the host indexes them (safe to call more than once)."""
    return {name for name, _trigger, _function in _index(app)}


def http_routes(app: func.FunctionApp) -> dict[str, str]:
    """The app's HTTP functions and their routes as the host indexes them (safe to call more than once)."""
    indexed = _index(app)
    return {name: trigger.get("route") or name for name, trigger, _ in indexed if trigger["type"] == "httpTrigger"}


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


# -- HTTP: an ASGI app served by uvicorn (h11) -------------------------------------------------------
#
# uvicorn parses HTTP (h11: one framing per message, bounded heads, keep-alive, a listen backlog of
# BACKLOG); what it leaves to the app or does not do is added here: a request whose framing is
# ambiguous is refused, the head and the body must arrive within READ_TIMEOUT, and a body is capped.

READ_TIMEOUT = 10.0  # seconds for a request's head, and again for its body, to arrive
MAX_REQUEST_BYTES = 1024 * 1024  # the local host's cap on a request body (the webhook caps far lower)
BACKLOG = 1024
KEEP_ALIVE = 5  # seconds an idle keep-alive connection is kept
WORKERS = 256  # function calls run at once, each on a thread (a burst must not queue before its function starts)
_CLOSE = (b"connection", b"close")


class _TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for a request head: uvicorn times out idle keep-alive
    connections but not a connection that sends part of a head and then nothing."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_since: float | None = self.loop.time()
        self._head_check = self.loop.call_later(1.0, self._check_head)

    def data_received(self, data: bytes) -> None:
        if self._head_since is None and self.conn.their_state is h11.IDLE:
            self._head_since = self.loop.time()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._head_since = None  # the head is complete: the app times the body

    def on_response_complete(self) -> None:
        self._head_since = None  # between requests uvicorn's keep-alive timeout applies
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_check.cancel()
        super().connection_lost(exc)

    def _check_head(self) -> None:
        if self.transport.is_closing():
            return
        if self._head_since is not None and self.loop.time() - self._head_since > READ_TIMEOUT:
            self.transport.close()  # no answer is owed to a request that never arrived
            return
        self._head_check = self.loop.call_later(1.0, self._check_head)


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""


def _plain(status: int, text: str, *, close: bool = False) -> _Answer:
    headers = [(b"content-type", b"text/plain; charset=utf-8")] + ([_CLOSE] if close else [])
    return _Answer(status, headers, text.encode())


def _framing_problem(headers: list[tuple[bytes, bytes]]) -> _Answer | None:
    """Both ``Transfer-Encoding`` and ``Content-Length``: two readers could split the stream
    differently (request smuggling), so the request is refused and the connection closed."""
    names = [name.lower() for name, _ in headers]
    if b"transfer-encoding" in names and b"content-length" in names:
        return _plain(400, "ambiguous framing: both Transfer-Encoding and Content-Length", close=True)
    lengths = [value for name, value in headers if name.lower() == b"content-length"]
    if lengths and int(lengths[0]) > MAX_REQUEST_BYTES:  # h11 has checked it is a number
        return _plain(413, f"body larger than {MAX_REQUEST_BYTES} bytes", close=True)
    return None


async def _read_body(receive: Any) -> bytes | _Answer:
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return _plain(400, "the client went away", close=True)
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_REQUEST_BYTES:
                    return _plain(413, f"body larger than {MAX_REQUEST_BYTES} bytes", close=True)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        return _plain(408, f"the request body did not arrive within {READ_TIMEOUT:g} s", close=True)


def _to_answer(response: func.HttpResponse) -> _Answer:
    headers = [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in response.headers.items()]
    if response.mimetype and b"content-type" not in {k.lower() for k, _ in headers}:
        content_type = f"{response.mimetype}; charset={response.charset or 'utf-8'}"
        headers.append((b"content-type", content_type.encode("latin-1")))
    body = response.get_body() or b""
    return _Answer(response.status_code, [h for h in headers if h[0].lower() != b"content-length"], body)


class _FunctionsApp:
    """The ASGI app: routes a request to its function, called on a worker thread."""

    def __init__(self, routes: list[HttpRoute], executor: ThreadPoolExecutor) -> None:
        self.routes = routes
        self.executor = executor

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        answer = await self._answer(scope, receive)
        headers = [*answer.headers, (b"content-length", str(len(answer.body)).encode())]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _answer(self, scope: dict[str, Any], receive: Any) -> _Answer:
        refused = _framing_problem(scope["headers"])
        if refused is not None:
            return refused
        body = await _read_body(receive)
        if isinstance(body, _Answer):
            return body
        method = scope["method"].upper()
        path = scope["path"]
        path_matched = False
        for route in self.routes:
            match = route.pattern.match(path)
            if not match:
                continue
            path_matched = True
            if method not in route.methods:
                continue
            headers: dict[str, str] = {}
            for name, value in scope["headers"]:
                key = name.decode("latin-1")
                headers[key] = (
                    f"{headers[key]}, {value.decode('latin-1')}" if key in headers else value.decode("latin-1")
                )
            query = scope["query_string"].decode("latin-1")
            request = func.HttpRequest(
                method=method,
                url=f"http://{headers.get('host', 'localhost')}{path}" + (f"?{query}" if query else ""),
                headers=headers,
                params=dict(parse_qsl(query, keep_blank_values=True)),
                route_params={k: v for k, v in match.groupdict().items() if v is not None},
                body=body,
            )
            loop = asyncio.get_running_loop()
            try:
                response = await loop.run_in_executor(self.executor, _call, route.function, request)
            except Exception:
                log.exception("function %s failed", route.name)
                return _Answer(500, [])
            return _to_answer(response)
        return _Answer(405 if path_matched else 404, [])


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


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
        self.queues = discover_queues(_index(app), settings) if run_timers else []
        self._socket = _listen(port)  # bound now, so a busy port fails here and port 0 has its number
        self._executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="host-function")
        config = uvicorn.Config(
            _FunctionsApp(self.routes, self._executor),
            http=_TimedH11Protocol,
            lifespan="off",
            access_log=False,
            log_config=None,
            log_level="warning",
            backlog=BACKLOG,
            timeout_keep_alive=KEEP_ALIVE,
            timeout_graceful_shutdown=10,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._clock = clock
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, name="host-http", daemon=True)
        ]
        if run_timers:
            self._threads += [
                threading.Thread(target=self._run_timer, args=(timer,), name=f"host-timer-{timer.name}", daemon=True)
                for timer in self.timers
            ]
        self._threads += [
            threading.Thread(
                target=QueuePoller(
                    queue,
                    # host.json beside the functions' module, where the Functions host reads it
                    QueueOptions.from_host_json(Path(inspect.getfile(queue.function)).parent / "host.json"),
                    self._executor,
                    self._stopping,
                    _call,
                ).run,
                name=f"host-queue-{queue.name}",
                daemon=True,
            )
            for queue in self.queues
        ]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

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
        deadline = time.monotonic() + 10
        while not self._server.started and self._threads[0].is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            self.stop()
            raise RuntimeError("the local host's HTTP server did not start")
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.should_exit = True
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=30)
        self._socket.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

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
    parser.add_argument(
        "--no-timers", action="store_true", help="serve HTTP only; do not run the sync timer or poll queues"
    )
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
            "queues": [q.queue.name for q in host.queues],
        }
        print(json.dumps(line), flush=True)
        stop.wait()
    finally:
        host.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        close_services()  # the wiring the functions built, if any
    return 0
