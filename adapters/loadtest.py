"""`journey bench --http URL`: drive a running `journey serve` over loopback with `/v1/batch` requests
of 100 events, as the SDKs do, and measure acknowledged events per second and acknowledgement latency.

Two modes: as fast as `concurrency` connections allow (throughput), or at a fixed `rate` of events per
second (latency under a given load; requests are started on schedule, not when the previous ended).
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from datetime import UTC, datetime
from typing import Any

import httpx

NAMES = ["Feature Used", "Page Viewed", "Application Opened", "Product Added", "Order Completed"]


def _batch(rng: random.Random, users: int, size: int, serial: int) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    messages = []
    for n in range(size):
        user = f"load-{rng.randrange(users)}"
        name = rng.choice(NAMES)
        props: dict[str, Any] = {"cartId": f"c{rng.randrange(2)}", "price": 30} if name == "Product Added" else {}
        messages.append({"type": "track", "userId": user, "event": name, "properties": props,
                         "messageId": f"load-{serial}-{n}-{rng.getrandbits(32):x}", "timestamp": now})
    return {"batch": messages, "sentAt": now}


async def _run(url: str, key: str | None, *, requests: int, size: int, users: int, concurrency: int,
               rate: float | None, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(serial: int, due: float | None) -> None:
            body = _batch(rng, users, size, serial)
            async with gate:
                # at a fixed rate the clock starts at the scheduled send time, so time spent queueing
                # for a connection counts (no coordinated omission); flat out, it starts at the send
                began = due if due is not None else time.perf_counter()
                response = await client.post("/v1/batch", json=body)
                latencies.append(time.perf_counter() - began)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        began = time.perf_counter()
        tasks = []
        for serial in range(requests):
            due = None
            if rate:
                due = began + serial * size / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(serial, due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
    latencies.sort()
    accepted = statuses.get(200, 0) * size
    return {"mode": "rate" if rate else "throughput", "requests": requests, "events": requests * size,
            "batch": size, "concurrency": concurrency, "target_rate": rate, "seconds": round(elapsed, 3),
            "events_per_s": round(accepted / elapsed) if elapsed else 0,
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else 0,
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1)
            if latencies else 0,
            "statuses": {str(k): v for k, v in sorted(statuses.items())}}


def run_http_bench(url: str, key: str | None = None, *, requests: int = 500, size: int = 100, users: int = 10_000,
                   concurrency: int = 8, rate: float | None = None, seed: int = 1) -> dict[str, Any]:
    return asyncio.run(_run(url.rstrip("/"), key, requests=requests, size=size, users=users,
                            concurrency=concurrency, rate=rate, seed=seed))
