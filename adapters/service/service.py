"""The service `journey serve` runs behind its HTTP front: an engine host, the outbox dispatcher, the
scheduled jobs (timers, dispatch, pruning) and the metrics, started and stopped together."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from adapters.scheduling.apscheduler import build_scheduler
from adapters.scheduling.dispatcher import Dispatcher
from adapters.service.host import EngineHost, InProcessHost
from adapters.service.metrics import Metrics
from adapters.service.processes import ProcessHost
from adapters.service.settings import Settings
from adapters.storage.sql import SqlStore
from journey_engine.compiler import CompiledWorkspace
from journey_engine.engine import Engine
from journey_engine.ports import Channel, ServiceStore
from journey_engine.runtime import Runtime


def engine_host(engine: Engine, store: ServiceStore, settings: Settings, metrics: Metrics, *, workers: int = 1,
                folder: Path | None = None, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> EngineHost:
    """The engine in this process (`workers` 1), or in that many processes loading the workspace from
    `folder` on the wall clock. Processes share the store's database: they need a SqlStore."""
    if workers > 1:
        if folder is None:
            raise ValueError("engine processes load the workspace from its folder: pass `folder`")
        if not isinstance(store, SqlStore):
            raise ValueError("engine processes share a database: more than one worker needs SQLite or "
                             "PostgreSQL, not the memory store")
        return ProcessHost(folder, store, workers, settings, metrics)
    return InProcessHost(Runtime(engine, store, claim=500, live=True), store, settings, metrics, clock)


class Service:
    """With `scheduler`, APScheduler jobs fire timers and dispatch the outbox to `channels`.

    `workers` > 1: the engine runs in that many processes, each owning a partition of the users; they
    load the workspace from `folder` and use the wall clock (adapters/service/processes.py)."""

    def __init__(self, compiled: CompiledWorkspace, store: ServiceStore, settings: Settings | None = None, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 channels: Mapping[str, Channel] | None = None, scheduler: bool = True,
                 workers: int = 1, folder: Path | None = None, host: EngineHost | None = None,
                 metrics: Metrics | None = None) -> None:
        """`host`: another engine host than the one `workers` chooses (the bus: `serve --bus` publishes, `journey
        worker` applies), with the `metrics` it reports to."""
        self.compiled, self.store, self.clock = compiled, store, clock
        self.settings = settings or Settings()
        self.channels = dict(channels or {})
        self.scheduler = scheduler
        self.metrics = metrics if metrics is not None else Metrics()
        self.engine = Engine(compiled, send_expiry=self.settings.send_expiry)
        self.host = host if host is not None else engine_host(self.engine, store, self.settings, self.metrics,
                                                              workers=workers, folder=folder, clock=clock)
        self.dispatcher = Dispatcher(store, self.engine, self.channels, clock=clock, feedback=self.host.submit,
                                     lease=self.settings.outbox_lease)
        self.jobs = build_scheduler(timers=self.host.timers, dispatch=self.dispatch,
                                    prune=lambda: store.prune(clock()), tick=self.settings.tick)
        self.metrics.watch(store, clock)

    def dispatch(self) -> int:
        """Hand what is due in the outbox to the channels (the dispatch job's turn)."""
        counts = self.dispatcher.run_once()
        for status, n in counts.items():
            self.metrics.deliveries.labels(status).inc(n)
        return sum(counts.values())

    @asynccontextmanager
    async def running(self, start: bool = True) -> AsyncIterator[None]:
        """The host started (new segment-entry journeys enrolled first, SPEC §3 item 5) and the jobs
        scheduled; at the end, stopped, and the channels closed. `start` False: neither (tests drive it)."""
        if start:
            self.host.start()
            await asyncio.wrap_future(self.host.enroll())
            if self.scheduler:
                self.jobs.start()
        try:
            yield
        finally:
            if start:
                if self.scheduler:
                    self.jobs.stop()
                self.host.stop()
            for channel in self.channels.values():
                close = getattr(channel, "close", None)  # a channel may keep a connection (see Channel)
                if close is not None:
                    close()
