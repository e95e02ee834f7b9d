"""The one module that imports `transitions`: one machine per journey version, compiled at load.

Users never get a `Machine` or `add_model` of their own (a machine and a model per user cost memory
and time per user: docs/performance.md). An instance is plain data with a `state` attribute; the
engine decides which transition fires, and the journey's machine moves the instance: it runs the
exit callback of the state left, sets the state, and runs the entry callback of the state entered.
Both callbacks hand the work back to a `Driver` (the engine), which does it for this user and call.
`move` fires the `transitions` trigger; `step`, what the engine calls, makes the same move from the
machine's graph resolved at load, at a fraction of the cost.
Every YAML transition is a trigger named `<state>#<index>`; a split's paths, `<state>#<index>split`.
"""

from __future__ import annotations

from typing import Any, Protocol

from transitions import Machine, State

from .model import Journey


class HasState(Protocol):
    state: str


class Driver(Protocol):
    """What the states' callbacks call: the engine, with the working set of its call (`run`, `journey`)."""

    def left(self, instance: Any, run: Any, journey: Any) -> None: ...

    def entered(self, instance: Any, run: Any, journey: Any, source: str, label: str) -> None: ...


def trigger_name(state: str, index: int) -> str:
    return f"{state}#{index}"


SPLIT = "split"


def _on_exit(instance: Any = None, driver: Driver | None = None, *args: Any) -> None:
    if driver is not None:
        driver.left(instance, *args[:2])


def _on_enter(instance: Any = None, driver: Driver | None = None, *args: Any) -> None:
    if driver is not None:
        driver.entered(instance, *args)


class JourneyMachine:
    """A journey's state graph as a `transitions.Machine` shared by every user."""

    def __init__(self, journey: Journey) -> None:
        self.journey = journey
        states = [State(name, on_enter=[_on_enter], on_exit=[_on_exit]) for name in journey.states]
        self._machine: Any = Machine(model=None, states=states, initial=None, auto_transitions=False,
                                     send_event=False)
        for name, state in journey.states.items():
            for index, transition in enumerate(state.transitions):
                self._machine.add_transition(trigger_name(name, index), name, transition.to)
            if state.split is not None:
                for index, path in enumerate(state.split.paths):
                    self._machine.add_transition(trigger_name(name, index) + SPLIT, name, path.to)
        events = self._machine.events
        self._events: dict[tuple[str, int, bool], Any] = {}
        for name, state in journey.states.items():
            for index in range(len(state.transitions)):
                self._events[(name, index, False)] = events[trigger_name(name, index)]
            for index in range(len(state.split.paths) if state.split is not None else 0):
                self._events[(name, index, True)] = events[trigger_name(name, index) + SPLIT]
        # each trigger's one transition, resolved from the machine's own graph
        self._targets = {key: str(event.transitions[key[0]][0].dest) for key, event in self._events.items()}

    def move(self, instance: HasState, state: str, index: int, driver: Driver | None = None, run: Any = None,
             journey: Any = None, label: str = "", *, split: bool = False) -> str:
        """Fire transition `index` of `state` (path `index` of its split) on this instance: the state's exit
        callback, the move, the target's entry callback, each calling `driver` when one is given (with
        `run`, `journey`, and for the entry the state left and `label`, what fired). Returns the new state."""
        event = self._events.get((state, index, split))
        if event is None or instance.state not in event.transitions:
            raise RuntimeError(f"{self.journey.name}: `{instance.state}` has no transition {index}")
        event.trigger(instance, instance, driver, run, journey, instance.state, label)
        return instance.state

    def step(self, instance: HasState, state: str, index: int, driver: Driver, run: Any = None, journey: Any = None,
             label: str = "", *, split: bool = False) -> str:
        """The same move as `move`, from the machine's graph resolved at load, without firing its trigger (the
        engine's path: `transitions` costs more per move than the rest of an event, see docs/performance.md).
        tests/test_machine.py holds the two to the same traces."""
        target = self._targets.get((state, index, split))
        if target is None or instance.state != state:
            raise RuntimeError(f"{self.journey.name}: `{instance.state}` has no transition {index}")
        driver.left(instance, run, journey)
        instance.state = target
        driver.entered(instance, run, journey, state, label)
        return target

    def target(self, state: str, index: int, *, split: bool = False) -> str:
        """Where transition `index` of `state` (path `index` of its split) leads, as the machine has it."""
        return self._targets[(state, index, split)]

    @property
    def states(self) -> list[str]:
        return list(self._machine.states)
