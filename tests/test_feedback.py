"""Delivery and engagement feedback (issue 4): events that name a send by `send_key` are traced against it,
teach the best hour and the `choose: best` bandit, and a hard bounce suppresses the address."""

from __future__ import annotations

from pathlib import Path

import pytest

from journey_engine.compiler import load_workspace
from journey_engine.testing import Harness

WORKSPACE = """\
version: 1
journey: promo
entry: {on: Signed Up}
goal: {on: Order Completed, within: 7d}
initial: pitch
states:
  pitch:
    send: {choose: best, from: [offer_email, offer_push]}
    transitions:
      - after: 1d
        to: later
  later:
    send: later_email
    transitions:
      - after: 1d
        to: done
  done:
    final: true
messages:
  offer_email: {channel: email, subject: Offer, body: "Hi", subscription: news}
  offer_push: {channel: push, body: "Hi", if: "traits.push_token != null"}
  later_email: {channel: email, subject: Later, body: "Hi", send_at: optimal, subscription: news}
subscriptions:
  news: {channel: email, default: subscribed}
policies:
  timezone: UTC
  send_time: {default_hour: 10}
"""


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    (tmp_path / "promo.yaml").write_text(WORKSPACE)
    return Harness(load_workspace(tmp_path), start="2026-01-05T06:00:00Z", seed=3)


def start(h: Harness, user: str = "u1") -> str:
    """Sign the user up; return the send key of the first message."""
    h.identify(user, {"email": f"{user}@example.com", "timezone": "UTC"})
    h.track(user, "Signed Up")
    return h.channel.sent[-1].idempotency_key


def engaged(h: Harness, user: str = "u1") -> list[str]:
    return [r["event"] for r in h.records(user, "message_engaged")]


def test_feedback_events_are_traced_against_their_send(h: Harness) -> None:
    """`Email Delivered` / `Email Opened` / `Email Link Clicked` with a send_key become message_engaged records."""
    key = start(h)
    for name in ("Email Delivered", "Email Opened", "Email Link Clicked"):
        h.track("u1", name, {"send_key": key})
    records = h.records("u1", "message_engaged")
    assert [r["event"] for r in records] == ["delivered", "opened", "clicked"]
    assert {(r["journey"], r["message"], r["channel"], r["send_key"]) for r in records} == {
        ("promo", "offer_email", "email", key)}


def test_feedback_without_a_known_send_key_changes_nothing_it_cannot_name(h: Harness) -> None:
    """An engagement naming no send of ours is not traced as one (it still counts as a metric event)."""
    start(h)
    h.track("u1", "Email Opened", {"send_key": "somebody:else:x:1:1:nope"})
    h.track("u1", "Email Opened")
    assert engaged(h) == []


def test_a_click_rewards_the_bandit_arm_once(h: Harness) -> None:
    """A click is a success for the arm that chose the message; a goal after it does not count it again."""
    key = start(h)
    stats = h.engine.bandits[("promo", "pitch")]
    assert stats["offer_email"] == (1, 0)
    h.track("u1", "Email Link Clicked", {"send_key": key})
    assert stats["offer_email"] == (1, 1)
    h.track("u1", "Email Link Clicked", {"send_key": key})
    h.track("u1", "Order Completed")
    assert stats["offer_email"] == (1, 1)


def test_a_suppressed_choice_teaches_the_bandit_nothing(h: Harness) -> None:
    """A `choose: best` pick that is suppressed (here: unsubscribed) is not counted as a trial."""
    h.identify("u1", {"email": "u1@example.com"})
    h.track("u1", "Unsubscribed", {"subscription": "news"})
    h.track("u1", "Signed Up")
    assert h.records("u1", "message_suppressed")[-1]["reason"] == "unsubscribed"
    assert h.engine.bandits.get(("promo", "pitch"), {}).get("offer_email", (0, 0)) == (0, 0)


def test_unsubscribing_from_a_message_unsubscribes_from_its_subscription(h: Harness) -> None:
    """An `Unsubscribed` event that names a send (the email's unsubscribe link) leaves that message's list."""
    key = start(h)
    h.track("u1", "Unsubscribed", {"send_key": key})
    assert engaged(h) == ["unsubscribed"]
    h.wait("1d")
    suppressed = h.records("u1", "message_suppressed")
    assert ("later_email", "unsubscribed") in [(r["message"], r["reason"]) for r in suppressed]
    assert h.sent("u1") == ["offer_email"]


def test_a_hard_bounce_suppresses_the_address_until_it_changes(h: Harness) -> None:
    """After `Email Bounced` the address is never mailed again; a new traits.email lifts it."""
    key = start(h)
    h.track("u1", "Email Bounced", {"send_key": key})
    assert h.records("u1", "address_suppressed")[0]["address"] == "u1@example.com"
    h.wait("1d")
    assert h.records("u1", "message_suppressed")[-1]["reason"] == "bounced"
    assert h.sent("u1") == ["offer_email"]


def test_a_new_address_lifts_the_bounce(h: Harness) -> None:
    """The suppression belongs to the address: once traits.email changes, mail goes out again."""
    key = start(h)
    h.track("u1", "Email Bounced", {"send_key": key})
    h.identify("u1", {"email": "new@example.com"})
    h.wait("1d")
    h.wait("12h")  # later_email waits for the default send hour
    assert h.sent("u1") == ["offer_email", "later_email"]
    assert h.channel.sent[-1].context["traits"]["email"] == "new@example.com"


def test_a_soft_bounce_suppresses_nothing(h: Harness) -> None:
    """`bounce_type: soft` is a temporary failure: the address stays in use."""
    key = start(h)
    h.track("u1", "Email Bounced", {"send_key": key, "bounce_type": "soft"})
    assert h.records("u1", "address_suppressed") == []
    assert engaged(h) == ["bounced"]


def test_optimal_send_time_uses_the_users_own_best_hour_and_says_so(h: Harness) -> None:
    """With engagement history, `send_at: optimal` waits for the user's best hour and the trace says why."""
    key = start(h)
    h.track("u1", "Email Opened", {"send_key": key}, timestamp="2026-01-04T19:10:00Z")
    h.wait("1d")  # 06:00 next day: later_email is due, the user's hour is 19:00
    deferred = h.records("u1", "message_deferred")[-1]
    assert deferred["until"] == "2026-01-06T19:00:00Z"
    assert "the user's best hour (from 1 engagement) 19:00" in deferred["why"]


def test_optimal_send_time_falls_back_to_the_workspace_then_the_default(h: Harness) -> None:
    """Without the user's own history: the hour most users engage at, once there is enough of it;
    before that, `policies.send_time.default_hour`."""
    start(h, "u0")
    h.wait("1d")
    first = h.records("u0", "message_deferred")[-1]
    assert (first["until"], "the default send hour 10:00" in first["why"]) == ("2026-01-06T10:00:00Z", True)
    for i in range(25):
        key = start(h, f"v{i}")
        h.track(f"v{i}", "Email Opened", {"send_key": key}, timestamp="2026-01-06T15:30:00Z")
    start(h, "u1")
    h.wait("1d")
    deferred = h.records("u1", "message_deferred")[-1]
    assert deferred["until"] == "2026-01-07T15:00:00Z"
    assert "the workspace's best hour (from 25 engagements) 15:00" in deferred["why"]
