"""The status view as a few lines for a terminal (``python -m sync_core status``): the headline,
the last cycle, totals, the newest open failures with reason, direction, next retry and key (what
``failures retry|dismiss`` take), and the newest operator actions. Ids, field names and reasons
only, never person values (see ``status.view``)."""

from __future__ import annotations

from sync_core.status.html import DASH, fmt_count, fmt_prune, fmt_total, fmt_when
from sync_core.status.models import Status

TEXT_FAILURES = 10  # failures listed, newest first
TEXT_ACTIONS = 5  # operator actions listed, newest first


def render_text(status: Status) -> str:
    """A few lines for a terminal."""
    lines = [f"Sync status: {status.health.headline}  (as of {fmt_when(status.generated_at)})"]
    lines += [f"  - {detail}" for detail in status.health.details]
    if status.cycles:
        last = status.cycles[0]
        seconds = DASH if last.seconds is None else f"{last.seconds:.1f} s"
        lines.append(
            f"Last cycle: {fmt_when(last.started_at)}, {last.outcome}, {seconds}; "
            f"records Marketo→Dynamics {fmt_count(last.written.dynamics)}, "
            f"Dynamics→Marketo {fmt_count(last.written.marketo)}; "
            f"API calls Marketo {fmt_count(last.api_calls.marketo)}, Dataverse {fmt_count(last.api_calls.dataverse)}"
        )
    else:
        lines.append("Last cycle: none yet")
    lines.append(f"Backlog: {fmt_count(status.backlog.total) if status.backlog.known else 'unknown'}")
    totals = status.totals
    lines.append(f"Failures: {fmt_total(totals.failures_open)} open, {fmt_total(totals.failures_due)} due for retry")
    for failure in status.failures[:TEXT_FAILURES]:
        retry = "due now" if failure.due else f"next retry {fmt_when(failure.next_retry_at)}"
        ids = ", ".join(
            part
            for part in (
                f"Marketo {failure.marketo_id}" if failure.marketo_id is not None else "",
                f"{failure.entity} {failure.dataverse_id}" if failure.dataverse_id else "",
            )
            if part
        )
        code = f" [{failure.code}]" if failure.code else ""
        lines.append(
            f"  - {failure.direction.replace('_', ' ')} {ids}{code}: {'; '.join(failure.reasons) or DASH} "
            f"({failure.attempts} attempt{'s' if failure.attempts != 1 else ''}, {retry}; key {failure.key})"
        )
    if len(status.failures) > TEXT_FAILURES:
        lines.append(f"  - … {len(status.failures) - TEXT_FAILURES} more in JSON or on the page")
    lines.append(f"Collisions: {fmt_total(totals.collisions_24h)} in the last 24 h")
    drift = f"{len(status.drift.items)} item(s)" if status.drift.known else "not checked yet"
    lines.append(f"Field-map drift: {drift}")
    if totals.links is not None:
        lines.append("Links: " + ", ".join(f"{entity} {count:,}" for entity, count in totals.links.items()))
    for action in status.actions[:TEXT_ACTIONS]:
        why = f" ({action.reason})" if action.reason else ""
        lines.append(
            f"Action: {fmt_when(action.at)} {action.action} {action.target} by {action.by} via {action.via}: "
            f"{action.outcome}{why}"
        )
    if status.state is not None:
        lines.append("State: " + ", ".join(f"{name} {fmt_total(total)}" for name, total in status.state.tables.items()))
        lines.append(f"Last prune: {fmt_prune(status.state.last_prune)}")
    return "\n".join(lines) + "\n"
