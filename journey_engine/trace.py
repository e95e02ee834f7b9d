"""The trace records of SPEC §5: what happened to whom, when and why.

Records are plain dicts (they are logged, stored and printed as JSON lines as they are); the
functions here are the one place that names their kinds and fields.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

Record = dict[str, Any]


@lru_cache(maxsize=512)  # the records of one input mostly share its instant
def iso(at: datetime) -> str:
    """ISO-8601 UTC with a Z, seconds precision unless there is a fraction."""
    text = at.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def segment(kind: str, at: datetime, user: str, name: str) -> Record:
    return {"kind": kind, "at": iso(at), "user": user, "segment": name}


def journey_entered(at: datetime, user: str, journey: str, key: str | None, state: str, **extra: Any) -> Record:
    return {"kind": "journey_entered", "at": iso(at), "user": user, "journey": journey, "key": key,
            "state": state, **extra}


def transition(at: datetime, user: str, journey: str, key: str | None, src: str, dst: str,
               trigger: str) -> Record:
    return {"kind": "transition", "at": iso(at), "user": user, "journey": journey, "key": key,
            "from": src, "to": dst, "trigger": trigger}


def message(kind: str, at: datetime, user: str, journey: str, key: str | None, state: str | None, message_id: str,
            channel: str, locale: str | None, **extra: Any) -> Record:
    return {"kind": kind, "at": iso(at), "user": user, "journey": journey, "key": key, "state": state,
            "message": message_id, "channel": channel, "locale": locale, **extra}


def goal_reached(at: datetime, user: str, journey: str, key: str | None, **extra: Any) -> Record:
    return {"kind": "goal_reached", "at": iso(at), "user": user, "journey": journey, "key": key, **extra}


def journey_exited(at: datetime, user: str, journey: str, key: str | None, reason: str, **extra: Any) -> Record:
    return {"kind": "journey_exited", "at": iso(at), "user": user, "journey": journey, "key": key,
            "reason": reason, **extra}


def other(kind: str, at: datetime, user: str, **fields: Any) -> Record:
    """Records beyond the SPEC's minimum: duplicate, cycle, alias_merged, subscription_changed."""
    return {"kind": kind, "at": iso(at), "user": user, **fields}
