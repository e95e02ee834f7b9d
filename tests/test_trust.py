"""The trust findings of the engine's core (SPEC §3 items 9-15): no message silently lost or repeated,
nothing that breaks or goes quietly wrong on ordinary input. Each test is named after the behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest

from journey_engine.compiler import load_workspace
from journey_engine.errors import WorkspaceError
from journey_engine.testing import Harness

START = "2026-01-05T19:30:00Z"  # a Monday, 20:30 in Berlin: half an hour before quiet hours

POLICIES = """
version: 1
policies:
  timezone: Europe/Berlin
  quiet_hours: {from: "21:00", to: "08:00"}
subscriptions:
  news: {channel: email, default: subscribed}
  offers: {channel: email, default: subscribed}
"""


def harness(tmp_path: Path, journey: str, *, more: str = "", start: str = START, seed: int = 3,
            policies: str = POLICIES) -> Harness:
    (tmp_path / "policies.yaml").write_text(policies + more)
    (tmp_path / "journey.yaml").write_text(journey)
    return Harness(load_workspace(tmp_path), start=start, seed=seed)


RECEIPT = """
version: 1
journey: buy
entry: {on: Order Completed, reentry: always}
initial: thanks
states:
  thanks:
    send: thanks_email
    final: true
messages:
  thanks_email:
    channel: email
    subject: "Thanks {{ traits.first_name }}"
    body: "Order {{ journey.data.order }}"
    send_at: {window: "09:00-10:00"}
"""


def test_a_final_states_deferred_send_goes_out_after_the_journey_completed(tmp_path: Path) -> None:
    """A final state whose message is held by a send window completes the journey, and the message still
    goes out when the window opens (SPEC §3 item 10), with the run's entry data in its template."""
    h = harness(tmp_path, RECEIPT)
    h.identify("u1", {"email": "a@example.com", "first_name": "Ana"})
    h.track("u1", "Order Completed", {"order": "A-1"})
    assert h.records("u1", "journey_exited")[-1]["reason"] == "final"
    assert h.sent("u1") == []
    h.wait("1d")
    assert h.sent("u1") == ["thanks_email"]
    assert h.suppressed("u1") == []
    assert "Order A-1" in (h.rendered("u1", "thanks_email") or "")


def test_a_deferred_send_survives_moving_on_at_once_through_a_fallback(tmp_path: Path) -> None:
    """A state left in the same step by a `to:`-only transition keeps its deferred send, and so does
    completing the journey later in a final state."""
    h = harness(tmp_path, """
version: 1
journey: j
entry: {on: Go}
initial: hello
states:
  hello:
    send: hello_email
    transitions: [{to: waiting}]
  waiting:
    transitions: [{on: Stop, to: done}]
  done: {final: true}
messages:
  hello_email: {channel: email, subject: Hi, body: Hi, send_at: {window: "09:00-10:00"}}
""")
    h.identify("u1", {"email": "a@example.com"})
    h.track("u1", "Go")
    assert h.state("u1", "j") == "waiting"
    h.track("u1", "Stop")  # the journey completes before the window opens: that cancels nothing either
    assert h.exited("u1", "j") == "final"
    h.wait("1d")
    assert h.sent("u1") == ["hello_email"]


def test_an_exit_or_a_later_move_cancels_a_deferred_send(tmp_path: Path) -> None:
    """Leaving the state because of a later event, or leaving the journey by its exit, drops the held send
    with its reason; nothing is sent for a state the user is no longer in."""
    h = harness(tmp_path, """
version: 1
journey: j
entry: {on: Go, reentry: always}
exit: [{on: Quit}]
initial: hello
states:
  hello:
    send: hello_email
    transitions: [{on: Next, to: later}]
  later:
    transitions: [{after: 30d, to: done}]
  done: {final: true}
messages:
  hello_email: {channel: email, subject: Hi, body: Hi, send_at: {window: "09:00-10:00"}}
""")
    h.identify("u1", {"email": "a@example.com"})
    h.track("u1", "Go")
    h.track("u1", "Next")
    h.identify("u2", {"email": "b@example.com"})
    h.track("u2", "Go")
    h.track("u2", "Quit")
    h.wait("1d")
    assert h.sent("u1") == [] and h.sent("u2") == []
    assert [r["reason"] for r in h.records("u1", "message_suppressed")] == ["left_state"]
    assert [r["reason"] for r in h.records("u2", "message_suppressed")] == ["left_journey"]


def test_two_entries_at_the_same_instant_are_two_runs_with_their_own_send_keys(tmp_path: Path) -> None:
    """With `reentry: always`, two entry events with one timestamp give two sends with distinct keys."""
    h = harness(tmp_path, RECEIPT.replace('    send_at: {window: "09:00-10:00"}\n', ""), start="2026-01-05T10:00:00Z")
    h.identify("u1", {"email": "a@example.com"})
    h.track("u1", "Order Completed", {"order": "A-1"})
    h.track("u1", "Order Completed", {"order": "A-2"})
    keys = [s.idempotency_key for s in h.channel.sent]
    assert h.sent("u1") == ["thanks_email", "thanks_email"]
    assert len(set(keys)) == 2
    assert [s.context["journey"]["data"]["order"] for s in h.channel.sent] == ["A-1", "A-2"]


def test_a_new_user_is_in_the_segments_that_hold_for_them_from_their_first_event(tmp_path: Path) -> None:
    """`metrics.orders == 0` holds for a user whose first event no metric counts, and a journey entered by
    that segment takes them at once (SPEC §3 item 13)."""
    h = harness(tmp_path, """
version: 1
journey: first
entry: {segment: no_orders}
initial: hi
states:
  hi: {final: true}
""", more="""
metrics:
  orders: {count: Order Completed}
segments:
  no_orders: "metrics.orders == 0"
""")
    h.track("u1", "Page Viewed")
    assert h.segments("u1") == {"no_orders"}
    assert h.exited("u1", "first") == "final"


def test_a_send_list_under_a_cap_sends_the_highest_priority_message_first(tmp_path: Path) -> None:
    """With room for one send, the list's highest `priority` goes, whatever its place in the list."""
    h = harness(tmp_path, """
version: 1
journey: j
entry: {on: Go}
initial: s
states:
  s:
    send: [low_push, high_push]
    final: true
messages:
  low_push: {channel: push, body: low, priority: 1}
  high_push: {channel: push, body: high, priority: 5}
""", policies=POLICIES.replace("policies:\n", "policies:\n  frequency_caps: [{channel: push, max: 1, per: 1d}]\n"),
        start="2026-01-05T10:00:00Z")
    h.identify("u1", {"push_token": "t"})
    h.track("u1", "Go")
    assert h.sent("u1") == ["high_push"]
    assert h.suppressed("u1") == ["low_push"]


def test_a_transactional_message_ignores_quiet_hours_caps_and_subscriptions_and_counts_toward_no_cap(
        tmp_path: Path) -> None:
    """A receipt goes at once at 23:00 to an unsubscribed user over a full cap, and leaves the cap's room."""
    h = harness(tmp_path, """
version: 1
journey: j
entry: {on: Order Completed, reentry: always}
initial: s
states:
  s:
    send: [receipt, promo]
    final: true
messages:
  receipt: {channel: email, subject: Receipt, body: r, transactional: true, subscription: news}
  promo: {channel: email, subject: Promo, body: p, subscription: offers}
""", policies=POLICIES.replace("policies:\n", "policies:\n  frequency_caps: [{channel: any, max: 1, per: 1d}]\n"),
        start="2026-01-05T22:00:00Z")
    h.identify("u1", {"email": "a@example.com"})
    h.track("u1", "Unsubscribed", {"subscription": "news"})
    h.track("u1", "Order Completed")
    assert h.sent("u1") == ["receipt"]  # at 23:00 Berlin: the promo waits for the morning
    h.wait("12h")
    assert h.sent("u1") == ["receipt", "promo"]


def test_a_transactional_message_is_sent_to_a_held_out_user(tmp_path: Path) -> None:
    """Holdouts are sent nothing but their receipts."""
    h = harness(tmp_path, """
version: 1
journey: j
entry: {on: Order Completed}
holdout: 99%
initial: s
states:
  s:
    send: [receipt, promo]
    final: true
messages:
  receipt: {channel: email, subject: Receipt, body: r, transactional: true}
  promo: {channel: email, subject: Promo, body: p}
""", start="2026-01-05T10:00:00Z")
    h.identify("u1", {"email": "a@example.com"})
    h.track("u1", "Order Completed")
    assert h.records("u1", "journey_entered")[0].get("holdout") is True
    assert h.sent("u1") == ["receipt"]
    assert h.suppressed("u1") == ["promo"]


def test_unsubscribed_without_a_name_leaves_every_subscription(tmp_path: Path) -> None:
    """`Unsubscribed` with no `properties.subscription` is an unsubscribe from everything (SPEC §3 item 15)."""
    h = harness(tmp_path, RECEIPT.replace('    send_at: {window: "09:00-10:00"}\n', "    subscription: news\n"),
                start="2026-01-05T10:00:00Z")
    h.identify("u1", {"email": "a@example.com"})
    h.track("u1", "Unsubscribed")
    h.track("u1", "Order Completed")
    assert h.sent("u1") == []
    assert [r["reason"] for r in h.records("u1", "message_suppressed")] == ["unsubscribed"]
    assert {r["subscription"] for r in h.records("u1", "subscription_changed")} == {"news", "offers"}


def test_an_unknown_subscription_name_changes_nothing_and_is_traced(tmp_path: Path) -> None:
    """A misspelt subscription in an event is traced as `unknown_subscription`; mail keeps its choice."""
    h = harness(tmp_path, RECEIPT.replace('    send_at: {window: "09:00-10:00"}\n', "    subscription: news\n"),
                start="2026-01-05T10:00:00Z")
    h.identify("u1", {"email": "a@example.com"})
    h.track("u1", "Unsubscribed", {"subscription": "nwes"})
    h.track("u1", "Order Completed")
    assert h.sent("u1") == ["thanks_email"]
    [record] = h.records("u1", "unknown_subscription")
    assert record["subscription"] == "nwes"


def test_a_rule_that_fails_at_run_time_is_false_and_traced_with_its_file_and_line(tmp_path: Path) -> None:
    """`$now - traits.created_at < t'P7D'` with a created_at that is not a date is a `rule_error` naming
    journey.yaml and the rule's line, and the transition does not fire."""
    h = harness(tmp_path, """
version: 1
journey: j
entry: {on: Go}
initial: s
states:
  s:
    transitions:
      - on: Check
        if: "$now - traits.created_at < t'P7D'"
        to: new
  new: {final: true}
""", start="2026-01-05T10:00:00Z")
    h.identify("u1", {"created_at": "yesterday"})
    h.track("u1", "Go")
    h.track("u1", "Check")
    assert h.state("u1", "j") == "s"
    [record] = h.records("u1", "rule_error")
    assert record["rule"] == f"{tmp_path / 'journey.yaml'}:10"
    assert "mismatch" in record["error"]


@pytest.mark.parametrize(("template", "message"), [
    ("Hi {{ trait.first_name }}", "unknown variable `trait`; did you mean `traits`?"),
    ("{{ metrics.lst_product }}", "unknown metric `lst_product`"),
    ("{{ journey.dta.x }}", "`journey` has no `dta`; did you mean `data`?"),
], ids=["trait-for-traits", "undeclared-metric", "journey-field"])
def test_a_template_naming_what_it_cannot_see_is_a_load_error(tmp_path: Path, template: str, message: str) -> None:
    """A misspelt template variable fails `validate` with the message's file and line, never renders empty."""
    (tmp_path / "m.yaml").write_text(f'version: 1\nmetrics:\n  last_product: {{last: sku, of: Product Added}}\n'
                                     f'messages:\n  hi:\n    channel: push\n    body: "{template}"\n')
    with pytest.raises(WorkspaceError) as caught:
        load_workspace(tmp_path)
    assert message in str(caught.value)
    assert "m.yaml:7" in str(caught.value)


def test_templates_see_segments_and_urls_are_rendered(tmp_path: Path) -> None:
    """A template can read `segments`, and a push's `url` is a template like its body."""
    h = harness(tmp_path, """
version: 1
journey: j
entry: {on: Go}
initial: s
states:
  s: {send: tip, final: true}
messages:
  tip:
    channel: push
    body: "{% if segments contains 'vip' %}VIP{% endif %} tip"
    url: "app://step/{{ traits.step }}"
""", more="segments:\n  vip: \"traits.vip == true\"\n", start="2026-01-05T10:00:00Z")
    h.identify("u1", {"push_token": "t", "vip": True, "step": 3})
    h.track("u1", "Go")
    assert h.rendered("u1", "tip") == "VIP tip\napp://step/3"


def test_sends_due_during_an_outage_expire_while_the_journey_moves_on(tmp_path: Path) -> None:
    """After three days down, a reminder whose timer fell due then is suppressed `expired`, the journey
    still moves as its timers say, and a receipt with `expires: never` still goes (SPEC §3 item 10)."""
    h = harness(tmp_path, """
version: 1
journey: cart
entry: {on: Checkout Started}
initial: waiting
states:
  waiting:
    transitions: [{after: 1h, to: remind}]
  remind:
    send: [reminder_push, receipt_email]
    transitions: [{after: 1d, to: done}]
  done: {final: true}
messages:
  reminder_push: {channel: push, body: "Come back", expires: 2h}
  receipt_email: {channel: email, subject: R, body: r, expires: never}
""", start="2026-01-05T10:00:00Z")
    h.identify("u1", {"push_token": "t", "email": "a@example.com"})
    h.track("u1", "Checkout Started")
    h.outage("3d")
    assert h.exited("u1", "cart") == "final"
    assert h.sent("u1") == ["receipt_email"]
    [expired] = h.records("u1", "message_suppressed")
    assert (expired["message"], expired["reason"], expired["due"]) == ("reminder_push", "expired",
                                                                       "2026-01-05T11:00:00Z")


def test_a_short_wait_is_not_an_outage_and_nothing_expires(tmp_path: Path) -> None:
    """Simulated time passing fires everything on time: a 2-hour expiry never trips during `wait`."""
    h = harness(tmp_path, """
version: 1
journey: cart
entry: {on: Checkout Started}
initial: waiting
states:
  waiting:
    transitions: [{after: 1h, to: remind}]
  remind: {send: reminder_push, final: true}
messages:
  reminder_push: {channel: push, body: "Come back", expires: 2h}
""", start="2026-01-05T10:00:00Z")
    h.identify("u1", {"push_token": "t"})
    h.track("u1", "Checkout Started")
    h.wait("30d")
    assert h.sent("u1") == ["reminder_push"]


@pytest.mark.parametrize(("raw", "user", "previous"), [
    ({"type": "track", "userId": 0, "event": "Go"}, "0", None),
    ({"type": "track", "userId": None, "anonymousId": 42, "event": "Go"}, "42", None),
    ({"type": "alias", "userId": 7, "previousId": 0}, "7", "0"),
], ids=["zero", "numeric-anonymous", "numeric-alias"])
def test_a_number_is_an_id_wherever_an_id_is(raw: dict[str, object], user: str, previous: str | None) -> None:
    """`userId: 0` is the user "0", not a missing id (SPEC §3 item 14)."""
    from datetime import UTC, datetime

    from journey_engine.events import event_from_segment
    event = event_from_segment(raw, default_time=datetime(2026, 1, 5, tzinfo=UTC))
    assert (event.user_id, event.previous_id) == (user, previous)


def test_true_or_false_is_refused_as_an_id_naming_the_field() -> None:
    """`userId: false` gets an error that names the field and says what an id is."""
    from datetime import UTC, datetime

    from journey_engine.errors import InvalidEventError
    from journey_engine.events import event_from_segment
    with pytest.raises(InvalidEventError, match="userId: must be a string or a number, not true/false"):
        event_from_segment({"type": "track", "userId": False, "event": "Go"}, default_time=datetime(2026, 1, 5,
                                                                                                     tzinfo=UTC))


def test_a_scenario_takes_numeric_user_ids_as_their_decimal_strings(tmp_path: Path) -> None:
    """`track: 1` in a scenario is the user "1", the same one `expect: {user: "1"}` looks at."""
    from journey_engine.simulation import load_scenario, run_scenario
    harness(tmp_path, RECEIPT.replace('    send_at: {window: "09:00-10:00"}\n', ""))
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "s.yaml").write_text("""scenario: numeric ids
workspace: ..
start: 2026-01-05T10:00:00Z
steps:
  - identify: 1
    traits: {email: a@example.com}
  - track: 1
    event: Order Completed
  - expect: {user: "1", journey: buy, state: null, exited: final, sent: [thanks_email]}
""")
    result = run_scenario(load_scenario(tmp_path / "scenarios" / "s.yaml"))
    assert result.passed, [f.describe("s.yaml") for f in result.failures]


def test_a_morning_push_and_a_deferred_send_due_during_an_outage_expire(tmp_path: Path) -> None:
    """An `at: "09:00"` push whose morning fell in the outage, and a send held by quiet hours whose `until`
    passed during it, are both suppressed `expired` on resume; each journey still ends where its timers
    lead."""
    h = harness(tmp_path, """
version: 1
journey: morning
entry: {on: Go}
initial: night
states:
  night:
    send: evening_email
    transitions: [{at: "09:00", to: morning}]
  morning: {send: morning_push, final: true}
messages:
  evening_email: {channel: email, subject: E, body: e}
  morning_push: {channel: push, body: "Good morning", expires: 2h}
""", start="2026-01-05T21:30:00Z")  # 22:30 in Berlin: quiet hours hold the email until 08:00
    h.identify("u1", {"email": "a@example.com", "push_token": "t", "timezone": "Europe/Berlin"})
    h.track("u1", "Go")
    assert [r["kind"] for r in h.records("u1") if r["kind"].startswith("message_")] == ["message_deferred"]
    h.outage("2d")
    assert h.exited("u1", "morning") == "final"
    assert h.sent("u1") == []
    expired = [(r["message"], r["reason"], r["due"]) for r in h.records("u1", "message_suppressed")]
    assert expired == [("evening_email", "expired", "2026-01-06T07:00:00Z"),
                       ("morning_push", "expired", "2026-01-06T08:00:00Z")]


def test_a_deferred_send_is_checked_again_for_eligibility_when_it_falls_due(tmp_path: Path) -> None:
    """A message held overnight whose `if` no longer holds in the morning is suppressed `ineligible`."""
    h = harness(tmp_path, """
version: 1
journey: j
entry: {on: Go}
initial: s
states:
  s: {send: offer, final: true}
messages:
  offer: {channel: email, subject: O, body: o, if: "traits.plan != 'pro'"}
""")
    h.identify("u1", {"email": "a@example.com", "plan": "free"})
    h.wait("1h")  # 21:30 in Berlin: quiet hours
    h.track("u1", "Go")
    h.identify("u1", {"plan": "pro"})
    h.wait("12h")
    assert h.sent("u1") == []
    assert [r["reason"] for r in h.records("u1", "message_suppressed")] == ["ineligible"]


def test_an_alias_as_a_users_first_event_makes_them_exist(tmp_path: Path) -> None:
    """An alias that merges nothing is the user's first event: their segments hold from it (item 13)."""
    h = harness(tmp_path, "version: 1\n", more="""
metrics:
  orders: {count: Order Completed}
segments:
  no_orders: "metrics.orders == 0"
""")
    h.alias("u1", "anon-never-seen")
    assert h.segments("u1") == {"no_orders"}


def test_subscribed_to_nothing_is_traced_as_an_unknown_subscription(tmp_path: Path) -> None:
    """`Subscribed` without a name changes nothing and says so."""
    h = harness(tmp_path, "version: 1\n")
    h.track("u1", "Subscribed")
    [record] = h.records("u1", "unknown_subscription")
    assert record["subscription"] is None and h.records("u1", "subscription_changed") == []


def test_a_last_metric_keeps_the_latest_event_by_time_not_by_arrival(tmp_path: Path) -> None:
    """`last: plan` is the plan of the latest event by its timestamp: an older event arriving late, or one
    without the property, does not replace it (SPEC §4: metrics count an event at its timestamp)."""
    h = harness(tmp_path, "version: 1\n", more="""
metrics:
  last_plan: {last: plan, of: Plan Changed}
""", start="2026-01-05T10:00:00Z")
    h.track("u1", "Plan Changed", {"plan": "free"})
    h.track("u1", "Plan Changed", {"plan": "pro"}, timestamp="2026-01-05T09:58:00Z")
    h.track("u1", "Plan Changed", {})
    assert h.metrics("u1")["last_plan"] == "free"


def test_an_alias_brings_the_deferred_send_of_an_anonymous_run_that_completed(tmp_path: Path) -> None:
    """An anonymous visitor's final-state receipt, held by a send window, goes to the known user they
    turn out to be (SPEC §3 items 8 and 10)."""
    h = harness(tmp_path, RECEIPT)
    h.identify("anon-1", {"email": "a@example.com"})
    h.track("anon-1", "Order Completed", {"order": "A-1"})
    h.alias("u1", "anon-1")
    h.wait("1d")
    assert h.sent("u1") == ["thanks_email"]
