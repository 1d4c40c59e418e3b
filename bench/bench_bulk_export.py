"""How long a Bulk Lead Extract of N leads takes on the Marketo simulator, and how big the file is.

Seeds N leads into an in-process ``MarketoSandbox`` (processing time 0, no limits), serves it on
loopback and, over plain HTTP with the standard library's ``http.client``, does what a client
does: token, ``create.json`` (createdAt filter around now, 8 fields), ``enqueue.json``, polls
``status.json`` every 50 ms until Completed, then downloads ``file.json`` and checks its
SHA-256 against ``fileChecksum``. The time measured is the simulator's own work (building the
file when the job starts, serving it), not the minutes the real service takes. Prints one JSON
object.

    .venv/bin/python bench/bench_bulk_export.py [--leads 100000]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import platform
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox.marketo import MarketoOptions, MarketoSandbox

FIELDS = ["id", "email", "firstName", "lastName", "company", "title", "phone", "updatedAt"]


def _call(conn: http.client.HTTPConnection, method: str, path: str, token: str, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    if path.endswith("file.json"):
        if response.status != 200:
            raise RuntimeError(f"file.json answered {response.status}: {payload[:200]!r}")
        return payload
    answer = json.loads(payload)
    if not answer.get("success"):
        raise RuntimeError(f"{path}: {answer}")
    return answer


def run(leads: int) -> dict[str, Any]:
    sandbox = MarketoSandbox(MarketoOptions(limits=False, bulk_processing_seconds=0))
    started = time.perf_counter()
    sandbox.seed(leads)
    seed_seconds = time.perf_counter() - started
    with sandbox.serve() as server:
        netloc = urlsplit(server.base_url).netloc
        conn = http.client.HTTPConnection(netloc, timeout=300)
        query = urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": "sandbox-client-id",
                "client_secret": "sandbox-client-secret",
            }
        )
        conn.request("GET", f"/identity/oauth/token?{query}")
        token = json.loads(conn.getresponse().read())["access_token"]
        now = datetime.now(UTC)
        window = {
            "startAt": (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "endAt": (now + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        t0 = time.perf_counter()
        created = _call(
            conn,
            "POST",
            "/bulk/v1/leads/export/create.json",
            token,
            {"fields": FIELDS, "filter": {"createdAt": window}},
        )
        export_id = created["result"][0]["exportId"]
        _call(conn, "POST", f"/bulk/v1/leads/export/{export_id}/enqueue.json", token)
        polls = 0
        while True:
            polls += 1
            status = _call(conn, "GET", f"/bulk/v1/leads/export/{export_id}/status.json", token)["result"][0]
            if status["status"] in ("Completed", "Failed", "Canceled"):
                break
            time.sleep(0.05)
        t1 = time.perf_counter()
        data = _call(conn, "GET", f"/bulk/v1/leads/export/{export_id}/file.json", token)
        t2 = time.perf_counter()
        conn.close()
    checksum_ok = status.get("fileChecksum") == "sha256:" + hashlib.sha256(data).hexdigest()
    return {
        "benchmark": "bulk_lead_export",
        "leads": leads,
        "fields": len(FIELDS),
        "status": status["status"],
        "numberOfRecords": status.get("numberOfRecords"),
        "fileBytes": len(data),
        "fileMB": round(len(data) / 1024 / 1024, 2),
        "checksumOk": checksum_ok,
        "seedSeconds": round(seed_seconds, 2),
        "createToCompletedSeconds": round(t1 - t0, 2),
        "statusPolls": polls,
        "downloadSeconds": round(t2 - t1, 2),
        "totalSeconds": round(t2 - t0, 2),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000)
    args = parser.parse_args()
    print(json.dumps(run(args.leads)))


if __name__ == "__main__":
    main()
