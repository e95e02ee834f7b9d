"""Whole-workspace checks (SPEC §7 `journey validate`): names that point nowhere, states that cannot be
reached or left, transitions that never fire, policies that do nothing, declarations nobody uses, and
(from the compiled rules) segments that read each other in a loop. Each problem says how to fix it.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta

from .errors import Problem, did_you_mean
from .loading import PathKey, Workspace
from .model import AttributeTime, Choose, Journey, Message, Translation, Trigger

JourneyCheck = Callable[[Workspace, Journey], Iterator[Problem]]
WorkspaceCheck = Callable[[Workspace], Iterator[Problem]]

_LANGUAGE = re.compile(r"^[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")


def lint(ws: Workspace) -> list[Problem]:
    """Every problem the workspace's structure shows, sorted by file and position.

    While a file is not valid YAML, the names it declares are unknown: checks for unknown and unused
    names would flood the report with false errors, so they are skipped and one note says so.
    """
    checks = _WORKSPACE_CHECKS if ws.unparsed else (*_WORKSPACE_CHECKS, *_NAME_CHECKS)
    found = [problem for check in checks for problem in check(ws)]
    if ws.unparsed:
        found.append(_skipped_note(ws, ws.unparsed[0]))
    return sorted(found, key=lambda p: (p.file, p.line, p.column))


def _skipped_note(ws: Workspace, file: str) -> Problem:
    first = ws.documents[file].problems[0]
    return Problem(file=file, line=first.line, column=first.column, severity="note",
                   message="checks for unknown and unused names were skipped until this file parses: "
                           "the names it declares are not known")


def _journeys(ws: Workspace) -> Iterator[Problem]:
    for journey in ws.journeys.values():
        for check in _JOURNEY_CHECKS:
            yield from check(ws, journey)


def _journey_names(ws: Workspace) -> Iterator[Problem]:
    for journey in ws.journeys.values():
        yield from _unknown_messages(ws, journey)
        yield from _unknown_segments(ws, journey)


def _at(ws: Workspace, journey: Journey, path: PathKey, message: str, severity: str = "error") -> Problem:
    return ws.problem("journeys", journey.name, path, message, severity)


# --- what a journey refers to ---------------------------------------------------------------------


def _targets(journey: Journey) -> Iterator[tuple[PathKey, str]]:
    """Every state name the journey goes to, with where it is written."""
    yield ("initial",), journey.initial
    for name, state in journey.states.items():
        for i, transition in enumerate(state.transitions):
            yield ("states", name, "transitions", i, "to"), transition.to
        for i, path in enumerate(state.split.paths if state.split else ()):
            yield ("states", name, "split", "paths", i, "to"), path.to


def _message_refs(journey: Journey) -> Iterator[tuple[PathKey, str]]:
    for name, state in journey.states.items():
        here: PathKey = ("states", name, "send")
        if isinstance(state.send, str):
            yield here, state.send
        elif isinstance(state.send, Choose):
            yield from (((*here, "from", i), m) for i, m in enumerate(state.send.from_))
        elif state.send is not None:
            yield from (((*here, i), m) for i, m in enumerate(state.send))


def _triggers(journey: Journey) -> Iterator[tuple[PathKey, Trigger]]:
    yield ("entry",), journey.entry
    yield from ((("exit", i), criterion) for i, criterion in enumerate(journey.exit))
    if journey.goal is not None:
        yield ("goal",), journey.goal


def _segment_refs(journey: Journey) -> Iterator[tuple[PathKey, str]]:
    for path, trigger in _triggers(journey):
        if trigger.segment is not None:
            yield (*path, "segment"), trigger.segment
    for name, state in journey.states.items():
        for i, transition in enumerate(state.transitions):
            if transition.segment is not None:
                yield ("states", name, "transitions", i, "segment"), transition.segment
        if isinstance(state.send, Choose):  # the cohorts a `choose: best` learns for (SPEC §3 item 15)
            yield from ((("states", name, "send", "by", i), segment) for i, segment in enumerate(state.send.by))


def _unknown(kind: str, name: str, known: Iterable[str], fix: str) -> str:
    """The suggestion when one is close, else the fix (and the known names when there are few)."""
    hint = did_you_mean(name, known)
    return f"unknown {kind} `{name}`" + (hint if "did you mean" in hint else f": {fix}{hint}")


def _unknown_states(ws: Workspace, journey: Journey) -> Iterator[Problem]:
    for path, target in _targets(journey):
        if target not in journey.states:
            fix = f"declare it under `states:` of journey `{journey.name}`"
            yield _at(ws, journey, path, _unknown("state", target, journey.states, fix))


def _unknown_messages(ws: Workspace, journey: Journey) -> Iterator[Problem]:
    for path, message in _message_refs(journey):
        if message not in ws.messages:
            fix = "declare it under `messages:`"
            yield _at(ws, journey, path, _unknown("message", message, ws.messages, fix))


def _unknown_segments(ws: Workspace, journey: Journey) -> Iterator[Problem]:
    for path, segment in _segment_refs(journey):
        if segment not in ws.segments:
            fix = "declare it under `segments:`"
            yield _at(ws, journey, path, _unknown("segment", segment, ws.segments, fix))


# --- the shape of a journey -----------------------------------------------------------------------


def _next_states(journey: Journey, name: str, *, instant_only: bool = False) -> list[str]:
    """States one step away; with `instant_only`, only through `to:`-only transitions and splits."""
    state = journey.states[name]
    moves = [t.to for t in state.transitions if not instant_only or t.kind == "always"]
    moves += [p.to for p in state.split.paths] if state.split else []
    return [m for m in moves if m in journey.states]


def _reachable(journey: Journey) -> set[str]:
    seen: set[str] = set()
    todo = [journey.initial] if journey.initial in journey.states else []
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_next_states(journey, name))
    return seen


def _unreachable_states(ws: Workspace, journey: Journey) -> Iterator[Problem]:
    if journey.initial not in journey.states:
        return  # reported as an unknown state; everything would look unreachable
    reached = _reachable(journey)
    for name in journey.states:
        if name not in reached:
            yield _at(ws, journey, ("states", name), f"state `{name}` is unreachable: no transition or split "
                      f"leads to it from `initial: {journey.initial}`; add one or remove the state")


def _dead_ends(ws: Workspace, journey: Journey) -> Iterator[Problem]:
    for name, state in journey.states.items():
        if not state.final and not state.transitions and state.split is None:
            yield _at(ws, journey, ("states", name),
                      f"state `{name}` has no way out: add a transition or `final: true`")


def _instant_cycles(ws: Workspace, journey: Journey) -> Iterator[Problem]:
    """A loop of `to:`-only transitions and splits is taken over and over without waiting for anything."""
    reported: set[str] = set()
    for name in journey.states:
        loop = _instant_loop(journey, name)
        if loop and not reported & set(loop):
            reported.update(loop)
            route = " → ".join(f"`{s}`" for s in (*loop, loop[0]))
            yield _at(ws, journey, ("states", name), f"states {route} loop through `to:`-only transitions "
                      "and splits, which are taken at once: users would cycle forever; make one of them wait "
                      "for an event, a rule or a timer")


def _instant_loop(journey: Journey, start: str) -> list[str]:
    """The states of an instant loop back to `start`, or []."""
    return _loop(start, lambda name: _next_states(journey, name, instant_only=True))


def _loop(start: str, following: Callable[[str], Iterable[str]]) -> list[str]:
    """The names on a path from `start` back to itself, or [] (depth-first)."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        name, route = stack.pop()
        for nxt in following(name):
            if nxt == start:
                return route
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*route, nxt]))
    return []


def _shadowed_transitions(ws: Workspace, journey: Journey) -> Iterator[Problem]:
    for name, state in journey.states.items():
        fallback = next((i for i, t in enumerate(state.transitions) if t.kind == "always"), None)
        if fallback is None:
            continue
        doc, path = ws.where("journeys", journey.name, "states", name, "transitions", fallback)
        line = doc.where(path)[0]
        for i in range(fallback + 1, len(state.transitions)):
            yield _at(ws, journey, ("states", name, "transitions", i),
                      f"this transition never fires: the `to:`-only transition on line {line} is always "
                      "taken first; move that fallback to the end of `transitions`")


def _entry_event_in_initial(ws: Workspace, journey: Journey) -> Iterator[Problem]:
    event, initial = journey.entry.on, journey.states.get(journey.initial)
    if event is None or initial is None:
        return
    for i, transition in enumerate(initial.transitions):
        if transition.on == event and transition.to != journey.initial:  # a restart means a later event
            yield _at(ws, journey, ("states", journey.initial, "transitions", i, "on"),
                      f"the entry event `{event}` is not offered again to the initial state "
                      f"`{journey.initial}`, so this transition waits for a later `{event}`; use a "
                      "`to:`-only transition to move on at once", "warning")


def _reentry(ws: Workspace, journey: Journey) -> Iterator[Problem]:
    reentry = journey.entry.reentry
    if not isinstance(reentry, str) and reentry.after <= timedelta(0):
        yield _at(ws, journey, ("entry", "reentry", "after"), "`reentry.after` must be a positive duration, "
                  "e.g. `{after: 30d}`; write `reentry: always` to allow re-entry at once")


def _never_finishes(ws: Workspace, journey: Journey) -> Iterator[Problem]:
    finals = any(state.final for state in journey.states.values())
    leaves = journey.exit or (journey.goal is not None and journey.goal.exit)
    if not finals and not leaves:
        yield _at(ws, journey, ("journey",), f"journey `{journey.name}` has no final state, no `exit` and no "
                  "exiting `goal`: users can never finish it; add `final: true` to a state or an `exit:`",
                  "warning")


def _moves(ws: Workspace, journey: Journey) -> Iterator[Problem]:
    """`moves:` maps old states to states of this version, and means something only with `on_change: move`."""
    for source, target in journey.moves.items():
        if target not in journey.states:
            fix = f"map `{source}` to a state of journey `{journey.name}`"
            yield _at(ws, journey, ("moves", source), _unknown("state", target, journey.states, fix))
    if journey.moves and journey.on_change != "move":
        yield _at(ws, journey, ("moves",), "`moves` applies only with `on_change: move`: add it, or remove "
                                           "`moves` (live instances stay on their version)", "warning")


_JOURNEY_CHECKS: tuple[JourneyCheck, ...] = (
    _unknown_states, _unreachable_states, _dead_ends, _instant_cycles,
    _shadowed_transitions, _entry_event_in_initial, _reentry, _never_finishes, _moves,
)


# --- messages, segments, policies -----------------------------------------------------------------


def _unknown_subscriptions(ws: Workspace) -> Iterator[Problem]:
    for name, message in ws.messages.items():
        if message.subscription is not None and message.subscription not in ws.subscriptions:
            yield ws.problem("messages", name, ("subscription",), _unknown(
                "subscription", message.subscription, ws.subscriptions, "declare it under `subscriptions:`"))


def _subscriptions(ws: Workspace) -> Iterator[Problem]:
    for name, message in ws.messages.items():
        subscription = ws.subscriptions.get(message.subscription) if message.subscription else None
        if subscription is not None and subscription.channel != message.channel:
            yield ws.problem("messages", name, ("subscription",),
                             f"message `{name}` goes by {message.channel} but subscription "
                             f"`{message.subscription}` is for {subscription.channel}: users who opt out of "
                             f"{subscription.channel} still get it; use a subscription for {message.channel}",
                             "warning")


def _translations(ws: Workspace) -> Iterator[Problem]:
    for name, message in ws.messages.items():
        for locale in message.translations:
            if not _LANGUAGE.match(locale):
                yield ws.problem("messages", name, ("translations", locale),
                                 f"`{locale}` is not a language code, so this translation is never chosen: "
                                 "write a code like `ko`, `ko-KR` or `pt_BR`", "warning")


def _segment_windows(ws: Workspace) -> Iterator[Problem]:
    for name, segment in ws.segments.items():
        if segment.for_ is not None and segment.for_ <= timedelta(0):
            yield ws.problem("segments", name, ("for",),
                             "`for` must be a positive duration (how long the rule has held), e.g. `for: 7d`")


def segment_cycles(ws: Workspace, reads: Mapping[str, frozenset[str]]) -> list[Problem]:
    """Segments whose rules read each other in a loop (`reads`: the segments each compiled rule reads).

    The one check that needs the compiled rules, so the compiler calls it; each loop is reported once.
    """
    found: list[Problem] = []
    reported: set[str] = set()
    for name in ws.segments:
        loop = _loop(name, lambda n: sorted(s for s in reads.get(n, ()) if s in ws.segments))
        if loop and not reported & set(loop):
            reported.update(loop)
            route = " → ".join(f"`{s}`" for s in (*loop, loop[0]))
            what = f"segment `{name}` reads itself" if len(loop) == 1 else f"segments {route} read each other"
            found.append(ws.problem("segments", name, ("rule",), f"{what} in a loop, so membership cannot be "
                                    "decided; make one of them read traits or metrics instead"))
    return found


def _policies(ws: Workspace) -> Iterator[Problem]:
    if ("policies", "policies") in ws.origins:
        for check in _POLICY_CHECKS:
            yield from check(ws)


def _timezone(ws: Workspace) -> Iterator[Problem]:
    name = ws.policies.timezone
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        hint = did_you_mean(name, zoneinfo.available_timezones())
        yield ws.problem("policies", "policies", ("timezone",),
                         f"unknown time zone `{name}`{hint or '; write an IANA name like `Europe/Berlin`'}")


def _quiet_hours(ws: Workspace) -> Iterator[Problem]:
    quiet = ws.policies.quiet_hours
    if quiet is not None and quiet.from_ == quiet.to:
        yield ws.problem("policies", "policies", ("quiet_hours",),
                         f"quiet hours from {quiet.from_} to {quiet.to} are empty, so nothing is ever held "
                         "back; set `to` to when sending may resume, e.g. `{from: \"21:00\", to: \"08:00\"}`",
                         "warning")


def _frequency_caps(ws: Workspace) -> Iterator[Problem]:
    for i, cap in enumerate(ws.policies.frequency_caps):
        if cap.channel == "any" and cap.max == 0:
            yield ws.problem("policies", "policies", ("frequency_caps", i, "max"),
                             "a cap of 0 on channel `any` means nothing will ever be sent; raise `max` or "
                             "remove the cap", "warning")


_POLICY_CHECKS: tuple[WorkspaceCheck, ...] = (_timezone, _quiet_hours, _frequency_caps)


# --- declared but not used ------------------------------------------------------------------------


def _texts(ws: Workspace) -> Iterator[tuple[tuple[str, str], str]]:
    """Every rule and template text of the workspace, with the (kind, name) that owns it."""
    for name, journey in ws.journeys.items():
        owner = ("journeys", name)
        yield from ((owner, t.if_) for _, t in _triggers(journey) if t.if_)
        for state in journey.states.values():
            for t in state.transitions:
                yield from ((owner, text) for text in (t.if_, _attribute(t.at)) if text)
    for name, message in ws.messages.items():
        parts = [message.if_]
        contents: list[Message | Translation] = [message, *message.translations.values()]
        for content in contents:
            parts += [content.subject, content.title, content.body, ws.templates.get(content.template or "")]
        yield from ((("messages", name), text) for text in parts if text)
    yield from ((("segments", name), s.rule) for name, s in ws.segments.items())
    yield from ((("metrics", name), m.where) for name, m in ws.metrics.items() if m.where)
    yield from ((("policies", "policies"), c.if_) for c in ws.policies.frequency_caps if c.if_)


def _attribute(at: object) -> str | None:
    return at.attribute if isinstance(at, AttributeTime) else None


def _mentioned(name: str, owner: tuple[str, str], texts: list[tuple[tuple[str, str], str]]) -> bool:
    """The name appears as a whole word in a text that is not its own definition."""
    word = re.compile(rf"(?<!\w){re.escape(name)}(?!\w)")
    return any(other != owner and word.search(text) for other, text in texts)


# "active in the last 7 days" over a last_seen metric: the report's retention grid reads such a segment,
# so it is used even when no journey or rule names it
ACTIVITY_RULE = re.compile(r"^\s*metrics\.(\w+)\s*!=\s*null\s+and\s+\$now\s*-\s*metrics\.(\w+)\s*<\s*t'P7D'\s*$")


def _unused(ws: Workspace) -> Iterator[Problem]:
    sent = {m for journey in ws.journeys.values() for _, m in _message_refs(journey)}
    entered = {s for journey in ws.journeys.values() for _, s in _segment_refs(journey)}
    texts = list(_texts(ws))
    for name in ws.messages:
        if name not in sent:
            yield ws.problem("messages", name, (), f"message `{name}` is declared but not used: no state "
                             "sends it; add it to a `send:` or remove it", "warning")
    entered |= {name for name, s in ws.segments.items() if ACTIVITY_RULE.match(s.rule)}
    for kind, names in (("segments", ws.segments), ("metrics", ws.metrics)):
        for name in names:
            if name not in entered and not _mentioned(name, (kind, name), texts):
                yield ws.problem(kind, name, (), f"{kind[:-1]} `{name}` is declared but not used by any "
                                 "journey, rule or template; use it or remove it", "warning")


_WORKSPACE_CHECKS: tuple[WorkspaceCheck, ...] = (
    _journeys, _subscriptions, _translations, _segment_windows, _policies,
)
# names that may be declared in another file: only meaningful when every file parsed
_NAME_CHECKS: tuple[WorkspaceCheck, ...] = (_journey_names, _unknown_subscriptions, _unused)
