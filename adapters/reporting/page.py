"""The report as one self-contained HTML page: inline CSS and SVG, no scripts, nothing fetched."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import TYPE_CHECKING

from adapters.reporting.cells import (
    BANDIT_COLUMNS,
    MESSAGE_COLUMNS,
    PROGRAMME_GROUPS,
    SEGMENT_CONVERSION_COLUMNS,
    VERSION_COLUMNS,
    arm_cells,
    funnel_table,
    hidden_note,
    iso_seconds,
    lift_rows,
    lift_sentence,
    message_cells,
    pct,
    points,
    programme_title,
    retention_title,
    segment_conversion_cells,
    version_cells,
    versions_title,
)
from adapters.reporting.cohorts import Cohort
from adapters.reporting.model import JourneyReport, Lift, Report, SegmentReport, StateFunnel
from adapters.reporting.retention import Retention, RetentionRow

if TYPE_CHECKING:
    from adapters.demo.results import ChoiceResult, DemoResult, HoldoutResult

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:2px 0 0;color:#c9cede}main{padding:16px 24px;max-width:1320px}
@media (max-width:600px){main{padding:10px 8px}section{padding:10px 10px}}
section{background:#fff;border:1px solid #dde;border-radius:10px;padding:12px 18px;margin:0 0 18px}
h2{margin:4px 0;font-size:18px}h3{margin:16px 0 4px;font-size:15px}.muted{color:#667}
table{border-collapse:collapse;margin:6px 0;font-variant-numeric:tabular-nums}
td,th{border-bottom:1px solid #e3e5ea;padding:3px 9px;text-align:right;white-space:nowrap}th{background:#f0f2f6}
td:first-child,th:first-child,.text{text-align:left}.scroll{overflow-x:auto}
.segments{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(600px,100%),1fr));gap:8px 24px}
.segments>*{min-width:0}svg{max-width:100%;height:auto}
.key{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin:0 4px 0 12px}
svg text{font:12px system-ui,sans-serif;fill:#1d2330}svg .axis{stroke:#99a;stroke-width:1}
svg .entered{fill:#c9d6fb}svg .converted{fill:#2f9e55}svg .line{fill:none;stroke:#4a68d8;stroke-width:2}
svg .zero{stroke:#99a;stroke-dasharray:4 3}svg .whisker{stroke:#1d2330;stroke-width:2}
svg .point{fill:#d8544a}td.heat{min-width:54px}
"""
_BAR_LABEL, _BAR_WIDTH, _BAR_ROW = 170, 380, 28
_TEXT_COLUMNS = {"channel", "suppressed", "strategy", "arm"}


def render_html(report: Report, demo: DemoResult | None = None) -> str:
    """The report as one self-contained page: inline CSS and SVG, no scripts, nothing fetched. With the
    result of `journey demo`, the page opens with the run: its population, the bandits against a fixed
    choice and the holdouts."""
    journeys = "".join(_html_journey(j) for j in report.journeys)
    if report.programme is not None:
        journeys += ('<section id="programme"><h2>The whole programme</h2>'
                     f'<p class="muted">{escape(programme_title(report.control_group))}</p>'
                     + _html_table(("group", "users", "converted", "rate"),
                                       lift_rows(report.programme, PROGRAMME_GROUPS))
                     + _interval_svg(report.programme) + f"<p>{escape(lift_sentence(report.programme))}</p></section>")
    segments = "".join(_html_segment(s) for s in report.segments)
    if report.retention:
        journeys += _html_retention(report.retention)
    segment_part = f"<section><h2>Segments</h2>{_COHORT_NOTE}<div class=\"segments\">{segments}</div></section>" \
        if segments else ""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>journey report</title><style>{_CSS}</style></head><body>"
            f"<header><h1>journey report</h1><p>as of {escape(iso_seconds(report.now))}</p></header>"
            f"<main>{_html_demo(demo) if demo is not None else ''}{journeys}{segment_part}</main></body></html>\n")


DEMO_CHOICE_COLUMNS = ("state", "decisions", "with a choice", "bandit", "always first", "best possible", "picks")
DEMO_HOLDOUT_COLUMNS = ("journey", "treated", "converted", "held out", "converted", "difference", "95% interval")


def _html_demo(demo: DemoResult) -> str:
    """The demo run: who lived through it, the adaptive choice against a fixed one, and the holdouts."""
    t = demo.traffic
    parts = ['<section id="demo"><h2>Demo run</h2>',
             f"<p>{demo.users:,} synthetic users, {demo.days} days from {escape(iso_seconds(demo.start))} "
             f"(seed {demo.seed}, "
             f"after a {demo.warmup_days}-day warm-up of existing customers' orders): {demo.events:,} events, "
             f"{demo.sends:,} sends.</p>",
             f'<p class="muted">Sessions {t.sessions:,}, median {t.median_events:g} events; {pct(t.add_to_cart)} add '
             f"to a cart, {pct(t.abandoned)} of carts abandoned, {pct(t.converted)} convert; median repeat-purchase "
             f"gap {t.repeat_gap_median:g} days.</p>",
             "<h3>Adaptive choice against a fixed one</h3>",
             '<p class="muted">Expected goal conversions per decision under the demo\'s response model, for the '
             "same users at the same moments: the bandit's picks, always the first eligible candidate, and the best "
             "candidate for each user.</p>",
             _html_table(DEMO_CHOICE_COLUMNS, [_demo_choice_cells(c) for c in demo.choices]),
             f"<p>Overall: the bandit {'beats' if demo.adaptive_beat_fixed else 'does not beat'} the fixed choice, "
             f"{pct(demo.adaptive_rate)} against {pct(demo.fixed_rate)} per decision.</p>"]
    per_cohort = [c for c in demo.choices if c.cohorts]
    if per_cohort:
        parts += ["<h3>Learning per cohort against one bandit for everyone</h3>",
                  '<p class="muted">Choices learnt per cohort (<code>by:</code>), expected goal conversions per '
                  "decision: the engine's per-cohort bandits, a single bandit for everyone at the same decisions, and "
                  "the best fixed assignment of each cohort (its candidates' preference order, found after the run)."
                  "</p>",
                  _html_table(DEMO_COHORT_COLUMNS, [row for c in per_cohort for row in _demo_cohort_cells(c)])]
        parts += [f"<p>{escape(cohort_sentence(c))}</p>" for c in per_cohort]
    if demo.holdouts:
        parts += ["<h3>Journeys against their holdout</h3>",
                  '<p class="muted">First entries with the whole goal window inside the run; converted: another '
                  "order within the window.</p>",
                  _html_table(DEMO_HOLDOUT_COLUMNS, [_demo_holdout_cells(h) for h in demo.holdouts])]
    return "".join(parts) + "</section>"


def _demo_choice_cells(c: ChoiceResult) -> list[str]:
    picks = ", ".join(f"{m} {n}" for m, n in c.picks.items())
    return [f"{c.journey}.{c.state}", str(c.decisions), str(c.with_choice), pct(c.adaptive_rate),
            pct(c.fixed_rate), pct(c.best_rate), picks]


DEMO_COHORT_COLUMNS = ("state", "cohort", "decisions", "per-cohort bandit", "single bandit", "best fixed",
                       "best fixed order")


def _demo_cohort_cells(c: ChoiceResult) -> list[list[str]]:
    rows = [[f"{c.journey}.{c.state}", cohort, str(r.decisions), pct(r.per_cohort_rate), pct(r.single_rate),
             pct(r.fixed_rate), " > ".join(r.fixed_order)] for cohort, r in c.cohorts.items()]
    return [*rows, [f"{c.journey}.{c.state}", "all", str(sum(r.decisions for r in c.cohorts.values())),
                    pct(c.per_cohort_rate), pct(c.single_rate), pct(c.cohort_fixed_rate), ""]]


def cohort_sentence(c: ChoiceResult) -> str:
    """Whether learning per cohort reached 90% of the best fixed per-cohort assignment and beat one bandit."""
    share = c.per_cohort_rate / c.cohort_fixed_rate if c.cohort_fixed_rate else 0.0
    beats = "beats" if c.per_cohort_rate > c.single_rate else "does not beat"
    return (f"{c.journey}.{c.state}: learning per cohort reaches {share:.0%} of the best fixed per-cohort "
            f"assignment and {beats} a single bandit ({pct(c.per_cohort_rate)} against {pct(c.single_rate)} "
            "per decision).")


def _demo_holdout_cells(h: HoldoutResult) -> list[str]:
    interval = h.interval
    shown = "–" if interval is None else f"{points(interval[0])} to {points(interval[1])}"
    return [h.journey, str(h.treated), pct(h.treated_rate), str(h.holdout), pct(h.holdout_rate),
            points(h.difference), shown]


def _html_journey(journey: JourneyReport) -> str:
    summary = f"{journey.entered} entered"
    if journey.goal:
        summary += (f", {journey.converted} reached the goal ({pct(journey.conversion_rate)}); "
                    f"goal: {journey.goal}")
    title = escape(journey.name) + (f" · version {escape(journey.version)}" if journey.version else "")
    parts = [f'<section class="journey" id="journey-{escape(journey.name)}"><h2>{title}</h2>']
    if journey.description:
        parts.append(f'<p class="muted">{escape(journey.description)}</p>')
    parts += [f"<p>{escape(summary)}</p>", "<h3>Funnel</h3>", _FUNNEL_KEY, _funnel_svg(journey.funnel),
              _html_table(*funnel_table(journey.funnel)),
              "<h3>Messages</h3>", _PASSED_OVER,
              _html_table(MESSAGE_COLUMNS, [message_cells(r) for r in journey.messages])]
    if journey.lift is not None:
        parts += ["<h3>Holdout lift</h3>",
                  _html_table(("group", "entrants", "converted", "rate"), lift_rows(journey.lift)),
                  _interval_svg(journey.lift), f"<p>{escape(lift_sentence(journey.lift))}</p>"]
    if journey.bandits:
        parts += ["<h3>Bandits</h3>",
                  _html_table(BANDIT_COLUMNS, [arm_cells(b, arm) for b in journey.bandits for arm in b.arms])]
    if len(journey.versions) > 1 or journey.version is not None:
        parts += ["<h3>Versions</h3>", f'<p class="muted">{escape(versions_title(journey))}</p>',
                  _html_table(VERSION_COLUMNS, [version_cells(row) for row in journey.versions])]
    if journey.by_segment:
        parts += ["<h3>Goal conversion by segment</h3>",
                  '<p class="muted">Runs whose user was in the segment when they entered (a user in several '
                  "segments counts in each).</p>",
                  _html_table(SEGMENT_CONVERSION_COLUMNS, [segment_conversion_cells(r) for r in journey.by_segment])]
    return "".join(parts) + "</section>"


_PASSED_OVER = ('<p class="muted">Passed over: a <code>choose</code> candidate that was not eligible when another '
                "one was chosen; not a lost send, so not counted as suppressed.</p>")
_FUNNEL_KEY = ('<p class="muted">Runs through the journey per state:<span class="key" style="background:#c9d6fb">'
               '</span>entered<span class="key" style="background:#2f9e55"></span>then reached the goal</p>')


_COHORT_NOTE = ('<p class="muted">Per segment: members at the close of each UTC day, and a cohort table: users '
                "grouped by the ISO week they first entered, and the share of them in the segment at the close of each "
                "week since (weeks Monday to Sunday, UTC; blank: that week has not ended yet).</p>")


def _html_table(columns: Iterable[str], rows: Iterable[list[str]]) -> str:
    names = list(columns)
    align = ['' if i == 0 or name not in _TEXT_COLUMNS else ' class="text"' for i, name in enumerate(names)]
    head = "".join(f"<th{a}>{escape(c)}</th>" for a, c in zip(align, names, strict=True))
    body = "".join("<tr>" + "".join(f"<td{a}>{escape(cell)}</td>" for a, cell in zip(align, row, strict=True))
                   + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _svg(width: float, height: float, label: str, body: str) -> str:
    # Inline SVG in HTML needs no namespace declaration, so the page names no URL at all.
    return (f'<svg width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
            f'aria-label="{escape(label)}">{body}</svg>')


def _funnel_svg(funnel: list[StateFunnel]) -> str:
    """A bar per state, its length the runs that entered it; the green part those that converted."""
    top = max((row.entered for row in funnel), default=0) or 1
    bars = []
    for index, row in enumerate(funnel):
        y = 6 + index * _BAR_ROW
        entered, converted = row.entered / top * _BAR_WIDTH, row.converted / top * _BAR_WIDTH
        note = f"{row.entered} entered · {row.converted} converted ({pct(row.conversion_rate)})"
        bars.append(f'<text x="0" y="{y + 15}">{escape(row.state)}</text>'
                    f'<rect class="entered" x="{_BAR_LABEL}" y="{y}" width="{entered:.1f}" height="20" rx="3"/>'
                    f'<rect class="converted" x="{_BAR_LABEL}" y="{y}" width="{converted:.1f}" height="20" rx="3"/>'
                    f'<text x="{_BAR_LABEL + _BAR_WIDTH + 10}" y="{y + 15}">{escape(note)}</text>')
    return _svg(_BAR_LABEL + _BAR_WIDTH + 290, 12 + len(funnel) * _BAR_ROW, "funnel", "".join(bars))


def _interval_svg(lift: Lift) -> str:
    """The difference of conversion rates as a point, its 95% interval as a line, zero dashed."""
    interval, difference = lift.interval, lift.difference
    if interval is None or difference is None:
        return ""
    width, pad = 520.0, 40.0
    low, high = min(interval[0], 0.0), max(interval[1], 0.0)
    margin = (high - low) * 0.1 or 0.05

    def x(value: float) -> float:
        return pad + (value - low + margin) / (high - low + 2 * margin) * (width - 2 * pad)

    body = (f'<line class="zero" x1="{x(0):.1f}" y1="8" x2="{x(0):.1f}" y2="52"/>'
            f'<text x="{x(0):.1f}" y="64" text-anchor="middle">0</text>'
            f'<line class="whisker" x1="{x(interval[0]):.1f}" y1="30" x2="{x(interval[1]):.1f}" y2="30"/>'
            f'<line class="whisker" x1="{x(interval[0]):.1f}" y1="22" x2="{x(interval[0]):.1f}" y2="38"/>'
            f'<line class="whisker" x1="{x(interval[1]):.1f}" y1="22" x2="{x(interval[1]):.1f}" y2="38"/>'
            f'<circle class="point" cx="{x(difference):.1f}" cy="30" r="6"/>'
            f'<text x="{x(interval[0]):.1f}" y="16" text-anchor="middle">{points(interval[0])}</text>'
            f'<text x="{x(interval[1]):.1f}" y="16" text-anchor="middle">{points(interval[1])}</text>'
            f'<text x="{x(difference):.1f}" y="52" text-anchor="middle">{points(difference)}</text>')
    return _svg(width, 70, "difference of goal conversion, treated minus held out, with its 95% interval", body)


def _html_segment(segment: SegmentReport) -> str:
    now = segment.sizes[-1][1] if segment.sizes else 0
    parts = [f'<div class="segment"><h3 id="segment-{escape(segment.segment)}">{escape(segment.segment)}</h3>',
             f"<p>members now: {now}</p>", _size_svg(segment)]
    if segment.hidden:
        parts.append(f'<p class="muted">{escape(hidden_note("entry", segment.hidden, segment.hidden_users))}</p>')
    if segment.cohorts:
        parts.append(_cohort_html(segment))
    return "".join(parts) + "</div>"


def _html_retention(grids: list[Retention]) -> str:
    parts = ['<section id="retention"><h2>Retention by first-seen week</h2>']
    for grid in grids:
        parts.append(f'<h3>Active: {escape(grid.label)}</h3><p class="muted">{escape(retention_title(grid))}</p>')
        if grid.hidden:
            parts.append(f'<p class="muted">{escape(hidden_note("first-seen", grid.hidden, grid.hidden_users))}</p>')
        parts.append(_grid_html(grid.rows, grid.weeks, "first seen"))
    return "".join(parts) + "</section>"


def _size_svg(segment: SegmentReport) -> str:
    """Members at the close of each day as a line, with the first and last day and the peak marked."""
    if not segment.sizes:
        return ""
    width, height, pad = 600.0, 160.0, 40.0
    counts = [n for _, n in segment.sizes]
    top = max(counts) or 1
    step = (width - 2 * pad) / max(len(counts) - 1, 1)
    xy = [(pad + i * step, height - pad - n / top * (height - 2 * pad)) for i, n in enumerate(counts)]
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    last_x, last_y = xy[-1]
    first, last = segment.sizes[0][0].isoformat(), segment.sizes[-1][0].isoformat()
    body = (f'<line class="axis" x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}"/>'
            f'<line class="axis" x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}"/>'
            f'<text x="{pad - 6}" y="{pad + 4}" text-anchor="end">{top}</text>'
            f'<text x="{pad - 6}" y="{height - pad + 4}" text-anchor="end">0</text>'
            f'<text x="{pad}" y="{height - pad + 18}">{first}</text>'
            f'<text x="{width - pad}" y="{height - pad + 18}" text-anchor="end">{last}</text>'
            f'<polyline class="line" points="{points}"/>'
            f'<circle class="point" cx="{last_x:.1f}" cy="{last_y:.1f}" r="3.5"/>'
            f'<text x="{last_x + 6:.1f}" y="{last_y + 4:.1f}">{counts[-1]}</text>')
    return _svg(width, height, f"members of {segment.segment} per day", body)


def _cohort_html(segment: SegmentReport) -> str:
    return _grid_html(segment.cohorts, segment.weeks, "week of entry")


def _grid_html(rows_in: Sequence[Cohort | RetentionRow], weeks: int, first: str) -> str:
    head = f"<th>{escape(first)}</th><th>users</th>" + "".join(f"<th>week {k}</th>" for k in range(weeks))
    rows = []
    for row in rows_in:
        counts = row.still_in if isinstance(row, Cohort) else row.active
        cells = [_heat_cell(share, n) for share, n in zip(row.shares, counts, strict=True)]
        cells += ['<td class="heat"></td>'] * (weeks - len(cells))
        rows.append(f"<tr><td>{escape(row.week)}</td><td>{row.users}</td>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table class="cohorts"><thead><tr>{head}</tr></thead>' \
           f'<tbody>{"".join(rows)}</tbody></table></div>'


def _heat_cell(share: float | None, users: int | None) -> str:
    if share is None:
        return '<td class="heat"></td>'
    colour = "#fff" if share > 0.5 else "#1d2330"
    return (f'<td class="heat" style="background:rgba(74,104,216,{0.08 + 0.85 * share:.2f});color:{colour}" '
            f'title="{users} users">{pct(share)}</td>')
