"""Amplitude-style cohorts in the report: a retention grid by first-seen week, and each journey's goal
conversion by segment.

The store keeps no raw events, so activity is read from an *activity segment*: a segment whose rule is
`metrics.M != null and $now - metrics.M < t'P7D'` with M a `last_seen` metric (of `any` event, or of a
named one). A user is in it from an event until seven days after their last one, and two events of one
stay are less than seven days apart, so every ISO week that overlaps [entry, exit - 7 days] holds an
event: the user was active in exactly the weeks their stays overlap that way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from journey_engine.loading import Workspace
from journey_engine.ports import parse_time
from journey_engine.validation import ACTIVITY_RULE

_WEEK = timedelta(days=7)

History = tuple[str, str, str, str | None]  # segment, user, entered_at, left_at


@dataclass(frozen=True, slots=True)
class RetentionRow:
    """Users first seen in one ISO week, and how many of them were active in each week since (None: the
    week has not ended yet)."""

    week: str
    users: int
    active: list[int | None]

    @property
    def shares(self) -> list[float | None]:
        return [None if n is None else n / self.users for n in self.active]


@dataclass(frozen=True, slots=True)
class Retention:
    segment: str
    label: str  # "any event" or the event's name
    rows: list[RetentionRow]
    hidden: int = 0  # cohorts older than the window, left out
    hidden_users: int = 0

    @property
    def weeks(self) -> int:
        return max((len(r.active) for r in self.rows), default=0)


@dataclass(slots=True)
class SegmentConversion:
    """Runs of a journey whose user was in `segment` when they entered, and how many reached the goal."""

    segment: str
    entered: int = 0
    converted: int = 0

    @property
    def rate(self) -> float | None:
        return self.converted / self.entered if self.entered else None


@dataclass(slots=True)
class Stays:
    """Every stay in every segment, per (segment, user), as (entered, left) times; gathered while the
    report streams the segment history."""

    by: dict[tuple[str, str], list[tuple[datetime, datetime | None]]] = field(default_factory=dict)

    def tee(self, history: Iterator[History]) -> Iterator[History]:
        for row in history:
            segment, user, entered, left = row
            self.by.setdefault((segment, user), []).append((parse_time(entered), parse_time(left) if left else None))
            yield row

    def member(self, segment: str, user: str, at: datetime) -> bool:
        return any(entered <= at and (left is None or left > at) for entered, left in self.by.get((segment, user), ()))


def activity_segments(ws: Workspace) -> dict[str, str]:
    """Segments that say "active in the last 7 days": name -> what counts as active."""
    found = {}
    for name, segment in ws.segments.items():
        match = ACTIVITY_RULE.match(segment.rule)
        if match is None or match.group(1) != match.group(2) or segment.for_ is not None:
            continue
        metric = ws.metrics.get(match.group(1))
        if metric is not None and metric.last_seen is not None:
            found[name] = "any event" if metric.last_seen == "any" else metric.last_seen
    return found


def retention_grids(stays: Stays, activity: dict[str, str], now: datetime, weeks: int) -> list[Retention]:
    """One grid per activity segment, "any event" first; cohorts by the week a user was first seen (their
    first entry into the any-event segment: every user seen that week, active in this grid's sense or not;
    without an any-event segment, the first entry into this one), the last `weeks` weeks only."""
    anyone = next((s for s, label in activity.items() if label == "any event"), None)
    first_seen: dict[str, datetime] = {}
    for (segment, user), rows in stays.by.items():
        if segment == anyone:
            first_seen[user] = min(entered for entered, _ in rows)
    ordered = sorted(activity.items(), key=lambda item: (item[1] != "any event", item[0]))
    return [_grid(stays, segment, label, first_seen, now, weeks) for segment, label in ordered]


def _grid(stays: Stays, segment: str, label: str, first_seen: dict[str, datetime], now: datetime,
          weeks: int) -> Retention:
    today = now.astimezone(UTC).date()
    window = _monday(today) - timedelta(weeks=weeks - 1)
    cohorts: dict[date, list[int]] = {}
    hidden: set[date] = set()
    hidden_users = 0
    if first_seen:  # every user first seen in a week is in its cohort, active in this sense or not
        users = {user: stays.by.get((segment, user), []) for user in first_seen}
    else:
        users = {user: rows for (name, user), rows in stays.by.items() if name == segment}
    for user, rows in users.items():
        seen = first_seen.get(user) or min(entered for entered, _ in rows)
        monday = _monday(seen.astimezone(UTC).date())
        if monday < window:
            hidden.add(monday)
            hidden_users += 1
            continue
        counts = cohorts.setdefault(monday, [0] * (weeks + 1))
        counts[0] += 1
        for k in _active_weeks(rows, monday, now, weeks):
            counts[k + 1] += 1
    found = []
    for monday, (users, *active) in sorted(cohorts.items()):
        closed = [datetime.combine(monday + timedelta(weeks=k + 1), datetime.min.time(), UTC) <= now
                  for k in range(weeks)]
        shown = sum(closed) or 1
        iso = monday.isocalendar()
        found.append(RetentionRow(week=f"{iso.year}-W{iso.week:02d}", users=users,
                                  active=[n if ok else None for n, ok in zip(active, closed, strict=True)][:shown]))
    return Retention(segment=segment, label=label, rows=found, hidden=len(hidden), hidden_users=hidden_users)


def _active_weeks(rows: Iterable[tuple[datetime, datetime | None]], monday: date, now: datetime,
                  weeks: int) -> set[int]:
    """Weeks since `monday` in which a stay shows an event: those overlapping [entry, exit - 7 days]; a
    stay still open had its last event within the last 7 days, so it shows events up to now - 7 days."""
    start = datetime.combine(monday, datetime.min.time(), UTC)
    found = set()
    for entered, left in rows:
        last = (left if left is not None and left <= now else now) - _WEEK
        last = max(last, entered)  # the entry itself is an event
        for k in range(weeks):
            week_start, week_end = start + k * _WEEK, start + (k + 1) * _WEEK
            if entered < week_end and last >= week_start:
                found.add(k)
    return found


def conversion_by_segment(entries: Iterable[tuple[str, datetime, bool]], stays: Stays,
                          segments: Iterable[str]) -> list[SegmentConversion]:
    """Per segment: runs (user, entered at, converted) whose user was in it at entry, and of them converted."""
    rows = {name: SegmentConversion(name) for name in segments}
    for user, at, converted in entries:
        for name, row in rows.items():
            if stays.member(name, user, at):
                row.entered += 1
                row.converted += converted
    return [row for row in rows.values() if row.entered]


def _monday(day: date) -> date:
    return day - timedelta(days=day.weekday())
