"""`journey serve` over live versions: a reload whose plan is refused keeps the running versions and says
why; a deployment made by one serve process is followed by the others on the same PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from .conftest import postgres_or_skip
from .test_deploy import MESSAGES, TRIAL
from .test_serve_reload import wait_for
from .test_serve_sdks import ADMIN, ROOT, free_port


def write(folder: Path, *, messages: dict[str, Any] | None = None, **trial: Any) -> Path:
    folder.mkdir(exist_ok=True)
    shared = {"version": 1, "messages": messages or MESSAGES, "policies": {"timezone": "UTC"}}
    (folder / "shared.yaml").write_text(yaml.safe_dump(shared), encoding="utf-8")
    (folder / "trial.yaml").write_text(yaml.safe_dump({"version": 1, **TRIAL, **trial}), encoding="utf-8")
    return folder


def serve(folder: Path, database: str, *, reload: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "JOURNEY_ADMIN_KEY": ADMIN, "JOURNEY_DATABASE_URL": database}
    args = [sys.executable, "-m", "adapters.cli", "serve", "--port", str(port), "--workspace", str(folder)]
    proc = subprocess.Popen([*args, *(["--reload"] if reload else [])], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, f"http://127.0.0.1:{port}"


def version(url: str) -> str | None:
    response = httpx.get(f"{url}/v1/journeys", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
    return next((j["version"] for j in response.json()["journeys"] if j["name"] == "trial"), None)


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.terminate()
    _, stderr = proc.communicate(timeout=30)
    return stderr.decode()


def test_a_reload_whose_plan_is_refused_keeps_the_running_version(tmp_path: Path) -> None:
    """Removing a message a live user's version still sends: the plan is logged, the old version stays;
    a valid edit after it is applied."""
    folder = write(tmp_path / "ws")
    v1 = yaml.safe_load((folder / "trial.yaml").read_text())
    proc, url = serve(folder, f"sqlite:///{tmp_path / 's.db'}", reload=True)
    try:
        assert wait_for(lambda: version(url) is not None), "server did not start"
        first = version(url)
        httpx.post(f"{url}/v1/track", json={"userId": "u1", "event": "Signed Up", "messageId": "m1"}, timeout=5)
        remind = {"send": "bye", "transitions": [{"after": "1d", "to": "done"}]}
        write(folder, messages={k: v for k, v in MESSAGES.items() if k != "nudge"},
              states={**TRIAL["states"], "remind": remind})
        assert not wait_for(lambda: version(url) != first, seconds=6)
        write(folder, states={**TRIAL["states"], "remind": remind})  # nudge back: the plan can be applied
        assert wait_for(lambda: version(url) not in (None, first)), "the valid edit was not applied"
    finally:
        stderr = stop(proc)
    assert "cannot be applied" in stderr and "sends message `nudge`, which is gone" in stderr
    assert v1["states"]["wait"]["send"] == "hello"


def test_serve_processes_on_one_postgresql_follow_a_deployment(tmp_path: Path) -> None:
    """Two processes run v1; a third starts with v2 and deploys it: the first two follow, so every process
    gives new entrants the same version."""
    database = postgres_or_skip()
    v1 = write(tmp_path / "v1")
    v2 = write(tmp_path / "v2", states={**TRIAL["states"], "remind": {"send": "bye",
                                                                      "transitions": [{"after": "2d", "to": "done"}]}})
    running = [serve(v1, database), serve(v1, database)]
    try:
        for _, url in running:
            assert wait_for(lambda url=url: version(url) is not None), "server did not start"
        old = version(running[0][1])
        running.append(serve(v2, database))
        assert wait_for(lambda: version(running[2][1]) is not None)
        new = version(running[2][1])
        assert new != old
        for _, url in running[:2]:
            assert wait_for(lambda url=url: version(url) == new, seconds=15), "a process did not follow"
    finally:
        logs = [stop(proc) for proc, _ in running]
    assert all("deployment" in log for log in logs[:2]), logs
