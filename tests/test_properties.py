"""Invariants over random event streams (Hypothesis): whatever users do, the engine keeps its promises."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journey_engine.compiler import load_workspace
from journey_engine.testing import Harness

COMPILED = load_workspace(Path(__file__).parent / "workspaces" / "basic")
BERLIN = ZoneInfo("Europe/Berlin")
TIMERS = {("onboarding", "welcome"): timedelta(days=2), ("cart", "waiting"): timedelta(hours=1),
          ("cart", "reminded"): timedelta(days=1)}

users = st.sampled_from(["u1", "u2", "u3"])
steps = st.one_of(
    st.tuples(st.just("track"), users, st.sampled_from(
        ["Signed Up", "Feature Used", "Order Completed", "Account Deleted", "Unsubscribed", "Subscribed"]),
        st.sampled_from(["A", "B", None])),
    st.tuples(st.just("cart"), users, st.sampled_from(["A", "B"]), st.integers(0, 200)),
    st.tuples(st.just("identify"), users, st.sampled_from(["pro", "free"]), st.booleans()),
    st.tuples(st.just("wait"), st.sampled_from(["5m", "1h", "7h", "13h", "1d", "2d", "8d"])),
    st.tuples(st.just("alias"), users, st.sampled_from(["anon-1", "anon-2"])),
)


def play(script: list[tuple[Any, ...]], seed: int, compiled: Any = COMPILED) -> Harness:
    h = Harness(compiled, start="2026-03-27T18:00:00Z", seed=seed)  # spans the spring DST change
    for step in script:
        kind = step[0]
        if kind == "track":
            props = {"subscription": "marketing_email"} if step[2].endswith("subscribed") else {}
            if step[3] is not None:
                props["cartId"] = step[3]
            h.track(step[1], step[2], props)
        elif kind == "cart":
            h.track(step[1], "Product Added", {"cartId": step[2], "price": step[3]})
        elif kind == "identify":
            traits = {"plan": step[2], "timezone": "Europe/Berlin"}
            if step[3]:
                traits["email"] = f"{step[1]}@example.com"
            h.identify(step[1], traits)
        elif kind == "wait":
            h.wait(step[1])
        else:
            h.alias(step[1], step[2])
    h.wait("10d")
    return h


def at(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["at"].replace("Z", "+00:00"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, max_size=40), st.integers(0, 3))
def test_random_streams_keep_every_promise(script: list[tuple[Any, ...]], seed: int) -> None:
    """No send inside quiet hours, no cap exceeded, no timer of a state already left, and it terminates."""
    h = play(script, seed)
    sends = h.records(kind="message_sent")
    for send in sends:
        local = at(send).astimezone(BERLIN)
        assert 8 <= local.hour < 21, f"sent inside quiet hours: {send}"
    by_user: dict[str, list[datetime]] = {}
    for send in sends:
        times = by_user.setdefault(send["user"], [])
        times.append(at(send))
        assert sum(1 for t in times if t > at(send) - timedelta(days=1)) <= 3, f"cap exceeded: {send}"
    where: dict[tuple[str, str, Any], tuple[str, datetime]] = {}
    for record in h.trace:
        ident = (record.get("user"), record.get("journey"), record.get("key"))
        if record["kind"] == "journey_entered":
            where[ident] = (record["state"], at(record))
        elif record["kind"] == "transition":
            state, since = where[ident]
            assert record["from"] == state
            if record["trigger"] == "after":
                assert at(record) - since == TIMERS[(record["journey"], state)], f"stale timer: {record}"
            where[ident] = (record["to"], at(record))
        elif record["kind"] == "journey_exited":
            where.pop(ident, None)
        elif record["kind"] == "alias_merged":  # the anonymous user's instances now belong to this user
            for user, journey, key in list(where):
                if user == record["previous_id"]:
                    where[(record["user"], journey, key)] = where.pop((user, journey, key))
    assert not h.records(kind="cycle")


@settings(max_examples=15, deadline=None)
@given(st.lists(steps, max_size=25), st.integers(0, 3))
def test_the_same_seed_gives_the_same_trace(script: list[tuple[Any, ...]], seed: int) -> None:
    """Replaying a stream with the same seed reproduces the trace exactly."""
    assert play(script, seed).trace == play(script, seed).trace


EVERY_EXPIRY = load_workspace(Path(__file__).parent / "workspaces" / "basic")
EVERY_EXPIRY.metrics.thresholds = {}  # every window expiry wakes the user, as before thresholds


uses = st.one_of(st.tuples(st.just("track"), st.sampled_from(["u1", "u2"]), st.just("Feature Used"), st.none()),
                 st.tuples(st.just("wait"), st.sampled_from(["1m", "1h", "5h", "1d", "3d"])))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(uses, steps), min_size=5, max_size=40), st.integers(0, 3))
def test_waking_only_at_expiries_that_cross_a_threshold_changes_nothing(script: list[tuple[Any, ...]],
                                                                       seed: int) -> None:
    """`metrics.feature_uses_7d` is read only as `>= 3` and `>= 5`: skipping the expiries that cross
    neither gives the very trace of waking at every expiry (`power_users` left at the same minute),
    and the same metrics at the end."""
    assert COMPILED.metrics.thresholds["feature_uses_7d"]
    fast, every = play(script, seed), play(script, seed, EVERY_EXPIRY)
    assert fast.trace == every.trace
    assert all(fast.metrics(u) == every.metrics(u) for u in ("u1", "u2", "u3"))
