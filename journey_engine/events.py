"""Events as the engine sees them: Segment Spec calls reduced to one small frozen value.

Sources (the HTTP API, JSONL files, scenarios) turn their input into `Event` with `event_from_segment`;
ISO-8601 strings in traits and properties become aware datetimes so rules can do date arithmetic.
"""

from __future__ import annotations

import copyreg
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from .errors import InvalidEventError

EventType = Literal["track", "identify", "alias", "page", "screen", "group"]
_TYPES = ("track", "identify", "alias", "page", "screen", "group")
_NAMES: dict[str, str | None] = {"page": "Page Viewed", "screen": "Screen Viewed", "identify": None,
                                 "alias": None, "group": None}
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:?\d{2})?$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    type: EventType
    user_id: str
    timestamp: datetime
    name: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    previous_id: str | None = None
    backfill: bool = False  # older than the trigger window: updates metrics, moves no journey


# Events cross process pipes (adapters/service/processes.py) pickled: rebuilt through `Event(...)`, the one
# way a compiled frozen class can be made (journey_engine/native.py), and the same way in pure Python.
_FIELDS = tuple(f.name for f in fields(Event))


def _rebuild(*values: Any) -> Event:
    return Event(**dict(zip(_FIELDS, values, strict=True)))


def _reduce(event: Event) -> tuple[Callable[..., Event], tuple[Any, ...]]:
    return _rebuild, tuple(getattr(event, name) for name in _FIELDS)


copyreg.pickle(Event, _reduce)


def json_type(value: Any) -> str:
    """How a JSON value's type is called in an error message."""
    if isinstance(value, bool):
        return "true/false"
    return {dict: "an object", list: "a list", float: "a decimal number"}.get(type(value), type(value).__name__)


def parse_datetime(value: str) -> datetime | None:
    """An aware UTC datetime from an ISO-8601 string, or None when it is not one."""
    if not _ISO.match(value):
        return None
    text = value.replace("Z", "+00:00").replace(" ", "T")
    if "." in text:  # fromisoformat takes at most 6 fraction digits
        head, _, tail = text.partition(".")
        digits = re.match(r"\d+", tail)
        assert digits is not None
        text = f"{head}.{digits.group()[:6].ljust(6, '0')}{tail[len(digits.group()):]}"
    try:
        parsed = datetime.fromisoformat(text)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: year 1 or 9999 pushed out of range by the offset
        return None


def with_datetimes(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy where ISO-8601 strings (top level and nested) are datetimes."""
    return {k: _convert(v) for k, v in values.items()}


_INT_RANGE = (-(2**63), 2**64)


def _convert(value: Any) -> Any:
    if type(value) is int and not _INT_RANGE[0] <= value < _INT_RANGE[1]:
        return _big(value)  # stores keep 64-bit integers; JSON allows any size
    if isinstance(value, str) and len(value) >= 10 and value[4:5] == "-":
        return parse_datetime(value) or value
    if isinstance(value, Mapping):
        return with_datetimes(value)
    if isinstance(value, list):
        return [_convert(v) for v in value]
    return value


def _big(value: int) -> float | str:
    try:
        return float(value)
    except OverflowError:
        return str(value)


def event_from_segment(raw: Mapping[str, Any], *, default_time: datetime) -> Event:
    """A Segment Spec message (`type`, `userId`, `event`, `properties`, `traits`, ...) as an Event."""
    kind = raw.get("type", "track")
    if kind not in _TYPES:
        raise InvalidEventError("type", f"must be one of {', '.join(_TYPES)}, not {kind!r}")
    # a number is an id, the same user as its decimal string, 0 included (SPEC §3 item 14)
    field_name = "userId" if raw.get("userId") not in (None, "") else "anonymousId"
    user = raw.get(field_name)
    if user is None or user == "":
        raise InvalidEventError("userId", "every event needs `userId` or `anonymousId`")
    if not isinstance(user, str | int) or isinstance(user, bool):
        raise InvalidEventError(field_name, f"must be a string or a number, not {json_type(user)}")
    name = _NAMES.get(kind, raw.get("event"))  # only a track call names its event; others ignore `event`
    if kind == "track" and (not isinstance(name, str) or not name):
        raise InvalidEventError("event", "a track call needs the event name in `event`, a non-empty string")
    timestamp = _timestamp(raw.get("timestamp"), default_time)
    context = raw.get("context") or {}
    if not isinstance(context, Mapping):
        raise InvalidEventError("context", "must be an object")
    properties = raw.get("properties") or {}
    traits_field = "traits" if raw.get("traits") else "context.traits"  # RudderStack sends context.traits
    traits = raw.get("traits") or context.get("traits")
    for field_name, value in (("properties", properties), (traits_field, traits or {})):
        if not isinstance(value, Mapping):
            raise InvalidEventError(field_name, "must be an object")
    previous = raw.get("previousId")
    if kind == "alias" and (previous is None or previous == ""):
        raise InvalidEventError("previousId", "an alias call needs `previousId`")
    if previous is not None and (not isinstance(previous, str | int) or isinstance(previous, bool)):
        raise InvalidEventError("previousId", f"must be a string or a number, not {json_type(previous)}")
    message_id = raw.get("messageId")
    return Event(type=kind, user_id=str(user), timestamp=timestamp, name=name,
                 properties=with_datetimes(properties), traits=with_datetimes(traits or {}),
                 message_id=str(message_id) if message_id is not None else None,
                 previous_id=None if previous is None or previous == "" else str(previous))


def corrected_time(raw: Mapping[str, Any], *, received_at: datetime, sent_at: Any = None,
                   future_limit: timedelta = timedelta(hours=24)) -> datetime:
    """When the event happened, corrected for the client's clock as Segment does:
    timestamp = receivedAt - (sentAt - originalTimestamp); more than `future_limit` ahead becomes receivedAt.

    Raises InvalidEventError naming `timestamp`, `originalTimestamp` or `sentAt` when one is not a date-time,
    or when the correction lands outside the years 1-9999."""
    stamp = "timestamp" if raw.get("timestamp") is not None else "originalTimestamp"
    happened = _timestamp(raw.get(stamp), received_at, stamp)
    sent = raw.get("sentAt", sent_at)
    if sent is not None:
        sent_time = _timestamp(sent, received_at, "sentAt")
        if raw.get(stamp) is not None:
            try:
                happened = received_at - (sent_time - happened)
            except OverflowError:
                raise InvalidEventError("sentAt", f"{sent!r:.60} is so far from `{stamp}` that the corrected time is "
                                                  "out of range") from None
    return received_at if happened > received_at + future_limit else happened


def _timestamp(value: Any, default: datetime, field_name: str = "timestamp") -> datetime:
    if value is None:
        return default
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, str):
        parsed = parse_datetime(value)
        if parsed is not None:
            return parsed
    raise InvalidEventError(field_name, f"{value!r:.60} is not an ISO-8601 date-time between the years 1 and 9999 UTC")
