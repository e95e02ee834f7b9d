"""`journey demo` (SPEC §7): a seeded synthetic population lives through a workspace on the engine.

`run_demo` drives `Runtime` in time order with the events of `Population` (see `population` for who
they are, `answers` for how they answer messages); same seed, same result (for a given store kind).
"""

from __future__ import annotations

import heapq
import math
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from adapters.demo.answers import Responses
from adapters.demo.population import DAY, Population
from adapters.demo.results import DemoResult
from adapters.storage.sql import SqlStore
from journey_engine.compiler import CompiledWorkspace
from journey_engine.engine import Engine, Outcome
from journey_engine.events import Event
from journey_engine.memory import MemoryStore
from journey_engine.ports import Batch, Store
from journey_engine.runtime import Runtime


class _Watched:
    """The demo's store, watched for when the engine next needs to run without an event.

    Every profile the runtime commits carries its `wake_at`; the earliest one says whether
    `Runtime.advance` has anything to do, so the run skips the calls that would find nothing due.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.wakes: dict[str, float] = {}
        self.heap: list[tuple[float, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def commit(self, batch: Batch) -> None:
        self.store.commit(batch)
        for user, profile in batch.profiles.items():
            at = profile.wake_at
            if at is None:
                self.wakes.pop(user, None)
            elif self.wakes.get(user) != at:
                self.wakes[user] = at
                heapq.heappush(self.heap, (at, user))
        for user in batch.deleted:
            self.wakes.pop(user, None)

    def next_wake(self) -> float:
        heap = self.heap
        while heap and self.wakes.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # stale: that user's wake-up moved or went
        return heap[0][0] if heap else math.inf


def run_demo(compiled: CompiledWorkspace, store: Store | None = None, *, users: int = 10_000, days: int = 30,
             seed: int = 7, start: datetime = datetime(2026, 3, 2, tzinfo=UTC),
             progress: Callable[[float, str], None] | None = None,
             on_batch: Callable[[list[Event]], None] | None = None) -> DemoResult:
    """Let `users` synthetic people live `days` days through the workspace on the engine, on `store`.

    `store` should be empty (None: a MemoryStore): the people are u0, u1, ... and their events' ids
    are the same in every run with this seed, so a store that saw a run before drops them as duplicates.

    Events go to `Runtime.process` in time order, in batches of at most BATCH_MAX events within
    BATCH_WINDOW, each preceded by `Runtime.advance` when a committed profile has a wake-up due by
    then (the store is watched for them: `_Watched`); the sends that come out are answered by the
    population (see the module docstring). `progress(fraction, message)` is called as the days go by;
    `on_batch(events)` sees every batch before the engine does.
    """
    began = time.perf_counter()
    population = Population(users=users, days=days, seed=seed, start=start)
    responses = Responses(population, compiled)
    target: Store = store if store is not None else MemoryStore()
    if isinstance(target, SqlStore):
        target.mark_simulated("journey demo")  # its outbox holds simulated sends: `serve` must never send them
    watched = _Watched(target)
    runtime = Runtime(Engine(compiled, seed=seed), watched,  # type: ignore[arg-type]
                      claim=1 if isinstance(target, MemoryStore) else 500)
    sends = Counter[str]()
    channels = Counter[str]()
    end = datetime.fromtimestamp(population.end, UTC)
    span = population.end - population.first
    reported = -1.0

    def observe(outcome: Outcome) -> None:
        for send in outcome.sends:
            sends[send.message] += 1
            channels[send.channel] += 1
        responses.observe(outcome)

    for at, until in population.windows():
        population.clock(at)
        if watched.next_wake() <= at:
            observe(runtime.advance(datetime.fromtimestamp(at, UTC)))  # timers and deferred sends due by now
        batch = population.next_batch(until)
        if batch:
            if on_batch is not None:
                on_batch(batch)
            observe(runtime.process(batch))
        done = (until - population.first) / span
        if progress is not None and done - reported >= 0.01:
            reported = done
            day = (until - population.start) / DAY
            when = f"day {day:4.1f}" if day >= 0 else "replaying existing customers' orders"
            progress(done, f"{when}: {sum(population.events.values()):,} events, {sum(sends.values()):,} sends")
    population.clock(population.end)
    observe(runtime.advance(end))
    if progress is not None:
        progress(1.0, f"done: {sum(population.events.values()):,} events, {sum(sends.values()):,} sends")
    return population.result(seed=seed, elapsed=time.perf_counter() - began, sends=sends, channels=channels,
                             answered=responses.answered())
