"""The marketer's reach (SPEC §3 item 15): learning per cohort, caps with `if:`, the global control group,
and transactional sends (item 11) against all three."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from journey_engine.compiler import CompiledWorkspace, load_workspace
from journey_engine.errors import WorkspaceError
from journey_engine.model import FrequencyCap
from journey_engine.policies import applicable_caps, in_control_group
from journey_engine.selection import EVERYONE_ELSE, bandit_state, cohort_of, split_bandit_state
from journey_engine.testing import Harness

START = "2026-01-05T10:00:00Z"  # a Monday, 11:00 in Berlin: outside quiet hours

COMMON = """\
version: 1
segments:
  young: "traits.age != null and traits.age < 30"
  vip: "traits.vip == true"
  engaged: "metrics.clicks >= 3"
metrics:
  clicks: {count: Clicked}
policies:
  timezone: Europe/Berlin
  control_group: {control}
  frequency_caps:
    - {{channel: any, max: 1, per: 1d, if: "not ('engaged' in segments)"}}
    - {{channel: any, max: 3, per: 1d, if: "'engaged' in segments"}}
messages:
  tips_email: {{channel: email, subject: Tips, body: Hi, if: "traits.email != null"}}
  tips_push: {{channel: push, body: Hi, if: "traits.push_token != null"}}
  receipt: {{channel: email, subject: Receipt, body: Thanks, transactional: true}}
  news: {{channel: email, subject: News, body: News}}
"""

JOURNEYS = """\
version: 1
journey: tips
entry: {on: Signed Up, reentry: always}
goal: {on: Order Completed, within: 7d}
initial: tip
states:
  tip:
    send: {choose: best, from: [tips_email, tips_push], by: [young, vip]}
    transitions:
      - on: Done
        to: done
  done:
    final: true
---
"""

ORDERS = """\
version: 1
journey: orders
entry: {on: Order Placed, reentry: always}
initial: receipt
states:
  receipt:
    send: [receipt, news]
    transitions:
      - to: done
  done:
    final: true
"""


def workspace(root: Path, control: str = "0%") -> CompiledWorkspace:
    common = COMMON.replace("{control}", control).replace("{{", "{").replace("}}", "}")
    (root / "common.yaml").write_text(common, encoding="utf-8")
    (root / "tips.yaml").write_text(JOURNEYS.split("---")[0], encoding="utf-8")
    (root / "orders.yaml").write_text(ORDERS, encoding="utf-8")
    return load_workspace(root)


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(workspace(tmp_path), start=START, seed=3)


def reachable(h: Harness, user: str, **traits: object) -> None:
    h.identify(user, email=f"{user}@example.com", push_token=f"tok-{user}", timezone="Europe/Berlin", **traits)


# --- cohorts --------------------------------------------------------------------------------------


def test_cohort_is_the_first_listed_segment_the_user_is_in() -> None:
    """`by: [young, vip]`: a young VIP learns with the young, a VIP alone with the VIPs, others apart."""
    assert cohort_of(["young", "vip"], {"vip", "young", "other"}) == "young"
    assert cohort_of(["young", "vip"], {"vip"}) == "vip"
    assert cohort_of(["young", "vip"], {"other"}) == EVERYONE_ELSE


def test_a_cohort_bandit_key_names_the_state_and_the_cohort() -> None:
    """The key a cohort learns under splits back into its state and cohort; a plain state has no cohort."""
    assert bandit_state("tip", "young") == "tip@young"
    assert split_bandit_state("tip@young") == ("tip", "young")
    assert split_bandit_state(bandit_state("tip", EVERYONE_ELSE)) == ("tip", EVERYONE_ELSE)
    assert split_bandit_state("tip") == ("tip", None)
    assert bandit_state("tip", None) == "tip"


def test_each_cohort_learns_only_from_its_own_users(h: Harness) -> None:
    """A send to a young user counts in the young cohort's bandit, one to a VIP in the VIPs', the rest apart."""
    reachable(h, "y1", age=22)
    reachable(h, "v1", age=50, vip=True)
    reachable(h, "o1", age=50)
    reachable(h, "o2")
    for user in ("y1", "v1", "o1", "o2"):
        h.track(user, "Signed Up")
    bandits = h.engine.bandits
    assert {key for key in bandits if key[0] == "tips"} == {
        ("tips", "tip@young"), ("tips", "tip@vip"), ("tips", f"tip@{EVERYONE_ELSE}")}
    assert sum(s for s, _ in bandits[("tips", "tip@young")].values()) == 1
    assert sum(s for s, _ in bandits[("tips", "tip@vip")].values()) == 1
    assert sum(s for s, _ in bandits[("tips", f"tip@{EVERYONE_ELSE}")].values()) == 2


def test_a_goal_credits_the_cohort_the_choice_was_made_in(h: Harness) -> None:
    """A user who leaves the cohort after the pick still credits the cohort that picked for them."""
    reachable(h, "y1", age=22)
    h.track("y1", "Signed Up")
    (picked,) = h.sent("y1")
    h.identify("y1", age=31)  # no longer young
    h.track("y1", "Order Completed")
    assert h.engine.bandits[("tips", "tip@young")][picked] == (1, 1)
    assert ("tips", f"tip@{EVERYONE_ELSE}") not in h.engine.bandits


def test_cohorts_learn_opposite_best_arms(tmp_path: Path) -> None:
    """Young users who answer only push and others who answer only email each end up mostly sent their own."""
    h = Harness(workspace(tmp_path), start=START, seed=11)
    rng = random.Random(5)
    for i in range(240):
        user, young = f"u{i}", i % 2 == 0
        reachable(h, user, age=20 if young else 60)
        h.track(user, "Signed Up")
        (picked,) = h.sent(user)
        good = "tips_push" if young else "tips_email"
        if picked == good and rng.random() < 0.5:
            h.track(user, "Order Completed")
    late = [h.sent(f"u{i}")[0] for i in range(160, 240)]
    young_push = sum(m == "tips_push" for m in late[0::2])
    old_email = sum(m == "tips_email" for m in late[1::2])
    assert young_push >= 34 and old_email >= 34  # of 40 each


def test_by_needs_choose_best_and_declared_segments(tmp_path: Path) -> None:
    """`by` with `choose: first`, or naming an undeclared segment, does not load, and says where."""
    workspace(tmp_path)
    (tmp_path / "tips.yaml").write_text(
        JOURNEYS.split("---")[0].replace("by: [young, vip]", "by: [yuong]"), encoding="utf-8")
    with pytest.raises(WorkspaceError, match=r"tips.yaml:8:\d+: error: unknown segment `yuong`; did you mean `young`"):
        load_workspace(tmp_path)
    (tmp_path / "tips.yaml").write_text(
        JOURNEYS.split("---")[0].replace("choose: best", "choose: first"), encoding="utf-8")
    with pytest.raises(WorkspaceError, match="`by` goes with `choose: best`"):
        load_workspace(tmp_path)


# --- frequency caps with `if:` --------------------------------------------------------------------


def test_applicable_caps_keep_those_without_a_rule_and_those_whose_rule_holds() -> None:
    """A cap without `if:` always applies; one with `if:` only when its rule holds for this user."""
    caps = [FrequencyCap(channel="any", max=1, per="1d"), FrequencyCap(channel="any", max=3, per="1d", **{"if": "x"}),
            FrequencyCap(channel="push", max=1, per="4h", **{"if": "y"})]
    assert applicable_caps(caps, lambda i: i == 2) == [caps[0], caps[2]]
    assert applicable_caps(caps, lambda i: False) == [caps[0]]


def test_engaged_users_get_more_than_the_others(h: Harness) -> None:
    """Three newsletters in a day: an unengaged user gets one, an engaged one (3 clicks) all three."""
    reachable(h, "quiet")
    reachable(h, "fan")
    for _ in range(3):
        h.track("fan", "Clicked")
    for _ in range(3):
        for user in ("quiet", "fan"):
            h.track(user, "Order Placed")
        h.wait("1h")
    assert h.sent("quiet", "orders") == ["receipt", "news", "receipt", "receipt"]
    assert h.sent("fan", "orders") == ["receipt", "news"] * 3
    capped = h.records("quiet", "message_suppressed")
    assert [r["reason"] for r in capped] == ["frequency_cap", "frequency_cap"]
    assert capped[0]["why"] == ("frequency cap on all channels reached: 1 per 1d "
                                "(for users where not ('engaged' in segments))")


def test_a_cap_rule_with_a_mistake_is_a_load_error_at_its_line(tmp_path: Path) -> None:
    """A cap's `if:` naming an undeclared segment fails to load with the file and line of the rule."""
    workspace(tmp_path)
    text = (tmp_path / "common.yaml").read_text(encoding="utf-8")
    text = text.replace("'engaged' in segments)", "metrics.clics > 1)")
    (tmp_path / "common.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(WorkspaceError, match=r"common.yaml:12:\d+: .*clics"):
        load_workspace(tmp_path)


# --- the control group ----------------------------------------------------------------------------


def test_the_control_group_is_a_stable_share_of_ids() -> None:
    """5% of ids are in the control group, the same ones every time, and none at 0%."""
    ids = [f"user-{i}" for i in range(20_000)]
    held = [u for u in ids if in_control_group(u, 0.05)]
    assert 0.045 <= len(held) / len(ids) <= 0.055
    assert held == [u for u in ids if in_control_group(u, 0.05)]
    assert not any(in_control_group(u, 0.0) for u in ids)
    assert set(held) <= {u for u in ids if in_control_group(u, 0.10)}  # a larger group contains a smaller one


def test_control_group_users_go_through_journeys_but_get_only_transactional_sends(tmp_path: Path) -> None:
    """Held-out users enter journeys and are traced `control_group`; their receipts still go out."""
    h = Harness(workspace(tmp_path, "10%"), start=START, seed=3)
    held = next(f"c{i}" for i in range(200) if in_control_group(f"c{i}", 0.10))
    other = next(f"c{i}" for i in range(200) if not in_control_group(f"c{i}", 0.10))
    for user in (held, other):
        reachable(h, user)
        h.track(user, "Signed Up")
        h.track(user, "Order Placed")
    assert h.state(held, "tips") == "tip"
    assert h.sent(held) == ["receipt"]
    suppressed = [(r["message"], r["reason"]) for r in h.records(held, "message_suppressed")]
    assert suppressed[1:] == [("news", "control_group")]
    assert suppressed[0] in (("tips_email", "control_group"), ("tips_push", "control_group"))
    assert h.sent(other)[1:] == ["receipt"]  # the newsletter is over the one-a-day cap: not the control group
    assert [r["reason"] for r in h.records(other, "message_suppressed")] == ["frequency_cap"]


def test_transactional_sends_ignore_caps_and_do_not_count(h: Harness) -> None:
    """SPEC §3 item 11: receipts go past a reached cap and leave room for the next marketing send."""
    reachable(h, "u1")
    h.track("u1", "Order Placed")
    h.wait("2h")
    h.track("u1", "Order Placed")
    assert h.sent("u1", "orders") == ["receipt", "news", "receipt"]
    assert [r["message"] for r in h.records("u1", "message_suppressed")] == ["news"]
