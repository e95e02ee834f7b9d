"""SIGKILL `journey serve` again and again while its dispatcher sends a burst of welcome emails to a real
SMTP server, restarting it after each kill: every email arrives, and no more arrive twice than there were
kills, since a kill repeats at most the send whose channel call was under way.

CI size: 2,000 emails, 30 kills. `JOURNEY_KILL_LOOP=long` (`make kill-loop`): 10,000 emails, 150 kills.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from adapters.storage.sql import SqlStore
from journey_engine.compiler import load_workspace
from journey_engine.engine import Engine
from journey_engine.events import Event
from journey_engine.runtime import Runtime

from .conftest import Inbox, free_port

ROOT = Path(__file__).parent.parent
WORKSPACE = ROOT / "tests" / "workspaces" / "basic"
SIZES = {"ci": (2000, 30), "long": (10_000, 150)}  # emails, kills
LEASE = 2.0  # seconds: a killed process's unsent claims come back soon after the restart
POLL = 0.002  # seconds between looks at the inbox: a kill lands within a few sends of its target


def fill(db: Path, emails: int) -> None:
    """`emails` users sign up now, in a time zone where it is noon: a welcome email each waits in the
    outbox, due (no quiet hours, nothing near its expiry, no timer due for days)."""
    now = datetime.now(UTC)
    offset = 12 - now.hour  # hours east of UTC where it is about noon now
    zone = f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"  # the Etc/ names count the other way
    compiled = load_workspace(WORKSPACE)
    store = SqlStore(f"sqlite:///{db}", defaults=dict(compiled.metrics.defaults))
    runtime = Runtime(Engine(compiled), store, claim=500)
    for start in range(0, emails, 500):
        users = [f"u{i}" for i in range(start, min(emails, start + 500))]
        runtime.process([e for u in users for e in (
            Event(type="identify", user_id=u, traits={"email": f"{u}@example.com", "timezone": zone}, timestamp=now),
            Event(type="track", user_id=u, name="Signed Up", timestamp=now))], now)
    store.close()


def start(db: Path, smtp_port: int) -> subprocess.Popen[bytes]:
    """`journey serve` on this tree's sources, its dispatcher sending to the SMTP server, with a lease of
    seconds so that what a killed process had claimed comes back within the test."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JOURNEY_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
           "JOURNEY_EMAIL_FROM": "hello@example.com", "JOURNEY_OUTBOX_LEASE_SECONDS": str(LEASE),
           "JOURNEY_TICK_SECONDS": "0.05"}
    return subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--workspace", str(WORKSPACE),
                             "--database", f"sqlite:///{db}", "--port", str(free_port())],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
    return True


def run_until(db: Path, smtp_port: int, condition: Callable[[], bool], context: str) -> None:
    """Start `journey serve`, wait for `condition` (a minute at most), then SIGKILL it."""
    proc = start(db, smtp_port)
    try:
        assert wait_for(lambda: condition() or proc.poll() is not None, 60), f"nothing for a minute ({context})"
        assert proc.poll() is None, f"journey serve exited with {proc.returncode} ({context})"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def holds(inbox: Inbox, emails: int) -> bool:
    return len(inbox.messages) >= emails


def undelivered(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM outbox WHERE status != 'delivered'").fetchone()[0])


def test_each_kill_repeats_at_most_one_email(tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    """SIGKILLs during a burst of emails (30 during 2,000 in CI): every email arrives, and the copies
    received twice (by Message-ID) are at most the number of kills."""
    inbox, smtp_port = smtp
    emails, kills = SIZES[os.environ.get("JOURNEY_KILL_LOOP", "ci")]
    db = tmp_path / "outbox.db"
    fill(db, emails)
    seed = int(os.environ.get("JOURNEY_KILL_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    step = 2 * emails // (kills + 5)  # kill after 1..step more emails: all the kills land within the burst
    killed, began = 0, time.monotonic()
    while killed < kills and undelivered(db):
        target = min(emails, len(inbox.messages) + rng.randint(1, step))  # copies count: `emails` is reached
        run_until(db, smtp_port, partial(holds, inbox, target), f"seed {seed}")
        killed += 1
    run_until(db, smtp_port, lambda: undelivered(db) == 0, f"seed {seed}")
    copies = Counter(m["Message-ID"] for m in inbox.messages)
    repeats = sum(n - 1 for n in copies.values())
    print(f"{emails} emails, {killed} kills, {repeats} received twice, {time.monotonic() - began:.1f} s (seed {seed})")
    assert len(copies) == emails
    assert killed >= kills, f"only {killed} kills landed before the burst ended (seed {seed})"
    assert repeats <= killed, f"{repeats} emails received twice after {killed} kills (seed {seed})"
