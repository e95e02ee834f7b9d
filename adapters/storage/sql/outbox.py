"""The Outbox and Inbox ports on SQL: committed sends claimed under a lease and token, settled by
their latest claim's holder; in-app messages read from the same table."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from journey_engine.engine import RenderedMessage, SendMessage
from journey_engine.ports import LEASE_SECONDS, inbox_items

from .connection import SqlConnection
from .rows import _trace_row
from .tables import outbox_t


class SqlOutbox(SqlConnection):
    """The outbox table: claims, settles and the reads of it."""

    def claim_outbox(self, now: datetime, limit: int, lease: float = LEASE_SECONDS) -> list[dict[str, Any]]:
        """The token is in each row, and remembered for `settle_outbox` on this thread; the lease is the
        row's `next_attempt_at`."""
        return self._claim_outbox(now, limit, lease, None)

    def _claim_outbox(self, now: datetime, limit: int, lease: float,
                      parts: tuple[Collection[int], int] | None) -> list[dict[str, Any]]:
        """`claim_outbox`, of the sends whose shard modulo `parts[1]` is one of `parts[0]` (None: all)."""
        o = outbox_t.c
        pending, not_in_app = sa.literal_column("'pending'"), sa.literal_column("'in_app'")  # match ix_outbox_claim
        pick = (sa.select(o.key).where(o.status == pending, o.channel != not_in_app,
                                       o.next_attempt_at <= now.timestamp())
                .order_by(o.next_attempt_at, o.key).limit(limit))
        if parts is not None:
            pick = pick.where((o.shard % parts[1]).in_(sorted(parts[0])))
        if self.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        token = secrets.token_hex(8)
        claim = (sa.update(outbox_t).where(o.key.in_(pick.scalar_subquery()))
                 .values(next_attempt_at=now.timestamp() + lease, token=token)
                 .returning(*outbox_t.c))
        with self._tx() as conn:
            rows = [dict(r._mapping) for r in conn.execute(claim)]
        claims = self._claims
        claims.update((row["key"], token) for row in rows)
        return sorted(rows, key=lambda r: (r["at"], r["key"]))

    @property
    def _claims(self) -> dict[str, str]:
        claims: dict[str, str] | None = getattr(self._local, "claims", None)
        if claims is None:
            claims = self._local.claims = {}
        return claims

    def settle_outbox(self, updates: list[dict[str, Any]], records: list[dict[str, Any]], *,
                      durable: bool = True) -> set[str]:
        """An update without a `token` uses the one this thread's `claim_outbox` got. One conditional
        UPDATE per send, in key order (two dispatchers' settles lock rows in the same order)."""
        claims = self._claims
        tokens = {u["key"]: u.get("token") or claims.get(u["key"]) for u in updates}
        sql = self._sql["settle_outbox"]
        with self._tx(durable=durable) as conn:
            held = {u["key"] for u in sorted(updates, key=lambda u: u["key"])
                    if conn.exec_driver_sql(sql, (u["status"], u["attempts"], u["next_attempt_at"], u["last_error"],
                                                  u["key"], tokens[u["key"]])).rowcount == 1}
            late = set(tokens) - held
            kept = [r for r in records if r.get("send_key") not in late]
            if kept:
                conn.exec_driver_sql(self._sql["insert_trace"], [_trace_row(r) for r in kept])
        for key in tokens:
            claims.pop(key, None)
        return held

    def outbox(self, status: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(outbox_t).order_by(outbox_t.c.at, outbox_t.c.key)
        if status is not None:
            query = query.where(outbox_t.c.status == status)
        with self._reading() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def outbox_of(self, user: str, channel: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(outbox_t).where(outbox_t.c.user_id == user).order_by(outbox_t.c.at, outbox_t.c.key)
        if channel is not None:
            query = query.where(outbox_t.c.channel == channel)
        with self._reading() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def outbox_due(self, now: datetime) -> int:
        o = outbox_t.c
        query = sa.select(sa.func.count()).select_from(outbox_t).where(
            o.status == "pending", o.channel != "in_app", o.next_attempt_at <= now.timestamp())
        with self._reading() as conn:
            return int(conn.execute(query).scalar_one())


class SqlInbox(SqlOutbox):
    """In-app messages: the outbox rows of the `in_app` channel, until read."""

    def inbox(self, user: str, render: Callable[[SendMessage], RenderedMessage]) -> list[dict[str, Any]]:
        return inbox_items(self.outbox_of(user, "in_app"), render)

    def mark_read(self, user: str, key: str) -> bool:
        with self._tx() as conn:
            done = conn.execute(sa.update(outbox_t).where(outbox_t.c.user_id == user, outbox_t.c.key == key,
                                                          outbox_t.c.channel == "in_app")
                                .values(status="read")).rowcount
        return bool(done)
