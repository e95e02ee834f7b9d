"""`journey serve --workers 2`: the engine in two processes, each owning a partition of the users, on a
real SQLite file and the real PostgreSQL; what one engine process losing its life does to requests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from journey_engine.ports import partition
from tests.conftest import Inbox, free_port, postgres_or_skip
from tests.test_serve_sdks import wait_until_up

ROOT = Path(__file__).parent.parent
ADMIN = "admin-secret"


class Served:
    def __init__(self, url: str, database: str, proc: subprocess.Popen[bytes]) -> None:
        self.url, self.database, self.proc = url, database, proc

    def engines(self) -> list[int]:
        """The pids of the engine processes (the server's children started by multiprocessing's spawn)."""
        found = []
        for task in os.listdir(f"/proc/{self.proc.pid}/task"):
            with open(f"/proc/{self.proc.pid}/task/{task}/children") as f:
                for pid in f.read().split():
                    with open(f"/proc/{pid}/cmdline", "rb") as cmd:
                        if b"spawn_main" in cmd.read():
                            found.append(int(pid))
        return sorted(found)

    def count(self, sql: str) -> int:
        engine = sa.create_engine(self.database)
        try:
            with engine.connect() as conn:
                return int(conn.execute(sa.text(sql)).scalar_one())
        finally:
            engine.dispose()


def _serve(database: str, cwd: Path, workspace: Path = ROOT / "journeys",
           **env: str) -> Iterator[Served]:
    port = free_port()
    env = {**os.environ, "JOURNEY_ADMIN_KEY": ADMIN, "JOURNEY_DATABASE_URL": database, **env}
    proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--port", str(port), "--workspace",
                             str(workspace), "--workers", "2"], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url, proc)
    yield Served(url, database, proc)
    proc.terminate()
    _, stderr = proc.communicate(timeout=30)
    assert b"Traceback" not in stderr, stderr.decode()


@pytest.fixture(params=["sqlite", "postgres"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    database = f"sqlite:///{tmp_path / 'serve.db'}" if request.param == "sqlite" else postgres_or_skip()
    yield from _serve(database, ROOT)


def _batch(serial: int, users: range, now: str) -> dict[str, Any]:
    return {"batch": [{"type": "track", "userId": f"w{u}", "event": "Feature Used", "timestamp": now,
                       "messageId": f"m{serial}-{u}"} for u in users], "sentAt": now}


def test_every_user_s_events_are_committed_once_by_the_process_that_owns_them(served: Served) -> None:
    """Requests mixing users of both partitions are answered after both parts commit; a resent batch
    changes nothing; an erasure reaches the user's own process."""
    assert len(served.engines()) == 2
    users = range(60)
    assert {partition(f"w{u}", 2) for u in users} == {0, 1}
    now = datetime.now(UTC).isoformat()
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for serial in range(5):
            assert client.post("/v1/batch", json=_batch(serial, users, now)).status_code == 200
        assert client.post("/v1/batch", json=_batch(0, users, now)).status_code == 200  # the SDK resent one
        admin = {"Authorization": f"Bearer {ADMIN}"}
        for u in (0, 1, 59):
            found = client.get(f"/v1/users/w{u}", headers=admin).json()
            assert found["metrics"]["feature_uses_7d"] == 5
        assert client.delete("/v1/users/w7", headers=admin).json()["success"] is True
        assert client.get("/v1/users/w7", headers=admin).status_code == 404
        # an anonymous id and the user it becomes, owned by different processes, in one request
        anon = next(f"anon{n}" for n in range(100) if partition(f"anon{n}", 2) != partition("known", 2))
        merge = [{"type": "track", "anonymousId": anon, "event": "Feature Used", "messageId": "a1"},
                 {"type": "alias", "userId": "known", "previousId": anon, "messageId": "a2"},
                 {"type": "track", "userId": "known", "event": "Feature Used", "messageId": "a3"}]
        assert client.post("/v1/batch", json={"batch": [{**m, "timestamp": now} for m in merge]}).status_code == 200
        assert client.get(f"/v1/users/{anon}", headers=admin).json()["user_id"] == "known"
        assert client.get("/v1/users/known", headers=admin).json()["metrics"]["feature_uses_7d"] == 2
        metrics = client.get("/metrics").text
    assert served.count("SELECT count(*) FROM processed") == 5 * 60 - 5 + 3  # w7's ids went with w7
    assert served.count("SELECT count(*) FROM profiles") == 59 + 1  # `known`, with the anonymous id merged in
    accepted = next(line for line in metrics.splitlines() if line.startswith("journey_events_accepted_total"))
    assert float(accepted.split()[1]) == 6 * 60 + 3  # counted in the engine processes, reported here


def test_a_killed_engine_process_loses_no_acknowledged_event_and_is_replaced(tmp_path: Path) -> None:
    """SIGKILL one engine process while requests flow: each request is answered 200 or 503; retried until
    200 as an SDK does, every event is committed exactly once, and a new process takes the partition."""
    served = _serve(f"sqlite:///{tmp_path / 'serve.db'}", ROOT)
    server = next(served)
    first = server.engines()
    now = datetime.now(UTC).isoformat()
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for serial in range(40):
            if serial == 10:
                os.kill(first[0], signal.SIGKILL)
            while True:
                status = client.post("/v1/batch", json=_batch(serial, range(50), now)).status_code
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    break
                assert status == 503
                time.sleep(0.2)
    assert server.count("SELECT count(*) FROM processed") == 40 * 50
    assert statuses[200] == 40
    replaced = server.engines()
    assert len(replaced) == 2 and first[0] not in replaced
    server.proc.terminate()
    server.proc.communicate(timeout=30)


def test_each_engine_process_fires_its_own_users_timers_and_every_mail_arrives_once(
        tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    """A 3-second timer for users of both processes: each process claims its own users' wake-ups, the
    server process dispatches the sends to a real SMTP server, and every user gets the mail once."""
    inbox, smtp_port = smtp
    served = _serve(f"sqlite:///{tmp_path / 'serve.db'}", ROOT, ROOT / "tests" / "workspaces" / "e2e",
                    JOURNEY_SMTP_URL=f"smtp://127.0.0.1:{smtp_port}", JOURNEY_EMAIL_FROM="hello@example.com",
                    JOURNEY_TICK_SECONDS="0.5")
    server = next(served)
    users = [f"t{n}" for n in range(8)]
    assert {partition(u, 2) for u in users} == {0, 1}
    batch = [m for u in users for m in (
        {"type": "identify", "userId": u, "messageId": f"i-{u}", "traits": {"email": f"{u}@example.com"}},
        {"type": "track", "userId": u, "event": "Signed Up", "messageId": f"s-{u}"})]
    assert httpx.post(f"{server.url}/v1/batch", json={"batch": batch}, timeout=30).status_code == 200
    deadline = time.monotonic() + 30
    while len(inbox.messages) < len(users) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # three more ticks: nothing is sent twice
    assert sorted(m["To"] for m in inbox.messages) == sorted(f"{u}@example.com" for u in users)
    server.proc.terminate()
    server.proc.communicate(timeout=30)
