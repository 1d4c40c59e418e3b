"""The flow-step webhooks' rules (``core.flows``), their request schemas, the webhook statistics
model, and the state store's part (campaign members, call statistics) on both stores."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from sync_core.core.flows import (
    TASK_STATUS_DEFAULT,
    campaign_list_id,
    campaign_list_name,
    list_member_type,
    task_due,
    task_id,
    task_request_key,
    task_status,
)
from sync_core.core.models import LATENCY_BOUNDS_MS, CampaignMember, EntityType, WebhookCalls
from sync_core.state import MemoryStateStore, StateStore, TableStateStore
from sync_core.status.view import build_status, render_html, render_text
from sync_core.webhook.request import (
    CampaignRequest,
    ChangeOwnerRequest,
    CreateTaskRequest,
    Refusal,
    parse_body,
)

NOW = datetime(2026, 12, 4, 10, 30, tzinfo=UTC)
GUID = "8F4C0000-0000-4000-8000-00000000AB12"
KINDS = ["memory", pytest.param("table", marks=pytest.mark.azurite)]


@pytest.mark.parametrize(
    ("given", "label", "state", "status"),
    [
        (None, "Not Started", 0, 2),
        ("", "Not Started", 0, 2),
        ("in progress", "In Progress", 0, 3),
        (" Waiting on someone else ", "Waiting on someone else", 0, 4),
        (7, "Deferred", 0, 7),
        ("Completed", "Completed", 1, 5),
        (6, "Canceled", 2, 6),
    ],
)
def test_a_task_status_reason_is_read_by_label_or_value(
    given: str | int | None, label: str, state: int, status: int
) -> None:
    found = task_status(given)
    assert (found.label, found.state, found.status) == (label, state, status)


@pytest.mark.parametrize("given", ["Sleeping", 1, 99, True])
def test_an_unknown_status_reason_names_the_choices(given: object) -> None:
    with pytest.raises(ValueError, match="'Not Started' \\(2\\)"):
        task_status(given)  # type: ignore[arg-type]


def test_the_due_date_is_days_after_now_in_utc() -> None:
    assert task_due(NOW, 5) == "2026-12-09T10:30:00Z"
    assert task_due(NOW, 0) == "2026-12-04T10:30:00Z"


def test_a_request_id_names_the_task_whatever_the_day_and_content() -> None:
    one = task_request_key("r-1", {"subject": "a"}, now=NOW)
    assert one == task_request_key("r-1", {"subject": "b"}, now=NOW + timedelta(days=3))
    assert task_id(5, one) == task_id(5, one)
    assert task_id(5, one) != task_id(6, one)  # per person


def test_without_a_request_id_the_same_content_is_one_task_a_day() -> None:
    same = task_request_key(None, {"subject": "a", "leadId": 5}, now=NOW)
    assert same == task_request_key(None, {"leadId": 5, "subject": "a"}, now=NOW + timedelta(hours=1))
    assert same != task_request_key(None, {"subject": "b", "leadId": 5}, now=NOW)
    assert same != task_request_key(None, {"subject": "a", "leadId": 5}, now=NOW + timedelta(days=1))


def test_one_list_per_campaign_and_member_type_named_after_the_campaign() -> None:
    lead_list = campaign_list_id(GUID, EntityType.LEAD)
    assert lead_list == campaign_list_id(GUID.lower(), EntityType.LEAD)
    assert lead_list != campaign_list_id(GUID, EntityType.CONTACT)
    assert campaign_list_name("Spring", GUID, EntityType.CONTACT) == "Mkto-contacts-Spring"
    assert campaign_list_name(None, GUID, EntityType.LEAD) == f"Mkto-leads-{GUID.lower()}"
    assert len(campaign_list_name("x" * 300, GUID, EntityType.LEAD)) == 128
    assert (list_member_type(EntityType.LEAD), list_member_type(EntityType.CONTACT)) == (4, 2)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"leadId": 3, "subject": " Call "}', {"subject": "Call", "due_in_days": 5, "status": TASK_STATUS_DEFAULT}),
        (b'{"leadId": 3, "subject": "Call", "dueInDays": "10"}', {"due_in_days": 10}),
        (b'{"leadId": 3, "subject": "Call", "dueInDays": ""}', {"due_in_days": 5}),
        (
            b'{"leadId": 3, "subject": "Call", "description": "", "requestId": " "}',
            {"description": None, "request_id": None},
        ),
        (b'{"leadId": 3, "subject": "Call", "ownerId": "%s"}' % GUID.encode(), {"owner_id": GUID.lower()}),
    ],
)
def test_create_task_bodies_are_read(body: bytes, expected: dict[str, object]) -> None:
    request = parse_body(body, CreateTaskRequest)
    assert isinstance(request, CreateTaskRequest)
    assert {name: getattr(request, name) for name in expected} == expected


@pytest.mark.parametrize(
    ("model", "body", "reason"),
    [
        (CreateTaskRequest, b'{"leadId": 3}', "subject"),
        (CreateTaskRequest, b'{"leadId": 3, "subject": "  "}', "subject"),
        (CreateTaskRequest, b'{"leadId": 3, "subject": "%s"}' % (b"x" * 201), "subject"),
        (CreateTaskRequest, b'{"leadId": 3, "subject": "a", "dueInDays": -1}', "dueInDays"),
        (CreateTaskRequest, b'{"leadId": 3, "subject": "a", "dueInDays": 2.5}', "dueInDays"),
        (CreateTaskRequest, b'{"leadId": 3, "subject": "a", "status": "Done"}', "status"),
        (CreateTaskRequest, b'{"leadId": 3, "subject": "a", "colour": "red"}', "unknown field"),
        (ChangeOwnerRequest, b'{"leadId": 3}', "ownerId"),
        (ChangeOwnerRequest, b'{"leadId": 3, "ownerId": "ada"}', "systemuser or team GUID"),
        (ChangeOwnerRequest, b'{"leadId": 3, "ownerId": "%s", "ownerType": "queue"}' % GUID.encode(), "ownerType"),
        (CampaignRequest, b'{"leadId": 3, "campaignId": "spring"}', "campaign GUID"),
        (CampaignRequest, b'{"leadId": "3", "campaignId": "%s"}' % GUID.encode(), "leadId"),
    ],
)
def test_bad_flow_step_bodies_are_refused_with_a_reason(model: type, body: bytes, reason: str) -> None:
    refused = parse_body(body, model)
    assert isinstance(refused, Refusal)
    assert refused.status == 400
    assert reason in " ".join(refused.reasons)


def test_webhook_latency_percentiles_read_the_buckets() -> None:
    calls = WebhookCalls()
    for ms in [10] * 50 + [80] * 40 + [400] * 9 + [45000]:
        calls = calls.add("created", ms)
    assert (calls.calls, calls.outcomes) == (100, {"created": 100})
    assert calls.percentile_ms(0.5) == LATENCY_BOUNDS_MS[0]
    assert calls.percentile_ms(0.9) == 100
    assert calls.percentile_ms(0.99) == 500
    assert calls.percentile_ms(1.0) == 45000  # past the last bound: the slowest call
    merged = calls.merge(WebhookCalls().add("exists", 5))
    assert (merged.calls, merged.outcomes["exists"], merged.max_ms) == (101, 1, 45000)
    assert WebhookCalls().percentile_ms(0.5) is None


def test_the_status_view_has_a_row_per_webhook_in_json_text_and_html() -> None:
    store = MemoryStateStore()
    for outcome, ms in [("created", 40), ("exists", 8), ("rejected", 120)]:
        store.record_webhook_call("create-task", outcome=outcome, ms=ms, now=NOW)
    store.record_webhook_call("a-retired-hook", outcome="exists", ms=3, now=NOW)
    status = build_status(store, now=NOW)
    rows = {row.name: row for row in status.webhooks}
    names = ["sync-person", "change-owner", "create-task", "add-to-campaign", "remove-from-campaign", "a-retired-hook"]
    assert list(rows) == names  # every flow step, called or not, then any other name recorded
    task = rows["create-task"]
    assert (task.calls, task.outcomes, task.max_ms) == (3, {"created": 1, "exists": 1, "rejected": 1}, 120)
    assert task.p50_ms is not None
    assert (rows["change-owner"].calls, rows["change-owner"].p50_ms) == (0, None)
    text = render_text(status)
    assert "Webhook create-task: 3 call(s) in 24 h (created 1, exists 1, rejected 1)" in text
    assert "Webhook change-owner" not in text  # the text lists the webhooks that were called
    html = render_html(status)
    assert html.count('class="webhook-row"') == len(names)
    assert "<code>/api/marketo/remove-from-campaign</code>" in html


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, table_prefix: str) -> StateStore:
    if request.param == "memory":
        return MemoryStateStore(prefix=table_prefix)
    conn: str = request.getfixturevalue("azurite_connection_string")
    return TableStateStore.from_connection_string(conn, prefix=table_prefix)


def test_a_campaign_member_is_recorded_once_and_removed(store: StateStore) -> None:
    member = CampaignMember(
        campaign_id=GUID.lower(), list_id="l1", entity=EntityType.LEAD, dataverse_id="d1", marketo_id=7, added_at=NOW
    )
    assert store.get_campaign_member("l1", "d1") is None
    store.add_campaign_member(member)
    store.add_campaign_member(member.model_copy(update={"marketo_id": 8}))  # the first record stands
    assert store.get_campaign_member("l1", "d1") == member
    assert store.get_campaign_member("l1", "d2") is None
    store.remove_campaign_member(member)
    store.remove_campaign_member(member)  # missing: no error
    assert store.get_campaign_member("l1", "d1") is None


def test_a_campaign_member_recorded_before_the_add_is_confirmed_after_it(store: StateStore) -> None:
    member = CampaignMember(
        campaign_id=GUID.lower(),
        list_id="l1",
        entity=EntityType.LEAD,
        dataverse_id="d1",
        marketo_id=7,
        added_at=NOW,
        confirmed=False,
    )
    store.add_campaign_member(member)
    recorded = store.get_campaign_member("l1", "d1")
    assert recorded is not None
    assert not recorded.confirmed
    store.confirm_campaign_member(member)
    store.confirm_campaign_member(member)  # twice: the same
    assert store.get_campaign_member("l1", "d1") == member.model_copy(update={"confirmed": True})
    store.remove_campaign_member(member)
    store.confirm_campaign_member(member)  # forgotten meanwhile: recorded again, confirmed
    assert store.get_campaign_member("l1", "d1") == member.model_copy(update={"confirmed": True})


def test_a_records_memberships_are_erased_together_and_no_one_elses(store: StateStore) -> None:
    def member(list_id: str, record: str) -> CampaignMember:
        return CampaignMember(
            campaign_id=GUID.lower(),
            list_id=list_id,
            entity=EntityType.LEAD,
            dataverse_id=record,
            marketo_id=7,
            added_at=NOW,
        )

    for list_id, record in [("l1", "d1"), ("l2", "d1"), ("l1", "d10"), ("l1", "d2")]:
        store.add_campaign_member(member(list_id, record))
    assert store.delete_campaign_members_of(["D1", "d3"]) == 2  # "d10" shares the prefix "d1", not the key
    assert [store.get_campaign_member(lst, rec) is None for lst, rec in [("l1", "d1"), ("l2", "d1")]] == [True, True]
    assert store.get_campaign_member("l1", "d10") == member("l1", "d10")
    assert store.get_campaign_member("l1", "d2") == member("l1", "d2")
    assert store.delete_campaign_members_of(["d1"]) == 0


def test_a_campaign_list_is_marked_ready_once_and_forgotten_when_gone(store: StateStore) -> None:
    assert not store.campaign_list_ready("L1")
    store.mark_campaign_list_ready("L1", GUID)
    store.mark_campaign_list_ready("l1", GUID)  # marked already: no error
    assert store.campaign_list_ready("l1")
    assert not store.campaign_list_ready("l2")
    assert store.count_rows(cap=10)["members"] == 0  # a list is not a member
    store.forget_campaign_list("l1")
    store.forget_campaign_list("l1")  # missing: no error
    assert not store.campaign_list_ready("l1")


def test_webhook_calls_are_counted_per_hour_for_the_last_day(store: StateStore) -> None:
    store.record_webhook_call("create-task", outcome="created", ms=40, now=NOW - timedelta(hours=30))  # too old
    store.record_webhook_call("create-task", outcome="created", ms=40, now=NOW - timedelta(hours=2))
    store.record_webhook_call("create-task", outcome="exists", ms=8, now=NOW)
    store.record_webhook_call("change-owner", outcome="refused", ms=2, now=NOW)
    calls = store.webhook_calls(now=NOW)
    assert (calls["create-task"].calls, calls["create-task"].outcomes) == (2, {"created": 1, "exists": 1})
    assert calls["change-owner"].outcomes == {"refused": 1}
    # The ring: a day later the same hour's rows start afresh.
    store.record_webhook_call("change-owner", outcome="changed", ms=2, now=NOW + timedelta(days=1))
    assert store.webhook_calls(now=NOW + timedelta(days=1))["change-owner"].outcomes == {"changed": 1}


def test_concurrent_webhook_calls_are_all_counted(store: StateStore) -> None:
    def record() -> None:
        for _ in range(5):
            store.record_webhook_call("sync-person", outcome="exists", ms=5, now=NOW)

    threads = [threading.Thread(target=record) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counted = store.webhook_calls(now=NOW)["sync-person"].calls
    assert 26 <= counted <= 30  # a sample is dropped only after four conflicts in a row
