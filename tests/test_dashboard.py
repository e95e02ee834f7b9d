"""The dashboard: its report data in process, and the page in a real headless browser (Playwright
driving Debian's chromium)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from adapters.reporting import Report
from adapters.service.settings import Settings
from adapters.sources.http_api import create_app
from adapters.storage.sql import SqlStore
from adapters.web.dashboard import ReportCache
from journey_engine.compiler import load_workspace

from . import browser
from .browser import ARTIFACTS, chromium
from .test_serve_sdks import ADMIN, KEY, server  # noqa: F401  (the fixture)

BASIC = load_workspace(Path(__file__).parent / "workspaces" / "basic")
BEARER = {"Authorization": f"Bearer {ADMIN}"}
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # a Monday: ISO week 2026-W02


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    store = SqlStore(f"sqlite:///{tmp_path / 'dash.db'}", defaults=dict(BASIC.metrics.defaults))
    app = create_app(BASIC, store, Settings(write_keys=[KEY], admin_key=ADMIN), clock=lambda: NOW, scheduler=False)
    with TestClient(app) as c:
        yield c
    store.close()


def test_the_report_data_needs_the_admin_key(client: TestClient) -> None:
    """Like every other read of user data, the dashboard's report answers 401 without the admin key."""
    response = client.get("/dashboard/report.json")
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


def test_the_report_data_holds_funnels_messages_and_cohorts(client: TestClient) -> None:
    """After two sign-ups, the JSON has onboarding's funnel and messages and new_users' week-of-entry cohort."""
    batch = [m for u in ("a", "b") for m in (
        {"type": "identify", "userId": u, "messageId": f"i-{u}", "timestamp": "2026-01-05T08:59:00Z",
         "traits": {"email": f"{u}@example.com", "created_at": "2026-01-05T08:00:00Z"}},
        {"type": "track", "userId": u, "event": "Signed Up", "messageId": f"t-{u}",
         "timestamp": "2026-01-05T09:00:00Z"})]
    assert client.post("/v1/batch", json={"batch": batch}, auth=(KEY, "")).status_code == 200
    data = client.get("/dashboard/report.json", headers=BEARER).json()
    onboarding = next(j for j in data["journeys"] if j["name"] == "onboarding")
    welcome = onboarding["funnel"][0]
    assert (welcome["state"], welcome["entered"], welcome["now_in"], welcome["conversion_rate"]) == ("welcome", 2, 2, 0)
    assert onboarding["goal"] == "Order Completed within 7d"
    sent = {m["message"]: m["sent"] for m in onboarding["messages"]}
    assert sent["welcome_email"] + sum(m["deferred"] for m in onboarding["messages"]) == 2
    new_users = next(s for s in data["segments"] if s["segment"] == "new_users")
    assert new_users["members"] == 2
    assert new_users["cohorts"] == [{"week": "2026-W02", "start": "2026-01-05", "users": 2, "still_in": [None],
                                     "shares": [None]}]


def test_the_report_is_rebuilt_at_most_every_few_seconds() -> None:
    """Pollers within the floor share one build; after it, or after ten times a slow build's duration, it is rebuilt."""
    now = [0.0]
    builds: list[float] = []

    def build() -> Report:
        builds.append(now[0])
        now[0] += 0.5  # a build that takes half a second: reused for 5 s, not just the 2 s floor
        return Report(now=NOW, journeys=[], segments=[])

    cache = ReportCache(build, floor=2.0, share=0.1, clock=lambda: now[0])
    first = cache.get()
    assert json.loads(json.dumps(first)) == {"now": "2026-01-05T09:00:00Z", "journeys": [], "segments": [],
                                             "retention": [], "programme": None, "control_group": 0.0}
    now[0] = 4.0
    assert cache.get() is first
    now[0] = 5.6
    cache.get()
    assert builds == [0.0, 5.6]


@pytest.mark.parametrize(("ci", "outcome"), [("", pytest.skip.Exception), ("true", pytest.fail.Exception)],
                         ids=["locally-skips", "under-ci-fails"])
def test_without_chromium_the_browser_tests_skip_locally_and_fail_under_ci(
        monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]) -> None:
    """A missing chromium says to run `make system`; with CI set that is a failure, never a silent skip."""
    monkeypatch.setattr(browser, "CHROMIUM", None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="run `make system`"):
        browser.require_chromium()


def test_the_dashboard_shows_every_journey_and_counts_move(server: str) -> None:  # noqa: F811
    """The page renders every journey of the workspace with its funnel, and the segments' cohort tables;
    the graph's live counts and the funnel change after events arrive; the user lookup says where a user is."""
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(server)
        page.fill("#key", ADMIN)
        page.click("#save")
        page.wait_for_selector("#j-onboarding svg")
        page.wait_for_selector("#j-cart_abandonment table.funnel")
        names = sorted(page.eval_on_selector_all("section.journey h2", "els => els.map(e => e.textContent)"))
        assert names == ["cart_abandonment", "loyalty", "onboarding", "reactivation", "winback"]
        count = '#j-cart_abandonment g.node[data-state="shopping"] text.count'
        entered = '#j-cart_abandonment table.funnel tr[data-state="shopping"] td.entered'
        assert page.text_content(count) == "0 users"
        assert page.text_content(entered) == "0"
        now = datetime.now(UTC).isoformat()
        batch = {"batch": [m for i in range(3) for m in (
            {"type": "identify", "userId": f"d{i}", "messageId": f"i{i}",
             "traits": {"email": f"d{i}@example.com", "created_at": now}},
            {"type": "track", "userId": f"d{i}", "event": "Product Added", "messageId": f"d{i}",
             "properties": {"cartId": "A", "price": 20}})]}
        assert httpx.post(f"{server}/v1/batch", json=batch, auth=(KEY, ""), timeout=10).status_code == 200
        page.wait_for_function(f"document.querySelector('{count}').textContent === '3 users'", timeout=10_000)
        page.wait_for_function(f"document.querySelector('{entered}').textContent === '3'", timeout=20_000)
        assert page.text_content('#j-cart_abandonment table.funnel tr[data-state="shopping"] td.now') == "3"
        bar = page.get_attribute('#j-cart_abandonment tr[data-state="shopping"] .bar i.in', "style")
        assert bar == "width:100%"  # the longest bar: the state most runs entered
        page.wait_for_selector("#seg-new_users table.cohorts tbody tr", timeout=10_000)
        assert page.text_content("#seg-new_users .members") == "3"
        assert page.text_content("#seg-new_users table.cohorts tbody tr td.users") == "3"
        page.fill("#uid", "d1")
        page.click("#lookup button")
        page.wait_for_selector("#user h2")
        user = page.text_content("#user") or ""
        assert "cart_abandonment" in user and "entered the journey at" in user
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


def test_the_report_data_holds_the_bandits_estimates() -> None:
    """Each `choose: best` state's arms, with sends, conversions and the credible interval, reach the page."""
    from adapters.reporting.model import ArmEstimate, BanditReport, JourneyReport
    from adapters.web.dashboard import report_json

    arm = ArmEstimate(arm="tips_push", kind="message", sends=20, conversions=5, mean=0.26, low=0.1, high=0.46)
    journey = JourneyReport(name="onboarding", description=None, goal=None, funnel=[], messages=[], lift=None,
                            bandits=[BanditReport(state="tips", strategy="choose: best", arms=[arm])],
                            entered=0, converted=0)
    data = report_json(Report(now=NOW, journeys=[journey], segments=[]))
    assert data["journeys"][0]["bandits"] == [{"state": "tips", "strategy": "choose: best", "arms": [
        {"arm": "tips_push", "kind": "message", "sends": 20, "conversions": 5, "mean": 0.26, "low": 0.1,
         "high": 0.46}], "cohort": None}]
