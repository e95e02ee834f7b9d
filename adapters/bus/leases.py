"""Who owns which partition of the bus: leases in PostgreSQL, and the fencing check of every commit.

A lease is a row (stream, partition) with its owner, an expiry and a token. Taking a partition over (free,
or its lease expired) adds one to the token; the owner renews before expiry. Every commit of a worker
first reads the tokens of the partitions it holds `FOR SHARE`, in the commit's own transaction, and
writes nothing when one changed (`LeaseLost`): a worker whose partition was taken — stalled, cut off,
thought dead — cannot commit a batch of it. A taker's `UPDATE` waits for a commit holding that share
lock, so a slow commit in progress is never overtaken half-way: it commits, then loses the partition.

`FencedStore` is the SQL store with that check, and with timer and send claims limited to the held
partitions (timers and sends of a partition belong to its owner). Workers also note themselves in `bus_workers`
every renewal, so each knows how many share the partitions.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from adapters.bus.pipeline import InFlight
from adapters.storage.sql import SqlStore
from adapters.storage.sql.store import Encoded
from journey_engine.ports import LEASE_SECONDS, Batch, Part, StoreUnavailable
from journey_engine.profile import Profile

LEASE_TTL = 10.0  # seconds a lease lasts unrenewed: a dead worker's partitions are free after this
RENEW_EVERY = 2.0  # seconds between renewals (and rebalancing looks)

_meta = sa.MetaData()
leases_t = sa.Table("bus_leases", _meta,
                    sa.Column("stream", sa.String(64), primary_key=True),
                    sa.Column("part", sa.Integer, primary_key=True),
                    sa.Column("owner", sa.String(200), nullable=True),
                    sa.Column("token", sa.BigInteger, nullable=False, server_default="0"),
                    sa.Column("expires_at", sa.Float, nullable=False, server_default="0"))
workers_t = sa.Table("bus_workers", _meta,
                     sa.Column("stream", sa.String(64), primary_key=True),
                     sa.Column("worker", sa.String(200), primary_key=True),
                     sa.Column("seen_at", sa.Float, nullable=False))


class LeaseLost(StoreUnavailable):
    """A partition of this batch was taken over by another worker: nothing of the batch was written, and its
    events of that partition are the new owner's to apply."""

    def __init__(self, parts: list[int]) -> None:
        super().__init__(f"partition(s) {parts} were taken over by another worker; nothing was committed")
        self.parts = parts


def _create_tables(engine: sa.engine.Engine) -> None:
    """The lease tables, when missing. Workers started together on a new database race to create them:
    the loser's CREATE fails on the name the winner just took, and then finds the tables there."""
    for attempt in range(3):
        try:
            _meta.create_all(engine, checkfirst=True)
            return
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
            if attempt == 2:
                raise
            time.sleep(0.1)


class Leases:
    """This worker's leases on one stream's partitions."""

    def __init__(self, store: SqlStore, stream: str, parts: int, worker: str,
                 wall: Callable[[], float] = time.time) -> None:
        if store.dialect != "postgresql":
            raise StoreUnavailable("bus workers share PostgreSQL (JOURNEY_DATABASE_URL=postgresql://...): leases "
                                   "and their fencing need it")
        self.engine, self.stream, self.parts, self.worker, self.wall = store.engine, stream, parts, worker, wall
        self.held: dict[int, int] = {}  # partition -> token
        self.lock = threading.Lock()
        _create_tables(self.engine)
        with self.engine.begin() as conn:
            conn.execute(sa.dialects.postgresql.insert(leases_t).on_conflict_do_nothing(),
                         [{"stream": stream, "part": p, "owner": None, "token": 0, "expires_at": 0.0}
                          for p in range(parts)])

    def tokens(self) -> dict[int, int]:
        with self.lock:
            return dict(self.held)

    def fence(self, conn: Connection) -> None:
        """In a commit's transaction: the held partitions' tokens, share-locked until it ends, or LeaseLost."""
        held = self.tokens()
        if not held:
            return
        c = leases_t.c
        rows = conn.execute(sa.select(c.part, c.token).where(c.stream == self.stream, c.part.in_(sorted(held)))
                            .order_by(c.part).with_for_update(read=True)).all()
        current = dict(rows)
        lost = sorted(p for p, token in held.items() if current.get(p) != token)
        if lost:
            self.drop(lost)
            raise LeaseLost(lost)

    def drop(self, parts: list[int]) -> None:
        with self.lock:
            for p in parts:
                self.held.pop(p, None)

    def renew(self) -> list[int]:
        """Extend the held leases and note this worker alive; return the partitions lost meanwhile."""
        now = self.wall()
        c = leases_t.c
        lost = []
        with self.engine.begin() as conn:
            conn.execute(sa.dialects.postgresql.insert(workers_t).values(
                stream=self.stream, worker=self.worker, seen_at=now).on_conflict_do_update(
                index_elements=["stream", "worker"], set_={"seen_at": now}))
            for part, token in sorted(self.tokens().items()):
                kept = conn.execute(sa.update(leases_t).where(
                    c.stream == self.stream, c.part == part, c.token == token, c.owner == self.worker)
                    .values(expires_at=now + LEASE_TTL)).rowcount
                if not kept:
                    lost.append(part)
        self.drop(lost)
        return lost

    def share(self) -> int:
        """How many partitions this worker should hold: the partitions over the workers seen alive."""
        now = self.wall()
        with self.engine.connect() as conn:
            alive = conn.execute(sa.select(sa.func.count()).select_from(workers_t).where(
                workers_t.c.stream == self.stream, workers_t.c.seen_at > now - LEASE_TTL)).scalar_one()
        return math.ceil(self.parts / max(1, int(alive)))

    def acquire(self, limit: int) -> dict[int, int]:
        """Take up to `limit` free or expired partitions (lowest first); return them with their new tokens."""
        if limit <= 0:
            return {}
        now = self.wall()
        c = leases_t.c
        taken: dict[int, int] = {}
        with self.engine.begin() as conn:
            free = conn.execute(sa.select(c.part).where(c.stream == self.stream, c.expires_at < now)
                                .order_by(c.part).limit(limit).with_for_update(skip_locked=True)).scalars().all()
            for part in free:
                token = conn.execute(sa.update(leases_t).where(c.stream == self.stream, c.part == part)
                                     .values(owner=self.worker, token=c.token + 1, expires_at=now + LEASE_TTL)
                                     .returning(c.token)).scalar_one()
                taken[part] = int(token)
        with self.lock:
            self.held.update(taken)
        return taken

    def release(self, part: int) -> None:
        """Give a partition back at once (rebalancing, stopping): free for any worker's next look."""
        token = self.tokens().get(part)
        self.drop([part])
        if token is None:
            return
        c = leases_t.c
        with self.engine.begin() as conn:
            conn.execute(sa.update(leases_t).where(c.stream == self.stream, c.part == part, c.token == token)
                         .values(owner=None, expires_at=0.0))

    def leave(self) -> None:
        """Release everything and stop counting as alive (a clean stop)."""
        for part in list(self.tokens()):
            self.release(part)
        with self.engine.begin() as conn:
            conn.execute(sa.delete(workers_t).where(workers_t.c.stream == self.stream,
                                                    workers_t.c.worker == self.worker))

    def owners(self) -> dict[int, tuple[str | None, float]]:
        """Every partition's owner and lease expiry (for /metrics and the report)."""
        c = leases_t.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(c.part, c.owner, c.expires_at).where(c.stream == self.stream)).all()
        return {int(p): (o, float(e)) for p, o, e in rows}


class FencedStore(SqlStore):
    """The SQL store of a bus worker: every commit is fenced by the worker's leases (see the module), and
    timers are claimed only in the partitions it holds."""

    leases: Leases | None = None  # set once the worker has its leases

    def _write(self, conn: Connection, encoded: Encoded) -> None:
        if self.leases is not None:
            self.leases.fence(conn)
        super()._write(conn, encoded)

    # The lookups of every batch (its messageIds, aliases, erased ids: a few thousand keys each) as one
    # `= ANY(array)` each, in the driver's own SQL: the Core `IN` of the base class compiles and binds every
    # key, a fifth of a bus worker's engine thread in `journey bench --bus`.

    def seen(self, message_ids: Collection[str]) -> set[str]:
        mine = self._flight.seen(message_ids) if self._flight is not None else set()  # first: see pipeline.py
        rest = [m for m in message_ids if m not in mine] if mine else message_ids
        return mine | {row[0] for row in self._any("SELECT message_id FROM processed WHERE message_id = ANY(%s)",
                                                   rest)}

    def aliases(self, users: Collection[str]) -> dict[str, str]:
        mine = self._flight.aliases(users) if self._flight is not None else {}
        found = dict(self._any("SELECT previous_id, user_id FROM aliases WHERE previous_id = ANY(%s)", users))
        return {**found, **mine}

    def load(self, users: Collection[str]) -> dict[str, Profile]:
        mine = self._flight.profiles(users) if self._flight is not None else {}
        if not mine:
            return super().load(users)
        found = super().load([u for u in users if u not in mine])
        versions = self._versions
        for user, (version, profile) in mine.items():
            if profile is not None:
                found[user], versions[user] = profile, version
        return found

    # --- commits behind the engine (adapters/bus/pipeline.py) ------------------------------------

    _flight: InFlight | None = None

    def commit_later(self, batch: Batch) -> Future[None]:
        """`commit`, on the pipeline's thread, behind the batches before it: the future settles once the
        batch is committed. Encoded now, so the caller may go on with the next batch at once."""
        if self._flight is None:
            self._flight = InFlight(self._commit_encoded, self.forget)
        return self._flight.submit(self._encoded(batch))  # an empty one too: it settles in its turn

    def flush(self) -> bool:
        """Wait for every `commit_later` so far; True when one failed and `recover` was not called since."""
        return self._flight.flush() if self._flight is not None else False

    def recover(self) -> None:
        """Accept `commit_later` again after a failure was seen (see pipeline.py)."""
        if self._flight is not None:
            self._flight.recover()

    def forget(self, *, behind: bool = False) -> None:
        """Hand out no kept profile again (after a batch that may have changed one failed): now, or `behind`
        the batches in flight, once they are committed."""
        if behind and self._flight is not None:
            self._flight.behind(self.forget)
        elif self.kept is not None:
            self.kept.clear()

    def close(self) -> None:
        if self._flight is not None:
            self._flight.close()
        super().close()

    def erased(self, users: Collection[str]) -> set[str]:
        return {row[0] for row in self._any("SELECT user_id FROM erased WHERE user_id = ANY(%s)", users)}

    def _any(self, sql: str, keys: Collection[str]) -> list[Any]:
        if not keys:
            return []
        with self._reading() as conn:
            return list(conn.exec_driver_sql(sql, (list(keys),)).fetchall())

    def claim_outbox(self, now: datetime, limit: int, lease: float = LEASE_SECONDS) -> list[dict[str, Any]]:
        """Only the sends of the partitions this worker holds, as with timers (SPEC §9)."""
        leases = self.leases
        held = leases.tokens() if leases is not None else {}
        if leases is None or not held:
            return []
        return self._claim_outbox(now, limit, lease, (held, leases.parts))

    def due(self, until: datetime, limit: int, part: Part | None = None) -> list[tuple[datetime, str]]:
        if self.leases is None:
            return []
        found: list[tuple[datetime, str]] = []
        for held in sorted(self.leases.tokens()):
            if len(found) >= limit:
                break
            found.extend(super().due(until, limit - len(found), (held, self.leases.parts)))
        return sorted(found)

    def twin(self) -> Any:
        raise NotImplementedError("a bus worker's store is not shared with forked processes")
