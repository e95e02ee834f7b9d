"""The Store port on SQL: profiles, aliases, processed messageIds, timers and the one write per batch.

One transaction per batch (group commit); dialect upserts with executemany; timers are the indexed
`profiles.wake_at` column, claimed in batches with a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL),
so several workers can share one database and a crashed worker's claims come back.

Workers sharing a database use optimistic concurrency: `load` remembers each profile's version (per
thread: the thread that loads is the thread that commits), and `commit` writes a profile only over
the version it loaded, and a messageId only if no one committed it first; otherwise `ConflictError`.

A process that owns its users (a bus worker on PostgreSQL) may keep the profiles it committed
(`keep_profiles`): a later `load` reads only their versions, and hands out a kept profile only while the
row is still at the version this process wrote (no body read, nothing decoded); a row written, merged
away or erased by anyone else since is read afresh, or is gone. A write between that read and the
commit conflicts as any other. A kept profile is taken out by `load` and put back only by the commit
that wrote it, so one that a failed batch changed is never handed out again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from journey_engine import codec
from journey_engine.ports import (
    DEDUPE_FOR,
    LEASE_SECONDS,
    Batch,
    ConflictError,
    Part,
    StoreUnavailable,
    shard,
    state_deltas,
)
from journey_engine.profile import Profile

from .connection import SqlConnection, _chunks
from .rows import _outbox_row, _trace_row
from .tables import (
    aliases_t,
    bandit_t,
    enrolled_t,
    facts_t,
    history_t,
    outbox_t,
    processed_t,
    profiles_t,
    trace_t,
)


class KeptProfiles:
    """The profiles this process committed last, each with the version it wrote, least recently committed
    first; at most `limit` of them (see the module)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: OrderedDict[str, tuple[int, Profile]] = OrderedDict()
        self._lock = threading.Lock()  # the engine thread keeps and takes; a reading thread may take

    def take(self, users: Collection[str]) -> dict[str, tuple[int, Profile]]:
        with self._lock:
            pop = self._kept.pop
            return {u: kept for u in users if (kept := pop(u, None)) is not None}

    def keep(self, profiles: dict[str, tuple[int, Profile]]) -> None:
        with self._lock:
            kept = self._kept
            kept.update(profiles)
            while len(kept) > self.limit:
                kept.popitem(last=False)

    def drop(self, users: Collection[str]) -> None:
        with self._lock:
            for user in users:
                self._kept.pop(user, None)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()


class Encoded:
    """A batch as its transaction writes it (`SqlProfiles._encoded`): the profile rows encoded, with the
    versions they were loaded at, and the profiles to keep once it is committed."""

    __slots__ = ("batch", "deleted", "inserts", "kept", "updates", "wall")

    def __init__(self, batch: Batch, wall: float, updates: list[tuple[Any, ...]], inserts: list[tuple[Any, ...]],
                 deleted: dict[str, int | None], kept: dict[str, tuple[int, Profile]]) -> None:
        self.batch, self.wall, self.updates, self.inserts = batch, wall, updates, inserts
        self.deleted, self.kept = deleted, kept


class SqlProfiles(SqlConnection):
    """Profiles and everything a batch commits with them."""

    kept: KeptProfiles | None = None  # see the module: only for a process that owns its users

    def keep_profiles(self, limit: int) -> None:
        """Keep up to `limit` committed profiles in this process (see the module; PostgreSQL only)."""
        self.kept = KeptProfiles(limit) if limit > 0 and self.dialect == "postgresql" else None

    @property
    def _versions(self) -> dict[str, int]:
        versions: dict[str, int] | None = getattr(self._local, "versions", None)
        if versions is None:
            versions = self._local.versions = {}
        return versions

    def load(self, users: Collection[str]) -> dict[str, Profile]:
        """Remembers the versions of this load only (a thread loads, then commits what it loaded): the
        map never grows past one load, also on threads that only read."""
        found: dict[str, Profile] = {}
        versions = self._local.versions = {}
        if self.kept is not None and users:
            return self._load_kept(users, found, versions)
        decode, defaults = codec.decode, self.defaults
        with self._reading() as conn:
            for chunk in _chunks(list(users)):
                if self.dialect == "postgresql":
                    rows = conn.exec_driver_sql(self._sql["load_pg"], (chunk,))
                else:
                    rows = conn.exec_driver_sql(self._sql["load"].format(marks=",".join("?" * len(chunk))),
                                                tuple(chunk))
                for user, body, version in rows.fetchall():
                    found[user] = decode(body, defaults)
                    versions[user] = version
        for user in users:
            if user not in found:
                versions.pop(user, None)  # absent now: a commit must create it, not overwrite someone's
        return found

    def _load_kept(self, users: Collection[str], found: dict[str, Profile], versions: dict[str, int]
                   ) -> dict[str, Profile]:
        """`load` with kept profiles: one read of every row's version, and of the body only where no kept
        profile is at that version."""
        assert self.kept is not None
        kept = self.kept.take(users)
        decode, defaults = codec.decode, self.defaults
        with self._reading() as conn:
            for chunk in _chunks(list(users)):
                mine = [u for u in chunk if u in kept]
                rows = conn.exec_driver_sql(self._sql["load_kept"], (mine, chunk)).fetchall()
                stale = [user for user, body, version in rows if body is None and kept[user][0] != version]
                if stale:  # written by someone else since: read afresh
                    rows += conn.exec_driver_sql(self._sql["load_pg"], (stale,)).fetchall()
                for user, body, version in rows:
                    if body is not None:
                        found[user], versions[user] = decode(body, defaults), version
                    elif kept[user][0] == version:
                        found[user], versions[user] = kept[user][1], version
        return found

    def all_profiles(self) -> Iterator[Profile]:
        with self._reading() as conn:
            for (body,) in conn.execute(sa.select(profiles_t.c.body).order_by(profiles_t.c.user_id)):
                yield codec.decode(body, self.defaults)

    def aliases(self, users: Collection[str]) -> dict[str, str]:
        return self._lookup(aliases_t.c.previous_id, aliases_t.c.user_id, users)

    def seen(self, message_ids: Collection[str]) -> set[str]:
        return set(self._lookup(processed_t.c.message_id, processed_t.c.message_id, message_ids))

    def enrolled(self) -> set[str]:
        with self._reading() as conn:
            return set(conn.execute(sa.select(enrolled_t.c.journey)).scalars())

    def mark_simulated(self, by: str) -> None:
        """Note that this database holds a simulation (`journey demo`, `bench`): its sends never go out."""
        with self._tx() as conn:
            self._upsert(conn, facts_t, [{"name": "simulated", "value": by, "at": self.wall()}], ["name"],
                         ["value", "at"])

    def simulated(self) -> str | None:
        with self._reading() as conn:
            value = conn.execute(sa.select(facts_t.c.value).where(facts_t.c.name == "simulated")).scalar()
        return None if value is None else str(value)

    def segment_members(self, segment: str, after: str | None, limit: int) -> list[str]:
        """From the open rows of segment_history (kept with every commit's segment records)."""
        h = history_t.c
        query = sa.select(h.user_id).where(h.segment == segment, h.left_at.is_(None))
        if after is not None:
            query = query.where(h.user_id > after)
        with self._reading() as conn:
            return list(conn.execute(query.distinct().order_by(h.user_id).limit(limit)).scalars())

    def bandit(self) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
        stats: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
        with self._reading() as conn:
            for journey, state, arm, sends, conversions in conn.execute(sa.select(bandit_t)):
                stats.setdefault((journey, state), {})[arm] = (sends, conversions)
        return stats

    # --- timers ---------------------------------------------------------------------------------

    def due(self, until: datetime, limit: int, part: Part | None = None) -> list[tuple[datetime, str]]:
        """Claim users whose wake-up is due, with a lease, earliest first. When nothing is due, one indexed
        read answers and no write transaction is opened (timer workers poll this often). A partition is
        the stored shard modulo the number of partitions (see `partition`)."""
        wall = self.wall()
        free = sa.or_(profiles_t.c.lease_until.is_(None), profiles_t.c.lease_until < wall)
        due = sa.select(profiles_t.c.user_id).where(profiles_t.c.wake_at <= until.timestamp(), free)
        if part is not None and part[1] > 1:
            due = due.where(profiles_t.c.shard % part[1] == part[0])
        with self._reading() as conn:
            if conn.execute(due.limit(1)).first() is None:
                return []
        pick = due.order_by(profiles_t.c.wake_at, profiles_t.c.user_id).limit(limit)
        if self.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        claim = (sa.update(profiles_t).where(profiles_t.c.user_id.in_(pick.scalar_subquery()))
                 .values(lease_until=wall + LEASE_SECONDS)
                 .returning(profiles_t.c.wake_at, profiles_t.c.user_id))
        with self._tx(durable=False) as conn:
            rows = conn.execute(claim).all()
        return sorted((datetime.fromtimestamp(at, UTC), user) for at, user in rows)

    def due_count(self, until: datetime) -> int:
        """One indexed count."""
        query = sa.select(sa.func.count()).select_from(profiles_t).where(profiles_t.c.wake_at <= until.timestamp())
        with self._reading() as conn:
            return int(conn.execute(query).scalar_one())

    def overdue(self, now: datetime) -> tuple[int, datetime | None]:
        c = profiles_t.c
        query = sa.select(sa.func.count(), sa.func.min(c.wake_at)).select_from(profiles_t).where(
            c.wake_at <= now.timestamp())
        with self._reading() as conn:
            count, earliest = conn.execute(query).one()
        return int(count), None if earliest is None else datetime.fromtimestamp(float(earliest), UTC)

    # --- the one write ----------------------------------------------------------------------------

    def commit(self, batch: Batch) -> None:
        """Everything of the batch in one transaction, or nothing."""
        if batch:
            self._commit_encoded(self._encoded(batch))

    def _encoded(self, batch: Batch) -> Encoded:
        """The batch with its profiles encoded against the versions this thread loaded them at: fixed now,
        so the caller may go on changing the profile objects while the transaction runs (on this thread
        or another). Committed or not, the next commit starts from a new load."""
        versions = self._versions
        try:
            wall = self.wall()
            encode, defaults = codec.encode, self.defaults
            updates: list[tuple[Any, ...]] = []
            inserts: list[tuple[Any, ...]] = []
            for user, p in sorted(batch.profiles.items()):  # one lock order (see _tx)
                seen = versions.get(user)
                if seen is None:
                    inserts.append((user, encode(p, defaults), p.wake_at, wall, shard(user)))
                else:
                    updates.append((encode(p, defaults), p.wake_at, wall, user, seen))
            kept = {u: (versions.get(u, 0) + 1, p) for u, p in batch.profiles.items() if u not in batch.deleted}
            return Encoded(batch, wall, updates, inserts, {u: versions.get(u) for u in batch.deleted}, kept)
        finally:
            versions.clear()

    def _commit_encoded(self, encoded: Encoded) -> None:
        with self._tx() as conn:
            self._write(conn, encoded)
        if self.kept is not None:  # the versions this commit wrote (an insert writes 1)
            self.kept.keep(encoded.kept)

    def _write(self, conn: Connection, encoded: Encoded) -> None:
        batch, wall = encoded.batch, encoded.wall
        self._write_profiles(conn, encoded)
        self._delete_profiles(conn, encoded.deleted)
        if batch.released:
            for chunk in _chunks(list(batch.released)):
                conn.execute(sa.update(profiles_t).where(profiles_t.c.user_id.in_(chunk)).values(lease_until=None))
        self._upsert(conn, aliases_t, [{"previous_id": k, "user_id": v} for k, v in batch.aliases.items()],
                     ["previous_id"], ["user_id"])
        # stamped with the arrival (this commit's wall clock), not the event's time: a replayed backfill
        # of old events stays deduplicated for DEDUPE_FOR after it arrived
        senders = batch.senders
        self._insert_new(conn, "insert_processed", [(m, wall, senders.get(m)) for m, _ in batch.message_ids],
                         "a messageId of the batch")
        if batch.records:
            self._append(conn, "trace (user_id, at, kind, journey, body)", self._sql["insert_trace"],
                         [_trace_row(r) for r in batch.records])
            self._history(conn, batch.records)
        if batch.sends:
            conn.exec_driver_sql(self._sql["insert_outbox"], [_outbox_row(s) for s in batch.sends])
        if batch.bandit:
            self._bandit(conn, batch)
        self._counts(conn, state_deltas(batch.records))
        self._upsert(conn, enrolled_t, [{"journey": j, "at": wall} for j in sorted(batch.enrolled)], ["journey"], [])

    def _write_profiles(self, conn: Connection, encoded: Encoded) -> None:
        """Compare-and-set: a loaded profile is written only over the version it was loaded at; a new one
        only if no one created it meanwhile."""
        updates, inserts = encoded.updates, encoded.inserts
        if updates and self._run(conn, "update_profile", updates) != len(updates):
            raise ConflictError("a profile of the batch changed since it was loaded")
        if self._insert_new(conn, "insert_profile", inserts, "a new profile of the batch") != len(inserts):
            raise ConflictError("a new profile's id was merged into another user or erased meanwhile")

    def _run(self, conn: Connection, name: str, rows: list[tuple[Any, ...]]) -> int:
        """One of the batch's per-row statements over `rows`; returns the rows it changed. On PostgreSQL one
        statement over arrays (`_SQL_ARRAYS`), elsewhere executemany of the per-row statement."""
        if self._arrays is not None and name in self._arrays:
            return int(conn.exec_driver_sql(self._arrays[name], tuple(map(list, zip(*rows, strict=True)))).rowcount)
        if name == "insert_profile":  # the per-row statement checks the id against aliases and erasures again
            rows = [(*row, row[0], row[0]) for row in rows]
        return int(conn.exec_driver_sql(self._sql[name], rows).rowcount)

    def _delete_profiles(self, conn: Connection, users: dict[str, int | None]) -> None:
        """The merged-away profiles, each at the version it was loaded at (None: not loaded)."""
        known = [{"u": u, "seen": seen} for u, seen in users.items() if seen is not None]
        unknown = [u for u, seen in users.items() if seen is None]
        if known:
            c = profiles_t.c
            stmt = sa.delete(profiles_t).where(c.user_id == sa.bindparam("u"), c.version == sa.bindparam("seen"))
            if conn.execute(stmt, known).rowcount != len(known):
                raise ConflictError("a merged-away profile changed since it was loaded")
        for chunk in _chunks(unknown):
            conn.execute(sa.delete(profiles_t).where(profiles_t.c.user_id.in_(chunk)))

    def _insert_new(self, conn: Connection, name: str, rows: list[tuple[Any, ...]], what: str) -> int:
        """Plain inserts: a row that exists already means another worker committed it first. Returns the
        rows inserted."""
        if not rows:
            return 0
        try:
            if name == "insert_processed" and self._arrays is not None:  # no condition: COPY, the fastest
                self._append(conn, "processed (message_id, at, user_id)", "", rows)
                return len(rows)
            return self._run(conn, name, rows)
        except (IntegrityError, psycopg.IntegrityError):  # COPY's cursor is the driver's own
            raise ConflictError(f"{what} was committed by another worker") from None

    def _bandit(self, conn: Connection, batch: Batch) -> None:
        stmt = self._insert(bandit_t)
        stmt = stmt.on_conflict_do_update(
            index_elements=["journey", "state", "arm"],
            set_={"sends": bandit_t.c.sends + stmt.excluded.sends,
                  "conversions": bandit_t.c.conversions + stmt.excluded.conversions})
        conn.execute(stmt, [{"journey": j, "state": s, "arm": a, "sends": n, "conversions": c}
                            for (j, s, a), (n, c) in sorted(batch.bandit.items())])  # one lock order (see _tx)

    def _history(self, conn: Connection, records: list[dict[str, Any]]) -> None:
        entered = [(r["user"], r["segment"], r["at"]) for r in records if r["kind"] == "segment_entered"]
        left = [(r["at"], r["user"], r["segment"]) for r in records if r["kind"] == "segment_left"]
        if left:
            conn.exec_driver_sql(self._sql["history_left"], left)
        if entered:
            self._append(conn, "segment_history (user_id, segment, entered_at)", self._sql["history_entered"], entered)

    def _append(self, conn: Connection, into: str, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Plain inserts of many rows into a table without unique keys of ours: COPY on PostgreSQL (in this
        transaction; several times faster than the pipelined executemany), executemany elsewhere."""
        if self.dialect != "postgresql":
            conn.exec_driver_sql(sql, rows)
            return
        try:
            with conn.connection.dbapi_connection.cursor() as cursor, \
                    cursor.copy(f"COPY {into} FROM STDIN") as copy:  # type: ignore[union-attr]
                for row in rows:
                    copy.write_row(row)
        except psycopg.OperationalError as exc:  # the driver's own: SQLAlchemy does not see this cursor
            raise StoreUnavailable(f"database error, nothing of this batch was committed: {exc}") from exc

    def prune(self, now: datetime, trace_for_days: float = 90) -> dict[str, int]:
        """Drop processed messageIds that arrived longer ago than the deduplication window (by the wall
        clock, as they were stamped), and trace rows and finished (delivered, dead or expired) outbox rows
        older than the trace's retention (by `now`)."""
        with self._tx() as conn:
            ids = conn.execute(sa.delete(processed_t).where(
                processed_t.c.at < self.wall() - DEDUPE_FOR.total_seconds())).rowcount
            horizon = datetime.fromtimestamp(now.timestamp() - trace_for_days * 86400, UTC)
            old = conn.execute(sa.delete(trace_t).where(
                trace_t.c.at < horizon.isoformat().replace("+00:00", "Z"))).rowcount
            o = outbox_t.c
            sent = conn.execute(sa.delete(outbox_t).where(  # next_attempt_at is the last attempt's time once settled
                o.status.in_(["delivered", "dead", "expired"]), o.next_attempt_at < horizon.timestamp())).rowcount
        return {"processed": ids, "trace": old, "outbox": sent}
