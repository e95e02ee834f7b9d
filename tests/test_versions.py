"""Versions of a journey and the plan of applying a workspace over live instances (SPEC §3, "Changing a
live workspace"): the pure part, without a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from journey_engine.compiler import load_workspace
from journey_engine.errors import WorkspaceError
from journey_engine.model import Journey
from journey_engine.versions import (
    Fate,
    changes,
    definition,
    plan,
    restore,
    runnable,
    transition_ids,
)

BASE: dict[str, Any] = {
    "journey": "trial", "entry": {"on": "Signed Up"}, "initial": "wait",
    "states": {"wait": {"send": "hello", "transitions": [{"on": "Clicked", "to": "done"},
                                                         {"after": "3d", "to": "remind"}]},
               "remind": {"send": "nudge", "transitions": [{"after": "1d", "to": "done"}]},
               "done": {"final": True}},
}
SHARED = {"version": 1, "messages": {"hello": {"channel": "sms", "body": "hi"},
                                     "nudge": {"channel": "sms", "body": "come back"}},
          "policies": {"timezone": "UTC"}}


def journey(tmp_path: Path, **edits: Any) -> Journey:
    """The BASE journey with top-level keys replaced, loaded through the real loader."""
    folder = tmp_path / f"ws{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / "shared.yaml").write_text(yaml.safe_dump(SHARED), encoding="utf-8")
    doc = {"version": 1, **BASE, **edits}
    (folder / "trial.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    return load_workspace(folder).journeys["trial"].journey


def test_a_stored_definition_reads_back_as_the_same_version(tmp_path: Path) -> None:
    """definition/restore round-trip a journey without changing its version."""
    j = journey(tmp_path)
    back = restore(definition(j))
    assert back.version == j.version
    assert back.states == j.states


def test_on_change_and_moves_are_not_part_of_the_version(tmp_path: Path) -> None:
    """Saying what to do with live instances does not make a new version."""
    assert journey(tmp_path).version == journey(tmp_path, on_change="move", moves={"wait": "remind"}).version


def test_transitions_are_named_by_trigger_and_target() -> None:
    """A transition's id names what fires it and where it goes; a repeat in one state gets a number."""
    base = {k: v for k, v in BASE.items() if k != "journey"}
    wait = {"transitions": [
        {"on": "Clicked", "if": "traits.vip == true", "to": "done"}, {"after": "3d", "to": "remind"},
        {"at": {"attribute": "traits.trial_ends_at", "offset": "-1d"}, "to": "done"}, {"at": "09:00", "to": "done"},
        {"to": "done"}, {"to": "done"}]}
    j = Journey.model_validate({**base, "name": "trial", "file": "x", "states": {**BASE["states"], "wait": wait}})
    assert transition_ids(j.states["wait"].transitions) == [
        "on Clicked if traits.vip == true -> done", "after 3d -> remind", "at traits.trial_ends_at -1d -> done",
        "at 09:00 -> done", "always -> done", "always -> done #2"]


def test_changes_name_states_timers_sends_and_triggers(tmp_path: Path) -> None:
    """A renamed state, a changed timer, a new message and a changed entry each read as one change."""
    old = journey(tmp_path)
    states = {"waiting": BASE["states"]["wait"] | {"send": "nudge"},
              "remind": {"send": "nudge", "transitions": [{"after": "2d", "to": "done"}]},
              "done": {"final": True}}
    new = journey(tmp_path, initial="waiting", states=states, entry={"on": "Trial Started"})
    assert [(c.part, c.text) for c in changes(old, new)] == [
        ("entry", "entry: on Signed Up → on Trial Started"),
        ("initial", "initial state wait → waiting"),
        ("state", "state wait removed"),
        ("state", "state waiting added"),
        ("timer", "state remind: after 1d -> done removed"),
        ("timer", "state remind: after 2d -> done added"),
    ]


def test_inserting_a_transition_above_a_timer_is_an_addition_not_a_redirection(tmp_path: Path) -> None:
    """The timer keeps its name when a transition is inserted above it; only the new one is a change."""
    old = journey(tmp_path)
    above = [{"on": "Coupon Used", "to": "done"}, *BASE["states"]["wait"]["transitions"]]
    wait = {"send": "hello", "transitions": above}
    new = journey(tmp_path, states={**BASE["states"], "wait": wait})
    assert [c.text for c in changes(old, new)] == ["state wait: on Coupon Used -> done added"]


def _plan(tmp_path: Path, new: Journey | None, live: dict[tuple[str, str], int], *, old: Journey | None = None,
          messages: tuple[str, ...] = ("hello", "nudge")) -> Any:
    old = old or journey(tmp_path)
    workspace = {"trial": new} if new is not None else {}
    stored = {("trial", old.version): old}
    if new is not None:
        stored[("trial", new.version)] = new
    counts = {("trial", version, state): n for (version, state), n in live.items()}
    check = runnable({m: None for m in messages}, {}, {})
    return plan(workspace, {"trial": old.version}, stored, counts, check)


def test_pinned_by_default_every_live_state_stays_on_its_version(tmp_path: Path) -> None:
    """Without on_change, live instances keep their version; the plan can be applied."""
    old = journey(tmp_path)
    new = journey(tmp_path, states={**BASE["states"], "remind": {"send": "nudge",
                                                                 "transitions": [{"after": "2d", "to": "done"}]}})
    p = _plan(tmp_path, new, {(old.version, "wait"): 3, (old.version, "remind"): 2}, old=old)
    (jp,) = p.journeys
    assert (jp.status, jp.on_change, p.appliable) == ("changed", "keep", True)
    assert jp.fates == [Fate(old.version, "remind", 2, "pinned"), Fate(old.version, "wait", 3, "pinned")]


def test_move_follows_names_and_moves_and_exits_what_is_gone(tmp_path: Path) -> None:
    """on_change: move carries each state to its namesake or its mapping; a gone, unmapped state exits."""
    old = journey(tmp_path)
    states = {"waiting": BASE["states"]["wait"], "done": {"final": True},
              "remind": BASE["states"]["remind"]}
    old2 = journey(tmp_path, states={**BASE["states"], "extra": {"final": True},
                                     "remind": {"send": "nudge", "transitions": [{"after": "1d", "to": "done"},
                                                                                 {"on": "Skip", "to": "extra"}]}})
    new = journey(tmp_path, initial="waiting", states=states, on_change="move", moves={"wait": "waiting"})
    live = {(old.version, "wait"): 4, (old.version, "remind"): 1, (old2.version, "extra"): 2}
    p = plan({"trial": new}, {"trial": old.version},
             {("trial", old.version): old, ("trial", old2.version): old2, ("trial", new.version): new},
             {("trial", v, s): n for (v, s), n in live.items()}, runnable({"hello": 1, "nudge": 1}, {}, {}))
    fates = {(f.version, f.state): (f.action, f.to) for f in p.journeys[0].fates}
    assert fates == {(old.version, "wait"): ("move", "waiting"), (old.version, "remind"): ("move", "remind"),
                     (old2.version, "extra"): ("exit", None)}
    assert p.appliable


def test_a_pinned_version_whose_message_is_gone_is_refused(tmp_path: Path) -> None:
    """Removing a message that a pinned version still sends would break its live users: refused."""
    old = journey(tmp_path)
    new = journey(tmp_path, states={**BASE["states"], "remind": {"transitions": [{"after": "1d", "to": "done"}]}})
    p = _plan(tmp_path, new, {(old.version, "remind"): 1}, old=old, messages=("hello",))
    assert not p.appliable
    assert p.refusals == [f"trial: version {old.version}, still running for its live instances: "
                          "state remind sends message `nudge`, which is gone"]


def test_a_removed_journey_finishes_its_live_instances(tmp_path: Path) -> None:
    """A journey gone from the files finishes on its stored version."""
    old = journey(tmp_path)
    p = _plan(tmp_path, None, {(old.version, "wait"): 5}, old=old)
    (jp,) = p.journeys
    assert (jp.status, jp.fates, p.appliable) == ("removed", [Fate(old.version, "wait", 5, "finish")], True)


def test_moving_keyed_instances_into_a_differently_keyed_journey_is_refused(tmp_path: Path) -> None:
    """Instances keyed by cart cannot continue in a journey keyed by something else."""
    old = journey(tmp_path, entry={"on": "Signed Up", "key": "cartId"})
    new = journey(tmp_path, entry={"on": "Signed Up", "key": "orderId"}, on_change="move")
    p = _plan(tmp_path, new, {(old.version, "wait"): 1}, old=old)
    assert not p.appliable
    assert "keyed by `cartId`" in p.refusals[0] and "keyed by `orderId`" in p.refusals[0]


def test_moves_to_an_unknown_state_is_a_load_error_at_its_line(tmp_path: Path) -> None:
    """`moves:` must name states of the new version: validate says where and what to do."""
    with pytest.raises(WorkspaceError) as caught:
        journey(tmp_path, on_change="move", moves={"wait": "wiat"})
    (problem,) = caught.value.problems
    assert problem.file.endswith("trial.yaml") and "unknown state `wiat`" in problem.message


def test_instances_from_before_versions_take_the_version_in_force(tmp_path: Path) -> None:
    """A live version whose definition was never stored goes on in the new version by state name."""
    new = journey(tmp_path)
    p = plan({"trial": new}, {}, {}, {("trial", "0ld", "wait"): 2, ("trial", "0ld", "gone"): 1},
             runnable({"hello": 1, "nudge": 1}, {}, {}))
    (jp,) = p.journeys
    assert jp.status == "added" and p.appliable
    assert jp.fates == [Fate("0ld", "gone", 1, "exit"), Fate("0ld", "wait", 2, "move", "wait")]
    assert "from before versions were stored" in jp.warnings[0]


def test_a_state_renamed_through_moves_reads_as_a_rename_with_its_own_changes(tmp_path: Path) -> None:
    """`moves: {wait: waiting}` shows the rename, and what changed inside the renamed state."""
    old = journey(tmp_path)
    waiting = {"send": "hello", "transitions": [{"on": "Clicked", "to": "done"}, {"after": "2d", "to": "remind"}]}
    new = journey(tmp_path, initial="waiting", states={**{k: v for k, v in BASE["states"].items() if k != "wait"},
                                                       "waiting": waiting}, on_change="move", moves={"wait": "waiting"})
    assert [c.text for c in changes(old, new)] == [
        "initial state wait → waiting", "state wait is now waiting (moves)",
        "state wait: after 3d -> remind removed", "state wait: after 2d -> remind added"]
