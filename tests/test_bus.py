"""The bus (SPEC §9): the wire format, partition routing, leases and their fencing on PostgreSQL, and a
`serve --bus` front with bus workers on a private NATS JetStream server giving the profiles a
single-process ingest gives. The helpers here (a private database, a NATS server or cluster started on
loopback ports, profile shapes) are shared with tests/test_bus_chaos.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from adapters.bus.leases import FencedStore, LeaseLost, Leases
from adapters.bus.publisher import BusPublisher
from adapters.bus.stream import (
    MESSAGE_BYTES,
    BusConfig,
    decode,
    encode_erase,
    encode_events,
    ensure_stream,
    grouped,
    route,
    with_id,
)
from adapters.service.settings import Settings
from adapters.service.worker import BusWorker
from adapters.storage.sql import SqlStore
from journey_engine.compiler import load_workspace
from journey_engine.engine import Engine
from journey_engine.events import Event
from journey_engine.ports import Batch, partition
from journey_engine.profile import Profile
from journey_engine.runtime import MemoryStore, Runtime

from .conftest import POSTGRES_URL, free_port

ROOT = Path(__file__).parent.parent
WORKSPACE = ROOT / "tests" / "workspaces" / "basic"
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


# --- helpers shared with the chaos test -----------------------------------------------------------

@pytest.fixture
def bus_database() -> Iterator[str]:
    """A PostgreSQL database of this test's own (others' tests share the `test` one), dropped after."""
    name = f"journey_bus_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


class NatsCluster:
    """`nats-server` nodes with JetStream on loopback ports, in a cluster when more than one."""

    def __init__(self, folder: Path, nodes: int) -> None:
        self.folder, self.nodes = folder, nodes
        self.ports = [free_port() for _ in range(nodes)]
        self.routes = [free_port() for _ in range(nodes)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * nodes

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.ports)

    def start(self, node: int | None = None) -> None:
        for i in range(self.nodes) if node is None else [node]:
            args = [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.ports[i]), "-sd", str(self.folder / f"n{i}"),
                    "-n", f"n{i}"]
            if self.nodes > 1:
                args += ["--cluster_name", "journey", "--cluster", f"nats://127.0.0.1:{self.routes[i]}",
                         "--routes", ",".join(f"nats://127.0.0.1:{r}" for r in self.routes)]
            with (self.folder / f"n{i}.log").open("ab") as log:  # the child keeps its own descriptor
                self.procs[i] = subprocess.Popen(args, stdout=log, stderr=log)
        for i in range(self.nodes) if node is None else [node]:
            assert wait_for(lambda i=i: _listening(self.ports[i]), 20), f"nats-server {i} did not start"

    def kill(self, node: int) -> None:
        proc = self.procs[node]
        if proc is not None:
            proc.kill()
            proc.wait()
            self.procs[node] = None

    def stop(self) -> None:
        for i in range(self.nodes):
            proc = self.procs[i]
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.kill(i)
                self.procs[i] = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsCluster]:
    """One private JetStream server on a loopback port."""
    cluster = NatsCluster(tmp_path, 1)
    cluster.start()
    yield cluster
    cluster.stop()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(condition: Callable[[], bool], seconds: float, every: float = 0.05) -> bool:
    """Look at `condition` until it holds (True) or `seconds` pass (False): what it waits on is in
    another process or thread, which tells nobody."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def shape(profile: Profile) -> dict[str, Any]:
    """What a profile is, without the wall-clock times of when it was applied: traits, metrics,
    segments, and each journey instance's state."""
    return {"traits": profile.traits, "metrics": dict(profile.metrics), "segments": sorted(profile.segments),
            "journeys": sorted((i.journey, str(i.key), i.state) for i in profile.instances.values())}


def reference(events: list[Event], now: datetime) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The profiles (shapes) and outbox rows of a single-process ingest of `events` at `now`."""
    store = MemoryStore(keep=True)
    Runtime(Engine(load_workspace(WORKSPACE)), store).process(events, now)
    return {user: shape(p) for user, p in store.items()}, store.outbox()


def stored(url: str, users: list[str]) -> dict[str, dict[str, Any]]:
    compiled = load_workspace(WORKSPACE)
    store = SqlStore(url, defaults=dict(compiled.metrics.defaults), upgrade=False)
    try:
        return {user: shape(p) for user, p in store.load(users).items()}
    finally:
        store.close()


def stream_name() -> str:
    return f"T{uuid.uuid4().hex[:10].upper()}"


# --- the wire format and routing -------------------------------------------------------------------

def test_an_event_crosses_the_bus_unchanged() -> None:
    """An event encoded for the bus decodes to an equal event, its ISO dates in traits and properties
    (nested too) still datetimes, its messageId and alias fields kept; a message of one event has its
    messageId as Nats-Msg-Id, and a bare event (the format before events were grouped) is still read."""
    at = datetime(2026, 1, 5, 9, 30, 15, 123456, tzinfo=UTC)
    event = Event(type="alias", user_id="u/1?#", previous_id="anon-7", timestamp=at, message_id="m-1",
                  traits={"email": "a@b.c", "trial_ends_at": at + timedelta(days=3), "tags": ["x", {"n": 2}]},
                  properties={"price": 12.5, "when": {"at": at}, "big": 2**40})
    [(data, msg_id)] = encode_events([event])
    assert decode(data) == [event] and msg_id == "m-1"
    bare = orjson.dumps({"type": "alias", "user": "u/1?#", "at": at, "name": None, "properties": event.properties,
                         "traits": event.traits, "id": "m-1", "previous": "anon-7", "backfill": False})
    assert decode(bare) == [event]
    assert decode(encode_erase("u/1?#")) == "u/1?#"


def test_a_requests_events_of_one_partition_travel_as_few_messages_in_order() -> None:
    """One message for a partition's events of a request, split only past `MESSAGE_BYTES`, each with a
    Nats-Msg-Id that a retry of the same request repeats and another set of events does not."""
    at = datetime(2026, 1, 5, tzinfo=UTC)
    events = [Event(type="track", user_id="u1", name="x", timestamp=at, message_id=f"m-{i}",
                    properties={"blob": "z" * 1000}) for i in range(600)]
    messages = encode_events(events)
    assert len(messages) == 3 and all(len(data) <= MESSAGE_BYTES for data, _ in messages)
    assert [e for data, _ in messages for e in decode(data)] == events
    assert encode_events(events) == messages  # a retried request: the same ids
    assert len({msg_id for _, msg_id in messages}) == 3
    assert encode_events(events[:10])[0][1] != encode_events(events[1:11])[0][1]
    groups = grouped([events[0], Event(type="track", user_id="u2", name="y", timestamp=at, message_id="n"),
                      events[1]], 16)
    assert groups[partition("u1", 16)][:2] == events[:2]


def test_an_event_without_message_id_gets_one_before_it_is_published() -> None:
    """An event sent without messageId is given one (so a redelivery of it is recognised); one with a
    messageId keeps it."""
    at = datetime(2026, 1, 5, tzinfo=UTC)
    given = with_id(Event(type="track", user_id="u1", name="x", timestamp=at))
    assert given.message_id is not None and given.message_id.startswith("bus-")
    assert with_id(given) is given


def test_events_go_to_their_users_partition_and_an_alias_to_the_new_ids() -> None:
    """Each event goes to its user's partition (the CRC-32 of `ports.partition`); an alias and the later
    events of the request naming its previous id go to the new id's partition."""
    at = datetime(2026, 1, 5, tzinfo=UTC)
    anon, known = "anon-1", "user-9"
    assert partition(anon, 16) != partition(known, 16)
    events = [Event(type="track", user_id=anon, name="a", timestamp=at),
              Event(type="alias", user_id=known, previous_id=anon, timestamp=at),
              Event(type="track", user_id=anon, name="b", timestamp=at)]
    assert route(events, 16) == [partition(known, 16)] * 3
    assert route(events[:1], 16) == [partition(anon, 16)]


def test_a_new_owner_reads_on_from_the_previous_owners_acknowledgements(nats_server: NatsCluster) -> None:
    """`take_consumer`: the new owner's consumer starts after what the previous owner of that partition
    acknowledged, the previous one is deleted, and the consumers of other partitions are left alone."""
    import asyncio

    from adapters.bus.stream import connect, pull, take_consumer

    config = BusConfig(nats_server.url, partitions=16)

    async def scenario() -> tuple[list[bytes], list[str]]:
        client, js = await connect(config, "test")
        await ensure_stream(js, config)
        for part in (1, 10):
            for n in range(3):
                await js.publish(config.subject(part), f"{part}-{n}".encode())
        first = await take_consumer(client, js, config, 1, token=1)
        other = await take_consumer(client, js, config, 10, token=1)
        got: list[Any] = []
        await pull(client, config, first, 2, got.append, lambda: len(got) < 2)
        await got[1].ack()  # the first owner acknowledged two of partition 1's three messages
        second = await take_consumer(client, js, config, 1, token=2)
        again: list[Any] = []
        await pull(client, config, second, 1, again.append, lambda: not again)
        names = sorted(c.name for c in await js.consumers_info(config.stream))
        await client.close()
        assert second != first and other in names
        return [m.data for m in again], names

    data, names = asyncio.run(scenario())
    assert data == [b"1-2"]
    assert names == sorted([config.durable(1) + "_t2", config.durable(10) + "_t1"])


# --- leases and fencing ----------------------------------------------------------------------------

def _store(url: str) -> FencedStore:
    return FencedStore(url, defaults=dict(load_workspace(WORKSPACE).metrics.defaults))


Workers = tuple[FencedStore, FencedStore]


@pytest.fixture
def two_stores(bus_database: str) -> Iterator[Workers]:
    """The stores of two workers on one private database, closed after."""
    first, second = _store(bus_database), _store(bus_database)
    yield first, second
    first.close()
    second.close()


def test_workers_started_together_on_a_new_database_all_start(bus_database: str) -> None:
    """The lease tables are made by the first worker; four starting at once on a new database race to make
    them, and none of them fails (one did in `journey bench --bus --workers 2`)."""
    import threading

    stores = [_store(bus_database) for _ in range(4)]
    start = threading.Barrier(len(stores))
    failed: list[BaseException] = []

    def begin(store: FencedStore, name: str) -> None:
        start.wait()
        try:
            Leases(store, "S", 4, name)
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=begin, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert failed == []
    finally:
        for store in stores:
            store.close()


def test_a_worker_dispatches_only_the_sends_of_the_partitions_it_holds(two_stores: Workers) -> None:
    """Sends belong to their user's partition, as timers do: each of two workers claims only its own, and a
    partition handed over brings its pending sends with it."""
    from journey_engine.engine import SendMessage

    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    users = [f"u{n}" for n in range(12)]
    first, second = two_stores
    a, b = Leases(first, "S", 4, "a"), Leases(second, "S", 4, "b")
    first.leases, second.leases = a, b
    a.acquire(2)
    b.acquire(2)
    assert set(a.tokens()) | set(b.tokens()) == {0, 1, 2, 3}
    sends = [SendMessage(user=u, journey="j", key=None, state="s", message="m", channel="email", at=now,
                         idempotency_key=f"k-{u}", locale=None, context={}) for u in users]
    first.commit(Batch(sends=sends))
    later = now + timedelta(seconds=1)
    mine = {u for u in users if partition(u, 4) in a.tokens()}
    assert 0 < len(mine) < len(users)
    assert {r["user_id"] for r in first.claim_outbox(later, 100)} == mine
    assert {r["user_id"] for r in second.claim_outbox(later, 100)} == set(users) - mine
    b.leave()  # b stops: a takes its partitions, and with them b's sends once their claims run out
    a.acquire(2)
    assert {r["user_id"] for r in first.claim_outbox(later + timedelta(minutes=5), 100)} == set(users)


def test_a_worker_whose_partition_was_taken_over_cannot_commit(two_stores: Workers) -> None:
    """Once another worker took a partition over (the lease had expired), the first worker's commit
    raises LeaseLost and writes nothing; the new owner's commit goes through."""
    clock = [1000.0]
    first, second = two_stores
    a = Leases(first, "S", 4, "a", wall=lambda: clock[0])
    b = Leases(second, "S", 4, "b", wall=lambda: clock[0])
    first.leases, second.leases = a, b
    assert a.acquire(4) == {0: 1, 1: 1, 2: 1, 3: 1}
    assert b.acquire(4) == {}  # held and not expired
    clock[0] += 11  # a stopped renewing
    assert b.acquire(1) == {0: 2}
    profile = Engine(load_workspace(WORKSPACE)).new_profile("u1")
    with pytest.raises(LeaseLost, match=r"\[0\]"):
        first.commit(Batch(profiles={"u1": profile}))
    assert first.load(["u1"]) == {}
    assert a.tokens() == {1: 1, 2: 1, 3: 1}  # it knows what it lost
    second.commit(Batch(profiles={"u1": profile}))
    assert set(second.load(["u1"])) == {"u1"}


def test_a_commit_in_progress_is_not_overtaken(two_stores: Workers) -> None:
    """While a worker's commit holds its partitions' fence, another worker cannot take them even though
    the lease has expired; right after the commit it can."""
    clock = [1000.0]
    first, second = two_stores
    a = Leases(first, "S", 2, "a", wall=lambda: clock[0])
    b = Leases(second, "S", 2, "b", wall=lambda: clock[0])
    a.acquire(2)
    clock[0] += 11
    with first.engine.begin() as conn:
        a.fence(conn)  # what a commit does first, in its own transaction
        assert b.acquire(2) == {}
    assert b.acquire(2) == {0: 2, 1: 2}


def test_renewal_keeps_a_lease_and_reports_one_taken_over(two_stores: Workers) -> None:
    """A renewed lease outlives its first expiry; a lease another worker took is reported lost by the
    next renewal, and the fair share counts the workers seen alive."""
    clock = [1000.0]
    first, second = two_stores
    a = Leases(first, "S", 4, "a", wall=lambda: clock[0])
    b = Leases(second, "S", 4, "b", wall=lambda: clock[0])
    a.acquire(4)
    assert a.renew() == []
    assert a.share() == 4
    clock[0] += 8
    assert a.renew() == []
    clock[0] += 8  # 16 s after the acquire, 8 after the renewal: still held
    assert b.acquire(4) == {}
    b.renew()
    assert a.share() == 2 and b.share() == 2
    clock[0] += 11
    assert b.acquire(2) == {0: 2, 1: 2}
    assert a.renew() == [0, 1]
    assert a.tokens() == {2: 1, 3: 1}


# --- the whole path on a private NATS server ---------------------------------------------------------

def _events(users: int, now: datetime) -> list[Event]:
    """Each user: identify with an email, Signed Up, some features, some an order; users interleaved."""
    per_user = []
    for n in range(users):
        u = f"u{n}"
        mine = [Event(type="identify", user_id=u, traits={"email": f"{u}@example.com", "timezone": "UTC",
                                                          "plan": "free"}, timestamp=now, message_id=f"{u}-0"),
                Event(type="track", user_id=u, name="Signed Up", timestamp=now, message_id=f"{u}-1")]
        mine += [Event(type="track", user_id=u, name="Feature Used", timestamp=now, message_id=f"{u}-f{k}")
                 for k in range(n % 5)]
        if n % 3 == 0:
            mine.append(Event(type="track", user_id=u, name="Order Completed", properties={"revenue": n},
                              timestamp=now, message_id=f"{u}-o"))
        per_user.append(mine)
    out: list[Event] = []
    while any(per_user):
        for mine in per_user:
            if mine:
                out.append(mine.pop(0))
    return out


def test_published_events_give_the_profiles_of_a_single_process_ingest(bus_database: str,
                                                                       nats_server: NatsCluster) -> None:
    """Events published in requests through `BusPublisher` and applied by two bus workers end up as the
    profiles one process gives; a request published twice (an SDK retry) changes nothing; an erasure
    published behind a user's events removes that user."""
    now = datetime.now(UTC)
    events = _events(60, now)
    config = BusConfig(nats_server.url, stream=stream_name(), prefix="t", partitions=4)
    compiled = load_workspace(WORKSPACE)
    stores = [_store(bus_database) for _ in range(2)]
    workers = [BusWorker(compiled, s, config, Settings(), name=f"w{i}") for i, s in enumerate(stores)]
    front = SqlStore(bus_database, upgrade=False)
    publisher = BusPublisher(config, front)
    try:
        publisher.start()
        for worker in workers:
            worker.start()
        for start in range(0, len(events), 25):
            assert publisher.submit(events[start:start + 25]).result(timeout=30) == []
        assert publisher.submit(events[:25]).result(timeout=30) == []  # the same request again
        ids = [e.message_id for e in events]
        assert wait_for(lambda: len(front.seen(ids)) == len(ids), 60)
        expected, _ = reference(events, now)
        users = sorted(expected)
        assert stored(bus_database, users) == expected
        assert publisher.erase("u7").result(timeout=60) is True
        assert stored(bus_database, ["u7"]) == {}
        assert sorted(p for w in workers for p in w.leases.tokens()) == [0, 1, 2, 3]  # type: ignore[union-attr]
    finally:
        for worker in workers:
            worker.stop()
        publisher.stop()
        front.close()
        for store in stores:
            store.close()


def test_a_worker_follows_a_deployment_another_process_made(tmp_path: Path, bus_database: str,
                                                          nats_server: NatsCluster) -> None:
    """Issue 18: a worker running v1 picks up v2 within seconds of another process deploying it, even with
    v1 still in its own files: new entrants take v2, a live user stays pinned to v1."""
    from journey_engine.deployment import adopt, deploy

    from .test_deploy import TRIAL, workspace

    v1 = workspace(tmp_path, "v1")
    renamed = {"waiting": TRIAL["states"]["wait"], "remind": TRIAL["states"]["remind"], "done": {"final": True}}
    v2 = workspace(tmp_path, "v2", initial="waiting", states=renamed)
    deployer = SqlStore(bus_database, defaults=dict(v1.metrics.defaults))
    assert deploy(v1, deployer).number == 1
    store = FencedStore(bus_database, defaults=dict(v1.metrics.defaults))
    config = BusConfig(nats_server.url, stream=stream_name(), prefix="t", partitions=2)
    worker = BusWorker(adopt(v1, store), store, config, Settings(), name="w", files=lambda: v1)
    publisher = BusPublisher(config, deployer)
    now = datetime.now(UTC)

    def signed_up(user: str) -> None:
        event = Event(type="track", user_id=user, name="Signed Up", timestamp=now, message_id=f"{user}-1")
        assert publisher.submit([event]).result(timeout=30) == []
        assert wait_for(lambda: deployer.seen([f"{user}-1"]) == {f"{user}-1"}, 30)

    def instance(user: str) -> tuple[str, str]:
        (inst,) = deployer.load([user])[user].instances.values()
        return inst.state, inst.version

    try:
        publisher.start()
        worker.start()
        signed_up("u1")
        assert deploy(v2, deployer).number == 2  # another process (a `serve --reload`) deploys v2
        assert wait_for(lambda: worker.deployment == 2, 10)
        signed_up("u2")
        assert instance("u2") == ("waiting", v2.journeys["trial"].version)
        assert instance("u1") == ("wait", v1.journeys["trial"].version)
    finally:
        worker.stop()
        publisher.stop()
        store.close()
        deployer.close()


# --- the benchmark --------------------------------------------------------------------------------

def test_the_session_mix_comes_in_bursts_minutes_apart_with_days_between() -> None:
    """The default bench mix: events in time order, every user identifying and signing up first, most
    gaps between a user's consecutive events minutes long and some of days."""
    from adapters.bench import session_stream

    stream = list(session_stream(200, 6000, seed=3, span=timedelta(days=30)))
    assert len(stream) == 6000
    assert [e.timestamp for e in stream] == sorted(e.timestamp for e in stream)
    by_user: dict[str, list[Event]] = {}
    for event in stream:
        by_user.setdefault(event.user_id, []).append(event)
    assert len(by_user) == 200
    assert all(mine[0].type == "identify" and mine[1].name == "Signed Up" for mine in by_user.values())
    gaps = [(b.timestamp - a.timestamp).total_seconds() for mine in by_user.values() for a, b in pairwise(mine)]
    minutes = sum(1 for g in gaps if g <= 300) / len(gaps)
    days = sum(1 for g in gaps if g >= 86400) / len(gaps)
    assert minutes > 0.7 and days > 0.05


def test_the_bus_bench_measures_the_bus_beside_the_in_memory_engine(bus_database: str,
                                                                   nats_server: NatsCluster) -> None:
    """`bench --bus`: every event committed by the bus workers, the throughput beside the in-memory
    engine's, ack latencies at the offered rate; its stream and schema are gone afterwards."""
    import asyncio

    from adapters.bench_bus import run_bus_bench
    from adapters.bus.stream import connect

    report = run_bus_bench(load_workspace(ROOT / "journeys"), ROOT / "journeys", bus=nats_server.url,
                           database=bus_database, workers=1, users=100, events=1500, seed=1,
                           span=timedelta(days=30), mix="session", rate=500.0, seconds=1.0, partitions=4)
    assert report["events"] == 1500 and report["workers"] == 1 and report["partitions"] == 4
    assert report["events_per_s"] > 0 and report["memory_events_per_s"] > 0 and report["bus_vs_memory"] > 0
    assert 0 < report["ack_p50_ms"] <= report["ack_p99_ms"]

    async def streams() -> list[str]:
        client, js = await connect(BusConfig(nats_server.url), "test")
        names = [s.config.name for s in await js.streams_info()]
        await client.close()
        return names

    assert not [n for n in asyncio.run(streams()) if n.startswith("JOURNEY_BENCH")]
    engine = sa.create_engine(bus_database)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM information_schema.schemata "
                                    "WHERE schema_name LIKE 'journey_bench_%'")).scalar_one() == 0
    engine.dispose()


# --- the commands and the front --------------------------------------------------------------------

def test_a_worker_needs_postgresql() -> None:
    """`journey worker` on the SQLite default is refused with a one-line reason (exit 2): leases and
    fencing need PostgreSQL."""
    from typer.testing import CliRunner

    from adapters.cli import app

    result = CliRunner().invoke(app, ["worker", "--bus", "nats://127.0.0.1:1", "--database", "sqlite:///x.db"])
    assert result.exit_code == 2
    assert "workers share PostgreSQL" in result.output


def test_healthz_names_the_bus_when_it_is_down(tmp_path: Path) -> None:
    """`serve --bus` whose NATS is unreachable: /healthz is 503 naming the bus, the store being fine."""
    from fastapi.testclient import TestClient

    from adapters.sources.http_api import create_app

    compiled = load_workspace(WORKSPACE)
    store = SqlStore(f"sqlite:///{tmp_path / 'front.db'}", defaults=dict(compiled.metrics.defaults))
    publisher = BusPublisher(BusConfig("nats://127.0.0.1:1"), store)
    try:
        with TestClient(create_app(compiled, store, host=publisher, scheduler=False, start_worker=False)) as client:
            answer = client.get("/healthz")
        assert answer.status_code == 503
        body = answer.json()
        assert body["down"] == {"bus": "not connected to NATS"} and body["message"] == "bus: not connected to NATS"
    finally:
        store.close()


def test_a_killed_workers_partitions_are_taken_over_within_30_seconds(tmp_path: Path, bus_database: str,
                                                                      nats_server: NatsCluster) -> None:
    """Two `journey worker` processes share the partitions; after one is SIGKILLed the other holds them all
    within 30 s and applies an event published to one of the dead worker's partitions."""
    import signal
    import sys

    stream = stream_name()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JOURNEY_DATABASE_URL": bus_database, "JOURNEY_BUS_URL":
           nats_server.url, "JOURNEY_BUS_STREAM": stream, "JOURNEY_BUS_PREFIX": stream.lower(),
           "JOURNEY_BUS_PARTITIONS": "4", "JOURNEY_WORKSPACE": str(WORKSPACE)}
    procs = []
    for name in ("a", "b"):
        with (tmp_path / f"{name}.log").open("ab") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "adapters.cli", "worker", "--port", str(free_port()),
                                           "--name", name], cwd=ROOT, env=env, stdout=log, stderr=log))
    engine = sa.create_engine(bus_database)

    def owners() -> dict[int, str]:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT part, owner FROM bus_leases WHERE stream = :s AND expires_at > :now"),
                                {"s": stream, "now": time.time()}).all()
        return {int(p): str(o) for p, o in rows if o is not None}

    def tables() -> bool:
        return bool(sa.inspect(engine).has_table("bus_leases")) and len(owners()) == 4

    front: SqlStore | None = None  # opened once the workers made the schema
    try:
        assert wait_for(tables, 60), "the workers did not lease the partitions"
        assert wait_for(lambda: sorted(owners().values()) == ["a", "a", "b", "b"], 30), owners()
        dead = [p for p, o in owners().items() if o == "a"]
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        killed = time.monotonic()
        assert wait_for(lambda: set(owners().values()) == {"b"} and len(owners()) == 4, 30), owners()
        taken_in = time.monotonic() - killed
        user = next(f"u{n}" for n in range(1000) if partition(f"u{n}", 4) == dead[0])
        front = SqlStore(bus_database, upgrade=False)
        publisher = BusPublisher(BusConfig(nats_server.url, stream=stream, prefix=stream.lower(), partitions=4), front)
        publisher.start()
        try:
            publisher.submit([Event(type="identify", user_id=user, traits={"plan": "pro"}, timestamp=datetime.now(UTC),
                                    message_id="after-kill")]).result(timeout=30)
            assert wait_for(lambda: front.seen(["after-kill"]) == {"after-kill"}, 30)
        finally:
            publisher.stop()
        assert front.load([user])[user].traits == {"plan": "pro"}
        assert taken_in < 30
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
        if front is not None:
            front.close()
        engine.dispose()
