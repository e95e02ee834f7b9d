"""The Outbox contract (journey_engine/ports.py), run against memory, SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import timedelta

from journey_engine.ports import ServiceStore, send_from_payload

from .conftest import T0, commit_sends, send, settled


def test_a_claim_takes_due_sends_earliest_first_up_to_the_limit(store: ServiceStore) -> None:
    """claim_outbox returns at most `limit` pending sends due by `now`, the earliest due first, not in-app ones."""
    commit_sends(store, send("k3", minutes=3), send("k1", minutes=1), send("k2", minutes=2),
                 send("k9", minutes=9), send("app", channel="in_app"))
    rows = store.claim_outbox(T0 + timedelta(minutes=5), 2)
    assert [r["key"] for r in rows] == ["k1", "k2"]
    assert [r["key"] for r in store.claim_outbox(T0 + timedelta(minutes=5), 10)] == ["k3"]


def test_a_claimed_row_carries_its_send_its_token_and_the_end_of_its_lease(store: ServiceStore) -> None:
    """A claimed row holds the send as JSON, a token, and the lease's end as next_attempt_at."""
    original = send("k1", context={"traits": {"email": "a@b.c"}, "n": 3})
    commit_sends(store, original)
    (row,) = store.claim_outbox(T0, 10, lease=30)
    assert send_from_payload(row["payload"]) == original
    assert (row["user_id"], row["channel"], row["message"], row["journey"]) == ("u1", "email", "welcome_email",
                                                                                 "onboarding")
    assert row["attempts"] == 0 and row["status"] == "pending"
    assert row["next_attempt_at"] == T0.timestamp() + 30
    assert isinstance(row["token"], str) and len(row["token"]) >= 8


def test_committing_the_same_send_again_adds_nothing(store: ServiceStore) -> None:
    """A send's key is its row's key: a second commit of it leaves one row."""
    commit_sends(store, send("k1"))
    commit_sends(store, send("k1"))
    assert [r["key"] for r in store.outbox()] == ["k1"]


def test_a_claimed_send_is_not_claimed_again_until_its_lease_runs_out(
        stores: tuple[ServiceStore, ServiceStore]) -> None:
    """A second dispatcher gets nothing while the lease holds, then the send under a new token."""
    a, b = stores
    commit_sends(a, send("k1"))
    (first,) = a.claim_outbox(T0, 10, lease=60)
    assert b.claim_outbox(T0 + timedelta(seconds=59), 10) == []
    (again,) = b.claim_outbox(T0 + timedelta(seconds=60), 10)
    assert again["key"] == "k1" and again["token"] != first["token"]


def test_settling_records_the_answer_and_its_trace(store: ServiceStore) -> None:
    """A settle by the latest claim writes status, attempts, time and error, and its trace records."""
    commit_sends(store, send("k1"), send("k2"))
    rows = store.claim_outbox(T0, 10)
    later = T0 + timedelta(minutes=1)
    record = {"kind": "message_delivered", "at": "2026-01-05T09:01:00Z", "user": "u1", "send_key": "k1"}
    assert store.settle_outbox([settled(rows[0], "delivered", later)], [record]) == {"k1"}
    assert store.settle_outbox([settled(rows[1], "pending", later + timedelta(minutes=5), error="503")],
                               []) == {"k2"}
    by_key = {r["key"]: r for r in store.outbox()}
    assert (by_key["k1"]["status"], by_key["k1"]["attempts"], by_key["k1"]["token"]) == ("delivered", 1, None)
    assert (by_key["k2"]["status"], by_key["k2"]["last_error"]) == ("pending", "503")
    assert by_key["k2"]["next_attempt_at"] == (later + timedelta(minutes=5)).timestamp()
    assert store.trace("u1") == [record]
    assert [r["key"] for r in store.outbox("delivered")] == ["k1"]


def test_a_send_retried_later_is_claimed_again_when_due(store: ServiceStore) -> None:
    """A pending settle with a later next_attempt_at makes the send due again then, not before."""
    commit_sends(store, send("k1"))
    (row,) = store.claim_outbox(T0, 10)
    store.settle_outbox([settled(row, "pending", T0 + timedelta(minutes=10), error="timeout")], [])
    assert store.claim_outbox(T0 + timedelta(minutes=9), 10) == []
    (again,) = store.claim_outbox(T0 + timedelta(minutes=10), 10)
    assert again["attempts"] == 1 and again["last_error"] == "timeout"


def test_a_late_answer_changes_nothing_and_its_records_are_dropped(
        stores: tuple[ServiceStore, ServiceStore]) -> None:
    """After another claim took the send over, the first holder's settle is refused with its records."""
    a, b = stores
    commit_sends(a, send("k1"))
    (first,) = a.claim_outbox(T0, 10, lease=60)
    (second,) = b.claim_outbox(T0 + timedelta(seconds=61), 10)
    assert b.settle_outbox([settled(second, "delivered", T0 + timedelta(seconds=62))], []) == {"k1"}
    late = {"kind": "message_failed", "at": "2026-01-05T09:02:00Z", "user": "u1", "send_key": "k1"}
    assert a.settle_outbox([settled(first, "dead", T0 + timedelta(seconds=63))], [late]) == set()
    assert [r["status"] for r in a.outbox()] == ["delivered"]
    assert a.trace("u1") == []


def test_a_settle_without_a_token_uses_this_stores_claim(store: ServiceStore) -> None:
    """An update without `token` settles under the token of the claim this store made."""
    commit_sends(store, send("k1"))
    (row,) = store.claim_outbox(T0, 10)
    update = {k: v for k, v in settled(row, "delivered", T0).items() if k != "token"}
    assert store.settle_outbox([update], []) == {"k1"}


def test_sends_due_are_counted_claimed_or_not(store: ServiceStore) -> None:
    """outbox_due counts pending sends due by `now`, not in-app ones and not finished ones."""
    commit_sends(store, send("k1"), send("k2", minutes=1), send("k3", minutes=30), send("app", channel="in_app"))
    assert store.outbox_due(T0 + timedelta(minutes=5)) == 2
    rows = store.claim_outbox(T0, 1)
    store.settle_outbox([settled(rows[0], "delivered", T0)], [])
    assert store.outbox_due(T0 + timedelta(minutes=5)) == 1


def test_a_users_sends_are_read_in_decision_order(store: ServiceStore) -> None:
    """outbox_of gives one user's sends by decision time then key, on one channel when asked."""
    commit_sends(store, send("b", minutes=2), send("a", minutes=2), send("c", minutes=1, channel="sms"),
                 send("x", user="u2"))
    assert [r["key"] for r in store.outbox_of("u1")] == ["c", "a", "b"]
    assert [r["key"] for r in store.outbox_of("u1", "sms")] == ["c"]


def test_finished_sends_older_than_the_retention_are_pruned(store: ServiceStore) -> None:
    """prune drops delivered, dead and expired sends older than the trace retention; pending ones stay."""
    commit_sends(store, send("done"), send("dead"), send("waiting"))
    rows = {r["key"]: r for r in store.claim_outbox(T0, 10)}
    store.settle_outbox([settled(rows["done"], "delivered", T0), settled(rows["dead"], "dead", T0),
                         settled(rows["waiting"], "pending", T0 + timedelta(days=200))], [])
    assert store.prune(T0 + timedelta(days=89))["outbox"] == 0
    assert store.prune(T0 + timedelta(days=91))["outbox"] == 2
    assert [r["key"] for r in store.outbox()] == ["waiting"]
