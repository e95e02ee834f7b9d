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

from adapters.service.settings import Settings
from adapters.sources.http_api import create_app
from adapters.sources.segment import to_events
from adapters.storage.sql import SqlStore
from journey_engine.compiler import load_workspace
from journey_engine.ports import ConflictError, StoreUnavailable

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


def test_a_write_key_as_bearer_cannot_read_users(client: TestClient) -> None:
    """Admin routes take only the admin key: `Authorization: Bearer <write key>` is refused (SPEC §6)."""
    post(client, {"batch": [track()]})
    assert client.get("/v1/users/u1", headers={"Authorization": f"Bearer {KEY}"}).status_code == 401


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
    ("too_deep_body", b'{"batch": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, 400, "too_deep"),
    ("nan", b'{"batch": [{"userId": "u1", "event": "X", "properties": {"v": NaN}}]}', {}, 400, "invalid_json"),
    ("infinity", b'{"batch": [{"userId": "u1", "event": "X", "properties": {"v": -Infinity}}]}', {}, 400,
     "invalid_json"),
    ("float_overflow", b'{"batch": [{"userId": "u1", "event": "X", "properties": {"v": 1e400}}]}', {}, 400,
     "invalid_json"),
    ("bad_sent_at", json.dumps({"batch": [track()], "sentAt": "soon"}).encode(), {}, 400, "invalid_sent_at"),
    ("truncated_gzip", gzip.compress(json.dumps({"batch": [track()]}).encode())[:-12], {"Content-Encoding": "gzip"},
     400, "invalid_gzip"),
    ("gzip_then_garbage", gzip.compress(json.dumps({"batch": [track()]}).encode()) + b"garbage",
     {"Content-Encoding": "gzip"}, 400, "invalid_gzip"),
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
    ("message_too_large_in_utf8", track("u9", properties={"blob": "€" * 11_000}), "batch[1].message"),
    ("too_deep", track("u9", properties=json.loads("[" * 40 + "]" * 40)), "batch[1].properties"),
    ("context_not_an_object", {**track("u9"), "context": "oops"}, "batch[1].context"),
    ("context_traits_not_an_object", {**identify("u9"), "traits": {}, "context": {"traits": 3}},
     "batch[1].context.traits"),
    ("year_1_with_an_offset", {**track("u9"), "timestamp": "0001-01-01T00:00:00+01:00"}, "batch[1].timestamp"),
    ("year_9999_with_an_offset", {**track("u9"), "timestamp": "9999-12-31T23:59:59-01:00"}, "batch[1].timestamp"),
    ("skew_out_of_range", {**track("u9"), "timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T00:00:00Z"},
     "batch[1].sentAt"),
    ("bad_sent_at_in_the_message", {**track("u9"), "sentAt": "soon"}, "batch[1].sentAt"),
    ("bad_sent_at_without_timestamp", {"type": "track", "userId": "u9", "event": "X", "sentAt": 5},
     "batch[1].sentAt"),
    ("lone_surrogate_in_a_trait", identify("u9", nick="\ud800"), "batch[1].traits.nick"),
    ("lone_surrogate_nested", identify("u9", plan={"tags": ["ok", "\udfff"]}), "batch[1].traits.plan.tags[1]"),
    ("event_not_a_string", {**track("u9"), "event": {"a": 1}}, "batch[1].event"),
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
        waiting, _ = to_events([track("u1"), track("u2")], received_at=NOW)
        c.app.state.worker.submit(waiting)  # type: ignore[attr-defined]
        response = post(c, {"batch": [track("u3")]})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"


def test_a_batch_larger_than_the_queue_limit_is_413_naming_the_limit(store: SqlStore) -> None:
    """A batch that could never fit the queue is 413 (final for the SDKs), not a 429 retried forever."""
    app = create_app(COMPILED, store, Settings(write_keys=[KEY], queue_limit=2), clock=lambda: NOW,
                     start_worker=False)
    with TestClient(app) as c:
        response = post(c, {"batch": [track("u1"), track("u2"), track("u3")]})
    assert (response.status_code, response.json()["code"]) == (413, "batch_too_large")
    assert "3 messages" in response.json()["message"] and "(2, JOURNEY_QUEUE_LIMIT)" in response.json()["message"]


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


def test_a_message_is_measured_in_utf8_bytes(client: TestClient) -> None:
    """20 KB of accented text is 20 KB, not the 60 KB of its JSON escapes: it is accepted."""
    response = post(client, {"batch": [track("u1", properties={"text": "é" * 10_000})]})
    assert response.json() == {"success": True}


@pytest.mark.parametrize("call", ["identify", "page", "group", "alias"])
def test_event_is_ignored_on_calls_other_than_track(client: TestClient, call: str) -> None:
    """Only a track call names an event; an `event` object on identify/page/group is ignored, not a 5xx."""
    message = {"type": call, "userId": "u1", "previousId": "anon-1", "event": {"a": 1}, "messageId": call}
    assert post(client, {"batch": [message]}).json() == {"success": True}


def test_an_identify_with_an_event_name_is_not_counted_as_that_event(client: TestClient) -> None:
    """`event` on an identify is not a track: it feeds no metric."""
    post(client, {"batch": [{**identify(), "event": "Feature Used"}]})
    assert client.get("/v1/users/u1", headers=BEARER).json()["metrics"]["feature_uses_7d"] == 0


def test_out_of_range_dates_in_traits_stay_strings(client: TestClient) -> None:
    """A trait that would be a date outside the years 1-9999 in UTC is kept as the string it was."""
    post(client, {"batch": [identify(born="0001-01-01T00:00:00+01:00", ends="9999-12-31T23:59:59-01:00")]})
    traits = client.get("/v1/users/u1", headers=BEARER).json()["traits"]
    assert traits["born"] == "0001-01-01T00:00:00+01:00"
    assert traits["ends"] == "9999-12-31T23:59:59-01:00"


def test_nested_dates_in_traits_are_shown_as_iso_strings(client: TestClient) -> None:
    """Dates inside objects and lists of traits become datetimes and are shown back as ISO strings."""
    post(client, {"batch": [identify(plan={"renews": "2026-01-01T00:00:00Z"}, dates=["2026-02-01T00:00:00Z"])]})
    response = client.get("/v1/users/u1", headers=BEARER)
    assert response.status_code == 200
    assert response.json()["traits"]["plan"] == {"renews": "2026-01-01T00:00:00Z"}
    assert response.json()["traits"]["dates"] == ["2026-02-01T00:00:00Z"]


def deep(levels: int) -> Any:
    """A value that is `levels` levels deep (an empty list is one level)."""
    return json.loads("[" * levels + "]" * levels)


@pytest.mark.parametrize(("levels", "ok"), [(30, True), (31, False)], ids=["32_levels", "33_levels"])
def test_depth_is_measured_per_message_on_every_path(client: TestClient, levels: int, ok: bool) -> None:
    """A message 32 levels deep passes both /v1/track and /v1/batch; 33 fails both, naming the field."""
    message = track("u1", properties={"x": deep(levels)})  # message 1, properties 2, x 3 ...
    single, batch = post(client, message, "/v1/track"), post(client, {"batch": [message]})
    if ok:
        assert single.json() == batch.json() == {"success": True}
    else:
        assert single.status_code == batch.status_code == 400
        assert single.json()["message"].startswith("properties: nested deeper than 32 levels")
        assert batch.json()["message"].startswith("batch[0].properties: nested deeper than 32 levels")


def test_a_bad_sent_at_is_named_as_such(client: TestClient) -> None:
    """A batch `sentAt` that is not a date-time is refused naming `sentAt`, even without message timestamps."""
    message = {"type": "track", "userId": "u1", "event": "X"}
    response = post(client, {"batch": [message], "sentAt": "2026-13-45"})
    assert response.status_code == 400
    assert response.json()["message"].startswith("sentAt:")


def test_a_wrong_basic_key_is_401_before_the_body_is_read(client: TestClient) -> None:
    """With a wrong key in the header, a broken body is not even parsed: 401, not 400."""
    wrong = {"Authorization": "Basic " + base64.b64encode(b"nope:").decode()}
    assert post(client, None, headers=wrong, raw=b"{not json").status_code == 401


def test_a_keyless_bad_body_is_401(client: TestClient) -> None:
    """Without any key, what is wrong with the body is not disclosed: 401."""
    response = client.post("/v1/batch", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


def test_concatenated_gzip_members_are_read(client: TestClient) -> None:
    """Two gzip members one after the other are one valid gzip body."""
    text = json.dumps({"batch": [track()]}).encode()
    body = gzip.compress(text[:10]) + gzip.compress(text[10:])
    assert post(client, None, headers={"Content-Encoding": "gzip"}, raw=body).json() == {"success": True}


@pytest.mark.parametrize(("method", "path", "status", "code"),
                         [("GET", "/nowhere", 404, "not_found"), ("PUT", "/v1/batch", 405, "method_not_allowed")])
def test_framework_errors_are_code_and_message(client: TestClient, method: str, path: str, status: int,
                                               code: str) -> None:
    """FastAPI's own 404 and 405 answers use `{code, message}` like every other refusal."""
    response = client.request(method, path, headers=BASIC)
    assert response.status_code == status
    assert response.json()["code"] == code
    assert path in response.json()["message"]


class _Process:
    """The worker's runtime with `process` replaced (a compiled Runtime's methods cannot be patched)."""

    def __init__(self, runtime: Any, process: Any) -> None:
        self.runtime = runtime
        self.process = process

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runtime, name)


def _replace_process(client: TestClient, monkeypatch: pytest.MonkeyPatch, process: Any) -> None:
    worker = client.app.state.worker  # type: ignore[attr-defined]
    monkeypatch.setattr(worker, "runtime", _Process(worker.runtime, process))


def test_an_event_the_engine_raises_on_is_refused_alone_and_the_rest_committed(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the engine raises on an event (our bug, logged), that message is refused by index with a 400 the
    SDKs do not retry, and the other messages of the request are committed."""
    real = client.app.state.worker.runtime.process  # type: ignore[attr-defined]

    def process(events: list[Any], now: Any = None) -> Any:
        if any(e.user_id == "poison" for e in events):
            raise RuntimeError("engine bug")
        return real(events, now)

    _replace_process(client, monkeypatch, process)
    batch = [identify("u1"), {"type": "track", "userId": "u2"}, track("poison"), track("u1")]
    response = post(client, {"batch": batch})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_message"
    assert body["message"].startswith("batch[1].event")
    assert "1 more bad message" in body["message"] and "the other 2 message(s) were accepted" in body["message"]
    user = client.get("/v1/users/u1", headers=BEARER).json()
    assert user["journeys"][0]["state"] == "welcome"
    only = post(client, {"batch": [track("poison", messageId="p2")]})
    assert (only.status_code, "could not apply" in only.json()["message"]) == (400, True)
    assert post(client, {"batch": [track("u3")]}).json() == {"success": True}


@pytest.mark.parametrize(("error", "code", "retry_after"), [
    (StoreUnavailable("database is locked"), "unavailable", "2"),
    (ConflictError("profile u1"), "contention", "1"),
], ids=["store-unavailable", "race-lost-every-time"])
def test_a_transient_store_failure_is_a_503_with_retry_after(client: TestClient, monkeypatch: pytest.MonkeyPatch,
                                                              error: Exception, code: str, retry_after: str) -> None:
    """An unavailable store, or contention that outlasts the runtime's retries, answers 503 with
    Retry-After (the SDKs retry and nothing is lost), never 500."""

    def process(events: list[Any], now: Any = None) -> Any:
        raise error

    _replace_process(client, monkeypatch, process)
    response = post(client, {"batch": [track("u1")]})
    assert (response.status_code, response.json()["code"]) == (503, code)
    assert response.headers["Retry-After"] == retry_after


def test_refusals_are_counted_per_event_with_a_reason_on_ingestion_routes_only(client: TestClient) -> None:
    """Two messages without a user are two refusals; a 401 on the user API is not an event refusal."""
    post(client, {"batch": [{"type": "track", "event": "X"}, {"type": "track", "event": "Y"}, track()]})
    client.get("/v1/users/u1")
    text = client.get("/metrics").text
    assert 'journey_events_refused_total{reason="invalid_userId"} 2.0' in text
    assert 'reason="unauthorized"' not in text


def test_timers_due_is_a_gauge_of_users_whose_wake_up_has_come(store: SqlStore) -> None:
    """`journey_timers_due` counts users whose wake-up time has passed and who have not been woken yet."""
    now = [NOW]
    app = create_app(COMPILED, store, Settings(write_keys=[KEY], admin_key=ADMIN), clock=lambda: now[0],
                     scheduler=False)
    with TestClient(app) as c:
        post(c, {"batch": [identify(), track()]})  # welcome: a timer in 2 days
        assert "journey_timers_due 0.0" in c.get("/metrics").text
        now[0] = NOW + timedelta(days=3)
        assert "journey_timers_due 1.0" in c.get("/metrics").text


INBOX_WORKSPACE = load_workspace(Path(__file__).parent.parent / "journeys")


def test_the_inbox_lists_in_app_messages_and_marks_them_read(tmp_path: Path) -> None:
    """GET /v1/users/{id}/inbox shows unread in-app messages; POST .../{key}/read removes one (admin key)."""
    store = SqlStore(f"sqlite:///{tmp_path / 'inbox.db'}", defaults=dict(INBOX_WORKSPACE.metrics.defaults))
    config = Settings(write_keys=[KEY], admin_key=ADMIN)
    with TestClient(create_app(INBOX_WORKSPACE, store, config, clock=lambda: NOW, scheduler=False)) as c:
        events = [identify("u1", created_at="2026-01-05T08:00:00Z"), track("u1", "Application Opened"),
                  track("u1", "Signed Up")] + [
            {**track("u1", "Feature Used"), "messageId": f"f{i}"} for i in range(3)]
        assert post(c, {"batch": events}).json() == {"success": True}
        assert c.get("/v1/users/u1/inbox", headers=BASIC).status_code == 401
        inbox = c.get("/v1/users/u1/inbox", headers=BEARER).json()["messages"]
        assert [m["message"] for m in inbox] == ["activated_in_app"]
        assert "3 features" in inbox[0]["body"]
        key = inbox[0]["id"]
        assert c.post(f"/v1/users/u1/inbox/{key}/read", headers=BASIC).status_code == 401
        assert c.post(f"/v1/users/u1/inbox/{key}/read", headers=BEARER).json() == {"success": True}
        assert c.get("/v1/users/u1/inbox", headers=BEARER).json()["messages"] == []
        missing = c.post("/v1/users/u1/inbox/nope/read", headers=BEARER)
        assert missing.status_code == 404
        assert missing.json()["code"] == "not_found"
    store.close()
