"""How ``AzureRows`` reads a ``$batch`` answer it cannot take at face value.

The answers come from a canned HTTP server on 127.0.0.1 (the service's side of the wire); the
request goes through the SDK's real pipeline, signed with a shared key. What Azurite answers to
real transactions is in ``tests/test_state_contract.py``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.data.tables import TableServiceClient

from sync_core.core.errors import ApiError, StateConflictError, TransientError
from sync_core.state import _table
from sync_core.state._keys import RowOp
from sync_core.state._table import AzureRows

KEY = "a2V5"  # base64 of "key": only the signature's input, never checked by the canned server


class _Canned(BaseHTTPRequestHandler):
    answers: list[tuple[int, dict[str, str], str] | None] = []
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        type(self).bodies.append(self.rfile.read(length))
        if self.path.endswith("/Tables"):  # create the table: it exists
            status, headers, body = 409, {"x-ms-error-code": "TableAlreadyExists"}, ""
        else:
            answer = type(self).answers.pop(0)
            if answer is None:  # read the request, then drop the connection unanswered
                self.close_connection = True
                return
            status, headers, body = answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body.encode())))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def canned() -> Iterator[tuple[AzureRows, type[_Canned]]]:
    handler = type("Handler", (_Canned,), {"answers": [], "bodies": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    service = TableServiceClient(
        endpoint=f"http://127.0.0.1:{server.server_address[1]}/acct",
        credential=AzureNamedKeyCredential("acct", KEY),
        retry_total=0,
    )
    yield AzureRows(service), handler
    server.shutdown()
    server.server_close()


def _changeset(*parts: str) -> tuple[int, dict[str, str], str]:
    body = "--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_1\r\n\r\n"
    for part in parts:
        body += (
            "--changesetresponse_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            f"{part}\r\n"
        )
    body += "--changesetresponse_1--\r\n--batchresponse_1--\r\n"
    return 202, {"Content-Type": "multipart/mixed; boundary=batchresponse_1"}, body


NO_CONTENT = 'HTTP/1.1 204 No Content\r\nETag: W/"x"\r\n'


def _refused(status: str, code: str, message: str) -> str:
    error = json.dumps({"odata.error": {"code": code, "message": {"lang": "en-US", "value": message}}})
    return f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\r\n{error}"


def test_every_operation_answered_is_a_written_transaction(canned: tuple[AzureRows, type[_Canned]]) -> None:
    rows, server = canned
    server.answers.append(_changeset(NO_CONTENT, NO_CONTENT))
    rows.transact("t", "p", [RowOp("upsert", "a", {"n": 1}), RowOp("delete", "b")])
    sent = server.bodies[-1]
    assert sent.count(b"Content-Type: application/http") == 2
    assert b"PUT http://127.0.0.1:" in sent
    assert b"/acct/t(PartitionKey='p',RowKey='a') HTTP/1.1" in sent
    assert b"/acct/t(PartitionKey='p',RowKey='b') HTTP/1.1\r\n" in sent
    assert b"If-Match: *" in sent


def test_a_refused_operation_is_found_by_the_index_in_its_message(canned: tuple[AzureRows, type[_Canned]]) -> None:
    rows, server = canned
    server.answers.append(_changeset(_refused("412 Precondition Failed", "UpdateConditionNotSatisfied", "1:stale")))
    with pytest.raises(StateConflictError, match=r"t/p/b: conflict at operation 1 .*UpdateConditionNotSatisfied"):
        rows.transact("t", "p", [RowOp("upsert", "a"), RowOp("delete", "b", etag='W/"old"')])


def test_a_missing_row_deleted_is_dropped_and_the_rest_sent_again(canned: tuple[AzureRows, type[_Canned]]) -> None:
    rows, server = canned
    server.answers += [_changeset(_refused("404 Not Found", "ResourceNotFound", "0:gone")), _changeset(NO_CONTENT)]
    rows.transact("t", "p", [RowOp("delete", "gone"), RowOp("upsert", "a")])
    assert b"RowKey='gone'" in server.bodies[-2]
    assert b"RowKey='gone'" not in server.bodies[-1]
    assert rows.counters.transactions == 2


def test_a_refusal_without_an_index_is_the_first_operations(canned: tuple[AzureRows, type[_Canned]]) -> None:
    rows, server = canned
    server.answers.append(_changeset(_refused("400 Bad Request", "InvalidInput", "no index here")))
    with pytest.raises(ApiError) as err:
        rows.transact("t", "p", [RowOp("upsert", "a"), RowOp("upsert", "b")])
    assert (err.value.status, err.value.code) == (400, "InvalidInput")


def test_a_throttled_or_failing_service_is_transient(canned: tuple[AzureRows, type[_Canned]]) -> None:
    rows, server = canned
    server.answers.append((503, {"x-ms-error-code": "ServerBusy"}, ""))
    with pytest.raises(TransientError, match="status 503 ServerBusy"):
        rows.transact("t", "p", [RowOp("upsert", "a")])


def test_an_answer_short_of_operations_is_an_error_not_a_success(canned: tuple[AzureRows, type[_Canned]]) -> None:
    rows, server = canned
    server.answers.append(_changeset(NO_CONTENT))
    with pytest.raises(ApiError, match="1 answers to 2 operations"):
        rows.transact("t", "p", [RowOp("upsert", "a"), RowOp("upsert", "b")])


def _batches(server: type[_Canned]) -> list[bytes]:
    return [body for body in server.bodies if b"changeset_" in body]


@pytest.fixture
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_table, "RESEND_PAUSE_SECONDS", 0.0)


@pytest.mark.usefixtures("no_pause")
def test_upserts_and_plain_deletes_are_sent_again_after_a_dropped_connection(
    canned: tuple[AzureRows, type[_Canned]], caplog: pytest.LogCaptureFixture
) -> None:
    rows, server = canned
    server.answers += [None, _changeset(NO_CONTENT, NO_CONTENT)]
    with caplog.at_level(logging.WARNING, logger=_table.__name__):
        rows.transact("t", "p", [RowOp("upsert", "a"), RowOp("delete", "b")])
    assert [record.getMessage() for record in caplog.records] == [
        "Table Storage transaction on t: connection dropped, sent again (1 of 2)"
    ]
    sent = _batches(server)
    assert len(sent) == 2
    assert all(b"RowKey='a'" in body and b"RowKey='b'" in body for body in sent)  # the same operations
    assert rows.counters.transactions == 2


@pytest.mark.usefixtures("no_pause")
@pytest.mark.parametrize("op", [RowOp("insert", "b"), RowOp("delete", "b", etag='W/"seen"')])
def test_an_insert_or_a_conditional_delete_is_not_sent_twice(
    canned: tuple[AzureRows, type[_Canned]], op: RowOp
) -> None:
    rows, server = canned
    server.answers += [None, _changeset(NO_CONTENT, NO_CONTENT)]
    with pytest.raises(TransientError, match="connection failed"):
        rows.transact("t", "p", [RowOp("upsert", "a"), op])
    assert len(_batches(server)) == 1  # it may have been written: a second write would be refused as a conflict


@pytest.mark.usefixtures("no_pause")
def test_a_connection_dropped_three_times_ends_transient(canned: tuple[AzureRows, type[_Canned]]) -> None:
    rows, server = canned
    server.answers += [None, None, None, _changeset(NO_CONTENT)]
    with pytest.raises(TransientError, match="connection failed"):
        rows.transact("t", "p", [RowOp("upsert", "a")])
    assert len(_batches(server)) == 1 + _table.RESENDS
