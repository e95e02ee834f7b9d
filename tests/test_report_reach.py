"""The report of the marketer's reach: each cohort's bandit, choice candidates passed over apart from
suppressed sends, and the whole programme's lift against the control group."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from adapters.reporting import Report, build_report, render_html, render_terminal
from adapters.storage.sql import SqlStore
from journey_engine.policies import in_control_group
from journey_engine.selection import EVERYONE_ELSE
from journey_engine.stats import newcombe_interval
from journey_engine.testing import Harness

from .test_reach import START, reachable, workspace


@pytest.fixture
def run(tmp_path: Path) -> tuple[Harness, Report]:
    """80 users through the tips journey with a 20% control group: even ones young, a third without a
    push token (so tips_push is passed over for them), every fourth orders."""
    folder = tmp_path / "ws"
    folder.mkdir()
    compiled = workspace(folder, "20%")
    store = SqlStore(f"sqlite:///{tmp_path}/r.db", defaults=dict(compiled.metrics.defaults))
    h = Harness(compiled, start=START, seed=5, store=store)
    for i in range(80):
        user = f"p{i}"
        if i % 3 == 0:
            h.identify(user, email=f"{user}@example.com", age=20 if i % 2 == 0 else 60)
        else:
            reachable(h, user, age=20 if i % 2 == 0 else 60)
        h.track(user, "Signed Up")
        if i % 4 == 0:
            h.track(user, "Order Completed")
    report = build_report(store, compiled)
    yield h, report
    store.close()


def test_each_cohort_has_its_own_bandit_with_the_engines_counts(run: tuple[Harness, Report]) -> None:
    """A `by: [young, vip]` choice shows one bandit per cohort, in the listed order, as the engine learnt."""
    h, report = run
    tips = next(j for j in report.journeys if j.name == "tips")
    assert [(b.state, b.cohort) for b in tips.bandits] == [("tip", "young"), ("tip", "vip"), ("tip", EVERYONE_ELSE)]
    for bandit in tips.bandits:
        learnt = h.engine.bandits.get(("tips", f"tip@{bandit.cohort}"), {})
        assert {a.arm: (a.sends, a.conversions) for a in bandit.arms} == {
            arm: learnt.get(arm, (0, 0)) for arm in ("tips_email", "tips_push")}
    young = tips.bandits[0]
    assert sum(a.sends for a in young.arms) == sum(
        1 for i in range(0, 80, 2) if not in_control_group(f"p{i}", 0.2))


def test_choice_candidates_not_eligible_are_passed_over_not_suppressed(run: tuple[Harness, Report]) -> None:
    """tips_push, ineligible without a push token, counts as passed over; only real skips are suppressed."""
    h, report = run
    tips = next(j for j in report.journeys if j.name == "tips")
    push = next(m for m in tips.messages if m.message == "tips_push")
    ineligible = [r for r in h.records(kind="message_suppressed") if r["reason"] == "ineligible"]
    assert push.passed_over == len(ineligible) == 27  # p0, p3, ..., p78
    assert "ineligible" not in push.suppressed
    held = [r for r in h.records(kind="message_suppressed")
            if r["reason"] == "control_group" and r["journey"] == "tips"]
    email = next(m for m in tips.messages if m.message == "tips_email")
    assert push.suppressed_total + email.suppressed_total == len(held)


def test_the_programme_lift_compares_everyone_with_the_control_group(run: tuple[Harness, Report]) -> None:
    """Users who entered a journey with a goal, in and out of the control group, and who of them converted."""
    _, report = run
    held = {f"p{i}" for i in range(80) if in_control_group(f"p{i}", 0.2)}
    converted = {f"p{i}" for i in range(0, 80, 4)}
    lift = report.programme
    assert lift is not None and report.control_group == 0.2
    assert (lift.treated, lift.treated_converted, lift.held_out, lift.held_out_converted) == (
        80 - len(held), len(converted - held), len(held), len(converted & held))
    assert lift.interval == newcombe_interval(len(converted - held), 80 - len(held), len(converted & held), len(held))


def test_terminal_and_page_show_cohorts_passed_over_and_the_programme(run: tuple[Harness, Report]) -> None:
    """Both renderings carry the cohort next to the state, the passed-over column and the programme's lift."""
    _, report = run
    out = io.StringIO()
    render_terminal(report, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "tip · young" in text and f"tip · {EVERYONE_ELSE}" in text
    assert "passed" in text and "the whole programme" in text and "control group" in text and "95% CI" in text
    page = render_html(report)
    assert "tip · young" in page and "<th>passed over</th>" in page and 'id="programme"' in page


def test_no_control_group_no_programme_lift(tmp_path: Path) -> None:
    """Without `policies.control_group` the report has no programme section."""
    compiled = workspace(tmp_path)
    store = SqlStore(f"sqlite:///{tmp_path}/r.db", defaults=dict(compiled.metrics.defaults))
    h = Harness(compiled, start=START, seed=5, store=store)
    reachable(h, "u1")
    h.track("u1", "Signed Up")
    report = build_report(store, compiled)
    assert report.programme is None
    assert "the whole programme" not in render_html(report)
    store.close()
