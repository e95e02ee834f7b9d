"""Models -> runtime: rules compiled, machines built, metrics and segments indexed, once per load.

`load_workspace` is the one entry point: read every file, compile every rule, lint the whole, and
raise WorkspaceError with every problem at once, or return a `CompiledWorkspace` ready to run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import Problem, WorkspaceError
from .loading import PathKey, Workspace, read_workspace
from .machine import JourneyMachine
from .metrics import MetricBook
from .model import Journey, Message, Translation, Trigger
from .ruleanalysis import EVERY_METRIC, Threshold
from .rules import CompiledRule, RuleCompiler, RuleProblem, UnknownDeclaration
from .segments import SegmentBook
from .templates import Renderer
from .validation import lint, segment_cycles

_RuleFn = Callable[[str | None, str, str, PathKey], CompiledRule | None]


@dataclass(frozen=True, slots=True)
class CompiledTrigger:
    """Entry, exit or goal: an event name, a segment, and/or a rule."""

    on: str | None
    segment: str | None
    rule: CompiledRule | None


@dataclass(frozen=True, slots=True)
class CompiledTransition:
    index: int
    kind: str  # on | segment | if | after | at | always
    to: str
    on: str | None
    segment: str | None
    rule: CompiledRule | None


@dataclass(frozen=True, slots=True)
class CompiledJourney:
    journey: Journey
    machine: JourneyMachine
    version: str
    entry: CompiledTrigger
    exits: tuple[CompiledTrigger, ...]
    goal: CompiledTrigger | None
    transitions: dict[str, tuple[CompiledTransition, ...]]
    name: str  # journey.name, read on every trace record


@dataclass(frozen=True, slots=True)
class CompiledWorkspace:
    workspace: Workspace
    metrics: MetricBook
    segments: SegmentBook
    message_rules: dict[str, CompiledRule]
    journeys: dict[str, CompiledJourney]  # in name order: the order of work for one event
    renderer: Renderer
    warnings: list[Problem] = field(default_factory=list)
    cap_rules: dict[int, CompiledRule] = field(default_factory=dict)  # frequency cap index -> its `if:`
    # (journey, version) -> a stored version that live instances are on, beside `journeys` (the versions
    # new entrants take): see `with_versions`
    versions: dict[tuple[str, str], CompiledJourney] = field(default_factory=dict)


def load_workspace(root: str | Path) -> CompiledWorkspace:
    """Read, compile and lint a workspace folder; raise WorkspaceError listing every problem."""
    return compile_workspace(read_workspace(root, keep_going=True))


def compile_workspace(ws: Workspace) -> CompiledWorkspace:
    """Compile every rule and lint the whole; raise WorkspaceError with every problem, the files' own too."""
    own = list(ws.warnings)  # what reading the files found
    ws.warnings.clear()
    problems: list[Problem] = list(lint(ws))
    compiler = RuleCompiler(ws.metrics, set(ws.segments))
    renderer = Renderer()

    def rule(text: str | None, kind: str, name: str, path: PathKey) -> CompiledRule | None:
        if text is None:
            return None
        try:
            compiled = compiler.compile(text)
            at = ws.problem(kind, name, path, "")
            return replace(compiled, where=f"{at.file}:{at.line}")
        except UnknownDeclaration as exc:
            if not ws.unparsed:  # else the name may be declared in the file that does not parse
                problems.append(ws.problem(kind, name, path, str(exc)))
        except RuleProblem as exc:
            problems.append(ws.problem(kind, name, path, str(exc)))
        return None

    segment_rules = {n: rule(s.rule, "segments", n, ("rule",)) for n, s in ws.segments.items()}
    problems.extend(segment_cycles(ws, {n: r.segments for n, r in segment_rules.items() if r is not None}))
    where = {n: rule(m.where, "metrics", n, ("where",)) for n, m in ws.metrics.items()}
    message_rules = {n: rule(m.if_, "messages", n, ("if",)) for n, m in ws.messages.items()}
    cap_rules = {i: rule(c.if_, "policies", "policies", ("frequency_caps", i, "if"))
                 for i, c in enumerate(ws.policies.frequency_caps)}
    for name, msg in ws.messages.items():
        problems.extend(_template_problems(ws, renderer, name, (), msg))
        for locale, translation in msg.translations.items():
            problems.extend(_template_problems(ws, renderer, name, ("translations", locale), translation))
    journeys = {n: _compile_journey(j, rule) for n, j in sorted(ws.journeys.items())}
    problems = own + _known_elsewhere(problems, ws.unreadable)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise WorkspaceError(sorted(problems, key=lambda p: (p.file, p.line, p.column)))
    read = [r for r in segment_rules.values() if r is not None]
    for cj in journeys.values():
        if cj is not None:
            triggers = (cj.entry, *cj.exits, *((cj.goal,) if cj.goal else ()))
            read.extend(t.rule for t in triggers if t.rule is not None)
            read.extend(t.rule for ts in cj.transitions.values() for t in ts if t.rule is not None)
    watched = frozenset(name for r in read for name in r.metrics)
    metrics = MetricBook(ws.metrics, {n: r for n, r in where.items() if r is not None}, watched,
                         _thresholds(read))
    ready = {n: r for n, r in segment_rules.items() if r is not None}
    segments = SegmentBook(ws.segments, ready, metrics.windowed)
    return CompiledWorkspace(workspace=ws, metrics=metrics, segments=segments,
                             message_rules={n: r for n, r in message_rules.items() if r is not None},
                             journeys={n: j for n, j in journeys.items() if j is not None},
                             renderer=renderer, warnings=problems,
                             cap_rules={i: r for i, r in cap_rules.items() if r is not None})


def _thresholds(read: list[CompiledRule]) -> dict[str, tuple[Threshold, ...] | None]:
    """Every comparison with a number through which these rules read each metric; None for a metric
    some rule reads any other way (every metric, when one reads `metrics` whole)."""
    merged: dict[str, tuple[Threshold, ...] | None] = {}
    for r in read:
        if EVERY_METRIC in r.thresholds:
            return {}
        for name in r.metrics:
            found = r.thresholds.get(name)  # None too for a read the thresholds' walk did not see
            kept = merged.get(name, ())
            merged[name] = None if found is None or kept is None else (*kept, *found)
    return merged


def _known_elsewhere(problems: list[Problem], unreadable: set[str]) -> list[Problem]:
    """Drop complaints about names that a file with errors declares: its own errors say what is wrong."""
    if not unreadable:
        return list(problems)
    return [p for p in problems if not any(f"`{name}`" in p.message for name in unreadable)]


def _template_problems(ws: Workspace, renderer: Renderer, name: str, where: PathKey,
                       content: Message | Translation) -> list[Problem]:
    """Every template of a message or of one of its translations that does not parse, at its own key."""
    found = []
    for field_name in ("subject", "title", "body", "template", "url"):
        source = getattr(content, field_name, None)
        if source is None:
            continue
        text = ws.templates.get(source, "") if field_name == "template" else source
        error = renderer.check(text, ws.metrics)
        if error:
            found.append(ws.problem("messages", name, (*where, field_name), f"template: {error}"))
    return found


def _compile_journey(journey: Journey, rule: _RuleFn) -> CompiledJourney | None:
    name = journey.name

    def trigger(t: Trigger, path: PathKey) -> CompiledTrigger:
        return CompiledTrigger(on=t.on, segment=t.segment, rule=rule(t.if_, "journeys", name, (*path, "if")))

    transitions = {
        state_name: tuple(
            CompiledTransition(index=i, kind=t.kind, to=t.to, on=t.on, segment=t.segment,
                               rule=rule(t.if_, "journeys", name, ("states", state_name, "transitions", i, "if")))
            for i, t in enumerate(state.transitions))
        for state_name, state in journey.states.items()
    }
    try:
        machine = JourneyMachine(journey)
    except ValueError:
        return None  # unknown target states: lint has reported them
    return CompiledJourney(
        journey=journey, machine=machine, version=journey.version,
        entry=trigger(journey.entry, ("entry",)),
        exits=tuple(trigger(t, ("exit", i)) for i, t in enumerate(journey.exit)),
        goal=trigger(journey.goal, ("goal",)) if journey.goal else None, name=name,
        transitions=transitions)


def with_versions(cw: CompiledWorkspace, stored: Mapping[tuple[str, str], Journey],
                  current: Mapping[str, Journey] | None = None) -> CompiledWorkspace:
    """The workspace with stored journey versions beside its own (SPEC §3, "Changing a live workspace"),
    their rules compiled against its metrics and segments. `current`, when given, replaces the
    workspace's journeys as the versions new entrants take (the versions in force, when the files'
    plan was refused). A version that does not compile here is left out: its instances wait, and
    `journey plan` names what it lacks."""
    compiler = RuleCompiler(cw.workspace.metrics, set(cw.workspace.segments))
    failed: list[str] = []

    def rule(text: str | None, kind: str, name: str, path: PathKey) -> CompiledRule | None:
        if text is None:
            return None
        try:
            return replace(compiler.compile(text), where=f"{name} (stored version) {'.'.join(map(str, path))}")
        except RuleProblem as exc:
            failed.append(f"{name}: {exc}")
            return None

    def compiled(journey: Journey) -> CompiledJourney | None:
        failed.clear()
        cj = _compile_journey(journey, rule)
        return cj if cj is not None and not failed else None

    journeys = dict(cw.journeys)
    if current is not None:
        journeys = {n: cj for n, j in sorted(current.items()) if (cj := compiled(j)) is not None}
    in_force = {(cj.name, cj.version) for cj in journeys.values()}
    versions = {key: cj for key, j in sorted(stored.items())
                if key not in in_force and (cj := compiled(j)) is not None}
    return replace(cw, journeys=journeys, versions=versions)
