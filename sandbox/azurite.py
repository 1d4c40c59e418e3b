"""Start and stop Azurite's Table service (the real emulator) for the tests, demo and benchmarks.

Azurite is installed by ``npm ci`` into ``node_modules`` (pinned in package.json). It runs in
memory on a free loopback port and is always stopped by whoever started it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteNotInstalled(RuntimeError):
    pass


def azurite_binary() -> str:
    configured = os.environ.get("AZURITE_TABLE_BIN")
    candidates = [configured] if configured else []
    candidates += [str(ROOT / "node_modules" / ".bin" / "azurite-table"), "azurite-table"]
    for candidate in candidates:
        if candidate and (Path(candidate).exists() or shutil.which(candidate)):
            return candidate
    raise AzuriteNotInstalled("azurite-table not found: run `npm ci` (make setup does it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"TableEndpoint=http://127.0.0.1:{port}/{DEV_ACCOUNT};"
    )


@contextmanager
def run_azurite(port: int | None = None, *, timeout: float = 30.0) -> Iterator[str]:
    """Run ``azurite-table`` in memory; yield its connection string; stop it on exit."""
    port = port or free_port()
    proc = subprocess.Popen(
        [
            azurite_binary(),
            "--tableHost",
            "127.0.0.1",
            "--tablePort",
            str(port),
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--silent",
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
                    raise RuntimeError(f"azurite-table did not start: {err}") from None
                time.sleep(0.05)
        yield connection_string(port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:  # an unclosed pipe is a ResourceWarning, an error under pytest's filterwarnings
            proc.stderr.close()
