"""sandbox/azurite.py: Azurite runs on the venv's Node, Table and Queue services alike, and stops."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueClient

from sandbox.azurite import AzuriteNotInstalled, azurite_command, azurite_node, run_azurite_queue


@pytest.fixture
def queue_connection_string() -> Iterator[str]:
    try:
        with run_azurite_queue() as conn:
            yield conn
    except AzuriteNotInstalled as err:
        pytest.skip(str(err))


def test_azurite_runs_on_a_node_of_at_least_22() -> None:
    try:
        node = azurite_node()
    except AzuriteNotInstalled as err:
        pytest.skip(str(err))
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert int(version.lstrip("v").split(".")[0]) >= 22, version


def test_an_unknown_node_override_is_reported_as_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURITE_NODE", "/nonexistent/node")
    with pytest.raises(AzuriteNotInstalled, match="AZURITE_NODE"):
        azurite_command("table")


@pytest.mark.azurite
def test_the_table_service_answers(azurite_connection_string: str) -> None:
    service = TableServiceClient.from_connection_string(azurite_connection_string)
    name = "t" + uuid.uuid4().hex[:12]
    table = service.create_table(name)
    table.upsert_entity({"PartitionKey": "p", "RowKey": "r", "n": 1})
    assert table.get_entity("p", "r")["n"] == 1
    service.delete_table(name)


@pytest.mark.azurite
def test_the_queue_service_round_trips_a_message(queue_connection_string: str) -> None:
    queue = QueueClient.from_connection_string(queue_connection_string, "q" + uuid.uuid4().hex[:12])
    queue.create_queue()
    queue.send_message("hello")
    received = list(queue.receive_messages(max_messages=1))
    assert [m.content for m in received] == ["hello"]
    queue.delete_message(received[0])
    assert queue.get_queue_properties().approximate_message_count == 0
    queue.delete_queue()
