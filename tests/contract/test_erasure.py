"""The Erasure contract (journey_engine/ports.py), run against memory, SQLite and PostgreSQL alike."""

from __future__ import annotations

from journey_engine import trace
from journey_engine.engine import Engine
from journey_engine.events import Event
from journey_engine.ports import Batch, ServiceStore
from journey_engine.runtime import Runtime

from .conftest import COMPILED, T0


def _merged_user(store: ServiceStore) -> None:
    """anon-7 merged into real-7, who has a profile, a journey, a send, trace records and messageIds; u9 too."""
    Runtime(Engine(COMPILED), store).process([
        Event(type="track", user_id="anon-7", name="Feature Used", timestamp=T0, message_id="m-anon"),
        Event(type="identify", user_id="real-7", traits={"email": "r@example.com", "status": "onboarding"},
              timestamp=T0, message_id="m-real"),
        Event(type="track", user_id="real-7", name="Signed Up", timestamp=T0, message_id="m-signup"),
        Event(type="alias", user_id="real-7", previous_id="anon-7", timestamp=T0),
        Event(type="identify", user_id="u9", traits={"email": "n@example.com", "status": "onboarding"},
              timestamp=T0, message_id="m-u9"),
        Event(type="track", user_id="u9", name="Signed Up", timestamp=T0)], T0)
    store.commit(Batch(records=[trace.segment("segment_entered", T0, user, "vip") for user in ("real-7", "u9")]))


def _segments(store: ServiceStore) -> set[str]:
    with store.snapshot() as reads:
        return {user for _, user, _, _ in reads.segment_history()}


def test_erasing_an_aliased_id_erases_everything_of_the_user_it_was_merged_into(store: ServiceStore) -> None:
    """Profile, aliases, trace, outbox rows, segment history, messageIds and state counts of every id go."""
    _merged_user(store)
    assert store.state_counts()["onboarding"]["welcome"] == 2
    assert _segments(store) == {"real-7", "u9"}
    assert store.erase("anon-7", T0) is True
    assert store.load(["real-7", "anon-7"]) == {}
    assert store.aliases(["anon-7"]) == {}
    assert store.trace("real-7") == [] and store.trace("anon-7") == []
    assert store.outbox_of("real-7") == []
    assert store.seen(["m-real", "m-signup"]) == set()
    assert _segments(store) == {"u9"}
    assert store.state_counts()["onboarding"]["welcome"] == 1
    assert store.erased(["anon-7", "real-7", "u9"]) == {"anon-7", "real-7"}


def test_erasing_leaves_every_other_user_as_it_was(store: ServiceStore) -> None:
    """Another user's profile, trace, sends and messageIds stay."""
    _merged_user(store)
    before = (store.trace("u9"), [r["key"] for r in store.outbox_of("u9")])
    store.erase("real-7", T0)
    assert list(store.load(["u9"])) == ["u9"]
    assert (store.trace("u9"), [r["key"] for r in store.outbox_of("u9")]) == before
    assert store.seen(["m-u9"]) == {"m-u9"}


def test_erasing_is_idempotent_and_an_unknown_id_is_refused_from_then_on(store: ServiceStore) -> None:
    """A second erase finds nothing; an id never stored is answered False and still refused afterwards."""
    _merged_user(store)
    assert store.erase("real-7", T0) is True
    assert store.erase("real-7", T0) is False
    assert store.erase("nobody", T0) is False
    assert store.erased(["nobody"]) == {"nobody"}


def test_an_id_erased_before_does_not_lead_to_another_user(store: ServiceStore) -> None:
    """The aliases of an id erased before are not followed: erasing it again erases only that id."""
    store.erase("gone", T0)
    store.commit(Batch(aliases={"gone": "u9"}))  # left from before the refusal rule
    _merged_user(store)
    store.erase("gone", T0)
    assert list(store.load(["u9"])) == ["u9"]
