"""Interim demo: the Table Storage state store on a real Azurite, step by step.

Each step prints what it does and what came of it; a step whose outcome is wrong is marked and
makes the exit code 1. Azurite runs in memory on a free loopback port and is stopped at the end.
Only ids and counts are printed, never person data.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sandbox.azurite import AzuriteNotInstalled, run_azurite
from sync_core.errors import LeaseHeldError, StateConflictError
from sync_core.state import (
    Collision,
    Cursor,
    Direction,
    EntityType,
    Link,
    RecordFailure,
    StoreCounters,
    TableStateStore,
    retry_delay,
)


class Story:
    def __init__(self) -> None:
        self.wrong = 0
        self.step = 0

    def check(self, what: str, ok: bool, outcome: str) -> None:
        self.step += 1
        mark = "ok" if ok else "WRONG"
        print(f"{self.step:2d}. {what:<58} {mark:>5}  {outcome}")
        self.wrong += not ok

    def refused(self, what: str, action: Callable[[], Any], error: type[Exception]) -> None:
        try:
            action()
        except error as err:
            self.check(what, True, f"refused: {type(err).__name__}")
        else:
            self.check(what, False, f"accepted, but {error.__name__} was expected")


def run(store: TableStateStore, story: Story) -> None:
    now = datetime.now(UTC)

    lease = store.acquire_lease("cycle-1", now=now, duration=timedelta(minutes=5))
    story.check("cycle-1 takes the cycle lease", lease.owner == "cycle-1", f"held until {lease.expires_at:%H:%M:%S}")
    story.refused(
        "cycle-2 asks for it while it is held",
        lambda: store.acquire_lease("cycle-2", now=now + timedelta(minutes=1), duration=timedelta(minutes=5)),
        LeaseHeldError,
    )

    first = store.put_cursor(Cursor(name="marketo", value="paging-token-1"))
    read = store.get_cursor("marketo")
    story.check(
        "write and read back the Marketo cursor",
        read is not None and read.value == "paging-token-1",
        f"value {read.value if read else None!r}",
    )
    current = store.put_cursor(first.model_copy(update={"value": "paging-token-2"}))
    story.refused(
        "a write with the stale ETag",
        lambda: store.put_cursor(first.model_copy(update={"value": "paging-token-lost"})),
        StateConflictError,
    )
    read = store.get_cursor("marketo")
    story.check(
        "the stored cursor is the newer one",
        read is not None and read.value == "paging-token-2" and read.etag == current.etag,
        f"value {read.value if read else None!r}",
    )

    links = [
        Link(
            marketo_id=marketo_id,
            entity=EntityType.LEAD,
            dataverse_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"lead/{marketo_id}")),
            baseline={"email": f"person{marketo_id}@example.com", "lastName": f"Person {marketo_id}"},
            updated_at=now,
        )
        for marketo_id in range(1001, 1251)
    ]
    store.counters = StoreCounters()
    store.upsert_links(links)
    transactions = store.counters.transactions
    story.check(
        "write 250 links (2 rows each) in batches",
        transactions >= 5 and store.counters.operations == 500,
        f"{store.counters.operations} rows in {transactions} transactions",
    )
    wanted = links[122]
    by_marketo = store.get_links_by_marketo_ids([wanted.marketo_id]).get(wanted.marketo_id)
    story.check("find a link by its Marketo id", by_marketo == wanted, f"marketo {wanted.marketo_id} -> lead found")
    by_dataverse = store.get_links_by_dataverse_ids(EntityType.LEAD, [wanted.dataverse_id]).get(wanted.dataverse_id)
    story.check(
        "find the same link by its Dataverse id",
        by_dataverse == wanted,
        f"lead {wanted.dataverse_id[:8]}... -> marketo {by_dataverse.marketo_id if by_dataverse else None}",
    )

    store.add_collisions(
        [
            Collision(
                id=str(uuid.uuid4()),
                at=now,
                run_id="demo-run",
                marketo_id=wanted.marketo_id,
                entity=EntityType.LEAD,
                dataverse_id=wanted.dataverse_id,
                field="phone",
                marketo_value="+1 555 0100",
                dynamics_value="+1 555 0199",
                winner="marketo",
                rule="lead: Marketo wins",
            )
        ]
    )
    collisions = store.list_collisions()
    story.check(
        "record a collision and list it",
        [collision.field for collision in collisions] == ["phone"],
        f"{len(collisions)} collision(s), winner {collisions[0].winner if collisions else None}",
    )
    store.upsert_failures(
        [
            RecordFailure(
                key=f"to_dynamics:lead:{wanted.marketo_id}",
                direction=Direction.TO_DYNAMICS,
                entity=EntityType.LEAD,
                marketo_id=wanted.marketo_id,
                reasons=["emailaddress1: not a valid email address"],
                code="validation",
                fields=["email"],
                first_failed_at=now,
                last_failed_at=now,
                next_retry_at=now + retry_delay(1),
            )
        ]
    )
    listed = store.list_failures()
    due_later = store.due_failures(now=now + retry_delay(1))
    story.check(
        "record a failure; list it; it is due after its retry delay",
        len(listed) == 1 and len(due_later) == 1 and store.due_failures(now=now) == [],
        f"{len(listed)} open, retry in {retry_delay(1)}",
    )

    claim = store.try_claim(f"sync-person:{wanted.marketo_id}", owner="webhook-1", now=now)
    story.check("webhook-1 claims the person", claim is not None, "taken" if claim else "refused")
    again = store.try_claim(f"sync-person:{wanted.marketo_id}", owner="webhook-2", now=now)
    story.check("webhook-2 claims the same person", again is None, "refused" if again is None else "taken twice")

    store.release_lease(lease)
    after = store.acquire_lease("cycle-2", now=now + timedelta(minutes=1), duration=timedelta(minutes=5))
    story.check("cycle-1 releases the lease; cycle-2 takes it", after.owner == "cycle-2", "taken")


def main() -> int:
    story = Story()
    try:
        with run_azurite() as conn:
            endpoint = conn.split("TableEndpoint=")[1].rstrip(";")
            print(f"Azurite (Table service, in memory) at {endpoint}\n")
            store = TableStateStore.from_connection_string(conn, prefix="demo")
            run(store, story)
    except AzuriteNotInstalled as err:
        print(f"cannot run the demo: {err}", file=sys.stderr)
        return 2
    print(f"\nAzurite stopped. {story.step - story.wrong} of {story.step} steps as expected.")
    return 1 if story.wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
