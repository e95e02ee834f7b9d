"""Direct tests of behaviours the mutation check (tools/mutants.py) asks about, each on a tiny workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from journey_engine.testing import Harness

START = "2026-01-05T09:00:00Z"


def harness(tmp_path: Path, *journeys: dict[str, Any], start: str = START, **shared: Any) -> Harness:
    messages = {"m": {"channel": "sms", "body": "hi"}, "n": {"channel": "sms", "body": "ho"}}
    doc = {"version": 1, "messages": messages, "policies": {"timezone": "UTC"}, **shared}
    (tmp_path / "shared.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    for j in journeys:
        (tmp_path / f"{j['journey']}.yaml").write_text(yaml.safe_dump({"version": 1, **j}), encoding="utf-8")
    return Harness.load(tmp_path, start=start)


def journey(name: str = "j", on: str = "Signed Up", **more: Any) -> dict[str, Any]:
    doc = {"journey": name, "entry": {"on": on}, "initial": "s0",
           "states": {"s0": {"transitions": [{"after": "30d", "to": "done"}]}, "done": {"final": True}}}
    doc.update(more)
    return doc


def kinds(h: Harness, kind: str) -> list[dict[str, Any]]:
    return h.records(kind=kind)


def test_an_exit_wins_over_a_transition_on_the_same_event(tmp_path: Path) -> None:
    """Exit criteria come before the state's transitions (SPEC §3 item 2)."""
    h = harness(tmp_path, journey(exit=[{"on": "Order Completed"}], states={
        "s0": {"transitions": [{"on": "Order Completed", "to": "done"}]}, "done": {"final": True, "send": "m"}}))
    h.track("u1", "Signed Up")
    h.track("u1", "Order Completed")
    assert [r["reason"] for r in kinds(h, "journey_exited")] == ["exit"]
    assert h.sent("u1") == []


def test_an_event_without_the_key_reaches_every_keyed_instance(tmp_path: Path) -> None:
    """An event that does not carry the key property reaches all of the user's instances (item 5)."""
    h = harness(tmp_path, journey(on="Cart Updated", entry={"on": "Cart Updated", "key": "cartId"}, states={
        "s0": {"transitions": [{"on": "Checkout", "to": "done"}]}, "done": {"final": True}}))
    h.track("u1", "Cart Updated", {"cartId": "A"})
    h.track("u1", "Cart Updated", {"cartId": "B"})
    h.track("u1", "Checkout")
    assert sorted(r["key"] for r in kinds(h, "journey_exited")) == ["A", "B"]


def test_at_is_the_users_local_time(tmp_path: Path) -> None:
    """`at: "09:00"` is the next 09:00 in traits.timezone, not the workspace zone (item 4)."""
    h = harness(tmp_path, journey(states={"s0": {"transitions": [{"at": "09:00", "to": "done"}]},
                                          "done": {"final": True}}))
    h.identify("u1", timezone="Asia/Seoul")  # 18:00 there
    h.track("u1", "Signed Up")
    h.wait("15h1m")  # 09:01 the next day in Seoul, 00:01 UTC
    assert [r["at"] for r in kinds(h, "journey_exited")] == ["2026-01-06T00:00:00Z"]


def test_a_window_closes_at_its_end_minute(tmp_path: Path) -> None:
    """A send at the window's end minute waits for the next opening (windows are [start, end))."""
    h = harness(tmp_path, journey(states={"s0": {"send": "m", "transitions": [{"after": "30d", "to": "done"}]},
                                          "done": {"final": True}}),
                start="2026-01-05T18:00:00Z",
                messages={"m": {"channel": "sms", "body": "hi", "send_at": {"window": "09:00-18:00"}}})
    h.track("u1", "Signed Up")
    assert [r["until"] for r in kinds(h, "message_deferred")] == ["2026-01-06T09:00:00Z"]


def test_a_cap_counts_sends_of_every_journey(tmp_path: Path) -> None:
    """Frequency caps are across all journeys (SPEC §3: `policies`, item 6)."""
    sends = {"s0": {"send": "m", "transitions": [{"after": "30d", "to": "done"}]}, "done": {"final": True}}
    h = harness(tmp_path, journey("a", states=sends), journey("b", on="Clicked", states=sends),
                policies={"timezone": "UTC", "frequency_caps": [{"channel": "any", "max": 1, "per": "1d"}]})
    h.track("u1", "Signed Up")
    h.track("u1", "Clicked")
    assert h.sent("u1") == ["m"]
    assert [r["reason"] for r in kinds(h, "message_suppressed")] == ["frequency_cap"]


def test_a_segment_is_left_when_each_event_leaves_the_window(tmp_path: Path) -> None:
    """A sliding window changes membership at the very minute an event leaves it (SPEC §3 item 3)."""
    h = harness(tmp_path, journey(entry={"on": "Signed Up", "if": "'clicky' in segments"}),
                metrics={"clicks": {"count": "Clicked", "within": "1h"}}, segments={"clicky": "metrics.clicks >= 2"})
    for _ in range(3):
        h.track("u1", "Clicked")
        h.wait("10m")
    h.wait("2h")
    assert [r["at"] for r in kinds(h, "segment_left")] == ["2026-01-05T10:10:00Z"]


def test_reentry_after_counts_from_the_last_entry(tmp_path: Path) -> None:
    """`reentry: {after: 1d}` counts from the last entry, not from the exit."""
    h = harness(tmp_path, journey(entry={"on": "Signed Up", "reentry": {"after": "1d"}},
                                  states={"s0": {"transitions": [{"after": "20h", "to": "done"}]},
                                          "done": {"final": True}}))
    h.track("u1", "Signed Up")
    h.wait("1d1m")
    h.track("u1", "Signed Up")
    assert len(kinds(h, "journey_entered")) == 2


def test_a_repeated_identify_is_a_duplicate(tmp_path: Path) -> None:
    """An identify whose messageId was seen is ignored, like any event (SPEC §3 item 2)."""
    h = harness(tmp_path, journey())
    h.identify("u1", {"plan": "pro"}, message_id="m-1")
    h.identify("u1", {"plan": "free"}, message_id="m-1")
    profile = h.runtime.profile("u1")
    assert profile is not None and profile.traits["plan"] == "pro"


def test_quiet_hours_are_the_users_local_hours(tmp_path: Path) -> None:
    """Quiet hours are in the user's zone (traits.timezone), not the workspace's (item 6)."""
    h = harness(tmp_path, journey(states={"s0": {"send": "m", "transitions": [{"after": "30d", "to": "done"}]},
                                          "done": {"final": True}}),
                start="2026-01-05T14:00:00Z",
                policies={"timezone": "UTC", "quiet_hours": {"from": "21:00", "to": "08:00"}})
    h.identify("u1", timezone="Asia/Seoul")  # 23:00 there
    h.track("u1", "Signed Up")
    assert [r["until"] for r in kinds(h, "message_deferred")] == ["2026-01-05T23:00:00Z"]


def test_a_timer_already_due_on_arrival_is_the_same_step_and_keeps_the_held_send(tmp_path: Path) -> None:
    """A state left at once through an `at:` date that had passed keeps its held send: one step (reading 6)."""
    window = {"m": {"channel": "sms", "body": "hi", "send_at": {"window": "09:00-18:00"}}}
    states = {"s0": {"send": "m", "transitions": [{"at": {"attribute": "traits.trial_ends_at"}, "to": "s1"}]},
              "s1": {"transitions": [{"after": "30d", "to": "done"}]}, "done": {"final": True}}
    h = harness(tmp_path, journey(states=states), start="2026-01-05T18:30:00Z", messages=window)
    h.identify("u1", trial_ends_at="2026-01-01T00:00:00Z")
    h.track("u1", "Signed Up")
    h.wait("15h")
    assert kinds(h, "message_suppressed") == []
    assert [s.at.isoformat() for s in h.channel.sent] == ["2026-01-06T09:00:00+00:00"]


def test_a_timer_due_after_the_deferral_cancels_the_held_send(tmp_path: Path) -> None:
    """Leaving the state through a timer that falls due later cancels its held send (`left_state`)."""
    window = {"m": {"channel": "sms", "body": "hi", "send_at": {"window": "09:00-18:00"}}}
    states = {"s0": {"send": "m", "transitions": [{"after": "1h", "to": "s1"}]},
              "s1": {"transitions": [{"after": "30d", "to": "done"}]}, "done": {"final": True}}
    h = harness(tmp_path, journey(states=states), start="2026-01-05T18:30:00Z", messages=window)
    h.track("u1", "Signed Up")
    h.wait("15h")
    assert [(r["at"], r["reason"]) for r in kinds(h, "message_suppressed")] == [("2026-01-05T19:30:00Z", "left_state")]
    assert h.channel.sent == []


def test_a_held_transactional_send_goes_out_to_an_unsubscribed_user(tmp_path: Path) -> None:
    """Transactional sends ignore subscriptions, also when a held one is decided again at `until` (items 10-11)."""
    receipt = {"m": {"channel": "sms", "body": "hi", "subscription": "news", "transactional": True,
                     "send_at": {"window": "09:00-18:00"}}}
    h = harness(tmp_path, journey(states={"s0": {"send": "m", "transitions": [{"after": "30d", "to": "done"}]},
                                          "done": {"final": True}}),
                start="2026-01-05T06:00:00Z", messages=receipt, subscriptions={"news": {"channel": "sms"}})
    h.track("u1", "Signed Up")
    h.track("u1", "Unsubscribed", {"subscription": "news"})
    h.wait("4h")
    assert [s.at.isoformat() for s in h.channel.sent] == ["2026-01-05T09:00:00+00:00"]


def test_a_held_send_goes_at_until_even_after_the_user_changed_time_zone(tmp_path: Path) -> None:
    """A held send goes out at `until`, re-checked for eligibility, subscription and caps, not timing (item 10)."""
    window = {"m": {"channel": "sms", "body": "hi", "send_at": {"window": "09:00-18:00"}}}
    h = harness(tmp_path, journey(states={"s0": {"send": "m", "transitions": [{"after": "30d", "to": "done"}]},
                                          "done": {"final": True}}), start="2026-01-05T06:00:00Z", messages=window)
    h.track("u1", "Signed Up")  # 06:00 UTC: held until 09:00 UTC
    h.identify("u1", timezone="Asia/Seoul")  # where 09:00 UTC is 18:00, outside the window
    h.wait("4h")
    assert [s.at.isoformat() for s in h.channel.sent] == ["2026-01-05T09:00:00+00:00"]


def test_an_entry_rule_the_merge_makes_true_enters_the_known_user(tmp_path: Path) -> None:
    """An alias that makes an `if:` entry rule true for the known user enters them (README reading 10)."""
    h = harness(tmp_path, journey(entry={"if": "traits.vip == true", "reentry": "always"}, states={
        "s0": {"transitions": [{"to": "done"}]}, "done": {"final": True}}))
    h.identify("anon", vip=True)  # the anonymous id goes through the journey
    h.identify("u1", email="a@example.com")
    h.alias("u1", "anon")  # u1 takes vip: the rule turns true for u1
    assert [r["user"] for r in kinds(h, "journey_entered")] == ["anon", "u1"]


def test_held_sends_due_together_go_in_list_order_when_a_cap_leaves_room_for_one(tmp_path: Path) -> None:
    """Two held sends of one `send` list, equal priority, one cap slot: the first listed goes (item 11)."""
    window = {"n": {"channel": "sms", "body": "ho", "send_at": {"window": "09:00-18:00"}},
              "m": {"channel": "sms", "body": "hi", "send_at": {"window": "09:00-18:00"}}}
    h = harness(tmp_path, journey(states={"s0": {"send": ["n", "m"], "transitions": [{"after": "30d", "to": "done"}]},
                                          "done": {"final": True}}), start="2026-01-05T06:00:00Z", messages=window,
                policies={"timezone": "UTC", "frequency_caps": [{"channel": "any", "max": 1, "per": "1d"}]})
    h.track("u1", "Signed Up")
    h.wait("4h")
    assert h.sent("u1") == ["n"]


def test_at_an_alias_the_known_users_last_value_wins_a_tie(tmp_path: Path) -> None:
    """Two `last` values with one timestamp: after the alias the known user's is kept (README reading 2)."""
    h = harness(tmp_path, journey(), metrics={"last_plan": {"last": "plan", "of": "Plan Changed"}})
    h.track("u1", "Plan Changed", {"plan": "pro"})
    h.track("anon", "Plan Changed", {"plan": "free"})  # same instant, arrived later
    h.alias("u1", "anon")
    assert h.metrics("u1")["last_plan"] == "pro"


def test_two_ids_that_entered_in_one_millisecond_keep_their_own_sends_after_an_alias(tmp_path: Path) -> None:
    """Runs merged by an alias keep their own sends: both held sends go out (SPEC §3 item 12)."""
    window = {"m": {"channel": "sms", "body": "hi", "send_at": {"window": "09:00-18:00"}}}
    h = harness(tmp_path, journey(states={"s0": {"send": "m", "transitions": [{"to": "done"}]},
                                          "done": {"final": True}}), start="2026-01-05T06:00:00Z", messages=window)
    h.track("u1", "Signed Up")
    h.track("anon", "Signed Up")  # the same instant: the same run id
    h.alias("u1", "anon")
    h.wait("4h")
    assert [(s.user, s.message) for s in h.channel.sent] == [("u1", "m"), ("u1", "m")]


def test_a_held_send_of_the_anonymous_id_goes_out_though_the_known_users_run_of_that_millisecond_sent_it(
        tmp_path: Path) -> None:
    """Found by the compiled soak: u1 is sent `m` at once, the anonymous id (in Seoul, outside the window) is
    held, both runs end at once and in one millisecond; after the alias the held send is u1's, and still a
    send of its own run (SPEC §3 item 12), not one the outbox takes for u1's own and drops."""
    window = {"m": {"channel": "sms", "body": "hi", "send_at": {"window": "09:00-18:00"}}}
    h = harness(tmp_path, journey(states={"s0": {"send": "m", "transitions": [{"to": "done"}]},
                                          "done": {"final": True}}), start="2026-01-05T09:00:00Z", messages=window)
    h.identify("anon", timezone="Asia/Seoul")  # 18:00 there: held until 09:00 KST, 00:00 UTC
    h.track("u1", "Signed Up")
    h.track("anon", "Signed Up")  # the same instant: the same run id, and both runs end at once
    h.wait("1m")
    h.alias("u1", "anon")
    h.wait("1d")
    assert [(s.user, s.at.isoformat()) for s in h.channel.sent] == [
        ("u1", "2026-01-05T09:00:00+00:00"), ("u1", "2026-01-06T00:00:00+00:00")]


def test_an_event_for_another_key_still_reaches_the_other_instances_goal(tmp_path: Path) -> None:
    """A segment goal is reached on the event that made the user enter it, whatever key it carried (reading 15)."""
    h = harness(tmp_path, journey(entry={"on": "Cart Updated", "key": "cartId"}, goal={"segment": "clicky"}),
                metrics={"clicks": {"count": "Clicked"}}, segments={"clicky": "metrics.clicks >= 1"})
    h.track("u1", "Cart Updated", {"cartId": "B"})
    h.track("u1", "Clicked", {"cartId": "A"})
    assert [(r["key"], r["reason"]) for r in kinds(h, "journey_exited")] == [("B", "goal")]


def test_a_timer_due_with_a_segment_goal_at_one_instant_fires_first(tmp_path: Path) -> None:
    """A due timer fires before exits and the goal (README reading 7): the 1-day timer ends the run first."""
    h = harness(tmp_path, journey(goal={"segment": "stuck"}, states={
        "s0": {"transitions": [{"after": "1d", "to": "done"}]}, "done": {"final": True}}),
        segments={"stuck": {"rule": "traits.status == 'onboarding'", "for": "1d"}})
    h.identify("u1", status="onboarding")
    h.track("u1", "Signed Up")
    h.wait("1d1m")
    assert [r["reason"] for r in kinds(h, "journey_exited")] == ["final"]
    assert kinds(h, "goal_reached") == []


def test_a_segment_exit_due_with_a_timer_still_ends_the_run_after_the_timer_fires(tmp_path: Path) -> None:
    """The due timer fires first (reading 7), then the exit the user now meets ends the run at once."""
    h = harness(tmp_path, journey(exit=[{"segment": "stuck"}], states={
        "s0": {"transitions": [{"after": "1d", "to": "s0"}, {"on": "Done", "to": "done"}]},
        "done": {"final": True}}), segments={"stuck": {"rule": "traits.status == 'onboarding'", "for": "1d"}})
    h.identify("u1", status="onboarding")
    h.track("u1", "Signed Up")
    h.wait("3d")
    assert [(r["at"], r["reason"]) for r in kinds(h, "journey_exited")] == [("2026-01-06T09:00:00Z", "exit")]


def test_a_segment_entered_once_enters_its_journey_once_even_when_the_run_ends_at_once(tmp_path: Path) -> None:
    """`reentry: always` does not re-enter on the same segment edge after a run that ended at that instant."""
    h = harness(tmp_path, journey(entry={"segment": "pro", "reentry": "always"}, states={
        "s0": {"transitions": [{"at": {"attribute": "traits.trial_ends_at"}, "to": "done"}]},
        "done": {"final": True}}), segments={"pro": "traits.plan == 'pro'"})
    h.identify("u1", plan="pro", trial_ends_at="2026-01-01T00:00:00Z")
    h.wait("1h")
    assert len(kinds(h, "journey_entered")) == 1


def test_an_exit_in_the_step_that_held_a_send_cancels_it(tmp_path: Path) -> None:
    """A timer moves the run into a state whose send is held, and a segment exit due at that instant ends the
    run: the held send is cancelled (`left_journey`), as an exit cancels whenever the send was made (item 10)."""
    window = {"m": {"channel": "sms", "body": "hi", "send_at": {"window": "09:00-18:00"}}}
    h = harness(tmp_path, journey(exit=[{"segment": "stuck"}], states={
        "s0": {"transitions": [{"after": "1h", "to": "s1"}]},
        "s1": {"send": "m", "transitions": [{"after": "30d", "to": "done"}]}, "done": {"final": True}}),
        start="2026-01-05T06:00:00Z", messages=window,
        segments={"stuck": {"rule": "traits.status == 'onboarding'", "for": "1h"}})
    h.identify("u1", status="onboarding")
    h.track("u1", "Signed Up")
    h.wait("4h")
    cancelled = [(r["at"], r["reason"]) for r in kinds(h, "message_suppressed")]
    assert cancelled == [("2026-01-05T07:00:00Z", "left_journey")]
    assert h.channel.sent == []
