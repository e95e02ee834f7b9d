"""What `journey worker` runs: a `BusWorker` behind the same service and HTTP app as `journey serve`.

Its port answers /metrics (lag per partition and owner, as well as the engine's own metrics) and /healthz
(the store and the bus); the event routes work too, publishing to the bus like `serve --bus`. The
scheduler fires the timers of the held partitions and dispatches the outbox.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from adapters.bus.leases import FencedStore
from adapters.bus.stream import BusConfig
from adapters.service.metrics import Metrics
from adapters.service.settings import Settings
from adapters.service.worker import BusWorker
from journey_engine.compiler import CompiledWorkspace
from journey_engine.ports import Channel

log = logging.getLogger("journey.worker")


def run_worker(compiled: CompiledWorkspace, folder: Path, database: str, bus: str, settings: Settings,
               channels: Mapping[str, Channel], *, host: str, port: int, name: str | None) -> None:
    """Serve until Ctrl-C or SIGTERM; then finish the batch in hand and give the partitions back."""
    import uvicorn

    from adapters.sources.http_api import create_app

    store = FencedStore(database, defaults=dict(compiled.metrics.defaults))
    try:
        metrics = Metrics()
        worker = BusWorker(compiled, store, BusConfig.from_env(bus), settings, metrics, name=name)
        app = create_app(compiled, store, settings, channels=channels, host=worker, metrics=metrics)
        log.warning("journey worker %s on http://%s:%d  workspace %s  bus %s", worker.name, host, port, folder, bus)
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
    finally:
        store.close()
