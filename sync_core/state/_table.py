"""The state store on Azure Table Storage (Azurite locally), with ``azure-data-tables`` 12.7.

``AzureRows`` maps the backend verbs of ``_rows.Rows`` (which maps, filters and counts rows for
both backends) onto the SDK: ETag-conditional ``update_entity``/``delete_entity``,
``create_entity`` for insert-if-absent, ``query_entities`` with ``parameters=`` (the SDK escapes
every value) for lookups and filtered scans, fetched a page (``results_per_page``) at a time as the
caller iterates. A transaction (``$batch``) is written by ``_Batch``: the same request as the SDK's
``submit_transaction``, sent through the SDK's own pipeline (its signing, retries and hooks) with
the SDK's own entity serialisation, but with the multipart body written and read as text. The
SDK builds each operation as a request run through its policies and an ``email`` message, and
parses the answer with the ``email`` package: 1.5 ms of CPU a link written (two rows) against
0.13 to 0.16 ms as text (``bench/bench_tables.py``; README "Performance").
Tables are created on first use. Service answers become the project's errors: a lost condition
is ``StateConflictError``, throttling, 5xx and dropped connections are ``TransientError``
(a transaction is first sent again where that is safe, ``AzureRows._submit``), anything else is
``ApiError(service="tables")``.
``TableStateStore`` is ``RowStateStore`` over it; ``wiring.build_state_store`` picks connection string
or endpoint + managed identity from the settings. Nothing here logs entity contents.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any, NamedTuple
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential, TokenCredential
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.rest import HttpRequest
from azure.data.tables import TableClient, TableServiceClient, UpdateMode
from azure.data.tables._serialize import _add_entity_properties

from sync_core.core.errors import ApiError, StateConflictError, TransientError
from sync_core.core.retention import Retention
from sync_core.state._keys import RowOp
from sync_core.state._rows import RowFilter, Rows, StoredRow
from sync_core.state._store import RowStateStore

__all__ = ["AzureRows", "TableStateStore"]

logger = logging.getLogger(__name__)

TableCredential = TokenCredential | AzureNamedKeyCredential | AzureSasCredential


@contextmanager
def _service_errors(what: str) -> Iterator[None]:
    """Turn what the SDK raises (after its own retries) into the project's error tree."""
    try:
        yield
    except (ServiceRequestError, ServiceResponseError) as err:
        raise TransientError(f"Table Storage {what}: connection failed", service="tables") from err
    except HttpResponseError as err:
        raise _status_error(what, err.status_code, _code(getattr(err, "error_code", None))) from err


def _code(value: object) -> str | None:
    """A service's error code as text, or None when it gave none."""
    return str(value or "") or None


def _status_error(what: str, status: int | None, code: str | None) -> TransientError | ApiError:
    """A service's error answer as the project's error: throttling and 5xx are worth retrying."""
    if status is not None and (status == 429 or status >= 500):
        return TransientError(f"Table Storage {what}: status {status} {code or ''}".strip(), service="tables")
    return ApiError(f"Table Storage {what} failed", service="tables", status=status, code=code)


def _entity(partition: str, row: str, props: Mapping[str, Any]) -> dict[str, Any]:
    return {"PartitionKey": partition, "RowKey": row, **props}


def _stored(entity: Any) -> StoredRow:
    props = {name: value for name, value in entity.items() if name not in ("PartitionKey", "RowKey")}
    return StoredRow(entity["PartitionKey"], entity["RowKey"], props, entity.metadata["etag"])


def _odata(where: RowFilter) -> tuple[str, dict[str, Any]]:
    """``where`` as a ``$filter`` with ``@`` parameters (the SDK escapes every value); "" keeps all."""
    conditions: list[str] = []
    parameters: dict[str, Any] = {}
    if where.partition is not None:
        conditions.append("PartitionKey eq @pk")
        parameters["pk"] = where.partition
    if where.partition_from is not None:
        conditions.append("PartitionKey ge @pkfrom")
        parameters["pkfrom"] = where.partition_from
    if where.partition_to is not None:
        conditions.append("PartitionKey lt @pkto")
        parameters["pkto"] = where.partition_to
    if where.row_prefix:
        # Every key starting with the prefix sorts in [prefix, prefix with its last char + 1).
        conditions.append("RowKey ge @lo and RowKey lt @hi")
        parameters["lo"] = where.row_prefix
        parameters["hi"] = _after_prefix(where.row_prefix)
    if where.row_prefixes:
        ranges = []
        for index, prefix in enumerate(where.row_prefixes):
            ranges.append(f"( RowKey ge @lo{index} and RowKey lt @hi{index} )")
            parameters[f"lo{index}"] = prefix
            parameters[f"hi{index}"] = _after_prefix(prefix)
        conditions.append("( " + " or ".join(ranges) + " )")
    if where.row_after is not None:
        conditions.append("RowKey gt @rkafter")
        parameters["rkafter"] = where.row_after
    if where.row_until is not None:
        conditions.append("RowKey le @rkuntil")
        parameters["rkuntil"] = where.row_until
    if where.at_most is not None:
        name, cutoff = where.at_most
        conditions.append(f"{name} le @cutoff")  # name is one of ours, never input
        parameters["cutoff"] = cutoff
    return " and ".join(conditions), parameters


def _after_prefix(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _pages(pages: Iterator[Iterator[Any]], *, what: str) -> Iterator[list[StoredRow]]:
    """The SDK's pages as rows, one request per page, its errors turned into the project's."""
    while True:
        with _service_errors(what):
            try:
                page = list(next(pages))
            except StopIteration:  # no continuation token left: nothing was sent
                return
        yield [_stored(entity) for entity in page]


class AzureRows(Rows):
    def __init__(self, service: TableServiceClient, *, yields_to_live: bool = True) -> None:
        super().__init__(yields_to_live=yields_to_live)
        self.service = service
        self._clients: dict[str, TableClient] = {}
        self._clients_lock = threading.Lock()

    def _table(self, name: str) -> TableClient:
        with self._clients_lock:
            client = self._clients.get(name)
            if client is None:
                # Once per table per process: create it if this is the first run on the account.
                with _service_errors(f"create table {name}"), suppress(ResourceExistsError):
                    self.service.create_table(name)
                client = self._clients[name] = self.service.get_table_client(name)
            return client

    def _get(self, table: str, partition: str, row: str) -> StoredRow | None:
        client = self._table(table)
        with _service_errors(f"reading a row of {table}"):
            try:
                return _stored(client.get_entity(partition, row))
            except ResourceNotFoundError:
                return None

    def _insert(self, table: str, partition: str, row: str, props: dict[str, Any]) -> str:
        client = self._table(table)
        with _service_errors(f"inserting a row of {table}"):
            try:
                return str(client.create_entity(_entity(partition, row, props))["etag"])
            except ResourceExistsError as err:
                raise StateConflictError(f"{table}/{partition}/{row}: already exists") from err

    def _replace(self, table: str, partition: str, row: str, props: dict[str, Any], *, etag: str) -> str:
        client = self._table(table)
        with _service_errors(f"replacing a row of {table}"):
            try:
                answer = client.update_entity(
                    _entity(partition, row, props),
                    mode=UpdateMode.REPLACE,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceModifiedError as err:
                raise StateConflictError(
                    f"{table}/{partition}/{row}: changed since it was read (ETag mismatch)"
                ) from err
            except ResourceNotFoundError as err:
                raise StateConflictError(f"{table}/{partition}/{row}: gone since it was read") from err
            return str(answer["etag"])

    def _delete(self, table: str, partition: str, row: str, *, etag: str | None) -> None:
        client = self._table(table)
        with _service_errors(f"removing a row of {table}"):
            try:
                if etag is None:
                    client.delete_entity(partition, row)
                else:  # the SDK itself treats a missing row as deleted
                    client.delete_entity(partition, row, etag=etag, match_condition=MatchConditions.IfNotModified)
            except ResourceModifiedError as err:
                raise StateConflictError(
                    f"{table}/{partition}/{row}: changed since it was read (ETag mismatch)"
                ) from err

    def _query_pages(self, table: str, partition: str, rows: list[str]) -> Iterator[list[StoredRow]]:
        client = self._table(table)
        # The SDK substitutes @names word by word, so every parameter stands between spaces.
        either = " or ".join(f"RowKey eq @k{index}" for index in range(len(rows)))
        parameters = {"pk": partition, **{f"k{index}": row for index, row in enumerate(rows)}}
        query = client.query_entities(f"PartitionKey eq @pk and ( {either} )", parameters=parameters)
        return _pages(query.by_page(), what=f"query {table}")

    def _scan_pages(self, table: str, where: RowFilter, page_size: int) -> Iterator[list[StoredRow]]:
        client = self._table(table)
        odata, parameters = _odata(where)
        if odata:
            query = client.query_entities(odata, parameters=parameters, results_per_page=page_size)
        else:
            query = client.list_entities(results_per_page=page_size)
        return _pages(query.by_page(), what=f"scan {table}")

    def _transact(self, table: str, partition: str, ops: list[RowOp]) -> None:
        batch = _Batch(self._table(table), table, partition)
        pending = list(ops)
        while pending:
            with _service_errors(f"transaction on {table}"):
                refused = self._submit(batch, pending)
            if refused is None:
                return
            failed = pending[refused.at] if 0 <= refused.at < len(pending) else None
            if refused.status == 404 and failed is not None and failed.kind == "delete":
                # Deleting a missing row fails the whole batch on the service; the row
                # is gone either way, so send the rest again without it (another transaction).
                pending.remove(failed)
                if pending:
                    self._count(transactions=1, operations=len(pending))
                continue
            if refused.status in (409, 412):
                raise StateConflictError(
                    f"{table}/{partition}/{failed.row if failed else '?'}: conflict at operation "
                    f"{refused.at} of the transaction ({refused.code or refused.status}); nothing was written"
                )
            raise _status_error(f"transaction on {table}", refused.status, refused.code)

    def _submit(self, batch: _Batch, ops: list[RowOp]) -> Refused | None:
        """``batch.submit(ops)``, sent again after a dropped connection where that is safe.

        The SDK's retry policy never sends a POST again, and ``$batch`` is one: a connection the
        service (or Azurite under load) dropped would end the cycle ``transient``. A request that
        was never sent (``ServiceRequestError``) is always sent again; one sent and not answered
        (``ServiceResponseError``) may have been written, so only if writing it twice leaves what
        writing it once does: upserts, merges and unconditional deletes (a row already gone is then a 404,
        which ``_transact`` drops). An insert or an ETag condition would fail on its own first write.
        """
        resends = 0
        while True:
            try:
                return batch.submit(ops)
            except ServiceRequestError:
                if resends == RESENDS:
                    raise
            except ServiceResponseError:
                if resends == RESENDS or not all(_idempotent(op) for op in ops):
                    raise
            resends += 1
            logger.warning(
                "Table Storage transaction on %s: connection dropped, sent again (%d of %d)",
                batch.table,
                resends,
                RESENDS,
            )
            self._count(transactions=1, operations=len(ops))
            time.sleep(RESEND_PAUSE_SECONDS * resends)


def _idempotent(op: RowOp) -> bool:
    """Whether writing ``op`` twice leaves what writing it once does."""
    return op.kind in ("upsert", "merge") or (op.kind == "delete" and op.etag is None)


# A transaction sent again after a dropped connection (``AzureRows._submit``): at most twice, after
# 0.5 s and then 1 s (the SDK's own retries of other requests start at 0.8 s).
RESENDS = 2
RESEND_PAUSE_SECONDS = 0.5


class Refused(NamedTuple):
    """The operation a transaction failed on (the service then wrote none of it)."""

    at: int  # the operation's index in the transaction
    status: int
    code: str | None


_STATUS_LINE = re.compile(r"^HTTP/1\.1 (\d{3})", re.MULTILINE)


class _Batch:
    """One table's ``$batch`` requests (an entity group transaction: one partition, ≤ 100 operations).

    The request is the SDK's (``TableClient.submit_transaction``, azure-data-tables 12.7): a
    multipart/mixed body holding one changeset, an ``application/http`` part per operation with
    the operation's absolute URL (keys with ``'`` doubled, then percent-encoded) and the entity as
    the SDK serialises it (``_add_entity_properties``: ``@odata.type`` annotations, ``None``
    left out). It goes through the client's own pipeline, so it is signed, retried and hooked as
    the SDK's is. The answer is a changeset with an HTTP status line per operation; when one fails
    the service writes none and answers with that one alone, its error message starting with the
    operation's index ("1:…"; Table service REST API, "Performing entity group transactions").
    """

    def __init__(self, client: TableClient, table: str, partition: str) -> None:
        self._client = client
        # The SDK's own $batch address; the pipeline adds a SAS token where there is one.
        self._base = f"{client.scheme}://{client._primary_hostname}"
        self.table = table
        self._partition = partition
        # What every operation's request line shares: the table's URL, and an entity's up to its RowKey.
        table_url = f"{self._base}/{quote(table, safe='')}"
        self._insert_line = f"POST {table_url}"
        self._entity_url = f"{table_url}(PartitionKey='{_url_key(partition)}',RowKey="
        self._version = client.api_version
        self._headers = (
            f"x-ms-version: {self._version}\r\nDataServiceVersion: 3.0\r\n"
            "Accept: application/json;odata=minimalmetadata\r\n"
        )

    def submit(self, ops: list[RowOp]) -> Refused | None:
        """Send ``ops`` as one transaction: ``None`` once all are written, else the one refused."""
        batch, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
        body = (
            f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n"
            + "".join(self._part(changeset, index, op) for index, op in enumerate(ops))
            + f"--{changeset}--\r\n\r\n--{batch}--\r\n"
        )
        request = HttpRequest(
            "POST",
            f"{self._base}/$batch",
            headers={
                "x-ms-version": self._version,
                "DataServiceVersion": "3.0",
                "MaxDataServiceVersion": "3.0;NetFx",
                "Content-Type": f"multipart/mixed; boundary={batch}",
                "Accept": "application/json",
            },
            content=body.encode(),
        )
        # stream=True, as the SDK does: the pipeline's content decoder cannot read a multipart answer.
        response = self._client._client.send_request(request, stream=True)
        try:
            text = response.read().decode("utf-8", "replace")
        finally:
            response.close()
        if response.status_code != 202:
            code = response.headers.get("x-ms-error-code") or _error_body(text).get("code")
            raise _status_error(f"transaction on {self.table}", response.status_code, _code(code))
        lines = list(_STATUS_LINE.finditer(text))
        statuses = [int(line.group(1)) for line in lines]
        refused = next((index for index, status in enumerate(statuses) if not 200 <= status < 300), None)
        if refused is None:
            if len(statuses) == len(ops):
                return None
            raise ApiError(
                f"Table Storage transaction on {self.table}: {len(statuses)} answers to {len(ops)} operations",
                service="tables",
                status=response.status_code,
            )
        end = lines[refused + 1].start() if refused + 1 < len(lines) else len(text)
        error = _error_body(text[lines[refused].end() : end])
        message = error.get("message")
        head = str(message.get("value", "")).split(":", 1)[0] if isinstance(message, dict) else ""
        return Refused(int(head) if head.isdigit() else 0, statuses[refused], _code(error.get("code")))

    def _part(self, changeset: str, index: int, op: RowOp) -> str:
        if op.kind == "insert":
            line = self._insert_line
        else:
            line = f"{_VERBS[op.kind]} {self._entity_url}'{_url_key(op.row)}')"
        headers = self._headers
        if op.kind == "delete":
            headers += f"If-Match: {op.etag or '*'}\r\n"
            content = ""
        else:  # no If-Match on an upsert or a merge: the service inserts or replaces, or merges
            content = json.dumps(_add_entity_properties(_entity(self._partition, op.row, op.props)))
            headers += f"Content-Type: application/json\r\nContent-Length: {len(content.encode())}\r\n"
        return (
            f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
            f"Content-ID: {index}\r\n\r\n{line} HTTP/1.1\r\n{headers}\r\n{content}\r\n"
        )


# A transaction's operations by kind (``insert`` is a POST to the table): with no If-Match, PUT is
# Insert Or Replace Entity and MERGE is Insert Or Merge Entity.
_VERBS = {"upsert": "PUT", "merge": "MERGE", "delete": "DELETE"}


def _url_key(key: str) -> str:
    """A key in an entity's URL, as the SDK writes it: ``'`` doubled (OData), then percent-encoded."""
    return quote(key.replace("'", "''"), safe="")


def _error_body(text: str) -> dict[str, Any]:
    """The ``odata.error`` of the first JSON body in ``text`` ({} if there is none)."""
    start = text.find("{")
    if start < 0:
        return {}
    try:
        body, _ = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        return {}
    error = body.get("odata.error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


# Lookups of one batch (a Dataverse page: up to 5000 ids, 358 queries) in flight at once. The
# SDK's connection pool keeps 10 connections per host, so 8 reuse them without opening more.
QUERY_WORKERS = 8


class TableStateStore(RowStateStore):
    """The state store on Azure Table Storage; tables ``{prefix}state``, ``{prefix}links``, … ."""

    def __init__(self, service: TableServiceClient, *, prefix: str, retention: Retention | None = None) -> None:
        self.service = service
        super().__init__(AzureRows(service), prefix=prefix, query_workers=QUERY_WORKERS, retention=retention)

    def separate_rows(self) -> AzureRows:
        """Rows on the same Table service with their own counters (the shared API budget's: its
        writes never wait for live work, see ``Rows``)."""
        return AzureRows(self.service, yields_to_live=False)

    @classmethod
    def from_connection_string(
        cls, connection_string: str, *, prefix: str, retention: Retention | None = None
    ) -> TableStateStore:
        """Shared-key access: Azurite locally, or a storage account that still allows keys."""
        return cls(TableServiceClient.from_connection_string(connection_string), prefix=prefix, retention=retention)

    @classmethod
    def from_endpoint(
        cls, endpoint: str, credential: TableCredential, *, prefix: str, retention: Retention | None = None
    ) -> TableStateStore:
        """``https://<account>.table.core.windows.net`` with an Entra credential (managed identity)."""
        return cls(TableServiceClient(endpoint=endpoint, credential=credential), prefix=prefix, retention=retention)
