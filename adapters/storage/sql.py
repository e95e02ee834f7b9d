"""The Store port on SQL through SQLAlchemy Core: SQLite (embedded default, WAL) and PostgreSQL (psycopg 3).

One transaction per batch (group commit); dialect upserts with executemany; timers are the indexed
`profiles.wake_at` column, claimed in batches with a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL),
so several workers can share one database and a crashed worker's claims come back.

Workers sharing a database use optimistic concurrency: `load` remembers each profile's version (per
thread: the thread that loads is the thread that commits), and `commit` writes a profile only over
the version it loaded, and a messageId only if no one committed it first; otherwise `ConflictError`.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psycopg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from journey_engine import codec
from journey_engine.engine import SEND_FIELDS, SendMessage
from journey_engine.engine import Engine as JourneyEngine
from journey_engine.ports import (
    DEDUPE_FOR,
    Batch,
    ConflictError,
    Part,
    StoreUnavailable,
    StoreVersionError,
    shard,
)
from journey_engine.profile import Profile

from .tables import (
    AliasRow,
    BanditRow,
    EnrolledRow,
    ErasedRow,
    OutboxRow,
    ProcessedRow,
    ProfileRow,
    SegmentHistoryRow,
    StateCountRow,
    StoreFactRow,
    TraceRow,
)

DEFAULT_URL = "sqlite:///journey.db"
LEASE_SECONDS = 60.0
SQLITE_SYNCHRONOUS = "FULL"  # durable commits: an acknowledged batch survives a power cut, not just a crash
SQLITE_BUSY_MS = 5000  # how long a SQLite write waits for another writer's lock
CONNECT_TIMEOUT = 5  # seconds: an unreachable PostgreSQL is an error, not a hang
MIGRATION_LOCK = 0x6A6F75726E6579  # pg_advisory_xact_lock key: one process upgrades the schema at a time
# PostgreSQL's deadlock and serialization failures: two workers' transactions crossed, nothing was committed,
# and trying again succeeds. Batches write their rows in key order, so crossing is rare, not impossible.
RACES = frozenset({"40P01", "40001"})
_CHUNK = 900  # bound parameters per IN (SQLite allows 32766; keep statements small)
# The hot path's statements, written once as plain SQL and run with the driver's own executemany inside
# the batch's transaction: SQLAlchemy's per-statement compile and per-row parameter processing cost more
# than the database's work for the big batches (trace rows, profiles). `?` becomes `%s` on PostgreSQL.
_SQL = {
    "load": "SELECT user_id, body, version FROM profiles WHERE user_id IN ({marks})",
    "load_pg": "SELECT user_id, body, version FROM profiles WHERE user_id = ANY(?)",
    "update_profile": "UPDATE profiles SET body = ?, wake_at = ?, lease_until = NULL, updated_at = ?, version = ? "
                      "WHERE user_id = ? AND version = ?",
    # a new profile only for an id that was neither merged into another user nor erased meanwhile (by another
    # worker: an id whose events this worker routed before it learnt of the alias or the erasure)
    "insert_profile": "INSERT INTO profiles (user_id, body, wake_at, lease_until, updated_at, version, shard) "
                      "SELECT ?, ?, ?, NULL, ?, 1, ? WHERE NOT EXISTS (SELECT 1 FROM aliases WHERE previous_id = ?) "
                      "AND NOT EXISTS (SELECT 1 FROM erased WHERE user_id = ?)",
    "insert_trace": "INSERT INTO trace (user_id, at, kind, journey, body) VALUES (?, ?, ?, ?, ?)",
    "insert_processed": "INSERT INTO processed (message_id, at, user_id) VALUES (?, ?, ?)",
    "insert_outbox": "INSERT INTO outbox (key, user_id, at, channel, message, journey, payload, status, attempts, "
                     "next_attempt_at, last_error, token) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, NULL, NULL) "
                     "ON CONFLICT (key) DO NOTHING",
    # only the holder of the send's latest claim (its token) settles it: a late answer changes nothing
    "settle_outbox": "UPDATE outbox SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?, token = NULL "
                     "WHERE key = ? AND status = 'pending' AND token = ?",
    "history_left": "UPDATE segment_history SET left_at = ? WHERE user_id = ? AND segment = ? AND left_at IS NULL",
    "history_entered": "INSERT INTO segment_history (user_id, segment, entered_at, left_at) VALUES (?, ?, ?, NULL)",
}
T = TypeVar("T")

profiles_t = ProfileRow.__table__
aliases_t = AliasRow.__table__
processed_t = ProcessedRow.__table__
trace_t = TraceRow.__table__
outbox_t = OutboxRow.__table__
bandit_t = BanditRow.__table__
history_t = SegmentHistoryRow.__table__
erased_t = ErasedRow.__table__
enrolled_t = EnrolledRow.__table__
facts_t = StoreFactRow.__table__
counts_t = StateCountRow.__table__
_TABLES = (profiles_t, aliases_t, processed_t, trace_t, outbox_t, bandit_t, history_t, erased_t, enrolled_t, counts_t,
           facts_t)


def normalise_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (psycopg2 leaves ON CONFLICT out of fast executemany)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _alembic(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


class SqlStore:
    """Store on SQLite or PostgreSQL. `defaults` are the workspace's metric defaults (left out of blobs)."""

    def __init__(self, url: str = DEFAULT_URL, *, defaults: dict[str, Any] | None = None, upgrade: bool = True,
                 wall: Callable[[], float] = time.time, schema: str | None = None) -> None:
        """`schema` (PostgreSQL): keep every table in that schema, created when missing (benchmarks use
        their own, never the production tables)."""
        self.url = normalise_url(url)
        self.schema = schema
        self.defaults = defaults or {}
        self.wall = wall  # leases are about real workers, so they use the wall clock: an adapter's business
        self._local = threading.local()  # per thread: user -> profile version seen by the last `load`
        self.engine = self._connect()
        self.dialect = self.engine.dialect.name
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        self._sql = _SQL if self.dialect == "sqlite" else {k: v.replace("?", "%s") for k, v in _SQL.items()}
        try:
            self._check_version(upgrade)
        except BaseException:
            self.engine.dispose()  # a refused start leaves no connection behind
            raise

    # --- connection and schema ----------------------------------------------------------------

    def _connect(self) -> Engine:
        kwargs: dict[str, Any] = {}
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 5.0}
        else:  # a pooled connection the server dropped is replaced before use, not handed out broken
            kwargs["pool_pre_ping"] = True
            kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
            if self.schema is not None:
                kwargs["connect_args"]["options"] = f"-csearch_path={self.schema}"
        try:
            engine = sa.create_engine(self.url, **kwargs)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise StoreUnavailable(f"cannot use database URL {self.url!r}: {exc}") from None
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("SELECT 1"))
                if self.schema is not None and engine.dialect.name == "postgresql":
                    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
        except (OperationalError, DBAPIError) as exc:
            raise StoreUnavailable(f"cannot reach the database at {_redact(self.url)}: "
                                   f"{str(exc.orig).strip() if exc.orig else exc}") from None
        return engine

    def _check_version(self, upgrade: bool) -> None:
        with self._reading() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        script = ScriptDirectory.from_config(_alembic(None))  # type: ignore[arg-type]
        head = script.get_current_head()
        known = {rev.revision for rev in script.walk_revisions()}
        if current is not None and current not in known:
            raise StoreVersionError(f"the database is at schema revision {current}, written by a newer "
                                    "journey-engine than this one; upgrade journey-engine")
        if current != head:
            if not upgrade:
                raise StoreVersionError(f"the database is at schema revision {current or 'none'}, this "
                                        f"version needs {head}: run `journey db upgrade`")
            self.upgrade()

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to `revision` in place, keeping the data (Alembic). On PostgreSQL an advisory
        lock makes concurrent starters wait for one upgrade, then find nothing left to do."""
        try:
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                command.upgrade(_alembic(conn), revision)
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, IntegrityError):
                raise
            raise StoreUnavailable(f"cannot upgrade the database at {_redact(self.url)}, nothing was changed: "
                                   f"{_reason(exc)}") from None

    def revision(self) -> str | None:
        with self._reading() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[Connection]:
        """One transaction. `durable=False` for what may be lost in a power cut without harm (a claim's
        lease: lost, the users are claimed again): its commit does not wait for the disk, which saves one
        flush per timer round. Ordering stays safe: the next durable commit flushes it too.

        Rows shared by workers (state counts, bandit arms, profiles) are written in key order, so two
        batches lock them in the same order; a deadlock that still happens is a ConflictError, retried."""
        try:
            if durable:
                with self.engine.begin() as conn:
                    yield conn
            elif self.dialect == "postgresql":
                with self.engine.begin() as conn:
                    conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                    yield conn
            else:
                with self.engine.connect() as conn:
                    yield from self._relaxed_sqlite(conn)
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) in RACES:
                raise ConflictError(f"another worker's transaction got in the way: {_reason(exc)}") from exc
            raise StoreUnavailable(f"database error, nothing of this batch was committed: {_reason(exc)}") from exc

    @staticmethod
    def _relaxed_sqlite(conn: Connection) -> Iterator[Connection]:
        """A transaction on a connection whose commits skip the flush (SQLite allows the change only
        outside a transaction), then set back; a connection that could not be set back is discarded."""
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.execute("PRAGMA synchronous=NORMAL")
        try:
            with conn.begin():
                yield conn
        finally:
            try:
                raw.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
            except Exception:
                conn.invalidate()  # never hand a relaxed connection to a durable commit
                raise

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection for reads: an unreachable or dropped database is StoreUnavailable."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreUnavailable(f"cannot read from the database at {_redact(self.url)}: {_reason(exc)}") from exc

    def twin(self) -> SqlStore:
        """Another store on the same database, with connections of its own: what a forked worker process
        uses (a connection must never be shared across a fork)."""
        return SqlStore(self.url, defaults=self.defaults, upgrade=False, wall=self.wall, schema=self.schema)

    def close(self) -> None:
        self.engine.dispose()

    def drop_schema(self) -> None:
        """Remove this store's own schema and everything in it (PostgreSQL benchmark clean-up)."""
        if self.schema is not None and self.dialect == "postgresql":
            with self.engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))

    # --- reads ----------------------------------------------------------------------------------

    @property
    def _versions(self) -> dict[str, int]:
        versions: dict[str, int] | None = getattr(self._local, "versions", None)
        if versions is None:
            versions = self._local.versions = {}
        return versions

    def due_count(self, until: datetime) -> int:
        """How many users' wake-up is at or before `until` (claimed or not): one indexed count."""
        query = sa.select(sa.func.count()).select_from(profiles_t).where(profiles_t.c.wake_at <= until.timestamp())
        with self._reading() as conn:
            return int(conn.execute(query).scalar_one())

    def outbox_due(self, now: datetime) -> int:
        """Sends due by `now` and waiting for their channel (in-app messages wait for the app instead)."""
        o = outbox_t.c
        query = sa.select(sa.func.count()).select_from(outbox_t).where(
            o.status == "pending", o.channel != "in_app", o.next_attempt_at <= now.timestamp())
        with self._reading() as conn:
            return int(conn.execute(query).scalar_one())

    def overdue(self, now: datetime) -> tuple[int, datetime | None]:
        """How many users' wake-up is due by `now`, and the earliest of them: the backlog after downtime."""
        c = profiles_t.c
        query = sa.select(sa.func.count(), sa.func.min(c.wake_at)).select_from(profiles_t).where(
            c.wake_at <= now.timestamp())
        with self._reading() as conn:
            count, earliest = conn.execute(query).one()
        return int(count), None if earliest is None else datetime.fromtimestamp(float(earliest), UTC)

    def load(self, users: Collection[str]) -> dict[str, Profile]:
        """Remembers the versions of this load only (a thread loads, then commits what it loaded): the
        map never grows past one load, also on threads that only read."""
        found: dict[str, Profile] = {}
        versions = self._local.versions = {}
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

    def aliases(self, users: Collection[str]) -> dict[str, str]:
        return self._lookup(aliases_t.c.previous_id, aliases_t.c.user_id, users)

    def seen(self, message_ids: Collection[str]) -> set[str]:
        return set(self._lookup(processed_t.c.message_id, processed_t.c.message_id, message_ids))

    def erased(self, users: Collection[str]) -> set[str]:
        return set(self._lookup(erased_t.c.user_id, erased_t.c.user_id, users))

    def enrolled(self) -> set[str]:
        with self._reading() as conn:
            return set(conn.execute(sa.select(enrolled_t.c.journey)).scalars())

    def mark_simulated(self, by: str) -> None:
        """Note that this database holds a simulation (`journey demo`, `bench`): its sends never go out."""
        with self._tx() as conn:
            self._upsert(conn, facts_t, [{"name": "simulated", "value": by, "at": self.wall()}], ["name"],
                         ["value", "at"])

    def simulated(self) -> str | None:
        """The command whose simulation wrote this database, or None for a real one."""
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

    def _lookup(self, key: sa.Column[Any], value: sa.Column[Any], keys: Collection[str]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if not keys:
            return result
        with self._reading() as conn:
            for chunk in _chunks(list(keys)):
                result.update((k, v) for k, v in conn.execute(sa.select(key, value).where(key.in_(chunk))))
        return result

    def bandit(self) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
        stats: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
        with self._reading() as conn:
            for journey, state, arm, sends, conversions in conn.execute(sa.select(bandit_t)):
                stats.setdefault((journey, state), {})[arm] = (sends, conversions)
        return stats

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

    # --- the one write ----------------------------------------------------------------------------

    def commit(self, batch: Batch) -> None:
        """Everything of the batch in one transaction, or nothing."""
        if not batch:
            return
        wall = self.wall()
        versions = self._versions
        try:
            with self._tx() as conn:
                self._write(conn, batch, wall)
        finally:
            versions.clear()  # committed or not, the next commit starts from a new load

    def _write(self, conn: Connection, batch: Batch, wall: float) -> None:
        self._write_profiles(conn, batch.profiles, wall)
        self._delete_profiles(conn, batch.deleted)
        if batch.released:
            for chunk in _chunks(list(batch.released)):
                conn.execute(sa.update(profiles_t).where(profiles_t.c.user_id.in_(chunk)).values(lease_until=None))
        self._upsert(conn, aliases_t, [{"previous_id": k, "user_id": v} for k, v in batch.aliases.items()],
                     ["previous_id"], ["user_id"])
        # stamped with the arrival (this commit's wall clock), not the event's time: a replayed backfill
        # of old events stays deduplicated for DEDUPE_FOR after it arrived
        senders = batch.senders
        self._insert_new(conn, self._sql["insert_processed"],
                         [(m, wall, senders.get(m)) for m, _ in batch.message_ids], "a messageId of the batch")
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

    def _write_profiles(self, conn: Connection, profiles: dict[str, Profile], wall: float) -> None:
        """Compare-and-set: a loaded profile is written only over the version it was loaded at; a new one
        only if no one created it meanwhile."""
        versions = self._versions
        encode, defaults = codec.encode, self.defaults
        updates: list[tuple[Any, ...]] = []
        inserts: list[tuple[Any, ...]] = []
        for user, p in sorted(profiles.items()):  # one lock order (see _tx)
            seen = versions.get(user)
            if seen is None:
                inserts.append((user, encode(p, defaults), p.wake_at, wall, shard(user), user, user))
            else:
                updates.append((encode(p, defaults), p.wake_at, wall, seen + 1, user, seen))
        if updates and conn.exec_driver_sql(self._sql["update_profile"], updates).rowcount != len(updates):
            raise ConflictError("a profile of the batch changed since it was loaded")
        if self._insert_new(conn, self._sql["insert_profile"], inserts, "a new profile of the batch") != len(inserts):
            raise ConflictError("a new profile's id was merged into another user or erased meanwhile")

    def _delete_profiles(self, conn: Connection, users: Collection[str]) -> None:
        versions = self._versions
        known = [{"u": u, "seen": versions[u]} for u in users if u in versions]
        unknown = [u for u in users if u not in versions]
        if known:
            c = profiles_t.c
            stmt = sa.delete(profiles_t).where(c.user_id == sa.bindparam("u"), c.version == sa.bindparam("seen"))
            if conn.execute(stmt, known).rowcount != len(known):
                raise ConflictError("a merged-away profile changed since it was loaded")
        for chunk in _chunks(unknown):
            conn.execute(sa.delete(profiles_t).where(profiles_t.c.user_id.in_(chunk)))

    @staticmethod
    def _insert_new(conn: Connection, sql: str, rows: list[tuple[Any, ...]], what: str) -> int:
        """Plain inserts: a row that exists already means another worker committed it first. Returns the
        rows inserted."""
        if not rows:
            return 0
        try:
            return int(conn.exec_driver_sql(sql, rows).rowcount)
        except IntegrityError:
            raise ConflictError(f"{what} was committed by another worker") from None

    def _upsert(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str],
                update: list[str]) -> None:
        if not rows:
            return
        stmt = self._insert(table)
        if update:
            stmt = stmt.on_conflict_do_update(index_elements=keys,
                                              set_={c: getattr(stmt.excluded, c) for c in update})
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=keys)
        conn.execute(stmt, rows)

    def _bandit(self, conn: Connection, batch: Batch) -> None:
        stmt = self._insert(bandit_t)
        stmt = stmt.on_conflict_do_update(
            index_elements=["journey", "state", "arm"],
            set_={"sends": bandit_t.c.sends + stmt.excluded.sends,
                  "conversions": bandit_t.c.conversions + stmt.excluded.conversions})
        conn.execute(stmt, [{"journey": j, "state": s, "arm": a, "sends": n, "conversions": c}
                            for (j, s, a), (n, c) in sorted(batch.bandit.items())])  # one lock order (see _tx)

    def _counts(self, conn: Connection, deltas: dict[tuple[str, str], int]) -> None:
        rows = [{"journey": j, "state": st, "users": n} for (j, st), n in sorted(deltas.items()) if n]  # see _tx
        if not rows:
            return
        stmt = self._insert(counts_t)
        stmt = stmt.on_conflict_do_update(index_elements=["journey", "state"],
                                          set_={"users": counts_t.c.users + stmt.excluded.users})
        conn.execute(stmt, rows)

    def state_counts(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        with self._reading() as conn:
            for journey, state, users in conn.execute(sa.select(counts_t)):
                counts.setdefault(journey, {})[state] = users
        return counts

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

    # --- maintenance and reads for operators ----------------------------------------------------

    def prune(self, now: datetime, trace_for_days: float = 90) -> dict[str, int]:
        """Drop processed messageIds that arrived longer ago than the deduplication window (by the wall
        clock, as they were stamped), and trace rows and finished (delivered or dead) outbox rows older
        than the trace's retention (by `now`)."""
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

    def trace(self, user: str, limit: int = 200) -> list[dict[str, Any]]:
        with self._reading() as conn:
            rows = conn.execute(sa.select(trace_t.c.body).where(trace_t.c.user_id == user)
                                .order_by(trace_t.c.id.desc()).limit(limit)).scalars().all()
        return [json.loads(r) for r in reversed(rows)]

    def erase(self, user: str, now: datetime) -> bool:
        """Erase a user everywhere (profile, aliases, trace, outbox, history, processed messageIds) and refuse
        their later events. An id that was aliased to a user erases that user, with all their ids. The
        aliases of an id erased before are not followed (events naming it are dropped, so none should
        exist; one left from before that rule must not lead a second erasure to another user). An id
        with a NUL character cannot have been stored: nothing to erase."""
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
        return bool(bodies)

    def unwritable(self, timeout: float = 1.0) -> str | None:
        """Why the database cannot take a write now, or None: what `/healthz` reports. The probe writes a
        trace row larger than a page (so it needs new pages, as a batch does) and rolls it back, waiting at
        most `timeout` seconds for locks: it sees a locked, full, read-only or unreachable database."""
        try:
            with self.engine.connect() as conn:
                self._probe(conn, timeout)
        except DBAPIError as exc:
            return _reason(exc)
        return None

    def _probe(self, conn: Connection, timeout: float) -> None:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        if self.dialect == "sqlite":
            raw.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        try:
            with conn.begin() as tx:
                if self.dialect == "postgresql":
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(timeout * 1000)}")
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout * 2000)}")
                conn.exec_driver_sql(self._sql["insert_trace"], ("", "", "healthz", None, "x" * 8192))
                tx.rollback()
        finally:
            if self.dialect == "sqlite":
                try:
                    raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
                except Exception:
                    conn.invalidate()
                    raise

    def aliases_to(self, user: str) -> list[tuple[str, str]]:
        with self._reading() as conn:
            return [(a, b) for a, b in conn.execute(sa.select(aliases_t.c.previous_id, aliases_t.c.user_id)
                                                    .where(aliases_t.c.user_id == user))]

    def outbox_of(self, user: str, channel: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(outbox_t).where(outbox_t.c.user_id == user).order_by(outbox_t.c.at, outbox_t.c.key)
        if channel is not None:
            query = query.where(outbox_t.c.channel == channel)
        with self._reading() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def inbox(self, user: str, engine: JourneyEngine) -> list[dict[str, Any]]:
        """The user's unread in-app messages, rendered."""
        found = []
        for row in self.outbox_of(user, "in_app"):
            if row["status"] == "read":
                continue
            rendered = engine.render(send_from_payload(row["payload"]))
            found.append({"id": row["key"], "message": row["message"], "journey": row["journey"],
                          "at": datetime.fromtimestamp(row["at"], UTC).isoformat().replace("+00:00", "Z"),
                          "title": rendered.title, "body": rendered.body, "url": rendered.url})
        return found

    def mark_read(self, user: str, key: str) -> bool:
        with self._tx() as conn:
            done = conn.execute(sa.update(outbox_t).where(outbox_t.c.user_id == user, outbox_t.c.key == key,
                                                          outbox_t.c.channel == "in_app")
                                .values(status="read")).rowcount
        return bool(done)

    def claim_outbox(self, now: datetime, limit: int, lease: float = LEASE_SECONDS) -> list[dict[str, Any]]:
        """See `Outbox.claim_outbox`. The token is in each row, and remembered for `settle_outbox` on this
        thread; the lease is the row's `next_attempt_at`."""
        o = outbox_t.c
        pending, not_in_app = sa.literal_column("'pending'"), sa.literal_column("'in_app'")  # match ix_outbox_claim
        pick = (sa.select(o.key).where(o.status == pending, o.channel != not_in_app,
                                       o.next_attempt_at <= now.timestamp())
                .order_by(o.next_attempt_at, o.key).limit(limit))
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
        """See `Outbox.settle_outbox`. An update without a `token` uses the one this thread's
        `claim_outbox` got. One conditional UPDATE per send, in key order (two dispatchers' settles
        lock rows in the same order)."""
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

    def count(self, table: sa.Table) -> int:
        with self._reading() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

    def advice(self) -> list[str]:
        """What an operator should change in the database's settings, said once at start."""
        if self.dialect != "postgresql":
            return []
        with self._reading() as conn:
            autovacuum = conn.exec_driver_sql("SHOW autovacuum").scalar_one()
        if autovacuum == "on":
            return []
        return ["autovacuum is off on this PostgreSQL server: every profile update leaves a dead row behind, "
                "so the profiles table grows several times its live size; turn it on (autovacuum = on)"]

    def disk_bytes(self) -> dict[str, int]:
        """Bytes on disk per table, its indexes included (SQLite: dbstat pages; PostgreSQL: the relation
        with its indexes and TOAST)."""
        sizes: dict[str, int] = {}
        tables = {t.name for t in _TABLES}
        with self._reading() as conn:
            if self.dialect == "postgresql":
                for name in tables:
                    sizes[name] = int(conn.exec_driver_sql(
                        "SELECT pg_total_relation_size(to_regclass(%s))", (name,)).scalar_one() or 0)
                return sizes
            indexes: dict[str, str] = dict(
                conn.exec_driver_sql("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'").all())
            for name, size in conn.exec_driver_sql("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
                owner = indexes.get(name, name)
                if owner in tables:
                    sizes[owner] = sizes.get(owner, 0) + int(size)
        return sizes

    def all_profiles(self) -> Iterator[Profile]:
        with self._reading() as conn:
            for (body,) in conn.execute(sa.select(profiles_t.c.body).order_by(profiles_t.c.user_id)):
                yield codec.decode(body, self.defaults)

    @contextmanager
    def snapshot(self) -> Iterator[SqlSnapshot]:
        """Reads that all see one state of the database while the engine writes (PostgreSQL: one
        REPEATABLE READ transaction), for a report that takes several queries."""
        with self._reading() as conn:
            if self.dialect == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            yield SqlSnapshot(conn)


def state_deltas(records: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """How the trace of a batch moves users between journey states."""
    deltas: dict[tuple[str, str], int] = {}

    def add(journey: str, state: str, n: int) -> None:
        deltas[(journey, state)] = deltas.get((journey, state), 0) + n

    for r in records:
        kind = r["kind"]
        if kind == "journey_entered":
            add(r["journey"], r["state"], 1)
        elif kind == "transition":
            add(r["journey"], r["from"], -1)
            add(r["journey"], r["to"], 1)
        elif kind == "journey_exited":
            add(r["journey"], r["state"], -1)
    return deltas


def send_from_payload(payload: str) -> SendMessage:
    data = json.loads(payload)
    data["at"] = datetime.fromisoformat(data["at"].replace("Z", "+00:00"))
    return SendMessage(**data)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")  # an acknowledged batch survives power loss
    # a checkpoint (copying the log into the database, with two flushes) every ~80 MB of log rather than
    # every 4 MB: a batch of 500 events writes a few MB, so the default checkpointed after nearly every
    # commit; pages written again and again between checkpoints are copied once (`journey bench --store sqlite
    # --days 1`, 20k users: 8.4-9.0k events/s with the default, 10.0-10.4k with this)
    cursor.execute("PRAGMA wal_autocheckpoint=20000")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.close()


def _trace_row(record: dict[str, Any]) -> tuple[Any, ...]:
    """(user_id, at, kind, journey, body) for `insert_trace`."""
    return record.get("user", ""), record["at"], record["kind"], record.get("journey"), _dumps(record)


def _outbox_row(send: SendMessage) -> tuple[Any, ...]:
    """(key, user_id, at, channel, message, journey, payload, next_attempt_at) for `insert_outbox`."""
    payload = {name: getattr(send, name) for name in SEND_FIELDS}  # asdict() deep-copies: 30x slower
    at = send.at.timestamp()
    return send.idempotency_key, send.user, at, send.channel, send.message, send.journey, _dumps(payload), at


_ORJSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _dumps(value: Any) -> str:
    """JSON that `json.loads` reads back as `json.dumps(value, default=_json_default)` would have written it,
    4-8x faster (orjson; compact separators). Whatever orjson refuses (a dict key that is not a string, an
    integer past 64 bits, a lone surrogate) goes through `json` as before. One difference: NaN and
    infinities become null (valid JSON) where `json` wrote the non-standard NaN and Infinity."""
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


def _chunks(items: list[T], size: int = _CHUNK) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _reason(exc: DBAPIError) -> str:
    return str(exc.orig).strip() if exc.orig else str(exc)


def _redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


class SqlSnapshot:
    """The reads of `SqlStore.snapshot`, on its one connection: the trace and segment history streamed
    (memory stays flat however long they are), and the live state counts and bandit arms."""

    STREAM_ROWS = 2000  # rows fetched per round trip

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        yield self.conn

    # the store's own reads, on this connection
    state_counts = SqlStore.state_counts
    bandit = SqlStore.bandit

    def trace_records(self, kinds: Collection[str], journey: str | None = None) -> Iterator[dict[str, Any]]:
        """Trace records of these kinds in commit order; with `journey`, that journey's and every
        `alias_merged` (a merge moves the runs of every journey)."""
        t = trace_t.c
        query = sa.select(t.body).where(t.kind.in_(list(kinds))).order_by(t.id)
        if journey is not None:
            query = query.where(sa.or_(t.journey == journey, t.kind == "alias_merged"))
        for (body,) in self.conn.execute(query.execution_options(yield_per=self.STREAM_ROWS)):
            yield json.loads(body)

    def latest(self) -> datetime | None:
        """The time of the newest trace record or segment change."""
        h = history_t.c
        found = [self.conn.execute(sa.select(sa.func.max(c))).scalar() for c in (trace_t.c.at, h.entered_at,
                                                                                 h.left_at)]
        return max((parse_time(text) for text in found if text), default=None)

    def segment_history(self) -> Iterator[tuple[str, str, str, str | None]]:
        """(segment, user, entered_at, left_at) of every stay in a segment, by segment, user and entry."""
        h = history_t.c
        query = sa.select(h.segment, h.user_id, h.entered_at, h.left_at).order_by(h.segment, h.user_id,
                                                                                  h.entered_at)
        rows = self.conn.execute(query.execution_options(yield_per=self.STREAM_ROWS))
        yield from ((segment, user, entered, left) for segment, user, entered, left in rows)


def parse_time(text: str) -> datetime:
    """A stored ISO time; one without a zone is UTC."""
    at = datetime.fromisoformat(text)
    return at if at.tzinfo else at.replace(tzinfo=UTC)
