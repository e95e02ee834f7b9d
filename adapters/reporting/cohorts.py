"""Segments in the report: members at the close of each UTC day, and weekly retention cohorts."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from journey_engine.ports import parse_time


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
    hidden: int = 0  # cohorts that began before the window of `weeks` weeks, left out of `cohorts`
    hidden_users: int = 0

    @property
    def weeks(self) -> int:
        """Columns of the cohort table: weeks since entry 0..weeks-1."""
        return max((len(c.still_in) for c in self.cohorts), default=0)


def segment_reports(history: Iterator[tuple[str, str, str, str | None]], segments: Iterable[str], now: datetime,
                    weeks: int) -> list[SegmentReport]:
    """Size per day and weekly retention cohorts of every segment, one user's history at a time
    (`history`: stays ordered by segment, user and entry, as `SqlSnapshot.segment_history` reads them)."""
    found = {name: _SegmentTally(name, now, weeks) for name in segments}
    for (segment, _), stays in itertools.groupby(history, key=lambda row: (row[0], row[1])):
        tally = found.get(segment)
        if tally is None:
            tally = found[segment] = _SegmentTally(segment, now, weeks)
        tally.user(_intervals(stays, now))
    return [t.report() for t in found.values()]


_time = parse_time


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
        cohorts = self._cohorts()
        # the window: the last `weeks` weeks; older cohorts (a demo's warm-up year) are counted, not shown
        window = self.today - timedelta(days=self.today.weekday(), weeks=self.weeks - 1)
        shown = [c for c in cohorts if c.start >= window]
        columns = max([1, *(sum(1 for n in c.still_in if n is not None) for c in shown)])
        shown = [Cohort(week=c.week, start=c.start, users=c.users, still_in=c.still_in[:columns]) for c in shown]
        return SegmentReport(segment=self.name, sizes=self._sizes(), cohorts=shown,
                             hidden=len(cohorts) - len(shown),
                             hidden_users=sum(c.users for c in cohorts if c.start < window))

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
