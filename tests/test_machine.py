"""The journey's shared `transitions` machine moves instances and runs the states' exit and entry callbacks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from journey_engine import load_scenario, run_scenario
from journey_engine.machine import JourneyMachine
from journey_engine.model import Journey
from journey_engine.profile import Instance

ROOT = Path(__file__).resolve().parent.parent / "journeys"


class Recorder:
    """A driver that notes each callback with the state the instance is in when it runs."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def left(self, instance: Any, run: Any, journey: Any) -> None:
        self.calls.append(("left", instance.state, run, journey))

    def entered(self, instance: Any, run: Any, journey: Any, source: str, label: str) -> None:
        self.calls.append(("entered", instance.state, run, journey, source, label))


def _journey() -> Journey:
    return Journey.model_validate({
        "name": "j", "file": "j.yaml", "entry": {"on": "Go"}, "initial": "a",
        "states": {"a": {"transitions": [{"on": "Next", "to": "b"}, {"after": "1d", "to": "a"}]},
                   "b": {"split": {"paths": [{"to": "a", "weight": 1}, {"to": "c", "weight": 1}]}},
                   "c": {"final": True}}})


def _instance(state: str) -> Instance:
    return Instance(journey="j", version="1", key="", state=state, entered_at=datetime(2026, 1, 1, tzinfo=UTC),
                    data={}, holdout=False)


def test_a_move_runs_the_exit_then_sets_the_state_then_runs_the_entry() -> None:
    """The driver sees the exit while the instance is still in the old state, the entry once it is in the new."""
    machine, driver, inst = JourneyMachine(_journey()), Recorder(), _instance("a")
    assert machine.move(inst, "a", 0, driver, "RUN", "CJ", "event:Next") == "b"
    assert driver.calls == [("left", "a", "RUN", "CJ"), ("entered", "b", "RUN", "CJ", "a", "event:Next")]


def test_a_self_transition_leaves_and_enters_the_same_state() -> None:
    """A transition back to the state it starts from is a fresh visit: exit and entry both run."""
    machine, driver, inst = JourneyMachine(_journey()), Recorder(), _instance("a")
    assert machine.move(inst, "a", 1, driver, None, None, "after") == "a"
    assert [c[0] for c in driver.calls] == ["left", "entered"]


def test_a_split_path_is_a_move_of_its_own() -> None:
    """Split paths are triggers too, apart from the state's transitions of the same index."""
    machine, driver, inst = JourneyMachine(_journey()), Recorder(), _instance("b")
    assert machine.move(inst, "b", 1, driver, None, None, "split", split=True) == "c"
    assert machine.target("b", 0, split=True) == "a"
    assert driver.calls[-1] == ("entered", "c", None, None, "b", "split")


def test_a_move_the_state_does_not_have_is_refused_and_changes_nothing() -> None:
    """Firing a transition of another state raises and leaves the instance where it was, no callback run."""
    machine, driver, inst = JourneyMachine(_journey()), Recorder(), _instance("c")
    with pytest.raises(RuntimeError, match="`c` has no transition 0"):
        machine.move(inst, "a", 0, driver)
    assert inst.state == "c"
    assert driver.calls == []


SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_the_engine_moves_instances_through_the_machine(monkeypatch: pytest.MonkeyPatch, scenario: Path) -> None:
    """Every transition traced in an example scenario was made by the journey's machine, split paths included."""
    moves: list[tuple[str, int, bool]] = []
    original = JourneyMachine.step

    def counting(self: JourneyMachine, instance: Any, state: str, index: int, *args: Any, split: bool = False) -> str:
        moves.append((state, index, split))
        return original(self, instance, state, index, *args, split=split)

    monkeypatch.setattr(JourneyMachine, "step", counting)
    result = run_scenario(load_scenario(scenario))
    transitions = [r for r in result.trace if r["kind"] == "transition"]
    assert len(moves) == len(transitions)
    assert [m[2] for m in moves] == [r["trigger"] == "split" for r in transitions]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.stem)
def test_the_resolved_step_traces_what_firing_the_transitions_trigger_traces(monkeypatch: pytest.MonkeyPatch,
                                                                           scenario: Path) -> None:
    """`step` (the machine's graph resolved at load) and `move` (the `transitions` trigger and the states'
    callbacks) give every example scenario the same trace, record for record."""
    stepped = run_scenario(load_scenario(scenario)).trace
    monkeypatch.setattr(JourneyMachine, "step", JourneyMachine.move)
    moved = run_scenario(load_scenario(scenario)).trace
    assert moved == stepped


def test_step_refuses_a_move_the_state_does_not_have() -> None:
    """Like `move`, `step` raises for a transition of another state and leaves the instance where it was."""
    machine, driver, inst = JourneyMachine(_journey()), Recorder(), _instance("c")
    with pytest.raises(RuntimeError, match="`c` has no transition 0"):
        machine.step(inst, "a", 0, driver)
    assert inst.state == "c"
    assert driver.calls == []


def test_step_calls_the_driver_as_move_does() -> None:
    """`step` runs the same exit and entry callbacks, with the same arguments, in the same order as `move`."""
    machine = JourneyMachine(_journey())
    by_move, by_step = Recorder(), Recorder()
    for driver, how in ((by_move, machine.move), (by_step, machine.step)):
        inst = _instance("a")
        how(inst, "a", 0, driver, "RUN", "CJ", "event:Next")
        how(inst, "b", 1, driver, "RUN", "CJ", "split", split=True)
    assert by_step.calls == by_move.calls
