"""MarketoClient over an ``httpx.MockTransport`` fake of the Marketo REST API (fake clock, no waits)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from sync_core.core.errors import (
    ApiError,
    ConfigError,
    QuotaExceededError,
    RateLimitedError,
    RecordError,
    TransientError,
)
from sync_core.http.counters import ApiCounters
from sync_core.marketo.client import (
    ActivityStatus,
    CustomActivity,
    LeadOutcome,
    MarketoClient,
    WriteStatus,
)
from tests.test_retry import FakeClock

BASE = "http://marketo.test"
Reply = dict[str, Any] | httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def ok(result: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"requestId": "a1#b2", "success": True, **extra}
    if result is not None:
        body["result"] = result
    return body


def fail(code: str, message: str = "error") -> dict[str, Any]:
    return {"requestId": "a1#b2", "success": False, "errors": [{"code": code, "message": message}]}


class FakeMarketo:
    """Identity + bearer check + scripted answers per path (default: an empty success)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.identity_calls = 0
        self.expires_in = 3600
        self.identity_status = 200
        self.valid_tokens: set[str] = set()
        self.scripts: defaultdict[str, list[Reply]] = defaultdict(list)
        self.routes: dict[str, Callable[[httpx.Request], dict[str, Any]]] = {}

    def script(self, path: str, *replies: Reply) -> None:
        self.scripts[path].extend(replies)

    def api_requests(self, path: str | None = None) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path != "/identity/oauth/token" and (path in (None, r.url.path))]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/identity/oauth/token":
            self.identity_calls += 1
            if self.identity_status != 200:
                return httpx.Response(self.identity_status, json={"error": "invalid_client"})
            assert request.url.params["client_secret"] == "secret"
            token = f"token-{self.identity_calls}:int"
            self.valid_tokens.add(token)
            return httpx.Response(
                200, json={"access_token": token, "token_type": "bearer", "expires_in": self.expires_in}
            )
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.valid_tokens:
            return httpx.Response(200, json=fail("601", "Access token invalid"))
        queue = self.scripts.get(request.url.path)
        reply: Reply = queue.pop(0) if queue else (self.routes.get(request.url.path) or (lambda _: ok([])))(request)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, httpx.Response):
            return reply
        if callable(reply):
            return reply(request)
        return httpx.Response(200, json=reply)


@pytest.fixture
def fake() -> FakeMarketo:
    return FakeMarketo()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def counters() -> ApiCounters:
    return ApiCounters()


@pytest.fixture
def client(fake: FakeMarketo, clock: FakeClock, counters: ApiCounters) -> Iterator[MarketoClient]:
    with httpx.Client(transport=httpx.MockTransport(fake)) as http:
        yield MarketoClient(
            http,
            base_url=BASE + "/",
            client_id="client",
            client_secret="secret",
            counters=counters,
            sleep=clock.sleep,
            clock=clock,
        )


def _form_or_query(request: httpx.Request) -> dict[str, str]:
    if request.method == "POST" and request.headers.get("content-type", "").startswith("application/x-www-form"):
        return {key: values[0] for key, values in parse_qs(request.content.decode()).items()}
    return dict(request.url.params)


# -- token ------------------------------------------------------------------------------------------


def test_token_is_fetched_once_and_reused(client: MarketoClient, fake: FakeMarketo, counters: ApiCounters) -> None:
    for _ in range(5):
        client.get_usage_today()
    assert fake.identity_calls == 1
    assert {r.headers["Authorization"] for r in fake.api_requests()} == {"Bearer token-1:int"}
    assert counters.calls("marketo") == 5
    assert counters.token_calls("marketo") == 1


def test_token_is_renewed_a_minute_before_it_expires(
    client: MarketoClient, fake: FakeMarketo, clock: FakeClock
) -> None:
    client.get_usage_today()
    clock.now += 3600 - 61
    client.get_usage_today()
    assert fake.identity_calls == 1
    clock.now += 2
    client.get_usage_today()
    assert fake.identity_calls == 2
    assert fake.api_requests()[-1].headers["Authorization"] == "Bearer token-2:int"


def test_short_remaining_lifetime_is_used_to_the_end_not_refetched_per_call(
    client: MarketoClient, fake: FakeMarketo, clock: FakeClock
) -> None:
    fake.expires_in = 40  # identity hands back the same token with its remaining lifetime
    for _ in range(10):
        client.get_usage_today()
        clock.now += 1
    assert fake.identity_calls == 1


def test_concurrent_first_calls_share_one_token(client: MarketoClient, fake: FakeMarketo) -> None:
    with ThreadPoolExecutor(max_workers=5) as pool:
        totals = list(pool.map(lambda _: client.get_usage_today(), range(10)))
    assert totals == [0] * 10
    assert fake.identity_calls == 1


@pytest.mark.parametrize("code", ["601", "602"])
def test_token_error_refreshes_once_and_replays(
    client: MarketoClient, fake: FakeMarketo, counters: ApiCounters, code: str
) -> None:
    client.get_usage_today()
    fake.script("/rest/v1/stats/usage.json", fail(code, "Access token expired"), ok([{"total": 7}]))
    assert client.get_usage_today() == 7
    assert fake.identity_calls == 2
    replayed = fake.api_requests("/rest/v1/stats/usage.json")[-1]
    assert replayed.headers["Authorization"] == "Bearer token-2:int"
    assert counters.token_calls("marketo") == 2
    assert counters.calls("marketo", "get_usage") == 3


def test_a_token_error_that_persists_after_one_refresh_is_an_api_error(
    client: MarketoClient, fake: FakeMarketo
) -> None:
    fake.script("/rest/v1/stats/usage.json", fail("601"), fail("601"), ok([{"total": 1}]))
    with pytest.raises(ApiError) as raised:
        client.get_usage_today()
    assert raised.value.code == "601"
    assert fake.identity_calls == 2  # one refresh, not a loop


def test_rejected_credentials_are_a_config_error(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.identity_status = 401
    with pytest.raises(ConfigError, match="MARKETO_CLIENT_ID"):
        client.get_usage_today()
    assert fake.api_requests() == []


# -- envelope and retries -----------------------------------------------------------------------------

USAGE = "/rest/v1/stats/usage.json"
ACTIVITIES = "/rest/v1/activities/external.json"


@pytest.mark.parametrize(
    ("path", "first", "attempts", "sleeps", "raises"),
    [
        pytest.param(USAGE, fail("606"), 2, [20.0], None, id="606-waits-the-window"),
        pytest.param(USAGE, fail("615"), 2, [1.0], None, id="615-backs-off"),
        pytest.param(USAGE, fail("604"), 2, [1.0], None, id="604-on-a-read-retried"),
        pytest.param(USAGE, fail("608"), 2, [1.0], None, id="608-retried"),
        pytest.param(USAGE, fail("611"), 2, [1.0], None, id="611-retried"),
        pytest.param(USAGE, httpx.Response(502), 2, [1.0], None, id="http-502-retried"),
        pytest.param(USAGE, httpx.Response(429, headers={"Retry-After": "4"}), 2, [4.0], None, id="http-429"),
        pytest.param(USAGE, httpx.Response(200, text="<html>gateway</html>"), 2, [1.0], None, id="html-200"),
        pytest.param(USAGE, fail("607"), 1, [], QuotaExceededError, id="607-quota-ends-cycle"),
        pytest.param(USAGE, fail("603", "Access denied"), 1, [], ApiError, id="603-fatal"),
        pytest.param(USAGE, fail("610"), 1, [], ApiError, id="610-fatal"),
        pytest.param(USAGE, httpx.Response(414), 1, [], ApiError, id="http-414-fatal"),
        pytest.param(ACTIVITIES, fail("606"), 2, [20.0], None, id="606-on-a-create-is-safe"),
        pytest.param(ACTIVITIES, fail("608"), 2, [1.0], None, id="608-on-a-create-is-safe"),
        pytest.param(ACTIVITIES, fail("604"), 1, [], TransientError, id="604-on-a-create-not-resent"),
        pytest.param(ACTIVITIES, httpx.Response(502), 1, [], TransientError, id="502-on-a-create-not-resent"),
    ],
)
def test_retry_rules(
    client: MarketoClient,
    fake: FakeMarketo,
    clock: FakeClock,
    path: str,
    first: Reply,
    attempts: int,
    sleeps: list[float],
    raises: type[Exception] | None,
) -> None:
    success = ok([{"total": 3}]) if path == USAGE else ok([{"id": 1, "marketoGUID": "1", "status": "added"}])
    fake.script(path, first, success)

    def act() -> object:
        if path == USAGE:
            return client.get_usage_today()
        return client.add_activities([CustomActivity(5, 100001, "lead")])

    if raises is None:
        act()
    else:
        with pytest.raises(raises):
            act()
    assert len(fake.api_requests(path)) == attempts
    assert clock.sleeps == pytest.approx(sleeps, rel=0.3)


def test_dropped_connection_on_a_read_is_retried(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.script(USAGE, httpx.RemoteProtocolError("Server disconnected"), ok([{"total": 9}]))
    assert client.get_usage_today() == 9


def test_rate_limited_error_surfaces_after_the_attempts_are_spent(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.script(USAGE, *[fail("615")] * 10)
    with pytest.raises(RateLimitedError):
        client.get_usage_today()
    assert len(fake.api_requests(USAGE)) == 5


# The documented Get Daily Usage answer (Marketo "Usage" endpoint reference): a total per day and
# a per-user breakdown whose figure is ``count``.
DOCUMENTED_USAGE = [
    {
        "date": "2015-10-17",
        "total": 1120,
        "users": [
            {"userId": "some.body@yahoo.com", "count": 200},
            {"userId": "some.body@marketo.com", "count": 200},
            {"userId": "some.body@gmail.com", "count": 720},
        ],
    }
]


def test_usage_today_reads_the_documented_total(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.script(USAGE, ok(DOCUMENTED_USAGE))
    assert client.get_usage_today() == 1120


def test_usage_today_without_a_total_sums_the_users_count(client: MarketoClient, fake: FakeMarketo) -> None:
    day = {key: value for key, value in DOCUMENTED_USAGE[0].items() if key != "total"}
    fake.script(USAGE, ok([day]))
    assert client.get_usage_today() == 1120  # 200 + 200 + 720, from each user's "count"


def test_warnings_as_strings_and_a_missing_result_are_tolerated(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.script(USAGE, {"requestId": "x#y", "success": True, "warnings": ["No assets found", {"code": "1"}]})
    assert client.get_usage_today() == 0


def test_client_side_budget_spaces_calls_instead_of_earning_606(fake: FakeMarketo, clock: FakeClock) -> None:
    with httpx.Client(transport=httpx.MockTransport(fake)) as http:
        client = MarketoClient(
            http,
            base_url=BASE,
            client_id="c",
            client_secret="secret",
            rate_share=0.05,  # 5 calls per 20 s
            sleep=clock.sleep,
            clock=clock,
        )
        for _ in range(6):
            client.get_usage_today()
    assert len(fake.api_requests()) == 6
    assert sum(clock.sleeps) == pytest.approx(20.0)


# -- paging ---------------------------------------------------------------------------------------------

LEAD_CHANGES = "/rest/v1/activities/leadchanges.json"


def change(activity_id: int, lead_id: int, name: str = "firstName", new: Any = "Ada") -> dict[str, Any]:
    return {
        "id": activity_id,
        "marketoGUID": str(activity_id),
        "leadId": lead_id,
        "activityDate": "2024-09-17T22:31:49Z",
        "activityTypeId": 13,
        "fields": [{"id": 48, "name": name, "newValue": new, "oldValue": "Old"}],
        "attributes": [{"name": "Source", "value": "Web service API"}],
    }


def test_paging_token_is_requested_with_the_offset(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.script("/rest/v1/activities/pagingtoken.json", ok(nextPageToken="TOKEN0"))
    since = datetime(2024, 1, 1, 8, 0, tzinfo=UTC)
    assert client.get_paging_token(since) == "TOKEN0"
    assert fake.api_requests()[0].url.params["sinceDatetime"] == "2024-01-01T08:00:00+00:00"
    with pytest.raises(ValueError, match="timezone"):
        client.get_paging_token(datetime(2024, 1, 1))


def test_lead_changes_follow_pages_dedup_by_guid_and_carry_empty_pages(
    client: MarketoClient, fake: FakeMarketo
) -> None:
    fake.script(
        LEAD_CHANGES,
        ok([change(1, 10), change(2, 11)], nextPageToken="T1", moreResult=True),
        {"requestId": "x", "success": True, "nextPageToken": "T2", "moreResult": True},  # no "result" at all
        ok([change(2, 11), change(3, 12)], nextPageToken="T3", moreResult=False),
    )
    pages = list(client.iter_lead_changes("T0", fields=["firstName", "email"]))
    assert [p.next_page_token for p in pages] == ["T1", "T2", "T3"]
    assert [p.more_result for p in pages] == [True, True, False]
    assert [a.marketo_guid for p in pages for a in p.activities] == ["1", "2", "3"]
    first = pages[0].activities[0]
    assert (first.lead_id, first.type_id) == (10, 13)
    assert first.activity_date == datetime(2024, 9, 17, 22, 31, 49, tzinfo=UTC)
    assert first.fields[0].name == "firstName"
    assert (first.fields[0].new_value, first.fields[0].old_value) == ("Ada", "Old")
    assert first.attributes["Source"] == "Web service API"
    sent = [r.url.params for r in fake.api_requests(LEAD_CHANGES)]
    assert [p["nextPageToken"] for p in sent] == ["T0", "T1", "T2"]
    assert sent[0]["fields"] == "firstName,email"
    assert sent[0]["batchSize"] == "300"


def test_lead_changes_raise_when_a_token_repeats_without_progress(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.script(
        LEAD_CHANGES,
        ok([change(1, 10)], nextPageToken="T1", moreResult=True),
        ok([change(1, 10)], nextPageToken="T1", moreResult=True),  # same token, only a duplicate
        *[ok([change(1, 10)], nextPageToken="T1", moreResult=True)] * 5,
    )
    pages = client.iter_lead_changes("T0", fields=["email"])
    assert len(next(pages).activities) == 1
    with pytest.raises(ApiError, match="pagination loop"):
        next(pages)
    assert len(fake.api_requests(LEAD_CHANGES)) == 2


def test_lead_changes_last_page_without_token_keeps_the_watermark(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.script(LEAD_CHANGES, ok([], moreResult=False))
    pages = list(client.iter_lead_changes("T0", fields=["email"]))
    assert [(p.next_page_token, p.more_result, p.activities) for p in pages] == [("T0", False, ())]


def test_deleted_leads_are_typed_and_deduplicated(client: MarketoClient, fake: FakeMarketo) -> None:
    deleted = {"id": 7, "marketoGUID": "7", "leadId": 99, "activityDate": "2024-01-02T03:04:05Z", "activityTypeId": 37}
    fake.script(
        "/rest/v1/activities/deletedleads.json",
        ok([deleted], nextPageToken="D1", moreResult=True),
        ok([deleted], nextPageToken="D2", moreResult=False),
    )
    pages = list(client.iter_deleted_leads("D0"))
    assert [[d.lead_id for d in p.deleted] for p in pages] == [[99], []]
    assert pages[-1].next_page_token == "D2"


# -- leads ------------------------------------------------------------------------------------------------

LEADS = "/rest/v1/leads.json"


def _echo_leads(request: httpx.Request) -> httpx.Response:
    params = _form_or_query(request)
    values = params["filterValues"].split(",")
    if params["filterType"] == "id":
        result = [{"id": int(v), "email": f"lead{v}@example.com"} for v in values]
    else:
        result = [{"id": 1000 + n, params["filterType"]: v} for n, v in enumerate(values)]
    return httpx.Response(200, json=ok(result))


def test_get_leads_chunks_300_ids_per_call_and_fills_missing_fields(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.routes[LEADS] = lambda r: json.loads(_echo_leads(r).content)
    leads = client.get_leads(list(range(1, 302)), fields=["email", "firstName"])
    assert len(leads) == 301
    assert leads[0] == {"id": 1, "email": "lead1@example.com", "firstName": None}
    calls = fake.api_requests(LEADS)
    assert [len(_form_or_query(r)["filterValues"].split(",")) for r in calls] == [300, 1]
    assert all(_form_or_query(r)["filterType"] == "id" for r in calls)


def test_a_long_query_goes_as_a_form_post_with_method_get(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.routes[LEADS] = lambda r: json.loads(_echo_leads(r).content)
    emails = [f"someone.with.a.long.address.{n}@example-company.com" for n in range(200)]
    found = client.find_leads("email", emails, fields=["email"])
    assert len(found) == 200
    request = fake.api_requests(LEADS)[0]
    assert request.method == "POST"
    assert request.url.params["_method"] == "GET"
    assert _form_or_query(request)["filterValues"].split(",") == emails


def test_lead_queries_follow_pages_through_the_one_paging_loop(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.script(
        LEADS,
        ok([{"id": 1, "email": "a@example.com"}], nextPageToken="P1", moreResult=True),
        ok([{"id": 2, "email": "b@example.com"}], moreResult=False),
    )
    assert [lead["id"] for lead in client.get_leads([1, 2], fields=["email"])] == [1, 2]
    sent = [_form_or_query(r) for r in fake.api_requests(LEADS)]
    assert ["nextPageToken" in params for params in sent] == [False, True]
    assert sent[1]["nextPageToken"] == "P1"


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (ok([{"id": 1, "email": "a@example.com"}], nextPageToken="P1", moreResult=True), "pagination loop"),
        (ok([{"id": 2, "email": "b@example.com"}], moreResult=True), "moreResult without nextPageToken"),
    ],
    ids=["token-repeats-with-nothing-new", "more-without-token"],
)
def test_lead_queries_refuse_a_paging_loop_or_a_missing_token(
    client: MarketoClient, fake: FakeMarketo, second: dict[str, Any], message: str
) -> None:
    fake.script(LEADS, ok([{"id": 1, "email": "a@example.com"}], nextPageToken="P1", moreResult=True), second)
    with pytest.raises(ApiError, match=message):
        client.find_leads("email", ["a@example.com"], fields=["email"])
    assert len(fake.api_requests(LEADS)) == 2


@pytest.mark.parametrize(
    "values",
    [["a@b.c", "x,y@evil.com"], ["a@b.c", ""], ["  "], ["ok@example.com", 5]],
    ids=["comma", "empty", "blank", "not-a-string"],
)
def test_find_leads_refuses_values_that_would_change_the_filter(
    client: MarketoClient, fake: FakeMarketo, values: list[Any]
) -> None:
    with pytest.raises(RecordError) as raised:
        client.find_leads("email", values, fields=["email"])
    assert "value #" in str(raised.value)
    assert fake.api_requests() == []


def test_find_leads_sends_a_crafted_value_as_exactly_one_value(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.routes[LEADS] = lambda r: json.loads(_echo_leads(r).content)
    crafted = "x' or 1 eq 1 or 'a"
    client.find_leads("email", [crafted], fields=["email"])
    params = _form_or_query(fake.api_requests(LEADS)[0])
    assert params["filterValues"] == crafted
    assert params["filterType"] == "email"


def skipped(code: str) -> dict[str, Any]:
    return {"status": "skipped", "reasons": [{"code": code, "message": f"reason {code}"}]}


@pytest.mark.parametrize(
    ("item", "status", "outcome", "lead_id"),
    [
        ({"id": 5, "status": "updated"}, WriteStatus.UPDATED, LeadOutcome.OK, 5),
        ({"id": 6, "status": "created"}, WriteStatus.CREATED, LeadOutcome.OK, 6),
        (skipped("1004"), WriteStatus.SKIPPED, LeadOutcome.NOT_FOUND, None),
        (skipped("1005"), WriteStatus.SKIPPED, LeadOutcome.ALREADY_EXISTS, None),
        (skipped("1003"), WriteStatus.SKIPPED, LeadOutcome.INVALID_VALUE, None),
        (skipped("1001"), WriteStatus.SKIPPED, LeadOutcome.INVALID_VALUE, None),
        (skipped("1002"), WriteStatus.SKIPPED, LeadOutcome.MISSING_VALUE, None),
        (skipped("1006"), WriteStatus.SKIPPED, LeadOutcome.UNKNOWN_FIELD, None),
        (skipped("1007"), WriteStatus.SKIPPED, LeadOutcome.AMBIGUOUS, None),
        (skipped("1008"), WriteStatus.SKIPPED, LeadOutcome.ACCESS_DENIED, None),
        (skipped("1099"), WriteStatus.SKIPPED, LeadOutcome.OTHER, None),
        ({"status": "skipped"}, WriteStatus.SKIPPED, LeadOutcome.OTHER, None),
    ],
)
def test_sync_leads_maps_each_verdict_to_a_typed_result(
    client: MarketoClient,
    fake: FakeMarketo,
    item: dict[str, Any],
    status: WriteStatus,
    outcome: LeadOutcome,
    lead_id: int | None,
) -> None:
    fake.script(LEADS, ok([item]))
    [result] = client.sync_leads([{"id": 5, "firstName": "Ada"}])
    assert (result.index, result.status, result.outcome, result.id) == (0, status, outcome, lead_id)
    assert result.ok is (status is not WriteStatus.SKIPPED)
    if "reasons" in item:
        assert [r.code for r in result.reasons] == [item["reasons"][0]["code"]]


def test_sync_leads_batches_300_keeps_input_order_and_refuses_records_without_lookup(
    client: MarketoClient, fake: FakeMarketo
) -> None:
    def answer(request: httpx.Request) -> dict[str, Any]:
        records = json.loads(request.content)["input"]
        return ok([{"id": r["id"], "status": "updated"} for r in records])

    fake.routes[LEADS] = answer
    records: list[dict[str, Any]] = [{"id": n, "lastName": f"L{n}"} for n in range(1, 602)]
    records.insert(3, {"lastName": "no id"})
    results = client.sync_leads(records, action="updateOnly", lookup_field="id")
    assert [r.index for r in results] == list(range(602))
    assert results[3].outcome is LeadOutcome.INVALID_INPUT
    assert "missing lookup field 'id'" in results[3].reasons[0].message
    assert [r.id for r in results[:5]] == [1, 2, 3, None, 4]
    bodies = [json.loads(r.content) for r in fake.api_requests(LEADS)]
    assert [len(b["input"]) for b in bodies] == [300, 300, 1]
    assert bodies[0]["action"] == "updateOnly"
    assert bodies[0]["lookupField"] == "id"


def test_sync_leads_result_count_mismatch_is_an_api_error(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.script(LEADS, ok([{"id": 1, "status": "updated"}]))
    with pytest.raises(ApiError, match="1 results for 2 records"):
        client.sync_leads([{"id": 1}, {"id": 2}])


@pytest.mark.parametrize(("action", "attempts"), [("updateOnly", 2), ("createOrUpdate", 2), ("createOnly", 1)])
def test_sync_leads_is_resent_after_an_uncertain_failure_only_when_idempotent(
    client: MarketoClient, fake: FakeMarketo, action: str, attempts: int
) -> None:
    fake.script(LEADS, httpx.ReadTimeout("slow"), ok([{"id": 1, "status": "updated"}]))
    if attempts == 1:
        with pytest.raises(TransientError):
            client.sync_leads([{"email": "a@b.c"}], action=action, lookup_field="email")
    else:
        client.sync_leads([{"email": "a@b.c"}], action=action, lookup_field="email")
    assert len(fake.api_requests(LEADS)) == attempts


def test_delete_leads_maps_results(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.script(
        "/rest/v1/leads/delete.json",
        ok([{"id": 1, "status": "deleted"}, {"id": 2, **skipped("1004")}]),
    )
    results = client.delete_leads([1, 2])
    assert [(r.status, r.outcome) for r in results] == [
        (WriteStatus.DELETED, LeadOutcome.OK),
        (WriteStatus.SKIPPED, LeadOutcome.NOT_FOUND),
    ]
    assert json.loads(fake.api_requests()[0].content) == {"input": [{"id": 1}, {"id": 2}]}


# -- custom activities ----------------------------------------------------------------------------------


def test_add_activities_reads_errors_and_reasons_and_sends_attributes(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.script(
        ACTIVITIES,
        ok(
            [
                {"id": 50, "marketoGUID": "50", "status": "added"},
                {"status": "skipped", "errors": [{"code": "1004", "message": "Lead not found"}]},
                {"status": "skipped", "reasons": [{"code": "1003", "message": "bad"}]},
            ]
        ),
    )
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    activities = [
        CustomActivity(1, 100001, "lead", {"reason": "too long", "direction": "toDynamics"}, activity_date=when),
        CustomActivity(2, 100001, "contact"),
        CustomActivity(3, 100001, "lead"),
    ]
    results = client.add_activities(activities)
    assert [(r.index, r.status, r.outcome) for r in results] == [
        (0, ActivityStatus.ADDED, LeadOutcome.OK),
        (1, ActivityStatus.SKIPPED, LeadOutcome.NOT_FOUND),
        (2, ActivityStatus.SKIPPED, LeadOutcome.INVALID_VALUE),
    ]
    assert results[0].marketo_guid == "50"
    sent = json.loads(fake.api_requests(ACTIVITIES)[0].content)["input"][0]
    assert sent == {
        "leadId": 1,
        "activityDate": "2024-05-01T12:00:00+00:00",
        "activityTypeId": 100001,
        "primaryAttributeValue": "lead",
        "attributes": [{"apiName": "reason", "value": "too long"}, {"apiName": "direction", "value": "toDynamics"}],
    }


TYPES = "/rest/v1/activities/external/types.json"


def test_activity_type_id_is_read_once_and_cached(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.script(TYPES, ok([{"id": 100001, "apiName": "microsoftSyncFailed", "status": "approved"}]))
    assert client.get_activity_type_id("microsoftSyncFailed") == 100001
    assert client.get_activity_type_id("microsoftSyncFailed") == 100001
    assert len(fake.api_requests(TYPES)) == 1


def test_activity_types_follow_pages(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.script(
        TYPES,
        ok([{"id": 100000, "apiName": "other", "status": "approved"}], nextPageToken="A1", moreResult=True),
        ok([{"id": 100001, "apiName": "microsoftSyncFailed", "status": "approved"}], moreResult=False),
    )
    assert client.get_activity_type_id("microsoftSyncFailed") == 100001
    assert [r.url.params.get("nextPageToken") for r in fake.api_requests(TYPES)] == [None, "A1"]


@pytest.mark.parametrize(
    ("types", "message"),
    [([], "does not exist"), ([{"id": 9, "apiName": "microsoftSyncFailed", "status": "draft"}], "not approved")],
)
def test_activity_type_missing_or_unapproved_is_a_config_error(
    client: MarketoClient, fake: FakeMarketo, types: list[dict[str, Any]], message: str
) -> None:
    fake.script(TYPES, ok(types))
    with pytest.raises(ConfigError, match=message):
        client.get_activity_type_id("microsoftSyncFailed")


# -- describe -------------------------------------------------------------------------------------------


def test_describe_reads_describe2_once(client: MarketoClient, fake: FakeMarketo) -> None:
    fields = [
        {"name": "email", "dataType": "email", "length": 255, "updateable": True},
        {"name": "updatedAt", "dataType": "datetime", "updateable": False},
    ]
    fake.script("/rest/v1/leads/describe2.json", ok([{"name": "API Lead", "fields": fields}]))
    described = client.describe()
    assert client.describe() is described
    assert described["email"].data_type == "email"
    assert described["email"].length == 255
    assert described["updatedAt"].updateable is False
    assert len(fake.api_requests()) == 1


def test_describe_falls_back_to_describe_json(client: MarketoClient, fake: FakeMarketo) -> None:
    fake.script("/rest/v1/leads/describe2.json", httpx.Response(404))
    fake.script(
        "/rest/v1/leads/describe.json",
        ok(
            [
                {"id": 2, "dataType": "string", "length": 255, "rest": {"name": "company", "readOnly": False}},
                {"id": 3, "dataType": "string", "soap": {"name": "SoapOnly"}},
            ]
        ),
    )
    described = client.describe()
    assert list(described) == ["company"]
    assert described["company"].updateable is True


def test_counters_snapshot_separates_operations_and_token_calls(
    client: MarketoClient, fake: FakeMarketo, counters: ApiCounters
) -> None:
    fake.script(USAGE, fail("606"), ok([{"total": 1}]))
    client.get_usage_today()
    client.get_leads([1], fields=["email"])
    snapshot = counters.snapshot()["marketo"]
    assert snapshot == {
        "calls": 3,
        "token_calls": 1,
        "retries": 1,
        "throttled": 1,
        "by_operation": {"get_leads": 1, "get_usage": 2},
    }
