"""What the service's Prometheus metrics take from an engine outcome (adapters/service/metrics.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from adapters.service.metrics import Observed
from journey_engine.engine import Outcome
from journey_engine.facts import MessageDeferred, MessageSent, MessageSuppressed, SegmentEntered, Transitioned

AT = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
MSG = {"at": AT, "user": "u1", "journey": "j", "key": None, "state": "s", "message": "m"}


def test_sends_are_counted_by_channel_and_outcome_and_timer_moves_apart() -> None:
    """Message decisions count per (channel, outcome); only `after` and `at` transitions count as timers fired."""
    out = Outcome()
    out.facts.extend([
        MessageSent(**MSG, channel="email"), MessageSent(**MSG, channel="email"), MessageSent(**MSG, channel="push"),
        MessageDeferred(**MSG, channel="email", until=AT, reason="quiet_hours", why=""),
        MessageSuppressed(**MSG, channel="sms", reason="frequency_cap"),
        Transitioned(at=AT, user="u1", journey="j", key=None, source="a", target="b", trigger="after"),
        Transitioned(at=AT, user="u1", journey="j", key=None, source="b", target="c", trigger="at"),
        Transitioned(at=AT, user="u1", journey="j", key=None, source="c", target="d", trigger="event:Order"),
        SegmentEntered(at=AT, user="u1", segment="x"),
    ])
    seen = Observed.of(out, events=4, seconds=0.5)
    assert seen.sends == {("email", "sent"): 2, ("push", "sent"): 1, ("email", "deferred"): 1,
                          ("sms", "suppressed"): 1}
    assert seen.timers == 2
    assert (seen.events, seen.records, seen.effects) == (4, 9, 0)
