"""The trace records of SPEC §5: what happened to whom, when and why.

The engine records typed facts (facts.py); `record` serialises each to its SPEC record, a plain dict
(logged, stored and printed as JSON lines as it is). This is the one place that names the records'
kinds and fields; the builders below also serve the adapters' own records (deliveries, isolation).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from .clock import iso
from .facts import (
    AddressSuppressed,
    AliasIgnored,
    AliasMerged,
    CycleStopped,
    DuplicateIgnored,
    Fact,
    GoalReached,
    JourneyEntered,
    JourneyExited,
    JourneyMigrated,
    MessageDeferred,
    MessageEngaged,
    MessageSent,
    MessageSuppressed,
    RuleFailed,
    SegmentEntered,
    SegmentLeft,
    SubscriptionChanged,
    SubscriptionUnknown,
    Transitioned,
)

Record = dict[str, Any]


__all__ = ["Record", "goal_reached", "iso", "journey_entered", "journey_exited", "message", "other", "record",
           "segment", "transition"]


def segment(kind: str, at: datetime, user: str, name: str) -> Record:
    return {"kind": kind, "at": iso(at), "user": user, "segment": name}


def journey_entered(at: datetime, user: str, journey: str, key: str | None, state: str, **extra: Any) -> Record:
    return {"kind": "journey_entered", "at": iso(at), "user": user, "journey": journey, "key": key,
            "state": state, **extra}


def transition(at: datetime, user: str, journey: str, key: str | None, src: str, dst: str,
               trigger: str) -> Record:
    return {"kind": "transition", "at": iso(at), "user": user, "journey": journey, "key": key,
            "from": src, "to": dst, "trigger": trigger}


def message(kind: str, at: datetime, user: str, journey: str, key: str | None, state: str | None, message_id: str,
            channel: str | None, locale: str | None, **extra: Any) -> Record:
    return {"kind": kind, "at": iso(at), "user": user, "journey": journey, "key": key, "state": state,
            "message": message_id, "channel": channel, "locale": locale, **extra}


def goal_reached(at: datetime, user: str, journey: str, key: str | None, **extra: Any) -> Record:
    return {"kind": "goal_reached", "at": iso(at), "user": user, "journey": journey, "key": key, **extra}


def journey_exited(at: datetime, user: str, journey: str, key: str | None, reason: str, **extra: Any) -> Record:
    return {"kind": "journey_exited", "at": iso(at), "user": user, "journey": journey, "key": key,
            "reason": reason, **extra}


def other(kind: str, at: datetime, user: str, **fields: Any) -> Record:
    """Records beyond the SPEC's minimum: duplicate, cycle, alias_merged, subscription_changed."""
    return {"kind": kind, "at": iso(at), "user": user, **fields}


# --- facts to records ---------------------------------------------------------------------------------

def _segment(f: Any) -> Record:
    return segment("segment_entered" if type(f) is SegmentEntered else "segment_left", f.at, f.user, f.segment)


def _journey_entered(f: JourneyEntered) -> Record:
    extra: dict[str, Any] = {"version": f.version} if f.version else {}
    if f.holdout:
        extra["holdout"] = True
    return journey_entered(f.at, f.user, f.journey, f.key, f.state, **extra)


def _transitioned(f: Transitioned) -> Record:
    return transition(f.at, f.user, f.journey, f.key, f.source, f.target, f.trigger)


def _sent(f: MessageSent) -> Record:
    extra = {"why": f.why} if f.why else {}
    return message("message_sent", f.at, f.user, f.journey, f.key, f.state, f.message, f.channel, f.locale, **extra)


def _deferred(f: MessageDeferred) -> Record:
    return message("message_deferred", f.at, f.user, f.journey, f.key, f.state, f.message, f.channel, f.locale,
                   until=iso(f.until), reason=f.reason, why=f.why)


def _suppressed(f: MessageSuppressed) -> Record:
    extra: dict[str, Any] = {"reason": f.reason}
    if f.due is not None:
        extra["due"] = iso(f.due)
    if f.why is not None:
        extra["why"] = f.why
    return message("message_suppressed", f.at, f.user, f.journey, f.key, f.state, f.message, f.channel, f.locale,
                   **extra)


def _engaged(f: MessageEngaged) -> Record:
    return message("message_engaged", f.at, f.user, f.journey, f.key, f.state, f.message, f.channel, f.locale,
                   event=f.event, send_key=f.send_key)


def _goal(f: GoalReached) -> Record:
    extra = {"attributed": list(f.attributed)} if f.attributed else {}
    return goal_reached(f.at, f.user, f.journey, f.key, **extra)


def _exited(f: JourneyExited) -> Record:
    return journey_exited(f.at, f.user, f.journey, f.key, f.reason, state=f.state)


def _migrated(f: JourneyMigrated) -> Record:
    return {"kind": "journey_migrated", "at": iso(f.at), "user": f.user, "journey": f.journey, "key": f.key,
            "from_version": f.from_version, "to_version": f.to_version, "from": f.source, "to": f.target}


def _rule_failed(f: RuleFailed) -> Record:
    return other("rule_error", f.at, f.user, rule=f.rule, error=f.error, text=f.text)


def _cycle(f: CycleStopped) -> Record:
    return other("cycle", f.at, f.user, journey=f.journey, key=f.key, state=f.state, error=f.error)


def _alias_merged(f: AliasMerged) -> Record:
    return other("alias_merged", f.at, f.user, previous_id=f.previous_id)


def _alias_ignored(f: AliasIgnored) -> Record:
    return other("alias_ignored", f.at, f.user, previous_id=f.previous_id, reason=f.reason)


def _duplicate(f: DuplicateIgnored) -> Record:
    return other("duplicate", f.at, f.user, message_id=f.message_id)


def _subscription_changed(f: SubscriptionChanged) -> Record:
    return other("subscription_changed", f.at, f.user, subscription=f.subscription, subscribed=f.subscribed)


def _subscription_unknown(f: SubscriptionUnknown) -> Record:
    return other("unknown_subscription", f.at, f.user, subscription=f.subscription, event=f.event,
                 known=list(f.known))


def _address_suppressed(f: AddressSuppressed) -> Record:
    return other("address_suppressed", f.at, f.user, channel=f.channel, address=f.address, reason=f.reason)


_RECORDS: dict[type, Callable[[Any], Record]] = {
    SegmentEntered: _segment, SegmentLeft: _segment, JourneyEntered: _journey_entered, Transitioned: _transitioned,
    MessageSent: _sent, MessageDeferred: _deferred, MessageSuppressed: _suppressed, MessageEngaged: _engaged,
    GoalReached: _goal, JourneyExited: _exited, JourneyMigrated: _migrated, RuleFailed: _rule_failed,
    CycleStopped: _cycle,
    AliasMerged: _alias_merged, AliasIgnored: _alias_ignored, DuplicateIgnored: _duplicate,
    SubscriptionChanged: _subscription_changed, SubscriptionUnknown: _subscription_unknown,
    AddressSuppressed: _address_suppressed,
}


def record(fact: Fact) -> Record:
    """The SPEC §5 record of a fact."""
    return _RECORDS[type(fact)](fact)
