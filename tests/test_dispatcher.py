"""The outbox dispatcher (issue 4): retries with capped backoff, a dead letter after the last attempt,
outcomes in the trace, and a hard bounce fed back to the engine so the address is not mailed again.

The channel here is scripted (what a provider answers is the input under test); the real channels are
tested against real SMTP and HTTP servers in test_channels.py."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.scheduling.dispatcher import Dispatcher, RetryPolicy
from adapters.storage.sql import SqlStore
from journey_engine.compiler import CompiledWorkspace, load_workspace
from journey_engine.engine import Engine
from journey_engine.events import Event
from journey_engine.ports import Delivery, DeliveryResult
from journey_engine.runtime import Runtime

from .conftest import postgres_or_skip

COMPILED = load_workspace(Path(__file__).parent / "workspaces" / "basic")
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class ScriptedChannel:
    """Answers each send with the next result of its script (then `delivered`), and keeps what it got."""

    name = "email"

    def __init__(self, *script: DeliveryResult) -> None:
        self.script = list(script)
        self.got: list[Delivery] = []

    def send(self, delivery: Delivery) -> DeliveryResult:
        self.got.append(delivery)
        return self.script.pop(0) if self.script else DeliveryResult(status="delivered")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore(f"sqlite:///{tmp_path / 'd.db'}", defaults=dict(COMPILED.metrics.defaults))
    yield s
    s.close()


def setup(store: SqlStore, compiled: CompiledWorkspace = COMPILED) -> Runtime:
    """A runtime on the store with u1 signed up: welcome_email waits in the outbox."""
    runtime = Runtime(Engine(compiled), store, claim=100)
    runtime.process([Event(type="identify", user_id="u1", traits={"email": "u1@example.com"}, timestamp=T0),
                     Event(type="track", user_id="u1", name="Signed Up", timestamp=T0)], T0)
    return runtime


def sign_up(runtime: Runtime, users: list[str]) -> None:
    """Each user's welcome_email waits in the outbox."""
    runtime.process([e for u in users for e in (
        Event(type="identify", user_id=u, traits={"email": f"{u}@example.com"}, timestamp=T0),
        Event(type="track", user_id=u, name="Signed Up", timestamp=T0))], T0)


class Killed(BaseException):
    """What a kill looks like from inside: nothing after the channel call runs (no `except Exception` sees it)."""


class DyingChannel(ScriptedChannel):
    """Delivers, but the process dies during its `calls`-th call, after the provider took the message."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls = calls

    def send(self, delivery: Delivery) -> DeliveryResult:
        result = super().send(delivery)
        if len(self.got) == self.calls:
            raise Killed
        return result


def kinds(store: SqlStore) -> list[str]:
    return [r["kind"] for r in store.trace("u1") if r["kind"] in ("message_delivered", "message_failed")]


def test_a_transient_failure_is_retried_after_a_backoff_then_delivered(store: SqlStore) -> None:
    """`retry` waits base * 2^(n-1) (with jitter) and tries again with the same idempotency key."""
    runtime, clock = setup(store), Clock()
    channel = ScriptedChannel(DeliveryResult(status="retry", detail="503"))
    dispatcher = Dispatcher(store, runtime.engine, {"email": channel}, clock=clock,
                            retry=RetryPolicy(base=30, jitter=0.2), rng=random.Random(1))
    assert dispatcher.run_once() == {"pending": 1}
    clock.now = T0 + timedelta(seconds=23)  # before the earliest retry (30 s - 20%)
    assert dispatcher.run_once() == {}
    clock.now = T0 + timedelta(seconds=37)
    assert dispatcher.run_once() == {"delivered": 1}
    assert [d.attempt for d in channel.got] == [1, 2]
    assert len({d.key for d in channel.got}) == 1
    assert kinds(store) == ["message_delivered"]
    clock.now += timedelta(days=1)
    assert dispatcher.run_once() == {}  # a delivered key is never handed over again


def test_after_the_last_attempt_the_send_is_a_dead_letter(store: SqlStore) -> None:
    """Attempts run out: the row is `dead` and the trace says `message_failed` with the last error."""
    runtime, clock = setup(store), Clock()
    channel = ScriptedChannel(*[DeliveryResult(status="retry", detail="timeout")] * 3)
    dispatcher = Dispatcher(store, runtime.engine, {"email": channel}, clock=clock,
                            retry=RetryPolicy(attempts=3, base=1, jitter=0), rng=random.Random(1))
    for _ in range(3):
        dispatcher.run_once()
        clock.now += timedelta(hours=1)
    assert len(channel.got) == 3
    failed = [r for r in store.trace("u1") if r["kind"] == "message_failed"]
    assert (len(failed), failed[0]["detail"], failed[0]["attempt"]) == (1, "timeout", 3)
    assert dispatcher.run_once() == {}


def test_backoff_is_capped_jitter_included() -> None:
    """However many attempts, no wait is longer than the cap."""
    policy = RetryPolicy(base=30, cap=600, jitter=0.2)
    rng = random.Random(5)
    waits = [policy.delay(n, rng) for n in range(1, 30) for _ in range(20)]
    assert max(waits) <= 600
    assert min(policy.delay(1, rng) for _ in range(50)) >= 24


def test_a_hard_bounce_goes_back_to_the_engine_and_suppresses_the_address(store: SqlStore) -> None:
    """A channel's hard bounce becomes an `Email Bounced` event: the next email to that address is suppressed."""
    runtime, clock = setup(store), Clock()
    channel = ScriptedChannel(DeliveryResult(status="failed", detail="550 no such user", suppress_address=True))
    back: list[Event] = []
    dispatcher = Dispatcher(store, runtime.engine, {"email": channel}, clock=clock, feedback=back.extend)
    assert dispatcher.run_once() == {"dead": 1}
    assert [(e.name, e.properties["address"], e.properties["bounce_type"]) for e in back] == [
        ("Email Bounced", "u1@example.com", "hard")]
    runtime.process(back, clock.now)
    profile = runtime.profile("u1")
    assert profile is not None and profile.bounced == ("u1@example.com",)
    runtime.advance(T0 + timedelta(days=2, hours=1))  # nudge: discount_email to the same address
    suppressed = [(r["message"], r["reason"]) for r in store.trace("u1") if r["kind"] == "message_suppressed"]
    assert ("discount_email", "bounced") in suppressed


def test_a_crash_mid_batch_repeats_only_the_send_in_flight(store: SqlStore) -> None:
    """Killed during its third channel call of a batch of five, a dispatcher left the two sends before it
    settled: after a restart, the third is handed over again and the five are each delivered once."""
    runtime, clock = setup(store), Clock()
    sign_up(runtime, ["u2", "u3", "u4", "u5"])
    dying = DyingChannel(calls=3)
    with pytest.raises(Killed):
        Dispatcher(store, runtime.engine, {"email": dying}, clock=clock).run_once()
    assert [r["status"] for r in store.outbox()].count("delivered") == 2
    clock.now += timedelta(seconds=61)  # the dead dispatcher's lease ran out
    restarted = ScriptedChannel()
    with closing(store.twin()) as twin:  # a new process: the dead one's thread-local claims are gone
        assert Dispatcher(twin, runtime.engine, {"email": restarted}, clock=clock).run_once() == {"delivered": 3}
    assert restarted.got[0].key == dying.got[2].key
    assert {d.key for d in restarted.got}.isdisjoint(d.key for d in dying.got[:2])
    assert [r["status"] for r in store.outbox()] == ["delivered"] * 5
    assert Dispatcher(store, runtime.engine, {"email": restarted}, clock=clock).run_once() == {}


class SlowChannel(ScriptedChannel):
    """Each call takes `seconds` of the dispatcher's clock."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        super().__init__()
        self.clock, self.seconds = clock, seconds

    def send(self, delivery: Delivery) -> DeliveryResult:
        self.clock.now += timedelta(seconds=self.seconds)
        return super().send(delivery)


def test_a_batch_that_outlasts_half_its_lease_gives_the_rest_back(store: SqlStore) -> None:
    """With less than half its lease left, a dispatcher hands no more sends over (another may claim them
    when the lease runs out, while a call is under way): the rest of its batch is due again at once."""
    runtime, clock = setup(store), Clock()
    sign_up(runtime, ["u2", "u3", "u4", "u5"])
    slow = SlowChannel(clock, seconds=20)
    assert Dispatcher(store, runtime.engine, {"email": slow}, clock=clock, lease=60).run_once() == {"delivered": 2}
    other = ScriptedChannel()  # at 40 s: the first claim's lease has 20 s left, yet another dispatcher goes on
    with closing(store.twin()) as twin:
        assert Dispatcher(twin, runtime.engine, {"email": other}, clock=clock).run_once() == {"delivered": 3}
    assert len({d.key for d in slow.got + other.got}) == 5


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'shared.db'}" if request.param == "sqlite" else postgres_or_skip()


class MeetingChannel(ScriptedChannel):
    """The first send of each of `threads` dispatchers (threads) waits for the others' first: all of them
    hold claims at once. Notes which thread each send came from."""

    def __init__(self, threads: int) -> None:
        super().__init__()
        self.meeting = threading.Barrier(threads, timeout=30)
        self.threads: list[str] = []

    def send(self, delivery: Delivery) -> DeliveryResult:
        name = threading.current_thread().name
        if name not in self.threads:
            self.meeting.wait()
        self.threads.append(name)
        return super().send(delivery)


def test_dispatchers_sharing_one_outbox_hand_each_send_over_once(url: str) -> None:
    """Three dispatchers draining one outbox at once in small batches, each with its own connections,
    hand every send to a channel exactly once (PostgreSQL claims skip locked rows; SQLite's wait)."""
    stores = [SqlStore(url, defaults=dict(COMPILED.metrics.defaults)) for _ in range(3)]
    try:
        runtime = Runtime(Engine(COMPILED), stores[0], claim=100)
        sign_up(runtime, [f"u{i}" for i in range(90)])
        channel = MeetingChannel(threads=3)

        def drain(store: SqlStore) -> None:
            dispatcher = Dispatcher(store, runtime.engine, {"email": channel}, clock=lambda: T0)
            while dispatcher.run_once(limit=7):
                pass

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(drain, stores))
        keys = [d.key for d in channel.got]
        assert len(keys) == len(set(keys)) == 90
        assert len(set(channel.threads)) == 3
        assert {r["status"] for r in stores[0].outbox()} == {"delivered"}
    finally:
        for store in stores:
            store.close()


def test_a_send_left_in_the_outbox_past_its_expiry_is_suppressed_not_sent(store: SqlStore) -> None:
    """The dispatcher was down for two days: the welcome email, decided then, is never handed over; its row
    is `expired` and the trace says `message_suppressed reason=expired` with the time it was due."""
    runtime, clock = setup(store), Clock()
    channel = ScriptedChannel()
    dispatcher = Dispatcher(store, runtime.engine, {"email": channel}, clock=clock)
    clock.now = T0 + timedelta(days=2)
    assert dispatcher.run_once() == {"expired": 1}
    assert channel.got == []
    [record] = [r for r in store.trace("u1") if r["kind"] == "message_suppressed"]
    assert (record["message"], record["reason"], record["due"]) == ("welcome_email", "expired",
                                                                    "2026-01-05T09:00:00Z")
    assert dispatcher.run_once() == {}


def test_a_send_within_its_expiry_still_goes_after_a_short_outage(store: SqlStore) -> None:
    """An hour down is within the default 24 h: the email goes."""
    runtime, clock = setup(store), Clock()
    channel = ScriptedChannel()
    dispatcher = Dispatcher(store, runtime.engine, {"email": channel}, clock=clock)
    clock.now = T0 + timedelta(hours=1)
    assert dispatcher.run_once() == {"delivered": 1}
