"""The one module that imports `transitions`: one machine per journey version, compiled at load.

Users never get a `Machine` or `add_model` of their own (39 KB and O(n) per user, see NOTES.md).
An instance is plain data with a `state` attribute; the machine moves it when the engine has
decided which transition fires. Every YAML transition is a trigger named `<state>#<index>`.
"""

from __future__ import annotations

from typing import Any, Protocol

from transitions import Machine

from .model import Journey


class HasState(Protocol):
    state: str


def trigger_name(state: str, index: int) -> str:
    return f"{state}#{index}"


SPLIT = "split"


class JourneyMachine:
    """A journey's state graph as a `transitions.Machine` shared by every user."""

    def __init__(self, journey: Journey) -> None:
        self.journey = journey
        self._machine: Any = Machine(model=None, states=list(journey.states), initial=None,
                                     auto_transitions=False, send_event=False)
        for name, state in journey.states.items():
            for index, transition in enumerate(state.transitions):
                self._machine.add_transition(trigger_name(name, index), name, transition.to)
            if state.split is not None:
                for index, path in enumerate(state.split.paths):
                    self._machine.add_transition(trigger_name(name, index) + SPLIT, name, path.to)

    def move(self, instance: HasState, state: str, index: int, *, split: bool = False) -> str:
        """Fire transition `index` of `state` on this instance; return the new state."""
        event = self._machine.events[trigger_name(state, index) + (SPLIT if split else "")]
        if instance.state not in event.transitions:
            raise RuntimeError(f"{self.journey.name}: `{instance.state}` has no transition {index}")
        event.trigger(instance)
        return instance.state

    @property
    def states(self) -> list[str]:
        return list(self._machine.states)
