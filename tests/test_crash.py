"""Crash safety: an ingesting process killed with SIGKILL at random moments, then restarted and fed the
whole stream again, ends exactly where an uninterrupted run ends (nothing lost, nothing twice)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from .conftest import postgres_or_skip

ROOT = Path(__file__).parent.parent
WORKSPACE = ROOT / "journeys"
EVENTS = 20_000


def make_stream(path: Path, seed: int = 11) -> None:
    """20,000 Segment messages over ten days, 5% of them resent with the same messageId."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    names = ["Feature Used", "Application Opened", "Product Added", "Page Viewed", "Order Completed"]
    lines: list[dict[str, Any]] = []
    users = 2_000
    for n in range(users):
        at = start + timedelta(seconds=n * 30)
        lines.append({"type": "identify", "userId": f"u{n}", "messageId": f"i{n}", "timestamp": at.isoformat(),
                      "traits": {"email": f"u{n}@example.com", "timezone": "Europe/Berlin", "first_name": "Al",
                                 "created_at": at.isoformat(), "push_token": "t" if n % 3 == 0 else None}})
        lines.append({"type": "track", "userId": f"u{n}", "event": "Signed Up", "messageId": f"s{n}",
                      "timestamp": at.isoformat()})
    clock = start + timedelta(days=1)
    step = timedelta(days=9) / EVENTS
    count = 0
    while len(lines) < EVENTS:
        count += 1
        clock += step
        if rng.random() < 0.05 and lines:
            lines.append(dict(rng.choice(lines[-500:])))  # a resend: same messageId, same content
            continue
        name = rng.choice(names)
        props: dict[str, Any] = {}
        if name == "Product Added":
            props = {"cartId": f"c{rng.randrange(2)}", "price": rng.choice([20, 150]), "name": "lamp"}
        elif name == "Order Completed":
            props = {"revenue": 50}
        lines.append({"type": "track", "userId": f"u{rng.randrange(users)}", "event": name, "properties": props,
                      "messageId": f"e{count}", "timestamp": clock.isoformat()})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def ingest(url: str, stream: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "JOURNEY_DATABASE_URL": url}
    return subprocess.Popen([sys.executable, "-m", "adapters.cli", "ingest", str(stream), "--clock", "event",
                             "--batch", "250", "--workspace", str(WORKSPACE)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def snapshot(url: str) -> dict[str, Any]:
    """Everything the engine knows, in a comparable form."""
    from adapters.storage.sql import SqlStore, processed_t
    from journey_engine import codec
    from journey_engine.compiler import load_workspace

    defaults = load_workspace(WORKSPACE).metrics.defaults
    store = SqlStore(url, defaults=defaults)
    try:
        profiles = {p.user_id: codec.encode(p, defaults) for p in store.all_profiles()}
        outbox = [(r["key"], r["status"], r["payload"]) for r in store.outbox()]
        with store.engine.connect() as conn:
            import sqlalchemy as sa

            from adapters.storage.sql import counts_t, history_t, trace_t

            processed = sorted(r[0] for r in conn.execute(sa.select(processed_t.c.message_id)))
            records = [r[0] for r in conn.execute(sa.select(trace_t.c.body).where(trace_t.c.kind != "duplicate")
                                                  .order_by(trace_t.c.id))]
            counts = sorted(tuple(r) for r in conn.execute(sa.select(counts_t)))
            h = history_t.c
            history = sorted(tuple(r) for r in conn.execute(sa.select(h.user_id, h.segment, h.entered_at, h.left_at)))
        return {"profiles": profiles, "outbox": outbox, "processed": processed, "bandit": store.bandit(),
                "trace": records, "state_counts": counts, "segment_history": history}
    finally:
        store.close()


def committed(url: str) -> int:
    """messageIds committed so far (0 before the schema exists)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM processed")).scalar_one())
    except sa.exc.DBAPIError:
        return 0
    finally:
        engine.dispose()


def crash_and_replay(url: str, stream: Path, seed: int, distinct: int) -> list[int]:
    """Kill the ingesting process four times, each once it has committed a random number of new events
    (so every kill lands mid-stream, between or inside commits), then let it finish.
    Returns the committed count at each kill."""
    rng = random.Random(seed)
    at_kill = []
    for _ in range(4):
        before = committed(url)
        goal = before + rng.randint(250, max(251, (distinct - before) // 3))
        proc = ingest(url, stream)
        while proc.poll() is None and committed(url) < goal:
            time.sleep(rng.uniform(0.01, 0.05))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            at_kill.append(committed(url))
        proc.communicate()
    proc = ingest(url, stream)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr.decode()
    return at_kill


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "events.jsonl"
    make_stream(path)
    return path


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sigkill_at_random_moments_loses_nothing_and_repeats_nothing(kind: str, stream: Path,
                                                                      tmp_path: Path) -> None:
    """Final profiles, journey states, timers, outbox, dedupe and trace equal those of an uninterrupted run."""
    if kind == "sqlite":
        clean, crashed = f"sqlite:///{tmp_path / 'clean.db'}", f"sqlite:///{tmp_path / 'crashed.db'}"
    else:
        base = postgres_or_skip()
        clean, crashed = base, base.rsplit("/", 1)[0] + "/journey_crash"
        _recreate_database(base, "journey_crash")
    proc = ingest(clean, stream)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr.decode()
    expected = snapshot(clean)
    distinct = len(expected["processed"])
    kills = crash_and_replay(crashed, stream, seed=3, distinct=distinct)
    assert len(kills) >= 3, f"the process finished before it could be killed ({kills}): make the stream longer"
    assert all(0 < n < distinct for n in kills), kills
    actual = snapshot(crashed)
    assert len(expected["profiles"]) == 2_000
    assert len(expected["outbox"]) > 1_000
    for part in ("processed", "bandit", "outbox", "profiles", "trace", "state_counts", "segment_history"):
        assert actual[part] == expected[part], part


def _recreate_database(base: str, name: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
