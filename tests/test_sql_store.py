"""The SQL store's own promises: migrations keep data, newer databases are refused, faults are clear errors."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from adapters.storage.sql import SqlStore, _alembic
from journey_engine import codec
from journey_engine.ports import StoreUnavailable, StoreVersionError
from journey_engine.profile import Profile

ROOT = Path(__file__).parent.parent


def test_an_older_database_is_upgraded_in_place_and_keeps_its_data(tmp_path: Path) -> None:
    """A database at the first schema, with data, is upgraded to the latest and reads back the same."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        command.upgrade(_alembic(conn), "0001")
    profile = Profile("u1")
    profile.traits = {"email": "a@example.com"}
    profile.wake = datetime(2026, 1, 5, tzinfo=UTC)
    with engine.begin() as conn:
        old_profiles = sa.table("profiles", *(sa.column(c) for c in ("user_id", "body", "wake_at", "updated_at")))
        conn.execute(sa.insert(old_profiles), [{"user_id": "u1", "body": codec.encode(profile),
                                              "wake_at": profile.wake.timestamp(), "updated_at": 0.0}])
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert "segment_history" not in tables
    with pytest.raises(StoreVersionError, match="journey db upgrade"):
        SqlStore(url, upgrade=False)
    result = subprocess.run([sys.executable, "-m", "adapters.cli", "db", "upgrade", "--database", url], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    store = SqlStore(url, upgrade=False)
    assert store.revision() == ScriptDirectory.from_config(_alembic(None)).get_current_head()
    assert store.load(["u1"])["u1"].traits == {"email": "a@example.com"}
    assert [u for _, u in store.due(datetime(2026, 1, 6, tzinfo=UTC), 5)] == ["u1"]
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
    from journey_engine.ports import Batch

    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            store.commit(Batch(profiles={"u1": Profile("u1")}))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.load(["u1"]) == {}
    store.close()
