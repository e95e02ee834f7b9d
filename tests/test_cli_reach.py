"""`journey user` in words, scenarios kept outside scenarios/, and the reach commands of the CLI."""

from __future__ import annotations

import json
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


def _stored(tmp_path: Path) -> str:
    """A database where de-AT Min signed up (onboarding), en Ada has no email, and Zed is in the control group."""
    events = tmp_path / "e.jsonl"
    lines = [
        '{"type":"identify","userId":"u-min","traits":{"email":"min@example.com","first_name":"Min","locale":"de-AT",'
        '"timezone":"Europe/Vienna","created_at":"2026-01-05T08:00:00Z"},"timestamp":"2026-01-05T09:00:00Z","messageId":"1"}',
        '{"type":"track","userId":"u-min","event":"Signed Up","timestamp":"2026-01-05T09:00:00Z","messageId":"2"}',
        '{"type":"identify","userId":"u-ada","traits":{"first_name":"Ada","created_at":"2026-01-05T08:00:00Z"},'
        '"timestamp":"2026-01-05T09:00:00Z","messageId":"3"}',
        '{"type":"identify","userId":"u-ben","traits":{"email":"ben@example.com"},'
        '"timestamp":"2026-01-05T09:00:00Z","messageId":"4"}',
    ]
    events.write_text("\n".join(lines) + "\n")
    db = f"sqlite:///{tmp_path / 'p.db'}"
    ingest = runner.invoke(app, ["ingest", str(events), "--clock", "event", "--database", db,
                                 "--workspace", str(EXAMPLES)])
    assert ingest.exit_code == 0, ingest.output
    return db


def test_preview_renders_a_message_for_a_stored_user_with_the_decision(tmp_path: Path) -> None:
    """The welcome email in Min's locale, with her name, and whether it would go now; ineligible for Ada;
    held out for Ben (the control group)."""
    db = _stored(tmp_path)
    args = ["--database", db, "--workspace", str(EXAMPLES), "--json"]
    shown = json.loads(runner.invoke(app, ["preview", "welcome_email", "--user", "u-min", *args]).stdout)
    assert (shown["locale"], shown["journey"], shown["template_error"]) == ("de", "onboarding", None)
    assert shown["subject"] == "Willkommen, Min!"
    assert shown["action"] in ("send", "defer") and (shown["until"] is None) == (shown["action"] == "send")
    ada = json.loads(runner.invoke(app, ["preview", "welcome_email", "--user", "u-ada", *args]).stdout)
    assert (ada["action"], ada["reason"]) == ("suppress", "ineligible") and ada["locale"] is None
    ben = json.loads(runner.invoke(app, ["preview", "welcome_email", "--user", "u-ben", *args]).stdout)
    assert (ben["action"], ben["reason"]) == ("suppress", "control_group")
    text = runner.invoke(app, ["preview", "welcome_email", "--user", "u-ada", "--database", db,
                               "--workspace", str(EXAMPLES)])
    assert "now: would not be sent (ineligible)" in text.stdout
    missing = runner.invoke(app, ["preview", "welcom_email", "--user", "u-min", *args])
    assert missing.exit_code == 1 and "did you mean `welcome_email`" in missing.output


def test_audience_counts_who_would_enter_now_and_each_segment(tmp_path: Path) -> None:
    """onboarding enters on Signed Up for new users: Min is in it, Ada (a new user as stored) would enter,
    Ben (no sign-up date, so not a new user) would not; every segment's members are counted."""
    db = _stored(tmp_path)
    found = json.loads(runner.invoke(app, ["audience", "onboarding", "--database", db, "--workspace",
                                           str(EXAMPLES), "--json"]).stdout)
    assert (found["users"], found["in_journey"], found["would_enter"], found["not_again"]) == (3, 1, 1, 0)
    assert (found["segments"]["prospects"], found["segments"]["new_users"]) == (3, 2)
    assert found["entry"].startswith("on event Signed Up if")
