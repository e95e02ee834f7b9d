"""Computed metrics: aggregates of a user's events, and when each next changes with time alone.

Metrics count an event at its own timestamp. A `within` window slides over event times against the
engine clock, so a windowed metric changes when its oldest event leaves the window; `next_expiry` says
when that may change a rule, and `current` gives the values at any time.
A profile keeps only the values that differ from their defaults (`Profile.metric_values`); a window
is one flat tuple of (event epoch, value) pairs in the order `bisect.insort` would keep them.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from datetime import UTC, datetime
from typing import Any

from . import clock
from .events import Event
from .model import Metric
from .profile import Profile
from .ruleanalysis import Threshold, holds
from .rules import METRIC_DEFAULTS, RULE_ERRORS, CompiledRule

_NOTHING: frozenset[str] = frozenset()
_INF = float("inf")
_WHOLE = tuple(float(n) for n in range(1024))


class MetricBook:
    """All metrics of a workspace, indexed by the event that feeds them."""

    def __init__(self, metrics: Mapping[str, Metric], where: Mapping[str, CompiledRule],
                 watched: frozenset[str] | None = None,
                 thresholds: Mapping[str, tuple[Threshold, ...] | None] | None = None) -> None:
        self.metrics = dict(metrics)
        self.where = dict(where)
        self.defaults = {name: METRIC_DEFAULTS[m.kind] for name, m in metrics.items()}
        self.by_event: dict[str, list[str]] = {}
        self.for_any: tuple[str, ...] = ()
        for name, metric in metrics.items():
            if metric.event == "any":
                self.for_any += (name,)
            else:
                self.by_event.setdefault(metric.event, []).append(name)
        # what one event feeds: its own metrics, then those of any event
        self._fed = {event: (*names, *self.for_any) for event, names in self.by_event.items()}
        self.windowed = frozenset(n for n, m in metrics.items() if m.within is not None)
        self.kinds = {name: m.kind for name, m in metrics.items()}  # `Metric.kind` is computed on every read
        self.spans = {name: m.within.total_seconds() for name, m in metrics.items() if m.within is not None}
        # windows that segments or journey rules read: only their expiries need a wake-up; a
        # message's eligibility rule reads the window when the message is about to go
        self.watched = self.windowed if watched is None else watched & self.windowed
        # for watched counts that rules only compare with numbers: those comparisons. An expiry that
        # changes none of them changes no rule, so it needs no wake-up (a sum's float total against a
        # decimal literal is not exact, so sums wake at every expiry)
        self.thresholds = {name: found for name, found in (thresholds or {}).items()
                           if found and name in self.watched and self.kinds[name] == "count"}

    def value(self, profile: Profile, name: str) -> Any:
        return profile.metric_values.get(name, self.defaults[name])

    def _set(self, profile: Profile, name: str, value: Any) -> None:
        default = self.defaults[name]
        if value is default or (type(value) is type(default) and value == default):
            profile.metric_values.pop(name, None)  # the default again (0.0 is not 0: templates show it)
        elif type(value) is float and value.is_integer() and 0 < value < len(_WHOLE):
            profile.metric_values[name] = _WHOLE[int(value)]  # counts: one shared 3.0, not one per user
        else:
            profile.metric_values[name] = value

    def apply(self, profile: Profile, event: Event, now: datetime, errors: dict[str, Any] | None = None) -> set[str]:
        """Fold one track event into the profile's metrics; return the names that changed. A `where` rule
        that fails at run time is noted in `errors` (a rule scope) under RULE_ERRORS, for the caller to trace."""
        assert event.name is not None
        names = self._fed.get(event.name, self.for_any)
        if not names:
            return set()
        changed: set[str] = set()
        scope: dict[str, Any] | None = None
        for name in names:
            rule = self.where.get(name)
            if rule is not None:
                scope = scope or {"event": {"name": event.name, "properties": event.properties,
                                            "timestamp": event.timestamp},
                                  "properties": event.properties, "traits": profile.traits,
                                  "user_id": profile.user_id, "metrics": profile.metric_values,
                                  "segments": profile.segments}
                if not rule(scope, now):
                    continue
            if self._fold(profile, name, self.kinds[name], self.metrics[name], event, now):
                changed.add(name)
        if scope is not None and errors is not None and RULE_ERRORS in scope:
            errors.setdefault(RULE_ERRORS, []).extend(scope[RULE_ERRORS])
        return changed

    def _fold(self, profile: Profile, name: str, kind: str, metric: Metric, event: Event, now: datetime) -> bool:
        ts = event.timestamp
        if kind == "last_seen" or kind == "first_seen":
            before = profile.metric_values.get(name)
            if before is None or (ts > before if kind == "last_seen" else ts < before):
                self._set(profile, name, ts)
                return True
            return False
        if kind == "last":  # the value of the latest event by its timestamp that carries the property (SPEC §4)
            assert metric.last is not None
            if metric.last not in event.properties:
                return False
            epoch = ts.timestamp()
            if profile.stamps is None:
                profile.stamps = {}
            elif profile.stamps.get(name, epoch) > epoch:
                return False
            profile.stamps[name] = epoch
            self._set(profile, name, event.properties[metric.last])
            return True
        amount = 1.0 if kind == "count" else _number(event.properties.get(metric.sum or ""))
        if metric.within is None:
            self._set(profile, name, self.value(profile, name) + amount)
            return True
        epoch = ts.timestamp()
        if epoch <= clock.epoch(now) - self.spans[name]:
            return False  # already outside the window
        if profile.windows is None:
            profile.windows = {}
        profile.windows[name] = _insort(profile.windows.get(name, ()), epoch, amount)
        self._window_value(profile, name, clock.epoch(now))
        return True

    def refresh(self, profile: Profile, now: datetime) -> Set[str]:
        """Let events fall out of their windows; return the names that changed."""
        if not profile.windows:
            return _NOTHING
        changed = set()
        now_s = clock.epoch(now)
        for name, entries in list(profile.windows.items()):
            if entries[0] > now_s - self.spans[name]:
                continue  # nothing has left this window: its value stands
            before = self.value(profile, name)
            self._window_value(profile, name, now_s)
            if self.value(profile, name) != before:
                changed.add(name)
        return changed

    def _window_value(self, profile: Profile, name: str, now_s: float) -> None:
        assert profile.windows is not None
        entries, total = self._slid(name, profile.windows[name], now_s)
        if len(entries) != len(profile.windows[name]):
            profile.windows[name] = entries
        self._set(profile, name, total)
        if not entries:
            del profile.windows[name]
            if not profile.windows:
                profile.windows = None

    def _slid(self, name: str, entries: tuple[float, ...], now_s: float) -> tuple[tuple[float, ...], float | int]:
        """A window's entries still inside it at `now_s`, and its value then."""
        cut = _bisect_right(entries, now_s - self.spans[name], _INF)
        if cut:
            entries = entries[2 * cut:]
        if self.kinds[name] == "count":
            return entries, len(entries) // 2
        return entries, sum(entries[1::2])

    def current(self, profile: Profile, now: datetime) -> dict[str, Any]:
        """Every metric's value at `now`, windows slid to it, without changing the profile. A profile's
        windowed values are as of its last event or wake-up: a user is woken only when an expiry can
        change a rule (see `next_expiry`), so what is shown to people is computed here."""
        values = profile.metrics
        if profile.windows:
            now_s = clock.epoch(now)
            for name, entries in profile.windows.items():
                values[name] = self._slid(name, entries, now_s)[1]
        return values

    def next_expiry(self, profile: Profile) -> datetime | None:
        """When an event leaving one of the user's watched windows may next change a rule: the oldest
        one's expiry, or for a count read only through comparisons with numbers, the first expiry
        that crosses one of them (None: no expiry can change a rule)."""
        if not profile.windows:
            return None
        best: float | None = None
        for name, entries in profile.windows.items():
            if name in self.watched:
                bounds = self.thresholds.get(name)
                at = entries[0] + self.spans[name] if bounds is None else self._first_turn(name, entries, bounds)
                if at is not None and (best is None or at < best):
                    best = at
        return None if best is None else datetime.fromtimestamp(best, UTC)

    def _first_turn(self, name: str, entries: tuple[float, ...], bounds: tuple[Threshold, ...]) -> float | None:
        """When the first of a count window's expiries that changes one of its comparisons comes (None:
        none does, down to an empty window). Events that leave at one instant are checked one by one,
        which may wake the user early, never late."""
        n = len(entries) // 2
        before = [holds(b, n) for b in bounds]
        for left in range(1, n + 1):
            if any(holds(b, n - left) != was for b, was in zip(bounds, before, strict=True)):
                return entries[2 * (left - 1)] + self.spans[name]
        return None

    def merge(self, into: Profile, other: Profile, now: datetime) -> None:
        """Alias: fold another profile's metrics into this one's."""
        for name, metric in self.metrics.items():
            a, b = self.value(into, name), self.value(other, name)
            kind = self.kinds[name]
            if metric.within is not None:
                pairs = sorted(_pairs((into.windows or {}).get(name)) + _pairs((other.windows or {}).get(name)))
                if pairs:
                    if into.windows is None:
                        into.windows = {}
                    into.windows[name] = tuple(x for pair in pairs for x in pair)
                    self._window_value(into, name, now.timestamp())
            elif kind in ("count", "sum"):
                self._set(into, name, (a or 0) + (b or 0))
            elif kind == "last_seen":
                self._set(into, name, max((v for v in (a, b) if v is not None), default=None))
            elif kind == "first_seen":
                self._set(into, name, min((v for v in (a, b) if v is not None), default=None))
            elif kind == "last":
                mine, theirs = (into.stamps or {}).get(name), (other.stamps or {}).get(name)
                if theirs is not None and (mine is None or theirs > mine):
                    self._set(into, name, b)
                    into.stamps = {**(into.stamps or {}), name: theirs}
            elif a is None:
                self._set(into, name, b)


def _pairs(entries: tuple[float, ...] | None) -> list[tuple[float, float]]:
    return [] if entries is None else list(zip(entries[::2], entries[1::2], strict=True))


def _bisect_right(entries: tuple[float, ...], epoch: float, amount: float) -> int:
    """bisect.bisect_right over the (epoch, value) pairs of a flat window: the same comparisons."""
    lo, hi = 0, len(entries) // 2
    while lo < hi:
        mid = (lo + hi) // 2
        if (epoch, amount) < (entries[2 * mid], entries[2 * mid + 1]):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _insort(entries: tuple[float, ...], epoch: float, amount: float) -> tuple[float, ...]:
    at = 2 * _bisect_right(entries, epoch, amount)
    return (*entries[:at], epoch, amount, *entries[at:])


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return 0.0
    return 0.0
