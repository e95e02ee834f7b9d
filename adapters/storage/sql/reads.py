"""The Reads port on SQL: state counts, a user's trace, and the snapshot a report reads from."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from journey_engine.ports import parse_time

from .store import SqlProfiles
from .tables import counts_t, history_t, trace_t


class SqlReads(SqlProfiles):
    """What operators, the API, the dashboard and the reports read."""

    def state_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        with self._reading() as conn:
            for journey, state, users in conn.execute(sa.select(counts_t)):
                counts.setdefault(journey, {})[state] = users
        return counts

    def trace(self, user: str, limit: int = 200) -> list[dict[str, Any]]:
        with self._reading() as conn:
            rows = conn.execute(sa.select(trace_t.c.body).where(trace_t.c.user_id == user)
                                .order_by(trace_t.c.id.desc()).limit(limit)).scalars().all()
        return [json.loads(r) for r in reversed(rows)]

    @contextmanager
    def snapshot(self) -> Iterator[SqlSnapshot]:
        """PostgreSQL: one REPEATABLE READ transaction; SQLite: one read transaction of the WAL."""
        with self._reading() as conn:
            if self.dialect == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            yield SqlSnapshot(conn)


class SqlSnapshot:
    """The reads of `SqlReads.snapshot`, on its one connection: the trace and segment history streamed
    (memory stays flat however long they are), and the live state counts and bandit arms."""

    STREAM_ROWS = 2000  # rows fetched per round trip

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        yield self.conn

    # the store's own reads, on this connection
    state_counts = SqlReads.state_counts
    bandit = SqlProfiles.bandit

    def trace_records(self, kinds: Collection[str], journey: str | None = None) -> Iterator[dict[str, Any]]:
        t = trace_t.c
        query = sa.select(t.body).where(t.kind.in_(list(kinds))).order_by(t.id)
        if journey is not None:
            query = query.where(sa.or_(t.journey == journey, t.kind == "alias_merged"))
        for (body,) in self.conn.execute(query.execution_options(yield_per=self.STREAM_ROWS)):
            yield json.loads(body)

    def latest(self) -> datetime | None:
        h = history_t.c
        found = [self.conn.execute(sa.select(sa.func.max(c))).scalar() for c in (trace_t.c.at, h.entered_at,
                                                                                 h.left_at)]
        return max((parse_time(text) for text in found if text), default=None)

    def segment_history(self) -> Iterator[tuple[str, str, str, str | None]]:
        h = history_t.c
        query = sa.select(h.segment, h.user_id, h.entered_at, h.left_at).order_by(h.segment, h.user_id,
                                                                                  h.entered_at)
        rows = self.conn.execute(query.execution_options(yield_per=self.STREAM_ROWS))
        yield from ((segment, user, entered, left) for segment, user, entered, left in rows)
