from __future__ import annotations

import pytest

from sync_core.state._keys import MAX_MARKETO_ID, marketo_link_key
from sync_core.webhook.request import MAX_BODY_BYTES, MAX_LEAD_ID, Refusal, SyncPersonRequest, read_request

SECRET = "hook-secret"
GOOD_HEADERS = {"Content-Type": "application/json", "X-Sync-Secret": SECRET}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"leadId": 1141}', SyncPersonRequest(leadId=1141)),
        (b'{"leadId": 1141, "syncAs": "Contact"}', SyncPersonRequest(leadId=1141, syncAs="contact")),
        (b'{"leadId": 999999999999}', SyncPersonRequest(leadId=MAX_LEAD_ID)),
        (
            b'{"leadId": 7, "ownerId": "8F4C0000-0000-0000-0000-00000000AB12"}',
            SyncPersonRequest(leadId=7, ownerId="8f4c0000-0000-0000-0000-00000000ab12"),
        ),
        (b'{"leadId": 7, "syncAs": "", "ownerId": ""}', SyncPersonRequest(leadId=7)),
    ],
)
def test_valid_bodies_are_read(body: bytes, expected: SyncPersonRequest) -> None:
    assert read_request(body, GOOD_HEADERS, SECRET) == expected


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"\xff\xfe", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b"{}", 400, "leadId"),
        (b'{"leadId": -3}', 400, "leadId"),
        (b'{"leadId": true}', 400, "leadId"),
        (b'{"leadId": "12a"}', 400, "leadId"),
        (b'{"leadId": "1141"}', 400, "not quoted"),
        (b'{"leadId": 0}', 400, "leadId"),
        (b'{"leadId": 1000000000000}', 400, "leadId"),
        (b'{"leadId": 1.0}', 400, "leadId"),
        (b'{"leadId": 1e3}', 400, "leadId"),
        (b'{"leadId": null}', 400, "leadId"),
        (b'{"leadId": [1]}', 400, "leadId"),
        (b'{"leadId": 1e400}', 400, "leadId"),
        (b"[" * 4000, 400, "deeper than"),
        (b'{"leadId": 1, "x": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "deeper than"),
        (b'{"leadId": 1, "syncAs": ["lead"]}', 400, "syncAs"),
        (b'{"leadId": 1, "ownerId": 5}', 400, "ownerId"),
        (b'{"leadId": 1, "syncAs": "account"}', 400, "syncAs"),
        (b'{"leadId": 1, "ownerId": "not-a-guid"}', 400, "ownerId"),
        (b'{"leadId": 1, "email": "x@example.com"}', 400, "email: unknown field"),
        (b'{"leadId": 1, "pad": "' + b"x" * MAX_BODY_BYTES + b'"}', 413, "larger than"),
    ],
)
def test_bad_bodies_are_refused_with_a_reason(body: bytes, status: int, reason: str) -> None:
    answer = read_request(body, GOOD_HEADERS, SECRET)
    assert isinstance(answer, Refusal)
    assert answer.status == status
    assert any(reason in r for r in answer.reasons), answer.reasons


@pytest.mark.parametrize(
    ("headers", "configured"),
    [
        ({}, SECRET),
        ({"X-Sync-Secret": "wrong"}, SECRET),
        ({"x-sync-secret": SECRET + "x"}, SECRET),
        ({"X-Sync-Secret": ""}, SECRET),
        ({"X-Sync-Secret": SECRET}, None),
    ],
)
def test_missing_or_wrong_secret_is_refused_before_the_body_is_read(
    headers: dict[str, str], configured: str | None
) -> None:
    answer = read_request(b'{"leadId": 1}', headers, configured)
    assert isinstance(answer, Refusal)
    assert answer.status == 401
    assert SECRET not in " ".join(answer.reasons)


def test_secret_header_name_is_case_insensitive() -> None:
    assert read_request(b'{"leadId": 5}', {"x-sync-secret": SECRET}, SECRET) == SyncPersonRequest(leadId=5)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    body = b'{"leadId": 3, "syncAs": "lead", "ownerId": ""}'
    assert read_request(body, GOOD_HEADERS, SECRET) == SyncPersonRequest(leadId=3)
    assert isinstance(read_request(b'{"leadId": 3, "z": "' + b"[" * 100 + b'"}', GOOD_HEADERS, SECRET), Refusal)


def test_every_accepted_lead_id_has_a_link_key() -> None:
    """The front door accepts exactly the ids the state store can key (no 500 from ``marketo_link_key``)."""
    assert MAX_LEAD_ID == MAX_MARKETO_ID
    for lead_id in (1, 2, 10**6, MAX_LEAD_ID):
        accepted = read_request(b'{"leadId": %d}' % lead_id, GOOD_HEADERS, SECRET)
        assert isinstance(accepted, SyncPersonRequest)
        assert marketo_link_key(accepted.lead_id).startswith("m:")
    assert isinstance(read_request(b'{"leadId": %d}' % (MAX_LEAD_ID + 1), GOOD_HEADERS, SECRET), Refusal)
