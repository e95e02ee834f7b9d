"""Commits behind the engine (adapters/bus/pipeline.py): a bus worker's engine applies batch N+1 while
batch N commits. Batch N+1 must see N as if it were committed (its messageIds, aliases and profiles); a
failed commit must fail every batch built on it, leave no changed profile behind, and the batches run
again in order must give what one commit after another gives.

The commits are held back by a gate on the store, so a batch is really in flight while the next is applied.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.bus.leases import FencedStore
from adapters.bus.pipeline import EarlierBatchFailed
from adapters.bus.stream import encode_events
from adapters.service.host import InProcessHost
from adapters.service.settings import Settings
from adapters.service.worker import _Applier, _Item
from adapters.storage.sql.store import Encoded
from journey_engine.compiler import load_workspace
from journey_engine.engine import Engine
from journey_engine.events import Event
from journey_engine.facts import DuplicateIgnored
from journey_engine.ports import ConflictError, StoreUnavailable
from journey_engine.runtime import MemoryStore, Runtime

from .test_bus import WORKSPACE, bus_database, shape, wait_for  # noqa: F401 (a fixture: imported to be used)

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _event(kind: str, user: str, message_id: str, **fields: Any) -> Event:
    return Event(type=kind, user_id=user, timestamp=NOW, message_id=message_id, **fields)


FIRST = [_event("identify", "anon-1", "a1", traits={"email": "a@example.com"}),
         _event("track", "u1", "a2", name="Signed Up"),
         _event("alias", "u1", "a3", previous_id="anon-1"),
         _event("identify", "u2", "a4", traits={"plan": "pro"})]
SECOND = [_event("track", "u1", "a2", name="Signed Up"),  # a duplicate of one in flight
          _event("identify", "anon-1", "b1", traits={"plan": "team"}),  # the id aliased in flight
          _event("track", "u1", "b2", name="Feature Used"),
          _event("identify", "u2", "b3", traits={"seats": 4})]
THIRD = [_event("track", "u2", "c1", name="Feature Used"), _event("identify", "u3", "c2", traits={"plan": "free"})]


class Gated(FencedStore):
    """A worker's store whose commits wait for `gate`, and whose next commits can be made to fail."""

    def __init__(self, url: str) -> None:
        super().__init__(url, defaults=dict(load_workspace(WORKSPACE).metrics.defaults))
        self.gate = threading.Event()
        self.gate.set()
        self.fail = 0
        self.fail_with: Exception | None = None  # the next commit raises this
        self.away = 0  # reads of the bandits that fail (the database still away)
        self.refuse: str | None = None  # a messageId whose every commit raises (a value the database refuses)

    def in_flight(self, users: list[str]) -> bool:
        return self._flight is not None and bool(self._flight.profiles(users))

    def _commit_encoded(self, encoded: Encoded) -> None:
        assert self.gate.wait(30)
        if self.fail:
            self.fail -= 1
            raise ConflictError("injected")
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        if self.refuse is not None and any(m == self.refuse for m, _ in encoded.batch.message_ids):
            raise ValueError(f"injected: the database refuses a value of {self.refuse}")
        super()._commit_encoded(encoded)

    def bandit(self) -> Any:
        if self.away:
            self.away -= 1
            raise StoreUnavailable("injected: the database is still away")
        return super().bandit()


@pytest.fixture
def store(bus_database: str) -> Iterator[Gated]:  # noqa: F811
    gated = Gated(bus_database)
    gated.keep_profiles(100)
    yield gated
    gated.gate.set()
    gated.close()


def _reference(*batches: list[Event]) -> dict[str, Any]:
    runtime = Runtime(Engine(load_workspace(WORKSPACE)), MemoryStore())
    for events in batches:
        runtime.process(events, NOW)
    return {u: shape(p) for u in ("u1", "u2", "u3") if (p := runtime.profile(u)) is not None}


def _profiles(store: FencedStore) -> dict[str, Any]:
    return {u: shape(p) for u, p in store.load(["u1", "u2", "u3", "anon-1"]).items()}


def test_a_batch_applied_while_the_one_before_commits_sees_it_as_committed(store: Gated) -> None:
    runtime = Runtime(Engine(load_workspace(WORKSPACE)), store, live=True)
    store.gate.clear()
    first, _ = runtime.prepare(FIRST, NOW)
    in_flight = store.commit_later(first)
    second, out = runtime.prepare(SECOND, NOW)
    assert not in_flight.done()  # really applied while the first was being committed
    behind = store.commit_later(second)
    assert [f.message_id for f in out.facts if isinstance(f, DuplicateIgnored)] == ["a2"]
    store.gate.set()
    in_flight.result(timeout=30)
    behind.result(timeout=30)
    assert _profiles(store) == _reference(FIRST, SECOND)
    third, _ = runtime.prepare(THIRD, NOW)  # from the kept profiles, at the versions the commits left
    store.commit_later(third).result(timeout=30)
    assert _profiles(store) == _reference(FIRST, SECOND, THIRD)


def test_a_failed_commit_fails_the_batches_behind_it_and_they_run_again_in_order(store: Gated) -> None:
    """Through the worker's host: the first request's commit fails, so the second (applied on top of it)
    and a third (handed over before the failure was seen) fail without being written; nothing of them
    stays in the kept profiles; after `recover` the three run again in order."""
    runtime = Runtime(Engine(load_workspace(WORKSPACE)), store, live=True)
    host = InProcessHost(runtime, store, Settings(), clock=lambda: NOW, pipeline=store)
    host.start()
    try:
        store.gate.clear()
        store.fail = 1
        futures = [host.submit(FIRST)]
        assert wait_for(lambda: store.in_flight(["u1"]), 30)  # its own batch, not grouped with the next
        futures.append(host.submit(SECOND))
        assert wait_for(lambda: store.in_flight(["u2"]) and host.work.empty(), 30)
        store.gate.set()
        with pytest.raises(ConflictError, match="injected"):
            futures[0].result(timeout=30)
        with pytest.raises(EarlierBatchFailed):
            futures[1].result(timeout=30)
        with pytest.raises(EarlierBatchFailed):  # not taken before the failure is seen
            host.submit(THIRD).result(timeout=30)
        assert _profiles(store) == {}
        host.recover().result(timeout=30)
        for events in (FIRST, SECOND, THIRD):
            host.submit(events).result(timeout=30)
        assert _profiles(store) == _reference(FIRST, SECOND, THIRD)
        assert host.waiting == 0
    finally:
        host.stop()


def test_a_batch_that_fails_before_its_commit_stops_the_ones_behind_it_too(store: Gated) -> None:
    """The second request fails while it is applied (the database away for its reads), while the first is
    still committing: the third, handed over before the worker saw the failure, must not commit before
    the second is run again."""
    runtime = Runtime(Engine(load_workspace(WORKSPACE)), store, live=True)
    host = InProcessHost(runtime, store, Settings(), clock=lambda: NOW, pipeline=store)
    host.start()
    reads = store.erased
    try:
        store.gate.clear()
        first = host.submit(FIRST)
        assert wait_for(lambda: store.in_flight(["u1"]), 30)

        def away(users: Any) -> Any:
            store.erased = reads  # type: ignore[method-assign]
            raise StoreUnavailable("the database is away")

        store.erased = away  # type: ignore[method-assign]
        second = host.submit(SECOND)
        with pytest.raises(StoreUnavailable):
            second.result(timeout=30)
        with pytest.raises(EarlierBatchFailed):
            host.submit(THIRD).result(timeout=30)
        store.gate.set()
        first.result(timeout=30)
        host.recover().result(timeout=30)
        for events in (SECOND, THIRD):
            host.submit(events).result(timeout=30)
        assert _profiles(store) == _reference(FIRST, SECOND, THIRD)
    finally:
        host.stop()


# --- the worker's apply thread over the pipeline: whatever fails, nothing is acknowledged uncommitted ------

class _Message:
    """A JetStream message as the apply thread sees it: its acknowledgement is recorded."""

    def __init__(self, name: str, events: list[Event], acks: list[str]) -> None:
        [(self.data, _)] = encode_events(events)
        self.name, self.acks = name, acks

    async def ack(self) -> None:
        self.acks.append(self.name)


class _Loop:
    def run(self, coroutine: Any) -> None:
        asyncio.run(coroutine)


@pytest.fixture
def applier(store: Gated) -> Iterator[tuple[_Applier, list[str]]]:
    """The apply thread of a worker holding partition 0, one event per batch (each message a run of its own)."""
    runtime = Runtime(Engine(load_workspace(WORKSPACE)), store, live=True)
    host = InProcessHost(runtime, store, Settings(), clock=lambda: NOW, pipeline=store)
    host.start()
    stop = threading.Event()
    apply = _Applier(host, _Loop(), lambda: {0: 1}, 1, stop, "test")  # type: ignore[arg-type]
    acks: list[str] = []
    yield apply, acks
    stop.set()
    host.stop()


def _run(apply: _Applier, acks: list[str], store: Gated, messages: dict[str, list[Event]]) -> threading.Thread:
    """The messages in the inbox, then the apply thread started on them."""
    for name, events in messages.items():
        apply.inbox.put(_Item(0, 1, _Message(name, events, acks)))
    thread = threading.Thread(target=apply.run, daemon=True)
    thread.start()
    return thread


def _processed(store: Gated) -> set[str]:
    return store.seen(["a1", "a2", "b1", "c1"])


def _two_in_flight(apply: _Applier, acks: list[str], store: Gated) -> threading.Thread:
    """m1 (u1's a1) committing and m2 (u2's b1) behind it, both held at the gate."""
    store.gate.clear()
    thread = _run(apply, acks, store, {"m1": [_event("track", "u1", "a1", name="Signed Up")],
                                       "m2": [_event("identify", "u2", "b1", traits={"plan": "pro"})]})
    assert wait_for(lambda: store.in_flight(["u1"]) and store.in_flight(["u2"]), 30)
    return thread


def test_a_commit_that_fails_while_the_database_stays_away_is_run_again_before_anything_is_acked(
        store: Gated, applier: tuple[_Applier, list[str]]) -> None:
    apply, acks = applier
    thread = _two_in_flight(apply, acks, store)
    store.fail_with = StoreUnavailable("injected: the database went away")
    store.away = 2  # and is still away when the worker recovers, twice
    store.gate.set()
    apply.inbox.put(_Item(0, 1, _Message("m3", [_event("identify", "u3", "c1", traits={"plan": "free"})], acks)))
    assert wait_for(lambda: "m3" in acks, 30), acks
    assert acks == ["m1", "m2", "m3"] and _processed(store) == {"a1", "b1", "c1"} and thread.is_alive()


def test_a_commit_that_fails_for_another_reason_isolates_the_event_and_keeps_the_others(
        store: Gated, applier: tuple[_Applier, list[str]]) -> None:
    """An error that is not the store's (a value the database refuses, every time) fails the batch in flight
    and the one behind it: both are run again on their own, the refused event isolated (logged, not
    retried for ever), the other committed; both acked, the apply thread goes on."""
    apply, acks = applier
    thread = _two_in_flight(apply, acks, store)
    store.refuse = "a1"
    store.gate.set()
    assert wait_for(lambda: "m2" in acks, 30), acks
    assert acks == ["m1", "m2"] and _processed(store) == {"b1"} and thread.is_alive()


def test_a_batch_that_does_not_encode_is_isolated_and_the_engine_thread_goes_on(store: Gated) -> None:
    runtime = Runtime(Engine(load_workspace(WORKSPACE)), store, live=True)
    host = InProcessHost(runtime, store, Settings(), clock=lambda: NOW, pipeline=store)
    host.start()
    encode = store._encoded
    failures = [ValueError("injected: a value that does not encode")]

    def encoded(batch: Any) -> Encoded:
        if failures:
            raise failures.pop()
        return encode(batch)

    store._encoded = encoded  # type: ignore[method-assign]
    try:
        host.submit(FIRST).result(timeout=30)  # isolated, then committed without a pipeline
        host.submit(SECOND).result(timeout=30)
        assert _profiles(store) == _reference(FIRST, SECOND) and host.waiting == 0
    finally:
        host.stop()
