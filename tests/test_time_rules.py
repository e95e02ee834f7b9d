"""Time alone moves users through entry, exit and goal rules too (SPEC §3 item 3), and a loop of timers
whose times have passed is reported as a cycle instead of spinning (SPEC §3 item 2)."""

from __future__ import annotations

from pathlib import Path

from journey_engine.compiler import load_workspace
from journey_engine.testing import Harness

START = "2026-01-05T09:00:00Z"


def harness(tmp_path: Path, text: str) -> Harness:
    (tmp_path / "j.yaml").write_text("version: 1\n" + text)
    return Harness(load_workspace(tmp_path), start=START, seed=1)


def test_an_exit_rule_on_time_alone_fires_with_no_event(tmp_path: Path) -> None:
    """`exit: - if: "$now - journey.entered_at > t'P1D'"` takes the user out a day later, to the minute."""
    h = harness(tmp_path, """\
journey: trial
entry: {on: Signed Up}
exit:
  - if: "$now - journey.entered_at > t'P1D'"
initial: waiting
states:
  waiting:
    transitions:
      - on: Upgraded
        to: done
  done: {final: true}
""")
    h.track("u1", "Signed Up")
    h.wait("23h59m")
    assert h.state("u1", "trial") == "waiting"
    h.wait("2m")
    assert h.state("u1", "trial") is None
    assert h.records("u1", "journey_exited")[0]["reason"] == "exit"


def test_an_entry_rule_on_time_alone_enrolls_with_no_event(tmp_path: Path) -> None:
    """`entry: if: "$now - traits.created_at > t'PT2H'"` enrolls the user two hours after creation."""
    h = harness(tmp_path, """\
journey: aged
entry:
  if: "traits.created_at != null and $now - traits.created_at > t'PT2H'"
initial: hello
states:
  hello:
    transitions:
      - on: Bye
        to: gone
  gone: {final: true}
""")
    h.identify("u1", {"created_at": START})
    h.wait("1h")
    assert h.state("u1", "aged") is None
    h.wait("1h2m")
    assert h.state("u1", "aged") == "hello"


def test_a_goal_rule_on_time_alone_fires_with_no_event(tmp_path: Path) -> None:
    """A goal written as a time rule (`if: "$now > traits.renews_at"`) is reached when the time comes."""
    h = harness(tmp_path, """\
journey: renew
entry: {on: Signed Up}
goal:
  if: "traits.renews_at != null and $now > traits.renews_at"
initial: waiting
states:
  waiting:
    transitions:
      - on: Bye
        to: gone
  gone: {final: true}
""")
    h.identify("u1", {"renews_at": "2026-01-06T09:00:00Z"})
    h.track("u1", "Signed Up")
    h.wait("1d1m")
    assert [r["kind"] for r in h.records("u1") if r["kind"] in ("goal_reached", "journey_exited")] == [
        "goal_reached", "journey_exited"]


def test_a_loop_of_past_timers_is_reported_and_stops(tmp_path: Path) -> None:
    """Two states whose `at` dates have passed point at each other: a `cycle` record, no hang, and the
    user's later events are still processed."""
    h = harness(tmp_path, """\
journey: loop
entry: {on: Signed Up}
initial: a
states:
  a:
    transitions:
      - at: {attribute: traits.when}
        to: b
      - on: Done
        to: end
  b:
    transitions:
      - at: {attribute: traits.when}
        to: a
      - on: Done
        to: end
  end: {final: true}
""")
    h.identify("u1", {"when": "2026-01-01T00:00:00Z"})
    h.track("u1", "Signed Up")
    cycles = h.records("u1", "cycle")
    assert cycles and cycles[0]["journey"] == "loop"
    h.wait("1h")
    h.track("u1", "Done")
    assert h.state("u1", "loop") is None
    assert h.records("u1", "journey_exited")[-1]["reason"] == "final"


def test_an_if_entry_fires_when_the_rule_becomes_true_not_on_every_change(tmp_path: Path) -> None:
    """With `reentry: always`, an `if:` entry re-enrolls only after the rule was false in between."""
    h = harness(tmp_path, """\
journey: trial
entry:
  if: "traits.plan == 'trial'"
  reentry: always
initial: hello
states:
  hello:
    final: true
""")
    h.identify("u1", {"plan": "trial"})
    h.identify("u1", {"name": "Ann"})  # another change while the rule still holds: no second entry
    assert len(h.records("u1", "journey_entered")) == 1
    h.identify("u1", {"plan": "pro"})
    h.identify("u1", {"plan": "trial"})
    assert len(h.records("u1", "journey_entered")) == 2


def test_an_entrant_who_already_meets_an_exit_criterion_leaves_before_any_message(tmp_path: Path) -> None:
    """Entering is not a change of the user's: exit criteria and a rule goal already met are checked at
    entry, so a power user entering a nudge journey that power users exit is sent nothing."""
    h = harness(tmp_path, """\
journey: nudge
entry: {on: Stalled}
exit:
  - segment: busy
goal:
  if: "traits.done == true"
initial: nudge
states:
  nudge:
    send: hello
    transitions:
      - after: 1d
        to: gone
  gone: {final: true}
segments:
  busy: "traits.busy == true"
messages:
  hello: {channel: in_app, body: "Hi"}
""")
    h.identify("u1", {"busy": True})
    h.identify("u2", {"done": True})
    h.identify("u3", {})
    for user in ("u1", "u2", "u3"):
        h.track(user, "Stalled")
    assert [r["reason"] for r in h.records("u1", "journey_exited")] == ["exit"]
    assert [r["kind"] for r in h.records("u2") if r["kind"] in ("goal_reached", "journey_exited")] == [
        "goal_reached", "journey_exited"]
    assert (h.sent("u1"), h.sent("u2"), h.sent("u3")) == ([], [], ["hello"])


def test_a_window_expiry_wakes_a_user_only_when_a_rule_can_turn(tmp_path: Path) -> None:
    """Rules read `metrics.uses_7d` only as `>= 3` and `>= 5`: of six uses leaving the window one by one,
    only the expiries taking the count below 5 and below 3 can change a rule, so only those wake the
    user; the metric shown at any time is still exact, woken or not."""
    h = harness(tmp_path, """\
metrics:
  uses_7d: {count: Feature Used, within: 7d}
segments:
  keen: "metrics.uses_7d >= 5"
journey: trial
entry: {on: Signed Up}
initial: waiting
states:
  waiting:
    transitions:
      - if: "metrics.uses_7d >= 3"
        to: active
  active:
    transitions:
      - on: Upgraded
        to: done
  done: {final: true}
""")
    h.track("u1", "Signed Up")
    for _ in range(6):
        h.track("u1", "Feature Used")
        h.wait("1h")
    assert "keen" in h.segments("u1")
    book = h.engine.cw.metrics
    profile = h.runtime.profile("u1")
    assert profile is not None and book.thresholds["uses_7d"]
    first = profile.windows["uses_7d"][0]  # type: ignore[index]
    # 6 -> 5 keeps both rules; 5 -> 4 leaves `keen`: the second use's expiry, an hour after the first's
    assert book.next_expiry(profile).timestamp() == first + 7 * 86400 + 3600  # type: ignore[union-attr]
    h.wait("6d17h59m")  # a minute before the first use leaves
    assert h.metrics("u1")["uses_7d"] == 6
    h.wait("1h")  # 6 -> 5: no rule turns, no wake-up, yet the count shown is exact
    assert "keen" in h.segments("u1") and h.metrics("u1")["uses_7d"] == 5
    h.wait("2m")  # 5 -> 4: out of `keen`, on time
    assert "keen" not in h.segments("u1") and h.metrics("u1")["uses_7d"] == 4
    profile = h.runtime.profile("u1")
    assert profile is not None  # next: 3 -> 2 turns `>= 3`, the fourth use's expiry
    assert book.next_expiry(profile).timestamp() == first + 7 * 86400 + 3 * 3600  # type: ignore[union-attr]
    h.wait("4h")  # 2 -> 0 afterwards turns nothing: no wake-up is left for the window
    profile = h.runtime.profile("u1")
    assert profile is not None and h.metrics("u1")["uses_7d"] == 0 and book.next_expiry(profile) is None
