"""Whole-workspace lint: each mistake is named at its file:line:col with how to fix it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from journey_engine.compiler import load_workspace
from journey_engine.errors import WorkspaceError
from journey_engine.loading import read_workspace
from journey_engine.validation import lint

JOURNEY = """\
version: 1
journey: onboarding
entry:
  on: Signed Up
exit:
  - on: Account Deleted
initial: welcome
states:
  welcome:
    send: welcome_email
    transitions:
      - segment: power_users
        to: done
      - after: 2d
        to: nudge
  nudge:
    send: {choose: best, from: [tips_push, sms_tip]}
    transitions:
      - if: "metrics.orders > 0"
        to: done
      - after: 1d
        to: last_call
  last_call:
    split:
      paths: [{to: done, weight: 1}, {to: reminder}]
  reminder:
    send: [sms_tip]
    transitions:
      - to: done
  done:
    final: true
"""

LIBRARY = """\
version: 1
messages:
  welcome_email: {channel: email, subject: Hi, body: Hi, subscription: news}
  tips_push: {channel: push, body: "You have {{ metrics.feature_uses_7d }} uses"}
  sms_tip: {channel: sms, body: Tip}
segments:
  power_users: "metrics.feature_uses_7d >= 5"
metrics:
  feature_uses_7d: {count: Feature Used, within: 7d}
  orders: {count: Order Completed}
subscriptions:
  news: {channel: email}
policies:
  timezone: Europe/Berlin
  quiet_hours: {from: "21:00", to: "08:00"}
  frequency_caps: [{channel: any, max: 3, per: 1d}]
"""

Edit = tuple[str, str, str]  # file, text to replace, replacement


def lint_of(root: Path, *edits: Edit, extra: dict[str, str] | None = None) -> list[str]:
    """Lint the base workspace after `edits`, as `file:line:col: severity: message` relative to `root`."""
    files = {"journey.yaml": JOURNEY, "library.yaml": LIBRARY}
    for file, old, new in edits:
        assert old in files[file], f"{old!r} is not in {file}"
        files[file] = files[file].replace(old, new, 1)
    for name, text in {**files, **(extra or {})}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return [str(p).replace(f"{root}/", "") for p in lint(read_workspace(root))]


def test_the_base_workspace_is_clean(tmp_path: Path) -> None:
    """A workspace where every name resolves, every state is reachable and left, lints clean."""
    assert lint_of(tmp_path) == []


J, L = "journey.yaml", "library.yaml"
NO_FINAL = "    transitions: [{after: 1d, to: welcome}]"  # replaces `final: true` of `done`

CASES = [
    # names that point nowhere
    pytest.param([(J, "initial: welcome", "initial: welcom")],
                 "journey.yaml:7:1: error: unknown state `welcom`; did you mean `welcome`?",
                 id="unknown-initial"),
    pytest.param([(J, "        to: nudge", "        to: nuge")],
                 "journey.yaml:15:9: error: unknown state `nuge`; did you mean `nudge`?",
                 id="unknown-target"),
    pytest.param([(J, "{to: reminder}", "{to: remind}")],
                 "journey.yaml:25:39: error: unknown state `remind`; did you mean `reminder`?",
                 id="unknown-split-path"),
    pytest.param([(J, "send: welcome_email", "send: welcome_emial")],
                 "journey.yaml:10:5: error: unknown message `welcome_emial`; did you mean `welcome_email`?",
                 id="unknown-send"),
    pytest.param([(J, "send: [sms_tip]", "send: [sms_tpi]")],
                 "journey.yaml:27:12: error: unknown message `sms_tpi`; did you mean `sms_tip`?",
                 id="unknown-send-list"),
    pytest.param([(J, "from: [tips_push,", "from: [tips_psuh,")],
                 "journey.yaml:17:33: error: unknown message `tips_psuh`; did you mean `tips_push`?",
                 id="unknown-choose-from"),
    pytest.param([(J, "segment: power_users", "segment: powr_users")],
                 "journey.yaml:12:9: error: unknown segment `powr_users`; did you mean `power_users`?",
                 id="unknown-transition-segment"),
    pytest.param([(J, "  on: Signed Up", "  segment: trial")],
                 "journey.yaml:4:3: error: unknown segment `trial`: declare it under `segments:`; "
                 "known: `power_users`",
                 id="unknown-entry-segment"),
    pytest.param([(J, "  - on: Account Deleted", "  - segment: churned")],
                 "journey.yaml:6:5: error: unknown segment `churned`: declare it under `segments:`",
                 id="unknown-exit-segment"),
    pytest.param([(J, "initial: welcome", "goal: {segment: power_user}\ninitial: welcome")],
                 "journey.yaml:7:8: error: unknown segment `power_user`; did you mean `power_users`?",
                 id="unknown-goal-segment"),
    pytest.param([(L, "subscription: news}", "subscription: newz}")],
                 "library.yaml:3:58: error: unknown subscription `newz`; did you mean `news`?",
                 id="unknown-subscription"),
    pytest.param([(L, "body: Tip}", "body: Tip, subscription: news}")],
                 "library.yaml:5:38: warning: message `sms_tip` goes by sms "
                 "but subscription `news` is for email",
                 id="subscription-of-another-channel"),
    # the shape of a journey
    pytest.param([(J, "    final: true\n", "    final: true\n  orphan:\n    final: true\n")],
                 "journey.yaml:32:3: error: state `orphan` is unreachable: "
                 "no transition or split leads to it",
                 id="unreachable-state"),
    pytest.param([(J, "    send: [sms_tip]\n    transitions:\n      - to: done\n", "    send: [sms_tip]\n")],
                 "journey.yaml:26:3: error: state `reminder` has no way out: "
                 "add a transition or `final: true`",
                 id="no-way-out"),
    pytest.param([(J, "      - to: done\n", "      - to: last_call\n")],
                 "journey.yaml:23:3: error: states `last_call` → `reminder` → `last_call` loop through "
                 "`to:`-only transitions and splits",
                 id="instant-loop"),
    pytest.param([(J, '      - if: "metrics', '      - to: done\n      - if: "metrics')],
                 "journey.yaml:20:9: error: this transition never fires: the `to:`-only transition "
                 "on line 19 is always taken first; move that fallback to the end of `transitions`",
                 id="transition-after-a-fallback"),
    pytest.param([(J, "      - segment: power_users\n", "      - on: Signed Up\n        to: nudge\n"
                   "      - segment: power_users\n")],
                 "journey.yaml:12:9: warning: the entry event `Signed Up` is not offered again "
                 "to the initial state `welcome`",
                 id="entry-event-in-initial-state"),
    pytest.param([(J, "  on: Signed Up\n", "  on: Signed Up\n  reentry: {after: 0s}\n")],
                 "journey.yaml:5:13: error: `reentry.after` must be a positive duration",
                 id="reentry-after-zero"),
    pytest.param([(J, "exit:\n  - on: Account Deleted\n", ""), (J, "    final: true", NO_FINAL)],
                 "journey.yaml:2:1: warning: journey `onboarding` has no final state, no `exit` "
                 "and no exiting `goal`: users can never finish it",
                 id="never-finishes"),
    # messages, segments, policies
    pytest.param([(L, "body: Tip}", "body: Tip, translations: {english: {body: x}}}")],
                 "library.yaml:5:53: warning: `english` is not a language code, "
                 "so this translation is never chosen",
                 id="translation-not-a-language"),
    pytest.param([(L, '  power_users: "metrics.feature_uses_7d >= 5"',
                   '  power_users: {rule: "metrics.feature_uses_7d >= 5", for: 0s}')],
                 "library.yaml:7:55: error: `for` must be a positive duration",
                 id="segment-for-zero"),
    pytest.param([(L, "Europe/Berlin", "Europe/Berln")],
                 "library.yaml:14:3: error: unknown time zone `Europe/Berln`; did you mean `Europe/Berlin`?",
                 id="unknown-time-zone"),
    pytest.param([(L, 'to: "08:00"', 'to: "21:00"')],
                 "library.yaml:15:3: warning: quiet hours from 21:00 to 21:00 are empty",
                 id="empty-quiet-hours"),
    pytest.param([(L, "max: 3", "max: 0")],
                 "library.yaml:16:35: warning: a cap of 0 on channel `any` means nothing will ever be sent",
                 id="cap-of-zero-on-any"),
    # declared but not used
    pytest.param([(L, "segments:\n", "  spare: {channel: push, body: x}\nsegments:\n")],
                 "library.yaml:6:3: warning: message `spare` is declared but not used: no state sends it",
                 id="unused-message"),
    pytest.param([(L, "metrics:\n", "  idle: \"traits.plan == 'free'\"\nmetrics:\n")],
                 "library.yaml:8:3: warning: segment `idle` is declared but not used "
                 "by any journey, rule or template",
                 id="unused-segment"),
    pytest.param([(L, "subscriptions:\n", "  order: {count: Order Completed}\nsubscriptions:\n")],
                 "library.yaml:11:3: warning: metric `order` is declared but not used "
                 "by any journey, rule or template",
                 id="unused-metric-named-like-part-of-a-used-one"),
]


@pytest.mark.parametrize(("edits", "expected"), CASES)
def test_each_mistake_is_named_where_it_is_written(tmp_path: Path, edits: list[Edit], expected: str) -> None:
    """Each check reports its problem at the offending value, with the fix or the name that was meant."""
    found = lint_of(tmp_path, *edits)
    assert any(line.startswith(expected) for line in found), "\n".join(found)


def test_an_unknown_initial_state_does_not_make_every_state_unreachable(tmp_path: Path) -> None:
    """With `initial` misspelled, the misspelling is the one problem, not every state it would reach."""
    assert lint_of(tmp_path, (J, "initial: welcome", "initial: welcom")) == [
        "journey.yaml:7:1: error: unknown state `welcom`; did you mean `welcome`?"]


def test_every_transition_after_a_fallback_is_reported(tmp_path: Path) -> None:
    """Both transitions below a `to:`-only transition are reported, one problem each."""
    found = lint_of(tmp_path, (J, '      - if: "metrics', '      - to: done\n      - if: "metrics'))
    assert [f.split(": error")[0] for f in found] == ["journey.yaml:20:9", "journey.yaml:22:9"]


@pytest.mark.parametrize(
    "goal",
    [
        pytest.param("goal: {on: Order Completed}\n", id="goal-exits-by-default"),
        pytest.param("exit: [{on: Account Deleted}]\n", id="exit-criteria"),
    ],
)
def test_a_journey_without_final_states_can_still_finish(tmp_path: Path, goal: str) -> None:
    """A goal that exits, or an exit criterion, is a way to finish without a final state."""
    found = lint_of(tmp_path, (J, "exit:\n  - on: Account Deleted\n", goal), (J, "    final: true", NO_FINAL))
    assert found == []


def test_a_goal_that_does_not_exit_is_no_way_to_finish(tmp_path: Path) -> None:
    """`goal: {exit: false}` records a conversion but keeps users in, so the journey never finishes."""
    goal = "goal: {on: Order Completed, exit: false}\n"
    found = lint_of(tmp_path, (J, "exit:\n  - on: Account Deleted\n", goal), (J, "    final: true", NO_FINAL))
    assert [f.split(": warning")[0] for f in found] == ["journey.yaml:2:1"]


@pytest.mark.parametrize("locale", ["ko", "ko-KR", "pt_BR", "zh-Hant-TW", "fil"])
def test_language_codes_are_accepted_as_translation_keys(tmp_path: Path, locale: str) -> None:
    """Translation keys written as language codes, with region or script, pass."""
    assert lint_of(tmp_path, (L, "body: Tip}", f"body: Tip, translations: {{{locale}: {{body: x}}}}}}")) == []


@pytest.mark.parametrize(
    ("edits", "extra"),
    [
        pytest.param([(L, "orders: {", "paid: {count: Order Completed}\n  orders: {"),
                      (L, "body: Tip}", "body: Tip, if: \"metrics.paid > 0\"}")],
                     {}, id="metric-in-message-if"),
        pytest.param([(L, "orders: {", "paid: {count: Order Completed}\n  orders: {"),
                      (L, "body: Tip}", "template: templates/tip.txt}")],
                     {"templates/tip.txt": "{{ metrics.paid }} orders"}, id="metric-in-template-file"),
        pytest.param([(L, "orders: {", "paid: {count: Order Completed}\n  orders: {"),
                      (L, "segments:\n", "segments:\n  buyers: \"metrics.paid > 0 and 'vip' in segments\"\n"
                       "  vip: \"traits.vip == true\"\n"),
                      (J, "> 0\"\n        to: done", "> 0 or 'buyers' in segments\"\n        to: done")],
                     {}, id="metric-and-segment-in-segment-rules"),
        pytest.param([(L, "orders: {count: Order Completed}",
                       "orders: {count: Order Completed, where: \"metrics.big > 1\"}\n  big: {count: Big}")],
                     {}, id="metric-in-metric-where"),
    ],
)
def test_names_used_only_in_rules_or_templates_are_used(tmp_path: Path, edits: list[Edit],
                                                        extra: dict[str, str]) -> None:
    """A metric or segment named only in a rule, a message `if` or a template is not reported unused."""
    assert lint_of(tmp_path, *edits, extra=extra) == []


def test_the_entry_event_restarting_the_initial_state_is_not_reported(tmp_path: Path) -> None:
    """`on: <entry event>, to: <initial state>` restarts the wait on a later event, which is what it means."""
    restart = "      - on: Signed Up\n        to: welcome\n      - segment: power_users\n"
    assert lint_of(tmp_path, (J, "      - segment: power_users\n", restart)) == []


def test_keyed_journeys_with_a_reentry_delay_lint_clean(tmp_path: Path) -> None:
    """`entry.key` and a positive `reentry.after` are fine."""
    keyed = "  on: Signed Up\n  key: orderId\n  reentry: {after: 30d}\n"
    assert lint_of(tmp_path, (J, "  on: Signed Up\n", keyed)) == []


def test_problems_are_sorted_by_file_line_and_column(tmp_path: Path) -> None:
    """Problems from every check come back in file order, then line, then column."""
    found = lint_of(tmp_path, (L, "max: 3", "max: 0"), (L, "Europe/Berlin", "Europe/Berln"),
                    (J, "        to: nudge", "        to: nuge"), (J, "send: [sms_tip]", "send: [sms_tpi]"))
    positions = [tuple(int(n) if n.isdigit() else n for n in f.split(":")[:3]) for f in found]
    assert positions == sorted(positions)
    assert {p[0] for p in positions} == {"journey.yaml", "library.yaml"}


@pytest.mark.parametrize(
    ("segments", "expected"),
    [
        pytest.param({"a": "'b' in segments", "b": "'a' in segments"}, "segments `a` → `b` → `a` read each other",
                     id="two"),
        pytest.param({"a": "'b' in segments and traits.x == 1", "b": {"rule": "'c' in segments"},
                      "c": "'a' in segments or traits.y == 1"}, "segments `a` → `b` → `c` → `a` read each other",
                     id="three"),
        pytest.param({"a": "'a' in segments"}, "segment `a` reads itself", id="itself"),
    ],
)
def test_segments_reading_each_other_in_a_loop_are_an_error(tmp_path: Path, segments: dict[str, object],
                                                            expected: str) -> None:
    """A loop between segment rules is one load error at the first segment, naming the whole loop."""
    text = yaml.safe_dump({"version": 1, "segments": segments}, sort_keys=False)
    (tmp_path / "segments.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(WorkspaceError) as caught:
        load_workspace(tmp_path)
    errors = [str(p).replace(f"{tmp_path}/", "") for p in caught.value.problems if p.severity == "error"]
    assert errors == [f"segments.yaml:3:3: error: {expected} in a loop, so membership cannot be decided; "
                      "make one of them read traits or metrics instead"]


def test_a_segment_reading_another_without_a_loop_is_fine(tmp_path: Path) -> None:
    """A chain of segments (b reads a) is not a loop and loads."""
    (tmp_path / "segments.yaml").write_text(
        "version: 1\nsegments:\n  a: \"traits.x == 1\"\n  b: \"'a' in segments\"\n", encoding="utf-8")
    assert set(load_workspace(tmp_path).workspace.segments) == {"a", "b"}


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        pytest.param("  sms_tip: {channel: sms, body: Tip}", "  sms_tip: {channel: sms, body: Tip",
                     "library.yaml:6:9: error: YAML syntax: expected ',' or '}', but got ':'",
                     id="syntax-error"),
        pytest.param("  orders: {count: Order Completed}", "  orders: {count: Order Completed}\n  orders: {count: X}",
                     "library.yaml:11:3: error: duplicate key `orders` (first written on line 10)", id="duplicate-key"),
    ],
)
def test_a_file_that_does_not_parse_is_reported_without_a_flood(tmp_path: Path, old: str, new: str,
                                                                 error: str) -> None:
    """The YAML error comes alone, with one note: its names are not called unknown elsewhere, nor others unused."""
    library = LIBRARY.replace(old, new, 1)
    assert library != LIBRARY
    (tmp_path / "journey.yaml").write_text(JOURNEY, encoding="utf-8")
    (tmp_path / "library.yaml").write_text(library, encoding="utf-8")
    (tmp_path / "extra.yaml").write_text("version: 1\nsegments:\n  idle: \"metrics.orders == 0\"\n",
                                         encoding="utf-8")
    with pytest.raises(WorkspaceError) as caught:
        load_workspace(tmp_path)
    position = error.split(": ")[0].removeprefix("library.yaml:")
    assert [str(p).replace(f"{tmp_path}/", "") for p in caught.value.problems] == [
        error, f"library.yaml:{position}: note: checks for unknown and unused names were skipped until this file "
               "parses: the names it declares are not known"]

