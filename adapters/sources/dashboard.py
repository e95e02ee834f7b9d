"""The dashboard at `/` of `journey serve`: every journey drawn as a graph with live counts per state,
a user lookup that shows where a user is and why. One self-contained page (inline CSS, JS and SVG),
no network beyond the engine's own API, so it works offline and behind any firewall.
"""

from __future__ import annotations

from collections import deque
from html import escape

from journey_engine.graph import format_duration
from journey_engine.model import AttributeTime, Journey, Transition

BOX_W, BOX_H, COL, ROW, TOP = 170, 46, 310, 84, 56


def layers(journey: Journey) -> dict[str, tuple[int, int]]:
    """(column, row) per state: columns by distance from the initial state, unreachable states last."""
    depth = {journey.initial: 0}
    queue = deque([journey.initial])
    while queue:
        name = queue.popleft()
        state = journey.states.get(name)
        if state is None:
            continue
        targets = [t.to for t in state.transitions] + ([p.to for p in state.split.paths] if state.split else [])
        for target in targets:
            if target in journey.states and target not in depth:
                depth[target] = depth[name] + 1
                queue.append(target)
    last = max(depth.values(), default=0) + 1
    rows: dict[int, int] = {}
    placed = {}
    for name in journey.states:
        column = depth.get(name, last)
        placed[name] = (column, rows.get(column, 0))
        rows[column] = rows.get(column, 0) + 1
    return placed


def trigger_label(t: Transition) -> str:
    if t.on is not None:
        return f"on {t.on}" + (" if …" if t.if_ else "")
    if t.segment is not None:
        return f"segment {t.segment}"
    if t.after is not None:
        return f"after {format_duration(t.after)}"
    if isinstance(t.at, AttributeTime):
        return f"at {t.at.attribute}"
    if t.at is not None:
        return f"at {t.at}"
    return "if …" if t.if_ else "else"


def journey_svg(journey: Journey, counts: dict[str, int]) -> str:
    """The journey as an SVG graph; each state shows how many users are in it now."""
    place = layers(journey)
    width = (max(c for c, _ in place.values()) + 1) * COL + 40
    height = (max(r for _, r in place.values()) + 1) * ROW + TOP + 20

    def anchor(name: str) -> tuple[float, float]:
        column, row = place[name]
        return 20 + column * COL, TOP + row * ROW

    edges: list[str] = []
    for name, state in journey.states.items():
        outs = [(t.to, trigger_label(t)) for t in state.transitions]
        if state.split:
            outs += [(p.to, f"split {p.weight:g}") for p in state.split.paths]
        for target, label in outs:
            if target not in place:
                continue
            x1, y1 = anchor(name)
            x2, y2 = anchor(target)
            sx, sy, tx, ty = x1 + BOX_W, y1 + BOX_H / 2, x2, y2 + BOX_H / 2
            if target == name or x2 <= x1:  # back or self edge: loop above the boxes
                path = f"M{sx},{sy} C{sx + 40},{sy - 60} {tx - 40},{ty - 60} {tx},{ty}"
                lx, ly = (sx + tx) / 2, min(sy, ty) - 40
            else:
                mid = (sx + tx) / 2
                path = f"M{sx},{sy} C{mid},{sy} {mid},{ty} {tx},{ty}"
                lx, ly = mid, (sy + ty) / 2 - 4
            edges.append(f'<path d="{path}" class="edge" marker-end="url(#arrow)"/>'
                         f'<text x="{lx}" y="{ly}" class="label" text-anchor="middle">{escape(label)}</text>')
    nodes: list[str] = []
    for name, state in journey.states.items():
        x, y = anchor(name)
        kind = "final" if state.final else ("initial" if name == journey.initial else "state")
        count = counts.get(name, 0)
        nodes.append(f'<g class="node {kind}" data-state="{escape(name)}"><rect x="{x}" y="{y}" width="{BOX_W}" '
                     f'height="{BOX_H}" rx="8"/><text x="{x + 10}" y="{y + 19}" class="name">{escape(name)}</text>'
                     f'<text x="{x + 10}" y="{y + 37}" class="count" data-count="{count}">{count} users</text></g>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="journey {escape(journey.name)}">'
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#667"/></marker></defs>'
            + "".join(edges) + "".join(nodes) + "</svg>")


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>journey-engine</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;gap:24px;align-items:center}
header h1{font-size:18px;margin:0}main{padding:16px 24px}
section.journey{background:#fff;border:1px solid #dde;border-radius:10px;padding:12px 16px;margin:0 0 16px}
section.journey h2{margin:0 0 4px;font-size:16px}.muted{color:#667}
.graph{overflow-x:auto}.edge{fill:none;stroke:#889;stroke-width:1.4}.label{font-size:11px;fill:#445;paint-order:stroke;stroke:#fff;stroke-width:4px}
.node rect{fill:#eef3ff;stroke:#4a68d8;stroke-width:1.5}.node.final rect{fill:#eefbf1;stroke:#2f9e55;stroke-width:3}
.node.initial rect{stroke-width:3}.name{font-weight:600;font-size:13px}.count{font-size:12px;fill:#4a68d8}
table{border-collapse:collapse;margin:8px 0}td,th{border-bottom:1px solid #e3e5ea;padding:3px 10px;text-align:left}
#lookup input{padding:6px;width:220px}#user pre{background:#fff;border:1px solid #dde;padding:8px;overflow-x:auto}
</style></head><body>
<header><h1>journey-engine</h1><span id="status" class="muted"></span>
<form id="lookup"><input id="uid" placeholder="user id" aria-label="user id"> <button>Find user</button></form>
<span id="auth" hidden><input id="key" type="password" placeholder="admin key"><button id="save">Use key</button></span>
</header>
<main><div id="user"></div><div id="journeys"></div></main>
<script>
const headers = () => { const k = sessionStorage.getItem('adminKey'); return k ? {Authorization: 'Bearer ' + k} : {}; };
async function api(path) {
  const r = await fetch(path, {headers: headers()});
  if (r.status === 401) { document.getElementById('auth').hidden = false; throw new Error('admin key needed'); }
  return r;
}
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c])); }
async function refresh() {
  try {
    const list = await (await api('/v1/journeys')).json();
    const root = document.getElementById('journeys');
    for (const j of list.journeys) {
      let box = document.getElementById('j-' + j.name);
      if (!box) {
        box = document.createElement('section'); box.className = 'journey'; box.id = 'j-' + j.name;
        box.innerHTML = `<h2>${esc(j.name)}</h2><div class="muted">${esc(j.description || '')}</div>
          <div class="graph"></div><table class="counts"><thead><tr><th>state</th><th>users now</th></tr></thead>
          <tbody></tbody></table>`;
        root.appendChild(box);
      }
      box.querySelector('.graph').innerHTML = await (await api('/dashboard/journeys/' + encodeURIComponent(j.name) + '.svg')).text();
      box.querySelector('tbody').innerHTML = Object.entries(j.states)
        .map(([s, n]) => `<tr><td>${esc(s)}</td><td class="n" data-state="${esc(s)}">${n}</td></tr>`).join('');
      box.dataset.active = j.active;
    }
    document.getElementById('status').textContent = 'updated ' + new Date().toLocaleTimeString();
  } catch (e) { document.getElementById('status').textContent = e.message; }
}
document.getElementById('lookup').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const id = document.getElementById('uid').value.trim(); if (!id) return;
  const r = await api('/v1/users/' + encodeURIComponent(id));
  const out = document.getElementById('user');
  if (r.status === 404) { out.innerHTML = `<p>No user <b>${esc(id)}</b>.</p>`; return; }
  const u = await r.json();
  const rows = u.journeys.map(j => `<tr><td>${esc(j.journey)}${j.key ? ' [' + esc(j.key) + ']' : ''}</td>
    <td><b>${esc(j.state)}</b></td><td>${esc(j.since)}</td><td>${j.why ? esc(j.why.kind + ' ' + (j.why.trigger || '')) : ''}</td></tr>`).join('');
  const decisions = u.decisions.map(d => `<tr><td>${esc(d.at)}</td><td>${esc(d.kind)}</td><td>${esc(d.message || d.to || d.state || '')}</td>
    <td>${esc(d.reason || d.trigger || '')}</td></tr>`).join('');
  out.innerHTML = `<section class="journey"><h2>${esc(u.user_id)}</h2><div>segments: ${esc(u.segments.join(', ') || '-')}</div>
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
