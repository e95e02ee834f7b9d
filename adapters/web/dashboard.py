"""The dashboard at `/` of `journey serve`: every journey drawn as a graph with live counts per state,
its funnel and messages, the segments' cohort tables, and a user lookup that shows where a user is and
why. One self-contained page (inline CSS, JS and SVG), no network beyond the engine's own API, so it
works offline and behind any firewall.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from html import escape
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from adapters.reporting.cells import iso_seconds
from adapters.reporting.cohorts import SegmentReport
from adapters.reporting.model import JourneyReport, Lift, Report, build_report
from journey_engine.compiler import CompiledWorkspace
from journey_engine.graph import layout, places
from journey_engine.model import Journey
from journey_engine.ports import Reads

BOX_W, BOX_H, COL, ROW, TOP = 170, 46, 310, 84, 56


def journey_svg(journey: Journey, counts: dict[str, int]) -> str:
    """The journey as an SVG graph, in the layout every picture of it uses (`journey_engine.graph`);
    each state shows how many users are in it now."""
    nodes, edges = layout(journey)
    place = places(nodes, edges)
    width = (max(c for c, _ in place.values()) + 1) * COL + 40
    height = (max(r for _, r in place.values()) + 1) * ROW + TOP + 20

    def anchor(node_id: str) -> tuple[float, float]:
        column, row = place[node_id]
        return 20 + column * COL, TOP + row * ROW

    drawn: list[str] = []
    for edge in edges:
        x1, y1 = anchor(edge.source)
        x2, y2 = anchor(edge.target)
        sx, sy, tx, ty = x1 + BOX_W, y1 + BOX_H / 2, x2, y2 + BOX_H / 2
        if edge.target == edge.source or x2 <= x1:  # back or self edge: loop above the boxes
            path = f"M{sx},{sy} C{sx + 40},{sy - 60} {tx - 40},{ty - 60} {tx},{ty}"
            lx, ly = (sx + tx) / 2, min(sy, ty) - 40
        else:
            mid = (sx + tx) / 2
            path = f"M{sx},{sy} C{mid},{sy} {mid},{ty} {tx},{ty}"
            lx, ly = mid, (sy + ty) / 2 - 4
        kind = "edge dashed" if edge.dashed else "edge"
        drawn.append(f'<path d="{path}" class="{kind}" marker-end="url(#arrow)"/>'
                     f'<text x="{lx}" y="{ly}" class="label" text-anchor="middle">{escape(edge.label)}</text>')
    for node in nodes:
        x, y = anchor(node.id)
        name = escape(node.lines[0])
        if node.state is None:  # entry, any state, exit, goal: no users in them
            drawn.append(f'<g class="node {node.kind}"><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" '
                         f'rx="23"/><text x="{x + 10}" y="{y + 28}" class="name">{name}</text></g>')
            continue
        count = counts.get(node.state, 0)
        detail = "".join(f"<title>{escape(line)}</title>" for line in node.lines[1:2])
        drawn.append(f'<g class="node {node.kind}" data-state="{escape(node.state)}">{detail}<rect x="{x}" y="{y}" '
                     f'width="{BOX_W}" height="{BOX_H}" rx="8"/><text x="{x + 10}" y="{y + 19}" class="name">{name}'
                     f'</text><text x="{x + 10}" y="{y + 37}" class="count" data-count="{count}">{count} users</text>'
                     "</g>")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="journey {escape(journey.name)}">'
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#667"/></marker></defs>'
            + "".join(drawn) + "</svg>")


SIZE_DAYS = 60  # days of segment size the dashboard draws


def add_dashboard_routes(app: FastAPI, store: Reads, compiled: CompiledWorkspace,
                         authorize: Callable[[Request], None]) -> None:
    """`/` and its data: the journeys as SVG with live counts, and the report's figures as JSON.
    `authorize` raises for a request without the admin key; the page itself holds no data and is open."""
    reports = ReportCache(lambda: build_report(store, compiled))

    @app.get("/", response_class=HTMLResponse, summary="The dashboard")
    async def home() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/dashboard/journeys/{name}.svg", summary="A journey as SVG with live counts")
    async def journey_picture(name: str, request: Request) -> Response:
        authorize(request)
        if name not in compiled.journeys:
            return JSONResponse({"code": "not_found", "message": f"journey `{name}`: no such journey"},
                                status_code=404)
        svg = journey_svg(compiled.workspace.journeys[name], store.state_counts().get(name, {}))
        return Response(svg, media_type="image/svg+xml")

    @app.get("/dashboard/report.json", summary="Funnels, messages and segment cohorts, as `journey report`")
    def dashboard_report(request: Request) -> JSONResponse:  # sync: FastAPI runs it off the event loop
        authorize(request)
        return JSONResponse(reports.get())


class ReportCache:
    """The report as JSON, rebuilt at most every `floor` seconds and never more than `share` of the time:
    a build reads the whole trace, and a dashboard left open on a big store must not spend the
    database on it."""

    def __init__(self, build: Callable[[], Report], *, floor: float = 2.0, share: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.build, self.floor, self.share, self.clock = build, floor, share, clock
        self._lock = threading.Lock()  # one build at a time; other pollers wait for it and share it
        self._value: dict[str, Any] | None = None
        self._fresh_until = 0.0

    def get(self) -> dict[str, Any]:
        with self._lock:
            began = self.clock()
            if self._value is None or began >= self._fresh_until:
                self._value = report_json(self.build())
                took = self.clock() - began
                self._fresh_until = began + took + max(self.floor, took / self.share)
            return self._value


def report_json(report: Report) -> dict[str, Any]:
    """The figures of `journey report` as plain JSON for the page: rates computed, dates as ISO text."""
    return {"now": iso_seconds(report.now), "journeys": [_journey_json(j) for j in report.journeys],
            "segments": [_segment_json(s) for s in report.segments],
            "retention": [{"segment": g.segment, "label": g.label, "weeks": g.weeks, "hidden": g.hidden,
                           "rows": [{"week": r.week, "users": r.users, "active": r.active, "shares": r.shares}
                                    for r in g.rows]} for g in report.retention],
            "programme": _lift_json(report.programme) if report.programme is not None else None,
            "control_group": report.control_group}


def _journey_json(journey: JourneyReport) -> dict[str, Any]:
    return {"name": journey.name, "description": journey.description, "goal": journey.goal,
            "entered": journey.entered, "converted": journey.converted,
            "conversion_rate": journey.conversion_rate, "exited": journey.exited,
            "funnel": [asdict(row) | {"conversion_rate": row.conversion_rate} for row in journey.funnel],
            "messages": [asdict(row) | {"suppressed_total": row.suppressed_total,
                                        "conversion_rate": row.conversion_rate} for row in journey.messages],
            "lift": _lift_json(journey.lift) if journey.lift is not None else None,
            "bandits": [asdict(b) for b in journey.bandits],
            "by_segment": [asdict(row) | {"rate": row.rate} for row in journey.by_segment]}


def _lift_json(lift: Lift) -> dict[str, Any]:
    return asdict(lift) | {"treated_rate": lift.treated_rate, "held_out_rate": lift.held_out_rate,
                           "difference": lift.difference, "interval": lift.interval}


def _segment_json(segment: SegmentReport) -> dict[str, Any]:
    return {"segment": segment.segment, "members": segment.sizes[-1][1] if segment.sizes else 0,
            "sizes": [[day.isoformat(), n] for day, n in segment.sizes[-SIZE_DAYS:]], "weeks": segment.weeks,
            "cohorts": [{"week": c.week, "start": c.start.isoformat(), "users": c.users, "still_in": c.still_in,
                         "shares": c.shares} for c in segment.cohorts]}


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>journey-engine</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;gap:24px;align-items:center}
header h1{font-size:18px;margin:0}main{padding:16px 24px}
section.journey,section.segments,section.user{background:#fff;border:1px solid #dde;border-radius:10px;padding:12px 16px;margin:0 0 16px}
section h2{margin:0 0 4px;font-size:16px}h3{font-size:14px;margin:12px 0 2px}.muted{color:#667}
.graph,.scroll{overflow-x:auto}.edge{fill:none;stroke:#889;stroke-width:1.4}.label{font-size:11px;fill:#445;paint-order:stroke;stroke:#fff;stroke-width:4px}
.node rect{fill:#eef3ff;stroke:#4a68d8;stroke-width:1.5}.node.final rect{fill:#eefbf1;stroke:#2f9e55;stroke-width:3}
.node.initial rect{stroke-width:3}.edge.dashed{stroke-dasharray:5 4}
.node.entry rect,.node.exit rect{fill:#f0f1f4;stroke:#99a}.node.any rect{fill:none;stroke:none}.name{font-weight:600;font-size:13px}.count{font-size:12px;fill:#4a68d8}
table{border-collapse:collapse;margin:8px 0}td,th{border-bottom:1px solid #e3e5ea;padding:3px 10px;text-align:left}
table.figures td:not(:first-child):not(.text),table.figures th:not(:first-child):not(.text){text-align:right}
.bar{position:relative;width:220px;height:14px;background:#f0f1f4;border-radius:3px}
.bar i{position:absolute;left:0;top:0;bottom:0;border-radius:3px}.bar i.in{background:#c9d6fb}.bar i.conv{background:#2f9e55}
.key{display:inline-block;width:12px;height:12px;border-radius:2px;margin:0 4px 0 12px;vertical-align:-1px}
.segment{display:inline-block;vertical-align:top;margin:0 32px 8px 0}td.heat{text-align:center;min-width:56px}
.spark{fill:none;stroke:#4a68d8;stroke-width:1.5}
#lookup input{padding:6px;width:220px}#user pre{background:#fff;border:1px solid #dde;padding:8px;overflow-x:auto}
</style></head><body>
<header><h1>journey-engine</h1><span id="status" class="muted"></span>
<form id="lookup"><input id="uid" placeholder="user id" aria-label="user id"> <button>Find user</button></form>
<span id="auth" hidden><input id="key" type="password" placeholder="admin key"><button id="save">Use key</button></span>
</header>
<main><div id="user"></div><div id="journeys"></div>
<section class="segments" id="segments" hidden><h2>Segments</h2>
<p class="muted">Members at the close of each UTC day, and per segment a cohort table: users grouped by the ISO week
they first entered, and the share of them still in the segment at the close of each week since (blank: that week has
not ended yet).</p><div class="list"></div></section>
<section class="segments" id="retention" hidden><h2>Programme and retention</h2>
<p class="muted">The whole programme against the control group, and retention by first-seen week: the share of each
week's new users active in each week since.</p><div class="list"></div></section></main>
<script>
const headers = () => { const k = sessionStorage.getItem('adminKey'); return k ? {Authorization: 'Bearer ' + k} : {}; };
async function api(path) {
  const r = await fetch(path, {headers: headers()});
  if (r.status === 401) { document.getElementById('auth').hidden = false; throw new Error('admin key needed'); }
  return r;
}
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c])); }
const pct = v => v === null || v === undefined ? '–' : (v * 100).toFixed(1) + '%';
const points = v => v === null || v === undefined ? '–' : (v >= 0 ? '+' : '') + (v * 100).toFixed(1) + ' pp';
function table(cls, columns, rows) {
  const head = columns.map(c => `<th>${esc(c)}</th>`).join('');
  return `<div class="scroll"><table class="figures ${cls}"><thead><tr>${head}</tr></thead><tbody>${rows.join('')}</tbody></table></div>`;
}
function journeyBox(name, description) {
  let box = document.getElementById('j-' + name);
  if (!box) {
    box = document.createElement('section'); box.className = 'journey'; box.id = 'j-' + name;
    box.innerHTML = `<h2>${esc(name)}</h2><div class="muted">${esc(description || '')}</div>
      <div class="graph"></div><div class="report"></div>`;
    document.getElementById('journeys').appendChild(box);
  }
  return box;
}
function funnelTable(j) {
  const top = Math.max(1, ...j.funnel.map(r => r.entered));
  const rows = j.funnel.map(r => `<tr data-state="${esc(r.state)}"><td>${esc(r.state)}</td><td class="entered">${r.entered}</td>
    <td class="now">${r.now_in}</td><td>${r.moved_on}</td><td>${r.exited.final || 0}</td><td>${r.exited.exit || 0}</td>
    <td>${r.exited.goal || 0}</td><td class="converted">${r.converted}</td><td>${pct(r.conversion_rate)}</td>
    <td class="text"><div class="bar" title="${r.entered} entered, ${r.converted} converted">
    <i class="in" style="width:${100 * r.entered / top}%"></i><i class="conv" style="width:${100 * r.converted / top}%"></i></div></td></tr>`);
  return table('funnel', ['state', 'entered', 'now in', 'moved on', 'exit: final', 'exit: exit', 'exit: goal',
                          'converted', 'conversion', ''], rows);
}
function messageTable(j) {
  if (!j.messages.length) return '<p class="muted">This journey sends no messages.</p>';
  const reasons = m => m.suppressed_total ? `${m.suppressed_total} (${Object.entries(m.suppressed).sort()
    .map(([k, n]) => esc(k) + ' ' + n).join(', ')})` : '0';
  const rows = j.messages.map(m => `<tr data-message="${esc(m.message)}"><td>${esc(m.message)}</td><td class="text">${esc(m.channel)}</td>
    <td class="sent">${m.sent}</td><td>${m.deferred}</td><td>${reasons(m)}</td><td class="passed">${m.passed_over}</td><td>${m.delivered}</td><td>${m.failed}</td>
    <td>${m.opened}</td><td>${m.clicked}</td><td>${m.bounced}</td><td>${m.unsubscribed}</td><td>${m.conversions}</td>
    <td>${pct(m.conversion_rate)}</td></tr>`);
  return table('messages', ['message', 'channel', 'sent', 'deferred', 'suppressed', 'passed over', 'delivered', 'failed', 'opened',
                            'clicked', 'bounced', 'unsubscribed', 'conversions', 'per send'], rows);
}
function liftLine(l) {
  if (!l || !(l.treated + l.held_out)) return '';
  const ci = l.interval ? `, 95% CI ${points(l.interval[0])} to ${points(l.interval[1])}` : '';
  return `<p class="lift">Holdout: treated ${pct(l.treated_rate)} of ${l.treated}, held out ${pct(l.held_out_rate)}
    of ${l.held_out}; difference ${points(l.difference)}${ci}.</p>`;
}
function banditTable(j) {
  if (!j.bandits.length) return '';
  const rows = j.bandits.flatMap(b => b.arms.map(a => `<tr data-arm="${esc(a.arm)}"><td>${esc(b.state)}${b.cohort ? ' · ' + esc(b.cohort) : ''}</td>
    <td class="text">${esc(b.strategy)}</td><td class="text">${a.kind === 'path' ? '→ ' : ''}${esc(a.arm)}</td>
    <td>${a.sends}</td><td>${a.conversions}</td><td>${pct(a.mean)}</td><td>${pct(a.low)} – ${pct(a.high)}</td></tr>`));
  return '<h3>Next best message: what the bandits believe</h3>' + table('bandits', ['state', 'strategy', 'arm',
    'sends', 'conversions', 'mean', '95% credible interval'], rows);
}
function journeyReport(j) {
  const goal = j.goal ? `, ${j.converted} reached the goal (${pct(j.conversion_rate)}); goal: ${esc(j.goal)}` : '';
  return `<p class="summary">${j.entered} entered${goal}</p><h3>Funnel</h3>
    <div class="muted">Runs through the journey per state:<span class="key" style="background:#c9d6fb"></span>entered
    <span class="key" style="background:#2f9e55"></span>then reached the goal</div>
    ${funnelTable(j)}<h3>Messages</h3>${messageTable(j)}${liftLine(j.lift)}${banditTable(j)}${bySegment(j)}`;
}
function bySegment(j) {
  if (!j.by_segment.length) return '';
  const rows = j.by_segment.map(r => `<tr data-segment="${esc(r.segment)}"><td>${esc(r.segment)}</td><td>${r.entered}</td>
    <td>${r.converted}</td><td>${pct(r.rate)}</td></tr>`);
  return '<h3>Goal conversion by segment at entry</h3>' + table('by-segment', ['segment', 'entered', 'converted', 'conversion'], rows);
}
function retentionBox(g) {
  const weeks = Array.from({length: g.weeks}, (_, k) => 'week ' + k);
  const rows = g.rows.map(r => `<tr data-week="${esc(r.week)}"><td>${esc(r.week)}</td><td class="users">${r.users}</td>
    ${r.shares.map((v, k) => heat(v, r.active[k])).join('')}${'<td class="heat"></td>'.repeat(g.weeks - r.shares.length)}</tr>`);
  const older = g.hidden ? `<p class="muted">${g.hidden} older cohort(s) began before the window and are not shown.</p>` : '';
  return `<div class="segment retention" id="ret-${esc(g.segment)}"><h3>active: ${esc(g.label)}</h3>${older}
    ${table('retention', ['first seen', 'users', ...weeks], rows)}</div>`;
}
function programmeLine(report) {
  const l = report.programme;
  if (!l) return '';
  const ci = l.interval ? `, 95% CI ${points(l.interval[0])} to ${points(l.interval[1])}` : '';
  return `<p class="lift programme">Whole programme against the ${pct(report.control_group)} control group: messaged
    ${pct(l.treated_rate)} of ${l.treated} reached a goal, control group ${pct(l.held_out_rate)} of ${l.held_out};
    difference ${points(l.difference)}${ci}.</p>`;
}
function sparkline(sizes) {
  if (sizes.length < 2) return '';
  const top = Math.max(1, ...sizes.map(s => s[1])), w = 240, h = 40;
  const pts = sizes.map((s, i) => `${(i * w / (sizes.length - 1)).toFixed(1)},${(h - 2 - s[1] / top * (h - 4)).toFixed(1)}`);
  return `<svg width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" role="img" aria-label="members per day, ${esc(sizes[0][0])} to ${esc(sizes[sizes.length - 1][0])}">
    <polyline class="spark" points="${pts.join(' ')}"/></svg>`;
}
function heat(share, users) {
  if (share === null) return '<td class="heat"></td>';
  const colour = share > 0.5 ? '#fff' : '#1d2330';
  return `<td class="heat" style="background:rgba(74,104,216,${(0.08 + 0.85 * share).toFixed(2)});color:${colour}" title="${users} users">${pct(share)}</td>`;
}
function segmentBox(s) {
  const weeks = Array.from({length: s.weeks}, (_, k) => 'week ' + k);
  const rows = s.cohorts.map(c => `<tr data-week="${esc(c.week)}"><td>${esc(c.week)}</td><td class="users">${c.users}</td>
    ${c.shares.map((v, k) => heat(v, c.still_in[k])).join('')}${'<td class="heat"></td>'.repeat(s.weeks - c.shares.length)}</tr>`);
  const cohorts = s.cohorts.length ? table('cohorts', ['week of entry', 'users', ...weeks], rows)
    : '<p class="muted">nobody has entered it yet</p>';
  return `<div class="segment" id="seg-${esc(s.segment)}"><h3>${esc(s.segment)}</h3>
    <div>members now: <b class="members">${s.members}</b></div>${sparkline(s.sizes)}${cohorts}</div>`;
}
let busy = false;
async function refresh() {
  if (busy) return; busy = true;
  try {
    const list = await (await api('/v1/journeys')).json();
    for (const j of list.journeys) {
      const box = journeyBox(j.name, j.description);
      box.querySelector('.graph').innerHTML = await (await api('/dashboard/journeys/' + encodeURIComponent(j.name) + '.svg')).text();
      box.dataset.active = j.active;
    }
    const report = await (await api('/dashboard/report.json')).json();
    for (const j of report.journeys) journeyBox(j.name, j.description).querySelector('.report').innerHTML = journeyReport(j);
    const segments = document.getElementById('segments');
    segments.querySelector('.list').innerHTML = report.segments.map(segmentBox).join('');
    segments.hidden = !report.segments.length;
    const retention = document.getElementById('retention');
    retention.querySelector('.list').innerHTML = programmeLine(report) + report.retention.map(retentionBox).join('');
    retention.hidden = !report.retention.length && !report.programme;
    document.getElementById('status').textContent = 'updated ' + new Date().toLocaleTimeString() + ' · report as of ' + report.now;
  } catch (e) { document.getElementById('status').textContent = e.message; }
  finally { busy = false; }
}
function because(why) {
  if (!why) return '';
  if (why.kind === 'journey_entered') return `entered the journey at ${why.at}` + (why.holdout ? ' (held out: sent nothing)' : '');
  return `${why.from} → ${why.to} by ${why.trigger} at ${why.at}`;
}
document.getElementById('lookup').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const id = document.getElementById('uid').value.trim(); if (!id) return;
  const r = await api('/v1/users/' + encodeURIComponent(id));
  const out = document.getElementById('user');
  if (r.status === 404) { out.innerHTML = `<p>No user <b>${esc(id)}</b>.</p>`; return; }
  const u = await r.json();
  const rows = u.journeys.map(j => `<tr><td>${esc(j.journey)}${j.key ? ' [' + esc(j.key) + ']' : ''}</td>
    <td><b>${esc(j.state)}</b></td><td>${esc(j.since)}</td><td>${esc(because(j.why))}</td></tr>`).join('');
  const decisions = u.decisions.map(d => `<tr><td>${esc(d.at)}</td><td>${esc(d.kind)}</td><td>${esc(d.message || d.to || d.state || '')}</td>
    <td>${esc(d.reason || d.trigger || '')}</td></tr>`).join('');
  out.innerHTML = `<section class="user"><h2>${esc(u.user_id)}</h2><div>segments: ${esc(u.segments.join(', ') || '-')}</div>
    <table><thead><tr><th>journey</th><th>state</th><th>since</th><th>because</th></tr></thead><tbody>${rows}</tbody></table>
    <table><thead><tr><th>at</th><th>decision</th><th>what</th><th>why</th></tr></thead><tbody>${decisions}</tbody></table></section>`;
});
document.getElementById('save').addEventListener('click', () => {
  sessionStorage.setItem('adminKey', document.getElementById('key').value);
  document.getElementById('auth').hidden = true; refresh();
});
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""
