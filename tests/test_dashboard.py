"""The dashboard in a real headless browser (Playwright driving Debian's chromium)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from .test_serve_sdks import ADMIN, KEY, server  # noqa: F401  (the fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parent.parent / "artifacts"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed: run `make browser`")
def test_the_dashboard_shows_every_journey_and_counts_move(server: str) -> None:  # noqa: F811
    """The page renders every journey of the workspace, and its counts change after events arrive."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page()
        page.goto(server)
        page.fill("#key", ADMIN)
        page.click("#save")
        page.wait_for_selector("#j-onboarding svg")
        names = sorted(page.eval_on_selector_all("section.journey h2", "els => els.map(e => e.textContent)"))
        assert names == ["cart_abandonment", "loyalty", "onboarding", "reactivation", "winback"]
        cell = '#j-cart_abandonment td.n[data-state="shopping"]'
        assert page.text_content(cell) == "0"
        batch = {"batch": [{"type": "track", "userId": f"d{i}", "event": "Product Added", "messageId": f"d{i}",
                            "properties": {"cartId": "A", "price": 20}} for i in range(3)]}
        assert httpx.post(f"{server}/v1/batch", json=batch, auth=(KEY, ""), timeout=10).status_code == 200
        page.wait_for_function(f"document.querySelector('{cell}').textContent === '3'", timeout=10_000)
        page.fill("#uid", "d1")
        page.click("#lookup button")
        page.wait_for_selector("#user h2")
        assert "cart_abandonment" in page.text_content("#user")
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        browser.close()
