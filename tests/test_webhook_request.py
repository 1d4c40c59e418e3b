from __future__ import annotations

import pytest

from sync_core.webhook.request import MAX_BODY_BYTES, Refusal, SyncPersonRequest, read_request

SECRET = "hook-secret"
GOOD_HEADERS = {"Content-Type": "application/json", "X-Sync-Secret": SECRET}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"leadId": 1141}', SyncPersonRequest(leadId=1141)),
        (b'{"leadId": "1141", "syncAs": "Contact"}', SyncPersonRequest(leadId=1141, syncAs="contact")),
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
