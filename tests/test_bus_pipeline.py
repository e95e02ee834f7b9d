"""Commits behind the engine (adapters/bus/pipeline.py): a bus worker's engine applies batch N+1 while
batch N commits. Batch N+1 must see N as if it were committed (its messageIds, aliases and profiles); a
failed commit must fail every batch built on it, leave no changed profile behind, and the batches run
again in order must give what one commit after another gives.

The commits are held back by a gate on the store, so a batch is really in flight while the next is applied.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.bus.leases import FencedStore
from adapters.bus.pipeline import EarlierBatchFailed
from adapters.service.host import InProcessHost
from adapters.service.settings import Settings
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

    def in_flight(self, users: list[str]) -> bool:
        return self._flight is not None and bool(self._flight.profiles(users))

    def _commit_encoded(self, encoded: Encoded) -> None:
        assert self.gate.wait(30)
        if self.fail:
            self.fail -= 1
            raise ConflictError("injected")
        super()._commit_encoded(encoded)


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
