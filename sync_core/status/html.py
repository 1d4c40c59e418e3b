"""The status view as one self-contained HTML page (and the small formatters it shares with the
text rendering in ``status``).

Owns layout only: a health headline, tiles with the totals, two inline SVG bar charts (records
each way and API calls per cycle), and tables of cycles, open failures, collisions and drift.
No JavaScript, no external assets (the page is served with a CSP that forbids both), inline
CSS. Every value that comes from the store passes through ``_e`` (HTML escaping, quotes
included) exactly once, where it is put into markup. It must not read the clock or the store:
everything comes from the ``Status`` it is given.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

if TYPE_CHECKING:
    from sync_core.status.models import Cycle, FailureView, LastPrune, Status, Total


@dataclass(frozen=True)
class Controls:
    """The page's buttons: forms that POST to ``/api/status/actions/{action}`` (behind the admin key,
    ``function_app.status_action``). ``code`` is the key the page was opened with (``?code=``), carried
    into the forms' URLs because the Functions host reads a key from the URL or a header only."""

    code: str | None = None

    def query(self, **params: str) -> str:
        pairs = {**params, **({"code": self.code} if self.code else {})}
        return f"?{urlencode(pairs)}" if pairs else ""

    def action_url(self, action: str, *, base: str = "status/actions/") -> str:
        return f"{base}{action}{self.query()}"

    def hidden_code(self) -> str:
        return f'<input type="hidden" name="code" value="{_e(self.code)}">' if self.code else ""


DASH = "\u2013"  # an en dash: "not known" in a cell
# One colour per system on every chart, so "purple = Marketo" is learnt once: a chart's series is
# the system it is about (records written to it, calls made to it) and takes its colour from here,
# never its own; every chart stacks and lists the systems in this order too.
SERIES_COLOURS = {"marketo": "#6d4fc2", "dynamics": "#0f6cbd"}
_FAILED = "#c4314b"


def fmt_count(value: int | None) -> str:
    return DASH if value is None else f"{value:,}"


def fmt_total(total: Total) -> str:
    return f"{total.count:,}+" if total.at_least else f"{total.count:,}"


def fmt_prune(prune: LastPrune | None) -> str:
    if prune is None:
        return "none yet (nothing has expired)"
    removed = ", ".join(f"{count:,} {name}" for name, count in prune.removed.items() if count) or "nothing"
    return f"{fmt_when(prune.at)}, removed {removed}" + ("; more to follow" if prune.more else "")


def fmt_when(value: datetime | None) -> str:
    return DASH if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _short_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%H:%M")


def _ago(now: datetime, then: datetime | None) -> str:
    if then is None:
        return DASH
    seconds = int((now - then).total_seconds())
    if seconds < 0:
        return "in the future"
    if seconds < 90:
        return f"{seconds} s ago"
    if seconds < 90 * 60:
        return f"{seconds // 60} min ago"
    if seconds < 48 * 3600:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {int(seconds % 60)} s"


# -- charts --------------------------------------------------------------------------------------

_CHART_W, _CHART_H = 560, 190
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 48, 12, 14, 34


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times 10^k at or above ``value`` (at least 1), for a readable axis."""
    if value <= 1:
        return 1
    magnitude: int = 10 ** (len(str(value)) - 1)  # 10^floor(log10(value)), in whole numbers
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _bar_chart(
    chart_id: str,
    title: str,
    cycles: Sequence[Cycle],
    series_by_system: Mapping[str, tuple[str, Callable[[Cycle], int | None]]],
) -> str:
    """Stacked bars, one per cycle, oldest on the left, one segment per system (``SERIES_COLOURS``:
    its colour and place); each segment carries a ``<title>`` tooltip. A cycle that failed gets a
    red mark under its bar."""
    series = [
        (system, label, SERIES_COLOURS[system], get)
        for system in SERIES_COLOURS
        if system in series_by_system
        for label, get in [series_by_system[system]]
    ]
    ordered = list(reversed(cycles))
    plot_w = _CHART_W - _PAD_L - _PAD_R
    plot_h = _CHART_H - _PAD_T - _PAD_B
    totals = [sum(get(cycle) or 0 for _, _, _, get in series) for cycle in ordered]
    top = _nice_ceiling(max(totals, default=0))
    slot = plot_w / max(len(ordered), 1)
    bar_w = max(2.0, min(28.0, slot * 0.7))
    parts = [
        f'<svg class="chart" id="{_e(chart_id)}" viewBox="0 0 {_CHART_W} {_CHART_H}" role="img" '
        f'aria-label="{_e(title)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = _PAD_T + plot_h * (1 - fraction)
        tick = top * fraction
        label = f"{tick:,.0f}" if tick.is_integer() else f"{tick:,.1f}"
        parts.append(
            f'<line class="grid" x1="{_PAD_L}" x2="{_CHART_W - _PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(label)}</text>'
        )
    if not ordered:
        parts.append(
            f'<text class="empty" x="{_PAD_L + plot_w / 2:.1f}" y="{_PAD_T + plot_h / 2:.1f}" '
            'text-anchor="middle">no cycles yet</text>'
        )
    for index, cycle in enumerate(ordered):
        x = _PAD_L + slot * index + (slot - bar_w) / 2
        parts.append(f'<g class="cycle" data-run="{_e(cycle.run_id)}">')
        base = float(_PAD_T + plot_h)
        for system, label, colour, get in series:
            value = get(cycle)
            height = plot_h * (value or 0) / top
            base -= height
            tip = f"{_short_time(cycle.started_at)} UTC · {label}: {fmt_count(value)}"
            parts.append(
                f'<rect class="bar" data-series="{system}" x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" '
                f'height="{height:.1f}" fill="{colour}"><title>{_e(tip)}</title></rect>'
            )
        if cycle.failed:
            parts.append(
                f'<circle class="failed" cx="{x + bar_w / 2:.1f}" cy="{_PAD_T + plot_h + 7:.1f}" r="3.5" '
                f'fill="{_FAILED}"><title>{_e(f"{_short_time(cycle.started_at)} UTC · {cycle.outcome}")}</title>'
                "</circle>"
            )
        parts.append("</g>")
    if ordered:
        marks = {0, len(ordered) - 1} | ({len(ordered) // 2} if len(ordered) > 4 else set())
        for index in sorted(marks):
            x = _PAD_L + slot * index + slot / 2
            parts.append(
                f'<text class="axis" x="{x:.1f}" y="{_CHART_H - 8}" text-anchor="middle">'
                f"{_e(_short_time(ordered[index].started_at))}</text>"
            )
    parts.append(
        f'<line class="baseline" x1="{_PAD_L}" x2="{_CHART_W - _PAD_R}" '
        f'y1="{_PAD_T + plot_h}" y2="{_PAD_T + plot_h}"/></svg>'
    )
    legend = (
        "".join(
            f'<span data-series="{system}"><i style="background:{colour}"></i>{_e(label)}</span>'
            for system, label, colour, _ in series
        )
        + f'<span><i class="dot" style="background:{_FAILED}"></i>failed cycle</span>'
    )
    return (
        f'<figure class="chart-box"><figcaption>{_e(title)}</figcaption>{"".join(parts)}'
        f'<div class="legend">{legend}</div></figure>'
    )


# -- page sections -------------------------------------------------------------------------------


def _tile(label: str, value: str, note: str, *, tone: str = "") -> str:
    return (
        f'<div class="tile {tone}"><div class="label">{_e(label)}</div>'
        f'<div class="value">{_e(value)}</div><div class="note">{_e(note)}</div></div>'
    )


def _tiles(status: Status) -> str:
    now = status.generated_at
    totals = status.totals
    last = status.cycles[0] if status.cycles else None
    last_note = (
        DASH if last is None else f"{last.outcome} · {_duration(last.seconds)} · {_short_time(last.started_at)} UTC"
    )
    backlog = status.backlog
    if backlog.known:
        parts = ", ".join(f"{name} {count:,}" for name, count in backlog.parts.items())
        backlog_value, backlog_note = fmt_count(backlog.total), parts or f"estimated {_ago(now, backlog.as_of)}"
    else:
        backlog_value, backlog_note = "unknown", "no cycle has estimated it"
    drift_value = str(len(status.drift.items)) if status.drift.known else DASH
    tiles = [
        _tile(
            "Last cycle",
            _ago(now, last.started_at) if last else "never",
            last_note,
            tone="bad" if last is not None and last.failed else "",
        ),
        _tile("Backlog", backlog_value, backlog_note),
        _tile(
            "Open failures",
            fmt_total(totals.failures_open),
            f"{fmt_total(totals.failures_due)} due for retry",
            tone="warn" if totals.failures_open.count else "",
        ),
        _tile("Collisions, 24 h", fmt_total(totals.collisions_24h), "settled by the collision rules"),
        _tile(
            "Field-map drift",
            drift_value,
            "in the last check" if status.drift.known else "not checked yet",
            tone="warn" if status.drift.items else "",
        ),
    ]
    if totals.links is not None:
        tiles.append(
            _tile("Linked", f"{sum(totals.links.values()):,}", ", ".join(f"{k} {v:,}" for k, v in totals.links.items()))
        )
    return f'<section class="tiles">{"".join(tiles)}</section>'


def _state_table(status: Status) -> str:
    state = status.state
    if state is None:
        return ""
    head = "<tr><th>Table</th><th>Records</th><th>Kept for</th></tr>"

    def kept(name: str) -> str:
        days = state.retention_days.get(name)
        return f"{days} days" if days is not None else _KEPT.get(name, DASH)

    rows = [
        f'<tr class="state-row"><td>{_e(name)}</td><td>{_e(fmt_total(total))}</td><td>{_e(kept(name))}</td></tr>'
        for name, total in state.tables.items()
    ]
    table = _table("state", head, rows, 3, "No tables.")
    return f'<h2>What the sync keeps</h2>{table}<p class="more">Last prune: {_e(fmt_prune(state.last_prune))}.</p>'


_KEPT = {
    "links": "while linked",
    "failures": "until resolved",
    "state": "cursors, lease",
}


def initial_sync_line(status: Status) -> str:
    """``Initial sync <job>: applying, 45.0 % (150/333 chunks), about 12m left; linked 1,234, …``."""
    job = status.initial_sync
    if job is None:
        return ""
    left = f", about {_duration(job.eta_seconds)} left" if job.status == "applying" else ""
    done = ", ".join(f"{name.replace('_', ' ')} {count:,}" for name, count in job.outcome.items() if count)
    where = ""
    if job.queue_job is not None:
        where = f" on the job queue ({job.running} running)" if job.status == "applying" else " on the job queue"
    return (
        f"Initial sync {job.job_id}: {job.status}{where}, {job.percent:.1f} % "
        f"({job.chunks_done}/{job.chunks} chunks){left}" + (f"; {done}" if done else "")
    )


def _table(table_id: str, head: str, rows: Sequence[str], columns: int, empty: str) -> str:
    body = "".join(rows) or f'<tr><td class="empty" colspan="{columns}">{_e(empty)}</td></tr>'
    return f'<table id="{_e(table_id)}"><thead>{head}</thead><tbody>{body}</tbody></table>'


def _cycles_table(status: Status) -> str:
    head = (
        '<tr><th rowspan="2">Started (UTC)</th><th rowspan="2">Outcome</th><th rowspan="2">Duration</th>'
        '<th colspan="2" class="group">Pulled from</th><th colspan="2" class="group">Written</th>'
        '<th rowspan="2">Created</th><th rowspan="2">Collisions</th><th rowspan="2">Failures</th>'
        '<th colspan="2" class="group">Filtered out by</th>'
        '<th colspan="2" class="group">API calls</th><th rowspan="2">Run id</th></tr>'
        "<tr><th>Marketo</th><th>Dynamics</th><th>Marketo→Dyn.</th><th>Dyn.→Marketo</th>"
        "<th>Dynamics</th><th>Marketo</th><th>Marketo</th><th>Dataverse</th></tr>"
    )
    rows = []
    for cycle in status.cycles:
        tone = "bad" if cycle.failed else ("warn" if cycle.outcome == "partial" else "good")
        cells = [
            fmt_when(cycle.started_at).removesuffix(" UTC"),
            None,
            _duration(cycle.seconds),
            fmt_count(cycle.pulled.marketo),
            fmt_count(cycle.pulled.dynamics),
            fmt_count(cycle.written.dynamics),
            fmt_count(cycle.written.marketo),
            fmt_count(cycle.created),
            fmt_count(cycle.collisions),
            fmt_count(cycle.failures),
            fmt_count(cycle.filtered.dynamics),
            fmt_count(cycle.filtered.marketo),
            fmt_count(cycle.api_calls.marketo),
            fmt_count(cycle.api_calls.dataverse),
        ]
        tds = "".join(
            f'<td><span class="pill {tone}"{_reason_title(cycle.reason)}>{_e(cycle.outcome)}</span></td>'
            if cell is None
            else f'<td class="{"num" if index > 1 else ""}">{_e(cell)}</td>'
            for index, cell in enumerate(cells)
        )
        rows.append(
            f'<tr class="cycle-row{" failed" if cycle.failed else ""}">{tds}<td class="id">{_e(cycle.run_id)}</td></tr>'
        )
    return _table("cycles", head, rows, 15, "No cycle has run yet.")


def _button_form(controls: Controls, action: str, label: str, fields: Mapping[str, object], css: str) -> str:
    hidden = "".join(f'<input type="hidden" name="{_e(name)}" value="{_e(value)}">' for name, value in fields.items())
    return (
        f'<form method="post" action="{_e(controls.action_url(action))}" class="act">{hidden}'
        f'<button type="submit" class="{_e(css)}">{_e(label)}</button></form>'
    )


def _failure_actions(controls: Controls | None, failure: FailureView) -> str:
    if controls is None:
        return ""
    buttons = _button_form(controls, "retry", "Retry now", {"key": failure.key}, "retry")
    buttons += _button_form(controls, "dismiss", "Dismiss…", {"key": failure.key}, "dismiss")
    if failure.marketo_id is not None:
        buttons += _button_form(controls, "resync", "Resync", {"marketo_id": failure.marketo_id}, "resync")
    return f'<td class="acts">{buttons}</td>'


def _failures_table(status: Status, controls: Controls | None = None) -> str:
    head = (
        "<tr><th>Record</th><th>Direction</th><th>Reasons</th><th>Fields</th><th>Code</th>"
        "<th>Attempts</th><th>Last failed (UTC)</th><th>Next retry (UTC)</th>"
        + ("<th>Act</th>" if controls is not None else "")
        + "</tr>"
    )
    rows = []
    for failure in status.failures:
        ids = " · ".join(
            part
            for part in (
                f"Marketo {_e(failure.marketo_id)}" if failure.marketo_id is not None else "",
                f"{_e(failure.entity)} {_e(failure.dataverse_id)}" if failure.dataverse_id else _e(failure.entity),
            )
            if part
        )
        reasons = "".join(f"<li>{_e(reason)}</li>" for reason in failure.reasons) or f"<li>{DASH}</li>"
        direction = "Marketo → Dynamics" if failure.direction == "to_dynamics" else "Dynamics → Marketo"
        retry = fmt_when(failure.next_retry_at).removesuffix(" UTC") + (" · due" if failure.due else "")
        rows.append(
            f'<tr class="failure-row"><td class="id">{ids}<div class="key">{_e(failure.key)}</div></td>'
            f"<td>{_e(direction)}</td>"
            f'<td><ul class="reasons">{reasons}</ul></td><td>{_e(", ".join(failure.fields) or DASH)}</td>'
            f"<td>{_e(failure.code or DASH)}</td><td class='num'>{_e(failure.attempts)}</td>"
            f"<td>{_e(fmt_when(failure.last_failed_at).removesuffix(' UTC'))}</td>"
            f'<td class="{"due" if failure.due else ""}">{_e(retry)}</td>'
            f"{_failure_actions(controls, failure)}</tr>"
        )
    more = status.totals.failures_open.count - len(status.failures)
    table = _table("failures", head, rows, 8 if controls is None else 9, "No open failures.")
    tools = ""
    if controls is not None:
        tools = (
            '<div class="tools">'
            + _button_form(controls, "retry", "Retry all open failures now", {"all": "1"}, "retry-all")
            + _button_form(controls, "export", "Export failures (CSV)", {"kind": "failures"}, "export-failures")
            + "</div>"
        )
    return tools + table + (f'<p class="more">…and {more:,} more (newest shown).</p>' if more > 0 else "")


def _collisions_table(status: Status, controls: Controls | None = None) -> str:
    head = "<tr><th>Time (UTC)</th><th>Record</th><th>Field</th><th>Winner</th><th>Rule</th><th>Run id</th></tr>"
    rows = [
        f'<tr class="collision-row"><td>{_e(fmt_when(c.at).removesuffix(" UTC"))}</td>'
        f'<td class="id">Marketo {_e(c.marketo_id)} · {_e(c.entity)} {_e(c.dataverse_id)}</td>'
        f"<td><code>{_e(c.field)}</code></td><td>{_e(c.winner)}</td><td>{_e(c.rule)}</td>"
        f'<td class="id">{_e(c.run_id)}</td></tr>'
        for c in status.collisions
    ]
    table = _table("collisions", head, rows, 6, "No collisions recorded.")
    if controls is None:
        return table
    export = _button_form(controls, "export", "Export collisions (CSV)", {"kind": "collisions"}, "export-collisions")
    return f'<div class="tools">{export}</div>{table}'


def _ms(value: float | None) -> str:
    return DASH if value is None else f"{value:,.0f} ms"


def _webhooks_table(status: Status) -> str:
    head = (
        "<tr><th>Webhook</th><th>Calls</th><th>Outcomes</th><th>p50</th><th>p90</th><th>p99</th>"
        "<th>Mean</th><th>Slowest</th></tr>"
    )
    rows = [
        f'<tr class="webhook-row"><td><code>/api/marketo/{_e(w.name)}</code></td><td class="num">{w.calls:,}</td>'
        f"<td>{_e(', '.join(f'{k} {v:,}' for k, v in w.outcomes.items()) or DASH)}</td>"
        + "".join(f'<td class="num">{_e(_ms(v))}</td>' for v in (w.p50_ms, w.p90_ms, w.p99_ms, w.mean_ms, w.max_ms))
        + "</tr>"
        for w in status.webhooks
    ]
    return _table("webhooks", head, rows, 8, "No webhook statistics.")


def _drift_table(status: Status) -> str:
    head = "<tr><th>Missing on</th><th>Entity</th><th>Field</th><th>Field-map keys skipped</th><th>Detail</th></tr>"
    rows = [
        f'<tr class="drift-row"><td>{_e(d.side or DASH)}</td><td>{_e(d.entity or DASH)}</td>'
        f"<td><code>{_e(d.field or DASH)}</code></td><td>{_e(', '.join(d.keys) or DASH)}</td>"
        f"<td>{_e(d.detail or DASH)}</td></tr>"
        for d in status.drift.items
    ]
    empty = "The field map matches both schemas." if status.drift.known else "No cycle has checked the schemas yet."
    return _table("drift", head, rows, 5, empty)


def _actions_table(status: Status) -> str:
    head = (
        "<tr><th>Time (UTC)</th><th>Action</th><th>Target</th><th>Outcome</th><th>By</th><th>Via</th>"
        "<th>Reason</th><th>Result</th></tr>"
    )
    rows = [
        f'<tr class="action-row"><td>{_e(fmt_when(a.at).removesuffix(" UTC"))}</td><td>{_e(a.action)}</td>'
        f'<td class="id">{_e(a.target)}</td><td>{_e(a.outcome)}</td><td>{_e(a.by)}</td><td>{_e(a.via)}</td>'
        f"<td>{_e(a.reason or DASH)}</td><td>{_e(a.detail or DASH)}</td></tr>"
        for a in status.actions
    ]
    return _table("actions", head, rows, 8, "No operator action yet.")


_CHECK_TONE = {"pass": "good", "fail": "bad", "skip": "warn"}


def _checks_section(status: Status, controls: Controls | None) -> str:
    run = ""
    if controls is not None:
        run = (
            '<form method="get" action="status" class="act"><input type="hidden" name="checks" value="1">'
            f'{controls.hidden_code()}<button type="submit" class="run-checks">Run setup checks</button></form>'
        )
    checks = status.checks
    if checks is None:
        note = "Not run with this page (they call Marketo, Dataverse and Table Storage)."
        return f'<h2>Setup checks</h2><div class="tools">{run}</div><p class="more">{_e(note)}</p>'
    head = "<tr><th>Check</th><th>Result</th><th>Detail</th><th>Fix</th></tr>"
    rows = [
        f'<tr class="check-row {_e(check.status)}"><td>{_e(check.title)}</td>'
        f'<td><span class="pill {_CHECK_TONE.get(check.status, "warn")}">{_e(check.status.upper())}</span></td>'
        f"<td>{_e(check.detail)}</td><td>{_e(check.hint or DASH)}</td></tr>"
        for check in checks.checks
    ]
    verdict = "all checks passed" if checks.ok else f"{sum(c.status == 'fail' for c in checks.checks)} check(s) failed"
    return (
        f'<h2>Setup checks</h2><div class="tools">{run}</div>'
        f'<p class="more" id="checks-verdict">Run {_e(fmt_when(checks.ran_at))}: {_e(verdict)}.</p>'
        f"{_table('checks', head, rows, 4, 'No checks.')}"
    )


def _operate_section(controls: Controls | None) -> str:
    if controls is None:
        return ""
    entities = "".join(f'<option value="{e}">{e}</option>' for e in ("lead", "contact"))
    resync = (
        f'<form method="post" action="{_e(controls.action_url("resync"))}" class="act" id="resync-form">'
        '<label>Resync a person: Marketo id <input name="marketo_id" inputmode="numeric" pattern="[0-9]+" size="10">'
        '</label> <label>or Dynamics id <input name="dynamics_id" size="36"></label> '
        f'<select name="entity"><option value="">either table</option>{entities}</select> '
        '<button type="submit" class="resync">Resync</button></form>'
    )
    feeds = "".join(
        _button_form(controls, "reset-cursor", f"Reset {feed} cursor…", {"feed": feed}, f"reset-{feed}")
        for feed in ("marketo", "lead", "contact")
    )
    return (
        "<h2>Operate</h2>"
        f'<div class="tools">{resync}</div>'
        f'<div class="tools">{feeds}</div>'
        '<p class="more">Buttons need the admin (master) key: open this page with <code>?code=&lt;key&gt;</code>. '
        "Each action is audited below. A cursor reset asks for a confirmation first.</p>"
    )


_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;
color:#1b1b1f;background:#f4f5f7}
main{max-width:1240px;margin:0 auto;padding:20px 24px 32px}
header{display:flex;justify-content:space-between;align-items:baseline;flex-wrap:wrap;gap:8px}
h1{font-size:20px;margin:0}
h2{font-size:16px;margin:26px 0 8px}
.meta{color:#5f6368;margin:0}
code{font:12.5px ui-monospace,"DejaVu Sans Mono",monospace}
.headline{display:flex;gap:18px;align-items:center;margin:16px 0;padding:16px 22px;border-radius:10px;
color:#fff}
.headline.ok{background:#107c41}.headline.warning{background:#b7590b}.headline.failing{background:#c4314b}
.headline .word{font-size:30px;font-weight:700;margin:0;white-space:nowrap}
.headline ul{margin:0;padding-left:18px}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px}
.tile{background:#fff;border-radius:8px;padding:12px 14px;border-top:4px solid #d0d4da}
.tile.warn{border-top-color:#e8912d}.tile.bad{border-top-color:#c4314b}
.tile .label{color:#5f6368;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.tile .value{font-size:26px;font-weight:700;margin:2px 0}
.tile .note{color:#5f6368;font-size:12.5px}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin-top:12px}
.chart-box{margin:0;background:#fff;border-radius:8px;padding:10px 12px}
figcaption{font-weight:600;margin-bottom:2px}
svg.chart{width:100%;height:auto;display:block}
svg .grid{stroke:#e3e5e8;stroke-width:1}svg .baseline{stroke:#9aa0a6;stroke-width:1}
svg .axis{font-size:11px;fill:#5f6368}svg .empty{font-size:13px;fill:#9aa0a6}
.legend{display:flex;gap:14px;font-size:12.5px;color:#3c4043}
.legend i{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.legend i.dot{border-radius:50%}
table{width:100%;border-collapse:collapse;background:#fff;border-radius:8px;overflow:hidden}
th,td{padding:6px 9px;text-align:left;vertical-align:baseline;border-bottom:1px solid #eceef1}
th{background:#eef0f3;font-size:12px;color:#3c4043;font-weight:600}
th.group{text-align:center;border-bottom:1px solid #d9dce1}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.id{font:12px ui-monospace,"DejaVu Sans Mono",monospace;color:#3c4043;word-break:break-all}
td.empty{color:#5f6368;font-style:italic}
td.id .key{color:#5f6368;font-size:11px}
td.due{color:#b7590b;font-weight:600}
tr.failed td{background:#fff5f6}
.pill{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;font-weight:600}
.pill.good{background:#dff6dd;color:#0b5a2a}.pill.warn{background:#fff4ce;color:#7a4a00}
.pill.bad{background:#fde7e9;color:#a4262c}
ul.reasons{margin:0;padding-left:16px}
.more,footer{color:#5f6368;font-size:12.5px}
.tools{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:6px 0}
form.act{display:inline-block;margin:0 4px 2px 0}
td.acts{white-space:nowrap}
button{font:inherit;font-size:12.5px;padding:3px 10px;border:1px solid #9aa0a6;border-radius:6px;background:#fff;
cursor:pointer}
button:hover{background:#eef0f3}
button.danger{border-color:#c4314b;color:#a4262c}
.result{background:#fff;border-radius:8px;padding:14px 18px;margin:14px 0}
.result.done,.result.nothing{border-left:6px solid #107c41}.result.refused,.result.busy{border-left:6px solid #e8912d}
.result.failed,.result.error{border-left:6px solid #c4314b}
pre.details{background:#f4f5f7;padding:10px;border-radius:6px;white-space:pre-wrap;word-break:break-all}
footer{margin-top:24px}
"""


def _page(title: str, body: str, *, refresh: bool = True) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        + ('<meta http-equiv="refresh" content="60">' if refresh else "")
        + f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>{body}</main></body></html>"
    )


def render_html(status: Status, controls: Controls | None = None) -> str:
    """The status page; ``controls``: with the operators' buttons (served by the HTTP function),
    None: read-only (``status --format html``)."""
    health = status.health
    details = "".join(f"<li>{_e(detail)}</li>" for detail in health.details)
    cycles = status.cycles
    records = _bar_chart(
        "chart-records",
        "Records written per cycle",
        cycles,
        {
            "marketo": ("written to Marketo", lambda c: c.written.marketo),
            "dynamics": ("written to Dynamics", lambda c: c.written.dynamics),
        },
    )
    calls = _bar_chart(
        "chart-api-calls",
        "API calls per cycle",
        cycles,
        {
            "marketo": ("Marketo API", lambda c: c.api_calls.marketo),
            "dynamics": ("Dataverse API", lambda c: c.api_calls.dataverse),
        },
    )
    body = (
        "<header><h1>Marketo ⇄ Dynamics sync</h1>"
        f'<p class="meta">As of {_e(fmt_when(status.generated_at))} · schedule <code>{_e(status.schedule)}</code>'
        " · refreshes every minute</p></header>"
        f'<section class="headline {_e(health.level)}" id="health"><p class="word">{_e(health.headline)}</p>'
        f"<ul>{details}</ul></section>"
        f"{_tiles(status)}"
        + (
            f'<section id="initial-sync"><h2>Initial sync</h2><p>{_e(initial_sync_line(status))}</p>'
            f'<progress max="100" value="{status.initial_sync.percent:.1f}"></progress></section>'
            if status.initial_sync is not None
            else ""
        )
        + f'<section class="charts">{records}{calls}</section>'
        f"<h2>Recent cycles</h2>{_cycles_table(status)}"
        f"<h2>Open failures</h2>{_failures_table(status, controls)}"
        f"<h2>Recent collisions</h2>{_collisions_table(status, controls)}"
        f"<h2>Field-map drift</h2>{_drift_table(status)}"
        f"{_checks_section(status, controls)}"
        f"{_operate_section(controls)}"
        f"<h2>Operator actions</h2>{_actions_table(status)}"
        f"<h2>Webhooks (last 24 h; latency by bucket bound)</h2>{_webhooks_table(status)}"
        f"{_state_table(status)}"
        "<footer>Records are identified by their Marketo and Dataverse ids; field values (names, emails) are "
        "never shown here. The same data as JSON: <code>?format=json</code>.</footer>"
    )
    # No automatic refresh while the checks are shown: they are not re-run every minute.
    return _page(f"Sync status: {health.headline}", body, refresh=status.checks is None)


def render_error_html(message: str, problems: Sequence[str]) -> str:
    items = "".join(f"<li>{_e(problem)}</li>" for problem in problems)
    body = (
        "<header><h1>Marketo ⇄ Dynamics sync</h1></header>"
        f'<section class="headline failing" id="health"><p class="word">Status unavailable</p>'
        f"<ul><li>{_e(message)}</li>{items}</ul></section>"
    )
    return _page("Sync status: unavailable", body)


def _reason_title(reason: str | None) -> str:
    """Why a cycle failed, as the outcome pill's tooltip (the health box says it in words)."""
    return f' title="{_e(reason)}"' if reason else ""


def _back(controls: Controls) -> str:
    return f'<p><a id="back" href="{_e("../../status" + controls.query())}">Back to the status page</a></p>'


def render_action_result(title: str, outcome: str, message: str, details: Mapping[str, Any], controls: Controls) -> str:
    """What an action did, with a link back to the status page (no refresh: it would not repeat the POST)."""
    shown = "\n".join(f"{name}: {value}" for name, value in details.items() if value not in (None, [], {}))
    tone = outcome.split()[0]
    body = (
        f"<header><h1>{_e(title)}</h1></header>"
        f'<section class="result {_e(tone)}" id="result" data-outcome="{_e(outcome)}">'
        f'<p class="word"><strong>{_e(outcome)}</strong>: {_e(message)}</p>'
        + (f'<pre class="details">{_e(shown)}</pre>' if shown else "")
        + f"</section>{_back(controls)}"
    )
    return _page(title, body, refresh=False)


def render_action_form(
    title: str,
    explanation: str,
    action: str,
    fields: Mapping[str, str],
    controls: Controls,
    *,
    button: str,
    reason: bool = False,
) -> str:
    """The second step of an action that needs a confirmation or a reason: one form, and a way back."""
    hidden = "".join(f'<input type="hidden" name="{_e(name)}" value="{_e(value)}">' for name, value in fields.items())
    reason_input = (
        '<p><label>Reason (audited): <input name="reason" id="reason" required maxlength="500" size="60"></label></p>'
        if reason
        else ""
    )
    body = (
        f"<header><h1>{_e(title)}</h1></header>"
        f'<section class="result" id="confirm"><p>{_e(explanation)}</p>'
        f'<form method="post" action="{_e(controls.action_url(action, base=""))}" id="confirm-form">{hidden}'
        f'{reason_input}<button type="submit" class="danger" id="confirm-button">{_e(button)}</button></form>'
        f"</section>{_back(controls)}"
    )
    return _page(title, body, refresh=False)
