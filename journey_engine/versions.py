"""Versions of a journey, and the plan of applying a workspace over what is live (SPEC §3, "Changing a
live workspace").

A journey's version is a hash of its definition (`Journey.version`). The store keeps every version
that has live instances, as the definition's JSON (`definition`, `restore`), so a journey edited or
removed from the files still finishes its runs. `plan` compares the workspace with the versions in
force and the live instances per state, and says for each state what applying it does: instances
stay pinned to their version (`on_change: keep`, the default), move to the new version in the state
of the same name or as `moves:` maps it, or exit with reason `version` (a state gone and not mapped).
A plan is refused when applying it would leave a live version unable to run (a message, segment or
rule it needs is gone from the workspace) or would move instances where they cannot go.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .model import AttributeTime, Choose, Journey, Transition, Trigger
from .rules import RuleCompiler, RuleProblem

Action = Literal["stay", "pinned", "move", "exit", "finish"]


def definition(journey: Journey) -> str:
    """The journey's definition as the store keeps it: JSON that `restore` reads back, same version."""
    return journey.model_dump_json(by_alias=True, exclude={"file"})


def restore(text: str, *, file: str = "(stored version)") -> Journey:
    """A journey version back from its stored definition."""
    return Journey.model_validate({**json.loads(text), "file": file})


# --- what changed ---------------------------------------------------------------------------------


def transition_id(transition: Transition) -> str:
    """A transition named by what fires it and where it goes: `after 3d -> remind`, `on Clicked -> done`.
    Timers keep this name, not a position in a list, so an edit elsewhere in the state cannot redirect
    them; a changed trigger or target is a different transition."""
    return f"{trigger_text(transition)} -> {transition.to}"


def trigger_text(t: Trigger | Transition) -> str:
    from .graph import format_duration

    guard = f" if {t.if_}" if t.if_ is not None else ""
    if t.on is not None:
        return f"on {t.on}{guard}"
    if t.segment is not None:
        return f"segment {t.segment}{guard}"
    if isinstance(t, Transition) and t.after is not None:
        return f"after {format_duration(t.after)}"
    if isinstance(t, Transition) and isinstance(t.at, AttributeTime):
        offset = t.at.offset
        return f"at {t.at.attribute}" + (f" {'+' if offset.total_seconds() > 0 else ''}{format_duration(offset)}"
                                         if offset else "")
    if isinstance(t, Transition) and t.at is not None:
        return f"at {t.at}"
    return f"if {t.if_}" if t.if_ is not None else "always"


def transition_ids(transitions: list[Transition]) -> list[str]:
    """Each transition's id; a repeat of the same trigger and target in one state gets `#2`, `#3`."""
    seen: dict[str, int] = {}
    ids = []
    for t in transitions:
        base = transition_id(t)
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base} #{seen[base]}")
    return ids


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two versions of a journey, as a marketer reads it."""

    part: str  # journey, entry, exit, goal, holdout, initial, state, transition, timer, send
    text: str


def _send_text(state: Any) -> str:
    send = state.send
    if send is None:
        return "nothing"
    if isinstance(send, Choose):
        return f"choose {send.choose} from {', '.join(send.from_)}"
    return send if isinstance(send, str) else ", ".join(send)


def _triggers(journey: Journey) -> dict[str, str]:
    found = {"entry": trigger_text(journey.entry)}
    for i, c in enumerate(journey.exit):
        found[f"exit {i + 1}"] = trigger_text(c)
    if journey.goal is not None:
        found["goal"] = trigger_text(journey.goal)
    return found


def changes(old: Journey | None, new: Journey | None) -> list[Change]:
    """What differs from `old` to `new` (either may be None: an added or a removed journey)."""
    if old is None or new is None:
        return []  # an added or removed journey: its status says so
    found: list[Change] = []
    a, b = _triggers(old), _triggers(new)
    for part in sorted(set(a) | set(b)):
        if a.get(part) != b.get(part):
            kind = part.split()[0]
            found.append(Change(kind, f"{part}: {a.get(part, '(none)')} → {b.get(part, '(none)')}"))
    if old.entry.key != new.entry.key or old.entry.reentry != new.entry.reentry:
        found.append(Change("entry", f"entry key/re-entry: {old.entry.key}/{old.entry.reentry!s} → "
                                     f"{new.entry.key}/{new.entry.reentry!s}"))
    if old.holdout != new.holdout:
        found.append(Change("holdout", f"holdout {old.holdout:.0%} → {new.holdout:.0%}"))
    if old.initial != new.initial:
        found.append(Change("initial", f"initial state {old.initial} → {new.initial}"))
    renamed = {a: b for a, b in new.moves.items() if a in old.states and a not in new.states and b in new.states}
    for name in old.states:
        if name in renamed:
            found.append(Change("state", f"state {name} is now {renamed[name]} (moves)"))
        elif name not in new.states:
            found.append(Change("state", f"state {name} removed"))
    for name in new.states:
        if name not in old.states and name not in renamed.values():
            found.append(Change("state", f"state {name} added"))
    for name in old.states:
        if name in new.states or name in renamed:
            found.extend(_state_changes(name, old.states[name], new.states[renamed.get(name, name)]))
    return found


def _state_changes(name: str, old: Any, new: Any) -> Iterator[Change]:
    if _send_text(old) != _send_text(new):
        yield Change("send", f"state {name} sends {_send_text(new)} (was {_send_text(old)})")
    if old.final != new.final:
        yield Change("state", f"state {name} is {'now' if new.final else 'no longer'} final")
    before, after = transition_ids(old.transitions), transition_ids(new.transitions)
    timers = {transition_id(t) for t in (*old.transitions, *new.transitions) if t.kind in ("after", "at")}
    for tid in before:
        if tid not in after:
            yield Change("timer" if tid in timers else "transition", f"state {name}: {tid} removed")
    for tid in after:
        if tid not in before:
            yield Change("timer" if tid in timers else "transition", f"state {name}: {tid} added")
    kept = [t for t in before if t in after]
    if kept != [t for t in after if t in before]:
        yield Change("transition", f"state {name}: transitions reordered (the first that holds fires)")
    if old.split != new.split:
        yield Change("transition", f"state {name}: split changed")


# --- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fate:
    """What applying the workspace does to the live instances of one version in one state."""

    version: str
    state: str
    users: int
    action: Action  # stay (already on the new version), pinned, move, exit (reason `version`), finish
    to: str | None = None  # the new state, for a move


@dataclass(frozen=True, slots=True)
class JourneyPlan:
    name: str
    status: Literal["added", "removed", "changed", "unchanged"]
    version: str | None  # the workspace's version; None for a removed journey
    in_force: str | None  # the version new entrants took until now; None for a journey never applied
    on_change: str
    changes: list[Change] = field(default_factory=list)
    fates: list[Fate] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Plan:
    journeys: list[JourneyPlan]

    @property
    def appliable(self) -> bool:
        return not any(j.refusals for j in self.journeys)

    @property
    def refusals(self) -> list[str]:
        return [f"{j.name}: {r}" for j in self.journeys for r in j.refusals]

    @property
    def changed(self) -> list[JourneyPlan]:
        return [j for j in self.journeys if j.status != "unchanged"]

    def as_json(self) -> dict[str, Any]:
        return {"appliable": self.appliable, "refusals": self.refusals,
                "journeys": [asdict(j) for j in self.journeys]}


Check = Callable[[Journey], list[str]]


def plan(workspace: Mapping[str, Journey], in_force: Mapping[str, str],
         stored: Mapping[tuple[str, str], Journey], live: Mapping[tuple[str, str, str], int],
         check: Check) -> Plan:
    """The plan of applying `workspace` (journeys by name) over a store whose new entrants take the
    versions `in_force` (journey -> version), which keeps the definitions `stored` ((journey, version)
    -> Journey) and has `live` instances ((journey, version, state) -> count). `check` says why a
    stored version could not run beside this workspace (empty: it can)."""
    names = sorted(set(workspace) | set(in_force) | {j for j, _, _ in live})
    return Plan([_journey_plan(n, workspace.get(n), in_force.get(n), stored, live, check) for n in names])


def _journey_plan(name: str, new: Journey | None, in_force: str | None,
                  stored: Mapping[tuple[str, str], Journey], live: Mapping[tuple[str, str, str], int],
                  check: Check) -> JourneyPlan:
    old = stored.get((name, in_force)) if in_force is not None else None
    version = new.version if new is not None else None
    if new is None:
        status: Literal["added", "removed", "changed", "unchanged"] = "removed"
    elif in_force is None:
        status = "added"
    else:
        status = "unchanged" if in_force == version else "changed"
    on_change = new.on_change if new is not None else "keep"
    found = [] if status == "unchanged" else changes(old, new)
    if status == "changed" and old is None:
        found = [Change("journey", f"the version in force ({in_force}) is not stored: its changes cannot be shown")]
    result = JourneyPlan(name=name, status=status, version=version, in_force=in_force, on_change=on_change,
                         changes=found)
    counts = sorted(((v, s, n) for (j, v, s), n in live.items() if j == name and n > 0))
    for v, state, users in counts:
        result.fates.append(_fate(new, v, state, users, known=(name, v) in stored))
    unknown = sorted({v for v, _, _ in counts if (name, v) not in stored and v != version})
    if unknown:
        result.warnings.append(f"instances on version(s) {', '.join(unknown)}, from before versions were stored, "
                               "continue on the version in force in the state of the same name")
    _refuse(result, new, stored, check)
    if new is not None and new.moves:
        live_states = {s for v, s, _ in counts} | (set(old.states) if old is not None else set())
        for source in sorted(new.moves):
            if source not in live_states:
                result.warnings.append(f"moves: `{source}` is not a state of a live version; the entry does nothing")
    return result


def _fate(new: Journey | None, version: str, state: str, users: int, *, known: bool) -> Fate:
    """`known`: the version's definition is stored. One that is not (instances from before versions were
    stored) cannot stay pinned: it goes on in the new version's state of the same name, or exits."""
    if new is None:
        return Fate(version, state, users, "finish" if known else "exit")
    if version == new.version:
        return Fate(version, state, users, "stay")
    if new.on_change == "keep" and known:
        return Fate(version, state, users, "pinned")
    to = new.moves.get(state, state) if known else state
    if to in new.states:
        return Fate(version, state, users, "move", to)
    return Fate(version, state, users, "exit")


def _refuse(result: JourneyPlan, new: Journey | None, stored: Mapping[tuple[str, str], Journey],
            check: Check) -> None:
    running = sorted({f.version for f in result.fates if f.action in ("pinned", "finish")})
    for version in running:
        definition = stored[(result.name, version)]  # a version not stored is never pinned (see _fate)
        for problem in check(definition):
            result.refusals.append(f"version {version}, still running for its live instances: {problem}")
    if new is None:
        return
    for version in sorted({f.version for f in result.fates if f.action == "move"}):
        before = stored.get((result.name, version))
        if before is not None and before.entry.key != new.entry.key:
            result.refusals.append(f"on_change: move cannot carry instances keyed by "
                                   f"`{before.entry.key or '(no key)'}` (version {version}) into a journey "
                                   f"keyed by `{new.entry.key or '(no key)'}`; keep them pinned or rename the journey")
    for source, target in sorted(new.moves.items()):
        if target not in new.states:
            result.refusals.append(f"moves: `{source}` -> `{target}`: no state `{target}` in the new version")


def runnable(messages: Mapping[str, Any], segments: Mapping[str, Any], metrics: Mapping[str, Any]) -> Check:
    """A check of a stored version against a workspace's messages, segments and metrics: what it sends,
    the segments it names and the rules it reads must all still be there."""
    compiler = RuleCompiler(metrics, set(segments))

    def check(journey: Journey) -> list[str]:
        problems = []
        for state_name, state in journey.states.items():
            for message in _candidates(state):
                if message not in messages:
                    problems.append(f"state {state_name} sends message `{message}`, which is gone")
        for where, t in _all_triggers(journey):
            if t.segment is not None and t.segment not in segments:
                problems.append(f"{where} reads segment `{t.segment}`, which is gone")
            if t.if_ is not None:
                try:
                    compiler.compile(t.if_)
                except RuleProblem as exc:
                    problems.append(f"{where}: rule `{t.if_}` no longer compiles: {exc}")
        return problems

    return check


def _candidates(state: Any) -> list[str]:
    return list(state.candidates)


def _all_triggers(journey: Journey) -> Iterator[tuple[str, Trigger | Transition]]:
    yield "entry", journey.entry
    for i, c in enumerate(journey.exit):
        yield f"exit {i + 1}", c
    if journey.goal is not None:
        yield "goal", journey.goal
    for name, state in journey.states.items():
        for tid, t in zip(transition_ids(state.transitions), state.transitions, strict=True):
            yield f"state {name}, transition {tid}", t
