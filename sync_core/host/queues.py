"""The local host's queue triggers: poll a Storage queue and call the function per message, the way
the Functions host does (Azurite's queue service locally).

For each ``queueTrigger`` binding: the queue name (``%SETTING%`` resolved, with the settings'
defaults), and the connection from the binding's ``connection`` setting (a connection string;
identity-based ``__queueServiceUri`` connections are for Azure and are not polled here). Messages
are fetched up to ``batchSize`` at a time, hidden while their function runs, deleted when it
returns; a function that raises leaves its message to come back after the visibility timeout, and
a message delivered ``maxDequeueCount`` times is moved to ``{queue}-poison`` instead of being run
again — the host.json ``extensions.queues`` values, read from the app's host.json. It owns no
sync logic: the function does the work.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func

from sync_core.settings import DEFAULT_JOBS_QUEUE
from sync_core.state.queue import AzureJobQueue, JobQueue, ReceivedMessage

log = logging.getLogger(__name__)

_SETTING = re.compile(r"^%([^%]+)%$")
_DEFAULTS = {"SYNC_JOBS_QUEUE": DEFAULT_JOBS_QUEUE}
VISIBILITY_SECONDS = 60  # a message is hidden this long while its function runs


@dataclass(frozen=True)
class QueueOptions:
    """The host.json ``extensions.queues`` values the local host honours."""

    batch_size: int = 16
    max_dequeue_count: int = 5
    max_polling_interval: float = 60.0

    @classmethod
    def from_host_json(cls, path: Path) -> QueueOptions:
        try:
            queues = json.loads(path.read_text(encoding="utf-8")).get("extensions", {}).get("queues", {})
        except (OSError, ValueError):
            return cls()
        interval = str(queues.get("maxPollingInterval", "00:01:00"))
        hours, minutes, seconds = (float(part) for part in interval.split(":"))
        return cls(
            batch_size=int(queues.get("batchSize", 16)),
            max_dequeue_count=int(queues.get("maxDequeueCount", 5)),
            max_polling_interval=hours * 3600 + minutes * 60 + seconds,
        )


@dataclass(frozen=True)
class QueueTrigger:
    name: str
    queue: JobQueue
    function: Callable[..., Any]


def discover_queues(
    entries: list[tuple[str, dict[str, Any], Callable[..., Any]]], environ: Mapping[str, str]
) -> list[QueueTrigger]:
    """The queue triggers whose connection resolves to a connection string; the others are logged."""
    found: list[QueueTrigger] = []
    for name, trigger, function in entries:
        if trigger["type"] != "queueTrigger":
            continue
        queue_name = str(trigger["queueName"])
        match = _SETTING.match(queue_name)
        if match:
            queue_name = environ.get(match.group(1)) or _DEFAULTS.get(match.group(1), "")
        connection = environ.get(trigger.get("connection") or "AzureWebJobsStorage", "")
        if not queue_name or ("QueueEndpoint=" not in connection and "UseDevelopmentStorage" not in connection):
            log.warning("queue trigger %s not polled: its connection setting has no queue connection string", name)
            continue
        found.append(QueueTrigger(name, AzureJobQueue.from_connection_string(connection, queue_name), function))
    return found


class QueuePoller:
    """Polls one queue trigger's queue until ``stopping`` is set; functions run on ``executor``."""

    def __init__(
        self,
        trigger: QueueTrigger,
        options: QueueOptions,
        executor: Executor,
        stopping: threading.Event,
        call: Callable[..., Any],
    ) -> None:
        self.trigger = trigger
        self.options = options
        self._executor = executor
        self._stopping = stopping
        self._call = call

    def run(self) -> None:
        idle = 0.1
        while not self._stopping.is_set():
            try:
                messages = self.trigger.queue.receive(
                    max_messages=self.options.batch_size, visibility_timeout=VISIBILITY_SECONDS
                )
            except Exception:
                log.exception("queue trigger %s: receive failed", self.trigger.name)
                messages = []
            if not messages:
                self._stopping.wait(idle)
                idle = min(idle * 2, self.options.max_polling_interval)
                continue
            idle = 0.1
            for future in [self._executor.submit(self._handle, message) for message in messages]:
                future.result()

    def _handle(self, message: ReceivedMessage) -> None:
        queue = self.trigger.queue
        if message.dequeue_count > self.options.max_dequeue_count:
            queue.send_poison(message.body)
            queue.delete(message)
            log.error("queue trigger %s: message %s moved to the poison queue", self.trigger.name, message.id)
            return
        request = func.QueueMessage(id=message.id, body=message.body.encode(), pop_receipt=message.pop_receipt)
        try:
            self._call(self.trigger.function, request)
        except Exception:
            log.exception(
                "queue trigger %s: message %s failed (delivery %d)",
                self.trigger.name,
                message.id,
                message.dequeue_count,
            )
            if message.dequeue_count >= self.options.max_dequeue_count:
                queue.send_poison(message.body)
                queue.delete(message)
            return
        queue.delete(message)
