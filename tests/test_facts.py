"""The engine's typed facts (journey_engine/facts.py) and their SPEC §5 records (trace.record)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from journey_engine import facts, trace
from journey_engine.engine import Outcome
from journey_engine.facts import (
    AddressSuppressed,
    AliasIgnored,
    AliasMerged,
    CycleStopped,
    DuplicateIgnored,
    Fact,
    GoalReached,
    JourneyEntered,
    JourneyExited,
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

AT = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
LATER = datetime(2026, 1, 5, 18, 0, 0, 250000, tzinfo=UTC)
MSG = {"journey": "onboarding", "key": None, "state": "welcome", "message": "welcome_email", "channel": "email"}
HEAD = {"at": "2026-01-05T09:30:00Z", "user": "u1"}

CASES = [
    (SegmentEntered(at=AT, user="u1", segment="new_users"),
     {"kind": "segment_entered", **HEAD, "segment": "new_users"}),
    (SegmentLeft(at=AT, user="u1", segment="new_users"), {"kind": "segment_left", **HEAD, "segment": "new_users"}),
    (JourneyEntered(at=AT, user="u1", journey="cart", key="C9", state="shopping"),
     {"kind": "journey_entered", **HEAD, "journey": "cart", "key": "C9", "state": "shopping"}),
    (JourneyEntered(at=AT, user="u1", journey="cart", key=None, state="shopping", holdout=True),
     {"kind": "journey_entered", **HEAD, "journey": "cart", "key": None, "state": "shopping", "holdout": True}),
    (Transitioned(at=AT, user="u1", journey="cart", key="C9", source="shopping", target="nudge", trigger="after"),
     {"kind": "transition", **HEAD, "journey": "cart", "key": "C9", "from": "shopping", "to": "nudge",
      "trigger": "after"}),
    (MessageSent(at=AT, user="u1", **MSG, locale="de"),
     {"kind": "message_sent", **HEAD, **MSG, "locale": "de"}),
    (MessageSent(at=AT, user="u1", **MSG, why="the user's best hour"),
     {"kind": "message_sent", **HEAD, **MSG, "locale": None, "why": "the user's best hour"}),
    (MessageDeferred(at=AT, user="u1", **MSG, until=LATER, reason="quiet_hours", why="in quiet hours"),
     {"kind": "message_deferred", **HEAD, **MSG, "locale": None, "until": "2026-01-05T18:00:00.250000Z",
      "reason": "quiet_hours", "why": "in quiet hours"}),
    (MessageSuppressed(at=AT, user="u1", **MSG, reason="ineligible"),
     {"kind": "message_suppressed", **HEAD, **MSG, "locale": None, "reason": "ineligible"}),
    (MessageSuppressed(at=AT, user="u1", **MSG, reason="expired", due=LATER, why="too late"),
     {"kind": "message_suppressed", **HEAD, **MSG, "locale": None, "reason": "expired",
      "due": "2026-01-05T18:00:00.250000Z", "why": "too late"}),
    (MessageSuppressed(at=AT, user="u1", **MSG, reason="frequency_cap", why=""),
     {"kind": "message_suppressed", **HEAD, **MSG, "locale": None, "reason": "frequency_cap", "why": ""}),
    (MessageEngaged(at=AT, user="u1", **{**MSG, "state": None}, event="clicked", send_key="u1:onboarding::1:1:w"),
     {"kind": "message_engaged", **HEAD, **MSG, "state": None, "locale": None, "event": "clicked",
      "send_key": "u1:onboarding::1:1:w"}),
    (GoalReached(at=AT, user="u1", journey="cart", key="C9"),
     {"kind": "goal_reached", **HEAD, "journey": "cart", "key": "C9"}),
    (GoalReached(at=AT, user="u1", journey="cart", key=None, attributed=("a", "b")),
     {"kind": "goal_reached", **HEAD, "journey": "cart", "key": None, "attributed": ["a", "b"]}),
    (JourneyExited(at=AT, user="u1", journey="cart", key=None, reason="goal", state="nudge"),
     {"kind": "journey_exited", **HEAD, "journey": "cart", "key": None, "reason": "goal", "state": "nudge"}),
    (facts.JourneyMigrated(at=AT, user="u1", journey="cart", key="A", from_version="v1", to_version="v2",
                           source="wait", target="waiting"),
     {"kind": "journey_migrated", **HEAD, "journey": "cart", "key": "A", "from_version": "v1", "to_version": "v2",
      "from": "wait", "to": "waiting"}),
    (RuleFailed(at=AT, user="u1", rule="cart.yaml:4", error="boom", text="a > 1"),
     {"kind": "rule_error", **HEAD, "rule": "cart.yaml:4", "error": "boom", "text": "a > 1"}),
    (CycleStopped(at=AT, user="u1", journey="cart", key=None, state="a", error="loop"),
     {"kind": "cycle", **HEAD, "journey": "cart", "key": None, "state": "a", "error": "loop"}),
    (AliasMerged(at=AT, user="u1", previous_id="anon-1"), {"kind": "alias_merged", **HEAD, "previous_id": "anon-1"}),
    (AliasIgnored(at=AT, user="u1", previous_id="anon-1", reason="taken"),
     {"kind": "alias_ignored", **HEAD, "previous_id": "anon-1", "reason": "taken"}),
    (DuplicateIgnored(at=AT, user="u1", message_id="m-1"), {"kind": "duplicate", **HEAD, "message_id": "m-1"}),
    (SubscriptionChanged(at=AT, user="u1", subscription="news", subscribed=False),
     {"kind": "subscription_changed", **HEAD, "subscription": "news", "subscribed": False}),
    (SubscriptionUnknown(at=AT, user="u1", subscription=7, event="Subscribed", known=("news", "tips")),
     {"kind": "unknown_subscription", **HEAD, "subscription": 7, "event": "Subscribed", "known": ["news", "tips"]}),
    (AddressSuppressed(at=AT, user="u1", channel="email", address="a@example.com", reason="hard bounce"),
     {"kind": "address_suppressed", **HEAD, "channel": "email", "address": "a@example.com",
      "reason": "hard bounce"}),
]


@pytest.mark.parametrize(("fact", "expected"), CASES, ids=[f"{type(c[0]).__name__}-{i}" for i, c in enumerate(CASES)])
def test_each_fact_serialises_to_its_spec_record_field_for_field_in_order(fact: Fact, expected: dict[str, object]
                                                                          ) -> None:
    """A fact's record has the SPEC's kind and fields, in the order the trace has always printed them."""
    record = trace.record(fact)
    assert record == expected
    assert list(record) == list(expected)


def test_every_fact_type_has_a_record() -> None:
    """No concrete fact is left without a serialiser (a new fact must say what its record is)."""
    concrete = {t for t in vars(facts).values() if isinstance(t, type) and issubclass(t, Fact)
                and t not in (Fact, facts.MessageFact)}
    assert concrete == {type(fact) for fact, _ in CASES}


def test_facts_are_frozen_keyword_only_values() -> None:
    """Facts compare by value, take keywords only, and cannot be changed."""
    fact = SegmentEntered(at=AT, user="u1", segment="s")
    assert fact == SegmentEntered(at=AT, user="u1", segment="s")
    with pytest.raises(TypeError):
        SegmentEntered(AT, "u1", "s")  # type: ignore[misc]
    with pytest.raises(AttributeError):
        fact.segment = "other"  # type: ignore[misc]


def test_an_outcomes_records_are_its_facts_serialised_in_order() -> None:
    """Outcome.records is what stores and logs take: the facts' records, in the order they happened."""
    out = Outcome()
    out.facts.extend(fact for fact, _ in CASES[:3])
    other = Outcome()
    other.facts.append(CASES[3][0])
    out.extend(other)
    assert out.records == [expected for _, expected in CASES[:4]]
