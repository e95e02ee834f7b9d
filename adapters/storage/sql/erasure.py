"""The Erasure port on SQL: a user and every id merged into them, gone in one transaction."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

import sqlalchemy as sa

from journey_engine import codec

from .store import SqlProfiles
from .tables import aliases_t, erased_t, history_t, outbox_t, processed_t, profiles_t, trace_t


class SqlErasure(SqlProfiles):
    """Erasure on request, and the ids refused since."""

    def erase(self, user: str, now: datetime) -> bool:
        """An id with a NUL character cannot have been stored: nothing to erase."""
        if "\x00" in user:
            return False
        if self.erased([user]):
            users = {user}
        else:
            target = self.aliases([user]).get(user, user)
            users = {user, target} | {prev for prev, _ in self.aliases_to(target)}
        with self._tx() as conn:
            bodies = conn.execute(sa.select(profiles_t.c.body).where(profiles_t.c.user_id.in_(users))).scalars().all()
            deltas: dict[tuple[str, str], int] = {}
            for body in bodies:
                for inst in codec.decode(body, self.defaults).instances.values():
                    deltas[(inst.journey, inst.state)] = deltas.get((inst.journey, inst.state), 0) - 1
            self._counts(conn, deltas)
            conn.execute(sa.delete(profiles_t).where(profiles_t.c.user_id.in_(users)))
            conn.execute(sa.delete(aliases_t).where(sa.or_(aliases_t.c.user_id.in_(users),
                                                           aliases_t.c.previous_id.in_(users))))
            for table in (trace_t, outbox_t, history_t, processed_t):
                conn.execute(sa.delete(table).where(table.c.user_id.in_(users)))
            self._upsert(conn, erased_t, [{"user_id": u, "at": now.timestamp()} for u in users], ["user_id"], [])
        if self.kept is not None:
            self.kept.drop(users)
        return bool(bodies)

    def erased(self, users: Collection[str]) -> set[str]:
        return set(self._lookup(erased_t.c.user_id, erased_t.c.user_id, users))

    def aliases_to(self, user: str) -> list[tuple[str, str]]:
        """(previous id, user) of every id merged into `user`."""
        with self._reading() as conn:
            return [(a, b) for a, b in conn.execute(sa.select(aliases_t.c.previous_id, aliases_t.c.user_id)
                                                    .where(aliases_t.c.user_id == user))]
