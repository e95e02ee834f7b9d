"""The Reads contract (journey_engine/ports.py), run against memory, SQLite and PostgreSQL alike: the same
story committed to each store reads back the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from journey_engine.ports import Batch, ServiceStore
from journey_engine.testing import Harness

from .conftest import COMPILED, T0


def _story(store: ServiceStore, *, week: bool = True) -> Harness:
    """Five users sign up; u2 orders, u3 adds to a cart, u1 is merged with an anonymous id; after a week
    onboarding they are `stuck`, and u4 leaves the segment by finishing onboarding (`week`)."""
    h = Harness(COMPILED, start=T0, seed=5, store=store)
    for n in range(5):
        h.identify(f"u{n}", {"email": f"u{n}@example.com", "timezone": "Europe/Berlin", "status": "onboarding"})
        h.track(f"u{n}", "Signed Up", message_id=f"s{n}")
        h.wait("1h")
    h.track("u3", "Product Added", {"cartId": "A", "price": 120, "name": "lamp"})
    h.track("anon", "Feature Used")
    h.alias("u1", "anon")
    h.wait("2d")
    h.track("u2", "Order Completed", {"revenue": 40})
    if not week:
        return h
    h.wait("8d")
    h.identify("u4", {"status": "active"})
    h.wait("1h")
    return h


def _live(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {j: {s: n for s, n in states.items() if n} for j, states in counts.items() if any(states.values())}


def _in_profiles(store: ServiceStore, users: list[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for profile in store.load(users).values():
        for inst in profile.instances.values():
            counts.setdefault(inst.journey, {}).setdefault(inst.state, 0)
            counts[inst.journey][inst.state] += 1
    return counts


def test_state_counts_are_the_users_in_each_state(store: ServiceStore) -> None:
    """state_counts equals the users' journey states in their profiles (states with none: 0 or absent)."""
    _story(store, week=False)
    counts = _live(store.state_counts())
    assert counts == _in_profiles(store, [f"u{n}" for n in range(5)])
    assert sum(counts["onboarding"].values()) == 4  # u2 ordered: the goal ended their run


def test_the_trace_of_a_user_is_their_last_records_oldest_first(store: ServiceStore) -> None:
    """trace(user, limit) gives the user's committed records in commit order, the last `limit` of them."""
    h = _story(store)
    mine = [r for r in h.trace if r.get("user") == "u2"]
    assert store.trace("u2") == mine
    assert store.trace("u2", limit=2) == mine[-2:]
    assert store.trace("nobody") == []


def test_a_snapshot_streams_the_trace_by_kind_and_journey(store: ServiceStore) -> None:
    """trace_records filters by kind, and by journey keeps that journey's records and every alias_merged."""
    h = _story(store)
    kinds = ("journey_entered", "transition", "alias_merged")
    with store.snapshot() as reads:
        everything = list(reads.trace_records(kinds))
        cart = list(reads.trace_records(kinds, "abandoned_cart"))
    assert everything == [r for r in h.trace if r["kind"] in kinds]
    assert cart == [r for r in h.trace if r["kind"] in kinds
                    and (r.get("journey") == "abandoned_cart" or r["kind"] == "alias_merged")]
    assert any(r["kind"] == "alias_merged" for r in cart)


def test_a_snapshot_holds_the_segment_history_and_the_latest_time(store: ServiceStore) -> None:
    """segment_history is every stay (open ones with None), by segment, user and entry; latest the newest time."""
    h = _story(store)
    expected: list[list[Any]] = []
    for r in h.trace:
        if r["kind"] == "segment_entered":
            expected.append([r["segment"], r["user"], r["at"], None])
        elif r["kind"] == "segment_left":
            for stay in expected:
                if stay[:2] == [r["segment"], r["user"]] and stay[3] is None:
                    stay[3] = r["at"]
    with store.snapshot() as reads:
        history = [list(stay) for stay in reads.segment_history()]
        latest = reads.latest()
        arms = reads.bandit()
        counts = reads.state_counts()
    assert history == sorted(expected, key=lambda s: (s[0], s[1], s[2])) != []
    assert latest == max(datetime.fromisoformat(r["at"].replace("Z", "+00:00")) for r in h.trace)
    assert arms == store.bandit()
    assert _live(counts) == _live(store.state_counts())


def test_bandit_arms_add_up_what_the_batches_taught(store: ServiceStore) -> None:
    """bandit() is the sum of every committed batch's sends and conversions per arm."""
    store.commit(Batch(bandit={("j", "s", "a"): (3, 1), ("j", "s", "b"): (2, 0)}))
    store.commit(Batch(bandit={("j", "s", "a"): (1, 1), ("k", "t", "a"): (5, 2)}))
    assert store.bandit() == {("j", "s"): {"a": (4, 2), "b": (2, 0)}, ("k", "t"): {"a": (5, 2)}}
    with store.snapshot() as reads:
        assert reads.bandit() == store.bandit()


def test_due_wake_ups_are_counted_with_the_earliest(store: ServiceStore) -> None:
    """due_count and overdue count the users whose wake-up has come, claimed or not."""
    _story(store)
    wakes = sorted(p.wake for p in store.load([f"u{n}" for n in range(5)]).values() if p.wake is not None)
    assert wakes
    until = wakes[0] + timedelta(seconds=1)
    due = sum(1 for w in wakes if w <= until)
    assert store.due_count(until) == due
    assert store.overdue(until) == (due, wakes[0])
    assert store.overdue(datetime(2000, 1, 1, tzinfo=UTC)) == (0, None)


def test_a_healthy_real_store_is_writable_has_no_advice_and_no_simulation(store: ServiceStore) -> None:
    """unwritable() is None for a store that takes writes; simulated() None until a simulation marks it."""
    assert store.unwritable() is None
    assert store.simulated() is None
    assert isinstance(store.advice(), list)
