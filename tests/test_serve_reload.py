"""`journey serve --reload`: a changed workspace is picked up without a restart by hand; one that does
not load is reported and the running journeys are kept."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .test_serve_sdks import ADMIN, ROOT, free_port

NEW_JOURNEY = """version: 1
journey: hello
entry: {on: Said Hello}
initial: greeted
states:
  greeted: {final: true}
"""


def journeys(url: str) -> set[str]:
    response = httpx.get(f"{url}/v1/journeys", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
    response.raise_for_status()
    return {j["name"] for j in response.json()["journeys"]}


def wait_for(check: object, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def test_reload_picks_up_a_new_journey_and_keeps_serving_through_a_broken_file(tmp_path: Path) -> None:
    """Add a journey file: it is served. Break a file: the error is printed and the last good set stays."""
    workspace = tmp_path / "ws"
    shutil.copytree(ROOT / "journeys", workspace)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "JOURNEY_ADMIN_KEY": ADMIN, "JOURNEY_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}"}
    proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--port", str(port), "--reload",
                             "--workspace", str(workspace)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: "onboarding" in journeys(url)), "server did not start"
        (workspace / "hello.yaml").write_text(NEW_JOURNEY)
        assert wait_for(lambda: "hello" in journeys(url)), "the new journey was not loaded"
        (workspace / "hello.yaml").write_text(NEW_JOURNEY.replace("greeted: {final: true}", "greeted: {fnal: 1}"))
        time.sleep(2)
        assert wait_for(lambda: {"hello", "onboarding"} <= journeys(url))
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=20)
    assert "does not load" in stderr.decode() and "hello.yaml" in stderr.decode()
