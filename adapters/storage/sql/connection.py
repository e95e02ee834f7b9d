"""The SQL store's connection and schema: SQLite (embedded default, WAL) and PostgreSQL (psycopg 3)
through SQLAlchemy Core, transactions, Alembic upgrades, and the operator's probes of the database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from journey_engine.ports import ConflictError, StoreUnavailable, StoreVersionError

from .tables import TABLES, counts_t

DEFAULT_URL = "sqlite:///journey.db"
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
    # with kept profiles (`SqlProfiles.keep_profiles`): the bodies of the rows not kept only
    "load_kept": "SELECT user_id, CASE WHEN user_id = ANY(?) THEN NULL ELSE body END, version FROM profiles "
                 "WHERE user_id = ANY(?)",
    "update_profile": "UPDATE profiles SET body = ?, wake_at = ?, lease_until = NULL, updated_at = ?, "
                      "version = version + 1 WHERE user_id = ? AND version = ?",
    # a new profile only for an id that was neither merged into another user nor erased meanwhile (by another
    # worker: an id whose events this worker routed before it learnt of the alias or the erasure)
    "insert_profile": "INSERT INTO profiles (user_id, body, wake_at, lease_until, updated_at, version, shard) "
                      "SELECT ?, ?, ?, NULL, ?, 1, ? WHERE NOT EXISTS (SELECT 1 FROM aliases WHERE previous_id = ?) "
                      "AND NOT EXISTS (SELECT 1 FROM erased WHERE user_id = ?)",
    "insert_trace": "INSERT INTO trace (user_id, at, kind, journey, body) VALUES (?, ?, ?, ?, ?)",
    "insert_processed": "INSERT INTO processed (message_id, at, user_id) VALUES (?, ?, ?)",
    "insert_outbox": "INSERT INTO outbox (key, user_id, at, channel, message, journey, payload, status, attempts, "
                     "next_attempt_at, last_error, token, shard) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, NULL, NULL, ?) "
                     "ON CONFLICT (key) DO NOTHING",
    # only the holder of the send's latest claim (its token) settles it: a late answer changes nothing
    "settle_outbox": "UPDATE outbox SET status = ?, attempts = ?, next_attempt_at = ?, last_error = ?, token = NULL "
                     "WHERE key = ? AND status = 'pending' AND token = ?",
    "history_left": "UPDATE segment_history SET left_at = ? WHERE user_id = ? AND segment = ? AND left_at IS NULL",
    "history_entered": "INSERT INTO segment_history (user_id, segment, entered_at, left_at) VALUES (?, ?, ?, NULL)",
}
# PostgreSQL: the per-row statements of every batch as one statement over arrays (one column per array),
# with the same conditions: one round trip and one plan instead of a pipelined statement per row.
_SQL_ARRAYS = {
    "update_profile": "UPDATE profiles AS p SET body = v.body, wake_at = v.wake_at, lease_until = NULL, "
                      "updated_at = v.updated_at, version = v.seen + 1 "
                      "FROM unnest(%s::bytea[], %s::float8[], %s::float8[], %s::text[], %s::int[]) "
                      "AS v(body, wake_at, updated_at, user_id, seen) "
                      "WHERE p.user_id = v.user_id AND p.version = v.seen",
    "insert_profile": "INSERT INTO profiles (user_id, body, wake_at, lease_until, updated_at, version, shard) "
                      "SELECT v.user_id, v.body, v.wake_at, NULL, v.updated_at, 1, v.shard "
                      "FROM unnest(%s::text[], %s::bytea[], %s::float8[], %s::float8[], %s::int[]) "
                      "AS v(user_id, body, wake_at, updated_at, shard) "
                      "WHERE NOT EXISTS (SELECT 1 FROM aliases a WHERE a.previous_id = v.user_id) "
                      "AND NOT EXISTS (SELECT 1 FROM erased e WHERE e.user_id = v.user_id)",
}
T = TypeVar("T")


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


class SqlConnection:
    """The database under every part of the SQL store: connections, transactions and the schema.
    `defaults` are the workspace's metric defaults (left out of blobs)."""

    def __init__(self, url: str = DEFAULT_URL, *, defaults: dict[str, Any] | None = None, upgrade: bool = True,
                 wall: Callable[[], float] = time.time, schema: str | None = None) -> None:
        """`schema` (PostgreSQL): keep every table in that schema, created when missing (benchmarks use
        their own, never the production tables)."""
        self.url = normalise_url(url)
        self.schema = schema
        self.defaults = defaults or {}
        self.wall = wall  # leases are about real workers, so they use the wall clock: an adapter's business
        self._local = threading.local()  # per thread: profile versions seen by `load`, outbox claims' tokens
        self.engine = self._connect()
        self.dialect = self.engine.dialect.name
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        self._sql = _SQL if self.dialect == "sqlite" else {k: v.replace("?", "%s") for k, v in _SQL.items()}
        self._arrays = _SQL_ARRAYS if self.dialect == "postgresql" else None
        try:
            self._check_version(upgrade)
        except BaseException:
            self.engine.dispose()  # a refused start leaves no connection behind
            raise

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

    def close(self) -> None:
        self.engine.dispose()

    def drop_schema(self) -> None:
        """Remove this store's own schema and everything in it (PostgreSQL benchmark clean-up)."""
        if self.schema is not None and self.dialect == "postgresql":
            with self.engine.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))

    def _lookup(self, key: sa.Column[Any], value: sa.Column[Any], keys: Collection[str]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        if not keys:
            return result
        with self._reading() as conn:
            for chunk in _chunks(list(keys)):
                result.update((k, v) for k, v in conn.execute(sa.select(key, value).where(key.in_(chunk))))
        return result

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

    def _counts(self, conn: Connection, deltas: dict[tuple[str, str], int]) -> None:
        """Add `deltas` to the state counts (a commit's moves, an erasure's departures)."""
        rows = [{"journey": j, "state": st, "users": n} for (j, st), n in sorted(deltas.items()) if n]  # see _tx
        if not rows:
            return
        stmt = self._insert(counts_t)
        stmt = stmt.on_conflict_do_update(index_elements=["journey", "state"],
                                          set_={"users": counts_t.c.users + stmt.excluded.users})
        conn.execute(stmt, rows)

    # --- the operator's probes ------------------------------------------------------------------

    def unwritable(self, timeout: float = 1.0) -> str | None:
        """See `Reads.unwritable`. The probe writes a trace row larger than a page (so it needs new pages,
        as a batch does) and rolls it back, waiting at most `timeout` seconds for locks."""
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

    def advice(self) -> list[str]:
        """See `Reads.advice`."""
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
        tables = {t.name for t in TABLES}
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

    def count(self, table: sa.Table) -> int:
        with self._reading() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")  # an acknowledged batch survives power loss
    # a checkpoint (copying the log into the database, with two flushes) every ~80 MB of log rather than
    # every 4 MB: a batch of 500 events writes a few MB, so the default checkpointed after nearly every commit,
    # and pages written again and again between checkpoints are copied once (see docs/performance.md)
    cursor.execute("PRAGMA wal_autocheckpoint=20000")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.close()


def _chunks(items: list[T], size: int = _CHUNK) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _reason(exc: DBAPIError) -> str:
    return str(exc.orig).strip() if exc.orig else str(exc)


def _redact(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)
