"""End to end: a real `journey serve` on SQLite, a real SMTP server; an event starts a journey, its timer
fires after a SIGKILL and a restart, and the email arrives exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .conftest import Inbox, free_port

ROOT = Path(__file__).parent.parent
KEY = "k1"


def start(db: Path, smtp_port: int, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "JOURNEY_DATABASE_URL": f"sqlite:///{db}", "JOURNEY_WRITE_KEYS": KEY,
           "JOURNEY_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}", "JOURNEY_EMAIL_FROM": "hello@example.com",
           "JOURNEY_TICK_SECONDS": "0.5"}
    proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--port", str(port), "--workspace",
                             str(ROOT / "tests" / "workspaces" / "e2e")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("journey serve did not start")


def test_the_timer_fires_after_a_crash_and_the_email_arrives_once(tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    """Kill the server while the timer is pending: after a restart it fires, and the mail is sent once."""
    inbox, smtp_port = smtp
    db, port = tmp_path / "serve.db", free_port()
    proc = start(db, smtp_port, port)
    body = {"batch": [{"type": "identify", "userId": "u1", "messageId": "i1",
                       "traits": {"email": "ann@example.com", "first_name": "Ann"}},
                      {"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "s1"}]}
    response = httpx.post(f"http://127.0.0.1:{port}/v1/batch", json=body, auth=(KEY, ""), timeout=10)
    assert response.json() == {"success": True}
    proc.send_signal(signal.SIGKILL)  # the 3 s timer is pending, only in the database
    proc.wait()
    assert inbox.messages == []
    proc = start(db, smtp_port, port)
    deadline = time.monotonic() + 20
    while not inbox.messages and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(inbox.messages) == 1
    mail = inbox.messages[0]
    assert mail["To"] == "ann@example.com"
    assert mail["Subject"] == "Welcome, Ann"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc = start(db, smtp_port, port)  # a restart after delivery sends nothing again
    time.sleep(3)
    proc.terminate()
    proc.wait(timeout=15)
    assert len(inbox.messages) == 1
    parts = [p.get_content_type() for p in mail.walk()]
    assert "text/html" in parts and "text/plain" in parts
