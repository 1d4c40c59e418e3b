"""Faithful local simulators of the Marketo REST API and the Dataverse Web API.

They stand alone, like the real services: nothing here imports ``sync_core``. Each simulator
is an object with ``handle(Request) -> Response`` served by ``sandbox._http.HttpServer`` on
127.0.0.1. ``python -m sandbox serve`` runs both; tests start them in-process with
``SandboxServers``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO

from sandbox._http import HttpServer
from sandbox.dataverse import DataverseOptions, DataverseSandbox
from sandbox.marketo import MarketoOptions, MarketoSandbox

__all__ = ["DataverseOptions", "DataverseSandbox", "MarketoOptions", "MarketoSandbox", "SandboxServers"]


class SandboxServers:
    """Both simulators on free (or given) loopback ports; a context manager."""

    def __init__(
        self,
        *,
        marketo: MarketoOptions | None = None,
        dataverse: DataverseOptions | None = None,
        marketo_port: int = 0,
        dataverse_port: int = 0,
        request_log: IO[str] | None = None,
        tls: bool = False,
    ) -> None:
        self.marketo = MarketoSandbox(marketo or MarketoOptions())
        self.dataverse = DataverseSandbox(dataverse or DataverseOptions())
        self.ca_bundle: Path | None = None
        context = None
        if tls:
            from sandbox._tls import LocalCA

            ca = LocalCA()
            context = ca.server_context()
            self.ca_bundle = ca.write_ca_bundle(Path(tempfile.mkdtemp(prefix="sandbox-ca-")) / "ca.pem")
        self._servers = [
            # serve() builds the server the one way Marketo is served: with its GZIP_MIN threshold.
            self.marketo.serve(port=marketo_port, request_log=request_log, tls=context),
            HttpServer(
                self.dataverse.handle, service="dataverse", port=dataverse_port, request_log=request_log, tls=context
            ),
        ]

    @property
    def marketo_url(self) -> str:
        return self._servers[0].base_url

    @property
    def dataverse_url(self) -> str:
        return self._servers[1].base_url

    def start(self) -> SandboxServers:
        for server in self._servers:
            server.start()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.stop()

    def __enter__(self) -> SandboxServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
