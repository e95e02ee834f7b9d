"""`journey report --html FILE` opened in a real headless chromium from a file:// URL with the network
blocked: the charts and tables render, and the page never tries to load anything."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Request, Route
from typer.testing import CliRunner

from adapters.cli import app
from adapters.storage.sql import SqlStore
from journey_engine.ports import Batch

from .browser import ARTIFACTS, chromium
from .test_reports import WORKSPACE, population, segment_changes


def written_report(tmp_path: Path) -> Path:
    """The hand-counted population of test_reports in SQLite, reported by the real command."""
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "onboarding.yaml").write_text(WORKSPACE)
    url = f"sqlite:///{tmp_path / 'r.db'}"
    store = SqlStore(url)
    for record in population() + segment_changes():  # one per commit: a leave closes the row its entry opened
        store.commit(Batch(records=[record]))
    store.commit(Batch(bandit={("onboarding", "nudge", "tips_email"): (3, 1),
                               ("onboarding", "nudge", "tips_push"): (2, 1)}))
    store.close()
    html = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--html", str(html), "--database", url, "--workspace",
                                      str(tmp_path / "ws")])
    assert result.exit_code == 0, result.output
    return html


def test_the_html_report_renders_offline_and_requests_nothing(tmp_path: Path) -> None:
    """Every request but the file itself is refused; the funnel chart, tables and cohort table still render."""
    html = written_report(tmp_path)
    attempted: list[str] = []

    def only_files(route: Route, request: Request) -> None:
        if request.url.startswith("file://"):
            route.continue_()
        else:
            attempted.append(request.url)
            route.abort()

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.route("**/*", only_files)
        page.on("request", lambda request: None if request.url.startswith("file://") else attempted.append(request.url))
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        funnel = page.locator('#journey-onboarding svg[aria-label="funnel"]')
        box = funnel.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 50
        bars = page.eval_on_selector_all('svg[aria-label="funnel"] rect.entered',
                                         "els => els.map(e => e.getBoundingClientRect().width)")
        assert len(bars) == 3 and max(bars) > 100 and bars[0] > bars[1] > bars[2] > 0  # 10, 8, 3 entered
        assert page.locator("svg").count() >= 3  # the funnel, the lift interval, trial's size per day
        rows = page.eval_on_selector_all("#journey-onboarding tr",
                                         "els => els.map(r => [...r.cells].map(c => c.textContent))")
        assert ["welcome", "10"] in [row[:2] for row in rows]
        assert ["welcome_email", "email", "8"] in [row[:3] for row in rows]
        cohorts = page.eval_on_selector_all("table.cohorts tbody tr",
                                            "els => els.map(r => [...r.cells].map(c => c.textContent))")
        assert [row[:2] for row in cohorts] == [["2026-W02", "3"], ["2026-W03", "2"]]
        assert page.locator("table.cohorts").is_visible()
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        assert attempted == []
        # The trap itself works: a request the page did make would have been seen and refused.
        refused = page.evaluate("fetch('http://192.0.2.1/x.png').then(() => false, () => true)")
        assert refused and attempted and attempted[0] == "http://192.0.2.1/x.png"


# Every table fits the window, or sits in a box that scrolls sideways and itself fits: the page never
# scrolls sideways as a whole and no table is cut off at the window's edge.
OVERFLOWING_TABLES = """() => {
  const width = document.documentElement.clientWidth;
  const bad = [];
  if (document.documentElement.scrollWidth > width + 1) bad.push('page ' + document.documentElement.scrollWidth);
  for (const table of document.querySelectorAll('table')) {
    let box = table.parentElement;
    while (box && !['auto', 'scroll'].includes(getComputedStyle(box).overflowX)) box = box.parentElement;
    const edge = (box || table).getBoundingClientRect().right;
    if (edge > width + 1) bad.push((table.className || 'table') + ' ' + Math.round(edge));
  }
  return bad;
}"""


def test_report_tables_never_overflow_a_narrow_or_a_wide_window(tmp_path: Path) -> None:
    """At 390 and 1400 pixels wide, no table reaches past the window; screenshots of both are kept."""
    html = written_report(tmp_path)
    with chromium() as browser:
        for width in (390, 1400):
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(html.as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(ARTIFACTS / f"report-{width}.png"), full_page=True)
            assert page.evaluate(OVERFLOWING_TABLES) == [], f"tables overflow at {width} px"
            page.close()
