"""A user's state as plain data: profile, journey instances, pending sends.

These are `__slots__` objects, not models: there is one per user and a million users must fit. So the
engine's working fields are compact: metrics keep only the values that differ from their defaults,
times that are only compared are epoch floats, and what most users never need (deferred sends,
subscription choices, `for:` clocks...) stays None until it is needed.
Small sequences of plain values are tuples: the garbage collector stops tracking those, which keeps
its full passes over a million profiles short.
Stores persist them; the engine mutates them in place and reports what it did as trace records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

InstanceKey = tuple[str, str]  # (journey, key); key is "" for unkeyed journeys


class Instance:
    """One user's (or one user × key's) run through a journey."""

    __slots__ = ("data", "entered_at", "holdout", "journey", "key", "run", "sent", "state", "state_entered_at",
                 "timers", "version", "visit")

    def __init__(self, *, journey: str, version: str, key: str, state: str, entered_at: datetime,
                 data: dict[str, Any], holdout: bool, run: int | None = None) -> None:
        self.journey = journey
        self.version = version
        self.key = key
        self.state = state
        self.entered_at = entered_at
        self.state_entered_at = entered_at
        self.data = data
        self.holdout = holdout
        # which run through the journey, in its send keys and random draws: the entry time in milliseconds,
        # one more than the last run's when two entries fall in the same millisecond (SPEC §3 item 12)
        self.run = _millis(entered_at) if run is None else run
        self.visit = 0  # counts state visits: a timer or a send belongs to one visit
        self.timers: Sequence[tuple[datetime, int]] = ()  # (due, transition index in the current state)
        self.sent: list[tuple[str, datetime, str]] | None = None  # (message, at, state) for goal attribution

    def entry_epoch(self) -> float:
        """The epoch noted as this run's entry (for re-entry rules): the entry time, or the run id's own
        millisecond when a second entry in one millisecond moved it on."""
        epoch = self.entered_at.timestamp()
        return epoch if self.run == int(epoch * 1000) else self.run / 1000

    def __repr__(self) -> str:
        return f"Instance({self.journey!r}, key={self.key!r}, state={self.state!r})"


class Deferred:
    """A send held back by quiet hours, a window or send-time optimisation.

    It names the run and the state visit that made it, and keeps the run's entry data for its templates:
    it may go out after the run has ended in a final state (SPEC §3 item 10)."""

    __slots__ = ("data", "due", "journey", "key", "message", "run", "state", "visit")

    def __init__(self, *, due: datetime, journey: str, key: str, state: str, message: str, visit: int, run: int,
                 data: dict[str, Any]) -> None:
        self.due = due
        self.journey = journey
        self.key = key
        self.state = state
        self.message = message
        self.visit = visit
        self.run = run
        self.data = data


def entry_run(epoch: float) -> int:
    """The run id of an entry noted at `epoch` (`Instance.entry_epoch`): its millisecond."""
    return int(epoch * 1000 + 0.01)


def _millis(at: datetime) -> int:
    return int(at.timestamp() * 1000)


# `segments_due_at` when no time-driven segment awaits an anchor, and before any has ever run
SETTLED = float("inf")
UNSETTLED = float("-inf")

# Shared, read-only stand-ins for containers a profile has not filled yet.
NO_INSTANCES: Mapping[InstanceKey, Instance] = MappingProxyType({})
NO_DEFAULTS: Mapping[str, Any] = MappingProxyType({})


class Profile:
    """Everything the engine knows about one user.

    `metrics`, `wake` and `subscriptions` read like plain values; the engine works on the compact
    fields behind them (`metric_values`, `wake_at`, `choices`).
    """

    __slots__ = ("bounced", "choices", "defaults", "deferred", "engagements", "entries", "for_since", "held",
                 "instances", "ledger", "metric_values", "segments", "segments_due_at", "stamps", "traits", "user_id",
                 "wake_at", "windows")

    def __init__(self, user_id: str, defaults: Mapping[str, Any] | None = None) -> None:
        self.user_id = user_id
        self.traits: dict[str, Any] = {}
        self.defaults = NO_DEFAULTS if defaults is None else defaults  # the workspace's metric defaults, shared
        self.metric_values: dict[str, Any] = {}  # only the metrics that differ from their default
        self.windows: dict[str, tuple[float, ...]] | None = None  # metric -> (event epoch, value, ...) by time
        # `last` metric -> epoch of the event its value came from: an older event arriving late keeps it
        self.stamps: dict[str, float] | None = None
        self.segments: tuple[str, ...] = ()
        self.for_since: dict[str, datetime] | None = None  # `for:` segments whose rule holds, since when
        self.instances: Mapping[InstanceKey, Instance] = NO_INSTANCES  # change through add/remove_instance
        # (journey, key, epoch of the last entry) after one another, for re-entry rules: a flat tuple is
        # smaller than a dict of key tuples (read and written through last_entry/note_entry)
        self.entries: tuple[Any, ...] | None = None
        self.ledger: tuple[tuple[float, str], ...] | None = None  # (epoch, channel) of sends, for frequency caps
        self.choices: dict[str, bool] | None = None  # subscription -> subscribed?
        self.deferred: list[Deferred] | None = None
        self.engagements: list[float] | None = None  # epochs of opens and clicks, oldest first, the last 50
        self.bounced: tuple[str, ...] | None = None  # addresses that bounced hard: never sent to again
        self.held: tuple[str, ...] | None = None  # journeys whose `if:` entry rule held when last checked
        self.wake_at: float | None = None  # epoch of the next time this user needs the engine without an event
        self.segments_due_at = UNSETTLED  # epoch from which a wake-up must re-run time-driven segments

    @property
    def metrics(self) -> dict[str, Any]:
        """Every metric's value, defaults included (a copy)."""
        defaults = self.defaults  # a proxy's copy is its dict's, where ** would go key by key (~10k instructions)
        values = defaults.copy() if isinstance(defaults, MappingProxyType | dict) else dict(defaults)
        values.update(self.metric_values)
        return values

    @property
    def wake(self) -> datetime | None:
        return None if self.wake_at is None else datetime.fromtimestamp(self.wake_at, UTC)

    @wake.setter
    def wake(self, at: datetime | None) -> None:
        # exact both ways for microsecond datetimes of this era: a float has 0.24 µs steps at 1.8e9 s
        self.wake_at = None if at is None else at.timestamp()

    @property
    def subscriptions(self) -> dict[str, bool]:
        """Subscription choices the user made (absent: the subscription's default)."""
        if self.choices is None:
            self.choices = {}
        return self.choices

    def last_entry(self, key: InstanceKey) -> float | None:
        """Epoch of the user's last entry into this journey (and key), if they ever entered."""
        entries = self.entries
        if entries:
            journey, ikey = key
            for i in range(0, len(entries), 3):
                if entries[i] == journey and entries[i + 1] == ikey:
                    return float(entries[i + 2])
        return None

    def note_entry(self, key: InstanceKey, at: float) -> None:
        entries = self.entries or ()
        journey, ikey = key
        for i in range(0, len(entries), 3):
            if entries[i] == journey and entries[i + 1] == ikey:
                self.entries = (*entries[:i + 2], at, *entries[i + 3:])
                return
        self.entries = (*entries, journey, ikey, at)

    def add_instance(self, key: InstanceKey, inst: Instance) -> None:
        instances = self.instances if isinstance(self.instances, dict) else {}
        instances[key] = inst
        self.instances = instances

    def remove_instance(self, key: InstanceKey) -> None:
        if isinstance(self.instances, dict):
            self.instances.pop(key, None)
            if not self.instances:
                self.instances = NO_INSTANCES

    def __repr__(self) -> str:
        return f"Profile({self.user_id!r}, segments={sorted(self.segments)}, instances={list(self.instances.values())})"
