"""The `journey` command (SPEC §7): exit codes, output formats and messages a person reads."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.cli import app

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "journeys"
runner = CliRunner()


def test_validate_the_example_workspace() -> None:
    """The example workspace validates: exit 0 and a one-line summary."""
    result = runner.invoke(app, ["validate", str(EXAMPLES)])
    assert result.exit_code == 0, result.output
    assert "5 journeys" in result.output


def test_validate_reports_every_mistake_with_file_line_column(tmp_path: Path) -> None:
    """Mistakes in two files are all reported as file:line:col with a fix, and the exit code is 1."""
    (tmp_path / "a.yaml").write_text("version: 1\njourney: j\nentry: {on: X}\ninitial: s\nstates:\n"
                                     "  s:\n    send: welcom\n    transitions:\n      - after: 1d\n        to: t\n"
                                     "  t: {final: true}\n")
    (tmp_path / "b.yaml").write_text("version: 1\nmessages:\n  welcome: {channel: emial, body: hi}\n")
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 1
    assert "a.yaml:7:" in result.output and "welcom" in result.output
    assert "b.yaml:3:" in result.output and "did you mean `email`" in result.output


def test_simulate_passes_fails_and_refuses_with_0_1_2(tmp_path: Path) -> None:
    """simulate exits 0 when expectations hold, 1 with a diff when one fails, 2 when the file is bad."""
    good = EXAMPLES / "scenarios" / "onboarding_activated.yaml"
    assert runner.invoke(app, ["simulate", str(good)]).exit_code == 0
    failing = tmp_path / "failing.yaml"
    failing.write_text(f"scenario: wrong\nworkspace: {EXAMPLES}\nstart: 2026-01-05T09:00:00Z\nsteps:\n"
                       "  - track: u1\n    event: Signed Up\n"
                       "  - expect: {user: u1, journey: onboarding, state: nowhere}\n")
    result = runner.invoke(app, ["simulate", str(failing)])
    assert result.exit_code == 1
    assert "expected 'nowhere'" in result.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("scenario: x\nstart: 2026-01-05T09:00:00Z\nsteps:\n  - jump: u1\n")
    result = runner.invoke(app, ["simulate", str(broken)])
    assert result.exit_code == 2
    assert "broken.yaml:4" in result.output


def test_simulate_json_is_the_trace_then_a_summary() -> None:
    """--json prints one JSON object per line: the trace, then a summary line."""
    result = runner.invoke(app, ["simulate", str(EXAMPLES / "scenarios" / "quiet_hours.yaml"), "--json"])
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[-1]["kind"] == "summary" and lines[-1]["passed"] is True
    assert any(r["kind"] == "message_deferred" and r["reason"] == "quiet_hours" for r in lines)


@pytest.mark.parametrize(("fmt", "marker"), [("mermaid", "flowchart"), ("dot", "digraph")])
def test_graph_formats(fmt: str, marker: str) -> None:
    """graph draws a journey as mermaid or dot with its triggers."""
    result = runner.invoke(app, ["graph", "onboarding", "--format", fmt, "--workspace", str(EXAMPLES)])
    assert result.exit_code == 0
    assert marker in result.stdout and "after 2d" in result.stdout


def test_graph_of_an_unknown_journey_suggests_a_name() -> None:
    """A misspelled journey name gets a suggestion and exit 1."""
    result = runner.invoke(app, ["graph", "onbording", "--workspace", str(EXAMPLES)])
    assert result.exit_code == 1
    assert "did you mean `onboarding`" in result.output


def test_schema_is_json_schema_with_the_language_keys() -> None:
    """schema prints a JSON Schema editors can use, keyed by the YAML names (`on`, `if`)."""
    result = runner.invoke(app, ["schema"])
    document = json.loads(result.stdout)
    assert document["$schema"].startswith("https://json-schema.org/")
    assert {"journey", "states", "messages", "segments"} <= set(document["properties"])
    assert "if" in json.dumps(document)


def test_user_shows_where_a_user_is_and_why(tmp_path: Path) -> None:
    """`journey user` explains the state and the decisions; --json is the API's view."""
    events = tmp_path / "e.jsonl"
    events.write_text('{"type":"identify","userId":"u1","traits":{"email":"a@b.c","created_at":"2026-01-05T08:00:00Z"},'
                      '"timestamp":"2026-01-05T09:00:00Z","messageId":"1"}\n'
                      '{"type":"track","userId":"u1","event":"Signed Up","timestamp":"2026-01-05T09:00:00Z",'
                      '"messageId":"2"}\n')
    db = f"sqlite:///{tmp_path / 'u.db'}"
    ingest = runner.invoke(app, ["ingest", str(events), "--clock", "event", "--database", db,
                                 "--workspace", str(EXAMPLES)])
    assert ingest.exit_code == 0, ingest.output
    shown = runner.invoke(app, ["user", "u1", "--database", db, "--workspace", str(EXAMPLES)])
    assert "onboarding: welcome" in shown.stdout
    assert "message_sent" in shown.stdout
    as_json = json.loads(runner.invoke(app, ["user", "u1", "--json", "--database", db,
                                             "--workspace", str(EXAMPLES)]).stdout)
    assert as_json["journeys"][0]["state"] == "welcome"
    missing = runner.invoke(app, ["user", "nobody", "--database", db, "--workspace", str(EXAMPLES)])
    assert missing.exit_code == 1


def test_simulate_refuses_an_expect_naming_an_unknown_journey_with_exit_2(tmp_path: Path) -> None:
    """A typo in an expect's journey is a load error (exit 2, file:line:col, did you mean), not a failure."""
    scenario = tmp_path / "typo.yaml"
    scenario.write_text(f"scenario: typo\nworkspace: {EXAMPLES}\nstart: 2026-01-05T09:00:00Z\nsteps:\n"
                        "  - track: u1\n    event: Signed Up\n"
                        "  - expect: {user: u1, journey: onbording, state: welcome}\n")
    result = runner.invoke(app, ["simulate", str(scenario)])
    assert result.exit_code == 2
    assert "typo.yaml:7:" in result.output and "did you mean `onboarding`" in result.output


def test_ingest_reports_bad_lines_keeps_good_ones_and_refuses_a_missing_file(tmp_path: Path) -> None:
    """Bad lines are named with their line and field and the others committed (exit 1); no file is exit 2."""
    events = tmp_path / "e.jsonl"
    events.write_bytes(b'{"type":"track","userId":"u1","event":"Signed Up","messageId":"1"}\n'
                       b'{"type":"track","userId":"u2","messageId":"2"}\n'
                       b'{"type":"identify","userId":"u3","traits":{"name":"\xff"}}\n')
    db = f"sqlite:///{tmp_path / 'i.db'}"
    result = runner.invoke(app, ["ingest", str(events), "--database", db, "--workspace", str(EXAMPLES)])
    assert result.exit_code == 1
    assert "1 events committed, 2 refused" in result.stdout
    assert "line 2" in result.output and "event" in result.output
    missing = runner.invoke(app, ["ingest", str(tmp_path / "nope.jsonl"), "--database", db,
                                  "--workspace", str(EXAMPLES)])
    assert missing.exit_code == 2
    assert "nope.jsonl" in missing.output


def test_ingest_with_two_engine_processes_ends_where_one_process_does(tmp_path: Path) -> None:
    """--workers 2 splits the users between two engine processes: every event is committed once and each
    user's traits, metrics and segments are those a one-process ingest of the same file gives."""
    import sqlalchemy as sa

    from adapters.bench import events_stream
    from journey_engine import codec

    lines = []
    for n, e in enumerate(events_stream(150, 2500, 3, timedelta(days=2))):
        lines.append(json.dumps({"type": e.type, "userId": e.user_id, "event": e.name, "properties": e.properties,
                                 "traits": {k: v.isoformat() if isinstance(v, datetime) else v
                                            for k, v in e.traits.items()},
                                 "timestamp": e.timestamp.isoformat(), "messageId": e.message_id or f"i{n}"}))
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join(lines) + "\n")
    states = []
    for workers in ("1", "2"):
        db = f"sqlite:///{tmp_path / f'w{workers}.db'}"
        result = runner.invoke(app, ["ingest", str(source), "--database", db, "--workspace", str(EXAMPLES),
                                     "--clock", "event", "--workers", workers])
        assert result.exit_code == 0, result.output
        assert "2500 events committed, 0 refused" in result.stdout
        engine = sa.create_engine(db)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM processed")).scalar_one() == 2500
            profiles = {user: codec.decode(body) for user, body in conn.execute(
                sa.text("SELECT user_id, body FROM profiles"))}
        engine.dispose()
        states.append({u: (p.traits, p.metric_values, sorted(p.segments)) for u, p in profiles.items()})
    assert len(states[0]) == 150
    assert states[1] == states[0]
