"""The trace records of SPEC §5: what happened to whom, when and why.

Records are plain dicts (they are logged, stored and printed as JSON lines as they are); the
functions here are the one place that names their kinds and fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .clock import iso

Record = dict[str, Any]


__all__ = ["Record", "goal_reached", "iso", "journey_entered", "journey_exited", "message", "other", "segment",
           "transition"]


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
            channel: str | None, locale: str | None, **extra: Any) -> Record:
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
