"""Editing a live workspace (SPEC §3, "Changing a live workspace"): a deploy over live users pins them to
their version by default, moves them with `on_change: move`, and never crashes on what is gone. Run on
the memory store, SQLite and PostgreSQL through the Harness (the scenario step `deploy:`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from journey_engine.compiler import CompiledWorkspace, load_workspace
from journey_engine.deployment import PlanRefused
from journey_engine.testing import Harness

from .conftest import StoreFactory

START = "2026-01-05T09:00:00Z"
MESSAGES = {"hello": {"channel": "sms", "body": "hi"}, "nudge": {"channel": "sms", "body": "come back"},
            "bye": {"channel": "sms", "body": "bye"}}
TRIAL: dict[str, Any] = {
    "journey": "trial", "entry": {"on": "Signed Up"}, "initial": "wait",
    "states": {"wait": {"send": "hello", "transitions": [{"on": "Clicked", "to": "done"},
                                                         {"after": "3d", "to": "remind"}]},
               "remind": {"send": "nudge", "transitions": [{"after": "1d", "to": "done"}]},
               "done": {"final": True}},
}


def workspace(tmp_path: Path, name: str, *, messages: dict[str, Any] | None = None, **trial: Any) -> CompiledWorkspace:
    folder = tmp_path / name
    folder.mkdir()
    shared = {"version": 1, "messages": messages or MESSAGES, "policies": {"timezone": "UTC"}}
    (folder / "shared.yaml").write_text(yaml.safe_dump(shared), encoding="utf-8")
    if trial.get("journey", True):
        doc = {"version": 1, **TRIAL, **trial}
        (folder / "trial.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    return load_workspace(folder)


@pytest.fixture
def harness(tmp_path: Path, store_factory: StoreFactory) -> Harness:
    """u1 and u2 signed up a day apart; both wait in `wait` (their 3-day reminders armed)."""
    v1 = workspace(tmp_path, "v1")
    h = Harness(v1, start=START, store=store_factory(defaults=dict(v1.metrics.defaults)))
    h.track("u1", "Signed Up")
    h.wait("1d")
    h.track("u2", "Signed Up")
    return h


def states(h: Harness) -> dict[str, str | None]:
    return {u: h.state(u, "trial") for u in ("u1", "u2")}


def test_renaming_a_state_keeps_live_users_on_their_version(tmp_path: Path, harness: Harness) -> None:
    """Pinned by default: users in the renamed state finish on the version they entered with."""
    renamed = {"waiting": TRIAL["states"]["wait"], "remind": TRIAL["states"]["remind"], "done": {"final": True}}
    plan = harness.deploy(workspace(tmp_path, "v2", initial="waiting", states=renamed))
    assert [(f.state, f.users, f.action) for f in plan.journeys[0].fates] == [("wait", 2, "pinned")]
    harness.wait("2d")  # u1's reminder (entered 3 days ago) goes on the old version
    harness.track("u3", "Signed Up")  # a new entrant takes the new version
    assert states(harness) == {"u1": "remind", "u2": "wait"} and harness.state("u3", "trial") == "waiting"
    assert harness.sent("u1") == ["hello", "nudge"]


def test_move_with_moves_carries_users_into_the_renamed_state(tmp_path: Path, harness: Harness) -> None:
    """on_change: move with moves: {wait: waiting} moves live users, traced, timers kept."""
    renamed = {"waiting": TRIAL["states"]["wait"], "remind": TRIAL["states"]["remind"], "done": {"final": True}}
    v2 = workspace(tmp_path, "v2", initial="waiting", states=renamed, on_change="move", moves={"wait": "waiting"})
    harness.deploy(v2)
    moved = harness.records(kind="journey_migrated")
    version = v2.journeys["trial"].version
    assert [(r["user"], r["from"], r["to"], r["to_version"]) for r in moved] == [
        ("u1", "wait", "waiting", version), ("u2", "wait", "waiting", version)]
    assert states(harness) == {"u1": "waiting", "u2": "waiting"}
    harness.wait("2d")  # the unchanged 3-day timer kept its time: u1 (entered 3 days ago) is reminded
    assert states(harness) == {"u1": "remind", "u2": "waiting"}


def test_a_transition_inserted_above_a_running_timer_does_not_redirect_it(tmp_path: Path, harness: Harness) -> None:
    """The running timer still leads to `remind`; no one takes the new transition without its event."""
    above = [{"on": "Coupon Used", "to": "done"}, *TRIAL["states"]["wait"]["transitions"]]
    wait = {"send": "hello", "transitions": above}
    harness.deploy(workspace(tmp_path, "v2", states={**TRIAL["states"], "wait": wait}))
    harness.wait("2d")
    (move,) = [r for r in harness.records(kind="transition") if r["user"] == "u1"]
    assert (move["to"], move["trigger"]) == ("remind", "after")


def test_a_shorter_timer_keeps_pinned_users_time_and_counts_moved_users_from_their_state_entry(
        tmp_path: Path, store_factory: StoreFactory) -> None:
    """Pinned: the old 3 days. Moved: the new 2 days from when they entered the state (due already: at once)."""
    shorter = {**TRIAL["states"], "wait": {"send": "hello", "transitions": [{"on": "Clicked", "to": "done"},
                                                                            {"after": "2d", "to": "remind"}]}}
    for on_change, expected in (("keep", {"u1": "wait", "u2": "wait"}), ("move", {"u1": "remind", "u2": "wait"})):
        folder = tmp_path / on_change
        folder.mkdir()
        v1 = workspace(folder, "v1")
        h = Harness(v1, start=START, store=store_factory(defaults=dict(v1.metrics.defaults)))
        h.track("u1", "Signed Up")
        h.wait("1d")
        h.track("u2", "Signed Up")
        h.wait("1d1h")  # u1 has waited 2d1h, u2 1h
        h.deploy(workspace(folder, "v2", states=shorter, on_change=on_change))
        h.wait("1m")
        assert states(h) == expected, on_change


def test_a_gone_state_exits_moved_users_with_reason_version(tmp_path: Path, harness: Harness) -> None:
    """on_change: move into a version without the user's state, unmapped: exit `version`, traced."""
    v2 = workspace(tmp_path, "v2", initial="remind", states={"remind": TRIAL["states"]["remind"],
                                                             "done": {"final": True}}, on_change="move")
    harness.deploy(v2)
    assert [(r["user"], r["reason"], r["state"]) for r in harness.records(kind="journey_exited")] == [
        ("u1", "version", "wait"), ("u2", "version", "wait")]
    assert harness.exited("u1", "trial") == "version"


def test_a_removed_journey_finishes_its_live_users(tmp_path: Path, harness: Harness) -> None:
    """A journey gone from the files keeps running its live instances from the stored version."""
    plan = harness.deploy(workspace(tmp_path, "v2", journey=False))
    assert [(j.name, j.status, [f.action for f in j.fates]) for j in plan.journeys] == [
        ("trial", "removed", ["finish"])]
    harness.wait("5d")
    assert harness.exited("u1", "trial") == "final" and harness.exited("u2", "trial") == "final"
    assert harness.sent("u2") == ["hello", "nudge"]
    harness.track("u3", "Signed Up")
    assert harness.state("u3", "trial") is None  # no one new enters a removed journey


def test_a_plan_that_would_break_pinned_users_is_refused_and_changes_nothing(
        tmp_path: Path, harness: Harness) -> None:
    """Removing the message a pinned version still sends is refused; the running versions stay."""
    without = {k: v for k, v in MESSAGES.items() if k != "nudge"}
    remind = {"send": "bye", "transitions": [{"after": "1d", "to": "done"}]}
    with pytest.raises(PlanRefused, match="state remind sends message `nudge`, which is gone"):
        harness.deploy(workspace(tmp_path, "v2", messages=without, states={**TRIAL["states"], "remind": remind}))
    harness.wait("2d")
    assert harness.sent("u1") == ["hello", "nudge"]


def test_a_deploy_step_in_a_scenario_rehearses_a_migration(tmp_path: Path) -> None:
    """`deploy:` in a scenario applies another workspace at that point of the virtual clock."""
    from journey_engine.simulation import load_scenario, run_scenario

    workspace(tmp_path, "v1")
    renamed = {"waiting": TRIAL["states"]["wait"], "remind": TRIAL["states"]["remind"], "done": {"final": True}}
    workspace(tmp_path, "v2", initial="waiting", states=renamed, on_change="move", moves={"wait": "waiting"})
    scenario = {"scenario": "rename wait", "workspace": "v1", "start": START, "steps": [
        {"track": "u1", "event": "Signed Up"}, {"wait": "1d"}, {"deploy": "v2"},
        {"expect": {"user": "u1", "journey": "trial", "state": "waiting"}}, {"wait": "2d"},
        {"expect": {"user": "u1", "journey": "trial", "state": "remind", "sent": ["hello", "nudge"]}}]}
    path = tmp_path / "rename.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    result = run_scenario(load_scenario(path))
    assert result.passed, [f.describe(str(path)) for f in result.failures]
    assert [r["kind"] for r in result.trace if r["kind"] == "journey_migrated"] == ["journey_migrated"]


def test_journey_plan_exits_0_1_2_and_speaks_json(tmp_path: Path) -> None:
    """`journey plan`: 0 when the plan can be applied, 1 when refused, 2 when the workspace does not load."""
    import json

    from typer.testing import CliRunner

    from adapters.cli import app
    from adapters.storage.sql import SqlStore

    url = f"sqlite:///{tmp_path / 'plan.db'}"
    v1 = workspace(tmp_path, "v1")
    store = SqlStore(url, defaults=dict(v1.metrics.defaults))
    h = Harness(v1, start=START, store=store)
    h.track("u1", "Signed Up")
    h.deploy(v1)  # deployment 1: what u1 runs on
    store.close()
    remind = {"send": "bye", "transitions": [{"after": "1d", "to": "done"}]}
    workspace(tmp_path, "ok", states={**TRIAL["states"], "remind": remind})
    workspace(tmp_path, "refused", messages={k: v for k, v in MESSAGES.items() if k != "nudge"},
              states={**TRIAL["states"], "remind": remind})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "trial.yaml").write_text("version: 1\njourney: trial\n", encoding="utf-8")
    runner = CliRunner()
    ok = runner.invoke(app, ["plan", str(tmp_path / "ok"), "--database", url, "--json"])
    assert ok.exit_code == 0, ok.output
    body = json.loads(ok.stdout)
    assert (body["deployment"], body["appliable"]) == (1, True)
    assert [(f["state"], f["users"], f["action"]) for f in body["journeys"][0]["fates"]] == [("wait", 1, "pinned")]
    refused = runner.invoke(app, ["plan", str(tmp_path / "refused"), "--database", url])
    assert refused.exit_code == 1 and "refused" in refused.stdout
    assert runner.invoke(app, ["plan", str(tmp_path / "broken"), "--database", url]).exit_code == 2


# --- reports per version (issue 18 item 6) --------------------------------------------------------


def test_a_report_reads_each_version_apart_and_all_together(tmp_path: Path, store_factory: StoreFactory) -> None:
    """Pinned: u1 and u2 finish on v1, u3 runs on v2 (a 2-day reminder). Each version's funnel, messages
    and conversions are its own runs'; the journey's totals are all of them; a version is named by its
    first characters, and an unknown or ambiguous one is refused with the versions there are."""
    from adapters.reporting import build_report
    from adapters.reporting.versions import UnknownVersionError

    goal = {"on": "Purchased", "within": "7d"}
    v1 = workspace(tmp_path, "v1", goal=goal)
    h = Harness(v1, start=START, store=store_factory(defaults=dict(v1.metrics.defaults)))
    h.track("u1", "Signed Up")
    h.track("u2", "Signed Up")
    h.wait("1h")
    h.track("u1", "Purchased")
    shorter = {**TRIAL["states"], "wait": {"send": "hello", "transitions": [{"on": "Clicked", "to": "done"},
                                                                            {"after": "2d", "to": "remind"}]}}
    v2 = workspace(tmp_path, "v2", goal=goal, states=shorter)
    h.deploy(v2)
    for user in ("u3", "u4", "u5"):
        h.track(user, "Signed Up")
    h.track("u3", "Purchased")
    h.track("u4", "Clicked")
    h.wait("5d")  # u2 reminded after 3 days (v1), u5 after 2 (v2); both done a day later, u4 on its click
    old, new = v1.journeys["trial"].version, v2.journeys["trial"].version

    def funnel(version: str | None) -> tuple[Any, dict[str, tuple[int, int, int]], dict[str, int]]:
        (report,) = build_report(h.store, v2, "trial", version=version).journeys  # type: ignore[arg-type]
        return (report, {row.state: (row.entered, row.exited["goal"], row.exited["final"]) for row in report.funnel},
                {row.message: row.sent for row in report.messages})

    whole, states_all, sent_all = funnel(None)
    assert (whole.entered, whole.converted, whole.version) == (5, 2, None)
    assert [(v.version, v.entered, v.converted, v.moved_in, v.moved_out) for v in whole.versions] == [
        (old, 2, 1, 0, 0), (new, 3, 1, 0, 0)]
    assert states_all == {"wait": (5, 2, 0), "remind": (2, 0, 0), "done": (3, 0, 3)}
    assert sent_all == {"hello": 5, "nudge": 2}
    first, states_v1, sent_v1 = funnel(old[:4])
    assert (first.entered, first.converted, first.version) == (2, 1, old)
    assert states_v1 == {"wait": (2, 1, 0), "remind": (1, 0, 0), "done": (1, 0, 1)}
    assert sent_v1 == {"hello": 2, "nudge": 1}
    second, states_v2, sent_v2 = funnel(new)
    assert (second.entered, second.converted, second.version) == (3, 1, new)
    assert states_v2 == {"wait": (3, 1, 0), "remind": (1, 0, 0), "done": (2, 0, 2)}
    assert sent_v2 == {"hello": 3, "nudge": 1}
    assert [(v.version, v.entered) for v in second.versions] == [(old, 2), (new, 3)]  # the table lists all
    with pytest.raises(UnknownVersionError, match=f"no run of `trial` was on a version 'zz'; its versions: {old}"):
        build_report(h.store, v2, "trial", version="zz")  # type: ignore[arg-type]
    with pytest.raises(UnknownVersionError, match="name the journey"):
        build_report(h.store, v2, version=old)  # type: ignore[arg-type]


def test_moved_runs_leave_the_old_versions_report_and_join_the_new_ones(tmp_path: Path, harness: Harness) -> None:
    """on_change: move with `moves: {wait: waiting}`: u1 and u2 count in v1 until the move and in v2 from
    `waiting`; the live state counts follow the move."""
    from adapters.reporting import build_report

    renamed = {"waiting": TRIAL["states"]["wait"], "remind": TRIAL["states"]["remind"], "done": {"final": True}}
    v1 = harness.engine.cw
    v2 = workspace(tmp_path, "v2", initial="waiting", states=renamed, on_change="move", moves={"wait": "waiting"})
    harness.deploy(v2)
    harness.wait("2d")  # u1 (entered 3 days ago) reminded in the new version
    old, new = v1.journeys["trial"].version, v2.journeys["trial"].version
    (whole,) = build_report(harness.store, v2, "trial").journeys  # type: ignore[arg-type]
    assert [(v.version, v.entered, v.moved_in, v.moved_out) for v in whole.versions] == [(old, 2, 0, 2),
                                                                                          (new, 0, 2, 0)]
    assert {row.state: (row.entered, row.moved_on, row.now_in) for row in whole.funnel} == {
        "waiting": (2, 1, 1), "remind": (1, 0, 1), "done": (0, 0, 0), "wait": (2, 2, 0)}
    (first,) = build_report(harness.store, v2, "trial", version=old).journeys  # type: ignore[arg-type]
    assert {row.state: (row.entered, row.now_in) for row in first.funnel if row.entered} == {"wait": (2, 0)}
    assert {row.message: row.sent for row in first.messages if row.sent} == {"hello": 2}
    (second,) = build_report(harness.store, v2, "trial", version=new).journeys  # type: ignore[arg-type]
    assert second.entered == 0  # no run started on it; two were moved onto it
    assert {row.state: (row.entered, row.now_in) for row in second.funnel if row.entered} == {
        "waiting": (2, 1), "remind": (1, 1)}
    assert {row.message: row.sent for row in second.messages if row.sent} == {"nudge": 1}


def test_journey_report_version_in_the_terminal(tmp_path: Path) -> None:
    """`journey report trial --version V` prints that version's figures and the versions table; an unknown
    version exits 1 naming the versions there are."""
    from typer.testing import CliRunner

    from adapters.cli import app
    from adapters.storage.sql import SqlStore

    url = f"sqlite:///{tmp_path / 'report.db'}"
    v1 = workspace(tmp_path, "v1")
    store = SqlStore(url, defaults=dict(v1.metrics.defaults))
    h = Harness(v1, start=START, store=store)
    h.track("u1", "Signed Up")
    v2 = workspace(tmp_path, "v2", states={**TRIAL["states"], "remind": {
        "send": "bye", "transitions": [{"after": "1d", "to": "done"}]}})
    h.deploy(v2)
    h.track("u2", "Signed Up")
    store.close()
    new = v2.journeys["trial"].version
    runner = CliRunner()
    shown = runner.invoke(app, ["report", "trial", "--version", new[:6], "--workspace", str(tmp_path / "v2"),
                                "--database", url], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert f"trial · version {new}" in shown.stdout and "versions" in shown.stdout
    lines = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines() if line.strip()}
    assert lines["wait"][:2] == ["1", "1"]  # entered 1, now in 1: u2 only
    unknown = runner.invoke(app, ["report", "trial", "--version", "zz", "--workspace", str(tmp_path / "v2"),
                                  "--database", url])
    assert unknown.exit_code == 1 and "its versions:" in unknown.output
