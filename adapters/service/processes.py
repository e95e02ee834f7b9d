"""`--workers N` (serve, ingest, bench): the source in this process, the engine in N processes.

`ProcessHost` is an `EngineHost` (adapters/service/host.py). Each engine process owns a partition of the
users (`journey_engine.ports.partition`) and runs the same `InProcessHost` as the one-process server:
group commit, isolation of an event the engine raises on, timer rounds and erasure between batches.
A request's events are split by partition, in order, and the request is answered once every partition it
touched has committed its part. When one part fails,
the request is refused (503) and the SDK's retry finds the parts already committed deduplicated by
messageId. Each process claims only its own users' timers (`Store.due(part=...)`), so a timer round
never races the other process's events. Dispatching the outbox, pruning and every read stay in this
process: they go through the store, whose claims and tokens already keep concurrent workers apart.

Why processes: one Python process runs the engine on one core (the GIL), and with the HTTP front and
the store's own work in the same process the engine gets less than that.

Engine processes are started with `spawn` (this process runs threads: forking them is unsafe) and
load the workspace from its folder. One that dies fails the requests it held (503, retry) and is
started again.
"""

from __future__ import annotations

import functools
import itertools
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from multiprocessing import connection
from pathlib import Path
from typing import Any, TypeVar

from adapters.service.host import InProcessHost, Overloaded, PartlyCommitted, WorkerLost, drain_timers
from adapters.service.metrics import Metrics, Observed
from adapters.service.settings import Settings
from adapters.service.tuning import tune_gc
from adapters.storage.sql import SqlStore
from journey_engine.compiler import load_workspace
from journey_engine.deployment import adopt
from journey_engine.engine import Engine, Outcome
from journey_engine.events import Event
from journey_engine.ports import ConflictError, StoreUnavailable, partition
from journey_engine.runtime import Runtime

log = logging.getLogger("journey.serve")
T = TypeVar("T")

START_TIMEOUT = 120.0  # seconds for an engine process to load the workspace and open the store
ALIVE_EVERY = 0.5  # seconds the reply reader waits before looking again at which processes run
STOP_TIMEOUT = 15.0  # seconds for all engine processes together to finish at shutdown


class ProcessHost:
    """N engine processes behind the `EngineHost` contract.

    They load the workspace from `folder` and open `store`'s database (its schema too). `live`: they run
    on the wall clock (a service); otherwise `advance` and `process` replay time (`ingest --clock event`
    takes the same calls, `bench`). `seed` seeds their engines' choices (bench)."""

    def __init__(self, folder: Path, store: SqlStore, count: int, settings: Settings | None = None,
                 metrics: Metrics | None = None, *, live: bool = True, seed: int = 0) -> None:
        self.folder, self.url, self.count = folder, store.url, count
        self.settings = settings if settings is not None else Settings()
        self.metrics = metrics if metrics is not None else Metrics()
        self.store = store  # reads only: where an erasure goes
        self.options = _Options(store.schema, live, seed)
        self.waiting = 0
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[Future[Any], int]] = {}  # request -> (future, partition)
        self._ids = itertools.count()
        self._context = multiprocessing.get_context("spawn")
        # per process: its inbox, its reply pipe (one writer each: a process killed while writing garbles
        # only its own), the process, and whether it has said it is ready
        self._inboxes: list[Any] = []
        self._pipes: list[Any] = []
        self._processes: list[Any] = []
        self._ready: list[Future[None]] = []
        self._reader: threading.Thread | None = None
        self._stopping = False
        self._started = False  # every process has started once: from then on, a lost one is started again
        self._gone: set[Any] = set()  # processes whose end was handled

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._reader is not None:
            return
        self._stopping = False
        self._inboxes, self._pipes, self._processes = [None] * self.count, [None] * self.count, [None] * self.count
        self._ready = [Future() for _ in range(self.count)]
        for index in range(self.count):
            self._spawn(index)
        self._reader = threading.Thread(target=self._read, name="journey-engine-replies", daemon=True)
        self._reader.start()
        for index, ready in enumerate(self._ready):
            try:
                ready.result(timeout=START_TIMEOUT)
            except Exception as exc:
                self.stop()
                raise RuntimeError(f"engine process {index} did not start: {exc}") from None
        self._started = True

    def _spawn(self, index: int) -> None:
        inbox = self._context.Queue()
        replies, reply_end = self._context.Pipe(duplex=False)
        process = self._context.Process(target=_engine_process, name=f"journey-engine-{index}", daemon=True,
                                        args=(str(self.folder), self.url, index, self.count, self.settings,
                                              self.options, inbox, reply_end))
        process.start()
        reply_end.close()  # the child holds the only write end: its death is this pipe's end of file
        self._inboxes[index], self._pipes[index], self._processes[index] = inbox, replies, process

    def stop(self) -> None:
        """Tell every process to finish, wait for them together (then kill what is left), read their last
        replies, and fail whatever was not answered."""
        self._stopping = True
        self._started = False
        for inbox in self._inboxes:
            inbox.put(None)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in self._processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=10)
            self._reader = None
        self._fail(lambda _: True, WorkerLost("the server stopped before these events were committed; retry"))
        for inbox in self._inboxes:
            inbox.cancel_join_thread()  # what a dead process never read was failed above: do not wait on it
            inbox.close()
        for pipe in self._pipes:
            pipe.close()
        self._inboxes, self._pipes = [], []  # let their semaphores go now, not at interpreter exit

    # --- work -----------------------------------------------------------------------------------

    def submit(self, events: list[Event]) -> Future[list[int]]:
        """The events split by partition, in order; the result (positions the engine could not apply)
        once every part is committed, or the error of a part that failed (see `_all`)."""
        with self._lock:
            if self.waiting + len(events) > self.settings.queue_limit:
                raise Overloaded
            self.waiting += len(events)
        self.metrics.queue_depth.set(self.waiting)
        sent = [(positions, self._send(part, "events", [events[p] for p in positions]))
                for part, positions in self._split(events).items()]
        done = self._all([future for _, future in sent])
        result: Future[list[int]] = Future()

        def settle(_: Future[Any]) -> None:
            with self._lock:
                self.waiting -= len(events)
            self.metrics.queue_depth.set(self.waiting)
            error = done.exception()
            if error is not None:
                result.set_exception(error)
            else:  # each part's failed positions are positions in its part: back to the request's
                result.set_result(sorted(positions[i] for (positions, _), failed in zip(sent, done.result(),
                                                                                         strict=True)
                                         for i in failed))

        done.add_done_callback(settle)
        return result

    def timers(self) -> None:
        """Fire what is due, every process its own claims (claims are leased: none is fired twice)."""
        self._all([self._send(index, "timers", None) for index in range(self.count)]).result()

    # `Runtime`'s calls, answered with a Future of every process's part (each process takes its messages in
    # order, so a caller may go on before they are done)

    def call(self, job: Callable[[Runtime], T]) -> Future[list[T]]:
        """`job(runtime)` in every process, between its batches."""
        return self._all([self._send(index, "call", job) for index in range(self.count)])

    def advance(self, until: datetime) -> Future[list[Any]]:
        """Every process fires what is due for its own users up to `until`."""
        return self._all([self._send(index, "advance", until) for index in range(self.count)])

    def process(self, events: list[Event], now: datetime | None = None) -> Future[list[Any]]:
        """Apply and commit the events, each process its own users' part; the Future fails with the first
        part's error once every part is done (the other parts are committed: a rerun finds them
        deduplicated)."""
        return self._all([self._send(part, "process", ([events[p] for p in positions], now))
                          for part, positions in self._split(events).items()])

    def _all(self, parts: list[Future[Any]]) -> Future[list[Any]]:
        """The parts' results, in order, once every part is done; if one failed, its error (PartlyCommitted
        when another part committed)."""
        done: Future[list[Any]] = Future()
        left = [len(parts)]

        def settle(_: Future[Any]) -> None:
            with self._lock:
                left[0] -= 1
                if left[0]:
                    return
            errors = [f.exception() for f in parts if f.exception() is not None]
            if errors and len(errors) < len(parts):
                done.set_exception(PartlyCommitted(str(errors[0])))
            elif errors:
                done.set_exception(errors[0])
            else:
                done.set_result([f.result() for f in parts])

        if not parts:
            done.set_result([])
        for part in parts:
            part.add_done_callback(settle)
        return done

    def _split(self, events: list[Event]) -> dict[int, list[int]]:
        """Positions of the events by the partition of their user, in order. An alias in the request takes
        the events of both its ids, before and after it, to the new id's process: merged there in order.
        (An id merged by an earlier request may still come here under its old id: that process applies it
        to the user it was merged into, and the store refuses to create the old id again.)"""
        merged: dict[str, str] = {}
        for event in events:
            if event.type == "alias" and event.previous_id and event.previous_id != event.user_id:
                merged[event.previous_id] = event.user_id
        parts: dict[int, list[int]] = {}
        for position, event in enumerate(events):
            user = event.user_id
            for _ in range(len(merged)):  # follow a -> b -> c within the request, never round a loop
                if user not in merged:
                    break
                user = merged[user]
            parts.setdefault(partition(user, self.count), []).append(position)
        return parts

    def enroll(self) -> Future[Any]:
        return self._send(0, "enroll", None)

    def erase(self, user: str) -> Future[bool]:
        """On the process that owns the user the id resolves to, between its batches."""
        owner = self.store.aliases([user]).get(user, user)
        return self._send(partition(owner, self.count), "erase", user)

    def _send(self, index: int, kind: str, payload: Any) -> Future[Any]:
        future: Future[Any] = Future()
        request = next(self._ids)
        with self._lock:
            self._pending[request] = (future, index)
            inbox = self._inboxes[index]
        inbox.put((request, kind, payload))
        return future

    # --- replies --------------------------------------------------------------------------------

    def _read(self) -> None:
        """Settle futures from every process's replies; notice a process's death as soon as it happens
        (its sentinel), after reading what it answered before. Returns once stopping and all are gone."""
        while True:
            with self._lock:
                pipes, processes = list(self._pipes), list(self._processes)
            if self._stopping and all(p in self._gone for p in processes):
                return
            sentinels = {p.sentinel: i for i, p in enumerate(processes) if p not in self._gone}
            live = [pipe for i, pipe in enumerate(pipes) if processes[i] not in self._gone]
            for ready in connection.wait([*live, *sentinels], timeout=ALIVE_EVERY):
                try:
                    if ready in sentinels:
                        index = sentinels[ready]
                    else:
                        index = pipes.index(ready)
                        if self._receive(ready):
                            continue
                    self._drain(pipes[index])
                    self._lost(index, processes[index])
                except Exception:  # never let one bad reply stop the thread every request waits on
                    log.exception("engine replies: could not handle a reply")

    def _drain(self, pipe: Any) -> None:
        """What a process that ended answered before it did (its pipe then reads as finished)."""
        while pipe.poll() and self._receive(pipe):
            pass

    def _receive(self, pipe: Any) -> bool:
        """Handle one reply; False when the pipe is finished (the process is gone)."""
        try:
            kind, request, body = pipe.recv()
        except (EOFError, OSError):
            return False
        if kind == "metrics":
            self.metrics.add(body)
        elif kind == "ready":
            if not self._ready[request].done():
                self._ready[request].set_result(None)
        else:
            with self._lock:
                future, _ = self._pending.pop(request, (None, 0))
            if future is not None:
                if kind == "done":
                    future.set_result(body)
                else:
                    future.set_exception(_error(*body))
        return True

    def _lost(self, index: int, process: Any) -> None:
        """A process that ended fails the requests it held and is started again (one that ends while the
        server starts fails the start; while stopping, nothing is started)."""
        with self._lock:
            if self._processes[index] is not process or process in self._gone:
                return  # replaced already, or seen through its pipe and its sentinel both
            self._gone.add(process)
        process.join(timeout=5)
        lost = WorkerLost(f"engine process {index} stopped while applying these events; retry")
        if not self._stopping:
            log.error("engine process %d stopped (exit code %s)", index, process.exitcode)
        if not self._started:
            if not self._ready[index].done():
                self._ready[index].set_exception(RuntimeError(f"it exited with code {process.exitcode}"))
            self._fail(lambda part, i=index: part == i, lost)  # type: ignore[misc]
            return
        with self._lock:  # no request goes to the old inbox once its own are failed
            self._ready[index] = Future()
            self._spawn(index)
            held = [r for r, (_, part) in self._pending.items() if part == index]
            futures = [self._pending.pop(r)[0] for r in held]
        for future in futures:
            future.set_exception(lost)

    def _fail(self, which: Callable[[int], bool], exc: Exception) -> None:
        with self._lock:
            lost = [r for r, (_, part) in self._pending.items() if which(part)]
            futures = [self._pending.pop(r)[0] for r in lost]
        for future in futures:
            future.set_exception(exc)


_ERRORS: dict[str, type[Exception]] = {"unavailable": StoreUnavailable, "conflict": ConflictError}


def _error(kind: str, message: str) -> Exception:
    return _ERRORS.get(kind, RuntimeError)(message)


# --- the engine process ---------------------------------------------------------------------------

class _Replies:
    """The write end of this process's reply pipe, shared by its threads (one message at a time)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.lock = threading.Lock()

    def put(self, message: tuple[str, int, Any]) -> None:
        with self.lock:
            self.pipe.send(message)


class _Tally:
    """An engine process's metrics: each batch's observations go to the HTTP process, which keeps them."""

    def __init__(self, replies: _Replies) -> None:
        self.replies = replies
        self.queue_depth = _NoGauge()  # the HTTP process counts what waits

    def observe(self, outcome: Outcome, events: int, seconds: float) -> None:
        seen = Observed.of(outcome, events, seconds)
        if seen.events or seen.sends or seen.timers or seen.records or seen.effects:
            self.replies.put(("metrics", -1, seen))


class _NoGauge:
    def set(self, value: float) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _Options:
    schema: str | None  # the store's PostgreSQL schema (bench keeps its own)
    live: bool  # the engine runs on the wall clock (see `Runtime`)
    seed: int  # the engine's choices


def _engine_process(folder: str, url: str, index: int, count: int, settings: Settings, options: _Options,
                    inbox: Any, pipe: Any) -> None:
    """Load the workspace, open the store, then apply what the HTTP process sends until told to stop (or
    until that process is gone). Ctrl-C and SIGTERM are the HTTP process's to handle: it stops this one
    after its last requests."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    compiled = load_workspace(folder)
    tune_gc()
    store = SqlStore(url, defaults=dict(compiled.metrics.defaults), upgrade=False, schema=options.schema)
    compiled = adopt(compiled, store)  # the versions in force, as the parent applied them
    runtime = Runtime(Engine(compiled, seed=options.seed, send_expiry=settings.send_expiry), store, claim=500,
                      part=(index, count), live=options.live)
    replies = _Replies(pipe)
    tally = _Tally(replies)

    def clock() -> datetime:
        return datetime.now(UTC)

    # the HTTP process enforces the queue limit; this one takes whatever it was given
    worker = InProcessHost(runtime, store, replace(settings, queue_limit=2**62), tally, clock)  # type: ignore[arg-type]
    worker.start()
    side = ThreadPoolExecutor(1, thread_name_prefix="journey-timers")  # timer rounds wait between batches
    replies.put(("ready", index, None))
    jobs: dict[str, Callable[[Any], Future[Any]]] = {
        "events": worker.submit,
        "timers": lambda _: side.submit(drain_timers, worker, tally),
        "enroll": lambda _: worker.later(lambda: _observed(tally, runtime.enroll(clock()))),
        "erase": lambda user: worker.later(lambda: store.erase(user, clock())),
        "advance": lambda until: worker.later(lambda: _observed(tally, runtime.advance(until))),
        "process": lambda job: worker.later(lambda: _observed(tally, runtime.process(*job))),
        "call": lambda job: worker.later(lambda: job(runtime)),
    }
    try:
        while True:
            try:
                item = inbox.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:  # the HTTP process died without telling us: nobody is waiting
                    break
                continue
            if item is None:
                break
            request, kind, payload = item
            jobs[kind](payload).add_done_callback(functools.partial(_reply, replies, request))
    finally:
        side.shutdown(wait=True)
        worker.stop()
        store.close()


def _observed(tally: _Tally, outcome: Outcome) -> None:
    tally.observe(outcome, 0, 0.0)


def _reply(replies: _Replies, request: int, future: Future[Any]) -> None:
    exc = future.exception()
    if exc is None:
        replies.put(("done", request, future.result()))
        return
    kind = "unavailable" if isinstance(exc, StoreUnavailable) else "conflict" if isinstance(exc, ConflictError) \
        else "internal"
    if kind == "internal":
        log.error("engine process: %r", exc)
    replies.put(("failed", request, (kind, str(exc))))
