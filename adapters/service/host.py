"""Engine hosts: what runs the engine for the service. Sources hand them events; they commit them.

`EngineHost` is the one contract, implemented by `InProcessHost` (one engine thread in this process) and
`processes.ProcessHost` (`--workers N`: N engine processes, each owning a partition of the users). The
HTTP API, `journey ingest` and `journey bench` are written against the contract, so `bench --workers`
measures what `serve --workers` runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from adapters.bus.pipeline import EarlierBatchFailed
from adapters.service.metrics import Metrics
from adapters.service.settings import Settings
from adapters.sources.segment import not_erased
from journey_engine import trace
from journey_engine.engine import Outcome
from journey_engine.events import Event
from journey_engine.ports import LEASE_SECONDS, Batch, ConflictError, ServiceStore, StoreUnavailable
from journey_engine.runtime import Runtime

log = logging.getLogger("journey.serve")
T = TypeVar("T")


class Overloaded(Exception):
    """More events wait for the engine than `Settings.queue_limit`: refused before they are queued."""


class WorkerLost(StoreUnavailable):
    """An engine process stopped while it held these events (`--workers`): some may be committed, so retry."""


class PartlyCommitted(StoreUnavailable):
    """A request spread over engine processes (`--workers`) of which some committed their part and one
    failed: the retry is safe for events with a messageId (deduplicated), as for any retry."""


class EngineHost(Protocol):
    """Runs the engine on the store for a source, in order, between batches of events.

    Every call but `start`, `stop` and `timers` answers at once with a Future, settled once what it asked
    is committed (or failed: StoreUnavailable and ConflictError are transient, WorkerLost and
    PartlyCommitted say a retry is needed, anything else is a bug that was logged). A host may run
    several calls at once; each engine takes its calls in the order they were made.
    """

    waiting: int  # events submitted and not yet committed (the queue gauge, /healthz)

    def start(self) -> None:
        """Start the engine(s): a second start while running does nothing; a start after stop starts again."""

    def stop(self) -> None:
        """Finish what was queued (within a timeout) and stop; what was not answered fails."""

    def submit(self, events: list[Event]) -> Future[list[int]]:
        """Apply and commit the events of a request at the wall clock, grouped with other requests (group
        commit). Raises Overloaded when more than `Settings.queue_limit` events would wait. The result is
        the positions of the events the engine raised on (isolated by halving; the others are committed)."""
        ...

    def process(self, events: list[Event], now: datetime | None = None) -> Future[Any]:
        """`Runtime.process` on the engine(s): the events applied at `now` (None: each at its own time)."""
        ...

    def advance(self, until: datetime) -> Future[Any]:
        """`Runtime.advance` on the engine(s): everything due up to `until` fires."""
        ...

    def call(self, job: Callable[[Runtime], T]) -> Future[list[T]]:
        """`job(runtime)` on every engine between its batches, the results in engine order (a job for
        engine processes must pickle: a module-level function or a `functools.partial` of one)."""
        ...

    def timers(self) -> None:
        """Fire what is due on the wall clock, a few claims per turn so events go in between; returns once
        nothing is due (the timer job's turn)."""

    def enroll(self) -> Future[Any]:
        """New segment-entry journeys take their segment's members (SPEC §3 item 5)."""
        ...

    def erase(self, user: str) -> Future[bool]:
        """Erase a user between batches (erasure must not race with the user's events)."""
        ...


class Pipeline(Protocol):
    """A store that commits behind the engine (adapters/bus/pipeline.py)."""

    def commit_later(self, batch: Batch) -> Future[None]: ...

    def flush(self) -> bool: ...

    def recover(self) -> None: ...

    def forget(self, *, behind: bool = False) -> None: ...


class InProcessHost:
    """The one thread that runs the engine: batches of events, timer rounds, erasures, in order.

    With a `pipeline` (a bus worker), a batch of events is committed behind the engine while it applies the
    next; a request's future still settles only once its batch is committed. Everything else the thread
    runs (timers, erasures, jobs) waits for what is in flight first. After a failed commit the batches
    behind it fail too, until the caller has called `recover`, and submits them again in order."""

    def __init__(self, runtime: Runtime, store: ServiceStore, settings: Settings | None = None,
                 metrics: Metrics | None = None, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 pipeline: Pipeline | None = None) -> None:
        self.runtime, self.store, self.clock, self.pipeline = runtime, store, clock, pipeline
        self._broken = False  # a pipelined batch failed: later ones fail too, until `recover`
        self.settings = settings if settings is not None else Settings()
        self.metrics = metrics if metrics is not None else Metrics()
        self.work: queue.Queue[tuple[list[Event] | Callable[[], Any], Future[Any]]] = queue.Queue()
        self.waiting = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the engine thread (again after a stop; a second start while running does nothing)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="journey-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, events: list[Event]) -> Future[list[int]]:
        with self._lock:
            if self.waiting + len(events) > self.settings.queue_limit:
                raise Overloaded
            self.waiting += len(events)
        future: Future[list[int]] = Future()
        self.work.put((events, future))
        self.metrics.queue_depth.set(self.waiting)
        return future

    def later(self, job: Callable[[], T]) -> Future[T]:
        """Run `job` on the engine thread, between batches."""
        future: Future[T] = Future()
        self.work.put((job, future))
        return future

    def call(self, job: Callable[[Runtime], T]) -> Future[list[T]]:
        return self.later(lambda: [job(self.runtime)])

    def process(self, events: list[Event], now: datetime | None = None) -> Future[Any]:
        return self.later(lambda: self._observed(self.runtime.process(events, now)))

    def advance(self, until: datetime) -> Future[Any]:
        return self.later(lambda: self._observed(self.runtime.advance(until)))

    def _observed(self, outcome: Outcome) -> None:
        self.metrics.observe(outcome, 0, 0.0)

    def timers(self) -> None:
        drain_timers(self, self.metrics)

    def enroll(self) -> Future[Any]:
        return self.later(lambda: self.runtime.enroll(self.clock()))

    def erase(self, user: str) -> Future[bool]:
        return self.later(lambda: self.store.erase(user, self.clock()))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.work.get(timeout=0.05)
            except queue.Empty:
                continue
            items = [first]
            size = len(first[0]) if isinstance(first[0], list) else 0
            while size < self.settings.max_batch_events:
                try:
                    item = self.work.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                size += len(item[0]) if isinstance(item[0], list) else 0
            self._handle(items)

    def recover(self) -> Future[None]:
        """After a commit behind the engine failed: accept batches again, no kept profile of before, the
        bandits back to the committed arms. The caller then submits the failed batches again, in order
        (`submit_alone`); if this fails too (the database still away), it calls it again."""
        def recover() -> None:
            assert self.pipeline is not None
            self.pipeline.recover()
            self.runtime.forget()
            self._broken = False

        return self.later(recover)

    def submit_alone(self, events: list[Event]) -> Future[list[int]]:
        """`submit`, committed on its own once nothing is in flight, an event the engine or the database
        raises on isolated by halving (`_commit`): how a failed batch is run again."""
        future: Future[list[int]] = Future()
        with self._lock:
            self.waiting += len(events)
        self.later(lambda: self._commit([(events, future)]))
        return future

    def _handle(self, items: list[tuple[list[Event] | Callable[[], Any], Future[Any]]]) -> None:
        requests = [(payload, f) for payload, f in items if isinstance(payload, list)]
        if requests:
            if self.pipeline is not None:
                self._commit_later(requests)
            elif not self._commit(requests) and len(requests) > 1:
                self._one_by_one(requests)
        for payload, future in items:
            if not isinstance(payload, list):
                if self.pipeline is not None:
                    self.pipeline.flush()
                try:
                    future.set_result(payload())
                except Exception as exc:
                    future.set_exception(exc)

    def _one_by_one(self, requests: list[tuple[list[Event], Future[Any]]]) -> None:
        """Each request alone: one bad request must not fail the others in its group. With a pipeline, the
        ones after a request that was not committed fail too (they must not commit before it)."""
        for n, request in enumerate(requests):
            self._commit([request])
            if self.pipeline is not None and request[1].exception() is not None:
                self._broken = True
                for _, future in requests[n + 1:]:
                    future.set_exception(EarlierBatchFailed())
                self._done(sum(len(payload) for payload, _ in requests[n + 1:]))
                return

    def _commit_later(self, requests: list[tuple[list[Event], Future[Any]]]) -> None:
        """`_commit` with the batch committed behind the engine: the futures settle once it is."""
        assert self.pipeline is not None
        events = [e for payload, _ in requests for e in payload]
        began = time.perf_counter()
        if self._broken:  # one before it failed: applied now, this one would come before it
            self._settle(requests, outcome=None, events=len(events), began=began, error=EarlierBatchFailed())
            return
        try:
            kept = not_erased(events, self.store.erased)
            batch, outcome = self.runtime.prepare([events[i] for i in kept], self.clock())
            done = self.pipeline.commit_later(batch)
        except (StoreUnavailable, ConflictError) as exc:
            # nothing of it is in flight, but what it loaded from a batch in flight it may have changed: once
            # those are committed (or failed), no kept profile is handed out again
            self.pipeline.forget(behind=True)
            self._settle(requests, outcome=None, events=len(events), began=began, error=exc)
            return
        except Exception:  # the engine raised, or the batch did not encode: isolate the event(s), as ever
            broken = self.pipeline.flush()
            self.pipeline.forget()
            if broken:
                self._settle(requests, outcome=None, events=len(events), began=began, error=EarlierBatchFailed())
            elif not self._commit(requests):
                if len(requests) > 1:
                    self._one_by_one(requests)
                else:
                    self._broken = True
            return
        done.add_done_callback(lambda d: self._settle(requests, outcome, len(events), began, d.exception()))

    def _settle(self, requests: list[tuple[list[Event], Future[Any]]], outcome: Outcome | None, events: int,
                began: float, error: BaseException | None) -> None:
        if error is not None:
            self._broken = True
        elif outcome is not None:
            self.metrics.observe(outcome, events, time.perf_counter() - began)
        for _, future in requests:
            if error is None:
                future.set_result([])
            else:
                future.set_exception(error)
        self._done(events)

    def _process(self, events: list[Event]) -> tuple[list[int], Outcome]:
        """Apply and commit the events that name no erased id. An id erased while its event was on the way
        makes the commit conflict: the erasure is then seen, and the batch applied again without it."""
        for attempt in range(3):
            kept = not_erased(events, self.store.erased)
            try:
                return kept, self.runtime.process([events[i] for i in kept], self.clock())
            except ConflictError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _commit(self, requests: list[tuple[list[Event], Future[Any]]]) -> bool:
        """Apply and commit these requests' events as one batch; settle their futures if it worked.

        A future's result is the positions of its events the engine raised on (see `_halve`)."""
        events = [e for payload, _ in requests for e in payload]
        began = time.perf_counter()
        try:
            kept, outcome = self._process(events)
            failed: list[int] = []
        except (StoreUnavailable, ConflictError) as exc:  # not committed: nobody is told it was accepted
            log.warning("batch of %d events not committed: %s", len(events), exc)
            return self._failed(requests, exc)
        except Exception as exc:
            if len(requests) > 1:
                return False  # the caller retries each request alone, so one cannot fail the others
            log.exception("the engine raised on a request of %d events; isolating the event(s)", len(events))
            try:
                kept = not_erased(events, self.store.erased)
                failed = [kept[i] for i, _ in self._halve([events[i] for i in kept], self._apply)]
            except Exception as again:
                return self._failed(requests, again if isinstance(again, StoreUnavailable | ConflictError) else exc)
            outcome = Outcome()
        self.metrics.observe(outcome, len(events) - len(failed), time.perf_counter() - began)
        for _, future in requests:
            future.set_result(failed)
        self._done(len(events))
        return True

    def _apply(self, events: list[Event]) -> Outcome:
        return self.runtime.process(events, self.clock())

    def wake_some(self, rounds: int) -> tuple[Outcome, bool]:
        """A few timer rounds (`Runtime.advance_some`), each isolating the users it fails on."""
        return self.runtime.advance_some(self.clock(), rounds, wake=self._wake)

    def _wake(self, users: list[str], until: datetime) -> Outcome:
        """Wake one round's claimed users; a user the engine or the store fails on (bad data, a bug) is
        isolated by halving, so every other user of the round moves on. The isolated user keeps the
        claim until its lease runs out, then is tried again (a passing fault heals), traced each time."""
        try:
            return self.runtime.wake(users, until)
        except (StoreUnavailable, ConflictError):
            raise
        except Exception:
            log.exception("a timer round of %d users failed; isolating the user(s)", len(users))
        outcome = Outcome()

        def wake(part: list[str]) -> Outcome:
            out = self.runtime.wake(part, until)
            outcome.extend(out)
            return out

        for position, error in self._halve(users, wake):
            self._trace_isolated(users[position], error)
        return outcome

    def _trace_isolated(self, user: str, error: Exception) -> None:
        record = trace.other("user_isolated", self.clock(), user, error=f"{type(error).__name__}: {error}"[:500],
                             retry_in_s=LEASE_SECONDS)
        try:
            self.store.commit(Batch(records=[record]))
        except Exception:  # the user's id itself may be what the store refuses: the log keeps it
            log.exception("could not trace the isolation of user %r", user)

    def _halve(self, items: list[T], apply: Callable[[list[T]], Any]) -> list[tuple[int, Exception]]:
        """`apply` (which commits) every item it can, halving around the ones it raises on (a bug or data
        no store takes: each is logged); return their positions with the error. One bad event or user
        must not hold back the rest of its request or timer round, nor be retried by the SDKs forever."""
        if not items:
            return []
        try:
            apply(items)
            return []
        except (StoreUnavailable, ConflictError):
            raise
        except Exception as exc:
            if len(items) == 1:
                log.exception("isolated %r: it fails even alone", items[0])
                return [(0, exc)]
        middle = len(items) // 2
        return self._halve(items[:middle], apply) + [(middle + i, e) for i, e in self._halve(items[middle:], apply)]

    def _failed(self, requests: list[tuple[list[Event], Future[Any]]], exc: BaseException) -> bool:
        if len(requests) == 1:
            requests[0][1].set_exception(exc)
            self._done(len(requests[0][0]))
        return False

    def _done(self, events: int) -> None:
        with self._lock:
            self.waiting -= events
        self.metrics.queue_depth.set(self.waiting)


class Observer(Protocol):
    def observe(self, outcome: Outcome, events: int, seconds: float) -> None: ...


def drain_timers(host: InProcessHost, metrics: Observer) -> None:
    """Fire everything due, a few claims per turn of the engine thread: events queued meanwhile go in between."""
    more = True
    while more:
        outcome, more = host.later(lambda: host.wake_some(rounds=4)).result()
        metrics.observe(outcome, 0, 0.0)
