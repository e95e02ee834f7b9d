"""Segment-format events from JSON lines: one message per line, or a `{"batch": [...]}` object per line.

Every line is validated like the HTTP API validates a message; a bad line is reported with its
number and skipped, the good ones are kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from journey_engine.errors import InvalidEventError
from journey_engine.events import Event, event_from_segment


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


def read_events(lines: Iterable[str], *, now: datetime) -> Iterator[Event | BadLine]:
    """Events in file order; `now` stands in for a missing timestamp."""
    for number, text in enumerate(lines, start=1):
        text = text.strip()
        if not text:
            continue
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            yield BadLine(number, "body", f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        messages = raw.get("batch") if isinstance(raw, dict) and isinstance(raw.get("batch"), list) else [raw]
        for message in messages:
            if not isinstance(message, dict):
                yield BadLine(number, "body", "a message is a JSON object")
                continue
            try:
                yield event_from_segment(message, default_time=now)
            except InvalidEventError as exc:
                yield BadLine(number, exc.field, str(exc).split(": ", 1)[-1])
