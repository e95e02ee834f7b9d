"""`journey bench --bus URL --workers N`: the bus path measured beside the in-memory engine, same mix, same run.

The in-memory engine applies the stream one event at a time on the wall clock, as a live service does
(timestamps shifted to end now). The bus path: a `BusPublisher` (what `serve --bus` runs, without HTTP)
publishes the same events to a stream of the benchmark's own, and N `BusWorker` processes (what
`journey worker` runs) lease its partitions and commit to PostgreSQL in a schema of the benchmark's own;
both are deleted at the end. Measured:

- throughput: every event published as fast as JetStream takes it, events/s from the first publish to the
  last commit (`events_per_s`), and the publishing alone (`published_per_s`);
- latency at a fixed offered rate (default 2,000 events/s, requests of 100): from a request's publish to
  JetStream's acknowledgement of all its events, what `serve --bus` answers on (`ack_p50_ms`,
  `ack_p99_ms`), and the lag (events published and not yet committed) sampled every 0.5 s.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import time
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from adapters.bench import MIXES, Progress, _rss_mb
from adapters.bus.leases import FencedStore
from adapters.bus.publisher import BusPublisher
from adapters.bus.stream import BusConfig
from adapters.service.settings import Settings
from adapters.storage.sql import SqlStore
from journey_engine.compiler import CompiledWorkspace
from journey_engine.engine import Engine
from journey_engine.events import Event
from journey_engine.runtime import MemoryStore, Runtime

REQUEST = 100  # events per publish request, as SDK batches
IN_FLIGHT = 8  # requests published and not yet acknowledged, flat out


def run_bus_bench(compiled: CompiledWorkspace, folder: Path, *, bus: str, database: str, workers: int, users: int,
                  events: int, seed: int, span: timedelta, mix: str, rate: float = 2000.0, seconds: float = 10.0,
                  partitions: int = 16, progress: Progress | None = None) -> dict[str, Any]:
    stream = _shifted(list(MIXES[mix](users, events, seed, span)))
    paced = _shifted(list(MIXES[mix](users, int(rate * seconds), seed + 1, span)), prefix="r")
    memory = _in_memory(compiled, stream)
    _say(progress, f"in memory: {memory:,.0f} events/s")
    tag = f"{os.getpid()}"
    config = BusConfig(bus, stream=f"JOURNEY_BENCH_{tag}", prefix=f"journey.bench{tag}", partitions=partitions)
    schema = f"journey_bench_{tag}"
    store = SqlStore(database, defaults=dict(compiled.metrics.defaults), schema=schema)
    store.mark_simulated("journey bench")
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    ready = context.Queue()
    procs = [context.Process(target=_worker, args=(str(folder), store.url, schema, config, f"bench-{i}", ready, stop),
                             daemon=True) for i in range(workers)]
    publisher = BusPublisher(config, store, Settings(queue_limit=2**62), name="journey-bench")
    report: dict[str, Any] = {"mix": mix, "events": len(stream), "users": users, "workers": workers,
                              "partitions": partitions, "memory_events_per_s": round(memory)}
    try:
        publisher.start()
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.get(timeout=120)
        # the steady state: every partition leased and each worker at its share (a worker that started first
        # takes them all, then gives back to the others as they are seen; the handover is not what is measured)
        _wait(lambda: _shared(_leased(store, config), partitions, workers), 60,
              "the workers did not share the partitions")
        report.update(_flat_out(publisher, store, stream, progress))
        report.update(_paced(publisher, store, paced, rate, len(stream), progress))
        report["bus_vs_memory"] = round(report["events_per_s"] / memory, 2) if memory else None
        report["rss_mb"] = round(_rss_mb(), 1)
    finally:
        clean_up(stop, procs, publisher, store)
    return report


def clean_up(stop: Any, procs: list[Any], publisher: BusPublisher, store: SqlStore) -> None:
    """Stop the worker processes, delete the benchmark's stream and schema."""
    stop.set()
    for proc in procs:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    with contextlib.suppress(Exception):  # the stream is the benchmark's own: left behind, it harms nothing
        publisher.loop.run(publisher.js.delete_stream(publisher.config.stream)).result(timeout=30)
    publisher.stop()
    store.drop_schema()
    store.close()


def _shifted(events: list[Event], prefix: str | None = None) -> list[Event]:
    """The events moved in time to end now (a live service's recent traffic); with `prefix`, new messageIds."""
    if not events:
        return events
    shift = datetime.now(UTC) - events[-1].timestamp
    return [Event(type=e.type, user_id=e.user_id, name=e.name, properties=e.properties, traits=e.traits,
                  timestamp=e.timestamp + shift, previous_id=e.previous_id,
                  message_id=f"{prefix}{i}" if prefix else e.message_id) for i, e in enumerate(events)]


def _in_memory(compiled: CompiledWorkspace, stream: list[Event]) -> float:
    """Events/s of the engine on a MemoryStore, one event at a time at the wall clock (as a live service)."""
    runtime = Runtime(Engine(compiled), MemoryStore())
    began = time.perf_counter()
    for event in stream:
        runtime.process([event], datetime.now(UTC))
    return len(stream) / (time.perf_counter() - began)


def publish(publisher: BusPublisher, stream: list[Event]) -> float:
    """Publish the events flat out, in requests of REQUEST with IN_FLIGHT unanswered; the seconds it took."""
    began = time.perf_counter()
    pending: list[Future[list[int]]] = []
    for chunk in _chunks(stream, REQUEST):
        pending.append(publisher.submit(chunk))
        while len(pending) > IN_FLIGHT:
            pending.pop(0).result(timeout=60)
    for future in pending:
        future.result(timeout=60)
    return time.perf_counter() - began


def _flat_out(publisher: BusPublisher, store: SqlStore, stream: list[Event],
              progress: Progress | None) -> dict[str, Any]:
    began = time.perf_counter()
    published = publish(publisher, stream)
    _say(progress, f"published {len(stream):,} events in {published:.1f} s")
    _wait(lambda: _applied(store) >= len(stream), 3600, "the workers did not commit every event", progress)
    applied = time.perf_counter() - began
    return {"published_per_s": round(len(stream) / published), "seconds": round(applied, 3),
            "events_per_s": round(len(stream) / applied)}


def _paced(publisher: BusPublisher, store: SqlStore, stream: list[Event], rate: float, before: int,
           progress: Progress | None) -> dict[str, Any]:
    """Requests of REQUEST events at `rate`; ack latency per request; lag sampled as it goes."""
    acks: list[float] = []
    lags: list[int] = []
    began = time.perf_counter()
    next_sample = began
    sent = 0
    for n, chunk in enumerate(_chunks(stream, REQUEST)):
        due = began + n * REQUEST / rate
        while (now := time.perf_counter()) < due:
            if now >= next_sample:
                lags.append(sent - (_applied(store) - before))
                next_sample = now + 0.5
            time.sleep(min(0.005, due - now))  # the offered rate's pace
        publisher.submit(chunk).add_done_callback(functools.partial(_acked, acks, time.perf_counter()))
        sent += len(chunk)
    offered = time.perf_counter() - began
    _wait(lambda: _applied(store) - before >= len(stream), 3600, "the workers did not commit every event", progress)
    drained = time.perf_counter() - began - offered
    acks.sort()
    return {"rate": rate, "rate_achieved": round(len(stream) / offered), "ack_p50_ms": _ms(acks, 0.5),
            "ack_p99_ms": _ms(acks, 0.99), "lag_max_events": max(lags, default=0),
            "lag_mean_events": round(sum(lags) / len(lags)) if lags else 0,
            "drain_after_last_publish_s": round(drained, 3)}


def _acked(acks: list[float], started: float, _: Future[list[int]]) -> None:
    acks.append(time.perf_counter() - started)


def _ms(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(len(values) * q))] * 1000, 3) if values else 0.0


def _chunks(events: list[Event], size: int) -> Iterable[list[Event]]:
    return (events[i:i + size] for i in range(0, len(events), size))


def _applied(store: SqlStore) -> int:
    from adapters.storage.sql import processed_t

    return store.count(processed_t)


def _shared(held: list[int], partitions: int, workers: int) -> bool:
    """Every partition leased, by every worker, none over its share (`Leases.share`)."""
    return sum(held) == partitions and len(held) == workers and max(held) <= -(-partitions // workers)


def _leased(store: SqlStore, config: BusConfig) -> list[int]:
    """How many partitions each worker holds, most first."""
    import sqlalchemy as sa

    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM bus_leases WHERE stream = :s AND owner IS NOT NULL "
                                    "AND expires_at > :now GROUP BY owner"), {"s": config.stream, "now": time.time()})
        return sorted((int(n) for (n,) in rows), reverse=True)


def _wait(condition: Any, seconds: float, failure: str, progress: Progress | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(failure)
        time.sleep(0.05)  # the workers are other processes: they tell nobody


def _say(progress: Progress | None, text: str) -> None:
    if progress is not None:
        progress.print(text)


def _worker(folder: str, url: str, schema: str, config: BusConfig, name: str, ready: Any, stop: Any) -> None:
    """One `journey worker`'s engine in a process of its own, until `stop` is set."""
    from adapters.service.tuning import tune_gc
    from adapters.service.worker import BusWorker
    from journey_engine.compiler import load_workspace

    compiled = load_workspace(folder)
    tune_gc()
    store = FencedStore(url, defaults=dict(compiled.metrics.defaults), upgrade=False, schema=schema)
    worker = BusWorker(compiled, store, config, replace(Settings(), queue_limit=2**62), name=name)
    worker.start()
    ready.put(name)
    stop.wait()
    worker.stop()
    store.close()
