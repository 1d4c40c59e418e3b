"""The small HTTP layer both simulators stand on.

It owns sockets, threads, TLS, keep-alive, gzip, the request log and the ability to drop a
connection on purpose (fault injection). It knows nothing of Marketo or Dataverse: a simulator
is a callable ``(Request) -> Response``. Standard library only, so the sandbox installs nothing
and starts in milliseconds; one thread per connection, which is what lets the simulators count
requests in flight the way the real services do.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit


class DropConnection(Exception):
    """Raised by a handler to close the connection without sending any response."""


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    base_url: str  # scheme://host[:port] as the client addressed it (from the Host header)
    raw_target: str = ""  # the request target as sent (path + query)
    notes: dict[str, Any] = field(default_factory=dict)  # the app's additions to its request log line

    def header(self, name: str, default: str | None = None) -> str | None:
        value = self.headers.get(name)
        return default if value is None else str(value)

    def arg(self, name: str) -> str | None:
        """First value of a query parameter, or None."""
        values = self.query.get(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode("utf-8"), keep_blank_values=True)

    @property
    def content_type(self) -> str:
        return (self.header("Content-Type") or "").split(";")[0].strip().lower()


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = None
    compress: bool = True  # False: never gzip (a file whose bytes, ranges and length must stay exact)

    @classmethod
    def json(
        cls,
        payload: Any,
        status: int = 200,
        *,
        content_type: str = "application/json;charset=UTF-8",
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        return cls(status=status, body=body, headers=list(headers or []), content_type=content_type)

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status=status, body=text.encode("utf-8"), content_type="text/plain;charset=UTF-8")


App = Callable[[Request], Response]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Buffer each response so headers and body leave in one write (flushed per request by the
    # stdlib); with separate small writes, Nagle plus delayed ACKs cost ~40 ms a call.
    wbufsize = -1
    server: _Server

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return  # the request log below replaces the stderr access log

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        scheme = "https" if self.server.tls else "http"
        host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
        request = Request(
            method=self.command.upper(),
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=self.headers,
            body=body,
            base_url=f"{scheme}://{host}",
            raw_target=self.path,
        )
        started = (time.time(), time.perf_counter())
        try:
            response = self.server.app(request)
        except DropConnection:
            self.server.log(request, 0, started)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)
            return
        except Exception as exc:  # a simulator bug must answer 500, not hang the client
            response = Response.json({"error": {"code": "sandbox", "message": repr(exc)}}, 500)
        self._send(request, response)
        self.server.log(request, response.status, started)

    def _send(self, request: Request, response: Response) -> None:
        body = response.body
        headers = list(response.headers)
        accept = (request.header("Accept-Encoding") or "").lower()
        if (
            response.compress
            and self.server.gzip_min is not None
            and "gzip" in accept
            and len(body) >= self.server.gzip_min
        ):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        self.send_response(response.status)
        if response.content_type and response.status != 204:
            self.send_header("Content-Type", response.content_type)
        for name, value in headers:
            self.send_header(name, value)
        if response.status != 204 and response.status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if request.method != "HEAD" and response.status not in (204, 304):
            self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        app: App,
        *,
        service: str,
        request_log: IO[str] | None,
        gzip_min: int | None,
        tls: ssl.SSLContext | None,
    ) -> None:
        super().__init__(address, _Handler)
        self.app = app
        self.service = service
        self.request_log = request_log
        self.gzip_min = gzip_min
        self.tls = tls
        self._log_lock = threading.Lock()
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)

    def log(self, request: Request, status: int, started: tuple[float, float]) -> None:
        """One JSON line: when the request started (epoch seconds), what it was, and how long
        it took to answer in ms (``start`` and ``ms`` give a benchmark each request's interval),
        and what the app noted on the request (a Dataverse bulk message's ``records``)."""
        if self.request_log is None:
            return
        epoch, counter = started
        line = json.dumps(
            {
                "service": self.service,
                "method": request.method,
                "path": request.path,
                "status": status,
                "start": round(epoch, 6),
                "ms": round((time.perf_counter() - counter) * 1000, 2),
                **request.notes,
            }
        )
        with self._log_lock:
            self.request_log.write(line + "\n")
            self.request_log.flush()


class HttpServer:
    """One simulator on 127.0.0.1, served from a background thread until ``stop()``."""

    def __init__(
        self,
        app: App,
        *,
        service: str,
        port: int = 0,
        request_log: IO[str] | None = None,
        gzip_min: int | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._server = _Server(
            ("127.0.0.1", port), app, service=service, request_log=request_log, gzip_min=gzip_min, tls=tls
        )
        # A short poll interval: stop() waits for it, and tests start and stop many servers.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"sandbox-{service}", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        scheme = "https" if self._server.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
