"""The Inbox contract (journey_engine/ports.py), run against memory, SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import timedelta

from journey_engine.ports import ServiceStore

from .conftest import T0, commit_sends, render, send


def test_the_inbox_holds_the_users_unread_in_app_messages_rendered(store: ServiceStore) -> None:
    """inbox lists a user's in-app sends, oldest first, rendered by the callable it is given."""
    commit_sends(store, send("later", channel="in_app", minutes=5, message="tip"),
                 send("first", channel="in_app", message="hello"), send("mail"),
                 send("theirs", user="u2", channel="in_app"))
    assert store.inbox("u1", render) == [
        {"id": "first", "message": "hello", "journey": "onboarding", "at": "2026-01-05T09:00:00Z",
         "title": "title of hello", "body": "body for u1", "url": "https://example.com/first"},
        {"id": "later", "message": "tip", "journey": "onboarding", "at": "2026-01-05T09:05:00Z",
         "title": "title of tip", "body": "body for u1", "url": "https://example.com/later"}]


def test_a_message_marked_read_leaves_the_inbox(store: ServiceStore) -> None:
    """mark_read takes the message out of the inbox; marking it again still answers True."""
    commit_sends(store, send("a", channel="in_app"), send("b", channel="in_app", minutes=1))
    assert store.mark_read("u1", "a") is True
    assert [m["id"] for m in store.inbox("u1", render)] == ["b"]
    assert store.mark_read("u1", "a") is True
    assert [r["status"] for r in store.outbox_of("u1")] == ["read", "pending"]


def test_only_the_users_own_in_app_message_can_be_marked_read(store: ServiceStore) -> None:
    """mark_read is False for another user's message, an email, or an unknown key, and changes nothing."""
    commit_sends(store, send("app", channel="in_app"), send("mail"))
    assert store.mark_read("u2", "app") is False
    assert store.mark_read("u1", "mail") is False
    assert store.mark_read("u1", "nothing") is False
    assert [m["id"] for m in store.inbox("u1", render)] == ["app"]


def test_in_app_messages_are_never_claimed_for_a_channel(store: ServiceStore) -> None:
    """The dispatcher's claims pass over in-app sends: they wait for the app."""
    commit_sends(store, send("app", channel="in_app"))
    assert store.claim_outbox(T0 + timedelta(days=1), 10) == []
