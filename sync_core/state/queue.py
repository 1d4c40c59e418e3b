"""The job queue (design §6): chunk messages on an Azure Storage queue (Azurite's locally).

``JobQueue`` is the Protocol: send (optionally invisible for a while), receive with a visibility
timeout, delete, and the poison queue's length for the status view. ``AzureJobQueue`` is
``azure-storage-queue`` 12.18: messages are Base64 text, the Functions queue trigger's default
``messageEncoding``, so the host's trigger and our own poller read what we send; the poison queue
is ``{name}-poison``, where the Functions host moves a message after ``maxDequeueCount`` failed
deliveries (host.json). ``MemoryJobQueue`` keeps the same semantics in a list for unit tests.
Messages carry ids only (a job id and a chunk index), never person data.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from sync_core.core.errors import ApiError, TransientError

__all__ = ["AzureJobQueue", "JobQueue", "MemoryJobQueue", "ReceivedMessage", "poison_name"]

MAX_VISIBILITY_DELAY = 7 * 24 * 3600  # the service's cap on a message's initial invisibility


def poison_name(queue: str) -> str:
    return f"{queue}-poison"


@dataclass(frozen=True)
class ReceivedMessage:
    id: str
    body: str
    dequeue_count: int
    pop_receipt: str


class JobQueue(Protocol):
    name: str

    def send(self, body: str, *, delay_seconds: int = 0) -> None:
        """Add a message, invisible for ``delay_seconds`` (0: at once)."""
        ...

    def receive(self, *, max_messages: int, visibility_timeout: int) -> list[ReceivedMessage]:
        """Up to ``max_messages`` visible messages, each hidden for ``visibility_timeout`` seconds
        (then delivered again unless deleted), its ``dequeue_count`` one higher."""
        ...

    def delete(self, message: ReceivedMessage) -> None:
        """Remove a received message; one whose pop receipt is stale (redelivered since) is left."""
        ...

    def send_poison(self, body: str) -> None:
        """Move a message's body to the poison queue (what the Functions host does after maxDequeueCount)."""
        ...

    def poison_count(self) -> int:
        """Messages in the poison queue (approximate on Azure)."""
        ...


@dataclass
class _Entry:
    body: str
    visible_at: float
    dequeue_count: int = 0
    pop_receipt: str = ""


class MemoryJobQueue:
    """A queue in memory with Azure's visibility semantics; ``clock`` injected for tests."""

    def __init__(self, name: str = "sync-jobs", *, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._messages: dict[str, _Entry] = {}
        self.poison: list[str] = []

    def send(self, body: str, *, delay_seconds: int = 0) -> None:
        with self._lock:
            self._messages[str(next(self._ids))] = _Entry(body, self._clock() + delay_seconds)

    def receive(self, *, max_messages: int, visibility_timeout: int) -> list[ReceivedMessage]:
        now = self._clock()
        out: list[ReceivedMessage] = []
        with self._lock:
            for message_id, entry in self._messages.items():
                if len(out) >= max_messages:
                    break
                if entry.visible_at <= now:
                    entry.visible_at = now + visibility_timeout
                    entry.dequeue_count += 1
                    entry.pop_receipt = f"{message_id}:{entry.dequeue_count}"
                    out.append(ReceivedMessage(message_id, entry.body, entry.dequeue_count, entry.pop_receipt))
        return out

    def delete(self, message: ReceivedMessage) -> None:
        with self._lock:
            entry = self._messages.get(message.id)
            if entry is not None and entry.pop_receipt == message.pop_receipt:
                del self._messages[message.id]

    def send_poison(self, body: str) -> None:
        with self._lock:
            self.poison.append(body)

    def poison_count(self) -> int:
        with self._lock:
            return len(self.poison)

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)


def _queue_errors(what: str, err: Exception) -> Exception:
    if isinstance(err, ServiceRequestError | ServiceResponseError):
        return TransientError(f"Queue Storage {what}: connection failed", service="queues")
    if isinstance(err, HttpResponseError):
        status = err.status_code
        if status is not None and (status == 429 or status >= 500):
            return TransientError(f"Queue Storage {what}: status {status}", service="queues")
        return ApiError(f"Queue Storage {what} failed", service="queues", status=status)
    return err


class AzureJobQueue:
    """A job queue on Azure Queue Storage; the queue and its poison queue are created on first use."""

    def __init__(self, client: QueueClient, poison: QueueClient) -> None:
        self.name = client.queue_name
        self._client = client
        self._poison = poison
        self._created = False
        self._lock = threading.Lock()

    @classmethod
    def from_connection_string(cls, connection_string: str, name: str) -> AzureJobQueue:
        def make(queue: str) -> QueueClient:
            return QueueClient.from_connection_string(
                connection_string,
                queue,
                message_encode_policy=TextBase64EncodePolicy(),
                message_decode_policy=TextBase64DecodePolicy(),
            )

        return cls(make(name), make(poison_name(name)))

    @classmethod
    def from_endpoint(cls, endpoint: str, credential: TokenCredential, name: str) -> AzureJobQueue:
        def make(queue: str) -> QueueClient:
            return QueueClient(
                endpoint,
                queue,
                credential=credential,
                message_encode_policy=TextBase64EncodePolicy(),
                message_decode_policy=TextBase64DecodePolicy(),
            )

        return cls(make(name), make(poison_name(name)))

    def _ensure(self) -> None:
        with self._lock:
            if self._created:
                return
            for client in (self._client, self._poison):
                try:
                    client.create_queue()
                except ResourceExistsError:
                    pass
                except Exception as err:
                    raise _queue_errors("create queue", err) from err
            self._created = True

    def send(self, body: str, *, delay_seconds: int = 0) -> None:
        self._ensure()
        try:
            self._client.send_message(body, visibility_timeout=min(delay_seconds, MAX_VISIBILITY_DELAY) or None)
        except Exception as err:
            raise _queue_errors("send", err) from err

    def receive(self, *, max_messages: int, visibility_timeout: int) -> list[ReceivedMessage]:
        self._ensure()
        try:
            messages = self._client.receive_messages(
                max_messages=max_messages, messages_per_page=max_messages, visibility_timeout=visibility_timeout
            )
            return [
                ReceivedMessage(m.id, str(m.content), int(m.dequeue_count or 0), str(m.pop_receipt)) for m in messages
            ]
        except Exception as err:
            raise _queue_errors("receive", err) from err

    def delete(self, message: ReceivedMessage) -> None:
        try:
            self._client.delete_message(message.id, message.pop_receipt)
        except ResourceNotFoundError:
            pass  # deleted already, or redelivered since (a new pop receipt)
        except Exception as err:
            raise _queue_errors("delete", err) from err

    def send_poison(self, body: str) -> None:
        self._ensure()
        try:
            self._poison.send_message(body)
        except Exception as err:
            raise _queue_errors("send to the poison queue", err) from err

    def poison_count(self) -> int:
        try:
            return int(self._poison.get_queue_properties().approximate_message_count or 0)
        except ResourceNotFoundError:
            return 0
        except Exception as err:
            raise _queue_errors("poison queue length", err) from err
