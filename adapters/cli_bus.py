"""The bus's part of the `journey` command (SPEC §9): `journey worker`, and `--bus` for serve and bench.

Kept beside adapters/cli.py, which registers the command, so that one stays wiring of one page; imports
of the service happen inside the functions, as there.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

err = Console(stderr=True, highlight=False)

Bus = Annotated[str | None, typer.Option("--bus", envvar="JOURNEY_BUS_URL", help="NATS JetStream URL(s), "
                                            "comma-separated: events go to the log, `journey worker`s apply them")]


class Mix(StrEnum):
    session = "session"
    uniform = "uniform"


MixOpt = Annotated[Mix, typer.Option(help="the event mix: session (bursts minutes apart, days between), uniform")]


def bench_elsewhere(http: str | None, bus: str | None, folder: Path, database: str, *, users: int, events: int,
                    seed: int, days: float, mix: str, rate: float | None, requests: int, workers: int,
                    progress: Any) -> None:
    """`journey bench --http URL`: drive a running `journey serve` (adapters/loadtest.py); `--bus URL`: the bus
    path with `workers` bus workers beside the in-memory engine (adapters/bench_bus.py). Prints one JSON object."""
    sys.stdout.write(json.dumps(_bench_elsewhere(http, bus, folder, database, users=users, events=events, seed=seed,
                                                 days=days, mix=mix, rate=rate, requests=requests, workers=workers,
                                                 progress=progress)) + "\n")


def _bench_elsewhere(http: str | None, bus: str | None, folder: Path, database: str, *, users: int, events: int,
                     seed: int, days: float, mix: str, rate: float | None, requests: int, workers: int,
                     progress: Any) -> dict[str, Any]:
    from datetime import timedelta

    if http is not None:
        from adapters.loadtest import run_http_bench

        keys = os.environ.get("JOURNEY_WRITE_KEYS", "").split(",")
        return run_http_bench(http, keys[0] or None, requests=requests, users=users, rate=rate, seed=seed)
    from adapters.bench_bus import run_bus_bench
    from journey_engine.compiler import load_workspace

    assert bus is not None
    if not database.startswith("postgres"):
        err.print("[red]--bus needs JOURNEY_DATABASE_URL (or --database): a postgresql:// URL[/red]")
        raise typer.Exit(2)
    return run_bus_bench(load_workspace(folder), folder, bus=bus, database=database, workers=workers, users=users,
                         events=events, seed=seed, span=timedelta(days=days), mix=mix, rate=rate or 2000.0,
                         progress=progress)


def publisher_for(bus: str | None, store: Any, settings: Any) -> Any:
    """`serve --bus`: the engine host that publishes to the log (None without a bus)."""
    if bus is None:
        return None
    from adapters.bus.publisher import BusPublisher
    from adapters.bus.stream import BusConfig

    return BusPublisher(BusConfig.from_env(bus), store, settings)


def worker(bus: Annotated[str, typer.Option(envvar="JOURNEY_BUS_URL", help="NATS URL(s), comma-separated")],
           host: Annotated[str, typer.Option(help="address of /metrics and /healthz")] = "127.0.0.1",
           port: Annotated[int, typer.Option(help="port of /metrics and /healthz")] = 8001,
           name: Annotated[str | None, typer.Option(help="this worker's name in leases and metrics")] = None,
           workspace: Annotated[Path | None, typer.Option("--workspace", "-w", envvar="JOURNEY_WORKSPACE",
                                                          help="workspace folder (default: journeys/)")] = None,
           database: Annotated[str | None, typer.Option("--database", "-d", envvar="JOURNEY_DATABASE_URL",
                                                        help="PostgreSQL URL shared by the workers")] = None) -> None:
    """An engine process fed by the bus (SPEC §9): leases partitions, applies them, fires their timers, sends."""
    from adapters.channels import ChannelConfigError, ChannelSettings, build_channels
    from adapters.service.settings import Settings
    from adapters.service.tuning import tune_gc
    from adapters.storage.sql import SqlStore
    from journey_engine.compiler import load_workspace
    from journey_engine.deployment import adopt
    from journey_engine.errors import WorkspaceError
    from journey_engine.ports import StoreUnavailable, StoreVersionError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # "skipped: max instances" is by design
    if not database or not database.startswith("postgres"):
        err.print("[red]workers share PostgreSQL: set JOURNEY_DATABASE_URL (or --database) to a postgresql:// "
                  "URL[/red]")
        raise typer.Exit(2)
    folder = workspace or Path("journeys")
    try:
        compiled = load_workspace(folder)
        channels = build_channels(ChannelSettings.from_env())
        store = SqlStore(database, defaults=dict(compiled.metrics.defaults))  # the schema made or upgraded
        compiled = adopt(compiled, store)  # the journey versions in force, as `journey serve` applied them
        store.close()
    except WorkspaceError as exc:
        for problem in exc.problems:
            err.print(str(problem), soft_wrap=True)
        raise typer.Exit(2) from None
    except (ChannelConfigError, StoreUnavailable, StoreVersionError) as exc:
        err.print(f"[red]{exc}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    tune_gc()
    settings = Settings(tick=float(os.environ.get("JOURNEY_TICK_SECONDS", "1")),
                        outbox_lease=float(os.environ.get("JOURNEY_OUTBOX_LEASE_SECONDS") or 60),
                        kept_profiles=int(os.environ.get("JOURNEY_KEPT_PROFILES") or 100_000))
    _run_worker(compiled, folder, database, bus, settings, channels, host=host, port=port, name=name)


def _run_worker(compiled: Any, folder: Path, database: str, bus: str, settings: Any, channels: Any, *, host: str,
                port: int, name: str | None) -> None:
    """A `BusWorker` behind the same service and HTTP app as `journey serve`, until Ctrl-C or SIGTERM: its
    port answers /metrics (lag per partition and owner beside the engine's metrics) and /healthz (the store
    and the bus); its event routes publish to the bus like `serve --bus`. The scheduler fires the held
    partitions' timers and dispatches the outbox."""
    import uvicorn

    from adapters.bus.leases import FencedStore
    from adapters.bus.stream import BusConfig
    from adapters.service.metrics import Metrics
    from adapters.service.worker import BusWorker
    from adapters.sources.http_api import create_app
    from journey_engine.compiler import load_workspace

    store = FencedStore(database, defaults=dict(compiled.metrics.defaults))
    try:
        metrics = Metrics()
        worker = BusWorker(compiled, store, BusConfig.from_env(bus), settings, metrics, name=name,
                           files=lambda: load_workspace(folder))
        app = create_app(compiled, store, settings, channels=channels, host=worker, metrics=metrics)
        err.print(f"journey worker {worker.name} on http://{host}:{port}  workspace {folder}  bus {bus}")
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
    finally:
        store.close()
