"""Chaos on the bus (SPEC §9): a 3-node JetStream cluster on loopback ports (the stream with 3 replicas),
2 `journey serve --bus` and 3 `journey worker` processes on one PostgreSQL, a client sending events the
way the Segment SDK does (batches, the same messageIds on every retry, backoff on 429, 5xx and lost
connections, honouring Retry-After), a worker SIGKILLed every few seconds and started again, and one NATS
node killed and restarted once. Afterwards the profiles equal a single-process ingest of the same
events, every event was applied (once: the processed messageIds are unique and the counts match), and
every welcome email reached a real SMTP server, repeated at most once per worker kill (the outbox
contract: a kill repeats at most the send whose channel call was under way).

CI size: 4,000 events at ~100 events/s. `JOURNEY_BUS_CHAOS=long` (`make chaos`): 50,000 at ~400/s.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from adapters.bus.stream import BusConfig, connect, ensure_stream
from journey_engine.events import event_from_segment

from .conftest import Inbox, free_port
from .test_bus import (  # noqa: F401 (bus_database is a fixture: imported to be used)
    ROOT,
    WORKSPACE,
    NatsCluster,
    bus_database,
    reference,
    stored,
    wait_for,
)

SIZES = {"ci": (4000, 100.0), "long": (50_000, 400.0)}  # events, events/s offered
BATCH = 20  # events per request
KILL_EVERY = (2.0, 4.0)  # seconds between worker kills
PARTITIONS = 8


@dataclass
class Fleet:
    """The processes of the test, with their logs in `folder`."""

    folder: Path
    env: dict[str, str]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    serves: list[subprocess.Popen[bytes]] = field(default_factory=list)
    serve_ports: list[int] = field(default_factory=list)
    generation: int = 0

    def _start(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with (self.folder / log).open("ab") as out:
            return subprocess.Popen([sys.executable, "-m", "adapters.cli", *args], cwd=ROOT, env=self.env,
                                    stdout=out, stderr=out)

    def worker(self, index: int) -> subprocess.Popen[bytes]:
        self.generation += 1
        return self._start(["worker", "--port", str(free_port()), "--name", f"w{index}-{self.generation}"],
                           f"worker{index}.log")

    def serve(self) -> None:
        port = free_port()
        self.serves.append(self._start(["serve", "--port", str(port)], f"serve{len(self.serves)}.log"))
        self.serve_ports.append(port)

    def stop(self) -> None:
        for proc in [*self.workers, *self.serves]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()


def _messages(count: int, now: datetime, rng: random.Random) -> list[dict[str, Any]]:
    """Segment messages: each user identifies (an email, a zone where it is noon), signs up, then uses
    features, adds products, orders; users interleaved, each user's own in order."""
    offset = 12 - now.hour
    zone = f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"
    stamp = now.isoformat()
    users = max(1, count // 6)
    per_user: list[list[dict[str, Any]]] = []
    made = 0
    for n in range(users):
        u = f"user-{n}"
        mine = [{"type": "identify", "userId": u, "traits": {"email": f"{u}@example.com", "timezone": zone}},
                {"type": "track", "userId": u, "event": "Signed Up"}]
        for _ in range(rng.randint(1, 7)):
            name = rng.choice(["Feature Used", "Feature Used", "Product Added", "Page Viewed", "Order Completed"])
            props = {"cartId": f"c{rng.randint(1, 2)}", "price": rng.randint(5, 200)} if name == "Product Added" \
                else {"revenue": rng.randint(1, 99)} if name == "Order Completed" else {}
            mine.append({"type": "track", "userId": u, "event": name, "properties": props})
        per_user.append(mine)
        made += len(mine)
    out: list[dict[str, Any]] = []
    while any(per_user) and len(out) < count:
        for mine in rng.sample(per_user, len(per_user)):
            if mine and len(out) < count:
                out.append(mine.pop(0))
    for i, message in enumerate(out):
        message.update(messageId=f"chaos-{i}", timestamp=stamp)
    return out


class Client:
    """Sends the messages in batches at `rate`, each batch until it is accepted, as the Segment SDK retries:
    the same body (the same messageIds), exponential backoff with jitter, Retry-After honoured."""

    def __init__(self, ports: list[int], rate: float, rng: random.Random) -> None:
        self.ports, self.rate, self.rng = ports, rate, rng
        self.retries = 0
        self.sent = 0

    def send(self, messages: list[dict[str, Any]], stream: int, streams: int) -> None:
        """This sender's share: the users whose number modulo `streams` is `stream`, in order."""
        mine = [m for m in messages if int(m["userId"].split("-")[1]) % streams == stream]
        began = time.monotonic()
        with httpx.Client(timeout=30) as http:
            for start in range(0, len(mine), BATCH):
                batch = mine[start:start + BATCH]
                self._post(http, {"batch": batch}, start // BATCH)
                self.sent += len(batch)
                ahead = began + (start + len(batch)) * streams / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # the offered rate, as a real client's traffic

    def _post(self, http: httpx.Client, body: dict[str, Any], serial: int) -> None:
        attempt = 0
        while True:
            port = self.ports[(serial + attempt) % len(self.ports)]  # a load balancer's next pick
            try:
                answer = http.post(f"http://127.0.0.1:{port}/v1/batch", json=body)
                if answer.status_code == 200:
                    return
                assert answer.status_code in (429, 500, 502, 503, 504), answer.text
                wait = float(answer.headers.get("Retry-After", 0))
            except httpx.TransportError:
                wait = 0.0
            attempt += 1
            self.retries += 1
            time.sleep(max(wait, min(5.0, 0.1 * 2 ** attempt) * self.rng.uniform(0.5, 1.0)))


def _applied(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM processed WHERE message_id LIKE 'chaos-%'"))
                       .scalar_one())
    finally:
        engine.dispose()


def _undelivered(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM outbox WHERE status != 'delivered' "
                                            "AND channel = 'email'")).scalar_one())
    finally:
        engine.dispose()


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def _make_stream(url: str, name: str) -> None:
    client, js = await connect(BusConfig(url), "chaos-test")
    await ensure_stream(js, BusConfig(url, stream=name, prefix=name.lower(), partitions=PARTITIONS, replicas=3))
    await client.close()


def test_chaos_every_event_applied_once_and_every_email_sent(tmp_path: Path, bus_database: str,  # noqa: F811
                                                             smtp: tuple[Inbox, int]) -> None:
    """Workers SIGKILLed every few seconds and a NATS node killed and restarted during the ingest: the
    profiles equal a single-process ingest's, every event is applied once, every email is received,
    repeated at most once per kill."""
    events, rate = SIZES[os.environ.get("JOURNEY_BUS_CHAOS", "ci")]
    seed = int(os.environ.get("JOURNEY_CHAOS_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    inbox, smtp_port = smtp
    cluster = NatsCluster(tmp_path, 3)
    cluster.start()
    stream = f"CHAOS{seed}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JOURNEY_DATABASE_URL": bus_database,
           "JOURNEY_BUS_URL": cluster.url, "JOURNEY_BUS_STREAM": stream, "JOURNEY_BUS_PREFIX": stream.lower(),
           "JOURNEY_WORKSPACE": str(WORKSPACE), "JOURNEY_SMTP_URL": f"smtp://127.0.0.1:{smtp_port}",
           "JOURNEY_EMAIL_FROM": "hello@example.com", "JOURNEY_OUTBOX_LEASE_SECONDS": "2",
           "JOURNEY_TICK_SECONDS": "0.1"}
    fleet = Fleet(tmp_path, env)
    now = datetime.now(UTC)
    messages = _messages(events, now, rng)
    try:
        asyncio.run(_make_stream(cluster.url, stream))
        fleet.serve()
        fleet.serve()
        fleet.workers = [fleet.worker(i) for i in range(3)]
        assert wait_for(lambda: all(_healthy(p) for p in fleet.serve_ports), 60), "serve did not start"
        client = Client(fleet.serve_ports, rate, rng)
        senders = [threading.Thread(target=client.send, args=(messages, i, 2)) for i in range(2)]
        began = time.monotonic()
        for sender in senders:
            sender.start()
        kills, node_killed = 0, False
        while any(s.is_alive() for s in senders):
            time.sleep(rng.uniform(*KILL_EVERY))  # the chaos's own pace
            victim = rng.randrange(3)
            fleet.workers[victim].send_signal(signal.SIGKILL)
            fleet.workers[victim].wait()
            fleet.workers[victim] = fleet.worker(victim)
            kills += 1
            if not node_killed and client.sent > len(messages) // 3:
                node = rng.randrange(3)
                cluster.kill(node)
                time.sleep(3)  # a node down for a while, as a real outage
                cluster.start(node)
                node_killed = True
        sent_in = time.monotonic() - began
        for sender in senders:
            sender.join()
        assert wait_for(lambda: _applied(bus_database) == len(messages), 180, every=0.5), \
            f"{_applied(bus_database)} of {len(messages)} applied (seed {seed})"
        applied_in = time.monotonic() - began
        expected, sends = reference([event_from_segment(m, default_time=now) for m in messages], now)
        emails = [s for s in sends if s["channel"] == "email"]
        assert wait_for(lambda: _undelivered(bus_database) == 0 and len(inbox.messages) >= len(emails), 120,
                        every=0.5), f"{len(inbox.messages)} of {len(emails)} emails received (seed {seed})"
        assert stored(bus_database, sorted(expected)) == expected, f"seed {seed}"
        copies = Counter(m["Message-ID"] for m in inbox.messages)
        repeats = sum(n - 1 for n in copies.values())
        print(f"\n{len(messages)} events from {len(expected)} users, {kills} worker kills, 1 NATS node killed, "
              f"{client.retries} client retries; sent in {sent_in:.1f} s, all applied after {applied_in:.1f} s; "
              f"{len(copies)} emails, {repeats} received twice (seed {seed})")
        assert {m["To"] for m in inbox.messages} == {f"{s['user_id']}@example.com" for s in emails}
        assert len(copies) == len(emails)
        assert repeats <= kills, f"{repeats} emails received twice after {kills} kills (seed {seed})"
        assert kills >= 5 and node_killed
    finally:
        fleet.stop()
        cluster.stop()
