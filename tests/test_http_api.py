"""The HTTP API in process (SPEC §6): Segment-compatible ingestion, refusals, auth, user API, operations."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from adapters.sources.http_api import Settings, create_app
from adapters.storage.sql import SqlStore
from journey_engine.compiler import load_workspace

COMPILED = load_workspace(Path(__file__).parent / "workspaces" / "basic")
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
KEY = "WRITE_KEY_abc123"
ADMIN = "admin-secret"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}
BEARER = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore(f"sqlite:///{tmp_path / 'api.db'}", defaults=dict(COMPILED.metrics.defaults))
    yield s
    s.close()


def client_for(store: SqlStore, **settings: Any) -> TestClient:
    config = Settings(write_keys=[KEY, "OLD_KEY"], admin_key=ADMIN, **settings)
    return TestClient(create_app(COMPILED, store, config, clock=lambda: NOW))


@pytest.fixture
def client(store: SqlStore) -> Iterator[TestClient]:
    with client_for(store) as c:
        yield c


def track(user: str = "u1", event: str = "Signed Up", **extra: Any) -> dict[str, Any]:
    return {"type": "track", "userId": user, "event": event, "messageId": f"{user}-{event}",
            "timestamp": "2026-01-05T09:00:00Z", **extra}


def identify(user: str = "u1", **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": user, "traits": {"email": f"{user}@example.com", **traits},
            "messageId": f"id-{user}", "timestamp": "2026-01-05T08:59:00Z"}


def post(client: TestClient, body: Any, path: str = "/v1/batch", headers: dict[str, str] | None = None,
         raw: bytes | None = None) -> Any:
    hdrs = {"Content-Type": "application/json", **BASIC, **(headers or {})}
    return client.post(path, content=raw if raw is not None else json.dumps(body).encode(), headers=hdrs)


def test_a_batch_is_accepted_with_exactly_200_success(client: TestClient) -> None:
    """Success is exactly `200 {"success": true}`: RudderStack resends on anything else."""
    response = post(client, {"batch": [identify(), track()]})
    assert response.status_code == 200
    assert response.json() == {"success": True}
    user = client.get("/v1/users/u1", headers=BEARER).json()
    assert user["journeys"][0]["state"] == "welcome"
    assert user["last_messages"][0]["message"] == "welcome_email"


def test_write_key_in_the_body_and_rotation(client: TestClient) -> None:
    """The write key may come as `writeKey` in the body, and any configured key works."""
    response = client.post("/v1/batch", json={"batch": [track()], "writeKey": "OLD_KEY"})
    assert response.status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic " + base64.b64encode(b"nope:").decode()},
                                     {"Authorization": "Basic !!!"}], ids=["none", "wrong", "garbled"])
def test_a_wrong_write_key_is_401(client: TestClient, headers: dict[str, str]) -> None:
    """Without a valid write key nothing is accepted."""
    response = client.post("/v1/batch", json={"batch": [track()]}, headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


def test_write_keys_cannot_read_users(client: TestClient) -> None:
    """Reading a user needs the admin key; a write key is not enough."""
    post(client, {"batch": [track()]})
    assert client.get("/v1/users/u1", headers=BASIC).status_code == 401
    assert client.get("/v1/users/u1", headers=BEARER).status_code == 200


def test_single_calls_and_gzip(client: TestClient) -> None:
    """/v1/track, /v1/identify ... take one message; gzip bodies are inflated."""
    assert post(client, identify(), "/v1/identify").json() == {"success": True}
    body = gzip.compress(json.dumps(track()).encode())
    response = post(client, None, "/v1/track", headers={"Content-Encoding": "gzip"}, raw=body)
    assert response.json() == {"success": True}
    assert client.get("/v1/users/u1", headers=BEARER).json()["journeys"]


def test_identify_traits_from_context_traits(client: TestClient) -> None:
    """RudderStack puts identify traits under context.traits."""
    message = {"type": "identify", "userId": "u1", "context": {"traits": {"plan": "pro"}}, "messageId": "x"}
    post(client, {"batch": [message]})
    assert client.get("/v1/users/u1", headers=BEARER).json()["traits"] == {"plan": "pro"}


def test_duplicates_are_accepted_and_ignored(client: TestClient) -> None:
    """A resent messageId answers 200 and changes nothing."""
    post(client, {"batch": [track("u1", "Feature Used")]})
    post(client, {"batch": [track("u1", "Feature Used")]})
    assert client.get("/v1/users/u1", headers=BEARER).json()["metrics"]["feature_uses_7d"] == 1


BAD = [
    ("invalid_json", b'{"batch": [', {}, 400, "invalid_json"),
    ("content_type", b"{}", {"Content-Type": "application/xml"}, 415, "unsupported_media_type"),
    ("not_utf8", b'{"batch": ["\xff"]}', {}, 400, "invalid_encoding"),
    ("batch_too_large", json.dumps({"batch": [track(f"u{i}", "E" * 2000) for i in range(300)]}).encode(), {}, 413,
     "body_too_large"),
    ("gzip_bomb", gzip.compress(b'{"batch": [' + b" " * 2_000_000 + b"]}"), {"Content-Encoding": "gzip"}, 413,
     "body_too_large"),
    ("too_deep", json.dumps({"batch": [track(properties=json.loads("[" * 40 + "]" * 40))]}).encode(), {}, 400,
     "too_deep"),
    ("not_a_batch", b'{"batch": 3}', {}, 400, "invalid_batch"),
]


@pytest.mark.parametrize(("body", "headers", "status", "code"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_bodies_are_refused_with_a_code_and_a_message(client: TestClient, body: bytes, headers: dict[str, str],
                                                          status: int, code: str) -> None:
    """Each refusal is a 4xx with `code` and `message` naming what is wrong; never a 5xx."""
    response = post(client, None, headers=headers, raw=body)
    assert response.status_code == status
    assert response.json()["code"] == code
    assert response.json()["message"]


BAD_MESSAGES = [
    ("no_user", {"type": "track", "event": "X"}, "batch[1].userId"),
    ("no_event", {"type": "track", "userId": "u9"}, "batch[1].event"),
    ("bad_timestamp", {**track("u9"), "timestamp": "yesterday"}, "batch[1].timestamp"),
    ("message_too_large", track("u9", properties={"blob": "x" * 40_000}), "batch[1].message"),
]


@pytest.mark.parametrize(("message", "where"), [b[1:] for b in BAD_MESSAGES], ids=[b[0] for b in BAD_MESSAGES])
def test_a_bad_message_is_named_and_the_rest_of_the_batch_is_kept(client: TestClient, message: dict[str, Any],
                                                                  where: str) -> None:
    """The bad message gets a 400 naming its index and field; the good ones are committed (documented)."""
    response = post(client, {"batch": [track("u1"), message, track("u2")]})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_message"
    assert response.json()["message"].startswith(where)
    assert "other 2 message(s) were accepted" in response.json()["message"]
    for user in ("u1", "u2"):
        assert client.get(f"/v1/users/{user}", headers=BEARER).status_code == 200


def test_clock_skew_is_corrected_from_sent_at(client: TestClient) -> None:
    """timestamp = receivedAt - (sentAt - timestamp): a client clock one hour fast is corrected."""
    message = {**track("u1", "Order Completed"), "timestamp": "2026-01-05T09:30:00Z"}
    post(client, {"batch": [message], "sentAt": "2026-01-05T10:00:00Z"})
    user = client.get("/v1/users/u1", headers=BEARER).json()
    assert user["metrics"]["last_order_at"] == "2026-01-05T08:30:00Z"


def test_events_far_in_the_future_are_clamped(client: TestClient) -> None:
    """An event more than 24 h ahead of the server is taken as happening now."""
    post(client, {"batch": [{**track("u1", "Order Completed"), "timestamp": "2027-01-01T00:00:00Z"}]})
    assert client.get("/v1/users/u1", headers=BEARER).json()["metrics"]["last_order_at"] == "2026-01-05T09:00:00Z"


def test_backpressure_answers_429_with_retry_after(store: SqlStore) -> None:
    """When the engine is behind, requests get 429 and Retry-After instead of growing memory."""
    app = create_app(COMPILED, store, Settings(write_keys=[KEY], queue_limit=2), clock=lambda: NOW,
                     start_worker=False)
    with TestClient(app) as c:
        response = post(c, {"batch": [track("u1"), track("u2"), track("u3")]})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"


def test_delete_erases_the_user_and_suppresses_later_events(client: TestClient) -> None:
    """DELETE /v1/users/{id} removes the user everywhere; their later events are dropped."""
    post(client, {"batch": [identify(), track()]})
    assert client.delete("/v1/users/u1", headers=BEARER).json() == {"success": True, "erased": True}
    assert client.get("/v1/users/u1", headers=BEARER).status_code == 404
    post(client, {"batch": [track("u1", "Feature Used")]})
    assert client.get("/v1/users/u1", headers=BEARER).status_code == 404
    counts = client.get("/v1/journeys/onboarding", headers=BEARER).json()["states"]
    assert counts["welcome"] == 0


def test_journeys_show_live_counts_per_state(client: TestClient) -> None:
    """GET /v1/journeys gives the definition's states with how many users are in each now."""
    post(client, {"batch": [track("u1"), track("u2"), track("u1", "Product Added", properties={"cartId": "A"})]})
    listed = {j["name"]: j for j in client.get("/v1/journeys", headers=BEARER).json()["journeys"]}
    assert listed["onboarding"]["states"]["welcome"] == 2
    assert listed["cart"]["states"]["waiting"] == 1
    detail = client.get("/v1/journeys/onboarding", headers=BEARER).json()
    assert "flowchart" in detail["graph"]["mermaid"] or "graph" in detail["graph"]["mermaid"]


def test_metrics_and_health(client: TestClient) -> None:
    """/metrics speaks Prometheus text with accepted and refused counts; /healthz answers."""
    post(client, {"batch": [track()]})
    post(client, None, raw=b"{")
    text = client.get("/metrics").text
    assert "journey_events_accepted_total 1.0" in text
    assert 'journey_events_refused_total{reason="invalid_json"} 1.0' in text
    assert client.get("/healthz").json()["ok"] is True


def test_the_openapi_document_lists_the_endpoints(client: TestClient) -> None:
    """OpenAPI docs exist for tools and people."""
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/batch", "/v1/track", "/v1/users/{user_id}", "/metrics"} <= set(paths)


def test_the_trigger_window_keeps_backfills_from_moving_journeys(client: TestClient) -> None:
    """An event older than the trigger window updates metrics but starts no journey."""
    old = {**track("u1"), "timestamp": (NOW - timedelta(days=3)).isoformat()}
    post(client, {"batch": [old, {**track("u1", "Feature Used"), "timestamp": old["timestamp"]}]})
    user = client.get("/v1/users/u1", headers=BEARER).json()
    assert user["journeys"] == []
    assert user["metrics"]["feature_uses_7d"] == 1
