"""Journeys as Mermaid and DOT pictures: nodes, trigger labels, exits, and escaping for each format."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from journey_engine.graph import format_duration, to_dot, to_mermaid
from journey_engine.model import Journey, parse_duration


def journey(**overrides: Any) -> Journey:
    """The onboarding journey of SPEC §3, built from the model classes."""
    fields: dict[str, Any] = {
        "name": "onboarding",
        "file": "onboarding.yaml",
        "entry": {"on": "Signed Up", "if": "traits.country != 'KP'"},
        "exit": [{"on": "Account Deleted"}, {"segment": "churned"}],
        "goal": {"on": "Order Completed", "within": "14d"},
        "initial": "welcome",
        "states": {
            "welcome": {
                "send": "welcome_email",
                "transitions": [
                    {"on": "Feature Used", "if": "metrics.feature_uses_7d >= 3", "to": "activated"},
                    {"segment": "power_users", "to": "activated"},
                    {"after": "2d", "to": "nudge"},
                ],
            },
            "nudge": {
                "send": {"choose": "best", "from": ["tips_push", "discount_email"]},
                "transitions": [
                    {"if": "traits.plan == 'pro'", "to": "activated"},
                    {"at": "09:00", "to": "last_call"},
                    {"at": {"attribute": "traits.trial_ends_at", "offset": "-1d"}, "to": "last_call"},
                ],
            },
            "last_call": {
                "split": {
                    "strategy": "random",
                    "paths": [{"to": "variant_a", "weight": 75}, {"to": "variant_b", "weight": 25}],
                }
            },
            "variant_a": {"send": ["offer_email", "offer_push"], "transitions": [{"to": "activated"}]},
            "variant_b": {"transitions": [{"if": "traits.vip", "to": "activated"}, {"to": "activated"}]},
            "activated": {"final": True},
        },
    }
    return Journey.model_validate({**fields, **overrides})


MERMAID = to_mermaid(journey())
DOT = to_dot(journey())


@pytest.mark.parametrize(
    "label",
    [
        "on: Signed Up [if traits.country != 'KP']",
        "segment: power_users",
        "after 2d",
        "if: traits.plan == 'pro'",
        "at 09:00",
        "at traits.trial_ends_at -1d",
        "split 75%",
        "split 25%",
        "always",
        "else",
        "exit on: Account Deleted",
        "exit segment: churned",
        "goal on: Order Completed within 14d",
    ],
)
def test_edges_are_labelled_with_their_trigger(label: str) -> None:
    """Every transition, entry, exit and goal shows what makes it fire, in both formats."""
    assert f'|"{label}"|' in MERMAID
    assert f'[label="{label}"' in DOT


def test_guards_are_shown_escaped() -> None:
    """An event with a guard shows the rule in brackets; `>` is an entity in Mermaid, plain in DOT."""
    assert '|"on: Feature Used [if metrics.feature_uses_7d #gt;= 3]"|' in MERMAID
    assert 'label="on: Feature Used [if metrics.feature_uses_7d >= 3]"' in DOT


def test_states_show_what_they_send() -> None:
    """A state's node lists its message, its messages, or its choice among candidates."""
    assert 's0("welcome<br/>send: welcome_email")' in MERMAID
    assert "nudge<br/>choose best: tips_push, discount_email" in MERMAID
    assert "variant_a<br/>send: offer_email, offer_push" in MERMAID
    assert 'label="last_call\\nsplit: random"' in DOT


def test_initial_final_entry_and_exit_are_marked() -> None:
    """The entry points at the initial state (drawn bold); final states are double-bordered."""
    assert 'entry -->|"on: Signed Up' in MERMAID and "| s0\n" in MERMAID
    assert "class s0 initial" in MERMAID
    assert 's5((("activated")))' in MERMAID
    assert 's0 [label="welcome\\nsend: welcome_email", penwidth=2.5];' in DOT
    assert 's5 [label="activated", peripheries=2];' in DOT
    assert 'any -.->|"exit on: Account Deleted"| exit' in MERMAID
    assert 'any -> exit [label="exit on: Account Deleted", style=dashed];' in DOT


def test_goal_that_does_not_exit_leads_to_its_own_node() -> None:
    """With `goal: {exit: false}` the goal edge ends at a `goal reached` node, not at the exit."""
    text = to_mermaid(journey(exit=[], goal={"on": "Order Completed", "exit": False}))
    assert 'any -.->|"goal on: Order Completed within 14d"| goal' in text
    assert 'goal(["goal reached"])' in text and "exit" not in text.replace("exit on", "")


def test_no_exit_node_without_exit_criteria_or_goal() -> None:
    """A journey without exits or goal draws no `any state` node."""
    assert "any" not in to_dot(journey(exit=[], goal=None))


def test_bandit_splits_are_labelled_as_such() -> None:
    """Bandit split paths carry no fixed share: they are labelled `bandit`."""
    states = journey().states | {
        "last_call": {"split": {"strategy": "bandit", "paths": [{"to": "variant_a"}, {"to": "variant_b"}]}}
    }
    assert to_mermaid(journey(states=states)).count('|"bandit"|') == 2


def test_unknown_targets_are_drawn_as_undefined() -> None:
    """A transition to a missing state still draws (validation reports the mistake)."""
    states = {"welcome": {"transitions": [{"after": "1h", "to": "nowhere"}]}}
    assert "nowhere<br/>(undefined)" in to_mermaid(journey(states=states, initial="welcome"))


NASTY = 'say "hi" | <b>#1</b> \\n `x` & end'


def test_mermaid_escapes_labels() -> None:
    """Quotes, pipes, markup, `&`, `#` and backticks become entity codes: a name cannot break the chart."""
    states = {NASTY: {"final": True}, "welcome": {"transitions": [{"on": NASTY, "to": NASTY}]}}
    text = to_mermaid(journey(states=states, initial="welcome", exit=[], goal=None))
    assert "say #quot;hi#quot; #124; #lt;b#gt;#35;1#lt;/b#gt; \\n #96;x#96; #38; end" in text


def test_dot_escapes_labels() -> None:
    """Quotes and backslashes are escaped in DOT strings, so `\\n` in a name stays literal."""
    states = {NASTY: {"final": True}, "welcome": {"transitions": [{"on": NASTY, "to": NASTY}]}}
    text = to_dot(journey(states=states, initial="welcome", exit=[], goal=None))
    assert 'label="say \\"hi\\" | <b>#1</b> \\\\n `x` & end"' in text


def test_long_rules_are_shortened() -> None:
    """Rules longer than 60 characters are cut with an ellipsis; the file has the full text."""
    rule = "traits.plan == 'pro' and " * 5 + "true"
    states = {"welcome": {"transitions": [{"if": rule, "to": "welcome"}]}}
    label = re.search(r'\|"if: (.*?)"\|', to_mermaid(journey(states=states, exit=[], goal=None)))
    assert label is not None and len(label.group(1)) == 60 and label.group(1).endswith("…")


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(days=2), "2d"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(days=-1), "-1d"),
        (timedelta(0), "0s"),
        (timedelta(weeks=1), "7d"),
        (timedelta(seconds=90.5), "1m30.5s"),
    ],
)
def test_format_duration(delta: timedelta, text: str) -> None:
    """Durations print in the compact form journey files use."""
    assert format_duration(delta) == text


@given(seconds=st.integers(-(10**8), 10**8))
def test_format_duration_round_trips(seconds: int) -> None:
    """`parse_duration(format_duration(d)) == d` for whole seconds."""
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
DOT_LINE = re.compile(r'^  \w+( -> \w+)? \[label="(?:[^"\\\n]|\\.)*"[^"\n]*(?:"[^"\\\n]*"[^"\n]*)*\];$')


@given(state=names, event=names, rule=names)
def test_any_names_give_well_formed_output(state: str, event: str, rule: str) -> None:
    """Whatever the names, every DOT statement is one well-quoted line and Mermaid labels stay closed."""
    states = {
        "start": {"transitions": [{"on": event, "if": rule, "to": state}, {"if": rule, "to": state}]},
        state: {"final": True},
    }
    built = journey(states=states, initial="start", exit=[{"on": event}], goal=None)
    dot_lines = to_dot(built).splitlines()
    for line in dot_lines[4:-1]:
        assert DOT_LINE.match(line), line
    for line in to_mermaid(built).splitlines()[1:]:
        if line.lstrip().startswith("class"):
            continue
        quoted = re.findall(r'"([^"]*)"', line)
        assert len(quoted) == 1 and "|" not in quoted[0] and line.count('"') == 2, line
