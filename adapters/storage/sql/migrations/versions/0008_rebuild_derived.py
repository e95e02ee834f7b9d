"""Rebuild the tables derived from profiles and trace, which revisions 0002 and 0003 created empty on
databases that already had data: state counts are recounted from the profiles; segment history is
replayed from the trace for (user, segment) pairs that have none, and a current segment with no open
row gets one (entered at the profile's last update: the true time is not known any more).

Revision ID: 0008
Revises: 0007
"""

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

from journey_engine import codec

revision = "0008"
down_revision = "0007"

profiles = sa.table("profiles", sa.column("user_id"), sa.column("body"), sa.column("updated_at"))
trace = sa.table("trace", sa.column("id"), sa.column("kind"), sa.column("body"))
counts = sa.table("state_counts", sa.column("journey"), sa.column("state"), sa.column("users"))
history = sa.table("segment_history", sa.column("user_id"), sa.column("segment"), sa.column("entered_at"),
                   sa.column("left_at"))


def upgrade() -> None:
    conn = op.get_bind()
    tally: dict[tuple[str, str], int] = {}
    current: dict[str, tuple[tuple[str, ...], float]] = {}
    for user, body, updated_at in conn.execute(sa.select(profiles.c.user_id, profiles.c.body, profiles.c.updated_at)):
        profile = codec.decode(body)
        for inst in profile.instances.values():
            tally[(inst.journey, inst.state)] = tally.get((inst.journey, inst.state), 0) + 1
        if profile.segments:
            current[user] = (profile.segments, updated_at)
    conn.execute(sa.delete(counts))
    if tally:
        conn.execute(sa.insert(counts), [{"journey": j, "state": s, "users": n} for (j, s), n in tally.items()])
    rows = _replayed_history(conn, current)
    if rows:
        conn.execute(sa.insert(history), rows)


def _replayed_history(conn: sa.Connection, current: dict[str, tuple[tuple[str, ...], float]]) -> list[dict[str, Any]]:
    have = {(u, s) for u, s in conn.execute(sa.select(history.c.user_id, history.c.segment).distinct())}
    rows: list[dict[str, Any]] = []
    open_rows: dict[tuple[str, str], dict[str, Any]] = {}
    query = (sa.select(trace.c.body).where(trace.c.kind.in_(["segment_entered", "segment_left"]))
             .order_by(trace.c.id))
    for (body,) in conn.execute(query):
        record = json.loads(body)
        pair = (record["user"], record["segment"])
        if pair in have:
            continue
        if record["kind"] == "segment_entered":
            open_rows[pair] = row = {"user_id": pair[0], "segment": pair[1], "entered_at": record["at"],
                                     "left_at": None}
            rows.append(row)
        elif pair in open_rows:
            open_rows.pop(pair)["left_at"] = record["at"]
    for user, (segments, updated_at) in current.items():
        for segment in segments:
            if (user, segment) not in have and (user, segment) not in open_rows:
                rows.append({"user_id": user, "segment": segment, "left_at": None,
                             "entered_at": _iso(updated_at)})
    return rows


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")
