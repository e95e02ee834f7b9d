"""What happened, as typed values: the engine (and the runtime around it) records one fact per trace record
of SPEC §5. In-process consumers match on these types; `trace.record` turns each into the SPEC's record,
which is what is logged, stored and printed.

Fact                       at, user
├── SegmentEntered, SegmentLeft                 segment
├── JourneyEntered                              journey, key, state, version, holdout
├── Transitioned                                journey, key, source, target, trigger
├── MessageFact                                 journey, key, state, message, channel, locale
│   ├── MessageSent                             why
│   ├── MessageDeferred                         until, reason, why
│   ├── MessageSuppressed                       reason, due, why
│   └── MessageEngaged                          event, send_key
├── GoalReached                                 journey, key, attributed
├── JourneyExited                               journey, key, reason, state
├── RuleFailed, CycleStopped                    what went wrong, and where
├── AliasMerged, AliasIgnored, DuplicateIgnored what became of an input
└── SubscriptionChanged, SubscriptionUnknown, AddressSuppressed
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Fact:
    at: datetime
    user: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentEntered(Fact):
    segment: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentLeft(Fact):
    segment: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JourneyEntered(Fact):
    journey: str
    key: str | None
    state: str
    version: str = ""  # the journey version the run is pinned to (SPEC §3, "Changing a live workspace")
    holdout: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Transitioned(Fact):
    journey: str
    key: str | None
    source: str
    target: str
    trigger: str  # event:NAME, rule, after, at or split


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageFact(Fact):
    """A decision about one message of a run (or about a send of one)."""

    journey: str
    key: str | None
    state: str | None
    message: str
    channel: str | None
    locale: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageSent(MessageFact):
    why: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageDeferred(MessageFact):
    until: datetime
    reason: str
    why: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageSuppressed(MessageFact):
    reason: str
    due: datetime | None = None  # an expired send: when it was due
    why: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEngaged(MessageFact):
    """Delivery or engagement feedback on a send (`event` is the message report's column: opened, bounced...)."""

    event: str
    send_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GoalReached(Fact):
    journey: str
    key: str | None
    attributed: tuple[str, ...] = ()  # the `choose: best` and bandit-split arms this goal credited


@dataclass(frozen=True, slots=True, kw_only=True)
class JourneyExited(Fact):
    journey: str
    key: str | None
    reason: str  # final, exit, goal or version
    state: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JourneyMigrated(Fact):
    """A live instance moved to a new version of its journey (`on_change: move`)."""

    journey: str
    key: str | None
    from_version: str
    to_version: str
    source: str  # the state it was in
    target: str  # the state it is in on the new version


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleFailed(Fact):
    rule: str  # file:line
    error: str
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CycleStopped(Fact):
    """Transitions or timers that kept firing at one instant, stopped."""

    journey: str
    key: str | None
    state: str
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AliasMerged(Fact):
    previous_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AliasIgnored(Fact):
    previous_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DuplicateIgnored(Fact):
    message_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionChanged(Fact):
    subscription: str
    subscribed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionUnknown(Fact):
    subscription: Any  # as the event named it: not a known subscription, maybe not even a string
    event: str | None
    known: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressSuppressed(Fact):
    channel: str
    address: str
    reason: str
