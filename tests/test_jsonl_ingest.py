"""`journey ingest` input (adapters/sources/jsonl.py): the same validation as the HTTP API, bad lines reported
with their number and field, good ones kept, erased users kept erased, backfills kept out of journeys."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.service.host import InProcessHost
from adapters.sources.jsonl import BadLine, ingest, open_source, read_events
from adapters.storage.sql import SqlStore
from journey_engine.compiler import load_workspace
from journey_engine.engine import Engine
from journey_engine.events import Event
from journey_engine.runtime import Runtime

COMPILED = load_workspace(Path(__file__).parent / "workspaces" / "basic")
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def line(**message: Any) -> bytes:
    return json.dumps({"type": "track", "userId": "u1", "event": "Signed Up", "messageId": "m",
                       "timestamp": "2026-01-05T09:00:00Z", **message}).encode() + b"\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore(f"sqlite:///{tmp_path / 'ingest.db'}", defaults=dict(COMPILED.metrics.defaults))
    yield s
    s.close()


BAD_LINES = [
    ("not_json", b"{oops\n", "line"),
    ("not_utf8", b'{"userId": "\xff"}\n', "line"),
    ("nan", b'{"userId": "u1", "event": "X", "properties": {"v": NaN}}\n', "line"),
    ("context_not_an_object", line(context="oops"), "context"),
    ("too_large", line(properties={"blob": "x" * 40_000}), "message"),
    ("too_deep", line(properties=json.loads("[" * 40 + "]" * 40)), "properties"),
    ("year_1_with_an_offset", line(timestamp="0001-01-01T00:00:00+01:00"), "timestamp"),
    ("lone_surrogate", line(properties={"x": "\ud800"}), "properties.x"),
    ("no_user", line(userId=None), "userId"),
    ("nul_in_the_user_id", line(userId="a\u0000b"), "userId"),
    ("nul_deep_in_a_trait", line(type="identify", traits={"a": [{"b": "x\u0000"}]}), "traits.a[0].b"),
    ("nul_in_a_property_name", line(properties={"k\u0000": 1}), "properties.'k\\x00'"),
    ("bad_sent_at_in_a_batch", json.dumps({"batch": [], "sentAt": "soon"}).encode(), "sentAt"),
    ("bad_message_in_a_batch", json.dumps({"batch": [{"type": "track", "userId": "u2"}]}).encode(),
     "batch[0].event"),
]


@pytest.mark.parametrize(("bad", "field"), [b[1:] for b in BAD_LINES], ids=[b[0] for b in BAD_LINES])
def test_a_bad_line_is_reported_with_its_number_and_field_and_the_rest_kept(bad: bytes, field: str) -> None:
    """Each bad line becomes a BadLine (line number, field, rule); the good lines around it are events."""
    items = list(read_events([line(), bad, line(userId="u2")], now=NOW))
    problems = [i for i in items if isinstance(i, BadLine)]
    assert [(p.line, p.field) for p in problems] == [(2, field)]
    assert [i.user_id for i in items if isinstance(i, Event)] == ["u1", "u2"]


def test_events_far_in_the_future_are_clamped_like_over_http() -> None:
    """More than 24 h ahead of `now` is taken as `now`, as the HTTP API does."""
    (event,) = read_events([line(timestamp="2027-01-01T00:00:00Z")], now=NOW)
    assert isinstance(event, Event) and event.timestamp == NOW


def test_sent_at_of_a_batch_line_corrects_clock_skew() -> None:
    """A `{"batch": [...], "sentAt": ...}` line is corrected for clock skew like a /v1/batch body."""
    batch = {"batch": [json.loads(line(timestamp="2026-01-05T09:30:00Z"))], "sentAt": "2026-01-05T10:00:00Z"}
    (event,) = read_events([json.dumps(batch)], now=NOW)
    assert isinstance(event, Event) and event.timestamp == NOW - timedelta(minutes=30)


@contextmanager
def hosted(store: SqlStore) -> Iterator[InProcessHost]:
    """The engine host `journey ingest` runs in one process, started."""
    host = InProcessHost(Runtime(Engine(COMPILED), store, claim=500), store)
    host.start()
    try:
        yield host
    finally:
        host.stop()


def run(store: SqlStore, lines: Iterable[bytes], **options: Any) -> tuple[Any, list[BadLine]]:
    bad: list[BadLine] = []
    with hosted(store) as host:
        report = ingest(lines, host, erased=store.erased, now=lambda: NOW, on_bad=bad.append, **options)
    return report, bad


def journeys_of(store: SqlStore, user: str) -> list[str]:
    profile = store.load([user]).get(user)
    return [] if profile is None else [i.state for i in profile.instances.values()]


def test_backfills_older_than_the_trigger_window_start_no_journey(store: SqlStore) -> None:
    """On the wall clock, an event three days old updates the profile but starts no journey."""
    old = (NOW - timedelta(days=3)).isoformat()
    report, bad = run(store, [line(timestamp=old), line(userId="u2", messageId="n")])
    assert (report.accepted, report.refused, bad) == (2, 0, [])
    assert journeys_of(store, "u1") == []
    assert journeys_of(store, "u2") == ["welcome"]


def test_the_event_clock_replays_old_events_as_live(store: SqlStore) -> None:
    """`--clock event` replays history: old events do start journeys (no trigger window)."""
    run(store, [line(timestamp=(NOW - timedelta(days=3)).isoformat())], clock="event")
    assert journeys_of(store, "u1")


def test_erased_users_stay_erased(store: SqlStore) -> None:
    """Events of an erased user are dropped, as the HTTP API drops them."""
    run(store, [line()])
    assert store.erase("u1", NOW)
    report, _ = run(store, [line(messageId="again"), line(userId="u2", messageId="n")])
    assert (report.accepted, report.erased) == (1, 1)
    assert store.load(["u1"]) == {}


def test_bad_lines_do_not_stop_the_ingest(store: SqlStore) -> None:
    """A non-UTF-8 line and a bad `context` are reported; the lines after them are committed."""
    report, bad = run(store, [line(), b"\xff\xfe\n", line(context=3), line(userId="u2", messageId="n")], batch=1)
    assert [(b.line, b.field) for b in bad] == [(2, "line"), (3, "context")]
    assert (report.accepted, report.refused, report.lines) == (2, 2, 4)


def test_what_was_read_is_committed_when_reading_fails(store: SqlStore) -> None:
    """If the input breaks mid-way (I/O error, Ctrl-C), the events read so far are committed first."""

    def lines() -> Iterator[bytes]:
        yield line()
        yield line(userId="u2", messageId="n")
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        run(store, lines(), batch=100)
    assert journeys_of(store, "u1") == journeys_of(store, "u2") == ["welcome"]


def test_open_source_counts_lines_and_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    """`open_source` opens a file as bytes with its line count; a missing file raises FileNotFoundError."""
    path = tmp_path / "e.jsonl"
    path.write_bytes(line() + line(userId="u2"))
    handle, total = open_source(str(path))
    with handle:
        assert total == 2 and len(list(read_events(handle, now=NOW))) == 2
    with pytest.raises(FileNotFoundError):
        open_source(str(tmp_path / "missing.jsonl"))


def test_a_store_failure_leaves_the_report_of_what_was_committed(store: SqlStore) -> None:
    """When the store goes away mid-way, the report given says how many events were committed."""
    from adapters.sources.jsonl import IngestReport
    from journey_engine.ports import StoreUnavailable

    calls = []

    def erased(users: Any) -> set[str]:
        calls.append(users)
        if len(calls) > 1:
            raise StoreUnavailable("database is locked")
        return store.erased(users)

    report = IngestReport()
    with hosted(store) as host, pytest.raises(StoreUnavailable):
        ingest([line(), line(userId="u2", messageId="n")], host, erased=erased, now=lambda: NOW, batch=1,
               report=report)
    assert report.accepted == 1


def test_each_line_arrives_when_it_is_read() -> None:
    """On a long file or a stream, a line without a timestamp is stamped when it is read, not when the
    ingest started (the clock is read per line)."""
    times = iter([NOW, NOW + timedelta(hours=5)])
    latest = [NOW]

    def now() -> datetime:
        latest[0] = next(times, latest[0])
        return latest[0]

    class Recording:  # the part of the engine host that ingest uses
        def __init__(self) -> None:
            self.events: list[Event] = []

        def advance(self, until: datetime) -> Future[None]:
            return done()

        def process(self, events: list[Event], now: datetime | None = None) -> Future[None]:
            self.events.extend(events)
            return done()

    def done() -> Future[None]:
        future: Future[None] = Future()
        future.set_result(None)
        return future

    recording = Recording()
    lines = [line(userId="u1", messageId="a", timestamp=None), line(userId="u2", messageId="b", timestamp=None)]
    ingest(lines, recording, erased=lambda users: set(), now=now, batch=1)  # type: ignore[arg-type]
    assert [e.timestamp for e in recording.events] == [NOW, NOW + timedelta(hours=5)]


def test_reading_ahead_keeps_order_and_raises_a_reading_error_after_what_was_read() -> None:
    """The read-ahead thread hands over every item in order; an error while reading comes after the items
    read before it; a consumer that stops early stops the thread."""
    import threading

    from adapters.sources.jsonl import _ahead

    assert list(_ahead(iter(range(1234)))) == list(range(1234))

    def broken() -> Iterator[int]:
        yield from range(700)
        raise OSError("disk gone")

    got: list[int] = []
    with pytest.raises(OSError, match="disk gone"):
        for item in _ahead(broken()):
            got.append(item)
    assert got == list(range(700))
    early = _ahead(iter(range(100_000)))
    assert next(early) == 0
    early.close()
    deadline = time.monotonic() + 5
    while any(t.name == "journey-read-ahead" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "journey-read-ahead" for t in threading.enumerate())
