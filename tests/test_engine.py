"""The engine's semantics (SPEC §3-§4) on a small workspace, through the shipped harness."""

from __future__ import annotations

from pathlib import Path

import pytest

from journey_engine.compiler import CompiledWorkspace, load_workspace
from journey_engine.events import Event
from journey_engine.testing import Harness

WORKSPACE = Path(__file__).parent / "workspaces" / "basic"
START = "2026-01-05T09:00:00Z"  # a Monday, 10:00 in Berlin


@pytest.fixture(scope="module")
def compiled() -> CompiledWorkspace:
    return load_workspace(WORKSPACE)


@pytest.fixture
def h(compiled: CompiledWorkspace) -> Harness:
    return Harness(compiled, start=START, seed=7)


def signed_up(h: Harness, user: str = "u1", **traits: object) -> None:
    h.identify(user, {"email": f"{user}@example.com", "timezone": "Europe/Berlin", **traits})
    h.track(user, "Signed Up")


def test_entry_event_starts_the_journey_and_sends_the_first_message(h: Harness) -> None:
    """A matching entry event enrolls the user and the initial state's message goes at once."""
    signed_up(h)
    assert h.state("u1", "onboarding") == "welcome"
    assert h.sent("u1") == ["welcome_email"]


def test_entry_guard_keeps_users_out(h: Harness) -> None:
    """An entry `if` that is false leaves the user out of the journey."""
    signed_up(h, country="KP")
    assert h.state("u1", "onboarding") is None


def test_event_transition_with_guard_fires_only_when_the_guard_holds(h: Harness) -> None:
    """`on: Feature Used` with `if: metrics.feature_uses_7d >= 3` waits for the third use."""
    signed_up(h)
    h.track("u1", "Feature Used")
    h.track("u1", "Feature Used")
    assert h.state("u1", "onboarding") == "welcome"
    h.track("u1", "Feature Used")
    assert h.state("u1", "onboarding") is None  # activated is final: the journey is over
    exited = h.records("u1", "journey_exited")
    assert exited[-1]["reason"] == "final"


def test_after_timer_moves_the_user_and_the_next_state_sends(h: Harness) -> None:
    """`after: 2d` fires two days after the state was entered, not before."""
    signed_up(h, push_token="t")
    h.wait("47h")
    assert h.state("u1", "onboarding") == "welcome"
    h.wait("1h")
    assert h.state("u1", "onboarding") == "nudge"
    assert h.sent("u1") == ["welcome_email", "tips_push"]
    [moved] = h.records("u1", "transition")
    assert (moved["from"], moved["to"], moved["trigger"], moved["at"]) == ("welcome", "nudge", "after",
                                                                         "2026-01-07T09:00:00Z")


def test_choose_first_skips_ineligible_candidates_and_traces_them(h: Harness) -> None:
    """Without a push token the push is ineligible; `choose: first` takes the email instead."""
    signed_up(h)
    h.wait("2d")
    assert h.sent("u1") == ["welcome_email", "discount_email"]
    suppressed = h.records("u1", "message_suppressed")
    assert [(r["message"], r["reason"]) for r in suppressed] == [("tips_push", "ineligible")]


def test_at_fires_at_the_next_local_time_of_day(h: Harness) -> None:
    """`at: "09:00"` is the next 09:00 in the user's zone (08:00 UTC in Berlin in winter)."""
    signed_up(h)
    h.wait("2d")  # nudge entered 2026-01-07 10:00 Berlin
    h.wait("22h")
    assert h.state("u1", "onboarding") == "nudge"
    h.wait("1h")  # 2026-01-08 09:00 Berlin
    assert h.state("u1", "onboarding") is None
    kinds = [(r["from"], r["trigger"]) for r in h.records("u1", "transition")]
    assert kinds[1:3] == [("nudge", "at"), ("last_call", "split")]
    assert h.records("u1", "transition")[1]["at"] == "2026-01-08T08:00:00Z"


def test_rule_transition_fires_when_the_profile_changes(h: Harness) -> None:
    """A rule transition is checked on every profile change: an identify with plan=pro moves on."""
    signed_up(h)
    h.wait("2d")
    h.identify("u1", {"plan": "pro"})
    assert h.state("u1", "onboarding") is None
    assert h.records("u1", "transition")[-1]["trigger"] == "rule"


def test_exit_criteria_act_at_once_and_cancel_timers(h: Harness) -> None:
    """An exit event ends the journey immediately; its pending timer never fires."""
    signed_up(h)
    h.track("u1", "Account Deleted")
    h.wait("3d")
    assert h.state("u1", "onboarding") is None
    assert h.records("u1", "transition") == []
    assert h.records("u1", "journey_exited")[0]["reason"] == "exit"


def test_goal_records_the_conversion_and_exits(h: Harness) -> None:
    """Reaching the goal is recorded and, by default, ends the journey."""
    signed_up(h)
    h.track("u1", "Order Completed", {"revenue": 30})
    assert h.records("u1", "goal_reached")
    assert h.records("u1", "journey_exited")[0]["reason"] == "goal"
    assert h.metrics("u1")["revenue"] == 30


def test_reentry_never_is_the_default(h: Harness) -> None:
    """Signing up twice does not start the journey twice."""
    signed_up(h)
    h.track("u1", "Account Deleted")
    h.track("u1", "Signed Up")
    assert h.state("u1", "onboarding") is None
    assert len(h.records("u1", "journey_entered")) == 1


def test_duplicate_message_ids_are_ignored(h: Harness) -> None:
    """A repeated messageId is a duplicate: metrics count it once."""
    signed_up(h)
    h.track("u1", "Feature Used", message_id="m-1")
    h.track("u1", "Feature Used", message_id="m-1")
    assert h.metrics("u1")["feature_uses_7d"] == 1
    assert h.records("u1", "duplicate")


def test_quiet_hours_defer_to_the_end_of_the_night_in_the_users_zone(h: Harness) -> None:
    """A send at 22:30 Berlin is deferred to 08:00 Berlin, then sent."""
    h.wait("12h30m")  # 21:30 UTC = 22:30 Berlin
    signed_up(h)
    assert h.sent("u1") == []
    [deferred] = h.records("u1", "message_deferred")
    assert (deferred["reason"], deferred["until"]) == ("quiet_hours", "2026-01-06T07:00:00Z")
    h.wait("9h30m")
    assert h.sent("u1") == ["welcome_email"]


def test_unsubscribed_users_are_not_sent_subscribed_messages(h: Harness) -> None:
    """An `Unsubscribed` event for the subscription suppresses its messages, with the reason traced."""
    h.identify("u1", {"email": "a@example.com"})
    h.track("u1", "Unsubscribed", {"subscription": "marketing_email"})
    h.track("u1", "Signed Up")
    assert h.sent("u1") == []
    assert h.records("u1", "message_suppressed")[0]["reason"] == "unsubscribed"


def test_translations_follow_the_users_locale(h: Harness) -> None:
    """traits.locale `ko-KR` picks the `ko` translation."""
    signed_up(h, locale="ko-KR")
    assert h.records("u1", "message_sent")[0]["locale"] == "ko"
    send = h.channel.sent[0]
    assert h.engine.render(send).subject == "환영합니다"


def test_keyed_instances_are_independent_and_routed_by_key(h: Harness) -> None:
    """One instance per cartId; an event carrying the key reaches only that instance."""
    h.track("u1", "Product Added", {"cartId": "A", "name": "socks"})
    h.track("u1", "Product Added", {"cartId": "B", "name": "hat"})
    h.track("u1", "Order Completed", {"cartId": "A"})
    assert h.state("u1", "cart", "A") is None
    assert h.state("u1", "cart", "B") == "waiting"
    h.wait("1h")
    assert h.state("u1", "cart", "B") == "reminded"
    assert h.engine.render(h.channel.sent[-1]).body == "You left hat"


def test_reentry_after_a_duration(h: Harness) -> None:
    """`reentry: {after: 1d}` lets the same key enter again a day after the last entry."""
    h.track("u1", "Product Added", {"cartId": "A"})
    h.track("u1", "Order Completed", {"cartId": "A"})
    h.track("u1", "Product Added", {"cartId": "A"})
    assert h.state("u1", "cart", "A") is None
    h.wait("1d")
    h.track("u1", "Product Added", {"cartId": "A"})
    assert h.state("u1", "cart", "A") == "waiting"


def test_windowed_metric_and_segment_change_with_time_alone(h: Harness) -> None:
    """A sliding 7-day window forgets old events, and the segment over it follows with no new event."""
    for _ in range(5):
        h.track("u1", "Feature Used")
    assert "power_users" in h.segments("u1")
    h.wait("7d")
    assert "power_users" not in h.segments("u1")
    assert h.metrics("u1")["feature_uses_7d"] == 0
    left = h.records("u1", "segment_left")
    assert left[0]["at"] == "2026-01-12T09:00:00Z"


def test_no_order_for_30_days_enters_lapsed_within_a_minute(h: Harness) -> None:
    """"No order for 30 days" becomes true 30 days after the last order, to within a minute."""
    h.track("u1", "Order Completed", {"revenue": 10})
    h.wait("30d")
    assert "lapsed" not in h.segments("u1")
    h.wait("1m")
    assert "lapsed" in h.segments("u1")
    [entered] = h.records("u1", "segment_entered")
    assert entered["at"] <= "2026-02-04T09:01:00Z"


def test_created_within_the_last_week_uses_iso_trait_dates(h: Harness) -> None:
    """An ISO-8601 trait is a date-time in rules; membership ends when the week is over."""
    h.identify("u1", {"created_at": "2026-01-04T09:00:00Z"})
    assert "new_users" in h.segments("u1")
    h.wait("6d")
    assert "new_users" not in h.segments("u1")


def test_for_segments_need_the_rule_to_hold_continuously(h: Harness) -> None:
    """`for: 7d` joins after seven days of the rule holding; a repeated identical trait does not reset it."""
    h.identify("u1", {"status": "onboarding"})
    h.wait("3d")
    h.identify("u1", {"status": "onboarding"})
    h.wait("4d")
    assert "stuck" in h.segments("u1")
    h.identify("u1", {"status": "done"})
    assert "stuck" not in h.segments("u1")


def test_metric_where_filters_events(h: Harness) -> None:
    """`where: properties.price > 100` counts only the expensive additions."""
    h.track("u1", "Product Added", {"cartId": "A", "price": 50})
    h.track("u1", "Product Added", {"cartId": "A", "price": 150})
    assert h.metrics("u1")["big_adds"] == 1


def test_alias_merges_the_anonymous_profile(h: Harness) -> None:
    """alias folds the anonymous user's metrics and journeys into the known user."""
    h.track("anon-1", "Product Added", {"cartId": "A"})
    h.track("anon-1", "Feature Used")
    h.identify("u1", {"email": "a@example.com"})
    h.track("u1", "Feature Used")
    h.alias("u1", "anon-1")
    assert h.metrics("u1")["feature_uses_7d"] == 2
    assert h.state("u1", "cart", "A") == "waiting"
    assert h.state("anon-1", "cart", "A") == "waiting"  # the old id now resolves to u1


def test_unset_traits_evaluate_as_null_not_a_crash(h: Harness) -> None:
    """A rule over a trait the user does not have is simply false."""
    h.track("u1", "Signed Up")  # no email: the welcome email is ineligible, nothing crashes
    assert h.state("u1", "onboarding") == "welcome"
    assert h.records("u1", "message_suppressed")[0]["reason"] == "ineligible"


def test_frequency_cap_across_journeys_suppresses(h: Harness) -> None:
    """`any: 3 per 1d` lets three sends through and suppresses the fourth with the reason."""
    signed_up(h)
    for cart in "ABC":
        h.track("u1", "Product Added", {"cartId": cart})
    h.wait("1h")
    assert len(h.sent("u1")) == 3
    assert [r["reason"] for r in h.records("u1", "message_suppressed")] == ["frequency_cap"]


def test_same_seed_gives_the_same_trace(compiled: CompiledWorkspace) -> None:
    """Two runs with the same input and seed produce identical traces."""
    traces = []
    for _ in range(2):
        h = Harness(compiled, start=START, seed=3)
        for n in range(20):
            signed_up(h, f"u{n}")
        h.wait("5d")
        traces.append(h.trace)
    assert traces[0] == traces[1]


def test_a_backfilled_event_updates_metrics_but_moves_no_journey(h: Harness) -> None:
    """An event marked `backfill` (older than the source's trigger window) counts, but starts nothing."""
    h.identify("u1", {"email": "u1@example.com"})
    for name in ("Signed Up", "Feature Used"):
        h.send(Event(type="track", user_id="u1", name=name, timestamp=h.clock.now, backfill=True))
    assert h.state("u1", "onboarding") is None
    assert h.sent("u1") == []
    assert h.metrics("u1")["feature_uses_7d"] == 1
    h.track("u1", "Signed Up")
    assert h.state("u1", "onboarding") == "welcome"
