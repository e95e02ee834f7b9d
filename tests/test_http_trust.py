"""What the HTTP API can be trusted with (issue 16): bad bytes never cost good messages or other users'
timers, an erased id stays erased, any id can be read and erased, and /healthz tells the truth. Each test
runs on SQLite and on PostgreSQL where the store matters: both stores behave the same."""

from __future__ import annotations

import base64
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi.testclient import TestClient

from adapters.service.settings import Settings
from adapters.sources.http_api import create_app
from adapters.storage.sql import SqlStore
from journey_engine.events import Event

from .conftest import free_port, postgres_or_skip
from .test_http_api import ADMIN, BEARER, COMPILED, KEY, NOW, identify, post, track

STORES = ["sqlite", "postgres"]


def store_url(kind: str, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'trust.db'}" if kind == "sqlite" else postgres_or_skip()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore(store_url(request.param, tmp_path), defaults=dict(COMPILED.metrics.defaults))
    yield s
    s.close()


@pytest.fixture
def client(store: SqlStore) -> Iterator[TestClient]:
    app = create_app(COMPILED, store, Settings(write_keys=[KEY], admin_key=ADMIN), clock=lambda: NOW,
                     scheduler=False)
    with TestClient(app) as c:
        yield c


def state(client: TestClient, user: str, journey: str) -> str | None:
    response = client.get(f"/v1/users/{user}", headers=BEARER)
    if response.status_code == 404:
        return None
    return next((j["state"] for j in response.json()["journeys"] if j["journey"] == journey), None)


# --- finding 7: NUL characters -------------------------------------------------------------------------

NUL_MESSAGES = [
    ("user_id", track("a\u0000b"), "userId"),
    ("property", track("u9", properties={"note": "x\u0000y"}), "properties.note"),
    ("nested_trait", identify("u9", address={"lines": ["ok", "a\u0000"]}), "traits.address.lines[1]"),
    ("context_trait", {**track("u9"), "context": {"traits": {"name": "\u0000"}}}, "context.traits.name"),
    ("keyed_journey_property", track("u9", "Product Added", properties={"cartId": "c\u0000"}),
     "properties.cartId"),
    ("message_id", {**track("u9"), "messageId": "m\u0000"}, "messageId"),
]


@pytest.mark.parametrize(("bad", "field"), [m[1:] for m in NUL_MESSAGES], ids=[m[0] for m in NUL_MESSAGES])
def test_a_nul_character_refuses_only_its_message_naming_the_field(client: TestClient, bad: dict[str, Any],
                                                                   field: str) -> None:
    """A NUL anywhere in a message is a 400 naming `batch[i].<field>` on both stores (never a 500), and
    the other messages of the batch are committed, so the SDK's retry does not loop forever."""
    response = post(client, {"batch": [identify("u1"), bad, track("u1")]})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_message"
    assert body["message"].startswith(f"batch[1].{field}: contains a NUL character")
    assert body["message"].endswith("the other 2 message(s) were accepted")
    assert state(client, "u1", "onboarding") == "welcome"
    assert client.get("/metrics").text.count('journey_events_refused_total{reason="invalid_character"} 1.0') == 1


def test_the_user_api_answers_json_for_an_id_with_a_nul(client: TestClient) -> None:
    """`%00` in a user route is a JSON answer (no such user), never a plain-text 500: no stored id has one."""
    assert post(client, {"batch": [identify("u1")]}).status_code == 200
    got = client.get("/v1/users/a%00b", headers=BEARER)
    assert (got.status_code, got.json()["code"]) == (404, "not_found")
    assert client.delete("/v1/users/a%00b", headers=BEARER).json() == {"success": True, "erased": False}
    assert client.get("/v1/users/a%00b/inbox", headers=BEARER).json() == {"messages": []}
    assert client.post("/v1/users/u1/inbox/k%00/read", headers=BEARER).status_code == 404


def test_a_timer_round_isolates_the_user_it_fails_on_and_the_others_move_on(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """When waking one user raises, that user is isolated (traced as `user_isolated` with the error) and
    every other user claimed in the same round moves on; the bad one keeps its claim until the lease ends."""
    worker = client.app.state.worker  # type: ignore[attr-defined]
    users = [f"u{n}" for n in range(8)]
    cart = [track(u, "Product Added", properties={"cartId": "c1", "name": "lamp"}) for u in users]
    assert post(client, {"batch": cart}).json() == {"success": True}
    real = worker.store.commit  # the store, not the engine: the compiled engine's methods cannot be patched

    def commit(batch: Any) -> None:
        if "u5" in batch.profiles:
            raise RuntimeError("engine bug on u5")
        real(batch)

    monkeypatch.setattr(worker.store, "commit", commit)
    monkeypatch.setattr(worker, "clock", lambda: NOW + timedelta(hours=2))
    worker.timers()
    assert [state(client, u, "cart") for u in users] == ["reminded"] * 5 + ["waiting"] + ["reminded"] * 2
    isolated = [r for r in worker.store.trace("u5") if r["kind"] == "user_isolated"]
    assert len(isolated) == 1 and "engine bug on u5" in isolated[0]["error"]
    assert worker.store.due_count(NOW + timedelta(hours=2)) == 1


def test_a_keyed_journey_whose_key_postgresql_cannot_store_holds_back_no_other_timer(tmp_path: Path) -> None:
    """A NUL in a keyed journey's key, stored before NUL was refused, makes that user's timer commit raise
    on PostgreSQL: that user is isolated and the other users of the timer round move on."""
    store = SqlStore(postgres_or_skip(), defaults=dict(COMPILED.metrics.defaults))
    app = create_app(COMPILED, store, Settings(), clock=lambda: NOW, scheduler=False)
    try:
        with TestClient(app) as client:
            worker = client.app.state.worker  # type: ignore[attr-defined]
            legacy = [Event(type="track", user_id=u, timestamp=NOW, name="Product Added", message_id=u,
                            properties={"cartId": "c\x00" if u == "bad" else "c1", "name": "lamp"})
                      for u in ("a", "bad", "b")]
            worker.runtime.process(legacy, NOW)  # as an older version accepted it, past today's validation
            worker.clock = lambda: NOW + timedelta(hours=2)
            worker.timers()
            assert [state(client, u, "cart") for u in ("a", "bad", "b")] == ["reminded", "waiting", "reminded"]
            (isolated,) = [r for r in store.trace("bad") if r["kind"] == "user_isolated"]
            assert "NUL" in isolated["error"]
    finally:
        store.close()


# --- finding 8: erasure ----------------------------------------------------------------------------------


def alias(previous: str, user: str) -> dict[str, Any]:
    return {"type": "alias", "previousId": previous, "userId": user, "messageId": f"alias-{previous}-{user}",
            "timestamp": "2026-01-05T09:00:00Z"}


@pytest.mark.parametrize("side", ["previousId", "userId"])
def test_an_alias_naming_an_erased_id_is_dropped_and_the_id_stays_erased(client: TestClient, side: str) -> None:
    """After DELETE of X, an alias naming X on either side is dropped like any event of X: X reads as 404,
    the other user is untouched, and a second DELETE of X erases nothing."""
    assert post(client, {"batch": [identify("x"), identify("y"), track("y")]}).json() == {"success": True}
    assert client.delete("/v1/users/x", headers=BEARER).json() == {"success": True, "erased": True}
    merge = alias("x", "y") if side == "previousId" else alias("y", "x")
    assert post(client, {"batch": [merge]}).json() == {"success": True}
    assert client.get("/v1/users/x", headers=BEARER).status_code == 404
    assert state(client, "y", "onboarding") == "welcome"
    assert client.delete("/v1/users/x", headers=BEARER).json() == {"success": True, "erased": False}
    assert state(client, "y", "onboarding") == "welcome"


@pytest.fixture
def server(store: SqlStore) -> Iterator[str]:
    """The app behind a real uvicorn on a loopback port (the raw path as a real server passes it)."""
    app = create_app(COMPILED, store, Settings(write_keys=[KEY], admin_key=ADMIN), clock=lambda: NOW,
                     scheduler=False)
    port = free_port()
    running = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    while not running.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        thread.join(0.05)
    yield url
    running.should_exit = True
    thread.join(15)


ODD_IDS = ["a/b", "a?b=1", "a#b", "50%", "a b+c", "é/ü", "..", "/lead"]


def test_any_id_is_written_read_and_erased_through_a_percent_encoded_path(server: str) -> None:
    """Ids with `/`, `?`, `#`, `%` or spaces are read, listed and erased as `/v1/users/<percent-encoded>`."""
    auth = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}
    with httpx.Client(base_url=server, timeout=30) as http:
        batch = [m for u in ODD_IDS for m in (identify(u), {**track(u), "messageId": f"t-{u}"})]
        assert http.post("/v1/batch", json={"batch": batch}, headers=auth).json() == {"success": True}
        for user in ODD_IDS:
            path = "/v1/users/" + _encode(user)
            got = http.get(path, headers=BEARER)
            assert (got.status_code, got.json().get("user_id")) == (200, user), (path, got.text)
            assert http.get(path + "/inbox", headers=BEARER).json() == {"messages": []}
            assert http.post(path + "/inbox/nope/read", headers=BEARER).status_code == 404
            assert http.delete(path, headers=BEARER).json() == {"success": True, "erased": True}
            assert http.get(path, headers=BEARER).status_code == 404
        bad = http.get("/v1/users/%FF", headers=BEARER)
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_path")


def _encode(user: str) -> str:
    """Every reserved character percent-encoded, and dots too: clients resolve a `..` segment before sending."""
    from urllib.parse import quote

    return quote(user, safe="").replace(".", "%2E")


def test_journey_erase_erases_like_delete_and_exits_1_for_an_unknown_id(tmp_path: Path) -> None:
    """`journey erase ID` (a subprocess running these sources) erases the user and exits 0; an id never
    stored, or already erased, exits 1."""
    import os
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'erase.db'}"
    store = SqlStore(url, defaults=dict(COMPILED.metrics.defaults))
    app = create_app(COMPILED, store, Settings(), clock=lambda: NOW, scheduler=False)
    with TestClient(app) as client:
        assert post(client, {"batch": [identify("a/b"), track("a/b")]}).json() == {"success": True}
    root = Path(__file__).parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}

    def erase(user: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "adapters.cli", "erase", user, "--database", url], cwd=root,
                              env=env, capture_output=True, text=True, timeout=60)

    first, again, unknown = erase("a/b"), erase("a/b"), erase("nobody")
    assert (first.returncode, again.returncode, unknown.returncode) == (0, 1, 1), first.stderr
    assert store.load(["a/b"]) == {} and store.erased(["a/b", "nobody"]) == {"a/b", "nobody"}
    assert "no user `nobody`" in unknown.stderr
    store.close()


# --- finding 9: operations -------------------------------------------------------------------------------


def test_healthz_is_503_naming_the_store_while_the_database_is_locked(store: SqlStore, tmp_path: Path) -> None:
    """While another connection holds the write lock, /healthz answers 503 naming the store (within a few
    seconds, not the store's usual lock wait); once the lock is gone, 200."""
    app = create_app(COMPILED, store, Settings(), clock=lambda: NOW, scheduler=False)
    with TestClient(app) as client, _locked(store, tmp_path):
        down = client.get("/healthz")
        assert down.status_code == 503, down.text
        assert down.json()["code"] == "unavailable" and down.json()["message"].startswith("store: ")
        assert "lock" in down.json()["down"]["store"]
    with TestClient(app) as client:
        assert client.get("/healthz").json()["ok"] is True


@contextmanager
def _locked(store: SqlStore, tmp_path: Path) -> Iterator[None]:
    """Another connection holding the lock every write needs: BEGIN EXCLUSIVE on SQLite, an exclusive
    table lock on PostgreSQL."""
    if store.dialect == "sqlite":
        other = sqlite3.connect(tmp_path / "trust.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()
        return
    engine = sa.create_engine(store.url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("LOCK TABLE trace IN ACCESS EXCLUSIVE MODE"))
            yield
            conn.rollback()
    finally:
        engine.dispose()


def test_healthz_is_503_while_the_sqlite_database_is_full(tmp_path: Path) -> None:
    """A database that cannot grow (`PRAGMA max_page_count` at its size, as a full disk) is reported down."""
    store = SqlStore(f"sqlite:///{tmp_path / 'full.db'}", defaults=dict(COMPILED.metrics.defaults))
    app = create_app(COMPILED, store, Settings(), clock=lambda: NOW, scheduler=False)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200

        def cap(dbapi: Any, _: Any) -> None:
            pages = dbapi.execute("PRAGMA page_count").fetchone()[0]
            dbapi.execute(f"PRAGMA max_page_count={pages}")

        sa.event.listen(store.engine, "connect", cap)
        store.engine.dispose()  # the next connections are capped
        down = client.get("/healthz")
        assert down.status_code == 503 and "full" in down.json()["down"]["store"], down.text
    store.close()


# --- catching up after downtime (issue 22) ----------------------------------------------------------------


def test_after_downtime_the_backlog_shows_in_metrics_and_stale_sends_expire(store: SqlStore) -> None:
    """Three days down: /metrics shows the due wake-ups and how long the oldest waited; draining moves the
    carts through to the end as their timers say, and the reminders, days late, are suppressed `expired`."""
    now = [NOW]
    app = create_app(COMPILED, store, Settings(write_keys=[KEY], admin_key=ADMIN), clock=lambda: now[0],
                     scheduler=False)
    with TestClient(app) as client:
        users = ["a", "b"]
        post(client, {"batch": [identify(u) for u in users]
                      + [track(u, "Product Added", properties={"cartId": "c1", "name": "lamp"}) for u in users]})
        now[0] = NOW + timedelta(days=3)
        worker = client.app.state.worker  # type: ignore[attr-defined]
        worker.clock = lambda: now[0]
        text = client.get("/metrics").text
        assert "journey_timers_due 2.0" in text
        lag = next(float(line.split()[1]) for line in text.splitlines()
                   if line.startswith("journey_timers_lag_seconds"))
        assert lag == pytest.approx(timedelta(days=3, hours=-1).total_seconds(), abs=60)
        worker.timers()
        assert [state(client, u, "cart") for u in users] == [None, None]  # reminded, then done a day later
        assert [r["reason"] for u in users for r in store.trace(u) if r["kind"] == "journey_exited"] == ["final"] * 2
        expired = [r for u in users for r in store.trace(u) if r["kind"] == "message_suppressed"]
        assert [r["reason"] for r in expired] == ["expired", "expired"]
        assert "journey_timers_due 0.0" in client.get("/metrics").text
