"""Issue 16 on the webhook, end to end through the local host over real HTTP: any body, header or
framing gets a 2xx/4xx (never a 5xx) within 5 s and a 4xx writes nothing; a call that cannot
finish by WEBHOOK_DEADLINE_SECONDS answers 503 + Retry-After and Marketo's retry completes it once."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import function_app
from sync_core.host import server
from sync_core.host.server import LocalHost
from tests.e2e.conftest import SECRET, World

ROUTE = "/api/marketo/sync-person"
pytestmark = pytest.mark.azurite

# -- the fuzz test ---------------------------------------------------------------------------------

_ids = st.one_of(
    st.integers(min_value=-(10**15), max_value=10**15),
    st.sampled_from([0, 10**12, 10**12 - 1, 2**63, -1]),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
_objects = st.fixed_dictionaries(
    {"leadId": _ids},
    optional={
        "syncAs": st.one_of(st.sampled_from(["lead", "contact", "Contact", "", "account"]), st.integers()),
        "ownerId": st.one_of(st.uuids().map(str), st.text(max_size=10), st.none()),
        "extra": st.text(max_size=5),
    },
).map(lambda body: json.dumps(body).encode())
_bodies = st.one_of(
    _objects,
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=20_000).map(lambda n: b"[" * n),
    st.integers(min_value=1, max_value=3000).map(lambda n: b'{"leadId": 1, "x": ' + b"[" * n + b"]" * n + b"}"),
    st.integers(min_value=4000, max_value=9000).map(lambda n: b'{"leadId": 1, "p": "' + b"x" * n + b'"}'),
)
_secrets = st.sampled_from([SECRET, None, "wrong", SECRET + " ", ""])
_framings = st.sampled_from(["length", "chunked", "both", "short", "long", "none"])
_header_noise = st.dictionaries(
    st.sampled_from(["Content-Type", "Accept", "X-Forwarded-For", "Expect", "Connection"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
    max_size=2,
)


def _raw(body: bytes, secret: str | None, framing: str, noise: dict[str, str]) -> bytes:
    head = [f"POST {ROUTE} HTTP/1.1", "Host: localhost", "Connection: close"]
    head += [f"{name}: {value}" for name, value in noise.items() if name != "Connection" and value.strip()]
    if secret is not None:
        head.append(f"X-Sync-Secret: {secret}")
    if framing in ("length", "short", "long"):
        length = {"length": len(body), "short": max(0, len(body) - 3), "long": len(body) + 10}[framing]
        head.append(f"Content-Length: {length}")
        payload = body
    elif framing in ("chunked", "both"):
        head.append("Transfer-Encoding: chunked")
        if framing == "both":
            head.append(f"Content-Length: {len(body)}")
        payload = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    else:
        payload = b""
    return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


def _status_of(address: tuple[str, int], raw: bytes) -> int | None:
    """The first answer's status, or None when the server closed without one."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(raw)
        received = b""
        while b"\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            received += chunk
    return int(received.split(b" ", 2)[1])


def _lead_id(body: bytes) -> int | None:
    try:
        value = json.loads(body)["leadId"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**12 else None


def _written(world: World, lead_id: int | None) -> dict[str, Any]:
    """What a call could have written: Dataverse creates, Marketo writes, and the id's link and claim."""
    marketo_writes = {
        k: v
        for k, v in world.marketo.stats()["endpoints"].items()
        if any(w in k for w in ("push", "delete", "activities/external")) or k.startswith("POST /rest/v1/leads.json")
    }
    state = {}
    if lead_id is not None:
        state = {"link": world.link_of(lead_id), "claim": world.store.get_claim(f"sync-person:{lead_id}")}
    return {"dataverse_creates": world.api_creates(), "marketo_writes": marketo_writes, **state}


def test_any_body_header_or_framing_gets_a_2xx_or_4xx_within_5_s_and_a_4xx_writes_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "READ_TIMEOUT", 0.3)  # a short body is answered 408 after this
    with LocalHost(function_app.app, port=0, run_timers=False) as host:
        address = ("127.0.0.1", int(host.base_url.rsplit(":", 1)[1]))
        before = _written(world, None)

        @settings(
            max_examples=100,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
            derandomize=True,
        )
        @given(body=_bodies, secret=_secrets, framing=_framings, noise=_header_noise)
        @example(body=b'{"leadId": 41}', secret=SECRET, framing="length", noise={})  # no such person: 404
        @example(body=b'{"leadId": 42}', secret=SECRET, framing="chunked", noise={})
        @example(body=b'{"leadId": 43}', secret=SECRET, framing="both", noise={})
        @example(body=b'{"leadId": 44}', secret=SECRET, framing="long", noise={})
        @example(body=b'{"leadId": 1000000000000}', secret=SECRET, framing="length", noise={})
        @example(body=b"[" * 100_000, secret=SECRET, framing="length", noise={})
        def one(body: bytes, secret: str | None, framing: str, noise: dict[str, str]) -> None:
            started = time.monotonic()
            status = _status_of(address, _raw(body, secret, framing, noise))
            seen.add(status)
            assert time.monotonic() - started < 5
            assert status is None or 200 <= status < 500, status
            if status is not None and 400 <= status < 500:
                lead_id = _lead_id(body)
                assert _written(world, lead_id) == {**before, **({"link": None, "claim": None} if lead_id else {})}

        seen: set[int | None] = set()
        one()
        assert {400, 401, 404, 408, 413} <= seen, seen


# -- the deadline ----------------------------------------------------------------------------------


def _person(world: World, i: int) -> int:
    return int(world.marketo.create_lead({"email": f"late{i}@example.com", "lastName": f"Late{i}", "company": "Acme"}))


def _call(client: httpx.Client, lead_id: int) -> httpx.Response:
    return client.post(ROUTE, json={"leadId": lead_id}, headers={"X-Sync-Secret": SECRET})


def test_a_call_that_cannot_finish_by_the_deadline_answers_503_and_writes_nothing(world_factory: Any) -> None:
    world = world_factory(WEBHOOK_DEADLINE_SECONDS="1")
    lead_id = _person(world, 1)
    with (
        LocalHost(function_app.app, port=0, run_timers=False) as host,
        httpx.Client(base_url=host.base_url, timeout=30) as client,
    ):
        _call(client, _person(world, 99))  # warm: schema and token cached
        creates = world.api_creates()
        world.marketo.set_faults([{"path": "leads", "times": 1, "action": {"delay": 2.5}}])
        started = time.monotonic()
        answer = _call(client, lead_id)
        assert time.monotonic() - started < 2
        assert answer.status_code == 503
        assert int(answer.headers["Retry-After"]) > 0
        time.sleep(2.5)  # the work wakes up past the deadline and gives up before the create
        assert world.api_creates() == creates
        assert world.link_of(lead_id) is None
        assert world.store.get_claim(f"sync-person:{lead_id}") is None
        retried = _call(client, lead_id)
        assert retried.json()["status"] == "created"
        assert world.api_creates() == creates + 1


def test_a_create_that_outlives_the_deadline_finishes_and_the_retry_finds_it(world_factory: Any) -> None:
    world = world_factory(WEBHOOK_DEADLINE_SECONDS="1")
    lead_id = _person(world, 1)
    with (
        LocalHost(function_app.app, port=0, run_timers=False) as host,
        httpx.Client(base_url=host.base_url, timeout=30) as client,
    ):
        _call(client, _person(world, 99))
        creates = world.api_creates()
        world.dataverse.set_faults(
            [{"method": "POST", "path": "^/api/data/v9.2/leads$", "times": 1, "action": {"delay": 2.0}}]
        )
        answer = _call(client, lead_id)
        assert answer.status_code == 503
        time.sleep(2.5)
        retried = _call(client, lead_id)
        assert retried.status_code == 200
        assert retried.json()["status"] == "exists"
        link = world.link_of(lead_id)
        assert link is not None
        assert retried.json()["dynamicsId"] == link.dataverse_id
        assert world.api_creates() == creates + 1
