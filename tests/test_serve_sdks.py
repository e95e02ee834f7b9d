"""A real `journey serve` on a loopback port, fed by the official Segment and RudderStack Python SDKs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).parent.parent
KEY = "WRITE_KEY_abc123"
ADMIN = "admin-secret"


@pytest.fixture(params=[1, 2], ids=["one-engine", "two-engine-processes"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """`journey serve` on SQLite, with the engine in the server process or in two processes of its own."""
    port = free_port()
    env = {**os.environ, "JOURNEY_WRITE_KEYS": KEY, "JOURNEY_ADMIN_KEY": ADMIN,
           "JOURNEY_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}"}
    proc = subprocess.Popen([sys.executable, "-m", "adapters.cli", "serve", "--port", str(port),
                             "--workspace", str(ROOT / "journeys"), "--workers", str(request.param)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(url, proc)
    yield url
    proc.terminate()
    proc.communicate(timeout=15)


def wait_until_up(url: str, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    """Until `journey serve` at `url` answers /healthz; its stderr in the error if it never does."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "server did not start")


def user(url: str, user_id: str) -> dict[str, object]:
    response = httpx.get(f"{url}/v1/users/{user_id}", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
    assert response.status_code == 200, response.text
    data: dict[str, object] = response.json()
    return data


def test_the_segment_sdk_works_unchanged(server: str) -> None:
    """segment-analytics-python pointed at the engine: identify + track land, the user is read back."""
    from segment.analytics import Client

    errors: list[object] = []
    client = Client(write_key=KEY, host=server, on_error=lambda e, batch: errors.append(e), max_retries=1)
    now = datetime.now(UTC)
    client.identify("seg-1", {"email": "jane@example.com", "timezone": "Europe/Berlin", "first_name": "Jane",
                              "created_at": now.isoformat()},
                    timestamp=now)
    client.track("seg-1", "Signed Up", {"source": "ads"}, timestamp=now)
    client.track("seg-1", "Feature Used", timestamp=now)
    client.flush()
    client.join()
    assert errors == []
    found = user(server, "seg-1")
    assert found["traits"]["first_name"] == "Jane"  # type: ignore[index]
    assert found["metrics"]["feature_uses_7d"] == 1  # type: ignore[index]
    assert [j["journey"] for j in found["journeys"]] == ["onboarding"]  # type: ignore[union-attr,index]


def test_the_rudderstack_sdk_works_unchanged(server: str) -> None:
    """rudder-sdk-python (gzip, traits under context.traits, only 200 counts as success) lands once."""
    from rudderstack.analytics import Client

    errors: list[object] = []
    client = Client(write_key=KEY, host=server, on_error=lambda e, batch: errors.append(e), max_retries=1)
    now = datetime.now(UTC)
    client.identify("rs-1", {"email": "ann@example.com", "first_name": "Ann"}, timestamp=now)
    client.track("rs-1", "Product Added", {"cartId": "C1", "price": 120}, timestamp=now)
    client.track("rs-1", "Product Added", {"cartId": "C1", "price": 120}, timestamp=now)
    client.flush()
    client.join()
    assert errors == []
    found = user(server, "rs-1")
    assert found["traits"]["first_name"] == "Ann"  # type: ignore[index]
    assert found["metrics"]["cart_adds_1h"] == 2  # type: ignore[index]
    assert [(j["journey"], j["key"]) for j in found["journeys"]] == [  # type: ignore[union-attr,index]
        ("cart_abandonment", "C1")]


def test_a_bad_key_is_refused_and_the_sdk_does_not_retry(server: str) -> None:
    """A wrong write key is a final 401 for the SDK (on_error called, nothing stored)."""
    from segment.analytics import Client

    errors: list[object] = []
    client = Client(write_key="wrong", host=server, on_error=lambda e, batch: errors.append(e), max_retries=1)
    client.track("seg-x", "Signed Up")
    client.flush()
    client.join()
    assert errors
    response = httpx.get(f"{server}/v1/users/seg-x", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5)
    assert response.status_code == 404
