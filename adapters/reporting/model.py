"""The report as plain data: per journey a funnel over states, message performance, holdout lift and
bandit arms; per segment its size over time and retention by week of entry. Built from one streamed
pass over the store's trace and segment history, read through `Reads.snapshot`.

A journey's figures are for all its versions together, or for one version (`version=`): then a run
counts while it is on that version, from its entry or from the move that brought it there (`on_change:
move`) to its exit or the move that took it to a newer one (SPEC §3, "Changing a live workspace").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.reporting.cohorts import SegmentReport, segment_reports
from adapters.reporting.retention import (
    Retention,
    SegmentConversion,
    Stays,
    activity_segments,
    conversion_by_segment,
    retention_grids,
)
from adapters.reporting.versions import UNRECORDED, UnknownVersionError, VersionRow
from journey_engine.compiler import CompiledJourney, CompiledWorkspace
from journey_engine.errors import UnknownJourneyError
from journey_engine.graph import format_duration
from journey_engine.model import Choose
from journey_engine.policies import in_control_group
from journey_engine.ports import Reads, parse_time
from journey_engine.selection import EVERYONE_ELSE, bandit_state, estimates, split_bandit_state
from journey_engine.stats import newcombe_interval, rate

EXIT_REASONS = ("final", "exit", "goal", "version")
ENGAGEMENTS = ("delivered", "opened", "clicked", "bounced", "unsubscribed")
LIFT_METHOD = "Newcombe hybrid score interval (Wilson score per group), 95%"
COHORT_WEEKS = 12
_KINDS = ("journey_entered", "transition", "journey_exited", "goal_reached", "message_sent", "message_deferred",
          "message_suppressed", "message_delivered", "message_failed", "message_engaged", "alias_merged",
          "journey_migrated")


# --- the report -----------------------------------------------------------------------------------


@dataclass(slots=True)
class StateFunnel:
    """One state of a journey's funnel. Counts are journey runs: one per `journey_entered` record, so a
    user who re-enters, or a keyed journey's second cart, counts again."""

    state: str
    entered: int = 0  # runs that were in this state at least once
    now_in: int = 0
    moved_on: int = 0  # runs that left it for another state
    exited: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXIT_REASONS, 0))
    converted: int = 0  # runs that reached the goal after being in this state

    @property
    def conversion_rate(self) -> float | None:
        return rate(self.converted, self.entered)


@dataclass(slots=True)
class MessageStats:
    """What happened to one message on one channel. Engagements count once per send and event."""

    message: str
    channel: str
    sent: int = 0
    deferred: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)  # reason -> sends not made
    # `choose` candidates that were not eligible when the choice was made: another candidate went, so
    # these are not lost sends (counted apart from `suppressed`)
    passed_over: int = 0
    delivered: int = 0
    failed: int = 0
    opened: int = 0
    clicked: int = 0
    bounced: int = 0
    unsubscribed: int = 0
    conversions: int = 0  # goals reached within the goal window after a send of it

    @property
    def suppressed_total(self) -> int:
        return sum(self.suppressed.values())

    @property
    def conversion_rate(self) -> float | None:
        return rate(self.conversions, self.sent)


@dataclass(frozen=True, slots=True)
class Lift:
    """Goal conversion of treated entrants against held-out ones (sent nothing), with the 95%
    interval of the difference `treated rate - held-out rate` (see LIFT_METHOD)."""

    treated: int
    treated_converted: int
    held_out: int
    held_out_converted: int

    @property
    def treated_rate(self) -> float | None:
        return rate(self.treated_converted, self.treated)

    @property
    def held_out_rate(self) -> float | None:
        return rate(self.held_out_converted, self.held_out)

    @property
    def difference(self) -> float | None:
        if self.treated_rate is None or self.held_out_rate is None:
            return None
        return self.treated_rate - self.held_out_rate

    @property
    def interval(self) -> tuple[float, float] | None:
        if not self.treated or not self.held_out:
            return None
        return newcombe_interval(self.treated_converted, self.treated, self.held_out_converted, self.held_out)

    @property
    def relative(self) -> float | None:
        """The difference as a share of the held-out rate: +0.25 is 25% more conversions than without."""
        if self.difference is None or not self.held_out_rate:
            return None
        return self.difference / self.held_out_rate


@dataclass(frozen=True, slots=True)
class ArmEstimate:
    """A bandit arm: a message id, or for a bandit split the target state (`kind` says which)."""

    arm: str
    kind: str  # message | path
    sends: int
    conversions: int
    mean: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class BanditReport:
    state: str
    strategy: str  # "choose: best" | "split: bandit"
    arms: list[ArmEstimate]
    cohort: str | None = None  # the cohort this bandit learns for (`by:`), None: every user


@dataclass(slots=True)
class JourneyReport:
    name: str
    description: str | None
    goal: str | None  # "Order Completed within 7d"; None for a journey without a goal
    funnel: list[StateFunnel]
    messages: list[MessageStats]
    lift: Lift | None  # None for a journey without a goal or without a holdout
    bandits: list[BanditReport]
    entered: int  # runs started
    converted: int  # runs that reached the goal
    by_segment: list[SegmentConversion] = field(default_factory=list)  # goal conversion by segment at entry
    versions: list[VersionRow] = field(default_factory=list)  # every version runs were on, oldest first
    version: str | None = None  # the one version these figures are for; None: all of them

    @property
    def conversion_rate(self) -> float | None:
        return rate(self.converted, self.entered)

    @property
    def exited(self) -> dict[str, int]:
        total = dict.fromkeys(EXIT_REASONS, 0)
        for row in self.funnel:
            for reason, n in row.exited.items():
                total[reason] = total.get(reason, 0) + n
        return total


@dataclass(slots=True)
class Report:
    now: datetime
    journeys: list[JourneyReport]
    segments: list[SegmentReport]
    # the whole programme against the workspace's control group (`policies.control_group`): users who
    # entered a journey with a goal, and those of them who reached one; None without a control group
    programme: Lift | None = None
    control_group: float = 0.0
    retention: list[Retention] = field(default_factory=list)  # by first-seen week, per activity segment


# --- building -------------------------------------------------------------------------------------


def build_report(store: Reads, compiled: CompiledWorkspace, journey: str | None = None,
                 now: datetime | None = None, *, weeks: int = COHORT_WEEKS, version: str | None = None) -> Report:
    """The report of one journey (or all) and of every segment, from what `store` holds.

    `now` cuts the data off: later records are left out and "now in" is computed from the trace.
    Without it the report is as of the latest record, and "now in" comes from the store's live
    state counts (right even when old trace rows have been pruned). `version` (a version or the start
    of one, with `journey`) reports only that version's runs; "now in" then comes from the trace.
    """
    if journey is not None and journey not in compiled.journeys:
        raise UnknownJourneyError(journey, compiled.journeys)
    if version is not None and journey is None:
        raise UnknownVersionError(None, version, [])
    chosen = [compiled.journeys[journey]] if journey else list(compiled.journeys.values())
    tallies = {cj.name: _JourneyTally(cj, compiled) for cj in chosen}
    walk = _TraceWalk(tallies, now, version)
    with store.snapshot() as reads:  # every read below sees the same data while the engine writes
        for record in reads.trace_records(_KINDS, journey):
            walk.feed(record)
        walk.finish()
        if journey is not None and version is not None:
            seen = [row.version for row in tallies[journey].versions.values()]
            if len([v for v in seen if v.startswith(version)]) != 1:
                raise UnknownVersionError(journey, version, seen)
        cutoff = now or reads.latest() or datetime.now(UTC)  # no data at all: an empty report of today
        stays = Stays()  # every stay, kept for retention and conversion by segment
        segments = segment_reports(stays.tee(reads.segment_history()), compiled.workspace.segments, cutoff, weeks)
        if now is None and version is None:
            counts = reads.state_counts()
            for tally in tallies.values():
                tally.live(counts.get(tally.cj.name, {}))
        bandits = reads.bandit()
    share = compiled.workspace.policies.control_group
    journeys = [t.report(bandits) for t in tallies.values()]
    for journey_report, tally in zip(journeys, tallies.values(), strict=True):
        if tally.within is not None:
            journey_report.by_segment = conversion_by_segment(tally.entries, stays, compiled.workspace.segments)
        if version is not None:
            journey_report.version = next(v for v in tally.versions if v.startswith(version))
    retention = retention_grids(stays, activity_segments(compiled.workspace), cutoff, weeks)
    return Report(now=cutoff, journeys=journeys, segments=segments,
                  programme=programme_lift(walk.entrants, walk.converters, share) if share > 0 else None,
                  control_group=share, retention=retention)


def programme_lift(entrants: set[str], converters: set[str], share: float) -> Lift:
    """Users outside the control group against those in it: who reached any journey's goal among those
    who entered a journey that has one. The control group is chosen by a hash of the id, so the two
    groups differ only in the messages."""
    held = {user for user in entrants if in_control_group(user, share)}
    return Lift(treated=len(entrants) - len(held), treated_converted=len(converters - held),
                held_out=len(held), held_out_converted=len(converters & held))


_time = parse_time


class _Run:
    """One run through a journey while the walk is inside it."""

    __slots__ = ("converted", "entry", "holdout", "moved", "sends", "state", "version", "visited")

    def __init__(self, state: str, holdout: bool, version: str) -> None:
        self.version = version
        self.entry: list[Any] = []  # [user, entered at, converted], shared with the tally's entries
        self.state = state
        self.holdout = holdout
        self.converted = False
        self.visited = {state}
        self.moved: set[str] = set()
        self.sends: list[tuple[datetime, str, str]] = []  # since the last goal: (at, message, channel)


class _JourneyTally:
    """The counters of one journey."""

    def __init__(self, cj: CompiledJourney, compiled: CompiledWorkspace) -> None:
        self.cj = cj
        self.messages_known = compiled.workspace.messages
        goal = cj.journey.goal
        self.within = goal.within if goal is not None else None
        self.funnel = {name: StateFunnel(name) for name in cj.journey.states}
        self.messages: dict[tuple[str, str], MessageStats] = {}
        for state in cj.journey.states.values():
            for message in state.candidates:
                self.message(message, self.messages_known[message].channel)
        self.choosers = {name for name, state in cj.journey.states.items() if isinstance(state.send, Choose)}
        self.entrants = {False: 0, True: 0}  # holdout -> runs
        self.entries: list[list[Any]] = []  # [user, entered at, converted] per run: conversion by segment
        self.converted = {False: 0, True: 0}
        self.versions: dict[str, VersionRow] = {}

    def version(self, name: str) -> VersionRow:
        row = self.versions.get(name)
        if row is None:
            row = self.versions[name] = VersionRow(name)
        return row

    def state(self, name: str) -> StateFunnel:
        """A state's row; a state since removed from the file still gets one, after the others."""
        row = self.funnel.get(name)
        if row is None:
            row = self.funnel[name] = StateFunnel(name)
        return row

    def message(self, message: str, channel: str) -> MessageStats:
        row = self.messages.get((message, channel))
        if row is None:
            row = self.messages[(message, channel)] = MessageStats(message, channel)
        return row

    def live(self, counts: dict[str, int]) -> None:
        for row in self.funnel.values():
            row.now_in = 0
        for state, users in counts.items():
            if users:
                self.state(state).now_in = users

    def report(self, bandits: dict[tuple[str, str], dict[str, tuple[int, int]]]) -> JourneyReport:
        journey = self.cj.journey
        goal = journey.goal
        lift = None
        if goal is not None and (journey.holdout > 0 or self.entrants[True]):  # no holdout, nothing to compare
            lift = Lift(treated=self.entrants[False], treated_converted=self.converted[False],
                        held_out=self.entrants[True], held_out_converted=self.converted[True])
        described = None
        if goal is not None:
            trigger = goal.on or (f"segment {goal.segment}" if goal.segment else goal.if_ or "")
            described = f"{trigger} within {format_duration(goal.within)}"
        return JourneyReport(name=journey.name, description=journey.description, goal=described,
                             funnel=list(self.funnel.values()), messages=list(self.messages.values()), lift=lift,
                             bandits=_bandits(self.cj, bandits), entered=sum(self.entrants.values()),
                             converted=sum(self.converted.values()), versions=list(self.versions.values()))


class _TraceWalk:
    """Feeds trace records, in commit order, to the counters; keeps only the runs still open."""

    def __init__(self, tallies: dict[str, _JourneyTally], cutoff: datetime | None, version: str | None = None) -> None:
        self.tallies = tallies
        self.cutoff = cutoff
        self.only = version  # count only runs on a version that starts with this
        self.runs: dict[str, dict[tuple[str, str], _Run]] = {}  # user -> (journey, key) -> run
        # (user, journey, key) -> the version of the latest run: a delivery receipt may come after the run ended
        self.version_of: dict[tuple[str, str, str], str] = {}
        self.goaled: set[tuple[str, str, str]] = set()  # runs outside the chosen version that reached the goal
        self.engaged: set[str] = set()  # "event:send_key": a second open of one email is not a second open
        self.entrants: set[str] = set()  # users who entered a journey with a goal (the programme's lift)
        self.converters: set[str] = set()  # of them, who reached a goal
        self.handlers = {
            "journey_entered": self._entered, "transition": self._transition, "journey_exited": self._exited,
            "goal_reached": self._goal, "message_sent": self._sent, "message_deferred": self._deferred,
            "message_suppressed": self._suppressed, "message_delivered": self._delivered,
            "message_failed": self._failed, "message_engaged": self._engaged,
        }

    def feed(self, r: dict[str, Any]) -> None:
        if self.cutoff is not None and _time(r["at"]) > self.cutoff:
            return
        kind = r["kind"]
        if kind == "alias_merged":
            self._merged(r)
            return
        tally = self.tallies.get(r.get("journey") or "")
        if tally is None:
            return
        if kind == "journey_migrated":
            self._migrated(tally, r)
            return
        ikey = (r["user"], r["journey"], r.get("key") or "")
        if kind == "journey_entered":
            version = self.version_of[ikey] = r.get("version") or UNRECORDED
            row = tally.version(version)
            row.entered += 1
            row.first_entry = row.first_entry or _time(r["at"])
            self.goaled.discard(ikey)
            if self.only is not None and not version.startswith(self.only):
                return
        elif self.only is not None and not self.version_of.get(ikey, UNRECORDED).startswith(self.only):
            if kind == "goal_reached" or (kind == "journey_exited" and r.get("reason") == "version"):
                self._count_version(tally, r)
            return
        self.handlers[kind](tally, r)

    def _count_version(self, tally: _JourneyTally, r: dict[str, Any]) -> None:
        """The versions table for a run the filter leaves out (a goal counts once per run and version)."""
        version = tally.version(self.version_of.get((r["user"], r["journey"], r.get("key") or ""), UNRECORDED))
        if r["kind"] == "journey_exited":
            version.exited_version += 1
        elif (ikey := (r["user"], r["journey"], r.get("key") or "")) not in self.goaled:
            self.goaled.add(ikey)
            version.converted += 1

    def _migrated(self, tally: _JourneyTally, r: dict[str, Any]) -> None:
        """A run moved to a newer version (`on_change: move`), maybe to a mapped state. With a version
        chosen, the run leaves the view when it moves off it and joins it when it moves on to it."""
        ikey = (r["user"], r["journey"], r.get("key") or "")
        src, dst = r.get("from_version") or UNRECORDED, r["to_version"]
        self.version_of[ikey] = dst
        tally.version(src).moved_out += 1
        tally.version(dst).moved_in += 1
        run = self._run(r)
        if self.only is not None:
            if src.startswith(self.only):
                self._drop(r)
                return
            if not dst.startswith(self.only):
                return
            if run is None:  # joins this version's view in the state it was moved to
                run = _Run(r["to"], False, dst)
                self.runs.setdefault(r["user"], {})[(r["journey"], r.get("key") or "")] = run
                tally.state(run.state).entered += 1
                return
        if run is not None:
            run.version = dst
            if r["from"] != r["to"]:
                self._transition(tally, r)

    def finish(self) -> None:
        for runs in self.runs.values():
            for (journey, _), run in runs.items():
                self.tallies[journey].state(run.state).now_in += 1

    def _run(self, r: dict[str, Any]) -> _Run | None:
        return self.runs.get(r["user"], {}).get((r["journey"], r.get("key") or ""))

    def _entered(self, tally: _JourneyTally, r: dict[str, Any]) -> None:
        run = _Run(r["state"], bool(r.get("holdout")), r.get("version") or UNRECORDED)
        self.runs.setdefault(r["user"], {})[(r["journey"], r.get("key") or "")] = run
        tally.state(run.state).entered += 1
        tally.entrants[run.holdout] += 1
        if tally.within is not None:
            self.entrants.add(r["user"])
            run.entry = [r["user"], _time(r["at"]), False]
            tally.entries.append(run.entry)

    def _transition(self, tally: _JourneyTally, r: dict[str, Any]) -> None:
        run = self._run(r)
        if run is None:  # its entry is older than the trace kept: the funnel counts whole runs only
            return
        src, dst = r["from"], r["to"]
        if src != dst and src not in run.moved:
            run.moved.add(src)
            tally.state(src).moved_on += 1
        if dst not in run.visited:
            run.visited.add(dst)
            tally.state(dst).entered += 1
        run.state = dst

    def _drop(self, r: dict[str, Any]) -> _Run | None:
        user = self.runs.get(r["user"], {})
        run = user.pop((r["journey"], r.get("key") or ""), None)
        if not user:
            self.runs.pop(r["user"], None)
        return run

    def _exited(self, tally: _JourneyTally, r: dict[str, Any]) -> None:
        run = self._drop(r)
        if run is None:
            return
        if r["reason"] == "version":
            tally.version(run.version).exited_version += 1
        exited = tally.state(r.get("state") or run.state).exited
        exited[r["reason"]] = exited.get(r["reason"], 0) + 1

    def _goal(self, tally: _JourneyTally, r: dict[str, Any]) -> None:
        run = self._run(r)
        if run is None:
            return
        self.converters.add(r["user"])
        if run.entry:
            run.entry[2] = True
        if not run.converted:  # a goal that does not exit may be reached again: the funnel counts it once
            run.converted = True
            tally.converted[run.holdout] += 1
            tally.version(run.version).converted += 1
            for state in run.visited:
                tally.state(state).converted += 1
        for message, channel in self._credited(tally, run, _time(r["at"]), r.get("attributed") or []):
            tally.message(message, channel).conversions += 1
        run.sends = []  # as the engine does: a later goal is credited to later sends only

    def _credited(self, tally: _JourneyTally, run: _Run, at: datetime, attributed: list[str]) -> set[tuple[str, str]]:
        """Messages sent in this run within the goal window, and those the engine credited by name
        (bandit arms; split arms name states and are reported with the bandits instead)."""
        within = tally.within or timedelta(0)
        credited = {(message, channel) for sent, message, channel in run.sends if at - sent <= within}
        known = tally.messages_known
        credited.update((name, known[name].channel) for name in attributed if name in known)
        return credited

    def _sent(self, tally: _JourneyTally, r: dict[str, Any]) -> None:
        tally.message(r["message"], r["channel"]).sent += 1
        run = self._run(r)
        if run is not None and tally.within is not None:
            at = _time(r["at"])
            run.sends = [s for s in run.sends if at - s[0] <= tally.within]  # older ones can no longer convert
            run.sends.append((at, r["message"], r["channel"]))

    def _deferred(self, tally: _JourneyTally, r: dict[str, Any]) -> None:
        tally.message(r["message"], r["channel"]).deferred += 1

    def _suppressed(self, tally: _JourneyTally, r: dict[str, Any]) -> None:
        row = tally.message(r["message"], r["channel"])
        reason = str(r.get("reason") or "unknown")
        if reason == "ineligible" and r.get("state") in tally.choosers:
            row.passed_over += 1
            return
        reasons = row.suppressed
        reasons[reason] = reasons.get(reason, 0) + 1

    def _delivered(self, tally: _JourneyTally, r: dict[str, Any]) -> None:
        if self._first_time("delivered", r):
            tally.message(r["message"], r["channel"]).delivered += 1

    def _failed(self, tally: _JourneyTally, r: dict[str, Any]) -> None:
        tally.message(r["message"], r["channel"]).failed += 1

    def _engaged(self, tally: _JourneyTally, r: dict[str, Any]) -> None:
        event = r.get("event")
        if event in ENGAGEMENTS and self._first_time(event, r):
            row = tally.message(r["message"], r["channel"])
            setattr(row, event, getattr(row, event) + 1)

    def _first_time(self, event: str, r: dict[str, Any]) -> bool:
        """Whether this send has not had this event yet (the dispatcher and a provider's receipt may
        both say `delivered`)."""
        send_key = r.get("send_key")
        if not send_key:
            return True
        mark = f"{event}:{send_key}"
        if mark in self.engaged:
            return False
        self.engaged.add(mark)
        return True

    def _merged(self, r: dict[str, Any]) -> None:
        """alias: the anonymous user's runs continue under the known id, unless the known user was
        already in that journey (then the engine drops the anonymous run)."""
        moved = self.runs.pop(r.get("previous_id") or "", None)
        if not moved:
            return
        into = self.runs.setdefault(r["user"], {})
        for ikey, run in moved.items():
            if ikey not in into:
                into[ikey] = run
                self.version_of[(r["user"], *ikey)] = run.version


def _bandits(cj: CompiledJourney, stats: dict[tuple[str, str], dict[str, tuple[int, int]]]) -> list[BanditReport]:
    found = []
    learnt_cohorts: dict[str, list[str]] = {}  # state -> cohorts the store has learning for
    for journey, key in stats:
        state, cohort = split_bandit_state(key)
        if journey == cj.name and cohort is not None:
            learnt_cohorts.setdefault(state, []).append(cohort)
    for name, state in cj.journey.states.items():
        if isinstance(state.send, Choose) and state.send.choose == "best":
            listed = [*state.send.by, EVERYONE_ELSE] if state.send.by else [None]
            cohorts = listed + sorted(c for c in learnt_cohorts.get(name, ()) if c not in listed)
            for cohort in cohorts:
                learned = stats.get((cj.name, bandit_state(name, cohort)), {})
                arms = {m: learned.get(m, (0, 0)) for m in state.send.from_}
                found.append(_bandit(name, "choose: best", arms, learned, cohort))
        elif state.split is not None and state.split.strategy == "bandit":
            learned = stats.get((cj.name, name), {})
            arms = {"->" + p.to: learned.get("->" + p.to, (0, 0)) for p in state.split.paths}
            found.append(_bandit(name, "split: bandit", arms, learned, None))
    return found


def _bandit(state: str, strategy: str, arms: dict[str, tuple[int, int]], learned: dict[str, tuple[int, int]],
            cohort: str | None) -> BanditReport:
    arms.update(learned)  # arms the file no longer lists still show what they learnt
    return BanditReport(state=state, strategy=strategy, cohort=cohort, arms=[
        ArmEstimate(arm=arm.removeprefix("->"), kind="path" if arm.startswith("->") else "message",
                    sends=e["sends"], conversions=e["conversions"], mean=e["mean"], low=e["low"], high=e["high"])
        for arm, e in estimates(arms).items()])
