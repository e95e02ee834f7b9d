"""`journey serve` on PostgreSQL, SIGKILLed and restarted while an SDK-like client sends events of which
1% carry a NUL character: no 5xx is ever answered, every good message is committed, each bad one is
refused by its field, and no user's timer is held back. CI runs a bounded version (~60 s);
JOURNEY_LONG_KILL_LOOP=1 runs 50,000 events and 20 kills."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from .conftest import free_port, postgres_or_skip
from .test_crash import _recreate_database

ROOT = Path(__file__).parent.parent
LONG = bool(os.environ.get("JOURNEY_LONG_KILL_LOOP"))
EVENTS, KILLS, BATCH = (50_000, 20, 100) if LONG else (10_000, 8, 50)
USERS = 300
JOURNEY = """version: 1
journey: ping
entry:
  on: Ping
  key: k
  reentry: always
initial: waiting
states:
  waiting:
    transitions:
      - after: 2s
        to: done
  done:
    final: true
"""
NETWORK_ERRORS = (httpx.TransportError,)  # refused, reset, or cut mid-answer by the kill


def messages(seed: int) -> list[dict[str, Any]]:
    """Pings of USERS users (3 keys each); one in a hundred has a NUL in its user id, a property or a trait."""
    rng = random.Random(seed)
    found = []
    for n in range(EVENTS):
        user = f"u{rng.randrange(USERS)}"
        message: dict[str, Any] = {"type": "track", "userId": user, "event": "Ping", "messageId": f"m{n}",
                                   "properties": {"k": f"k{rng.randrange(3)}"}, "timestamp": _now()}
        if rng.random() < 0.01:
            where = rng.choice(["userId", "property", "trait"])
            if where == "userId":
                message["userId"] = user + "\u0000"
            elif where == "property":
                message["properties"]["note"] = "a\u0000b"
            else:
                message = {**message, "type": "identify", "traits": {"name": {"first": "\u0000"}}}
            message["bad"] = True
        found.append(message)
    return found


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Server:
    """`journey serve` as a subprocess running these sources, restarted after each kill."""

    url: str
    database: str
    workspace: Path
    log: Path
    port: int = field(default_factory=free_port)
    proc: Any = None
    starts: list[float] = field(default_factory=list)  # seconds from start to a healthy /healthz

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "JOURNEY_DATABASE_URL": self.database,
               "JOURNEY_WORKSPACE": str(self.workspace)}
        began = time.monotonic()
        with self.log.open("a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--port", str(self.port)],
                                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
        wait_for(self.healthy, 90, "the server to answer /healthz")
        self.starts.append(time.monotonic() - began)

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"journey serve exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200
        except NETWORK_ERRORS:
            return False

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def wait_for(condition: Any, seconds: float, what: str) -> None:
    """Until `condition()` holds, looking again every 50 ms, for at most `seconds`."""
    deadline = time.monotonic() + seconds
    ready = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {seconds:g} s")
        ready.wait(0.05)


@dataclass
class Tally:
    statuses: dict[int, int] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # 400 answers' messages
    network_errors: int = 0
    acked: int = 0  # messages answered 200 or 400
    progress: threading.Condition = field(default_factory=threading.Condition)


def send(server: Server, batches: list[list[dict[str, Any]]], tally: Tally) -> None:
    """Each batch until it is answered (as the SDKs retry on a network error), recording every answer."""
    with httpx.Client(timeout=30) as http:
        for batch in batches:
            body = {"batch": [{k: v for k, v in m.items() if k != "bad"} for m in batch], "sentAt": _now()}
            while True:
                try:
                    response = http.post(f"{server.base}/v1/batch", json=body)
                except NETWORK_ERRORS:
                    tally.network_errors += 1
                    wait_for(lambda: server.proc.poll() is None and server.healthy(), 120, "a restarted server")
                    continue
                tally.statuses[response.status_code] = tally.statuses.get(response.status_code, 0) + 1
                if response.status_code == 400:
                    tally.refused.append(response.json()["message"])
                if response.status_code < 500:
                    break
            with tally.progress:
                tally.acked += len(batch)
                tally.progress.notify_all()


def kill_repeatedly(server: Server, tally: Tally, lock: threading.Lock, seed: int) -> list[int]:
    """SIGKILL the server KILLS times, each once a random further share of the messages is answered (so
    each kill lands while a batch is in flight), and start it again. Returns the answered count at each."""
    rng = random.Random(seed)
    at = []
    for n in range(KILLS):
        goal = (n + rng.uniform(0.3, 0.9)) * EVENTS / (KILLS + 1)
        with tally.progress:
            tally.progress.wait_for(lambda g=goal: tally.acked >= g, timeout=300)  # type: ignore[misc]
        with lock:
            at.append(tally.acked)
            server.kill()
            server.start()
    return at


def test_sigkill_loop_with_nul_bytes_answers_no_5xx_and_loses_no_good_message_or_timer(tmp_path: Path) -> None:
    """Killed and restarted KILLS times while 1% of the events carry NUL bytes: no 5xx, every good message
    committed, every bad one refused by field (and nothing of it stored), every due timer fired."""
    base = postgres_or_skip()
    database = base.rsplit("/", 1)[0] + "/journey_serve_crash"
    _recreate_database(base, "journey_serve_crash")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "ping.yaml").write_text(JOURNEY)
    server = Server(base, database, workspace, tmp_path / "serve.log")
    all_messages = messages(seed=7)
    batches = [all_messages[i:i + BATCH] for i in range(0, EVENTS, BATCH)]
    tally = Tally()
    began = time.monotonic()
    server.start()
    try:
        lock = threading.Lock()
        killer_result: list[int] = []
        killer = threading.Thread(target=lambda: killer_result.extend(kill_repeatedly(server, tally, lock, 5)))
        killer.start()
        send(server, batches, tally)
        killer.join()
        sent_s = time.monotonic() - began
        engine = sa.create_engine(database)
        try:
            with engine.connect() as conn:
                committed = set(conn.execute(sa.text("SELECT message_id FROM processed")).scalars())
            good = {m["messageId"] for m in all_messages if not m.get("bad")}
            bad = {m["messageId"] for m in all_messages if m.get("bad")}
            assert not any(status >= 500 for status in tally.statuses), tally.statuses
            assert good <= committed, f"{len(good - committed)} good messages lost"
            assert not bad & committed
            assert len(tally.refused) == len({i // BATCH for i, m in enumerate(all_messages) if m.get("bad")})
            assert all("contains a NUL character" in text for text in tally.refused), tally.refused[:3]
            timers_began = time.monotonic()
            wait_for(lambda: _waiting(engine) == 0, 120, "every due timer to fire")
            timers_s = time.monotonic() - timers_began
            entered, fired = _entries_and_timers(engine)
            assert fired == entered, "each instance's timer fires exactly once"
        finally:
            engine.dispose()
    finally:
        server.stop()
    assert len(killer_result) == KILLS
    print(f"\n{EVENTS} events ({len(bad)} with NUL) in {sent_s:.1f} s with {KILLS} kills at {killer_result}; "
          f"answers {tally.statuses}, {tally.network_errors} network errors retried; restarts "
          f"{min(server.starts):.1f}-{max(server.starts):.1f} s; {len(good)} good messages all committed; "
          f"{fired} timers, one per entry, all fired {timers_s:.1f} s after the last answer")


def _waiting(engine: sa.Engine) -> int:
    """Users with a wake-up still set: each ping instance waits 2 s and then ends (a later ping enters again,
    so timers are due all along the run, through every kill)."""
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM profiles WHERE wake_at IS NOT NULL")).scalar_one())



def _entries_and_timers(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT kind, count(*) FROM trace WHERE kind IN ('journey_entered', "
                                    "'transition') GROUP BY kind")).all()
    counts: dict[str, int] = {kind: n for kind, n in rows}
    return counts.get("journey_entered", 0), counts.get("transition", 0)
