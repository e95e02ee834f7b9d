"""Segment-format events from JSON lines (`journey ingest`): one message per line, or a `{"batch": [...]}`.

Lines are validated by the same `to_events` as the HTTP API (adapters/sources/segment.py): size, depth,
encoding, clock-skew correction, the 24 h future clamp and the trigger window. A bad line is reported
with its number and field and skipped; the good ones are kept; erased users stay erased.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, Literal, TypeVar

from adapters.service.host import EngineHost
from adapters.sources.segment import MAX_BATCH, BodyError, not_erased, parse_json, sent_at_problem, to_events
from journey_engine.events import Event
from journey_engine.ports import StoreUnavailable

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    field: str  # `line`, or the message's field (`batch[2].timestamp` in a batch line)
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


@dataclass(slots=True)
class IngestReport:
    accepted: int = 0  # events committed
    refused: int = 0  # bad lines and bad messages, each reported
    erased: int = 0  # events of erased users, dropped as the HTTP API drops them
    lines: int = 0  # lines read


def read_events(lines: Iterable[bytes | str], *, now: datetime,
                trigger_window: timedelta | None = None) -> Iterator[Event | BadLine]:
    """Events in file order, validated as the HTTP API validates them; a BadLine for each bad one.

    Give bytes (a file opened "rb", `sys.stdin.buffer`) so that a line that is not UTF-8 is reported, not
    raised. `now` plays the HTTP API's receivedAt; `trigger_window` None marks no backfills."""
    for _, item in _numbered(lines, received_at=lambda: now, trigger_window=trigger_window):
        yield item


def _numbered(lines: Iterable[bytes | str], *, received_at: Callable[[], datetime],
              trigger_window: timedelta | None) -> Iterator[tuple[int, Event | BadLine]]:
    """`received_at` is read per line: on a long file or a stream, each line arrives when it is read."""
    for number, line in enumerate(lines, start=1):
        data = (line if isinstance(line, bytes) else line.encode("utf-8", "surrogateescape")).strip()
        if not data:
            continue
        if len(data) > MAX_BATCH:
            yield number, BadLine(number, "line", f"larger than {MAX_BATCH // 1024} KB")
            continue
        try:
            raw = parse_json(data)
        except BodyError as exc:
            yield number, BadLine(number, "line", exc.message.removeprefix("body: "))
            continue
        in_batch = isinstance(raw, dict) and isinstance(raw.get("batch"), list)
        messages = raw["batch"] if in_batch else [raw]
        sent_at = raw.get("sentAt") if in_batch else None
        problem = sent_at_problem(sent_at)
        if problem is not None:
            yield number, BadLine(number, "sentAt", problem.removeprefix("sentAt: "))
            continue
        events, bad = to_events(messages, received_at=received_at(), sent_at=sent_at, trigger_window=trigger_window)
        for message in bad:
            where = f"batch[{message.index}].{message.field}" if in_batch else message.field
            yield number, BadLine(number, where, message.message)
        for event in events:
            yield number, event


AHEAD = 4  # calls (advance, process) the engine(s) may still be running while the next batch is read
_AHEAD_CHUNK = 500  # items handed over at once (one queue operation each, not one per line)


def _ahead(items: Iterator[_T], depth: int = 8) -> Iterator[_T]:
    """`items`, produced by a thread up to `depth` chunks ahead of the consumer. An exception raised while
    producing is raised here, after the items before it; a consumer that stops early stops the thread."""
    chunks: queue.Queue[tuple[list[_T], BaseException | None, bool]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        chunk: list[_T] = []
        try:
            for item in items:
                chunk.append(item)
                if len(chunk) >= _AHEAD_CHUNK:
                    if not _put(chunks, (chunk, None, False), stop):
                        return
                    chunk = []
            _put(chunks, (chunk, None, True), stop)
        except BaseException as exc:  # handed to the consumer, which raises it
            _put(chunks, (chunk, exc, True), stop)

    threading.Thread(target=produce, name="journey-read-ahead", daemon=True).start()
    try:
        while True:
            chunk, error, last = chunks.get()
            yield from chunk
            if error is not None:
                raise error
            if last:
                return
    finally:
        stop.set()


def _put(chunks: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            chunks.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def open_source(source: str) -> tuple[BinaryIO, int | None]:
    """A file (or `-` for stdin) to read lines from as bytes, and its line count when known.
    Raises OSError (FileNotFoundError, IsADirectoryError, ...) for the caller to report."""
    if source == "-":
        return sys.stdin.buffer, None
    with open(source, "rb") as counting:
        total = sum(1 for _ in counting)
    return open(source, "rb"), total  # the caller closes it


def ingest(lines: Iterable[bytes | str], host: EngineHost, *, erased: Callable[[Collection[str]], set[str]],
           clock: Literal["wall", "event"] = "wall", batch: int = 500,
           trigger_window: timedelta | None = timedelta(hours=24),
           now: Callable[[], datetime] = lambda: datetime.now(UTC),
           on_bad: Callable[[BadLine], None] = lambda _: None,
           on_progress: Callable[[IngestReport], None] = lambda _: None,
           report: IngestReport | None = None, read_ahead: bool = False) -> IngestReport:
    """Validate `lines` and commit their events through a started `host`, `batch` events per commit.

    `clock="wall"` applies events at `now()`, with the trigger window (old events are backfills);
    `clock="event"` replays each event at its own time (no trigger window) and fires timers in between.
    `erased` is the store's lookup of erased user ids. Bad lines go to `on_bad`; nothing read is lost
    when reading fails (the pending events are committed first). StoreUnavailable propagates; the
    `report` given (filled in place) then counts what was committed, and running again is safe
    (duplicates are ignored).

    The host's `advance` and `process` answer with a Future (adapters/service/host.py): up to AHEAD of
    those run while the next lines are read, and a batch is counted once its Future says it is committed.
    `read_ahead`: a thread reads and validates the next lines meanwhile (beside an engine in this process
    it would only compete for the GIL)."""
    report = report if report is not None else IngestReport()
    pending: list[Event] = []
    last: datetime | None = None
    committing: deque[tuple[Future[Any], int, int]] = deque()  # (its commit, events kept, events dropped)

    def flush() -> None:
        nonlocal last
        if not pending:
            return
        keep = [pending[i] for i in not_erased(pending, erased)]
        dropped = len(pending) - len(keep)
        pending.clear()
        if not keep:
            count(0, dropped)
            return
        last = max(last or keep[0].timestamp, *(e.timestamp for e in keep))
        if clock == "event":
            later(host.advance(min(e.timestamp for e in keep)))
            done = host.process(keep)
        else:
            wall = now()
            later(host.advance(wall))
            done = host.process(keep, wall)
        later(done, len(keep), dropped)  # counted once committed
        settle(AHEAD)

    def later(done: Future[Any], kept: int = 0, dropped: int = 0) -> None:
        committing.append((done, kept, dropped))

    def count(kept: int, dropped: int) -> None:
        report.accepted += kept
        report.erased += dropped
        on_progress(report)

    def settle(ahead: int, quiet: bool = False) -> None:
        """Wait until at most `ahead` calls are still running; raise the first that failed (unless `quiet`)
        once every call sent is settled, so the report counts exactly what was committed."""
        failed: BaseException | None = None
        while len(committing) > ahead or (failed is not None and committing):
            future, kept, dropped = committing.popleft()
            error = future.exception()
            if error is None:
                count(kept, dropped)
            elif failed is None:
                failed = error
        if failed is not None and not quiet:
            raise failed

    window = trigger_window if clock == "wall" else None
    items = _numbered(lines, received_at=now, trigger_window=window)
    try:
        for number, item in _ahead(items) if read_ahead else items:
            report.lines = number
            if isinstance(item, BadLine):
                report.refused += 1
                on_bad(item)
                continue
            pending.append(item)
            if len(pending) >= batch:
                flush()
    except BaseException as exc:  # reading failed or was interrupted: keep what was read
        if not isinstance(exc, StoreUnavailable):
            flush()
        settle(0, quiet=True)  # count what the engine processes committed; the error raised is this one
        raise
    flush()
    if clock == "event" and last is not None:
        later(host.advance(last))
    settle(0)
    return report
