"""The SQL store's own promises: migrations keep data, newer databases are refused, faults are clear errors."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from adapters.storage.sql import SqlStore, _alembic, history_t
from journey_engine import codec
from journey_engine.compiler import load_workspace
from journey_engine.engine import Engine
from journey_engine.events import Event
from journey_engine.memory import MemoryStore
from journey_engine.ports import Batch, StoreUnavailable, StoreVersionError, partition, shard
from journey_engine.profile import Profile
from journey_engine.runtime import Runtime

from .conftest import postgres_or_skip

ROOT = Path(__file__).parent.parent
COMPILED = load_workspace(Path(__file__).parent / "workspaces" / "basic")
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _old(name: str, *columns: str) -> sa.TableClause:
    return sa.table(name, *(sa.column(c) for c in columns))


def _fill_first_schema(conn: sa.Connection) -> None:
    """Every table of revision 0001, as that version wrote them: a user in a journey and a segment."""
    runtime_store = MemoryStore()
    Runtime(Engine(COMPILED), runtime_store).process([
        Event(type="identify", user_id="u1", traits={"email": "a@example.com"}, timestamp=T0),
        Event(type="track", user_id="u1", name="Signed Up", timestamp=T0)], T0)
    profile = runtime_store.profiles["u1"]
    profile.segments = ("vip", "newcomer")
    rows = {
        "profiles": [{"user_id": "u1", "body": codec.encode(profile), "wake_at": profile.wake_at,
                      "updated_at": T0.timestamp()}],
        "aliases": [{"previous_id": "anon-1", "user_id": "u1"}],
        "processed": [{"message_id": "m1", "at": T0.timestamp()}],
        "trace": [{"user_id": "u1", "at": "2026-01-05T09:00:00Z", "kind": kind, "journey": None,
                   "body": json.dumps({"kind": kind, "at": at, "user": "u1", "segment": "vip"})}
                  for kind, at in (("segment_entered", "2026-01-05T09:00:00Z"),
                                   ("segment_left", "2026-01-06T09:00:00Z"),
                                   ("segment_entered", "2026-01-07T09:00:00Z"))],
        "outbox": [{"key": "k1", "user_id": "u1", "at": T0.timestamp(), "channel": "email", "message": "welcome_email",
                    "journey": "onboarding", "payload": "{}", "status": "pending", "attempts": 0,
                    "next_attempt_at": T0.timestamp(), "last_error": None}],
        "bandit": [{"journey": "onboarding", "state": "nudge", "arm": "a", "sends": 3, "conversions": 1}],
    }
    for table, values in rows.items():
        conn.execute(sa.insert(_old(table, *values[0])), values)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_an_older_database_is_upgraded_in_place_and_keeps_its_data(kind: str, tmp_path: Path) -> None:
    """A database at the first schema, with every table filled, is upgraded to the latest: its data reads
    back the same and the derived tables (state counts, segment history) are rebuilt from it."""
    url = f"sqlite:///{tmp_path / 'old.db'}" if kind == "sqlite" else postgres_or_skip()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        command.upgrade(_alembic(conn), "0001")
        _fill_first_schema(conn)
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert "segment_history" not in tables
    with pytest.raises(StoreVersionError, match="journey db upgrade"):
        SqlStore(url, upgrade=False)
    result = subprocess.run([sys.executable, "-m", "adapters.cli", "db", "upgrade", "--database", url], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    store = SqlStore(url, upgrade=False, defaults=dict(COMPILED.metrics.defaults))
    try:
        assert store.revision() == ScriptDirectory.from_config(_alembic(None)).get_current_head()  # type: ignore[arg-type]
        profile = store.load(["u1"])["u1"]
        assert profile.traits == {"email": "a@example.com"}
        mine = partition("u1", 2)  # the shard was computed for the profile the old schema held
        assert store.due(T0 + timedelta(days=30), 5, (1 - mine, 2)) == []
        assert [u for _, u in store.due(T0 + timedelta(days=30), 5, (mine, 2))] == ["u1"]
        assert store.aliases(["anon-1"]) == {"anon-1": "u1"} and store.seen(["m1"]) == {"m1"}
        assert [r["segment"] for r in store.trace("u1")] == ["vip", "vip", "vip"]
        assert [(r["key"], r["shard"]) for r in store.outbox()] == [("k1", shard("u1"))]  # computed by 0013
        assert store.bandit() == {("onboarding", "nudge"): {"a": (3, 1)}}
        assert store.state_counts() == {"onboarding": {"welcome": 1}}
        with store.engine.connect() as conn:
            history = sorted(tuple(r) for r in conn.execute(sa.select(
                history_t.c.segment, history_t.c.entered_at, history_t.c.left_at)))
        assert history == [("newcomer", "2026-01-05T09:00:00Z", None),
                           ("vip", "2026-01-05T09:00:00Z", "2026-01-06T09:00:00Z"),
                           ("vip", "2026-01-07T09:00:00Z", None)]
    finally:
        store.close()


def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    """A schema revision this version does not know means a newer engine wrote it: refuse to start."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    SqlStore(url).close()
    with sqlite3.connect(tmp_path / "new.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreVersionError, match="newer"):
        SqlStore(url)


def test_an_unreachable_database_is_a_clear_error() -> None:
    """A server that does not answer gives StoreUnavailable naming the place, not a traceback."""
    with pytest.raises(StoreUnavailable, match="cannot reach the database at postgresql"):
        SqlStore("postgresql://nobody@127.0.0.1:1/none")


def test_the_cli_says_so_and_exits_non_zero(tmp_path: Path) -> None:
    """`journey ingest` against an unreachable database prints one line and exits 1."""
    events = tmp_path / "e.jsonl"
    events.write_text('{"type": "track", "userId": "u1", "event": "Signed Up"}\n')
    result = subprocess.run([sys.executable, "-m", "adapters.cli", "ingest", str(events), "--database",
                             "postgresql://nobody@127.0.0.1:1/none"], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 1
    assert "cannot reach the database" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_locked_sqlite_database_fails_the_batch_cleanly(tmp_path: Path) -> None:
    """While another process holds the write lock, a commit fails with StoreUnavailable and writes nothing."""
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    store = SqlStore(url)
    store.engine.dispose()
    store.engine = sa.create_engine(url, connect_args={"timeout": 0.2})
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            store.commit(Batch(profiles={"u1": Profile("u1")}))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.load(["u1"]) == {}
    store.close()


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_a_locked_database_during_upgrade_is_a_clear_error(tmp_path: Path) -> None:
    """An upgrade that cannot get the write lock is StoreUnavailable saying nothing changed, not a traceback."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # as SqlStore left it: readers pass, the upgrade waits
        command.upgrade(_alembic(conn), "0003")
    engine.dispose()
    holder = _hold_write_lock(tmp_path / "old.db")
    try:
        with pytest.raises(StoreUnavailable, match=r"cannot upgrade the database.*locked"):
            SqlStore(url)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store = SqlStore(url)
    assert store.revision() == ScriptDirectory.from_config(_alembic(None)).get_current_head()  # type: ignore[arg-type]
    store.close()


def test_reads_from_a_lost_database_are_store_unavailable(tmp_path: Path) -> None:
    """load, seen and aliases on a database that went away raise StoreUnavailable."""
    store = SqlStore(f"sqlite:///{tmp_path / 'gone.db'}")
    store.engine.dispose()
    store.engine = sa.create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    for read in (store.load, store.seen, store.aliases):
        with pytest.raises(StoreUnavailable, match="cannot read from the database"):
            read(["u1"])


def test_nothing_due_is_answered_without_the_write_lock(tmp_path: Path) -> None:
    """A timer poll with nothing due only reads: it answers while another process holds the write lock."""
    url = f"sqlite:///{tmp_path / 'idle.db'}"
    store = SqlStore(url)
    profile = Profile("u1")
    profile.wake = datetime(2026, 1, 6, tzinfo=UTC)
    store.commit(Batch(profiles={"u1": profile}))
    store.engine.dispose()
    store.engine = sa.create_engine(url, connect_args={"timeout": 0.2})
    holder = _hold_write_lock(tmp_path / "idle.db")
    try:
        assert store.due(datetime(2026, 1, 5, tzinfo=UTC), 500) == []
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.close()


def test_timer_claims_read_the_due_index_in_order(tmp_path: Path) -> None:
    """The claim's ORDER BY (wake_at, user_id) is served by an index, without a sort of every due row."""
    store = SqlStore(f"sqlite:///{tmp_path / 'plan.db'}")
    with store.engine.connect() as conn:
        plan = " | ".join(str(r[3]) for r in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT user_id FROM profiles WHERE wake_at <= 1e10 AND "
            "(lease_until IS NULL OR lease_until < 1e10) ORDER BY wake_at, user_id LIMIT 500"))
    store.close()
    assert "ix_profiles_due" in plan and "TEMP B-TREE" not in plan, plan


def test_a_thread_that_only_reads_keeps_no_growing_state(tmp_path: Path) -> None:
    """The versions remembered for compare-and-set are those of the last load only (no leak on API threads)."""
    store = SqlStore(f"sqlite:///{tmp_path / 'v.db'}")
    try:
        from journey_engine.ports import Batch
        from journey_engine.profile import Profile

        store.commit(Batch(profiles={f"u{n}": Profile(f"u{n}") for n in range(50)}))
        store.load([f"u{n}" for n in range(50)])
        store.load(["u1"])
        assert store._versions == {"u1": 1}
        assert store.due_count(datetime(2030, 1, 1, tzinfo=UTC)) == 0
    finally:
        store.close()


def test_a_claim_skips_the_flush_and_every_commit_after_it_waits_for_the_disk(tmp_path: Path) -> None:
    """Claims are leases (lost in a power cut, they are claimed again): their commit is not flushed. The
    connection goes back to full durability before anything else commits on it, also when the claim fails."""
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    seen: list[int] = []

    def synchronous() -> int:
        with store.engine.connect() as conn:
            return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())

    original = store._relaxed_sqlite

    def spying(conn: sa.Connection):  # type: ignore[no-untyped-def]
        for c in original(conn):
            seen.append(int(c.exec_driver_sql("PRAGMA synchronous").scalar_one()))
            yield c

    store._relaxed_sqlite = spying  # type: ignore[method-assign]
    try:
        profile = Profile("u1")
        profile.wake_at = T0.timestamp()
        store.commit(Batch(profiles={"u1": profile}))
        assert [user for _, user in store.due(T0, 10)] == ["u1"]
        assert seen == [1]  # NORMAL inside the claim
        assert synchronous() == 2  # FULL again on the pooled connection
        store.engine.pool.dispose()
        with pytest.raises(StoreUnavailable), store._tx(durable=False) as conn:
            conn.exec_driver_sql("SELECT * FROM no_such_table")
        assert synchronous() == 2
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    """A fresh SqlStore on each real database, closed after the test."""
    store = SqlStore(f"sqlite:///{tmp_path / 'j.db'}" if request.param == "sqlite" else postgres_or_skip())
    yield store
    store.close()


def test_disk_use_is_reported_per_table_with_its_indexes(sql_store: SqlStore) -> None:
    from adapters.bench import _disk

    sql_store.commit(Batch(profiles={f"u{n}": Profile(f"u{n}") for n in range(300)},
                           records=[{"kind": "transition", "at": "2026-01-05T09:00:00Z", "user": f"u{n}",
                                     "journey": "j", "from": "a", "to": "b", "trigger": "after"} for n in range(300)]))
    sizes = sql_store.disk_bytes()
    assert set(sizes) == {"profiles", "aliases", "processed", "trace", "outbox", "bandit", "segment_history",
                          "erased", "enrolled", "state_counts", "store_facts", "journey_versions", "journeys_in_force"}
    assert sizes["profiles"] > 300 * 20 and sizes["trace"] > 300 * 50  # rows and their indexes
    split = _disk(sizes, users=300, events=600)
    assert split["disk_state_bytes_per_user"] == round(sizes["profiles"] / 300)
    assert split["disk_history_bytes_per_event"] == round((sum(sizes.values()) - sizes["profiles"]) / 600)


def test_a_server_without_autovacuum_is_pointed_out(sql_store: SqlStore) -> None:
    """PostgreSQL without autovacuum keeps every replaced profile row: `journey serve` says so at start."""
    advice = sql_store.advice()
    on = True  # SQLite has no vacuum to advise on
    if sql_store.dialect == "postgresql":
        with sql_store.engine.connect() as conn:
            on = conn.exec_driver_sql("SHOW autovacuum").scalar_one() == "on"
    if on:
        assert advice == []
    else:
        (said,) = advice
        assert "autovacuum is off" in said and "turn it on" in said
