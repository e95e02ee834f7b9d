"""`journey serve --workers N`: the HTTP front in this process, the engine in N processes.

Each engine process owns a partition of the users (`journey_engine.ports.partition`) and runs the same
`EngineWorker` as the one-process server: group commit, isolation of an event the engine raises on,
timer rounds and erasure between batches. A request's events are split by partition, in order, and
the request is answered once every partition it touched has committed its part. When one part fails,
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

import itertools
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters.sources.http_api import (
    EngineWorker,
    Metrics,
    Observed,
    Overloaded,
    Settings,
    WorkerLost,
    drain_timers,
)
from adapters.storage.sql import SqlStore
from journey_engine.engine import Outcome
from journey_engine.events import Event
from journey_engine.ports import ConflictError, StoreUnavailable, partition

log = logging.getLogger("journey.serve")

START_TIMEOUT = 120.0  # seconds for an engine process to load the workspace and open the store
ALIVE_EVERY = 0.5  # seconds between checks that every engine process still runs


class ProcessWorkers:
    """N engine processes behind the same interface as `EngineWorker` (submit, timers, enroll, erase)."""

    def __init__(self, folder: Path, url: str, count: int, settings: Settings, metrics: Metrics,
                 store: SqlStore) -> None:
        self.folder, self.url, self.count, self.settings, self.metrics = folder, url, count, settings, metrics
        self.store = store  # reads only: where an erasure goes
        self.waiting = 0
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[Future[Any], int]] = {}  # request -> (future, partition)
        self._ids = itertools.count()
        self._context = multiprocessing.get_context("spawn")
        self._replies: Any = None
        self._inboxes: list[Any] = []
        self._processes: list[Any] = []
        self._ready: list[Future[None]] = []
        self._reader: threading.Thread | None = None
        self._stopping = False
        self._started = False  # every process has started once: from then on, a lost one is started again

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._reader is not None:
            return
        self._stopping = False
        self._replies = self._context.Queue()
        self._inboxes = [None] * self.count
        self._processes = [None] * self.count
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
        process = self._context.Process(target=_engine_process, name=f"journey-engine-{index}", daemon=True,
                                        args=(str(self.folder), self.url, index, self.count, self.settings,
                                              inbox, self._replies))
        process.start()
        self._inboxes[index], self._processes[index] = inbox, process

    def stop(self) -> None:
        self._stopping = True
        self._started = False
        for inbox in self._inboxes:
            inbox.put(None)
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        if self._reader is not None:
            self._replies.put(("stopped", -1, None))
            self._reader.join(timeout=10)
            self._reader = None
        self._fail(lambda _: True, WorkerLost("the server stopped before these events were committed; retry"))
        for inbox in self._inboxes:
            inbox.cancel_join_thread()  # what a dead process never read was failed above: do not wait on it
            inbox.close()
        self._replies.close()

    # --- work -----------------------------------------------------------------------------------

    def submit(self, events: list[Event]) -> Future[list[int]]:
        """The events split by partition, in order; the result (positions the engine could not apply)
        once every part is committed, or the first part's error."""
        with self._lock:
            if self.waiting + len(events) > self.settings.queue_limit:
                raise Overloaded
            self.waiting += len(events)
        self.metrics.queue_depth.set(self.waiting)
        sent = [(positions, self._send(part, "events", [events[p] for p in positions]))
                for part, positions in self._split(events).items()]
        combined: Future[list[int]] = Future()
        left = [len(sent)]

        def settle(_: Future[Any]) -> None:
            with self._lock:
                left[0] -= 1
                if left[0]:
                    return
                self.waiting -= len(events)
            self.metrics.queue_depth.set(self.waiting)
            errors = [f.exception() for _, f in sent if f.exception() is not None]
            if errors:
                combined.set_exception(errors[0])  # type: ignore[arg-type]
            else:
                combined.set_result(sorted(positions[i] for positions, f in sent for i in f.result()))

        if not sent:
            combined.set_result([])
        for _, future in sent:
            future.add_done_callback(settle)
        return combined

    def timers(self) -> None:
        """Fire what is due, every process its own claims (claims are leased: none is fired twice)."""
        for future in [self._send(index, "timers", None) for index in range(self.count)]:
            future.result()

    # `journey ingest --workers`: a `Runtime`'s two calls, answered with a Future of every process's part
    # (each process takes its messages in order, so a caller may go on before they are done)

    def advance(self, until: datetime) -> Future[None]:
        """Every process fires what is due for its own users up to `until`."""
        return self._all([self._send(index, "advance", until) for index in range(self.count)])

    def process(self, events: list[Event], now: datetime | None = None) -> Future[None]:
        """Apply and commit the events, each process its own users' part; the Future fails with the first
        part's error once every part is done (the other parts are committed: a rerun finds them
        deduplicated)."""
        return self._all([self._send(part, "process", ([events[p] for p in positions], now))
                          for part, positions in self._split(events).items()])

    def _all(self, parts: list[Future[Any]]) -> Future[None]:
        done: Future[None] = Future()
        left = [len(parts)]

        def settle(_: Future[Any]) -> None:
            with self._lock:
                left[0] -= 1
                if left[0]:
                    return
            errors = [f.exception() for f in parts if f.exception() is not None]
            if errors:
                done.set_exception(errors[0])  # type: ignore[arg-type]
            else:
                done.set_result(None)

        if not parts:
            done.set_result(None)
        for part in parts:
            part.add_done_callback(settle)
        return done

    def _split(self, events: list[Event]) -> dict[int, list[int]]:
        """Positions of the events by the partition of their user, in order."""
        parts: dict[int, list[int]] = {}
        for position, event in enumerate(events):
            parts.setdefault(partition(event.user_id, self.count), []).append(position)
        return parts

    def enroll(self) -> Future[Any]:
        return self._send(0, "enroll", None)

    def erase(self, user: str) -> Future[Any]:
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
        checked = time.monotonic()
        while True:
            try:
                kind, request, body = self._replies.get(timeout=ALIVE_EVERY)
            except queue.Empty:
                kind = ""
            if kind == "stopped":
                return
            if kind == "metrics":
                self.metrics.add(body)
            elif kind == "ready":
                self._ready[request].set_result(None)
            elif kind in ("done", "failed"):
                with self._lock:
                    future, _ = self._pending.pop(request, (None, 0))
                if future is not None:
                    if kind == "done":
                        future.set_result(body)
                    else:
                        future.set_exception(_error(*body))
            if time.monotonic() - checked >= ALIVE_EVERY:
                checked = time.monotonic()
                self._restart_lost()

    def _restart_lost(self) -> None:
        """An engine process that died fails the requests it held and is started again (one that dies while
        the server starts fails the start)."""
        for index, process in enumerate(self._processes):
            if self._stopping or process.is_alive() or (not self._started and self._ready[index].done()):
                continue
            log.error("engine process %d stopped (exit code %s)", index, process.exitcode)
            lost = WorkerLost(f"engine process {index} stopped while applying these events; retry")
            if not self._started:
                self._ready[index].set_exception(RuntimeError(f"it exited with code {process.exitcode}"))
                self._fail(lambda part, i=index: part == i, lost)  # type: ignore[misc]
                continue
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

class _Tally:
    """An engine process's metrics: each batch's observations go to the HTTP process, which keeps them."""

    def __init__(self, replies: Any) -> None:
        self.replies = replies
        self.queue_depth = _NoGauge()  # the HTTP process counts what waits

    def observe(self, outcome: Outcome, events: int, seconds: float) -> None:
        seen = Observed.of(outcome, events, seconds)
        if seen.events or seen.sends or seen.timers:
            self.replies.put(("metrics", -1, seen))


class _NoGauge:
    def set(self, value: float) -> None:
        pass


def _engine_process(folder: str, url: str, index: int, count: int, settings: Settings, inbox: Any,
                    replies: Any) -> None:
    """Load the workspace, open the store, then apply what the HTTP process sends until told to stop."""
    from adapters.cli import tune_gc
    from journey_engine.compiler import load_workspace
    from journey_engine.engine import Engine
    from journey_engine.runtime import Runtime

    compiled = load_workspace(folder)
    tune_gc()
    store = SqlStore(url, defaults=dict(compiled.metrics.defaults), upgrade=False)
    runtime = Runtime(Engine(compiled), store, claim=500, part=(index, count))
    tally = _Tally(replies)
    clock = lambda: datetime.now(UTC)  # noqa: E731
    # the HTTP process enforces the queue limit; this one takes whatever it was given
    worker = EngineWorker(runtime, store, replace(settings, queue_limit=2**62), tally, clock)  # type: ignore[arg-type]
    worker.start()
    side = ThreadPoolExecutor(1, thread_name_prefix="journey-timers")  # timer rounds wait between batches
    replies.put(("ready", index, None))
    jobs: dict[str, Callable[[Any], Future[Any]]] = {
        "events": worker.submit,
        "timers": lambda _: side.submit(drain_timers, worker, runtime, tally, clock),  # type: ignore[arg-type]
        "enroll": lambda _: worker.call(lambda: _observed(tally, runtime.enroll(clock()))),
        "erase": lambda user: worker.call(lambda: store.erase(user, clock())),
        "advance": lambda until: worker.call(lambda: _observed(tally, runtime.advance(until))),
        "process": lambda job: worker.call(lambda: _observed(tally, runtime.process(*job))),
    }
    try:
        while (item := inbox.get()) is not None:
            request, kind, payload = item
            jobs[kind](payload).add_done_callback(lambda f, r=request: _reply(replies, r, f))
    finally:
        side.shutdown(wait=True)
        worker.stop()
        store.close()


def _observed(tally: _Tally, outcome: Outcome) -> None:
    tally.observe(outcome, 0, 0.0)


def _reply(replies: Any, request: int, future: Future[Any]) -> None:
    exc = future.exception()
    if exc is None:
        replies.put(("done", request, future.result()))
        return
    kind = "unavailable" if isinstance(exc, StoreUnavailable) else "conflict" if isinstance(exc, ConflictError) \
        else "internal"
    if kind == "internal":
        log.error("engine process: %r", exc)
    replies.put(("failed", request, (kind, str(exc))))
