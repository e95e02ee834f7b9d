"""Headless Debian chromium for the browser tests, driven by Playwright. Without it a test skips and
says how to install it, except under CI (the CI variable set), where it fails: CI must never pass by
silently skipping the browser."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parent.parent / "artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
MISSING = "Debian's chromium is not installed: run `make system`"


def require_chromium() -> str:
    """The chromium executable; skip without it, or fail when running under CI."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail(f"{MISSING} (CI is set, so the browser test fails rather than skips)")
        pytest.skip(MISSING)
    return CHROMIUM


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless chromium for one test; artifacts/ exists for its screenshots."""
    from playwright.sync_api import sync_playwright

    executable = require_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()
