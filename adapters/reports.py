"""`journey report`: per journey a funnel over states, message performance, holdout lift and bandit arms;
per segment its size over time and retention by week of entry. Figures come from one streamed pass
over the SQL store's trace and segment history; they render as rich tables or as one offline HTML page.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from html import escape
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from adapters.storage.sql import SqlStore, bandit_t, counts_t, history_t, trace_t
from journey_engine.compiler import CompiledJourney, CompiledWorkspace
from journey_engine.errors import UnknownJourneyError
from journey_engine.graph import format_duration
from journey_engine.model import Choose
from journey_engine.selection import estimates

if TYPE_CHECKING:
    from adapters.demo import ChoiceResult, DemoResult, HoldoutResult

EXIT_REASONS = ("final", "exit", "goal")
ENGAGEMENTS = ("delivered", "opened", "clicked", "bounced", "unsubscribed")
LIFT_METHOD = "Newcombe hybrid score interval (Wilson score per group), 95%"
COHORT_WEEKS = 12
_Z95 = 1.959963984540054
_STREAM_ROWS = 2000  # rows fetched per round trip: memory stays flat however long the trace is
_KINDS = ("journey_entered", "transition", "journey_exited", "goal_reached", "message_sent", "message_deferred",
          "message_suppressed", "message_delivered", "message_failed", "message_engaged", "alias_merged")

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
        return _rate(self.converted, self.entered)


@dataclass(slots=True)
class MessageStats:
    """What happened to one message on one channel. Engagements count once per send and event."""

    message: str
    channel: str
    sent: int = 0
    deferred: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)  # reason -> sends not made
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
        return _rate(self.conversions, self.sent)


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
        return _rate(self.treated_converted, self.treated)

    @property
    def held_out_rate(self) -> float | None:
        return _rate(self.held_out_converted, self.held_out)

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

    @property
    def conversion_rate(self) -> float | None:
        return _rate(self.converted, self.entered)

    @property
    def exited(self) -> dict[str, int]:
        total = dict.fromkeys(EXIT_REASONS, 0)
        for row in self.funnel:
            for reason, n in row.exited.items():
                total[reason] = total.get(reason, 0) + n
        return total


@dataclass(frozen=True, slots=True)
class Cohort:
    """Users whose first entry into a segment fell in one ISO week, and how many of them were in the
    segment at the close of each week since (None: that week has not ended yet)."""

    week: str  # 2026-W02
    start: date  # its Monday
    users: int
    still_in: list[int | None]

    @property
    def shares(self) -> list[float | None]:
        return [None if n is None else n / self.users for n in self.still_in]


@dataclass(slots=True)
class SegmentReport:
    segment: str
    sizes: list[tuple[date, int]]  # members at the close of each day, UTC; the last day is as of `now`
    cohorts: list[Cohort]

    @property
    def weeks(self) -> int:
        """Columns of the cohort table: weeks since entry 0..weeks-1."""
        return max((len(c.still_in) for c in self.cohorts), default=0)


@dataclass(slots=True)
class Report:
    now: datetime
    journeys: list[JourneyReport]
    segments: list[SegmentReport]


# --- statistics -----------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: sound at 0 and 1 and for small n, unlike Wald's."""
    p = successes / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(x1: int, n1: int, x2: int, n2: int, z: float = _Z95) -> tuple[float, float]:
    """95% interval of p1 - p2 by Newcombe's hybrid score method (his method 10, Stat Med 1998)."""
    p1, p2 = x1 / n1, x2 / n2
    low1, high1 = wilson_interval(x1, n1, z)
    low2, high2 = wilson_interval(x2, n2, z)
    diff = p1 - p2
    return (diff - math.sqrt((p1 - low1) ** 2 + (high2 - p2) ** 2),
            diff + math.sqrt((high1 - p1) ** 2 + (p2 - low2) ** 2))


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# --- building -------------------------------------------------------------------------------------


def build_report(store: SqlStore, compiled: CompiledWorkspace, journey: str | None = None,
                 now: datetime | None = None, *, weeks: int = COHORT_WEEKS) -> Report:
    """The report of one journey (or all) and of every segment, from what `store` holds.

    `now` cuts the data off: later records are left out and "now in" is computed from the trace.
    Without it the report is as of the latest record, and "now in" comes from the store's live
    state counts (right even when old trace rows have been pruned).
    """
    if journey is not None and journey not in compiled.journeys:
        raise UnknownJourneyError(journey, compiled.journeys)
    chosen = [compiled.journeys[journey]] if journey else list(compiled.journeys.values())
    tallies = {cj.name: _JourneyTally(cj, compiled) for cj in chosen}
    walk = _TraceWalk(tallies, now)
    with store.engine.connect() as conn:
        if store.dialect == "postgresql":  # every query below reads the same snapshot while the engine writes
            conn.execution_options(isolation_level="REPEATABLE READ")
        for record in _trace(conn, journey):
            walk.feed(record)
        walk.finish()
        cutoff = now or _latest(conn) or datetime.now(UTC)  # no data at all: an empty report of today
        segments = _segments(conn, compiled, cutoff, weeks)
        if now is None:
            counts = _state_counts(conn)
            for tally in tallies.values():
                tally.live(counts.get(tally.cj.name, {}))
        bandits = _bandit_stats(conn)
    return Report(now=cutoff, journeys=[t.report(bandits) for t in tallies.values()], segments=segments)


def _trace(conn: sa.Connection, journey: str | None) -> Iterator[dict[str, Any]]:
    """The report's trace records in commit order, streamed."""
    t = trace_t.c
    query = sa.select(t.body).where(t.kind.in_(_KINDS)).order_by(t.id)
    if journey is not None:
        query = query.where(sa.or_(t.journey == journey, t.kind == "alias_merged"))
    for (body,) in conn.execute(query.execution_options(yield_per=_STREAM_ROWS)):
        yield json.loads(body)


def _latest(conn: sa.Connection) -> datetime | None:
    """The time of the newest trace record or segment change."""
    h = history_t.c
    found = [conn.execute(sa.select(sa.func.max(c))).scalar() for c in (trace_t.c.at, h.entered_at, h.left_at)]
    times = [_time(text) for text in found if text]
    return max(times, default=None)


def _state_counts(conn: sa.Connection) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for journey, state, users in conn.execute(sa.select(counts_t.c.journey, counts_t.c.state, counts_t.c.users)):
        counts.setdefault(journey, {})[state] = users
    return counts


def _bandit_stats(conn: sa.Connection) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
    b = bandit_t.c
    stats: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
    for journey, state, arm, sends, conversions in conn.execute(sa.select(b.journey, b.state, b.arm, b.sends,
                                                                          b.conversions)):
        stats.setdefault((journey, state), {})[arm] = (sends, conversions)
    return stats


def _time(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class _Run:
    """One run through a journey while the walk is inside it."""

    __slots__ = ("converted", "holdout", "moved", "sends", "state", "visited")

    def __init__(self, state: str, holdout: bool) -> None:
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
        self.entrants = {False: 0, True: 0}  # holdout -> runs
        self.converted = {False: 0, True: 0}

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
                             converted=sum(self.converted.values()))


class _TraceWalk:
    """Feeds trace records, in commit order, to the counters; keeps only the runs still open."""

    def __init__(self, tallies: dict[str, _JourneyTally], cutoff: datetime | None) -> None:
        self.tallies = tallies
        self.cutoff = cutoff
        self.runs: dict[str, dict[tuple[str, str], _Run]] = {}  # user -> (journey, key) -> run
        self.engaged: set[str] = set()  # "event:send_key": a second open of one email is not a second open
        self.handlers = {
            "journey_entered": self._entered, "transition": self._transition, "journey_exited": self._exited,
            "goal_reached": self._goal, "message_sent": self._sent, "message_deferred": self._deferred,
            "message_suppressed": self._suppressed, "message_delivered": self._delivered,
            "message_failed": self._failed, "message_engaged": self._engaged,
        }

    def feed(self, r: dict[str, Any]) -> None:
        if self.cutoff is not None and _time(r["at"]) > self.cutoff:
            return
        if r["kind"] == "alias_merged":
            self._merged(r)
            return
        tally = self.tallies.get(r.get("journey") or "")
        if tally is not None:
            self.handlers[r["kind"]](tally, r)

    def finish(self) -> None:
        for runs in self.runs.values():
            for (journey, _), run in runs.items():
                self.tallies[journey].state(run.state).now_in += 1

    def _run(self, r: dict[str, Any]) -> _Run | None:
        return self.runs.get(r["user"], {}).get((r["journey"], r.get("key") or ""))

    def _entered(self, tally: _JourneyTally, r: dict[str, Any]) -> None:
        run = _Run(r["state"], bool(r.get("holdout")))
        self.runs.setdefault(r["user"], {})[(r["journey"], r.get("key") or "")] = run
        tally.state(run.state).entered += 1
        tally.entrants[run.holdout] += 1

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

    def _exited(self, tally: _JourneyTally, r: dict[str, Any]) -> None:
        user = self.runs.get(r["user"], {})
        run = user.pop((r["journey"], r.get("key") or ""), None)
        if not user:
            self.runs.pop(r["user"], None)
        if run is None:
            return
        exited = tally.state(r.get("state") or run.state).exited
        exited[r["reason"]] = exited.get(r["reason"], 0) + 1

    def _goal(self, tally: _JourneyTally, r: dict[str, Any]) -> None:
        run = self._run(r)
        if run is None:
            return
        if not run.converted:  # a goal that does not exit may be reached again: the funnel counts it once
            run.converted = True
            tally.converted[run.holdout] += 1
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
        reasons = tally.message(r["message"], r["channel"]).suppressed
        reason = str(r.get("reason") or "unknown")
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
            into.setdefault(ikey, run)


def _bandits(cj: CompiledJourney, stats: dict[tuple[str, str], dict[str, tuple[int, int]]]) -> list[BanditReport]:
    found = []
    for name, state in cj.journey.states.items():
        learned = stats.get((cj.name, name), {})
        if isinstance(state.send, Choose) and state.send.choose == "best":
            arms = {m: learned.get(m, (0, 0)) for m in state.send.from_}
            strategy = "choose: best"
        elif state.split is not None and state.split.strategy == "bandit":
            arms = {"->" + p.to: learned.get("->" + p.to, (0, 0)) for p in state.split.paths}
            strategy = "split: bandit"
        else:
            continue
        arms.update(learned)  # arms the file no longer lists still show what they learnt
        found.append(BanditReport(state=name, strategy=strategy, arms=[
            ArmEstimate(arm=arm.removeprefix("->"), kind="path" if arm.startswith("->") else "message",
                        sends=e["sends"], conversions=e["conversions"], mean=e["mean"], low=e["low"], high=e["high"])
            for arm, e in estimates(arms).items()]))
    return found


# --- segments -------------------------------------------------------------------------------------


def _segments(conn: sa.Connection, compiled: CompiledWorkspace, now: datetime, weeks: int) -> list[SegmentReport]:
    """Size per day and weekly retention cohorts of every segment, one user's history at a time."""
    h = history_t.c
    query = sa.select(h.segment, h.user_id, h.entered_at, h.left_at).order_by(h.segment, h.user_id, h.entered_at)
    rows = conn.execute(query.execution_options(yield_per=_STREAM_ROWS))
    found = {name: _SegmentTally(name, now, weeks) for name in compiled.workspace.segments}
    for (segment, _), history in itertools.groupby(rows, key=lambda row: (row[0], row[1])):
        tally = found.get(segment)
        if tally is None:
            tally = found[segment] = _SegmentTally(segment, now, weeks)
        tally.user(_intervals(history, now))
    return [t.report() for t in found.values()]


def _intervals(history: Iterable[Sequence[Any]], now: datetime) -> list[tuple[date, date | None]]:
    """One user's stays in a segment as (entered, left) UTC dates, as seen at `now`."""
    stays = []
    for _, _, entered, left in history:
        entered_at = _time(entered)
        if entered_at > now:
            continue
        left_at = _time(left) if left else None
        stays.append((entered_at.astimezone(UTC).date(),
                      left_at.astimezone(UTC).date() if left_at and left_at <= now else None))
    return stays


class _SegmentTally:
    """Membership changes per day and cohorts per week of first entry, for one segment.

    A user is a member at the close of day d when they entered before midnight and had not left by
    then; on dates alone that is `entered <= d < left`, so a day's count is a running sum of changes.
    """

    def __init__(self, name: str, now: datetime, weeks: int) -> None:
        self.name = name
        self.now = now
        self.today = now.astimezone(UTC).date()
        self.weeks = weeks
        self.changes: dict[date, int] = {}
        self.cohorts: dict[date, list[int]] = {}  # Monday -> [users, still in after week 0, 1, ...]

    def user(self, stays: list[tuple[date, date | None]]) -> None:
        if not stays:
            return
        for entered, left in stays:
            self.changes[entered] = self.changes.get(entered, 0) + 1
            if left is not None:
                self.changes[left] = self.changes.get(left, 0) - 1
        first = min(entered for entered, _ in stays)
        monday = first - timedelta(days=first.weekday())
        row = self.cohorts.setdefault(monday, [0] * (self.weeks + 2))
        row[0] += 1
        for k in range(self.weeks + 1):
            close = monday + timedelta(weeks=k + 1)  # the next Monday, 00:00 UTC
            if any(entered < close and (left is None or left >= close) for entered, left in stays):
                row[k + 1] += 1

    def report(self) -> SegmentReport:
        return SegmentReport(segment=self.name, sizes=self._sizes(), cohorts=self._cohorts())

    def _sizes(self) -> list[tuple[date, int]]:
        if not self.changes:
            return []
        sizes, members, day = [], 0, min(self.changes)
        while day <= self.today:
            members += self.changes.get(day, 0)
            sizes.append((day, members))
            day += timedelta(days=1)
        return sizes

    def _cohorts(self) -> list[Cohort]:
        found = []
        for monday, (users, *still_in) in sorted(self.cohorts.items()):
            closed = [datetime.combine(monday + timedelta(weeks=k + 1), datetime.min.time(), UTC) <= self.now
                      for k in range(self.weeks + 1)]
            iso = monday.isocalendar()
            found.append(Cohort(week=f"{iso.year}-W{iso.week:02d}", start=monday, users=users,
                                still_in=[n if ok else None for n, ok in zip(still_in, closed, strict=True)]))
        shown = max((sum(1 for n in c.still_in if n is not None) for c in found), default=0)
        shown = max(shown, 1)  # week 0 of a cohort that began this week: a column of blanks, not none
        return [Cohort(week=c.week, start=c.start, users=c.users, still_in=c.still_in[:shown]) for c in found]


# --- formatting -----------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _points(value: float | None) -> str:
    """A difference of two rates, in percentage points."""
    return "–" if value is None else f"{value * 100:+.1f} pp"


def _signed_pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f}%"


def _reasons(row: MessageStats) -> str:
    if not row.suppressed:
        return "0"
    detail = ", ".join(f"{reason} {n}" for reason, n in sorted(row.suppressed.items()))
    return f"{row.suppressed_total} ({detail})"


def _lift_sentence(lift: Lift) -> str:
    interval = lift.interval
    if interval is None:
        return "no lift yet: it needs treated and held-out entrants"
    return (f"difference {_points(lift.difference)} (95% CI {_points(interval[0])} to {_points(interval[1])}, "
            f"{LIFT_METHOD}); relative lift {_signed_pct(lift.relative)}")


def iso_seconds(at: datetime) -> str:
    """ISO-8601 UTC to the second, with a Z: how reports and the dashboard show times."""
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


FUNNEL_COLUMNS = ("state", "entered", "now in", "moved on", "exit: final", "exit: exit", "exit: goal", "converted",
                  "conversion")
MESSAGE_COLUMNS = ("message", "channel", "sent", "deferred", "suppressed", "delivered", "failed", "opened",
                   "clicked", "bounced", "unsubscribed", "conversions", "per send")
BANDIT_COLUMNS = ("state", "strategy", "arm", "sends", "conversions", "mean", "95% credible interval")


def _funnel_cells(row: StateFunnel) -> list[str]:
    return [row.state, str(row.entered), str(row.now_in), str(row.moved_on),
            *(str(row.exited.get(reason, 0)) for reason in EXIT_REASONS), str(row.converted),
            _pct(row.conversion_rate)]


def _message_cells(row: MessageStats) -> list[str]:
    return [row.message, row.channel, str(row.sent), str(row.deferred), _reasons(row), str(row.delivered),
            str(row.failed), str(row.opened), str(row.clicked), str(row.bounced), str(row.unsubscribed),
            str(row.conversions), _pct(row.conversion_rate)]


def _arm_cells(bandit: BanditReport, arm: ArmEstimate) -> list[str]:
    label = f"→ {arm.arm}" if arm.kind == "path" else arm.arm
    return [bandit.state, bandit.strategy, label, str(arm.sends), str(arm.conversions), _pct(arm.mean),
            f"{_pct(arm.low)} – {_pct(arm.high)}"]


def _lift_rows(lift: Lift) -> list[list[str]]:
    return [["treated", str(lift.treated), str(lift.treated_converted), _pct(lift.treated_rate)],
            ["held out", str(lift.held_out), str(lift.held_out_converted), _pct(lift.held_out_rate)]]


# --- terminal -------------------------------------------------------------------------------------

_SPARKS = "▁▂▃▄▅▆▇█"
_SPARK_DAYS = 60


def render_terminal(report: Report, console: Console) -> None:
    """The report as rich tables: per journey funnel, messages, lift and bandits; then segments."""
    console.rule(f"journey report · as of {iso_seconds(report.now)}")
    for journey in report.journeys:
        _terminal_journey(journey, console)
    if report.segments:
        console.rule("segments")
        console.print(_table("segment size (members at the close of each UTC day)",
                             ("segment", "now", "min", "max", f"last {_SPARK_DAYS} days"),
                             [_size_cells(s) for s in report.segments]))
        for segment in report.segments:
            if segment.cohorts:
                # A line of its own, not the table's title: rich wraps a title to the narrow table's width.
                console.print(Text(f"{segment.segment}: share of each week's new members still in it at the close "
                                   "of each week since", style="italic"))
                console.print(_cohort_table(segment))


def _terminal_journey(journey: JourneyReport, console: Console) -> None:
    console.rule(f"[bold]{journey.name}[/bold]")
    summary = f"{journey.entered} entered"
    if journey.goal:
        summary += f", {journey.converted} reached the goal ({_pct(journey.conversion_rate)}) · goal: {journey.goal}"
    console.print(Text(summary))
    console.print(_table("funnel", FUNNEL_COLUMNS, [_funnel_cells(r) for r in journey.funnel]))
    # two tables of half the columns each: thirteen columns are unreadable in an 80-column terminal
    cells = [_message_cells(r) for r in journey.messages]
    split = MESSAGE_COLUMNS.index("opened")
    console.print(_table("messages: sending", MESSAGE_COLUMNS[:split], [c[:split] for c in cells]))
    console.print(_table("messages: answers", MESSAGE_COLUMNS[:1] + MESSAGE_COLUMNS[split:],
                         [c[:1] + c[split:] for c in cells]))
    if journey.lift is not None:
        console.print(_table("holdout lift (goal conversion)", ("group", "entrants", "converted", "rate"),
                             _lift_rows(journey.lift)))
        console.print(Text(_lift_sentence(journey.lift)))
    if journey.bandits:
        console.print(_table("bandits (posterior of goal conversion per send)", BANDIT_COLUMNS,
                             [_arm_cells(b, arm) for b in journey.bandits for arm in b.arms]))


def _table(title: str, columns: Iterable[str], rows: Iterable[list[str]]) -> Table:
    """No vertical rules; a column of single words (numbers, ids) as wide as its longest header word or
    value, while the first column and columns of text take what is left and wrap: a table of nine
    numbers fits an 80-column terminal instead of losing its last columns off the edge."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    rows = list(rows)
    for index, name in enumerate(columns):
        justify = "left" if index == 0 or name in ("channel", "strategy", "arm") else "right"
        words = max(len(word) for word in name.split())
        if index == 0 or any(" " in row[index] for row in rows):
            table.add_column(name, justify=justify, overflow="fold", min_width=words)
        else:
            table.add_column(name, justify=justify, width=max([words, *(len(row[index]) for row in rows)]))
    for row in rows:
        table.add_row(*row)
    return table


def _size_cells(segment: SegmentReport) -> list[str]:
    counts = [n for _, n in segment.sizes]
    if not counts:
        return [segment.segment, "0", "–", "–", ""]
    return [segment.segment, str(counts[-1]), str(min(counts)), str(max(counts)), _sparkline(counts[-_SPARK_DAYS:])]


def _sparkline(values: list[int]) -> str:
    low, high = min(values), max(values)
    span = (high - low) or 1
    return "".join(_SPARKS[round((v - low) / span * (len(_SPARKS) - 1))] for v in values)


def _cohort_table(segment: SegmentReport) -> Table:
    table = Table()
    table.add_column("week of entry")
    table.add_column("users", justify="right")
    for k in range(segment.weeks):
        table.add_column(f"week {k}", justify="right")
    for cohort in segment.cohorts:
        cells = [_heat_text(share) for share in cohort.shares]
        cells += [Text("")] * (segment.weeks - len(cells))
        table.add_row(cohort.week, str(cohort.users), *cells)
    return table


def _heat_text(share: float | None) -> Text:
    if share is None:
        return Text("")
    shade = 40 + round(share * 180)  # darker blue for higher retention, readable on both backgrounds
    return Text(_pct(share), style=f"white on rgb(30,{shade // 2},{shade})")


# --- HTML -----------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:2px 0 0;color:#c9cede}main{padding:16px 24px;max-width:1320px}
section{background:#fff;border:1px solid #dde;border-radius:10px;padding:12px 18px;margin:0 0 18px}
h2{margin:4px 0;font-size:18px}h3{margin:16px 0 4px;font-size:15px}.muted{color:#667}
table{border-collapse:collapse;margin:6px 0;font-variant-numeric:tabular-nums}
td,th{border-bottom:1px solid #e3e5ea;padding:3px 9px;text-align:right;white-space:nowrap}th{background:#f0f2f6}
td:first-child,th:first-child,.text{text-align:left}.scroll{overflow-x:auto}
.segments{display:grid;grid-template-columns:repeat(auto-fill,minmax(600px,1fr));gap:8px 24px}
.key{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin:0 4px 0 12px}
svg text{font:12px system-ui,sans-serif;fill:#1d2330}svg .axis{stroke:#99a;stroke-width:1}
svg .entered{fill:#c9d6fb}svg .converted{fill:#2f9e55}svg .line{fill:none;stroke:#4a68d8;stroke-width:2}
svg .zero{stroke:#99a;stroke-dasharray:4 3}svg .whisker{stroke:#1d2330;stroke-width:2}
svg .point{fill:#d8544a}td.heat{min-width:54px}
"""
_BAR_LABEL, _BAR_WIDTH, _BAR_ROW = 170, 380, 28
_TEXT_COLUMNS = {"channel", "suppressed", "strategy", "arm"}


def render_html(report: Report, demo: DemoResult | None = None) -> str:
    """The report as one self-contained page: inline CSS and SVG, no scripts, nothing fetched. With the
    result of `journey demo`, the page opens with the run: its population, the bandits against a fixed
    choice and the holdouts."""
    journeys = "".join(_html_journey(j) for j in report.journeys)
    segments = "".join(_html_segment(s) for s in report.segments)
    segment_part = f"<section><h2>Segments</h2>{_COHORT_NOTE}<div class=\"segments\">{segments}</div></section>" \
        if segments else ""
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>journey report</title><style>{_CSS}</style></head><body>"
            f"<header><h1>journey report</h1><p>as of {escape(iso_seconds(report.now))}</p></header>"
            f"<main>{_html_demo(demo) if demo is not None else ''}{journeys}{segment_part}</main></body></html>\n")


DEMO_CHOICE_COLUMNS = ("state", "decisions", "with a choice", "bandit", "always first", "best possible", "picks")
DEMO_HOLDOUT_COLUMNS = ("journey", "treated", "converted", "held out", "converted", "difference", "95% interval")


def _html_demo(demo: DemoResult) -> str:
    """The demo run: who lived through it, the adaptive choice against a fixed one, and the holdouts."""
    t = demo.traffic
    parts = ['<section id="demo"><h2>Demo run</h2>',
             f"<p>{demo.users:,} synthetic users, {demo.days} days from {escape(iso_seconds(demo.start))} "
             f"(seed {demo.seed}, "
             f"after a {demo.warmup_days}-day warm-up of existing customers' orders): {demo.events:,} events, "
             f"{demo.sends:,} sends.</p>",
             f'<p class="muted">Sessions {t.sessions:,}, median {t.median_events:g} events; {_pct(t.add_to_cart)} add '
             f"to a cart, {_pct(t.abandoned)} of carts abandoned, {_pct(t.converted)} convert; median repeat-purchase "
             f"gap {t.repeat_gap_median:g} days.</p>",
             "<h3>Adaptive choice against a fixed one</h3>",
             '<p class="muted">Expected goal conversions per decision under the demo\'s response model, for the '
             "same users at the same moments: the bandit's picks, always the first eligible candidate, and the best "
             "candidate for each user.</p>",
             _html_table(DEMO_CHOICE_COLUMNS, [_demo_choice_cells(c) for c in demo.choices]),
             f"<p>Overall: the bandit {'beats' if demo.adaptive_beat_fixed else 'does not beat'} the fixed choice, "
             f"{_pct(demo.adaptive_rate)} against {_pct(demo.fixed_rate)} per decision.</p>"]
    if demo.holdouts:
        parts += ["<h3>Journeys against their holdout</h3>",
                  '<p class="muted">First entries with the whole goal window inside the run; converted: another '
                  "order within the window.</p>",
                  _html_table(DEMO_HOLDOUT_COLUMNS, [_demo_holdout_cells(h) for h in demo.holdouts])]
    return "".join(parts) + "</section>"


def _demo_choice_cells(c: ChoiceResult) -> list[str]:
    picks = ", ".join(f"{m} {n}" for m, n in c.picks.items())
    return [f"{c.journey}.{c.state}", str(c.decisions), str(c.with_choice), _pct(c.adaptive_rate),
            _pct(c.fixed_rate), _pct(c.best_rate), picks]


def _demo_holdout_cells(h: HoldoutResult) -> list[str]:
    interval = h.interval
    shown = "–" if interval is None else f"{_points(interval[0])} to {_points(interval[1])}"
    return [h.journey, str(h.treated), _pct(h.treated_rate), str(h.holdout), _pct(h.holdout_rate),
            _points(h.difference), shown]


def _html_journey(journey: JourneyReport) -> str:
    summary = f"{journey.entered} entered"
    if journey.goal:
        summary += (f", {journey.converted} reached the goal ({_pct(journey.conversion_rate)}); "
                    f"goal: {journey.goal}")
    parts = [f'<section class="journey" id="journey-{escape(journey.name)}"><h2>{escape(journey.name)}</h2>']
    if journey.description:
        parts.append(f'<p class="muted">{escape(journey.description)}</p>')
    parts += [f"<p>{escape(summary)}</p>", "<h3>Funnel</h3>", _FUNNEL_KEY, _funnel_svg(journey.funnel),
              _html_table(FUNNEL_COLUMNS, [_funnel_cells(r) for r in journey.funnel]),
              "<h3>Messages</h3>", _html_table(MESSAGE_COLUMNS, [_message_cells(r) for r in journey.messages])]
    if journey.lift is not None:
        parts += ["<h3>Holdout lift</h3>",
                  _html_table(("group", "entrants", "converted", "rate"), _lift_rows(journey.lift)),
                  _interval_svg(journey.lift), f"<p>{escape(_lift_sentence(journey.lift))}</p>"]
    if journey.bandits:
        parts += ["<h3>Bandits</h3>",
                  _html_table(BANDIT_COLUMNS, [_arm_cells(b, arm) for b in journey.bandits for arm in b.arms])]
    return "".join(parts) + "</section>"


_FUNNEL_KEY = ('<p class="muted">Runs through the journey per state:<span class="key" style="background:#c9d6fb">'
               '</span>entered<span class="key" style="background:#2f9e55"></span>then reached the goal</p>')


_COHORT_NOTE = ('<p class="muted">Per segment: members at the close of each UTC day, and a cohort table: users '
                "grouped by the ISO week they first entered, and the share of them in the segment at the close of each "
                "week since (weeks Monday to Sunday, UTC; blank: that week has not ended yet).</p>")


def _html_table(columns: Iterable[str], rows: Iterable[list[str]]) -> str:
    names = list(columns)
    align = ['' if i == 0 or name not in _TEXT_COLUMNS else ' class="text"' for i, name in enumerate(names)]
    head = "".join(f"<th{a}>{escape(c)}</th>" for a, c in zip(align, names, strict=True))
    body = "".join("<tr>" + "".join(f"<td{a}>{escape(cell)}</td>" for a, cell in zip(align, row, strict=True))
                   + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _svg(width: float, height: float, label: str, body: str) -> str:
    # Inline SVG in HTML needs no namespace declaration, so the page names no URL at all.
    return (f'<svg width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
            f'aria-label="{escape(label)}">{body}</svg>')


def _funnel_svg(funnel: list[StateFunnel]) -> str:
    """A bar per state, its length the runs that entered it; the green part those that converted."""
    top = max((row.entered for row in funnel), default=0) or 1
    bars = []
    for index, row in enumerate(funnel):
        y = 6 + index * _BAR_ROW
        entered, converted = row.entered / top * _BAR_WIDTH, row.converted / top * _BAR_WIDTH
        note = f"{row.entered} entered · {row.converted} converted ({_pct(row.conversion_rate)})"
        bars.append(f'<text x="0" y="{y + 15}">{escape(row.state)}</text>'
                    f'<rect class="entered" x="{_BAR_LABEL}" y="{y}" width="{entered:.1f}" height="20" rx="3"/>'
                    f'<rect class="converted" x="{_BAR_LABEL}" y="{y}" width="{converted:.1f}" height="20" rx="3"/>'
                    f'<text x="{_BAR_LABEL + _BAR_WIDTH + 10}" y="{y + 15}">{escape(note)}</text>')
    return _svg(_BAR_LABEL + _BAR_WIDTH + 290, 12 + len(funnel) * _BAR_ROW, "funnel", "".join(bars))


def _interval_svg(lift: Lift) -> str:
    """The difference of conversion rates as a point, its 95% interval as a line, zero dashed."""
    interval, difference = lift.interval, lift.difference
    if interval is None or difference is None:
        return ""
    width, pad = 520.0, 40.0
    low, high = min(interval[0], 0.0), max(interval[1], 0.0)
    margin = (high - low) * 0.1 or 0.05

    def x(value: float) -> float:
        return pad + (value - low + margin) / (high - low + 2 * margin) * (width - 2 * pad)

    body = (f'<line class="zero" x1="{x(0):.1f}" y1="8" x2="{x(0):.1f}" y2="52"/>'
            f'<text x="{x(0):.1f}" y="64" text-anchor="middle">0</text>'
            f'<line class="whisker" x1="{x(interval[0]):.1f}" y1="30" x2="{x(interval[1]):.1f}" y2="30"/>'
            f'<line class="whisker" x1="{x(interval[0]):.1f}" y1="22" x2="{x(interval[0]):.1f}" y2="38"/>'
            f'<line class="whisker" x1="{x(interval[1]):.1f}" y1="22" x2="{x(interval[1]):.1f}" y2="38"/>'
            f'<circle class="point" cx="{x(difference):.1f}" cy="30" r="6"/>'
            f'<text x="{x(interval[0]):.1f}" y="16" text-anchor="middle">{_points(interval[0])}</text>'
            f'<text x="{x(interval[1]):.1f}" y="16" text-anchor="middle">{_points(interval[1])}</text>'
            f'<text x="{x(difference):.1f}" y="52" text-anchor="middle">{_points(difference)}</text>')
    return _svg(width, 70, "difference of goal conversion, treated minus held out, with its 95% interval", body)


def _html_segment(segment: SegmentReport) -> str:
    now = segment.sizes[-1][1] if segment.sizes else 0
    parts = [f'<div class="segment"><h3 id="segment-{escape(segment.segment)}">{escape(segment.segment)}</h3>',
             f"<p>members now: {now}</p>", _size_svg(segment)]
    if segment.cohorts:
        parts.append(_cohort_html(segment))
    return "".join(parts) + "</div>"


def _size_svg(segment: SegmentReport) -> str:
    """Members at the close of each day as a line, with the first and last day and the peak marked."""
    if not segment.sizes:
        return ""
    width, height, pad = 600.0, 160.0, 40.0
    counts = [n for _, n in segment.sizes]
    top = max(counts) or 1
    step = (width - 2 * pad) / max(len(counts) - 1, 1)
    xy = [(pad + i * step, height - pad - n / top * (height - 2 * pad)) for i, n in enumerate(counts)]
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    last_x, last_y = xy[-1]
    first, last = segment.sizes[0][0].isoformat(), segment.sizes[-1][0].isoformat()
    body = (f'<line class="axis" x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}"/>'
            f'<line class="axis" x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}"/>'
            f'<text x="{pad - 6}" y="{pad + 4}" text-anchor="end">{top}</text>'
            f'<text x="{pad - 6}" y="{height - pad + 4}" text-anchor="end">0</text>'
            f'<text x="{pad}" y="{height - pad + 18}">{first}</text>'
            f'<text x="{width - pad}" y="{height - pad + 18}" text-anchor="end">{last}</text>'
            f'<polyline class="line" points="{points}"/>'
            f'<circle class="point" cx="{last_x:.1f}" cy="{last_y:.1f}" r="3.5"/>'
            f'<text x="{last_x + 6:.1f}" y="{last_y + 4:.1f}">{counts[-1]}</text>')
    return _svg(width, height, f"members of {segment.segment} per day", body)


def _cohort_html(segment: SegmentReport) -> str:
    head = "<th>week of entry</th><th>users</th>" + "".join(f"<th>week {k}</th>" for k in range(segment.weeks))
    rows = []
    for cohort in segment.cohorts:
        cells = [_heat_cell(share, n) for share, n in zip(cohort.shares, cohort.still_in, strict=True)]
        cells += ['<td class="heat"></td>'] * (segment.weeks - len(cells))
        rows.append(f"<tr><td>{escape(cohort.week)}</td><td>{cohort.users}</td>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table class="cohorts"><thead><tr>{head}</tr></thead>' \
           f'<tbody>{"".join(rows)}</tbody></table></div>'


def _heat_cell(share: float | None, users: int | None) -> str:
    if share is None:
        return '<td class="heat"></td>'
    colour = "#fff" if share > 0.5 else "#1d2330"
    return (f'<td class="heat" style="background:rgba(74,104,216,{0.08 + 0.85 * share:.2f});color:{colour}" '
            f'title="{users} users">{_pct(share)}</td>')
