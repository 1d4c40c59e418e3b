"""A cycle's run report from its tally and the counters' deltas (``core.report.CycleReport``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sync_core.core.models import StoreCounters
from sync_core.core.report import ApiCalls, CycleReport, DriftEntry, Left, PerSide, ServiceCalls, TableOps
from sync_core.core.validate import DriftItem
from sync_core.cycle.ledger import Tally


def api_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[ApiCalls, dict[str, ServiceCalls], int]:
    calls: dict[str, int] = {}
    tokens = 0
    by_operation: dict[str, int] = {}
    per_service: dict[str, ServiceCalls] = {}
    for service, now in after.items():
        then = before.get(service, {})
        calls[service] = now["calls"] - then.get("calls", 0)
        tokens += now["token_calls"] - then.get("token_calls", 0)
        per_service[service] = ServiceCalls(
            retries=now["retries"] - then.get("retries", 0),
            throttled=now["throttled"] - then.get("throttled", 0),
            token_calls=now["token_calls"] - then.get("token_calls", 0),
        )
        for operation, count in now["by_operation"].items():
            delta = count - then.get("by_operation", {}).get(operation, 0)
            if delta:
                by_operation[f"{service}.{operation}"] = delta
    api_calls = ApiCalls(
        marketo=calls.get("marketo", 0),
        dataverse=calls.get("dataverse", 0),
        by_operation=dict(sorted(by_operation.items())),
    )
    return api_calls, per_service, tokens


def store_delta(before: StoreCounters, after: StoreCounters) -> TableOps:
    return TableOps(
        reads=after.reads - before.reads,
        writes=after.writes - before.writes,
        transactions=after.transactions - before.transactions,
        operations=after.operations - before.operations,
    )


def build_report(
    tally: Tally,
    backlog: dict[str, int] | None,
    drift: list[DriftItem] | None,
    *,
    api: tuple[ApiCalls, dict[str, ServiceCalls], int],
    table: TableOps,
    seconds: float,
    cpu_seconds: float,
    error: str | None,
    bulk_fallbacks: Mapping[str, str] | None = None,
    left: Left | None = None,
) -> CycleReport:
    api_calls, per_service, token_calls = api
    return CycleReport(
        pulled=PerSide(marketo=tally.pulled_marketo, dynamics=tally.pulled_dynamics),
        written=PerSide(marketo=tally.written_marketo, dynamics=tally.written_dynamics),
        created=tally.created,
        linked=tally.linked,
        unlinked=tally.unlinked,
        flagged_deleted=tally.flagged_deleted,
        deleted_in_dynamics=tally.deleted_in_dynamics,
        qualified=tally.qualified,
        filtered=PerSide(marketo=tally.filtered_marketo, dynamics=tally.filtered_dynamics),
        collisions=tally.collisions,
        failures=tally.failures,
        new_failures=tally.new_failures,
        resolved=tally.resolved,
        retried=tally.retried,
        activities=tally.activities,
        full_reads=tally.full_reads,
        accounts=tally.accounts,
        account_contacts=tally.account_contacts,
        one_way_edits=tally.one_way_edits,
        api_calls=api_calls,
        api=per_service,
        token_calls=token_calls,
        table_transactions=(table.transactions or 0) + (table.writes or 0),
        table=table,
        seconds=round(seconds, 3),
        cpu_seconds=round(cpu_seconds, 3),
        backlog=backlog or None,
        drift=None if drift is None else [DriftEntry.model_validate(item.as_report()) for item in drift],
        bulk_fallbacks=dict(bulk_fallbacks or {}) or None,
        left=left,
        error=error,
    )
