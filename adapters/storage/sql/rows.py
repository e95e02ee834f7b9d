"""How the SQL store writes records and sends as rows: the trace's and the outbox's JSON."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import orjson

from journey_engine.engine import SEND_FIELDS, SendMessage
from journey_engine.ports import shard


def _trace_row(record: dict[str, Any]) -> tuple[Any, ...]:
    """(user_id, at, kind, journey, body) for `insert_trace`."""
    return record.get("user", ""), record["at"], record["kind"], record.get("journey"), _dumps(record)


def _outbox_row(send: SendMessage) -> tuple[Any, ...]:
    """(key, user_id, at, channel, message, journey, payload, next_attempt_at, shard) for `insert_outbox`."""
    payload = {name: getattr(send, name) for name in SEND_FIELDS}  # asdict() would deep-copy the context
    at = send.at.timestamp()
    return (send.idempotency_key, send.user, at, send.channel, send.message, send.journey, _dumps(payload), at,
            shard(send.user))


_ORJSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _dumps(value: Any) -> str:
    """JSON that `json.loads` reads back as `json.dumps(value, default=_json_default)` would have written it
    (orjson, compact separators). Whatever orjson refuses (a dict key that is not a string, an integer past
    64 bits, a lone surrogate) goes through `json`. One difference: NaN and infinities become null (valid
    JSON) where `json` writes the non-standard NaN and Infinity."""
    try:
        return orjson.dumps(value, default=_json_default, option=_ORJSON).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value, default=_json_default, ensure_ascii=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)
