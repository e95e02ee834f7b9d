"""`journey serve` and `journey report` on the memory store (JOURNEY_DATABASE_URL=memory://)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from adapters.cli import app

from ..conftest import free_port

ROOT = Path(__file__).parent.parent.parent
WORKSPACE = ROOT / "tests" / "workspaces" / "basic"


def test_serve_on_memory_answers_track_and_shows_the_user(tmp_path: Path) -> None:
    """A served memory store commits a /v1/track and GET /v1/users/{id} shows the journey it entered."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JOURNEY_DATABASE_URL": "memory://",
           "JOURNEY_WORKSPACE": str(WORKSPACE), "JOURNEY_ADMIN_KEY": "admin"}
    with (tmp_path / "serve.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--port", str(port)], cwd=tmp_path,
                                env=env, stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve on memory:// never answered /healthz"
            time.sleep(0.1)  # polling a subprocess's port: there is no event to await
        answer = httpx.post(f"{base}/v1/track", json={"userId": "u1", "event": "Signed Up", "messageId": "m1"})
        assert answer.status_code == 200, answer.text
        user = httpx.get(f"{base}/v1/users/u1", headers={"Authorization": "Bearer admin"}).json()
        assert [(j["journey"], j["state"]) for j in user["journeys"]] == [("onboarding", "welcome")]
    finally:
        proc.terminate()
        proc.wait(30)
    assert not (tmp_path / "journey.db").exists()  # nothing was written to a database


def test_report_on_memory_runs_on_the_empty_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`journey report` on memory:// prints the report of an empty store: every journey, no users."""
    monkeypatch.chdir(tmp_path)  # where the default SQLite file would have been created
    result = CliRunner().invoke(app, ["report", "--workspace", str(WORKSPACE)],
                                env={"JOURNEY_DATABASE_URL": "memory://", "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "onboarding" in result.output and "cart" in result.output
    assert not (tmp_path / "journey.db").exists()
