"""MemoryStore with a bounded live set: which profiles stay objects, and blobs that name by number."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgpack
import pytest

from journey_engine import codec
from journey_engine.compiler import load_workspace
from journey_engine.engine import Engine
from journey_engine.memory import MemoryStore
from journey_engine.ports import Batch
from journey_engine.profile import Instance, Profile

COMPILED = load_workspace(Path(__file__).parent / "workspaces" / "basic")
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _profile(user: str, wake_hours: float | None) -> Profile:
    profile = Engine(COMPILED).new_profile(user)
    profile.wake = None if wake_hours is None else T0 + timedelta(hours=wake_hours)
    return profile


def test_the_live_set_keeps_those_woken_soonest() -> None:
    """hot=10: the ten users whose wake-ups come soonest stay live, whatever the order of the commits;
    a user with no wake-up leaves first."""
    store = MemoryStore(hot=10)
    wakes: dict[str, float | None] = {f"u{i}": (None if i % 5 == 0 else float((i * 7) % 23)) for i in range(30)}
    for user, hours in wakes.items():
        store.commit(Batch(profiles={user: _profile(user, hours)}))
    soonest = sorted((h, u) for u, h in wakes.items() if h is not None)[:10]
    assert set(store.profiles) == {u for _, u in soonest}
    assert set(store.cold) == set(wakes) - set(store.profiles)
    for user, hours in wakes.items():  # a cold profile reads back as it was committed
        back = store.load([user])[user]
        assert back.user_id == user and back.wake == (None if hours is None else T0 + timedelta(hours=hours))
    woken = next(u for u in store.cold if wakes[u] is not None)
    store.commit(Batch(profiles={woken: _profile(woken, 0.5)}))  # sooner than any: it stays, the furthest goes
    assert woken in store.profiles and len(store.profiles) == 10
    assert soonest[-1][1] in store.cold


def test_recommitting_keeps_the_eviction_heap_bounded() -> None:
    """Wake-ups that move leave stale heap entries, which are dropped now and then: the heap never holds
    more than about twice the live users."""
    store = MemoryStore(hot=50)
    for rounds in range(40):
        for i in range(60):
            store.commit(Batch(profiles={f"u{i}": _profile(f"u{i}", float((i + rounds) % 17))}))
            assert len(store._furthest) <= 2 * len(store.profiles) + 64 + 1
    assert len(store.profiles) == 50 and len(store.cold) == 10


def test_the_store_counts_its_misses_and_the_bytes_of_its_own_structures() -> None:
    """`decoded` and `encoded` count the profiles that crossed between live and cold (the bench reports
    them per event); a decoded profile's user id is the store's key; `index_bytes` grows with the users."""
    store = MemoryStore(hot=2)
    empty = store.index_bytes()
    for i in range(5):
        store.commit(Batch(profiles={f"u{i}": _profile(f"u{i}", float(i))}))
    assert store.encoded == 3 and store.decoded == 0 and len(store.cold) == 3
    cold = next(iter(store.cold))
    loaded = store.load([cold])[cold]
    assert store.decoded == 1
    assert loaded.user_id is cold  # the key itself, not an equal string decoded from the blob
    loaded.wake = T0 + timedelta(minutes=30)  # woken soonest now: back in the live set, another one leaves it
    store.commit(Batch(profiles={cold: loaded}))
    assert store.decoded == 1 and store.encoded == 4 and cold in store.profiles
    many = MemoryStore()
    for i in range(200):
        many.commit(Batch(profiles={f"u{i}": _profile(f"u{i}", float(i))}))
    # per user: a slot in `profiles` and in `_woken`, a heap entry and its slot (the wake-up float is the
    # live profile's own, counted with the profile)
    assert 100 < (many.index_bytes() - empty) / 200 < 300
    assert store.index_bytes() > empty


def test_wake_ups_moved_earlier_leave_a_bounded_number_of_entries_behind() -> None:
    """Each move earlier pushes an entry and leaves the old one behind; they are dropped once they
    outnumber half the users, and the users still come due once each, in the order of their wake-ups."""
    store = MemoryStore()
    users = [f"u{i}" for i in range(100)]
    for hours in range(48, 0, -1):  # every user's wake-up moves an hour earlier, 48 times
        for i, user in enumerate(users):
            store.commit(Batch(profiles={user: _profile(user, hours + i / 1000)}))
            assert len(store.wakeups) <= len(store._woken) * 3 // 2 + 64 + 1
    due = store.due(T0 + timedelta(hours=2), limit=1000)
    assert [user for _, user in due] == users
    assert [at for at, _ in due] == sorted(at for at, _ in due)
    assert store.due(T0 + timedelta(days=3), limit=1000) == []  # claimed: nothing left behind comes due


def test_a_wake_up_moved_later_waits_again_without_decoding_the_profile() -> None:
    """A cold user's wake-up committed later than their heap entry: when the entry comes up, it is
    pushed again at the new time from the store's own note, and the blob stays a blob."""
    store = MemoryStore(hot=1)
    store.commit(Batch(profiles={"u0": _profile("u0", 1)}))
    store.commit(Batch(profiles={"u1": _profile("u1", 0.5)}))  # sooner: u0 leaves the live set
    moved = store.load(["u0"])["u0"]
    moved.wake = T0 + timedelta(hours=5)
    store.commit(Batch(profiles={"u0": moved}))
    assert "u0" in store.cold and store.decoded == 1
    assert [user for _, user in store.due(T0 + timedelta(hours=2), limit=10)] == ["u1"]
    assert store.decoded == 1  # u0's entry for 1h came up and waits again, for 5h
    assert store.due(T0 + timedelta(hours=4), limit=10) == []
    assert store.due(T0 + timedelta(hours=6), limit=10) == [(T0 + timedelta(hours=5), "u0")]
    assert store.decoded == 2
    store.commit(Batch(profiles={"u2": _profile("u2", 7)}))
    store.commit(Batch(profiles={"u2": _profile("u2", None)}))  # no wake-up any more: its entry is passed over
    assert "u2" in store.cold
    assert store.due(T0 + timedelta(days=1), limit=10) == []
    assert store.decoded == 2


def _rich_profile() -> Profile:
    profile = Engine(COMPILED).new_profile("u1")
    profile.traits = {"email": "a@example.com", "plan": "pro"}
    profile.metric_values = {"orders": 3.0, "last_order_at": T0}
    profile.windows = {"opens_7d": (1.0, 1.0, 2.0, 1.0)}
    profile.segments = ("buyers", "vip")
    profile.for_since = {"vip": T0}
    inst = Instance(journey="cart", version="v1", key="c1", state="reminder", entered_at=T0, data={"price": 9},
                    holdout=False)
    inst.timers = ((T0 + timedelta(hours=1), 0),)
    inst.sent = [("remind", T0, "reminder")]
    profile.add_instance(("cart", "c1"), inst)
    profile.note_entry(("cart", "c1"), 1.5)
    profile.note_entry(("onboarding", ""), 2.5)
    profile.ledger = ((1.0, "email"), (2.0, "push"))
    profile.held = ("trial",)
    profile.wake = T0
    return profile


def _fields(p: Profile) -> tuple[object, ...]:
    insts = {k: (i.journey, i.version, i.key, i.state, i.entered_at, i.data, i.timers, i.sent)
             for k, i in p.instances.items()}
    return (p.user_id, p.traits, p.metric_values, p.windows, p.segments, p.for_since, insts, p.entries, p.ledger,
            p.held, p.wake_at, p.segments_due_at)


def test_a_blob_with_numbered_names_reads_back_equal_and_shares_the_names() -> None:
    """With a Names table the blob is smaller, reads back field for field, and its names are the table's
    own strings (one copy a process, not one a decoded profile)."""
    names = codec.Names()
    profile = _rich_profile()
    local, portable = codec.encode(profile, names=names), codec.encode(profile)
    assert len(local) < len(portable)
    back = codec.decode(local, None, names)
    assert _fields(back) == _fields(profile) == _fields(codec.decode(portable))
    journey = back.instances[("cart", "c1")].journey
    assert journey is names.names[names.index["cart"]]
    assert back.segments[1] is names.names[names.index["vip"]]


def test_a_blob_with_numbered_names_is_refused_without_its_table() -> None:
    """Such a blob means nothing outside its process: a decoder without the table says so, never misreads."""
    local = codec.encode(_rich_profile(), names=codec.Names())
    assert msgpack.unpackb(local)[0] == codec.LOCAL
    with pytest.raises(codec.CodecError, match="name table"):
        codec.decode(local)
