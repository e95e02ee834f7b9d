"""Retention by first-seen week, goal conversion by segment, cohort windows and piped width in the report."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from adapters.reporting import Report, build_report, render_html, render_terminal
from adapters.storage.sql import SqlStore
from journey_engine.compiler import load_workspace
from journey_engine.testing import Harness

WORKSPACE = """\
version: 1
metrics:
  last_active_at: {last_seen: any}
  last_order_at: {last_seen: Order Completed}
segments:
  active_7d: "metrics.last_active_at != null and $now - metrics.last_active_at < t'P7D'"
  ordered_7d: "metrics.last_order_at != null and $now - metrics.last_order_at < t'P7D'"
  vip: "traits.vip == true"
journey: shop
entry: {on: Visited}
goal: {on: Order Completed, within: 30d}
initial: browsing
states:
  browsing:
    transitions:
      - after: 60d
        to: done
  done:
    final: true
"""

# Monday 2026-01-05 starts ISO week W02; W03 Jan 12, W04 Jan 19, W05 Jan 26, W06 Feb 2
EVENTS = [("2026-01-05T10:00:00Z", "u1", "Visited"), ("2026-01-05T11:00:00Z", "u2", "Visited"),
          ("2026-01-12T10:00:00Z", "u3", "Visited"), ("2026-01-13T10:00:00Z", "u1", "Order Completed"),
          ("2026-01-19T12:00:00Z", "u1", "Visited"), ("2026-01-27T10:00:00Z", "u3", "Visited")]
END = datetime(2026, 2, 3, 12, 0, tzinfo=UTC)  # Tuesday of W06


@pytest.fixture
def report(tmp_path: Path) -> Report:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "shop.yaml").write_text(WORKSPACE, encoding="utf-8")
    compiled = load_workspace(tmp_path / "ws")
    store = SqlStore(f"sqlite:///{tmp_path}/r.db", defaults=dict(compiled.metrics.defaults))
    h = Harness(compiled, start="2026-01-05T09:00:00Z", seed=1, store=store)
    h.identify("u2", vip=True)
    for at, user, event in EVENTS:
        h.wait(datetime.fromisoformat(at.replace("Z", "+00:00")) - h.clock.now)
        h.track(user, event)
    h.wait(END - h.clock.now)
    built = build_report(store, compiled, now=END)
    store.close()
    return built


def test_retention_counts_each_first_seen_weeks_users_active_in_each_week_since(report: Report) -> None:
    """W02 (u1, u2): both active in week 0, u1 in weeks 1 and 2, nobody in 3; W03 (u3): weeks 0 and 2."""
    grid = next(g for g in report.retention if g.label == "any event")
    assert [(r.week, r.users, r.active) for r in grid.rows] == [
        ("2026-W02", 2, [2, 1, 1, 0]), ("2026-W03", 1, [1, 0, 1])]
    assert grid.rows[0].shares == [1.0, 0.5, 0.5, 0.0]


def test_retention_of_a_named_event_keeps_every_first_seen_user_in_the_cohort(report: Report) -> None:
    """Orders: of W02's two users one ordered, in week 1; W03's user never did."""
    assert [g.label for g in report.retention] == ["any event", "Order Completed"]
    orders = report.retention[1]
    assert [(r.week, r.users, r.active) for r in orders.rows] == [
        ("2026-W02", 2, [0, 1, 0, 0]), ("2026-W03", 1, [0, 0, 0])]


def test_goal_conversion_by_segment_at_entry(report: Report) -> None:
    """shop: u1, u2, u3 entered while active; u2 was a VIP; only u1 ordered."""
    rows = {r.segment: (r.entered, r.converted) for r in report.journeys[0].by_segment}
    assert rows == {"active_7d": (3, 1), "vip": (1, 0)}


def test_retention_and_conversion_by_segment_are_rendered(report: Report) -> None:
    """The terminal and the page show the grid and the by-segment table."""
    out = io.StringIO()
    render_terminal(report, Console(file=out, width=160, color_system=None))
    text = out.getvalue()
    assert "retention by first-seen week" in text and "2026-W02" in text and "50.0%" in text
    assert "goal conversion by segment at entry" in text
    page = render_html(report)
    assert 'id="retention"' in page and "Active: Order Completed" in page
    assert "<td>active_7d</td><td>3</td><td>1</td><td>33.3%</td>" in page


def test_piped_output_is_wide_and_cells_are_never_cut(report: Report) -> None:
    """`journey` writes into a pipe 160 columns wide; in a narrow terminal cells fold, never `2…`."""
    import os
    import sys

    from adapters.cli import out

    if not sys.stdout.isatty() and not os.environ.get("COLUMNS"):  # as under pytest's capture
        assert out.width == 160
    narrow = io.StringIO()
    render_terminal(report, Console(file=narrow, width=50, color_system=None))
    assert "…" not in narrow.getvalue()


def test_cohorts_before_the_window_are_counted_not_shown(tmp_path: Path) -> None:
    """With a 2-week window, W02's retention cohort is left out and the report says so."""
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "shop.yaml").write_text(WORKSPACE, encoding="utf-8")
    compiled = load_workspace(tmp_path / "ws")
    store = SqlStore(f"sqlite:///{tmp_path}/r.db", defaults=dict(compiled.metrics.defaults))
    h = Harness(compiled, start="2026-01-05T09:00:00Z", seed=1, store=store)
    h.track("old", "Visited")
    h.wait("14d")
    h.track("new", "Visited")
    built = build_report(store, compiled, weeks=2)
    store.close()
    grid = built.retention[0]
    assert [r.week for r in grid.rows] == ["2026-W04"] and (grid.hidden, grid.hidden_users) == (1, 1)
    active = next(s for s in built.segments if s.segment == "active_7d")
    assert [c.week for c in active.cohorts] == ["2026-W04"] and (active.hidden, active.hidden_users) == (1, 1)
    out = io.StringIO()
    render_terminal(built, Console(file=out, width=160, color_system=None))
    assert "1 older first-seen cohort (1 user) began before the report's window" in out.getvalue()
