"""DataverseClient over an ``httpx.MockTransport`` fake of the Dataverse Web API (fake clocks, no waits)."""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from azure.core.credentials import AccessToken
from pydantic import SecretStr

from sync_core.core.errors import (
    ApiError,
    ConfigError,
    DeltaTokenExpiredError,
    RateLimitedError,
    RecordError,
    TransientError,
)
from sync_core.core.schema import AttributeMeta, EntityMeta, RequiredLevel
from sync_core.dataverse._batch import BatchPart, build_batch, read_batch
from sync_core.dataverse.client import DataverseClient, WriteOutcome
from sync_core.http.counters import ApiCounters
from sync_core.http.retry import RetryPolicy
from sync_core.settings import Settings
from sync_core.wiring.credentials import StaticTokenCredential, build_dataverse_credential
from tests.test_retry import FakeClock

ORG = "http://dataverse.test"
API = f"{ORG}/api/data/v9.2"
LEAD = EntityMeta(
    logical_name="lead",
    entity_set="leads",
    primary_id="leadid",
    attributes={"lastname": AttributeMeta(logical_name="lastname", attribute_type="String", max_length=50)},
)
CRAFTED_EMAIL = "x' or 1 eq 1 or 'a"
_PAIR = re.compile(r"(\w+) eq ('(?:[^']|'')*'|[0-9a-f-]{36})")
_LITERAL = re.compile(r"'(?:[^']|'')*'")
_KEY = re.compile(r"^/api/data/v9\.2/(\w+)\(([^)]*)\)$")

Reply = httpx.Response | Exception | dict[str, Any]


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


class FakeCredential:
    def __init__(self, clock: FakeClock, lifetime: int = 3600) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.clock = clock
        self.lifetime = lifetime

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls.append(scopes)
        return AccessToken(f"dv-token-{len(self.calls)}", int(self.clock.now) + self.lifetime)


class FakeDataverse:
    """Leads in memory: validation (lastname ≤ 50), all-or-nothing bulk messages, $batch, metadata."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.bearers: list[str] = []  # as sent (a replayed request object is re-stamped in place)
        self.valid_tokens: set[str] = {"dv-token-1"}
        self.rows: dict[str, dict[str, Any]] = {}
        self.writes: Counter[str] = Counter()  # row id -> times written
        self.scripts: defaultdict[tuple[str, str], list[Reply]] = defaultdict(list)

    def script(self, method: str, path: str, *replies: Reply) -> None:
        self.scripts[(method, path)].extend(replies)

    def sent(self, method: str | None = None, path: str | None = None) -> list[httpx.Request]:
        return [r for r in self.requests if method in (None, r.method) and path in (None, r.url.path)]

    def seed(self, count: int) -> list[str]:
        ids = [str(uuid.UUID(int=n + 1)) for n in range(count)]
        for n, row_id in enumerate(ids):
            self.rows[row_id] = {"leadid": row_id, "lastname": f"L{n}", "emailaddress1": f"user{n}@example.com"}
        return ids

    # -- the fake service --------------------------------------------------------------------------

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bearers.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.valid_tokens:
            return httpx.Response(401)
        queue = self.scripts.get((request.method, request.url.path))
        if queue:
            reply = queue.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply if isinstance(reply, httpx.Response) else httpx.Response(200, json=reply)
        body = (
            json.loads(request.content)
            if request.content and "json" in request.headers.get("content-type", "")
            else None
        )
        return self.handle(request.method, request.url.path, request.url.params, request.headers, body, request.content)

    def handle(self, method: str, path: str, params: Any, headers: Any, body: Any, raw: bytes = b"") -> httpx.Response:
        if path == "/api/data/v9.2/$batch":
            return self._batch(headers.get("content-type", ""), raw)
        if path == "/api/data/v9.2/leads" and method == "GET":
            return self._query(params.get("$filter", ""))
        if path == "/api/data/v9.2/leads" and method == "POST":
            problem = self._invalid(body)
            if problem:
                return problem
            row_id = self._write(body)
            return httpx.Response(204, headers={"OData-EntityId": f"{API}/leads({row_id})"})
        if path.endswith("/Microsoft.Dynamics.CRM.UpdateMultiple"):
            return self._multiple(body["Targets"], lambda t: t["leadid"], must_exist=True)
        if path.endswith("/Microsoft.Dynamics.CRM.UpsertMultiple"):
            return self._multiple(body["Targets"], self._upsert_id, must_exist=False)
        if path.endswith("/Microsoft.Dynamics.CRM.CreateMultiple"):
            for target in body["Targets"]:
                if target.get("@odata.type") != "Microsoft.Dynamics.CRM.lead":
                    return error(400, "0x80048d19", "@odata.type missing")
                problem = self._invalid(target)
                if problem:
                    return problem
            return httpx.Response(200, json={"Ids": [self._write(t) for t in body["Targets"]]})
        key = _KEY.match(path)
        if key and key.group(1) == "leads":
            row_id = key.group(2)
            if method == "DELETE":
                return httpx.Response(204) if self.rows.pop(row_id, None) else error(404, "0x80040217", "no such")
            if method == "PATCH":
                if headers.get("if-match") == "*" and row_id not in self.rows:
                    return error(404, "0x80040217", f"lead With Id = {row_id} Does Not Exist")
                problem = self._invalid(body)
                if problem:
                    return problem
                self._write({**body, "leadid": row_id})
                return httpx.Response(204)
        return error(404, "0x80060888", f"Resource not found for the segment '{path}'.")

    def _invalid(self, row: dict[str, Any]) -> httpx.Response | None:
        if len(str(row.get("lastname", ""))) > 50:
            return error(
                400,
                "0x80044331",
                "A validation error occurred.  The length of the 'lastname' attribute of the 'lead' entity exceeded "
                "the maximum allowed length of '50'.",
            )
        return None

    def _write(self, row: dict[str, Any]) -> str:
        row_id = row.get("leadid") or str(uuid.uuid4())
        clean = {k: v for k, v in row.items() if not k.startswith("@")}
        self.rows[row_id] = {**self.rows.get(row_id, {}), **clean, "leadid": row_id}
        self.writes[row_id] += 1
        return str(row_id)

    def _upsert_id(self, target: dict[str, Any]) -> str:
        """The row an UpsertMultiple target addresses (a new id when its key finds none)."""
        column, value = self._alternate_key(target)
        if column is None:
            return str(value)
        for row_id, row in self.rows.items():
            if row.get(column) == value:
                return row_id
        return str(uuid.uuid5(uuid.NAMESPACE_URL, target["@odata.id"]))

    @staticmethod
    def _alternate_key(target: dict[str, Any]) -> tuple[str | None, str]:
        segment = target["@odata.id"]
        inner = segment[segment.index("(") + 1 : -1]
        if "=" not in inner:
            return None, inner
        column, literal = inner.split("=", 1)
        return column, literal[1:-1].replace("''", "'")

    def _multiple(
        self, targets: list[dict[str, Any]], key: Callable[[dict[str, Any]], str], *, must_exist: bool
    ) -> httpx.Response:
        for target in targets:  # all or nothing, like a standard table
            if target.get("@odata.type") != "Microsoft.Dynamics.CRM.lead":
                return error(400, "0x80048d19", "@odata.type missing")
            problem = self._invalid(target)
            if problem:
                return problem
            if must_exist and key(target) not in self.rows:
                return error(404, "0x80040217", "Does Not Exist")
            if "@odata.id" in target and (self._alternate_key(target)[0] or "leadid") in target:
                return error(400, "0x80040203", "The key is specified both in '@odata.id' and in the record.")
        for target in targets:
            from_key = {}
            if "@odata.id" in target:
                column, value = self._alternate_key(target)
                from_key = {column: value} if column else {}
            self._write({**target, **from_key, "leadid": key(target)})
        return httpx.Response(204)

    def _query(self, condition: str) -> httpx.Response:
        syntax = _LITERAL.sub("L", condition)
        assert re.fullmatch(r"\((\w+ eq \S+)( or \w+ eq \S+)*\)", syntax), syntax  # only or-chains of eq
        wanted = [
            (col, lit[1:-1].replace("''", "'") if lit.startswith("'") else lit) for col, lit in _PAIR.findall(condition)
        ]
        rows = [row for row in self.rows.values() if any(str(row.get(col)) == val for col, val in wanted)]
        return httpx.Response(200, json={"value": [{"@odata.etag": 'W/"1"', **row} for row in rows]})

    def _batch(self, content_type: str, raw: bytes) -> httpx.Response:
        boundary = content_type.split("boundary=")[1]
        answers = []
        for part in raw.decode().split(f"--{boundary}")[1:-1]:
            _, _, http_part = part.strip("\r\n").partition("\r\n\r\n")
            head, _, body_text = http_part.partition("\r\n\r\n")
            request_line, *header_lines = head.split("\r\n")
            method, url, _ = request_line.split(" ")
            headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
            body = json.loads(body_text) if body_text.strip() else None
            answer = self.handle(method, url, {}, headers, body)
            lines = [f"HTTP/1.1 {answer.status_code} X"]
            lines += [f"{k}: {v}" for k, v in answer.headers.items() if k.lower() in ("odata-entityid", "content-type")]
            answers.append(
                "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
                + "\r\n".join(lines)
                + "\r\n\r\n"
                + answer.content.decode()
            )
        out = "".join(f"--batchresponse_1\r\n{a}\r\n" for a in answers) + "--batchresponse_1--\r\n"
        return httpx.Response(
            200, content=out.encode(), headers={"Content-Type": "multipart/mixed; boundary=batchresponse_1"}
        )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_700_000_000.0)


@pytest.fixture
def fake() -> FakeDataverse:
    return FakeDataverse()


@pytest.fixture
def credential(clock: FakeClock) -> FakeCredential:
    return FakeCredential(clock)


@pytest.fixture
def counters() -> ApiCounters:
    return ApiCounters()


@contextmanager
def make_client(
    fake: FakeDataverse, credential: Any, clock: FakeClock, counters: ApiCounters | None = None, batch_size: int = 1000
) -> Iterator[DataverseClient]:
    with httpx.Client(transport=httpx.MockTransport(fake)) as http:
        yield DataverseClient(
            http,
            base_url=ORG,
            credential=credential,
            batch_size=batch_size,
            counters=counters,
            sleep=clock.sleep,
            clock=clock,
            wall_clock=clock,
        )


@pytest.fixture
def client(
    fake: FakeDataverse, credential: FakeCredential, clock: FakeClock, counters: ApiCounters
) -> Iterator[DataverseClient]:
    with make_client(fake, credential, clock, counters) as dv:
        yield dv


# -- auth and headers ----------------------------------------------------------------------------------


def test_token_is_asked_once_with_the_org_scope_and_reused(
    client: DataverseClient, fake: FakeDataverse, credential: FakeCredential, counters: ApiCounters
) -> None:
    ids = fake.seed(1)
    for _ in range(4):
        client.update("leads", ids[0], {"firstname": "Ada"})
    assert credential.calls == [(f"{ORG}/.default",)]
    assert counters.token_calls("dataverse") == 1
    assert counters.calls("dataverse", "update") == 4


def test_token_is_renewed_five_minutes_before_expiry(
    client: DataverseClient, fake: FakeDataverse, credential: FakeCredential, clock: FakeClock
) -> None:
    fake.valid_tokens.add("dv-token-2")
    ids = fake.seed(1)
    client.update("leads", ids[0], {"firstname": "A"})
    clock.now += 3600 - 301
    client.update("leads", ids[0], {"firstname": "B"})
    assert len(credential.calls) == 1
    clock.now += 2
    client.update("leads", ids[0], {"firstname": "C"})
    assert len(credential.calls) == 2


def test_a_401_refreshes_the_token_once_and_replays(
    client: DataverseClient, fake: FakeDataverse, credential: FakeCredential
) -> None:
    ids = fake.seed(1)
    fake.valid_tokens = {"dv-token-2"}  # the first token was revoked
    client.update("leads", ids[0], {"firstname": "Ada"})
    assert len(credential.calls) == 2
    assert len(fake.sent("PATCH")) == 2
    assert fake.bearers == ["Bearer dv-token-1", "Bearer dv-token-2"]


def test_standard_odata_headers_on_reads_and_writes(client: DataverseClient, fake: FakeDataverse) -> None:
    ids = fake.seed(1)
    client.get_rows(LEAD, ids, select=["lastname"])
    client.update("leads", ids[0], {"firstname": "Ada"})
    get, patch = fake.sent("GET")[0], fake.sent("PATCH")[0]
    for request in (get, patch):
        assert request.headers["OData-MaxVersion"] == "4.0"
        assert request.headers["OData-Version"] == "4.0"
        assert request.headers["Accept"] == "application/json"
    assert get.headers["If-None-Match"] == "null"
    assert "If-None-Match" not in patch.headers
    assert patch.headers["Content-Type"] == "application/json"
    assert patch.headers["If-Match"] == "*"


# -- retry rules -------------------------------------------------------------------------------------------

ROW = str(uuid.UUID(int=1))
PATHS = {
    "get_rows": ("GET", "/api/data/v9.2/leads"),
    "update": ("PATCH", f"/api/data/v9.2/leads({ROW})"),
    "delete": ("DELETE", f"/api/data/v9.2/leads({ROW})"),
    "create": ("POST", "/api/data/v9.2/leads"),
    "update_multiple": ("POST", "/api/data/v9.2/leads/Microsoft.Dynamics.CRM.UpdateMultiple"),
    "upsert_multiple": ("POST", "/api/data/v9.2/leads/Microsoft.Dynamics.CRM.UpsertMultiple"),
    "create_multiple": ("POST", "/api/data/v9.2/leads/Microsoft.Dynamics.CRM.CreateMultiple"),
}


def _do(client: DataverseClient, operation: str) -> object:
    if operation == "get_rows":
        return client.get_rows(LEAD, [ROW], select=["lastname"])
    if operation == "update":
        client.update("leads", ROW, {"firstname": "Ada"})
        return None
    if operation == "delete":
        return client.delete("leads", ROW)
    if operation == "create":
        return client.create("leads", {"lastname": "New"})
    if operation == "update_multiple":
        return client.update_multiple(LEAD, [{"leadid": ROW, "firstname": "Ada"}])
    if operation == "upsert_multiple":
        return client.upsert_multiple(LEAD, [{"leadid": ROW, "firstname": "Ada"}])
    return client.create_multiple(LEAD, [{"lastname": "New"}])


def _drop() -> Exception:
    return httpx.RemoteProtocolError("Server disconnected without sending a response.")


@pytest.mark.parametrize(
    ("operation", "fault", "attempts", "sleeps", "raises"),
    [
        pytest.param("get_rows", httpx.Response(503), 2, [0.5], None, id="get-503"),
        pytest.param("get_rows", httpx.Response(500), 1, [], ApiError, id="get-500-permanent"),
        pytest.param("get_rows", httpx.ReadTimeout("slow"), 2, [0.5], None, id="get-timeout"),
        pytest.param("update", httpx.Response(502), 2, [0.5], None, id="patch-if-match-502"),
        pytest.param("update", _drop(), 2, [0.5], None, id="patch-dropped"),
        pytest.param("delete", httpx.Response(504), 2, [0.5], None, id="delete-504"),
        pytest.param("update_multiple", httpx.Response(503), 2, [0.5], None, id="updatemultiple-503"),
        pytest.param("upsert_multiple", _drop(), 2, [0.5], None, id="upsertmultiple-dropped"),
        pytest.param("create", httpx.Response(502), 1, [], TransientError, id="create-502-not-resent"),
        pytest.param("create", _drop(), 1, [], TransientError, id="create-dropped-not-resent"),
        pytest.param("create", httpx.ReadTimeout("slow"), 1, [], TransientError, id="create-timeout-not-resent"),
        pytest.param("create_multiple", httpx.Response(504), 1, [], TransientError, id="createmultiple-not-resent"),
        pytest.param("create", httpx.ConnectError("refused"), 2, [0.5], None, id="create-never-sent-is-resent"),
        pytest.param(
            "create",
            httpx.Response(429, headers={"Retry-After": "7"}),
            2,
            [7.0],
            None,
            id="create-429-refused-is-resent-after-retry-after",
        ),
        pytest.param(
            "update_multiple", httpx.Response(429, headers={"Retry-After": "2"}), 2, [2.0], None, id="bulk-429"
        ),
        pytest.param(
            "get_rows", httpx.Response(429, headers={"Retry-After": "600"}), 1, [], RateLimitedError, id="429-over-cap"
        ),
        pytest.param("get_rows", httpx.Response(429), 2, [0.5], None, id="429-without-retry-after-backs-off"),
    ],
)
def test_retry_rules(
    client: DataverseClient,
    fake: FakeDataverse,
    clock: FakeClock,
    operation: str,
    fault: Reply,
    attempts: int,
    sleeps: list[float],
    raises: type[Exception] | None,
) -> None:
    fake.seed(1)
    method, path = PATHS[operation]
    fake.script(method, path, fault)
    if raises is None:
        _do(client, operation)
    else:
        with pytest.raises(raises):
            _do(client, operation)
    assert len(fake.sent(method, path)) == attempts
    assert clock.sleeps == pytest.approx(sleeps, rel=0.3)


def test_a_create_that_failed_uncertainly_wrote_at_most_once(client: DataverseClient, fake: FakeDataverse) -> None:
    def applied_then_dropped(request: httpx.Request) -> httpx.Response:
        fake.handle("POST", "/api/data/v9.2/leads", {}, request.headers, json.loads(request.content))
        raise _drop()

    transport_fake = fake.__call__

    def transport(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/api/data/v9.2/leads":
            fake.requests.append(request)
            return applied_then_dropped(request)
        return transport_fake(request)

    with httpx.Client(transport=httpx.MockTransport(transport)) as http:
        dv = DataverseClient(http, base_url=ORG, credential=StaticTokenCredential("dv-token-1"), sleep=lambda _: None)
        with pytest.raises(TransientError):
            dv.create("leads", {"lastname": "Once"})
    assert sum(1 for row in fake.rows.values() if row["lastname"] == "Once") == 1
    assert len(fake.sent("POST")) == 1


# -- change tracking --------------------------------------------------------------------------------------


def _page(rows: list[dict[str, Any]], *, next_link: str | None = None, delta: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"@odata.context": f"{API}/$metadata#leads", "value": rows}
    if next_link:
        body["@odata.nextLink"] = next_link
    if delta:
        body["@odata.deltaLink"] = delta
    return httpx.Response(200, json=body, headers={"Preference-Applied": "odata.track-changes"})


def test_initial_read_pages_through_to_the_delta_link(client: DataverseClient, fake: FakeDataverse) -> None:
    a, b = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
    fake.script(
        "GET",
        "/api/data/v9.2/leads",
        _page([{"@odata.etag": 'W/"5"', "leadid": a, "lastname": "A"}], next_link=f"{API}/leads?$skiptoken=p2"),
        _page([{"leadid": b, "lastname": "B"}], delta=f"{API}/leads?$deltatoken=100%2101%2f01%2f2025"),
    )
    pages = list(client.iter_changes("leads", select=["leadid", "lastname"], delta_link=None, page_size=1))
    assert [p.rows for p in pages] == [[{"leadid": a, "lastname": "A"}], [{"leadid": b, "lastname": "B"}]]
    assert [p.delta_link for p in pages] == [None, f"{API}/leads?$deltatoken=100%2101%2f01%2f2025"]
    first, second = fake.sent("GET")
    assert first.headers["Prefer"] == "odata.track-changes,odata.maxpagesize=1"
    assert first.url.params["$select"] == "leadid,lastname"
    assert second.url.params["$skiptoken"] == "p2"


def test_delta_read_uses_the_stored_link_and_separates_deletions(client: DataverseClient, fake: FakeDataverse) -> None:
    gone = str(uuid.UUID(int=9))
    fake.script(
        "GET",
        "/api/data/v9.2/leads",
        _page(
            [
                {"leadid": str(uuid.UUID(int=1)), "lastname": "Changed"},
                {"@odata.context": f"{API}/$metadata#leads/$deletedEntity", "id": gone, "reason": "deleted"},
            ],
            delta=f"{API}/leads?$deltatoken=200",
        ),
    )
    [page] = client.iter_changes("leads", select=["lastname"], delta_link=f"{API}/leads?$deltatoken=100")
    assert page.deleted_ids == [gone]
    assert page.rows == [{"leadid": str(uuid.UUID(int=1)), "lastname": "Changed"}]
    assert page.delta_link == f"{API}/leads?$deltatoken=200"
    assert fake.sent("GET")[0].url.params["$deltatoken"] == "100"


@pytest.mark.parametrize(
    "answer",
    [
        error(400, "0x80044352", "Version stamp associated with the client has expired. Please perform a full sync."),
        error(400, "", "Version stamp associated with the client has expired. Please perform a full sync."),
        error(410, "", "Gone"),
    ],
    ids=["code", "message", "410"],
)
def test_an_expired_delta_token_is_its_own_error(
    client: DataverseClient, fake: FakeDataverse, answer: httpx.Response
) -> None:
    fake.script("GET", "/api/data/v9.2/leads", answer)
    with pytest.raises(DeltaTokenExpiredError):
        list(client.iter_changes("leads", select=["lastname"], delta_link=f"{API}/leads?$deltatoken=1"))


def test_an_unrelated_400_on_a_delta_read_is_not_called_expired(client: DataverseClient, fake: FakeDataverse) -> None:
    fake.script("GET", "/api/data/v9.2/leads", error(400, "0x80060888", "Could not find a property named 'x'"))
    with pytest.raises(ApiError) as raised:
        list(client.iter_changes("leads", select=["x"], delta_link=f"{API}/leads?$deltatoken=1"))
    assert not isinstance(raised.value, DeltaTokenExpiredError)


def test_a_table_without_change_tracking_fails_loudly(client: DataverseClient, fake: FakeDataverse) -> None:
    fake.script("GET", "/api/data/v9.2/leads", httpx.Response(200, json={"value": [{"leadid": ROW}]}))
    with pytest.raises(ApiError, match="enable change tracking"):
        list(client.iter_changes("leads", select=["lastname"], delta_link=None))


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200),
        httpx.Response(204),
        httpx.Response(200, json={"@odata.context": f"{API}/$metadata#leads/$delta", "value": []}),
    ],
    ids=["empty-body", "no-content", "no-delta-link"],
)
def test_a_delta_read_answered_without_a_new_link_keeps_the_old_one(
    client: DataverseClient, fake: FakeDataverse, answer: httpx.Response
) -> None:
    old = f"{API}/leads?$deltatoken=100"
    fake.script("GET", "/api/data/v9.2/leads", answer)
    [page] = client.iter_changes("leads", select=["lastname"], delta_link=old)
    assert (page.rows, page.deleted_ids, page.delta_link) == ([], [], old)
    assert len(fake.sent("GET")) == 1


def test_delta_rows_without_a_new_link_are_handed_out_and_the_old_link_kept(
    client: DataverseClient, fake: FakeDataverse
) -> None:
    old = f"{API}/leads?$deltatoken=100"
    fake.script("GET", "/api/data/v9.2/leads", _page([{"leadid": ROW, "lastname": "Changed"}]))
    [page] = client.iter_changes("leads", select=["lastname"], delta_link=old)
    assert page.rows == [{"leadid": ROW, "lastname": "Changed"}]
    assert page.delta_link == old  # the window is read again next time; the merge makes that harmless


def test_an_initial_read_with_an_empty_body_is_still_an_error(client: DataverseClient, fake: FakeDataverse) -> None:
    fake.script("GET", "/api/data/v9.2/leads", httpx.Response(200))
    with pytest.raises(ApiError, match="not JSON"):
        list(client.iter_changes("leads", select=["lastname"], delta_link=None))


def test_a_repeated_next_link_is_a_paging_loop(client: DataverseClient, fake: FakeDataverse) -> None:
    loop = f"{API}/leads?$skiptoken=same"
    fake.script("GET", "/api/data/v9.2/leads", *[_page([], next_link=loop)] * 3)
    with pytest.raises(ApiError, match="paging loop"):
        list(client.iter_changes("leads", select=["lastname"], delta_link=None))
    assert len(fake.sent("GET")) == 2


def test_a_link_to_another_host_is_refused_before_any_token_is_sent(
    client: DataverseClient, fake: FakeDataverse
) -> None:
    with pytest.raises(ApiError, match="outside"):
        list(client.iter_changes("leads", select=["lastname"], delta_link="https://evil.test/api/data/v9.2/leads?x=1"))
    assert fake.requests == []


# -- look-ups ---------------------------------------------------------------------------------------------


def test_get_rows_filters_on_the_primary_key_in_chunks(client: DataverseClient, fake: FakeDataverse) -> None:
    ids = fake.seed(250)
    rows = client.get_rows(LEAD, [*ids, "not-a-guid", ids[0]], select=["lastname"])
    assert sorted(r["leadid"] for r in rows) == sorted(ids)
    calls = fake.sent("GET")
    assert len(calls) == 3
    assert calls[0].url.params["$select"] == "leadid,lastname"
    assert calls[0].url.params["$filter"].startswith(f"(leadid eq {ids[0]} or leadid eq {ids[1]} ")


def test_get_rows_by_entity_set_name_reads_the_definition_once(client: DataverseClient, fake: FakeDataverse) -> None:
    ids = fake.seed(1)
    definitions = {"value": [{"LogicalName": "lead", "EntitySetName": "leads", "PrimaryIdAttribute": "leadid"}]}
    fake.script("GET", "/api/data/v9.2/EntityDefinitions", definitions)
    assert client.get_rows("leads", ids, select=["lastname"])[0]["leadid"] == ids[0]
    assert client.get_rows("leads", ids, select=["lastname"])[0]["leadid"] == ids[0]
    [definition] = fake.sent("GET", "/api/data/v9.2/EntityDefinitions")
    assert definition.url.params["$filter"] == "EntitySetName eq 'leads'"


def test_a_crafted_email_cannot_widen_find_by_emails(client: DataverseClient, fake: FakeDataverse) -> None:
    fake.seed(5)
    found = client.find_by_emails("leads", [CRAFTED_EMAIL], select=["lastname"])
    assert found == []
    sent = fake.sent("GET")[0].url.params["$filter"]
    assert sent == "(emailaddress1 eq 'x'' or 1 eq 1 or ''a')"


def test_find_by_emails_matches_and_chunks(client: DataverseClient, fake: FakeDataverse) -> None:
    fake.seed(120)
    found = client.find_by_emails("leads", [f"user{n}@example.com" for n in range(120)], select=["lastname"])
    assert len(found) == 120
    assert len(fake.sent("GET")) == 3  # 50 values per filter


# -- single writes -----------------------------------------------------------------------------------------


def test_create_returns_the_new_id(client: DataverseClient, fake: FakeDataverse) -> None:
    new_id = client.create("leads", {"lastname": "Lovelace"})
    assert fake.rows[new_id]["lastname"] == "Lovelace"


def test_create_rejected_by_validation_is_a_record_error(client: DataverseClient, fake: FakeDataverse) -> None:
    with pytest.raises(RecordError) as raised:
        client.create("leads", {"lastname": "x" * 51})
    assert raised.value.code == "0x80044331"
    assert "maximum allowed length" in str(raised.value)
    assert fake.rows == {}


def test_update_of_a_missing_row_is_a_record_error_and_never_creates(
    client: DataverseClient, fake: FakeDataverse
) -> None:
    with pytest.raises(RecordError) as raised:
        client.update("leads", ROW, {"lastname": "X"})
    assert raised.value.code == "0x80040217"
    assert fake.rows == {}


def test_delete_says_whether_the_row_was_there(client: DataverseClient, fake: FakeDataverse) -> None:
    [row_id] = fake.seed(1)
    assert client.delete("leads", row_id) is True
    assert client.delete("leads", row_id) is False


# -- bulk writes -------------------------------------------------------------------------------------------


def test_update_multiple_batches_by_batch_size(
    fake: FakeDataverse, credential: FakeCredential, clock: FakeClock, counters: ApiCounters
) -> None:
    ids = fake.seed(2500)
    with make_client(fake, credential, clock, counters, batch_size=1000) as client:
        outcomes = client.update_multiple(LEAD, [{"leadid": row_id, "firstname": "Same"} for row_id in ids])
    assert all(o.ok for o in outcomes)
    assert [o.index for o in outcomes] == list(range(2500))
    bodies = [json.loads(r.content)["Targets"] for r in fake.sent("POST")]
    assert [len(b) for b in bodies] == [1000, 1000, 500]
    assert bodies[0][0]["@odata.type"] == "Microsoft.Dynamics.CRM.lead"
    assert counters.calls("dataverse", "updatemultiple") == 3
    assert set(fake.writes.values()) == {1}


def test_a_rejected_batch_isolates_the_bad_record_and_lands_the_others(
    client: DataverseClient, fake: FakeDataverse
) -> None:
    ids = fake.seed(6)
    rows = [{"leadid": row_id, "lastname": f"New{n}"} for n, row_id in enumerate(ids)]
    rows[2]["lastname"] = "x" * 51
    rows[4]["lastname"] = "y" * 60
    outcomes = client.update_multiple(LEAD, rows)
    assert [o.ok for o in outcomes] == [True, True, False, True, False, True]
    bad = outcomes[2]
    assert (bad.index, bad.status, bad.code) == (2, 400, "0x80044331")
    assert "maximum allowed length" in (bad.message or "")
    assert [fake.rows[i]["lastname"] for i in ids] == ["New0", "New1", "L2", "New3", "L4", "New5"]
    assert fake.writes == Counter({ids[n]: 1 for n in (0, 1, 3, 5)})  # each good row written once
    batch = fake.sent("POST", "/api/data/v9.2/$batch")
    assert len(batch) == 1
    assert batch[0].headers["Prefer"] == "odata.continue-on-error"


def test_create_multiple_isolation_creates_each_good_record_exactly_once(
    client: DataverseClient, fake: FakeDataverse
) -> None:
    rows = [{"lastname": "Good1"}, {"lastname": "z" * 51}, {"lastname": "Good2"}]
    outcomes = client.create_multiple(LEAD, rows)
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[0].id in fake.rows
    assert outcomes[2].id in fake.rows
    assert sorted(row["lastname"] for row in fake.rows.values()) == ["Good1", "Good2"]


def test_create_multiple_returns_ids_in_input_order(client: DataverseClient, fake: FakeDataverse) -> None:
    outcomes = client.create_multiple(LEAD, [{"lastname": f"N{n}"} for n in range(3)])
    assert [fake.rows[o.id or ""]["lastname"] for o in outcomes] == ["N0", "N1", "N2"]


def test_upsert_multiple_by_alternate_key_escapes_the_key(client: DataverseClient, fake: FakeDataverse) -> None:
    client.upsert_multiple(LEAD, [{"emailaddress1": "o'brien@example.com", "lastname": "OB"}], key=["emailaddress1"])
    target = json.loads(fake.sent("POST")[0].content)["Targets"][0]
    assert target["@odata.id"] == "leads(emailaddress1='o''brien@example.com')"
    assert [row["emailaddress1"] for row in fake.rows.values()] == ["o'brien@example.com"]


def test_upsert_multiple_by_primary_key_addresses_the_row_and_leaves_the_key_out_of_the_record(
    client: DataverseClient, fake: FakeDataverse
) -> None:
    [existing] = fake.seed(1)
    fresh = str(uuid.UUID(int=77))
    outcomes = client.upsert_multiple(
        LEAD, [{"leadid": existing, "jobtitle": "CTO"}, {"leadid": fresh, "lastname": "N"}]
    )
    assert [(o.ok, o.id) for o in outcomes] == [(True, existing), (True, fresh)]
    targets = json.loads(fake.sent("POST")[0].content)["Targets"]
    assert [t["@odata.id"] for t in targets] == [f"leads({existing})", f"leads({fresh})"]
    assert all("leadid" not in t for t in targets)
    assert fake.rows[existing]["jobtitle"] == "CTO"
    assert fake.rows[fresh]["lastname"] == "N"


def test_rows_that_cannot_be_addressed_fail_without_being_sent(client: DataverseClient, fake: FakeDataverse) -> None:
    ids = fake.seed(1)
    outcomes = client.update_multiple(LEAD, [{"lastname": "no key"}, {"leadid": ids[0], "lastname": "ok"}])
    assert outcomes[0] == WriteOutcome(0, False, code="invalid_input", message="row has no leadid")
    assert outcomes[1].ok
    assert len(json.loads(fake.sent("POST")[0].content)["Targets"]) == 1


def test_a_payload_too_large_is_split_in_halves(client: DataverseClient, fake: FakeDataverse) -> None:
    ids = fake.seed(4)
    path = "/api/data/v9.2/leads/Microsoft.Dynamics.CRM.UpdateMultiple"
    fake.script("POST", path, error(413, "", "Request Entity Too Large"))
    outcomes = client.update_multiple(LEAD, [{"leadid": i, "lastname": "S"} for i in ids])
    assert all(o.ok for o in outcomes)
    assert [len(json.loads(r.content)["Targets"]) for r in fake.sent("POST", path)] == [4, 2, 2]


def _not_supported(message: str) -> httpx.Response:
    return error(400, "0x80040800", f"The '{message}' method does not support entities of type 'lead'.")


@pytest.mark.parametrize(
    "answer",
    [
        _not_supported("UpdateMultiple"),
        error(400, "0x80040216", "UpdateMultiple is not enabled on the entity lead"),
    ],
    ids=["does-not-support", "not-enabled"],
)
def test_update_multiple_not_enabled_on_the_table_falls_back_to_batch_and_remembers(
    fake: FakeDataverse, credential: FakeCredential, clock: FakeClock, counters: ApiCounters, answer: httpx.Response
) -> None:
    ids = fake.seed(5)
    path = "/api/data/v9.2/leads/Microsoft.Dynamics.CRM.UpdateMultiple"
    fake.script("POST", path, answer)
    with make_client(fake, credential, clock, counters, batch_size=2) as client:
        first = client.update_multiple(LEAD, [{"leadid": i, "lastname": "S"} for i in ids])
        again = client.update_multiple(LEAD, [{"leadid": ids[0], "lastname": "T"}])
        fallbacks = client.bulk_fallbacks
    assert all(o.ok for o in first + again)
    assert [o.id for o in first] == ids
    assert fake.rows[ids[0]]["lastname"] == "T"
    assert fake.writes == Counter({ids[0]: 2, **dict.fromkeys(ids[1:], 1)})  # nothing written twice
    # One refused message, then every chunk (3 + 1) as a $batch: the message is not tried again.
    assert len(fake.sent("POST", path)) == 1
    assert counters.calls("dataverse", "batch") == 4
    assert list(fallbacks) == ["leads/UpdateMultiple"]
    assert "0x80040" in fallbacks["leads/UpdateMultiple"]


def test_a_fallback_is_per_message_and_shared_by_a_client_with_other_retry_rules(
    client: DataverseClient, fake: FakeDataverse
) -> None:
    fake.script("POST", "/api/data/v9.2/leads/Microsoft.Dynamics.CRM.CreateMultiple", _not_supported("CreateMultiple"))
    created = client.create_multiple(LEAD, [{"lastname": "A"}, {"lastname": "B"}])
    assert [fake.rows[o.id or ""]["lastname"] for o in created] == ["A", "B"]
    other = client.with_retry_policy(RetryPolicy(max_attempts=1))
    other.create_multiple(LEAD, [{"lastname": "C"}])
    assert len(fake.sent("POST", "/api/data/v9.2/leads/Microsoft.Dynamics.CRM.CreateMultiple")) == 1
    [updated] = client.update_multiple(LEAD, [{"leadid": created[0].id, "lastname": "A2"}])
    assert updated.ok
    assert len(fake.sent("POST", "/api/data/v9.2/leads/Microsoft.Dynamics.CRM.UpdateMultiple")) == 1
    assert list(other.bulk_fallbacks) == ["leads/CreateMultiple"]


def test_a_record_rejected_in_the_fallback_fails_alone(client: DataverseClient, fake: FakeDataverse) -> None:
    ids = fake.seed(3)
    fake.script("POST", "/api/data/v9.2/leads/Microsoft.Dynamics.CRM.UpdateMultiple", _not_supported("UpdateMultiple"))
    outcomes = client.update_multiple(
        LEAD, [{"leadid": i, "lastname": "z" * 51 if n == 1 else "ok"} for n, i in enumerate(ids)]
    )
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].code == "0x80044331"


# -- metadata ---------------------------------------------------------------------------------------------


def test_entity_metadata_is_read_once_with_lengths_formats_and_options(
    client: DataverseClient, fake: FakeDataverse, counters: ApiCounters
) -> None:
    base = "/api/data/v9.2/EntityDefinitions(LogicalName='lead')"
    fake.script(
        "GET",
        base,
        {
            "LogicalName": "lead",
            "EntitySetName": "leads",
            "PrimaryIdAttribute": "leadid",
            "ChangeTrackingEnabled": True,
        },
    )
    fake.script(
        "GET",
        f"{base}/Attributes",
        {
            "value": [
                {
                    "LogicalName": "lastname",
                    "AttributeType": "String",
                    "RequiredLevel": {"Value": "ApplicationRequired"},
                },
                {"LogicalName": "emailaddress1", "AttributeType": "String", "RequiredLevel": {"Value": "None"}},
                {"LogicalName": "leadsourcecode", "AttributeType": "Picklist", "RequiredLevel": {"Value": "None"}},
                {"LogicalName": "createdon", "AttributeType": "DateTime", "IsValidForCreate": False},
            ]
        },
    )
    fake.script(
        "GET",
        f"{base}/Attributes/Microsoft.Dynamics.CRM.StringAttributeMetadata",
        {
            "value": [
                {"LogicalName": "lastname", "MaxLength": 50, "Format": "Text"},
                {"LogicalName": "emailaddress1", "MaxLength": 100, "Format": "Email"},
            ]
        },
    )
    fake.script(
        "GET",
        f"{base}/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata",
        {
            "value": [
                {
                    "LogicalName": "leadsourcecode",
                    "OptionSet": {"Options": [{"Value": 8, "Label": {"UserLocalizedLabel": {"Label": "Web"}}}]},
                }
            ]
        },
    )
    meta = client.get_entity_metadata("lead")
    assert client.get_entity_metadata("lead") is meta
    assert (meta.entity_set, meta.primary_id) == ("leads", "leadid")
    assert meta.attributes["lastname"].required_level is RequiredLevel.APPLICATION_REQUIRED
    assert meta.attributes["lastname"].max_length == 50
    assert meta.attributes["emailaddress1"].format == "Email"
    assert meta.attributes["leadsourcecode"].options == {8: "Web"}
    assert meta.attributes["createdon"].is_valid_for_create is False
    assert counters.calls("dataverse", "get_entity_metadata") == 4
    fake.seed(1)
    client.update_multiple("lead", [{"leadid": str(uuid.UUID(int=1)), "lastname": "X"}])  # no extra look-up
    assert counters.calls("dataverse", "get_entity_definition") == 0


# -- credentials -------------------------------------------------------------------------------------------


def _settings(**extra: str) -> Settings:
    env = {
        "MARKETO_BASE_URL": "https://123-abc-456.mktorest.com",
        "MARKETO_CLIENT_ID": "id",
        "MARKETO_CLIENT_SECRET": "secret",
        "DATAVERSE_URL": "https://contoso.crm.dynamics.com",
        "SYNC_TABLES_CONNECTION": "UseDevelopmentStorage=true",
        **extra,
    }
    return Settings.from_env(env)


@pytest.mark.parametrize(
    ("extra", "kind"),
    [
        ({"DATAVERSE_STATIC_TOKEN": "sandbox-token"}, "StaticTokenCredential"),
        (
            {"DATAVERSE_TENANT_ID": "t", "DATAVERSE_CLIENT_ID": "c", "DATAVERSE_CLIENT_SECRET": "s"},
            "ClientSecretCredential",
        ),
        ({}, "DefaultAzureCredential"),
        ({"DATAVERSE_CLIENT_ID": "user-assigned-id"}, "DefaultAzureCredential"),
    ],
)
def test_build_dataverse_credential_picks_by_settings(extra: dict[str, str], kind: str) -> None:
    credential = build_dataverse_credential(_settings(**extra))
    assert type(credential).__name__ == kind


def test_static_token_credential_hides_the_token_and_rolls_expiry() -> None:
    credential = StaticTokenCredential(SecretStr("sandbox-token"), clock=lambda: 100.0)
    assert credential.get_token("https://x/.default") == AccessToken("sandbox-token", 3700)
    assert "sandbox-token" not in repr(credential)


def test_credential_failure_is_a_config_error(fake: FakeDataverse, clock: FakeClock) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    class Broken:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            raise ClientAuthenticationError("bad secret")

    with make_client(fake, Broken(), clock) as client, pytest.raises(ConfigError, match="Dataverse credential"):
        client.delete("leads", ROW)
    assert fake.requests == []


# -- the $batch format -------------------------------------------------------------------------------------


def test_batch_answer_is_read_part_by_part_including_change_sets() -> None:
    content_type, body = build_batch([BatchPart("PATCH", "/api/data/v9.2/leads(1)", {"a": 1}, {"If-Match": "*"})])
    assert content_type.startswith("multipart/mixed; boundary=batch_")
    assert (
        b"PATCH /api/data/v9.2/leads(1) HTTP/1.1\r\nIf-Match: *\r\nContent-Type: application/json; type=entry" in body
    )
    answer = (
        "--batchresponse_a\r\n"
        "Content-Type: multipart/mixed; boundary=changesetresponse_b\r\n\r\n"
        "--changesetresponse_b\r\n"
        "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\n"
        "HTTP/1.1 204 No Content\r\nOData-EntityId: http://x/api/data/v9.2/leads(aa)\r\n\r\n\r\n"
        "--changesetresponse_b--\r\n"
        "--batchresponse_a\r\n"
        "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; odata.metadata=minimal\r\nREQ_ID: r1\r\n\r\n"
        '{"error":{"code":"0x80044331","message":"too long"}}\r\n'
        "--batchresponse_a--\r\n"
    )
    parts = read_batch("multipart/mixed; boundary=batchresponse_a", answer.encode())
    assert [p.status for p in parts] == [204, 400]
    assert parts[0].headers["odata-entityid"] == "http://x/api/data/v9.2/leads(aa)"
    assert parts[1].body == {"error": {"code": "0x80044331", "message": "too long"}}
