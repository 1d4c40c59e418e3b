"""Concurrent writes (issue 17): Dataverse bulk messages go side by side up to ``x-ms-dop-hint``
capped by ``DATAVERSE_MAX_PARALLEL``; Marketo's Sync Leads chunks up to the app's in-flight share.
The number of calls is unchanged (the same chunks, sent at once; the cycle's writes spread an
unfilled last wave of messages over the places, ``message_sizes``), and outcomes keep input order.
Fakes are ``httpx.MockTransport`` handlers that hold each request a little and record how many
were in flight at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from sync_core.dataverse._bulk import message_sizes
from sync_core.dataverse.client import DataverseClient
from sync_core.marketo.client import MarketoClient
from sync_core.wiring.credentials import StaticTokenCredential

ORG = "https://contoso.crm.dynamics.com"
MARKETO = "https://123-ABC-456.mktorest.com"


class InFlight:
    """Counts requests in flight in a handler that holds each one for ``hold`` seconds."""

    def __init__(self, answer: Callable[[httpx.Request], httpx.Response], hold: float = 0.05) -> None:
        self._answer = answer
        self._hold = hold
        self._lock = threading.Lock()
        self._now = 0
        self.peak = 0
        self.calls: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self._now += 1
            self.peak = max(self.peak, self._now)
            self.calls.append(request)
        try:
            time.sleep(self._hold)
            return self._answer(request)
        finally:
            with self._lock:
                self._now -= 1


def _dataverse(dop: str | None) -> Callable[[httpx.Request], httpx.Response]:
    headers = {"x-ms-dop-hint": dop} if dop else {}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("EntityDefinitions"):  # the first call: the hint comes with it
            table = {"LogicalName": "lead", "EntitySetName": "leads", "PrimaryIdAttribute": "leadid"}
            return httpx.Response(200, json={"value": [table]}, headers=headers)
        if request.url.path.endswith("$batch"):  # the isolation of a refused chunk: this fake fails it
            return httpx.Response(500, json={"error": {"code": "0x80040216", "message": "unexpected"}}, headers=headers)
        targets = json.loads(request.content)["Targets"]
        if any(target.get("firstname") == "refused" for target in targets):
            body = {"error": {"code": "0x80040265", "message": "a plug-in refused one record"}}
            return httpx.Response(400, json=body, headers=headers)
        return httpx.Response(204, headers=headers)

    return answer


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"leadid": f"00000000-0000-0000-0000-{i:012d}", "firstname": f"F{i}"} for i in range(n)]


def _contacts(n: int) -> list[dict[str, Any]]:
    return [{"contactid": f"00000000-0000-0000-0001-{i:012d}", "firstname": f"C{i}"} for i in range(n)]


TABLES = {
    "lead": {"LogicalName": "lead", "EntitySetName": "leads", "PrimaryIdAttribute": "leadid"},
    "contact": {"LogicalName": "contact", "EntitySetName": "contacts", "PrimaryIdAttribute": "contactid"},
}


def _two_tables(request: httpx.Request) -> httpx.Response:
    """Leads and contacts; 4 bulk messages at once suggested; every write taken."""
    headers = {"x-ms-dop-hint": "4"}
    if "EntityDefinitions" in request.url.path:
        found = [table for name, table in TABLES.items() if f"'{name}'" in request.url.params.get("$filter", "")]
        return httpx.Response(200, json={"value": found}, headers=headers)
    return httpx.Response(204, headers=headers)


def _client(http: httpx.Client, *, batch_size: int, max_parallel: int) -> DataverseClient:
    return DataverseClient(
        http,
        base_url=ORG,
        credential=StaticTokenCredential("t"),
        batch_size=batch_size,
        max_parallel=max_parallel,
        sleep=lambda _: None,
    )


@pytest.mark.parametrize(
    ("dop", "max_parallel", "peak"),
    [(None, 8, 1), ("4", 8, 3), ("2", 8, 2), ("4", 1, 1)],
    ids=["no hint: one at a time", "hint 4: all three", "hint 2", "capped by the setting"],
)
def test_bulk_messages_go_side_by_side_up_to_the_dop_hint_capped_by_the_setting(
    dop: str | None, max_parallel: int, peak: int
) -> None:
    fake = InFlight(_dataverse(dop))
    with httpx.Client(transport=httpx.MockTransport(fake)) as http:
        client = _client(http, batch_size=1000, max_parallel=max_parallel)
        outcomes = client.update_multiple("leads", _rows(2500))

    assert [outcome.index for outcome in outcomes] == list(range(2500))
    assert all(outcome.ok for outcome in outcomes)
    posts = [call for call in fake.calls if call.method == "POST"]
    assert len(posts) == 3  # ⌈2500 / 1000⌉: parallel, not more calls
    assert fake.peak == peak


def test_a_failing_chunk_is_raised_only_after_the_other_chunks_were_sent() -> None:
    fake = InFlight(_dataverse("4"), hold=0.01)
    with httpx.Client(transport=httpx.MockTransport(fake)) as http:
        client = _client(http, batch_size=10, max_parallel=4)
        rows = _rows(40)
        rows[25]["firstname"] = "refused"
        with pytest.raises(Exception):  # noqa: B017, PT011 - the fake has no $batch: the isolation itself fails
            client.update_multiple("leads", rows)
    # Every other chunk was sent before the failure surfaced (a failure never abandons the rest).
    bodies = [json.loads(call.content)["Targets"] for call in fake.calls if call.url.path.endswith("UpdateMultiple")]
    assert sorted(len(targets) for targets in bodies) == [10, 10, 10, 10]


def test_sync_leads_chunks_go_side_by_side_up_to_the_in_flight_share() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/identity/oauth/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600, "token_type": "bearer"})
        records = json.loads(request.content)["input"]
        result = [{"id": int(record["id"]), "status": "updated"} for record in records]
        return httpx.Response(200, json={"requestId": "r", "success": True, "result": result})

    fake = InFlight(answer)
    with httpx.Client(transport=httpx.MockTransport(fake)) as http:
        client = MarketoClient(
            http, base_url=MARKETO + "/", client_id="c", client_secret="s", rate_share=0.5, sleep=time.sleep
        )
        results = client.sync_leads([{"id": i, "title": "x"} for i in range(1, 1201)])

    assert [result.id for result in results] == list(range(1, 1201))
    assert len([call for call in fake.calls if call.url.path == "/rest/v1/leads.json"]) == 4  # ⌈1200 / 300⌉
    assert fake.peak == 4  # four chunks at once: within half of Marketo's 10 in flight


def test_two_tables_share_the_places_with_the_full_messages_first() -> None:
    """Leads and contacts of one batch: their UpdateMultiple calls are those of each table alone,
    sent side by side up to the hint across both tables (not one table after the other)."""
    fake = InFlight(_two_tables)
    contacts = _contacts(25)
    with httpx.Client(transport=httpx.MockTransport(fake)) as http:
        client = _client(http, batch_size=10, max_parallel=8)
        client.update_multiple("lead", _rows(1))  # the first answer brings the hint
        fake.calls.clear()
        fake.peak = 0
        answered: list[tuple[int, list[int]]] = []
        leads_out, contacts_out = client.update_tables(
            [("lead", _rows(25)), ("contact", contacts)],
            on_written=lambda table, outcomes: answered.append((table, [o.index for o in outcomes if o.ok])),
        )

    assert [o.index for o in leads_out] == list(range(25))
    assert all(o.ok for o in leads_out)
    assert [o.index for o in contacts_out] == list(range(25))
    assert all(o.ok for o in contacts_out)
    posts = [call for call in fake.calls if call.url.path.endswith("UpdateMultiple")]
    sizes = [(call.url.path.split("/")[-2], len(json.loads(call.content)["Targets"])) for call in posts]
    assert sorted(sizes) == sorted(
        [("leads", 10), ("leads", 10), ("leads", 5), ("contacts", 10), ("contacts", 10), ("contacts", 5)]
    )
    assert fake.peak == 4  # across both tables, within the hint
    assert [size for _, size in sizes[:4]] == [10, 10, 10, 10]  # the full messages went first
    # Each message's outcomes were handed over as it was answered (table position, input indexes).
    chunks = [(0, list(range(s, min(s + 10, 25)))) for s in (0, 10, 20)]
    assert sorted(answered) == sorted([*chunks, *((1, indexes) for _, indexes in chunks)])


@pytest.mark.parametrize(
    ("counts", "places", "sizes"),
    [
        ([2500, 2500], 1, [[1000, 1000, 500], [1000, 1000, 500]]),  # alone: full messages, the rest last
        ([2500, 2500], 4, [[625] * 4, [625] * 4]),  # 6 → 8: two full waves of 625, not 1,500 on two places
        ([2500, 500], 4, [[834, 833, 833], [500]]),  # a full wave already: no more calls, split evenly
        ([4000, 4000], 4, [[1000] * 4, [1000] * 4]),  # whole waves: unchanged
        ([1500], 4, [[500, 500, 500]]),  # not below half a batch: 3 of 500, not 4 of 375
        ([10], 4, [[10]]),  # a small write stays one message
        ([0, 7], 4, [[], [7]]),
    ],
)
def test_message_sizes_fill_an_unfilled_last_wave(counts: list[int], places: int, sizes: list[list[int]]) -> None:
    assert message_sizes(counts, batch_size=1000, places=places) == sizes
    # Every row in exactly one message, none over the batch size, at most a wave's worth more calls.
    assert [sum(table) for table in sizes] == counts
    assert all(0 < size <= 1000 for table in sizes for size in table)
    fewest = sum(-(-count // 1000) for count in counts)
    assert fewest <= sum(len(table) for table in sizes) <= fewest + places - 1


def test_filled_places_send_the_last_wave_as_more_even_messages() -> None:
    """``update_tables(fill_places=True)``: the messages of ``message_sizes`` (the count that
    ``messages_for`` gives the pipeline), each table's rows split evenly, outcomes in input order."""
    fake = InFlight(_two_tables, hold=0.01)
    contacts = _contacts(25)
    with httpx.Client(transport=httpx.MockTransport(fake)) as http:
        client = _client(http, batch_size=10, max_parallel=8)
        assert client.messages_for([25, 25], fill_places=True) == 6  # no hint yet: one place, the fewest
        client.update_multiple("lead", _rows(1))  # the first answer brings the hint
        fake.calls.clear()
        assert client.messages_for([25, 25], fill_places=True) == 8
        assert client.messages_for([25, 25], fill_places=False) == 6
        leads_out, contacts_out = client.update_tables([("lead", _rows(25)), ("contact", contacts)], fill_places=True)

    assert [o.index for o in leads_out] == list(range(25))
    assert [o.index for o in contacts_out] == list(range(25))
    assert all(o.ok for o in [*leads_out, *contacts_out])
    posts = [call for call in fake.calls if call.url.path.endswith("UpdateMultiple")]
    sent = {
        (
            call.url.path.split("/")[-2],
            tuple(t.get("leadid") or t.get("contactid") for t in json.loads(call.content)["Targets"]),
        )
        for call in posts
    }
    assert sorted(len(ids) for table, ids in sent if table == "leads") == [6, 6, 6, 7]
    assert sorted(len(ids) for table, ids in sent if table == "contacts") == [6, 6, 6, 7]
    assert len({row_id for _, ids in sent for row_id in ids}) == 50  # each row once
