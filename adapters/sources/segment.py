"""Segment messages as events, validated the same way for every source (the HTTP API, `journey ingest`).

`parse_json` turns a body or a line into JSON (no NaN or Infinity, no lone surrogates reach the store);
`to_events` turns messages into events and names each bad message's field and rule. A NUL character is
refused in any string or key of a message: PostgreSQL cannot store one, and both stores take the same input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from journey_engine.errors import InvalidEventError
from journey_engine.events import Event, corrected_time, event_from_segment, parse_datetime

MAX_MESSAGE = 32 * 1024  # bytes of UTF-8 JSON per message (Segment's rule)
MAX_BATCH = 500 * 1024  # bytes per batch
MAX_DEPTH = 32  # nesting levels per message, the message object being level 1
_ESCAPED_NUL = "\\u0000"  # how json.dumps writes a NUL character


class BodyError(ValueError):
    """A body (or a line) that is not acceptable JSON at all; `code` is the refusal's code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True, slots=True)
class BadMessage:
    index: int  # position in the batch
    field: str  # path of the offending field, e.g. `traits.plan` or `message`
    reason: str  # a label from a fixed set, for metrics: too_large, too_deep, invalid_encoding, invalid_character,
    # invalid_<field>
    message: str  # the rule, for people


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf, which JSON cannot carry back out
        raise ValueError(f"{text} is out of range for a number")
    return value


def parse_json(data: bytes) -> Any:
    """UTF-8 JSON as Python values; BodyError (invalid_encoding, invalid_json, too_deep) otherwise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError("invalid_encoding", f"body: not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise BodyError("too_deep", f"body: nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise BodyError("invalid_json", f"body: not valid JSON ({exc.msg} at line {exc.lineno} column "
                                        f"{exc.colno})") from None
    except ValueError as exc:  # NaN, Infinity, 1e400
        raise BodyError("invalid_json", f"body: not valid JSON ({exc})") from None


def sent_at_problem(sent_at: Any) -> str | None:
    """What is wrong with a batch's `sentAt` (None when it is absent or an ISO-8601 date-time)."""
    if sent_at is None or (isinstance(sent_at, str) and parse_datetime(sent_at) is not None):
        return None
    return f"sentAt: {sent_at!r:.60} is not an ISO-8601 date-time"


def to_events(messages: Iterable[Any], *, received_at: datetime, sent_at: Any = None,
              trigger_window: timedelta | None = timedelta(hours=24),
              call: str | None = None) -> tuple[list[Event], list[BadMessage]]:
    """Valid messages as events, and a BadMessage for each bad one; `call` forces the message type.

    Events older than `trigger_window` (None: no window) are backfills: they update metrics, move no journey.
    """
    events: list[Event] = []
    bad: list[BadMessage] = []
    for index, raw in enumerate(messages):
        if not isinstance(raw, dict):
            bad.append(BadMessage(index, "message", "invalid_message", "must be a JSON object"))
            continue
        if call is not None:
            raw = {**raw, "type": call}
        problem = _shape(raw)
        if problem is not None:
            bad.append(replace(problem, index=index))
            continue
        try:
            happened = corrected_time(raw, received_at=received_at, sent_at=sent_at)
            event = event_from_segment({**raw, "timestamp": happened}, default_time=received_at)
        except InvalidEventError as exc:
            bad.append(BadMessage(index, exc.field, f"invalid_{exc.field}", str(exc).split(": ", 1)[-1]))
            continue
        if trigger_window is not None and received_at - event.timestamp > trigger_window:
            event = replace(event, backfill=True)
        events.append(event)
    return events, bad


def not_erased(events: list[Event], erased: Callable[[Collection[str]], set[str]]) -> list[int]:
    """The positions of the events that name no erased id (`erased` is the store's lookup). An alias names
    two ids, and naming an erased one on either side drops it like any event of an erased id: it must not
    bring the id back as another user's alias."""
    named = {e.user_id for e in events} | {e.previous_id for e in events if e.previous_id is not None}
    gone = erased(named) if named else set()
    if not gone:
        return list(range(len(events)))
    return [i for i, e in enumerate(events) if e.user_id not in gone and e.previous_id not in gone]


def _shape(raw: dict[str, Any]) -> BadMessage | None:
    """Size in UTF-8 bytes, encoding, depth and NUL characters of one message, before its fields are read."""
    try:
        text = json.dumps(raw, ensure_ascii=False, separators=(",", ":"))
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        where = _first(raw, "", lambda s: not _encodes(s)) or "message"
        return BadMessage(0, where, "invalid_encoding", "not valid Unicode (a lone surrogate such as \\ud800)")
    if size > MAX_MESSAGE:
        return BadMessage(0, "message", "too_large", f"{size} bytes, larger than {MAX_MESSAGE // 1024} KB")
    for key, value in raw.items():
        if _depth(value, MAX_DEPTH - 1) > MAX_DEPTH - 1:
            return BadMessage(0, key, "too_deep", f"nested deeper than {MAX_DEPTH} levels")
    if _ESCAPED_NUL in text:  # JSON always escapes NUL, so a message without this text has none
        nul_at = _first(raw, "", lambda s: "\x00" in s)
        if nul_at is not None:
            return BadMessage(0, nul_at, "invalid_character", "contains a NUL character (\\u0000): no text "
                                                             "may carry one (PostgreSQL cannot store it)")
    return None


def _first(value: Any, path: str, bad: Callable[[str], bool]) -> str | None:
    """The path of the first string (or key) that is `bad`; a bad key is named with escapes (`{key!a}`)."""
    if isinstance(value, str):
        return path if bad(value) else None
    items: Iterable[tuple[str, Any]] = ()
    if isinstance(value, dict):
        for key in value:
            if bad(key):
                return f"{path}.{key!a}".lstrip(".")
        items = ((f"{path}.{k}".lstrip("."), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    return next((found for p, v in items if (found := _first(v, p, bad)) is not None), None)


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _depth(value: Any, limit: int) -> int:
    """How deep `value` nests (a scalar is 1), stopping once past `limit`; no recursion."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest
