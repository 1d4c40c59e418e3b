"""Test helpers for the Marketo simulator: a fake clock and a running instance with a client.

``Marketo.running(options)`` serves a fresh ``MarketoSandbox`` on a free loopback port and
talks to it over real HTTP with httpx, the way an API user would (identity, then bearer calls).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from sandbox._http import HttpServer
from sandbox.marketo import MarketoOptions, MarketoSandbox

# One TLS context for every test client: building one per client costs ~150 ms (CA bundle load).
_SSL = httpx.create_ssl_context()

CREDENTIALS = {
    "grant_type": "client_credentials",
    "client_id": "sandbox-client-id",
    "client_secret": "sandbox-client-secret",
}


class FakeClock:
    """Epoch seconds that move only when told to."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Marketo:
    def __init__(self, sandbox: MarketoSandbox, server: HttpServer, http: httpx.Client) -> None:
        self.sandbox = sandbox
        self.server = server
        self.http = http
        self._token: str | None = None

    @classmethod
    @contextmanager
    def running(cls, options: MarketoOptions | None = None, **kwargs: Any) -> Iterator[Marketo]:
        sandbox = MarketoSandbox(options or MarketoOptions(), **kwargs)
        with sandbox.serve() as server, httpx.Client(base_url=server.base_url, timeout=10, verify=_SSL) as http:
            yield cls(sandbox, server, http)

    @property
    def url(self) -> str:
        return self.server.base_url

    def token(self, *, fresh: bool = False) -> str:
        if self._token is None or fresh:
            response = self.http.get("/identity/oauth/token", params=CREDENTIALS)
            assert response.status_code == 200, response.text
            self._token = str(response.json()["access_token"])
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kwargs)

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        return self._json(self.request("GET", path, params=params))

    def post(self, path: str, body: Any = None, **params: Any) -> dict[str, Any]:
        return self._json(self.request("POST", path, json=body, params=params))

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def error_code(body: dict[str, Any]) -> str:
    """The single response-level error code of a ``success:false`` envelope."""
    assert body["success"] is False, body
    assert len(body["errors"]) == 1, body
    return str(body["errors"][0]["code"])
