"""`journey report`: every figure of a hand-counted population, the HTML page, and a real engine run."""

from __future__ import annotations

import io
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from adapters.reporting import Report, build_report, render_html, render_terminal
from adapters.reporting.model import LIFT_METHOD
from adapters.storage.sql import SqlStore
from journey_engine.compiler import CompiledWorkspace, load_workspace
from journey_engine.errors import UnknownJourneyError
from journey_engine.ports import Batch
from journey_engine.stats import newcombe_interval
from journey_engine.testing import Harness
from journey_engine.trace import iso

from .conftest import postgres_or_skip

WORKSPACE = """\
version: 1
journey: onboarding
description: Welcome, then one tip, then done.
entry: {on: Signed Up}
exit:
  - on: Account Deleted
goal: {on: Order Completed, within: 2d}
holdout: 20%
initial: welcome
states:
  welcome:
    send: welcome_email
    transitions:
      - after: 1d
        to: nudge
  nudge:
    send: {choose: best, from: [tips_email, tips_push]}
    transitions:
      - after: 3d
        to: done
  done:
    final: true
messages:
  welcome_email: {channel: email, subject: Hi, body: Hello}
  tips_email: {channel: email, subject: Tips, body: Three tips}
  tips_push: {channel: push, body: A tip}
segments:
  trial: "traits.plan == 'trial'"
  vip: "traits.plan == 'vip'"
"""

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # a Monday: ISO week 2026-W02
NOW = datetime(2026, 1, 21, 12, 0, tzinfo=UTC)  # Wednesday of 2026-W04


def at(hours: float) -> str:
    return iso(T0 + timedelta(hours=hours))


def entered(user: str, hours: float = 0, *, holdout: bool = False) -> dict[str, Any]:
    extra = {"holdout": True} if holdout else {}
    return {"kind": "journey_entered", "at": at(hours), "user": user, "journey": "onboarding", "key": None,
            "state": "welcome", **extra}


def moved(user: str, hours: float, src: str, dst: str) -> dict[str, Any]:
    return {"kind": "transition", "at": at(hours), "user": user, "journey": "onboarding", "key": None,
            "from": src, "to": dst, "trigger": "after"}


def exited(user: str, hours: float, reason: str, state: str) -> dict[str, Any]:
    return {"kind": "journey_exited", "at": at(hours), "user": user, "journey": "onboarding", "key": None,
            "reason": reason, "state": state}


def goal(user: str, hours: float, attributed: list[str] | None = None) -> dict[str, Any]:
    extra = {"attributed": attributed} if attributed else {}
    return {"kind": "goal_reached", "at": at(hours), "user": user, "journey": "onboarding", "key": None, **extra}


def message(kind: str, user: str, hours: float, message_id: str, state: str, **extra: Any) -> dict[str, Any]:
    channel = "push" if message_id.endswith("push") else "email"
    return {"kind": kind, "at": at(hours), "user": user, "journey": "onboarding", "key": None, "state": state,
            "message": message_id, "channel": channel, "locale": None, **extra}


def sent(user: str, hours: float, message_id: str, state: str) -> dict[str, Any]:
    return message("message_sent", user, hours, message_id, state)


def suppressed(user: str, hours: float, message_id: str, state: str, reason: str) -> dict[str, Any]:
    return message("message_suppressed", user, hours, message_id, state, reason=reason)


def outcome(kind: str, user: str, hours: float, message_id: str) -> dict[str, Any]:
    """What the dispatcher says about a send (message_delivered / message_failed)."""
    return message(kind, user, hours, message_id, "welcome", send_key=f"{user}:{message_id}", detail="")


def engaged(user: str, hours: float, message_id: str, event: str) -> dict[str, Any]:
    channel = "push" if message_id.endswith("push") else "email"
    return {"kind": "message_engaged", "at": at(hours), "user": user, "journey": "onboarding",
            "message": message_id, "channel": channel, "event": event, "send_key": f"{user}:{message_id}"}


def segment(kind: str, user: str, when: str) -> dict[str, Any]:
    return {"kind": kind, "at": when, "user": user, "segment": "trial"}


def population() -> list[dict[str, Any]]:
    """Ten sign-ups, u8 and u9 held out. By hand:

    welcome: 10 entered; u0 reaches the goal there (5h), u1 leaves (6h), u2..u9 move on to nudge (24h).
    nudge: 8 entered; u2 (26h), u5 (60h) and held-out u8 (48h) reach the goal, u3 leaves (72h),
    u4, u6, u7 move on to done (96h) and finish there; held-out u9 is still in nudge.
    Goal window 2d: welcome_email (sent at 0h) converts for u0 (5h) and u2 (26h), not u5 (60h);
    tips_email (24h) for u2; tips_push (24h) for u5 (36h later).
    """
    records = [entered(f"u{n}", holdout=n >= 8) for n in range(10)]
    records += [sent(f"u{n}", 0, "welcome_email", "welcome") for n in range(7)]
    records += [message("message_deferred", "u7", 0, "welcome_email", "welcome", reason="quiet_hours",
                        until=at(1)), sent("u7", 1, "welcome_email", "welcome")]
    records += [suppressed(u, 0, "welcome_email", "welcome", "holdout") for u in ("u8", "u9")]
    records += [goal("u0", 5), exited("u0", 5, "goal", "welcome"), exited("u1", 6, "exit", "welcome")]
    records += [moved(f"u{n}", 24, "welcome", "nudge") for n in range(2, 10)]
    records += [sent(u, 24, "tips_email", "nudge") for u in ("u2", "u3", "u4")]
    records += [sent(u, 24, "tips_push", "nudge") for u in ("u5", "u6")]
    records += [suppressed("u7", 24, "tips_push", "nudge", "frequency_cap"),
                suppressed("u8", 24, "tips_email", "nudge", "holdout"),
                suppressed("u9", 24, "tips_push", "nudge", "holdout")]
    records += [goal("u2", 26, ["tips_email"]), exited("u2", 26, "goal", "nudge"),
                goal("u8", 48), exited("u8", 48, "goal", "nudge"),
                goal("u5", 60, ["tips_push"]), exited("u5", 60, "goal", "nudge"),
                exited("u3", 72, "exit", "nudge")]
    for user in ("u4", "u6", "u7"):
        records += [moved(user, 96, "nudge", "done"), exited(user, 96, "final", "done")]
    # The dispatcher and the providers' feedback: u3's receipt repeats the dispatcher's `delivered`,
    # and u0 opens twice; each counts once per send.
    records += [outcome("message_delivered", f"u{n}", 0.1, "welcome_email") for n in range(7)]
    records += [outcome("message_failed", "u7", 1.1, "welcome_email"),
                engaged("u0", 1, "welcome_email", "opened"), engaged("u0", 2, "welcome_email", "opened"),
                engaged("u0", 2, "welcome_email", "clicked"), engaged("u2", 3, "welcome_email", "opened"),
                engaged("u3", 3, "welcome_email", "delivered"), engaged("u5", 25, "tips_push", "delivered"),
                engaged("u5", 25, "tips_push", "clicked"), engaged("u4", 25, "tips_email", "bounced"),
                engaged("u2", 25, "tips_email", "unsubscribed")]
    return records


def segment_changes() -> list[dict[str, Any]]:
    """trial: u0 in Mon 5th-Wed 7th and again from Thu 15th; u1 from the 5th; u2 6th-14th; u3 from
    Mon 12th; u4 in and out on the 13th."""
    return [segment("segment_entered", "u0", "2026-01-05T10:00:00Z"),
            segment("segment_entered", "u1", "2026-01-05T10:00:00Z"),
            segment("segment_entered", "u2", "2026-01-06T10:00:00Z"),
            segment("segment_left", "u0", "2026-01-07T10:00:00Z"),
            segment("segment_entered", "u3", "2026-01-12T10:00:00Z"),
            segment("segment_entered", "u4", "2026-01-13T08:00:00Z"),
            segment("segment_left", "u4", "2026-01-13T18:00:00Z"),
            segment("segment_left", "u2", "2026-01-14T10:00:00Z"),
            segment("segment_entered", "u0", "2026-01-15T10:00:00Z")]


@pytest.fixture
def compiled(tmp_path: Path) -> CompiledWorkspace:
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "onboarding.yaml").write_text(WORKSPACE)
    return load_workspace(folder)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The hand-counted population committed to a fresh SQLite file or PostgreSQL database."""
    url = postgres_or_skip() if request.param == "postgres" else f"sqlite:///{tmp_path}/r.db"
    store = SqlStore(url)
    for record in population():
        store.commit(Batch(records=[record]))
    for record in segment_changes():  # one per commit: a leave must close the row its entry opened
        store.commit(Batch(records=[record]))
    store.commit(Batch(bandit={("onboarding", "nudge", "tips_email"): (3, 1),
                               ("onboarding", "nudge", "tips_push"): (2, 1)}))
    yield store
    store.close()


@pytest.fixture
def report(store: SqlStore, compiled: CompiledWorkspace) -> Report:
    return build_report(store, compiled, now=NOW)


def funnel_rows(report: Report) -> dict[str, tuple[Any, ...]]:
    return {r.state: (r.entered, r.now_in, r.moved_on, r.exited, r.converted, r.conversion_rate)
            for r in report.journeys[0].funnel}


def test_the_funnel_counts_runs_through_each_state_in_file_order(report: Report) -> None:
    """Each state shows runs that entered it, are in it now, moved on, exited by reason and converted."""
    assert [r.state for r in report.journeys[0].funnel] == ["welcome", "nudge", "done"]
    assert funnel_rows(report) == {
        "welcome": (10, 0, 8, {"final": 0, "exit": 1, "goal": 1, "version": 0}, 4, 0.4),
        "nudge": (8, 1, 3, {"final": 0, "exit": 1, "goal": 3, "version": 0}, 3, 0.375),
        "done": (3, 0, 0, {"final": 3, "exit": 0, "goal": 0, "version": 0}, 0, 0.0),
    }
    journey = report.journeys[0]
    assert (journey.entered, journey.converted, journey.conversion_rate) == (10, 4, 0.4)
    assert journey.exited == {"final": 3, "exit": 2, "goal": 4, "version": 0}
    assert journey.goal == "Order Completed within 2d"


def test_without_now_the_report_is_as_of_the_latest_record_with_live_state_counts(
        store: SqlStore, compiled: CompiledWorkspace) -> None:
    """Without `now`, "now in" comes from the store's state counts and the report time is the newest change."""
    report = build_report(store, compiled)
    assert report.now == datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
    assert [r.now_in for r in report.journeys[0].funnel] == [0, 1, 0]
    assert funnel_rows(report)["nudge"][0] == 8


def test_messages_show_sends_skips_outcomes_and_conversions_within_the_goal_window(report: Report) -> None:
    """Per message and channel: sent, deferred, suppressed by reason, delivery, engagement, conversions."""
    rows = {(m.message, m.channel): m for m in report.journeys[0].messages}
    assert list(rows) == [("welcome_email", "email"), ("tips_email", "email"), ("tips_push", "push")]
    welcome, tips_email, tips_push = rows.values()
    assert (welcome.sent, welcome.deferred, welcome.suppressed, welcome.conversions) == (8, 1, {"holdout": 2}, 2)
    assert (welcome.delivered, welcome.failed, welcome.opened, welcome.clicked) == (7, 1, 2, 1)
    assert (welcome.bounced, welcome.unsubscribed, welcome.conversion_rate) == (0, 0, 0.25)
    assert (tips_email.sent, tips_email.suppressed, tips_email.conversions) == (3, {"holdout": 1}, 1)
    assert (tips_email.delivered, tips_email.bounced, tips_email.unsubscribed) == (0, 1, 1)
    assert (tips_push.sent, tips_push.suppressed, tips_push.conversions) == (2, {"frequency_cap": 1, "holdout": 1}, 1)
    assert (tips_push.delivered, tips_push.clicked, tips_push.suppressed_total) == (1, 1, 2)


def test_holdout_lift_compares_treated_and_held_out_conversion(report: Report) -> None:
    """Treated 3 of 8 against held out 1 of 2: -12.5 points, -25% relative, with Newcombe's interval."""
    lift = report.journeys[0].lift
    assert lift is not None
    assert (lift.treated, lift.treated_converted, lift.held_out, lift.held_out_converted) == (8, 3, 2, 1)
    assert (lift.treated_rate, lift.held_out_rate) == (0.375, 0.5)
    assert lift.difference == pytest.approx(-0.125)
    assert lift.relative == pytest.approx(-0.25)
    assert lift.interval == pytest.approx((-0.59524, 0.39107), abs=1e-5)


@pytest.mark.parametrize(("counts", "expected"), [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0)),
], ids=["56/70-48/80", "9/10-3/10", "6/7-2/7", "5/56-0/29", "0/10-0/20", "10/10-0/20"])
def test_the_lift_interval_matches_newcombes_published_examples(counts: tuple[int, int, int, int],
                                                                 expected: tuple[float, float]) -> None:
    """The interval for a difference of proportions is Newcombe's method 10 (Stat Med 1998, Table II)."""
    assert newcombe_interval(*counts) == pytest.approx(expected, abs=5e-5)


def test_a_journey_without_holdout_entrants_has_no_lift_interval(tmp_path: Path, compiled: CompiledWorkspace) -> None:
    """With nobody held out the lift has rates for the treated only and no interval or relative lift."""
    store = SqlStore(f"sqlite:///{tmp_path}/empty.db")
    store.commit(Batch(records=[entered("a"), goal("a", 1), exited("a", 1, "goal", "welcome"), entered("b", 2)]))
    lift = build_report(store, compiled).journeys[0].lift
    store.close()
    assert lift is not None
    assert (lift.treated, lift.treated_converted, lift.treated_rate, lift.held_out_rate) == (2, 1, 0.5, None)
    assert (lift.difference, lift.interval, lift.relative) == (None, None, None)


def test_bandits_show_the_posterior_of_each_arm(report: Report) -> None:
    """A `choose: best` state lists each arm's sends, conversions, posterior mean and credible interval."""
    (bandit,) = report.journeys[0].bandits
    assert (bandit.state, bandit.strategy) == ("nudge", "choose: best")
    email, push = bandit.arms
    assert (email.arm, email.kind, email.sends, email.conversions, email.mean) == ("tips_email", "message", 3, 1, 0.4)
    assert (push.arm, push.sends, push.conversions, push.mean) == ("tips_push", 2, 1, 0.5)
    # Beta(2, 2): 3x² - 2x³ = 0.025 at x = 0.0943, and the interval is symmetric about 1/2.
    assert (push.low, push.high) == pytest.approx((0.0943, 0.9057), abs=1e-4)


def test_segment_size_is_the_members_at_the_close_of_each_day(report: Report) -> None:
    """Daily sizes run from the first entry to `now`; a same-day visit never shows; empty segments are listed."""
    trial, vip = report.segments
    assert (trial.segment, vip.segment, vip.sizes, vip.cohorts) == ("trial", "vip", [], [])
    expected = [2, 3, 2, 2, 2, 2, 2, 3, 3, 2, 3, 3, 3, 3, 3, 3, 3]  # 5th ... 21st of January
    assert trial.sizes == [(date(2026, 1, 5) + timedelta(days=i), n) for i, n in enumerate(expected)]


def test_cohorts_give_the_share_of_each_entry_week_still_in_at_each_week_end(report: Report) -> None:
    """W02 (u0, u1, u2): 2 in at its close, 2 a week later (u0 came back); W03 (u3, u4): 1, then unknown."""
    trial = report.segments[0]
    assert trial.weeks == 2
    assert [(c.week, c.start, c.users, c.still_in) for c in trial.cohorts] == [
        ("2026-W02", date(2026, 1, 5), 3, [2, 2]),
        ("2026-W03", date(2026, 1, 12), 2, [1, None]),
    ]
    assert trial.cohorts[0].shares == pytest.approx([2 / 3, 2 / 3])
    assert trial.cohorts[1].shares == [0.5, None]


def test_now_cuts_off_later_records(store: SqlStore, compiled: CompiledWorkspace) -> None:
    """A report as of 30 hours in sees u2's goal and u0's exit but not what came later."""
    report = build_report(store, compiled, now=T0 + timedelta(hours=30))
    assert funnel_rows(report)["nudge"] == (8, 7, 0, {"final": 0, "exit": 0, "goal": 1, "version": 0}, 1, 0.125)
    assert report.segments[0].sizes == [(date(2026, 1, 5), 2), (date(2026, 1, 6), 3)]
    assert report.segments[0].cohorts[0].still_in == [None]


def test_an_unknown_journey_is_refused_with_the_known_names(store: SqlStore, compiled: CompiledWorkspace) -> None:
    """Asking for a journey the workspace lacks raises UnknownJourneyError with a suggestion."""
    with pytest.raises(UnknownJourneyError, match="did you mean `onboarding`"):
        build_report(store, compiled, "onboardin")


def test_the_terminal_report_has_every_table(report: Report) -> None:
    """The rich rendering shows the funnel, messages, lift, bandits, sizes and cohorts."""
    out = io.StringIO()
    render_terminal(report, Console(file=out, width=220, color_system=None))
    text = out.getvalue()
    for expected in ("funnel", "messages", "holdout lift", "bandits", "segment size", "2026-W02", "66.7%",
                     "-12.5 pp", "37.5%", "frequency_cap 1", "tips_push"):
        assert expected in text


def table_rows(page: str) -> list[list[str]]:
    """The cells of every table row of a page, as text."""
    return [[re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", page)]


def test_the_html_report_holds_the_figures_and_loads_nothing(report: Report) -> None:
    """The page is self-contained: every table's figures, SVG charts, and no URL, script or link to load."""
    page = render_html(report)
    rows = table_rows(page)
    for expected in (
        ["nudge", "8", "1", "3", "0", "1", "3", "3", "37.5%"],
        ["welcome_email", "email", "8", "1", "2 (holdout 2)", "0", "7", "1", "2", "1", "0", "0", "2", "25.0%"],
        ["tips_push", "push", "2", "0", "2 (frequency_cap 1, holdout 1)", "0", "1", "0", "0", "1", "0", "0", "1",
         "50.0%"],
        ["treated", "8", "3", "37.5%"], ["held out", "2", "1", "50.0%"],
        ["nudge", "choose: best", "tips_email", "3", "1", "40.0%", "6.8% – 80.6%"],
        ["2026-W02", "3", "66.7%", "66.7%"], ["2026-W03", "2", "50.0%", ""],
    ):
        assert expected in rows
    for text in ("10 entered · 4 converted (40.0%)", "-12.5 pp", "-59.5 pp", "+39.1 pp", "-25.0%", LIFT_METHOD,
                 'aria-label="members of trial per day"', "members now: 3"):
        assert text in page
    assert page.count("<svg") == 3  # the funnel, the lift interval and trial's sizes (vip has no history)
    assert not re.search(r"https?://|<script|<link|@import|url\(", page)


EXAMPLES = Path(__file__).parent.parent / "journeys"


def live_nine_days(h: Harness) -> list[str]:
    """Thirty sign-ups who use features, fill carts and order on a pattern; one anonymous cart merged."""
    users = [f"u{n}" for n in range(30)]
    for n, user in enumerate(users):
        h.identify(user, {"email": f"{user}@example.com", "timezone": "Europe/Berlin", "created_at": iso(T0),
                          "push_token": "t" if n % 2 else None,
                          "onboarding_step": "profile" if n % 4 == 0 else "completed"})
        h.track(user, "Signed Up")
        if n % 3 == 0:
            h.track(user, "Application Opened")
    h.track("anon-1", "Product Added", {"cartId": "z", "price": 30, "name": "mug"})
    h.alias("u0", "anon-1")
    for day in range(9):
        for n, user in enumerate(users):
            if (n + day) % 3 == 0:
                h.track(user, "Feature Used")
            if n % 7 == day % 7:
                h.track(user, "Product Added", {"cartId": f"c{n}-{day}", "price": 150, "name": "lamp"})
            if n % 2 == 0 and day in (1, 3, 6) and n % 5 != day:
                h.track(user, "Order Completed", {"revenue": 300})
        h.wait("1d")
    return users


def runs_converted(trace: list[dict[str, Any]], journey: str) -> int:
    """Runs of a journey (one per journey_entered) with at least one goal_reached, counted from the trace;
    an alias merge hands the anonymous user's runs to the known one."""
    run: dict[tuple[str, str], int] = {}
    converted = set()
    for r in trace:
        if r["kind"] == "alias_merged":
            run.update({(r["user"], key): n for (user, key), n in list(run.items())
                        if user == r["previous_id"] and (r["user"], key) not in run})
        if r.get("journey") != journey:
            continue
        instance = (r["user"], r.get("key") or "")
        if r["kind"] == "journey_entered":
            run[instance] = run.get(instance, 0) + 1
        elif r["kind"] == "goal_reached":
            converted.add((*instance, run[instance]))
    return len(converted)


def test_the_report_of_a_real_engine_run_agrees_with_its_trace(tmp_path: Path) -> None:
    """On the example workspace run for nine days, every journey's and segment's figures match the trace."""
    compiled = load_workspace(EXAMPLES)
    store = SqlStore(f"sqlite:///{tmp_path}/run.db", defaults=dict(compiled.metrics.defaults))
    h = Harness(compiled, start=T0, seed=7, store=store)
    live_nine_days(h)
    report = build_report(store, compiled)
    cut = build_report(store, compiled, now=h.clock.now)
    profiles = list(store.all_profiles())
    assert report.now <= h.clock.now
    assert sum(j.entered for j in report.journeys) > 50  # the story reaches most journeys
    for journey, as_cut in zip(report.journeys, cut.journeys, strict=True):
        records = [r for r in h.trace if r.get("journey") == journey.name]
        kinds = Counter(r["kind"] for r in records)
        initial = compiled.journeys[journey.name].journey.initial
        first = next(r for r in journey.funnel if r.state == initial)
        assert journey.entered == first.entered == kinds["journey_entered"]
        exits = Counter(r["reason"] for r in records if r["kind"] == "journey_exited")
        assert journey.exited == {reason: exits[reason] for reason in ("final", "exit", "goal", "version")}
        live = Counter(i.state for p in profiles for i in p.instances.values() if i.journey == journey.name)
        assert {r.state: r.now_in for r in journey.funnel if r.now_in} == dict(live)
        assert [r.now_in for r in as_cut.funnel] == [r.now_in for r in journey.funnel]
        assert journey.converted == runs_converted(h.trace, journey.name)
        sends = Counter((r["message"], r["kind"]) for r in records if r["kind"].startswith("message_"))
        for row in journey.messages:
            assert (row.sent, row.deferred, row.suppressed_total + row.passed_over) == (
                sends[(row.message, "message_sent")], sends[(row.message, "message_deferred")],
                sends[(row.message, "message_suppressed")])
            assert row.conversions <= journey.converted
        if journey.lift is not None:
            held = sum(1 for r in records if r["kind"] == "journey_entered" and r.get("holdout"))
            assert (journey.lift.held_out, journey.lift.treated + journey.lift.held_out) == (held, journey.entered)
    for segment in report.segments:
        members = sum(1 for p in profiles if segment.segment in p.segments)
        assert (segment.sizes[-1][1] if segment.sizes else 0) == members
    store.close()


def test_the_terminal_report_reads_in_80_columns(report: Report) -> None:
    """No header word or message name is cut in an 80-column terminal: headers wrap between words."""
    out = io.StringIO()
    render_terminal(report, Console(file=out, width=80, color_system=None))
    text = out.getvalue()
    assert "…" not in text
    for expected in ("messages: sending", "messages: answers", "unsubscribed", "conversions", "conversion",
                     "entered", "welcome_email", "tips_push"):
        assert re.search(rf"(?<![\w]){expected}(?![\w])", text), expected


def test_long_state_names_fold_instead_of_pushing_columns_off_an_80_column_terminal(report: Report) -> None:
    """A journey with long state and message names still shows every column at 80 columns."""
    from dataclasses import replace

    journey = report.journeys[0]
    long = replace(journey, funnel=[replace(row, state=f"{row.state}_with_a_very_long_name_indeed")
                                    for row in journey.funnel])
    out = io.StringIO()
    render_terminal(replace(report, journeys=[long], segments=[]), Console(file=out, width=80, color_system=None))
    text = out.getvalue()
    assert "conversion" in text and max(len(line) for line in text.splitlines()) <= 80
