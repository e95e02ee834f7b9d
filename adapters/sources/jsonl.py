"""Segment-format events from JSON lines (`journey ingest`): one message per line, or a `{"batch": [...]}`.

Lines are validated by the same `to_events` as the HTTP API (adapters/sources/segment.py): size, depth,
encoding, clock-skew correction, the 24 h future clamp and the trigger window. A bad line is reported
with its number and field and skipped; the good ones are kept; erased users stay erased.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import BinaryIO, Literal

from adapters.sources.segment import MAX_BATCH, BodyError, parse_json, sent_at_problem, to_events
from journey_engine.events import Event
from journey_engine.ports import StoreUnavailable
from journey_engine.runtime import Runtime


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
        for problem in bad:
            where = f"batch[{problem.index}].{problem.field}" if in_batch else problem.field
            yield number, BadLine(number, where, problem.message)
        for event in events:
            yield number, event


def open_source(source: str) -> tuple[BinaryIO, int | None]:
    """A file (or `-` for stdin) to read lines from as bytes, and its line count when known.
    Raises OSError (FileNotFoundError, IsADirectoryError, ...) for the caller to report."""
    if source == "-":
        return sys.stdin.buffer, None
    with open(source, "rb") as counting:
        total = sum(1 for _ in counting)
    return open(source, "rb"), total  # the caller closes it


def ingest(lines: Iterable[bytes | str], runtime: Runtime, *, erased: Callable[[Collection[str]], set[str]],
           clock: Literal["wall", "event"] = "wall", batch: int = 500,
           trigger_window: timedelta | None = timedelta(hours=24),
           now: Callable[[], datetime] = lambda: datetime.now(UTC),
           on_bad: Callable[[BadLine], None] = lambda _: None,
           on_progress: Callable[[IngestReport], None] = lambda _: None,
           report: IngestReport | None = None) -> IngestReport:
    """Validate `lines` and commit their events through `runtime`, `batch` events per commit.

    `clock="wall"` applies events at `now()`, with the trigger window (old events are backfills);
    `clock="event"` replays each event at its own time (no trigger window) and fires timers in between.
    `erased` is the store's lookup of erased user ids. Bad lines go to `on_bad`; nothing read is lost
    when reading fails (the pending events are committed first). StoreUnavailable propagates; the
    `report` given (filled in place) then counts what was committed, and running again is safe
    (duplicates are ignored)."""
    report = report if report is not None else IngestReport()
    pending: list[Event] = []
    last: datetime | None = None

    def flush() -> None:
        nonlocal last
        if not pending:
            return
        gone = erased({e.user_id for e in pending})
        keep = [e for e in pending if e.user_id not in gone]
        if keep:
            last = max(last or keep[0].timestamp, *(e.timestamp for e in keep))
            if clock == "event":
                runtime.advance(min(e.timestamp for e in keep))
                runtime.process(keep)
            else:
                wall = now()
                runtime.advance(wall)
                runtime.process(keep, wall)
        report.accepted += len(keep)
        report.erased += len(pending) - len(keep)
        pending.clear()
        on_progress(report)

    window = trigger_window if clock == "wall" else None
    try:
        for number, item in _numbered(lines, received_at=now, trigger_window=window):
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
        raise
    flush()
    if clock == "event" and last is not None:
        runtime.advance(last)
    return report
