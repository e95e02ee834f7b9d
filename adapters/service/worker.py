"""`journey worker`: an engine host fed by the bus (SPEC §9), one of any number sharing one PostgreSQL.

`BusWorker` leases partitions of the stream (adapters/bus/leases.py: a fair share of them, taken over
from a worker that stopped renewing within `LEASE_TTL` + a renewal), reads each one in order through its
durable pull consumer, and applies what it read through the same `InProcessHost` as `journey serve`: group
commit, isolation of an event the engine raises on, timer rounds and erasures between batches, the same
metrics. The host commits each batch behind the engine, which applies the next meanwhile
(adapters/bus/pipeline.py). Every commit is fenced by the leases; a message is acknowledged only after its
batch committed, and the store's messageId dedupe makes a redelivery harmless. Timers and sends are claimed only in the
held partitions (a send is also claimed by one dispatcher at a time, under the outbox's own leases), and
delivery feedback goes back through the bus to its user's partition.

A worker deploys nothing: it runs the journey versions in force in the store and follows a deployment
another process makes (`journey serve` at its start or on `--reload`) within `FOLLOW_SECONDS`, switching engines
between two batches, so every process on the database gives new entrants the same versions.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from prometheus_client import Gauge

from adapters.bus.leases import RENEW_EVERY, FencedStore, LeaseLost, Leases
from adapters.bus.publisher import BusPublisher
from adapters.bus.stream import BusConfig, Loop, decode, lag, pull, take_consumer
from adapters.service.host import InProcessHost
from adapters.service.metrics import Metrics
from adapters.service.settings import Settings
from journey_engine.compiler import CompiledWorkspace
from journey_engine.deployment import adopt
from journey_engine.engine import Engine
from journey_engine.errors import WorkspaceError
from journey_engine.events import Event
from journey_engine.runtime import Runtime

log = logging.getLogger("journey.worker")
T = TypeVar("T")

FETCH = 250  # messages asked of a partition's consumer at a time (a message holds a request's events)
INBOX = 2_000  # messages read and not yet applied, past which no partition asks for more
RETRY_EVERY = 0.5  # seconds between attempts at a batch the store refused (down, contended)
FOLLOW_SECONDS = 2.0  # how often a worker looks for a deployment another process made


@dataclass(frozen=True, slots=True)
class _Item:
    part: int
    token: int
    msg: Any  # nats.aio.msg.Msg


Run = list[tuple[_Item, Event | None]]  # a run of events between erasures; None: an unreadable message


class BusWorker:
    """The engine on the partitions this worker leases (see the module). An `EngineHost`: `submit` and
    `erase` go through the bus (the dispatcher's feedback), the rest to the engine thread."""

    def __init__(self, compiled: CompiledWorkspace, store: FencedStore, config: BusConfig,
                 settings: Settings | None = None, metrics: Metrics | None = None, *, name: str | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 files: Callable[[], CompiledWorkspace] | None = None) -> None:
        """`files` reads the workspace again when another process deploys (default: `compiled` as given);
        the worker runs `adopt(files(), store)`, the versions in force."""
        self.settings = settings if settings is not None else Settings()
        self.files = files if files is not None else (lambda: compiled)
        self.deployment = store.in_force()[0]  # the deployment `compiled` was adopted from
        self.metrics = metrics if metrics is not None else Metrics()
        self.store, self.config, self.clock = store, config, clock
        self.name = name or f"{socket.gethostname()}-{id(self):x}"
        self.engine = Engine(compiled, send_expiry=self.settings.send_expiry)
        store.keep_profiles(self.settings.kept_profiles)  # it owns its partitions' users (see SqlProfiles)
        self.runtime = Runtime(self.engine, store, claim=500, live=True)
        self.host = InProcessHost(self.runtime, store, self.settings, self.metrics, clock, pipeline=store)
        self.loop = Loop("journey-bus")
        self.publisher = BusPublisher(config, store, self.settings, name=self.name, loop=self.loop)
        self.leases: Leases | None = None
        self._stop = threading.Event()
        self.applier = _Applier(self.host, self.loop, self._held_tokens, self.settings.max_batch_events, self._stop,
                                self.name)
        self.inbox = self.applier.inbox
        self._threads: list[threading.Thread] = []
        self._fetchers: dict[int, asyncio.Task[None]] = {}
        self._consumers: dict[int, str] = {}  # partition -> the durable consumer this worker reads it with
        r = self.metrics.registry
        self.lag = Gauge("journey_bus_lag", "Messages of a partition not yet acknowledged by its owner",
                         ["partition", "owner"], registry=r)
        self.owned = Gauge("journey_bus_partitions_owned", "Partitions this worker holds", registry=r)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        self.publisher.start()
        self.config = self.publisher.config  # the partitions the stream was created with
        self.leases = Leases(self.store, self.config.stream, self.config.partitions, self.name)
        self.store.leases = self.leases
        self.host.start()
        self._threads = [threading.Thread(target=self.applier.run, name="journey-bus-apply", daemon=True),
                         threading.Thread(target=self._lease_loop, name="journey-bus-leases", daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop reading, finish the batch in hand, give the partitions back at once."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        self._threads = []
        for part in list(self._fetchers):
            self._stop_fetching(part)
        self.host.stop()
        if self.leases is not None:
            try:
                self.leases.leave()
            except Exception:  # the leases run out by themselves
                log.warning("could not release the leases; they run out in a few seconds", exc_info=True)
        self.publisher.stop()
        self.loop.close()

    # --- EngineHost ------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return self.applier.waiting

    def submit(self, events: list[Event]) -> Future[list[int]]:
        return self.publisher.submit(events)

    def erase(self, user: str) -> Future[bool]:
        return self.publisher.erase(user)

    def timers(self) -> None:
        self.host.timers()

    def enroll(self) -> Future[Any]:
        return self.host.enroll()

    def process(self, events: list[Event], now: datetime | None = None) -> Future[Any]:
        return self.host.process(events, now)

    def advance(self, until: datetime) -> Future[Any]:
        return self.host.advance(until)

    def call(self, job: Callable[[Runtime], T]) -> Future[list[T]]:
        return self.host.call(job)

    def down(self) -> str | None:
        return self.publisher.down()

    # --- leases ----------------------------------------------------------------------------------

    def _held_tokens(self) -> dict[int, int]:
        return self.leases.tokens() if self.leases is not None else {}

    def _lease_loop(self) -> None:
        followed = 0.0
        while not self._stop.is_set():
            try:
                self._balance()
            except Exception:  # the database or NATS is away: renew at the next turn (the leases last longer)
                log.warning("bus worker %s: lease round failed", self.name, exc_info=True)
            if time.monotonic() - followed >= FOLLOW_SECONDS:
                followed = time.monotonic()
                try:
                    self.follow()
                except Exception:
                    log.warning("bus worker %s: could not read the deployment in force", self.name, exc_info=True)
            self._stop.wait(RENEW_EVERY)

    def follow(self) -> bool:
        """Run the versions in force when another process made a deployment since this one's: the engine is
        switched between two batches, keeping what the bandits learnt. Returns whether it switched."""
        number = self.store.in_force()[0]
        if number == self.deployment:
            return False
        try:
            files = self.files()
        except WorkspaceError as exc:  # this machine's files are broken: the stored versions still run
            log.warning("bus worker %s: the workspace does not load (%s); following the stored versions", self.name,
                        exc)
            files = self.engine.cw
        compiled = adopt(files, self.store)
        expiry = self.settings.send_expiry

        def switch(runtime: Runtime) -> Engine:
            engine = Engine(compiled, send_expiry=expiry)
            engine.bandits = runtime.engine.bandits
            runtime.engine = engine
            return engine

        (self.engine,) = self.host.call(switch).result()
        self.deployment = number
        log.warning("bus worker %s: following deployment %d", self.name, number)
        return True

    def _balance(self) -> None:
        """Renew; stop reading what was lost; take a fair share; give back what is over it."""
        leases = self.leases
        assert leases is not None
        for part in leases.renew():
            log.warning("bus worker %s: partition %d was taken over", self.name, part)
            self._stop_fetching(part)
        for part in set(self._fetchers) - set(leases.tokens()):  # lost at a commit's fence
            self._stop_fetching(part)
        share = leases.share()
        held = leases.tokens()
        for part in sorted(held)[share:]:
            self._stop_fetching(part)
            leases.release(part)
        for part, token in leases.acquire(share - len(held)).items():
            log.info("bus worker %s: took partition %d (token %d)", self.name, part, token)
        for part, token in sorted(leases.tokens().items()):  # taken now, or a start that failed before
            task = self._fetchers.get(part)
            if task is None or task.done():
                try:
                    self.loop.run(self._start_fetching(part, token)).result(timeout=30)
                except Exception as exc:  # a NATS node away: the next round tries again
                    log.warning("bus worker %s: cannot read partition %d yet: %r", self.name, part, exc)
        self._observe_lag()

    async def _start_fetching(self, part: int, token: int) -> None:
        consumer = await take_consumer(self.publisher.client, self.publisher.js, self.config, part, token)
        self._consumers[part] = consumer
        self._fetchers[part] = asyncio.get_running_loop().create_task(self._fetch(part, token, consumer))

    async def _fetch(self, part: int, token: int, consumer: str) -> None:
        leases = self.leases
        assert leases is not None
        put = self.inbox.put

        def alive() -> bool:
            return leases.tokens().get(part) == token

        def room() -> bool:
            return self.inbox.qsize() < INBOX

        while alive():
            try:
                await pull(self.publisher.client, self.config, consumer, FETCH, lambda m: put(_Item(part, token, m)),
                           alive, room)
            except Exception as exc:  # a node away, a consumer moving leader: try again
                log.warning("bus worker %s: fetching partition %d: %r", self.name, part, exc)
                await asyncio.sleep(RETRY_EVERY)

    def _stop_fetching(self, part: int) -> None:
        task = self._fetchers.pop(part, None)
        if task is not None:
            self.loop.loop.call_soon_threadsafe(task.cancel)
        with contextlib.suppress(KeyError):  # never observed
            self.lag.remove(str(part), self.name)

    def _observe_lag(self) -> None:
        held = sorted(self._fetchers)
        self.owned.set(len(held))
        for part in held:
            try:
                behind = self.loop.run(lag(self.publisher.js, self.config, self._consumers[part])).result(timeout=5)
            except Exception:
                continue
            self.lag.labels(str(part), self.name).set(behind)


class _Applier:
    """A `BusWorker`'s apply thread: the messages its fetchers read, decoded, in batches of up to
    `max_batch_events` events, handed to the engine thread (which commits each behind the next, see
    adapters/bus/pipeline.py), acknowledged once committed."""

    def __init__(self, host: InProcessHost, loop: Loop, tokens: Callable[[], dict[int, int]], limit: int,
                 stop: threading.Event, name: str) -> None:
        self.host, self.loop, self.tokens, self.limit, self._stop, self.name = host, loop, tokens, limit, stop, name
        self.inbox: queue.Queue[_Item] = queue.Queue()  # bounded by INBOX (see `BusWorker._fetch`)
        self.waiting = 0
        # runs handed to the engine thread and not yet acknowledged (see `_submit`)
        self._pending: collections.deque[tuple[Run, Future[list[int]] | None]] = collections.deque()

    def run(self) -> None:
        limit = self.limit
        while not self._stop.is_set():
            try:  # with a batch committing, take what came meanwhile; else wait for more
                first = self.inbox.get_nowait() if self._pending else self.inbox.get(timeout=0.05)
            except queue.Empty:
                try:
                    self._settle_all()  # nothing to apply meanwhile: finish what is in flight
                except Exception:  # never let the thread every partition waits on end
                    log.exception("bus worker %s: settling the batches in flight failed", self.name)
                continue
            batch = [self._read(first)]
            size = _size(batch[0][1])
            while size < limit:
                try:
                    batch.append(self._read(self.inbox.get_nowait()))
                except queue.Empty:
                    break
                size += _size(batch[-1][1])
            self.waiting = self.inbox.qsize()
            try:
                self._apply(batch)
            except Exception:  # never let the thread every partition waits on end
                log.exception("bus worker %s: a batch of %d messages failed; they come again", self.name,
                              len(batch))
        self._settle_all()

    def _read(self, item: _Item) -> tuple[_Item, list[Event] | str]:
        """The item's events or erasure; an unreadable message is logged and has no events (it is
        acknowledged with the events around it, once they are committed)."""
        try:
            return item, decode(item.msg.data)
        except Exception:
            log.exception("bus worker %s: partition %d: an unreadable message is skipped", self.name, item.part)
            return item, []

    def _apply(self, batch: list[tuple[_Item, list[Event] | str]]) -> None:
        """The messages in order: runs of events as one commit each, an erasure between them."""
        held = set(map(id, self._held([item for item, _ in batch])))
        run: Run = []
        for item, body in batch:
            if id(item) not in held:
                continue
            if isinstance(body, list):
                run.extend([(item, event) for event in body] or [(item, None)])
                continue
            self._submit(run)
            self._settle_all()
            run = []
            self._erase(item, body)
        self._submit(run)

    def _held(self, items: list[_Item]) -> list[_Item]:
        """The items of partitions still held under the lease they were read with."""
        held = self.tokens()
        return [i for i in items if held.get(i.part) == i.token]

    def _submit(self, run: Run) -> None:
        """Hand a run of events to the engine thread, which commits it behind the next one (pipeline.py);
        with one run already committing, wait for that one and acknowledge it first."""
        if not run:
            return
        events = [event for _, event in run if event is not None]
        try:
            future: Future[list[int]] | None = self.host.submit(events) if events else None
        except Exception as exc:  # refused at once (overloaded): settled as a failure, so run again
            future = Future()
            future.set_exception(exc)
        self._pending.append((run, future))
        while len(self._pending) > 1:
            self._settle_oldest()

    def _settle_all(self) -> None:
        while self._pending:
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        """Wait for the oldest run handed over and acknowledge it; if it failed in any way, every run behind it
        failed too (adapters/bus/pipeline.py): run them all again, in order, one at a time."""
        run, future = self._pending.popleft()
        try:
            if future is not None:
                future.result()
        except Exception:
            again = [run]
            while self._pending:
                later, failed = self._pending.popleft()
                if failed is not None:
                    with contextlib.suppress(Exception):
                        failed.result()
                again.append(later)
            for each in again:
                self._commit(each)
            return
        self._ack([item for item, _ in run])

    def _commit(self, run: Run) -> None:
        """Run a batch again after a failure: recover the engine thread, commit the run on its own (an event
        the engine or the database raises on isolated), retrying until it is committed, its partitions are
        lost or the worker stops; then ack (an unreadable message is in the run as None: acked with it)."""
        while not self._stop.is_set():
            kept = set(map(id, self._held([item for item, _ in run])))
            run = [(item, event) for item, event in run if id(item) in kept]
            if not run:
                return
            events = [event for _, event in run if event is not None]
            try:
                self.host.recover().result()
                if events:
                    self.host.submit_alone(events).result()
            except Exception as exc:
                if not isinstance(exc, LeaseLost):
                    log.warning("bus worker %s: a batch of %d events was not committed (%r); trying again",
                                self.name, len(run), exc)
                    self._stop.wait(RETRY_EVERY)
                continue
            # committed; the events the engine raised on were isolated and logged by the host: done with too
            self._ack([item for item, _ in run])
            return

    def _erase(self, item: _Item, user: str) -> None:
        while not self._stop.is_set() and self._held([item]):
            try:
                self.host.erase(user).result()
            except Exception as exc:  # never skipped: a later ack would cover it
                log.warning("bus worker %s: erasure not committed (%r); trying again", self.name, exc)
                self._stop.wait(RETRY_EVERY)
                continue
            self._ack([item])
            return

    def _ack(self, items: list[_Item]) -> None:
        """Acknowledge the items: the consumers acknowledge all (an ack covers the partition's messages up to
        it, each applied in order before it), so the last item of each partition is acked."""
        last = {item.part: item for item in items}

        async def ack() -> None:
            for item in last.values():
                try:
                    await item.msg.ack()
                except Exception:  # unacknowledged: it comes again and is recognised by messageId
                    log.debug("bus worker: an ack was lost", exc_info=True)

        self.loop.run(ack())


def _size(body: list[Event] | str) -> int:
    """Events a message holds (an erasure counts as one)."""
    return len(body) if isinstance(body, list) else 1
