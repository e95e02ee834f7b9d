"""What the service shows of a user: GET /v1/users/{id} and `journey user --json` (one view, two doors)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from journey_engine import trace
from journey_engine.engine import Engine
from journey_engine.ports import ServiceStore


def storable(text: str) -> bool:
    """Whether a store can hold this id: events naming a NUL character are refused, so no user has one
    (and PostgreSQL would raise on the lookup)."""
    return "\x00" not in text


def jsonable(value: Any) -> Any:
    """`value` with datetimes as ISO-8601 strings at any depth, and floats JSON can carry."""
    if isinstance(value, datetime):
        return trace.iso(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # stored before NaN and Infinity were refused
    return value


def user_view(store: ServiceStore, engine: Engine, user_id: str, now: datetime) -> dict[str, Any] | None:
    """What GET /v1/users/{id} and `journey user --json` show: where the user is, and why (metrics as of
    `now`: windows slid to it)."""
    if not storable(user_id) or store.erased([user_id]):  # an erased id stays erased, whatever names it since
        return None
    resolved = store.aliases([user_id]).get(user_id, user_id)
    profile = store.load([resolved]).get(resolved)
    if profile is None:
        return None
    records = store.trace(resolved, limit=200)

    iso = jsonable

    instances = []
    for inst in profile.instances.values():
        why = next((r for r in reversed(records) if r.get("journey") == inst.journey
                    and r.get("key") == (inst.key or None) and r["kind"] in ("transition", "journey_entered")), None)
        instances.append({"journey": inst.journey, "key": inst.key or None, "state": inst.state,
                          "since": iso(inst.state_entered_at), "entered_at": iso(inst.entered_at),
                          "holdout": inst.holdout,
                          "timers": [{"due": iso(at), "transition": i} for at, i in inst.timers],
                          "why": why})
    return {
        "user_id": resolved,
        "traits": {k: iso(v) for k, v in profile.traits.items()},
        "metrics": {k: iso(v) for k, v in engine.cw.metrics.current(profile, now).items()},
        "segments": sorted(profile.segments),
        "journeys": instances,
        "subscriptions": profile.subscriptions,
        "last_messages": [{k: r[k] for k in ("key", "message", "channel", "journey", "status")}
                          | {"at": iso(datetime.fromtimestamp(r["at"], UTC))}
                          for r in store.outbox_of(resolved)[-20:]],
        "decisions": [r for r in records if r["kind"].startswith("message_") or r["kind"] in
                      ("transition", "journey_entered", "journey_exited", "goal_reached")][-30:],
        "next_wake": iso(profile.wake),
    }
