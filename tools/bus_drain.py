"""A bus worker draining a backlog: what docs/performance.md measures the worker by, apart from the publisher.

    .venv/bin/python tools/bus_drain.py [--events 50000] [--users 10000] [--workers 1]
        [--bus nats://127.0.0.1:4222] [--database postgresql+psycopg://postgres@127.0.0.1:5432/test]

Publishes the session mix to a stream of its own (timed alone), then starts the workers (`journey worker`'s
engine, as `journey bench --bus` runs them) and reports the drain rate between 10% and 90% of the events
applied, when every partition is leased and read. The stream and the schema are deleted at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters import bench_bus  # noqa: E402
from adapters.bench import MIXES  # noqa: E402
from adapters.bus.publisher import BusPublisher  # noqa: E402
from adapters.bus.stream import BusConfig  # noqa: E402
from adapters.service.settings import Settings  # noqa: E402
from adapters.storage.sql import SqlStore  # noqa: E402
from journey_engine.compiler import load_workspace  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--bus", default="nats://127.0.0.1:4222")
    parser.add_argument("--database", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    folder = ROOT / "journeys"
    compiled = load_workspace(folder)
    stream = bench_bus._shifted(list(MIXES["session"](args.users, args.events, 1, timedelta(days=30))))
    tag = f"drain{os.getpid()}"
    config = BusConfig(args.bus, stream=f"JOURNEY_{tag.upper()}", prefix=f"journey.{tag}", partitions=16)
    schema = f"journey_{tag}"
    store = SqlStore(args.database, defaults=dict(compiled.metrics.defaults), schema=schema)
    store.mark_simulated("tools/bus_drain.py")
    publisher = BusPublisher(config, store, Settings(queue_limit=2**62), name=tag)
    context = multiprocessing.get_context("spawn")
    stop, ready = context.Event(), context.Queue()
    procs = [context.Process(target=bench_bus._worker, daemon=True,
                             args=(str(folder), store.url, schema, config, f"{tag}-{i}", ready, stop))
             for i in range(args.workers)]
    try:
        publisher.start()
        published = bench_bus.publish(publisher, stream)
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.get(timeout=120)
        marks: dict[int, float] = {}
        low, high = len(stream) // 10, len(stream) * 9 // 10

        def drained() -> bool:
            applied = bench_bus._applied(store)
            for mark in (low, high):
                if applied >= mark:
                    marks.setdefault(mark, time.perf_counter())
            return applied >= len(stream)

        bench_bus._wait(drained, 3600, "the workers did not apply every event")
        print(f"published {len(stream) / published:,.0f} events/s; {args.workers} worker(s) drained "
              f"{(high - low) / (marks[high] - marks[low]):,.0f} events/s (10% to 90% applied)")
    finally:
        bench_bus.clean_up(stop, procs, publisher, store)


if __name__ == "__main__":
    main()
