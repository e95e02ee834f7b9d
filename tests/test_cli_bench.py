"""`journey bench` from the command line: refusals a person can act on."""

from __future__ import annotations

import gc
import json
import zlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.cli import app

EXAMPLES = Path(__file__).parent.parent / "journeys"
runner = CliRunner()


def test_bench_on_an_unreachable_postgres_says_so_in_one_line() -> None:
    """--store postgres on a database nobody listens at: the store's one-line error and exit 1, no traceback."""
    url = "postgresql+psycopg://bench:secret@127.0.0.1:1/nothing"
    result = runner.invoke(app, ["bench", "--store", "postgres", "--database", url, "--workspace", str(EXAMPLES),
                                 "--users", "10", "--events", "10"])
    assert result.exit_code == 1
    assert "cannot reach the database" in result.output and "secret" not in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture
def collector() -> Iterator[None]:
    """The garbage collector as it was, after a test that ran a long-running command in this process."""
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_long_running_commands_keep_the_loaded_workspace_out_of_the_collector(collector: None) -> None:
    """serve, bench, ingest and demo freeze what the workspace loaded and collect less often (the
    defaults rescanned the older generations again and again); one-shot commands leave the collector alone."""
    from adapters.cli import _load

    before = gc.get_threshold()
    _load(EXAMPLES)
    assert gc.get_threshold() == before
    _load(EXAMPLES, long_running=True)
    assert gc.get_threshold() == (10_000, 10, 10)
    assert gc.get_freeze_count() > 0


def test_the_timer_bench_times_claims_apart(tmp_path: Path, collector: None) -> None:
    """A small spike through the SQLite store: every timer fired and committed, claim time reported."""
    result = runner.invoke(app, ["bench", "--store", "sqlite", "--database", f"sqlite:///{tmp_path / 'b.db'}",
                                 "--workspace", str(EXAMPLES), "--timers", "600", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["timers_due"] == report["timers_fired"] == 600
    assert report["claim_ms_per_500"] > 0 and report["timers_fired_per_s"] > 0


def test_the_event_mix_can_be_spread_over_fewer_days(collector: None) -> None:
    """--days sets the virtual span: fewer days, fewer timers fall due while the stream lasts."""
    reports = {}
    for days in ("30", "1"):
        result = runner.invoke(app, ["bench", "--workspace", str(EXAMPLES), "--users", "200", "--events", "2000",
                                     "--days", days, "--json"])
        assert result.exit_code == 0, result.output
        reports[days] = json.loads(result.output.strip().splitlines()[-1])
    assert reports["1"]["days"] == 1 and reports["30"]["days"] == 30
    assert reports["1"]["timers_fired"] < reports["30"]["timers_fired"]
    refused = runner.invoke(app, ["bench", "--workspace", str(EXAMPLES), "--days", "0"])
    assert refused.exit_code == 2 and "--days must be more than 0" in refused.output


def test_a_memory_bench_with_few_live_profiles_decides_the_same_in_less_memory(collector: None) -> None:
    """--hot keeps that many profiles live and the others encoded: the same timers, sends and trace,
    fewer bytes per user. It is refused on disk stores and below one."""
    reports = {}
    for hot in (None, "20"):
        result = runner.invoke(app, ["bench", "--workspace", str(EXAMPLES), "--users", "300", "--events", "3000",
                                     "--days", "2", "--json", *(["--hot", hot] if hot else [])])
        assert result.exit_code == 0, result.output
        reports[hot] = json.loads(result.output.strip().splitlines()[-1])
    live, cold = reports[None], reports["20"]
    assert cold["hot"] == 20 and live["hot"] is None
    for same in ("timers_fired", "sends", "trace_records"):
        assert cold[same] == live[same] > 0
    assert cold["bytes_per_user"] < live["bytes_per_user"] / 2
    assert cold["decodes_per_event"] > 0 and cold["encodes_per_event"] > 0 and "decodes_per_event" not in live
    assert 0 < live["index_bytes_per_user"] < live["bytes_per_user"] and cold["index_bytes_per_user"] > 0
    for args, says in ((["--hot", "0"], "--hot is a number of profiles"),
                       (["--hot", "5", "--store", "sqlite"], "with --store memory")):
        refused = runner.invoke(app, ["bench", "--workspace", str(EXAMPLES), *args])
        assert refused.exit_code == 2 and says in refused.output


def test_several_worker_processes_share_one_sqlite_database(tmp_path: Path, collector: None) -> None:
    """--workers 2: two engine processes, each with its partition of the users, commit every event once
    into the same database. --workers is refused with the memory store."""
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'w.db'}"
    result = runner.invoke(app, ["bench", "--store", "sqlite", "--database", url, "--workspace", str(EXAMPLES),
                                 "--users", "300", "--events", "4000", "--days", "1", "--workers", "2",
                                 "--mix", "uniform", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["workers"] == 2 and report["events_per_s"] > 0 and report["sends"] > 0
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        processed = conn.execute(sa.text("SELECT count(*) FROM processed")).scalar_one()
        profiles = conn.execute(sa.text("SELECT count(*) FROM profiles")).scalar_one()
    engine.dispose()
    from adapters.bench import events_stream

    stream = list(events_stream(300, 4000, 1, timedelta(days=1)))
    assert processed == len({e.message_id for e in stream if e.message_id})  # each once (identifies have none)
    assert profiles == 300
    refused = runner.invoke(app, ["bench", "--workspace", str(EXAMPLES), "--workers", "2"])
    assert refused.exit_code == 2 and "share a database" in refused.output


def test_a_user_belongs_to_the_same_partition_in_every_process() -> None:
    """Partitions come from the stored shard (CRC-32 of the user id), not Python's per-process salted hash."""
    from journey_engine.ports import SHARDS, partition, shard

    users = ("u1", "u2", "alice")
    assert [shard(u) for u in users] == [zlib.crc32(u.encode()) % SHARDS for u in users]
    assert [partition(u, 3) for u in users] == [shard(u) % 3 for u in users]
    assert partition("anyone", 1) == 0
    assert {partition(f"u{i}", 3) for i in range(100)} == {0, 1, 2}
