"""`journey user` in words, scenarios kept outside scenarios/, and the reach commands of the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from adapters.cli import app
from adapters.reporting.explain import explain_move, explain_timer
from journey_engine.compiler import load_workspace

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "journeys"
runner = CliRunner()


def test_a_rule_move_is_named_by_its_rule_and_target() -> None:
    """A `trigger=rule` record reads as the rule's text and the state it led to; events, timers and splits too."""
    compiled = load_workspace(EXAMPLES)
    move = {"kind": "transition", "journey": "onboarding", "from": "tips", "to": "activated", "trigger": "rule"}
    assert explain_move(compiled, move) == 'rule "metrics.feature_uses_7d >= 3" → activated'
    timer = {**move, "from": "welcome", "to": "tips", "trigger": "after"}
    assert explain_move(compiled, timer) == "after 2d → tips"
    assert explain_move(compiled, {**move, "from": "gone"}) is None
    assert explain_timer(compiled, "onboarding", "welcome", 1) == "after 2d → tips"
    assert explain_timer(compiled, "onboarding", "welcome", 7) == "transition 7"


def test_user_names_the_next_timer_by_what_it_waits_for(tmp_path: Path) -> None:
    """`journey user` says `next: after 2d → tips at ...`, not `next: transition 1`."""
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
    assert "next: after 2d → tips at 2026-01-07T09:00:00Z" in shown.stdout
    assert "next: transition" not in shown.stdout


def test_validate_says_a_scenario_in_another_folder_is_a_scenario(tmp_path: Path) -> None:
    """A scenario kept in qa/ instead of scenarios/ is recognised by its `scenario:` key: a warning, exit 0."""
    workspace = tmp_path / "ws"
    shutil.copytree(EXAMPLES, workspace, ignore=shutil.ignore_patterns("scenarios"))
    (workspace / "qa").mkdir()
    shutil.copy(EXAMPLES / "scenarios" / "onboarding_activated.yaml", workspace / "qa" / "flow.yaml")
    result = runner.invoke(app, ["validate", str(workspace)])
    assert result.exit_code == 0, result.output
    assert "qa/flow.yaml:1:1: warning: a scenario, not a workspace file" in result.output.replace("\n", "")
    assert "`version` is required" not in result.output and "unknown key" not in result.output
