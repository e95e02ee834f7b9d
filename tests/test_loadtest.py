"""`journey bench --http` (adapters/loadtest.py): latency at a fixed rate counts queueing time."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from adapters import loadtest


def test_rate_mode_measures_from_the_scheduled_send_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests due at once through one connection wait for each other; that wait is latency too."""

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(200, json={"success": True})

    real = httpx.AsyncClient

    def client(*args: Any, **kwargs: Any) -> httpx.AsyncClient:
        return real(*args, **{**kwargs, "transport": httpx.MockTransport(slow)})

    monkeypatch.setattr(httpx, "AsyncClient", client)
    result = loadtest.run_http_bench("http://test", requests=6, size=1, concurrency=1, rate=1_000_000)
    assert result["statuses"] == {"200": 6}
    assert result["p99_ms"] >= 250  # the sixth waited for five others of 50 ms each
