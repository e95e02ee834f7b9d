"""Segment membership as a function of the profile and time; entered/left facts.

Only segments whose inputs changed are evaluated. Segments that depend on time alone (`$now`, a
windowed metric, `for:`) say when they may next change, so the engine wakes that user then. A wake-up
re-runs the segments whose only use of time is such an anchor (or `for:`) just when one has fallen
due: `Profile.segments_due_at` keeps the earliest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from . import clock
from .model import SegmentDef
from .profile import SETTLED, UNSETTLED, Profile
from .rules import CompiledRule, path_reader

Anchor = tuple[Callable[[Mapping[str, Any]], Any], timedelta]  # (read x from the scope, d): turns at x + d

_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Segment:
    name: str
    rule: CompiledRule
    hold: timedelta | None
    timed: bool  # may change with time alone
    # its time-dependence is all anchors and `for:` (windowed metrics report their own changes), so a
    # wake-up need not re-run it unless one of those has fallen due
    clocked: bool
    anchors: tuple[Anchor, ...]


class SegmentBook:
    """The workspace's segments in dependency order."""

    def __init__(self, segments: Mapping[str, SegmentDef], rules: Mapping[str, CompiledRule],
                 windowed: frozenset[str]) -> None:
        order = _dependency_order({n: rules[n].segments for n in segments})
        self.segments = [
            _Segment(name=n, rule=rules[n], hold=segments[n].for_,
                     timed=rules[n].now or bool(rules[n].metrics & windowed) or segments[n].for_ is not None,
                     clocked=rules[n].anchored and not rules[n].event and not rules[n].journey,
                     anchors=tuple((path_reader(path), offset) for path, offset in rules[n].anchors))
            for n in order
        ]
        self.timed = any(s.timed for s in self.segments)
        timed = [s for s in self.segments if s.timed]
        # what `schedule` looks at, flattened once: anchors of `$now` rules, and `for:` holds
        anchors = dict.fromkeys([a for s in timed if s.rule.now for a in s.rule.anchors])
        self._anchors = tuple((path_reader(path), offset) for path, offset in anchors)
        self._holds = tuple((s.name, s.hold) for s in timed if s.hold is not None)

    def evaluate(self, profile: Profile, scope: dict[str, Any], now: datetime, *, metrics: Set[str],
                 traits: bool, timed: bool) -> list[tuple[str, bool]]:
        """Re-evaluate what may have changed; update `profile.segments`; return (segment, entered?).

        `timed` is a wake-up: time-driven segments are re-run too, the `clocked` ones only when one of
        their anchors has fallen due (afterwards every time-driven segment is current).
        """
        changes: list[tuple[str, bool]] = []
        touched: set[str] = set()
        # no anchor of any `clocked` segment pending since it last ran is earlier than `since`
        since = None
        if timed and profile.segments_due_at <= clock.epoch(now):
            due_at = profile.segments_due_at
            since = _NEVER if due_at == UNSETTLED else datetime.fromtimestamp(due_at, UTC)
        for seg in self.segments:
            rule = seg.rule
            inputs = ((traits and rule.traits) or (metrics and not rule.metrics.isdisjoint(metrics))
                      or (touched and not rule.segments.isdisjoint(touched)))
            if not inputs and not (timed and seg.timed and (
                    not seg.clocked or (since is not None and self._due(seg, profile, scope, since, now)))):
                continue
            member = self._member(profile, seg, rule(scope, now), now)
            if member != (seg.name in profile.segments):
                if member:
                    profile.segments += (seg.name,)
                else:
                    profile.segments = tuple(s for s in profile.segments if s != seg.name)
                scope["segments"] = profile.segments  # a new tuple: later rules must see it
                changes.append((seg.name, member))
                touched.add(seg.name)
        if timed:
            profile.segments_due_at = SETTLED
        return changes

    @staticmethod
    def _due(seg: _Segment, profile: Profile, scope: Mapping[str, Any], since: datetime, now: datetime) -> bool:
        """Whether an anchor or the `for:` deadline of this segment lies in [since, now]."""
        for read, offset in seg.anchors:
            value = read(scope)
            if isinstance(value, datetime) and since <= value + offset <= now:
                return True
        if seg.hold is not None and profile.for_since:
            start = profile.for_since.get(seg.name)
            return start is not None and since <= start + seg.hold <= now
        return False

    @staticmethod
    def _member(profile: Profile, seg: _Segment, holds: bool, now: datetime) -> bool:
        if seg.hold is None:
            return holds
        if not holds:
            if profile.for_since is not None:
                profile.for_since.pop(seg.name, None)
                if not profile.for_since:
                    profile.for_since = None
            return False
        if profile.for_since is None:
            profile.for_since = {}
        since = profile.for_since.setdefault(seg.name, now)
        return now >= since + seg.hold

    def schedule(self, profile: Profile, scope: Mapping[str, Any], now: datetime) -> datetime | None:
        """The earliest time after `now` when time alone may move this user in or out of a segment.

        Also lowers `profile.segments_due_at` to the earliest anchor or `for:` deadline from `now` on:
        the inputs may have changed since the wake-up that settled the segments (an anchor is x + d, the
        instant the comparison turns, a strict one's tick included: see ruleanalysis._anchor).
        """
        wake: datetime | None = None
        due: datetime | None = None
        for read, offset in self._anchors:
            value = read(scope)
            if not isinstance(value, datetime):
                continue
            at = value + offset
            if at < now:
                continue
            if due is None or at < due:
                due = at
            if at > now and (wake is None or at < wake):
                wake = at
        for_since = profile.for_since
        if for_since:
            for name, hold in self._holds:
                since = for_since.get(name)
                if since is None:
                    continue
                deadline = since + hold
                if name not in profile.segments and (wake is None or deadline < wake):
                    wake = deadline
                if deadline >= now and (due is None or deadline < due):
                    due = deadline
        if due is not None:
            due_s = due.timestamp()
            if due_s < profile.segments_due_at:
                profile.segments_due_at = due_s
        return wake


def _dependency_order(deps: Mapping[str, frozenset[str]]) -> list[str]:
    """Segments after the segments they read; a cycle is reported by validation, here it just stops."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str) -> None:
        if state.get(name):
            return
        state[name] = 1
        for dep in sorted(deps.get(name, ())):
            if dep in deps:
                visit(dep)
        state[name] = 2
        order.append(name)

    for name in deps:
        visit(name)
    return order
