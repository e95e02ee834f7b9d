"""The working set of one call (`Run`) and each journey compiled into what the engine asks of it on every
input (`Plan`, `StatePlan`), built once at load."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..compiler import CompiledJourney, CompiledTransition, CompiledTrigger
from ..events import Event
from ..model import Choose, Message, State, Transition
from ..profile import Deferred, InstanceKey, Profile
from .values import Outcome


class Run:
    """The working set of one call: the profile, the clock, the evaluation scope, what happened."""

    __slots__ = ("changed", "current", "due", "entered", "event", "follow", "made", "now", "out", "profile", "scope",
                 "split_next", "steps")

    def __init__(self, profile: Profile, now: datetime, event: Event | None = None) -> None:
        self.profile = profile
        self.now = now
        self.due = now  # when the step at work should have happened: its sends expire from then ...
        self.current = now  # ... against the time it really is (later than `now` when catching up)
        self.event = event
        self.out = Outcome()
        self.changed = False
        self.entered: set[str] = set()
        self.made: list[Deferred] | None = None  # sends deferred by this call: leaving their state now keeps them
        # an arrival in progress: states entered in a row, and what the state just entered moves on to at once
        self.steps = 0
        self.follow: CompiledTransition | None = None
        self.split_next = False
        # `metrics` reads the stored values, the rule accessor supplies defaults; `segments` is replaced
        # by SegmentBook.evaluate whenever membership changes (it is a tuple)
        self.scope: dict[str, Any] = {"traits": profile.traits, "metrics": profile.metric_values,
                                      "segments": profile.segments, "user_id": profile.user_id}
        if event is not None:
            self.scope["event"] = {"name": event.name, "properties": event.properties,
                                   "timestamp": event.timestamp}
            self.scope["properties"] = event.properties


@dataclass(frozen=True, slots=True)
class StatePlan:
    """One state's transitions sorted by how they fire, once at load (the hot path never re-sorts).

    The engine picks the transition that fires from these; the journey's machine (cj.machine) moves the
    instance (journeys.py).
    """

    spec: State
    checks: tuple[CompiledTransition, ...]  # on / segment / if / always, in file order
    timers: tuple[tuple[int, Transition], ...]  # after / at, with their index
    clock_rules: tuple[CompiledTransition, ...]  # `if` rules that read $now: they need a wake-up
    candidates: tuple[str, ...]  # the messages `send` names
    choose: str | None  # first / random / best, or None: send every eligible candidate


@dataclass(frozen=True, slots=True)
class Plan:
    """A compiled journey with what the engine asks of it on every input, precomputed."""

    cj: CompiledJourney
    name: str
    key_prop: str | None
    states: dict[str, StatePlan]
    reads_journey: bool  # exits, goal or transitions read `journey.*`: _check must set the scope
    ikey: InstanceKey  # the unkeyed instance's key, one tuple shared by every profile
    entry_on: str | None
    entry_segment: str | None
    exits_on: dict[str, tuple[CompiledTrigger, ...]]  # exit criteria an event of that name may meet
    exits_changed: tuple[CompiledTrigger, ...]  # segment and rule exits: whenever something changed
    clock_triggers: tuple[CompiledTrigger, ...]  # exit and goal rules that read $now: they need a wake-up
    clock_entry: CompiledTrigger | None  # an `if:` entry that reads $now, likewise for users not in it

    @classmethod
    def of(cls, cj: CompiledJourney, messages: dict[str, Message]) -> Plan:
        states = {}
        for name, spec in cj.journey.states.items():
            compiled = cj.transitions[name]
            states[name] = StatePlan(
                spec=spec,
                checks=tuple(t for t in compiled if t.kind not in ("after", "at")),
                timers=tuple((i, t) for i, t in enumerate(spec.transitions) if t.kind in ("after", "at")),
                clock_rules=tuple(t for t in compiled if t.rule is not None and t.rule.now and t.kind == "if"),
                # a send list is tried in descending priority, list order on a tie (SPEC §3 item 11)
                candidates=tuple(spec.candidates) if isinstance(spec.send, Choose) else tuple(
                    sorted(spec.candidates, key=lambda m: -messages[m].priority if m in messages else 0)),
                choose=spec.send.choose if isinstance(spec.send, Choose) else None)
        triggers = (*cj.exits, *((cj.goal,) if cj.goal else ()))
        rules = [t.rule for t in triggers] + [t.rule for ts in cj.transitions.values() for t in ts]
        return cls(cj=cj, name=cj.name, key_prop=cj.journey.entry.key, states=states,
                   reads_journey=any(r is not None and r.journey for r in rules), ikey=(cj.name, ""),
                   entry_on=cj.entry.on, entry_segment=cj.entry.segment,
                   exits_on={e.on: tuple(x for x in cj.exits if x.on == e.on) for e in cj.exits if e.on},
                   exits_changed=tuple(x for x in cj.exits if x.on is None),
                   clock_triggers=tuple(t for t in triggers if t.on is None and t.rule is not None and t.rule.now),
                   clock_entry=cj.entry if cj.entry.on is None and cj.entry.segment is None
                   and cj.entry.rule is not None and cj.entry.rule.now else None)

    def exits(self, run: Run, event: Event | None) -> tuple[CompiledTrigger, ...]:
        """The exit criteria that may fire on this input (any one that does ends the instance)."""
        on = self.exits_on.get(event.name) if event is not None and event.name is not None else None
        if not run.changed:
            return on or ()
        return self.exits_changed + on if on else self.exits_changed

    def may_enter(self, run: Run, event: Event | None) -> bool:
        """The cheap half of entry: the trigger kind matches this input (the rest is in Engine._enter)."""
        if self.entry_on is not None:
            return event is not None and event.name == self.entry_on
        if self.entry_segment is not None:
            return self.entry_segment in run.entered
        return run.changed
