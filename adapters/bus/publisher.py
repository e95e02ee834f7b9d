"""`journey serve --bus`: the HTTP front's engine host is the log. It applies nothing itself.

`BusPublisher` implements `EngineHost` (adapters/service/host.py) for the sources: `submit` publishes each
event to its user's partition, a request's events of one partition as one message (adapters/bus/stream.py),
and settles once JetStream has stored every one (replicated, when the stream has replicas), which is when
the API answers 200. `erase` publishes the erasure to the partition of the user the id resolves to, behind
that user's events, and settles once a worker has applied it. Timers, enrolment and the outbox are the
workers'.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from typing import Any, TypeVar

from adapters.bus.stream import (
    BusConfig,
    Loop,
    connect,
    encode_erase,
    encode_events,
    ensure_stream,
    grouped,
    with_id,
)
from adapters.service.host import Overloaded
from adapters.service.settings import Settings
from adapters.storage.sql import SqlStore
from journey_engine.events import Event
from journey_engine.ports import StoreUnavailable, partition
from journey_engine.runtime import Runtime

log = logging.getLogger("journey.bus")
T = TypeVar("T")

PUBLISH_TIMEOUT = 10.0  # seconds for JetStream to store a request's events (a node restarting: the others answer)
ERASE_TIMEOUT = 60.0  # seconds for a worker to apply an erasure (a failover takes at most ~30 s)
HEALTH_TIMEOUT = 2.0


class BusUnavailable(StoreUnavailable):
    """JetStream did not store the events (no quorum, unreachable): nothing is acknowledged, retry."""


class BusPublisher:
    """The events to the log, as an engine host (see the module)."""

    def __init__(self, config: BusConfig, store: SqlStore, settings: Settings | None = None, *,
                 name: str = "journey-serve", loop: Loop | None = None) -> None:
        self.config, self.store, self.name = config, store, name
        self.settings = settings if settings is not None else Settings()
        self.waiting = 0
        self._lock = threading.Lock()
        self._own_loop = loop is None
        self._loop = loop
        self.client: Any = None
        self.js: Any = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self.js is not None:
            return
        if self._loop is None:
            self._loop = Loop("journey-bus")
        self.client, self.js = self._loop.run(connect(self.config, self.name)).result(timeout=30)
        self.config = self._loop.run(ensure_stream(self.js, self.config)).result(timeout=30)

    def stop(self) -> None:
        if self.client is not None and self._loop is not None:
            try:
                self._loop.run(self.client.drain()).result(timeout=10)
            except Exception:  # the connection may be gone already: nothing waits on it
                log.warning("bus: the connection did not drain cleanly", exc_info=True)
            self.client = self.js = None
        if self._own_loop and self._loop is not None:
            self._loop.close()
            self._loop = None

    @property
    def loop(self) -> Loop:
        assert self._loop is not None, "start the publisher first"
        return self._loop

    # --- EngineHost ------------------------------------------------------------------------------

    def submit(self, events: list[Event]) -> Future[list[int]]:
        """Publish the events, each to its partition; settled with [] (the workers isolate what the engine
        cannot apply) once all are stored, or with BusUnavailable."""
        with self._lock:
            if self.waiting + len(events) > self.settings.queue_limit:
                raise Overloaded
            self.waiting += len(events)
        result: Future[list[int]] = Future()
        published = self.loop.run(self._publish([with_id(e) for e in events]))

        def settle(done: Future[None]) -> None:
            with self._lock:
                self.waiting -= len(events)
            error = done.exception()
            if error is None:
                result.set_result([])
            else:
                result.set_exception(error if isinstance(error, StoreUnavailable)
                                     else BusUnavailable(f"the bus did not store the events: {error!r}"))

        published.add_done_callback(settle)
        return result

    async def _publish(self, events: list[Event]) -> None:
        """One message per partition the events go to (`encode_events`), published without waiting for
        each acknowledgement in turn (one connection keeps their order), then waits for them all."""
        acks = [await self.js.publish_async(self.config.subject(part), data, headers={"Nats-Msg-Id": msg_id})
                for part, group in grouped(events, self.config.partitions).items()
                for data, msg_id in encode_events(group)]
        try:
            await asyncio.wait_for(asyncio.gather(*acks), PUBLISH_TIMEOUT)
        except TimeoutError:
            raise BusUnavailable(f"JetStream did not confirm the events within {PUBLISH_TIMEOUT:g} s; retry "
                                 "(the ones stored are recognised by messageId)") from None

    def erase(self, user: str) -> Future[bool]:
        """Behind the user's events on their partition; True when there was a profile to erase."""
        owner = self.store.aliases([user]).get(user, user)
        existed = bool(self.store.load([owner]))
        result: Future[bool] = Future()
        published = self.loop.run(self._publish_erase(user, partition(owner, self.config.partitions)))

        def wait(done: Future[None]) -> None:
            if done.exception() is not None:
                result.set_exception(BusUnavailable(f"the bus did not store the erasure: {done.exception()!r}"))
                return
            threading.Thread(target=self._await_erased, args=(user, existed, result), daemon=True).start()

        published.add_done_callback(wait)
        return result

    async def _publish_erase(self, user: str, part: int) -> None:
        await self.js.publish(self.config.subject(part), encode_erase(user), timeout=PUBLISH_TIMEOUT,
                              headers={"Nats-Msg-Id": f"erase-{user}-{time.time_ns()}"})

    def _await_erased(self, user: str, existed: bool, result: Future[bool]) -> None:
        deadline = time.monotonic() + ERASE_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if self.store.erased([user]):
                    result.set_result(existed)
                    return
            except StoreUnavailable:
                pass
            threading.Event().wait(0.05)  # a worker commits it; nothing here can be told when
        result.set_exception(BusUnavailable(f"the erasure of {user!r} is on the bus and no worker applied it within "
                                            f"{ERASE_TIMEOUT:g} s; it will be applied (are workers running?)"))

    def timers(self) -> None:
        """The workers fire the timers of the partitions they own."""

    def enroll(self) -> Future[Any]:
        return _done(None)

    def process(self, events: list[Event], now: datetime | None = None) -> Future[Any]:
        return self._not_here("process")

    def advance(self, until: datetime) -> Future[Any]:
        return self._not_here("advance")

    def call(self, job: Callable[[Runtime], T]) -> Future[list[T]]:
        return self._not_here("call")

    @staticmethod
    def _not_here(what: str) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_exception(NotImplementedError(f"{what}: the engine runs in the bus workers (`journey worker`)"))
        return future

    # --- health ----------------------------------------------------------------------------------

    def down(self) -> str | None:
        """Why the bus cannot take events now, or None (what /healthz reports)."""
        if self.client is None or not self.client.is_connected:
            return "not connected to NATS"
        try:
            self.loop.run(self.js.stream_info(self.config.stream)).result(timeout=HEALTH_TIMEOUT)
        except FutureTimeout:
            return f"JetStream did not answer within {HEALTH_TIMEOUT:g} s"
        except Exception as exc:
            return f"JetStream: {exc!r}"
        return None


def _done(value: T) -> Future[T]:
    future: Future[T] = Future()
    future.set_result(value)
    return future
