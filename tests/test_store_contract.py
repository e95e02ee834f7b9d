"""The Store contract (journey_engine/ports.py), run against memory, SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from journey_engine.compiler import load_workspace
from journey_engine.engine import Engine
from journey_engine.events import Event
from journey_engine.memory import MemoryStore
from journey_engine.ports import Batch, ConflictError, partition
from journey_engine.runtime import Runtime
from journey_engine.testing import Harness

from .conftest import StoreFactory

COMPILED = load_workspace(Path(__file__).parent / "workspaces" / "basic")
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def story(h: Harness) -> list[dict[str, Any]]:
    for n in range(5):
        h.identify(f"u{n}", {"email": f"u{n}@example.com", "timezone": "Europe/Berlin", "status": "onboarding",
                             "push_token": "t" if n % 2 else None})
        h.track(f"u{n}", "Signed Up", message_id=f"s{n}")
        h.track(f"u{n}", "Signed Up", message_id=f"s{n}")  # a duplicate
        h.track(f"u{n}", "Product Added", {"cartId": "A", "price": 120, "name": "lamp"})
        h.wait("5h")
    h.track("anon", "Feature Used")
    h.alias("u1", "anon")
    h.wait("2d")
    h.track("u2", "Order Completed", {"revenue": 40})
    h.wait("10d")
    return h.trace


def test_a_story_runs_the_same_on_every_store(store_factory: StoreFactory) -> None:
    """Profiles, timers, aliases and dedupe committed to the store give the trace of the memory run."""
    expected = story(Harness(COMPILED, start=T0, seed=5))
    actual = story(Harness(COMPILED, start=T0, seed=5, store=store_factory(defaults=_defaults())
                           if store_factory.kind != "memory" else store_factory()))  # type: ignore[attr-defined]
    assert actual == expected


def _defaults() -> dict[str, Any]:
    return dict(COMPILED.metrics.defaults)


def _store(store_factory: StoreFactory) -> Any:
    if store_factory.kind == "memory":  # type: ignore[attr-defined]
        return store_factory()
    return store_factory(defaults=_defaults())


def test_committed_message_ids_are_seen(store_factory: StoreFactory) -> None:
    """seen() answers exactly the messageIds committed before."""
    store = _store(store_factory)
    store.commit(Batch(message_ids=[("m1", T0), ("m2", T0)]))
    assert store.seen(["m1", "m3", "m2"]) == {"m1", "m2"}


def _waking(store: Any, after: dict[str, timedelta]) -> None:
    """New users whose wake-up is T0 plus their delay, committed in one batch."""
    engine = Engine(COMPILED)
    batch = Batch()
    for user, delay in after.items():
        profile = engine.new_profile(user)
        profile.wake = T0 + delay
        batch.profiles[user] = profile
    store.commit(batch)


def test_due_claims_earliest_first_and_leases_the_claim(store_factory: StoreFactory) -> None:
    """due() returns users whose wake-up has come, earliest first, and not twice while claimed."""
    store = _store(store_factory)
    _waking(store, {f"u{n}": timedelta(hours=h) for n, h in enumerate([3, 1, 2, 30])})
    first = store.due(T0 + timedelta(hours=5), 2)
    assert [u for _, u in first] == ["u1", "u2"]
    assert first[0][0] == T0 + timedelta(hours=1)
    second = store.due(T0 + timedelta(hours=5), 10)
    assert [u for _, u in second] == ["u0"]
    assert store.due(T0 + timedelta(hours=5), 10) == []


def test_a_worker_of_a_partition_claims_only_its_own_users(store_factory: StoreFactory) -> None:
    """due(part=(i, n)) claims the due users with partition(user, n) == i, earliest first; the others stay
    due for their own worker."""
    store = _store(store_factory)
    _waking(store, {f"u{n}": timedelta(minutes=n) for n in range(12)})
    until = T0 + timedelta(hours=1)
    mine = store.due(until, 100, (0, 2))
    assert [u for _, u in mine] == [f"u{n}" for n in range(12) if partition(f"u{n}", 2) == 0]
    assert 0 < len(mine) < 12
    theirs = store.due(until, 100, (1, 2))
    assert [u for _, u in theirs] == [f"u{n}" for n in range(12) if partition(f"u{n}", 2) == 1]
    assert store.due(until, 100) == []


def test_a_wake_up_that_moves_is_claimed_once_at_its_last_time(store_factory: StoreFactory) -> None:
    """Moved later, earlier, later again: claimed once, when the last one comes, never at an old one."""
    store = _store(store_factory)
    store.commit(Batch(profiles={"u1": Engine(COMPILED).new_profile("u1")}))
    for hours in (2, 5, 1, 4):
        profile = store.load(["u1"])["u1"]  # as a worker does: load, change, commit over what it loaded
        profile.wake = T0 + timedelta(hours=hours)
        store.commit(Batch(profiles={"u1": profile}))
    assert store.due(T0 + timedelta(hours=3), 5) == []
    assert store.due(T0 + timedelta(hours=6), 5) == [(T0 + timedelta(hours=4), "u1")]
    assert store.due(T0 + timedelta(hours=9), 5) == []
    if isinstance(store, MemoryStore):
        assert len(store.wakeups) <= 3  # one live entry per user, not one per move


def test_a_released_claim_comes_back(store_factory: StoreFactory) -> None:
    """A claim released without a change is claimable again."""
    store = _store(store_factory)
    profile = Engine(COMPILED).new_profile("u1")
    profile.wake = T0
    store.commit(Batch(profiles={"u1": profile}))
    assert [u for _, u in store.due(T0, 5)] == ["u1"]
    store.commit(Batch(released={"u1"}))
    assert [u for _, u in store.due(T0, 5)] == ["u1"]


def test_bandit_learning_accumulates(store_factory: StoreFactory) -> None:
    """Bandit deltas add up across commits."""
    store = _store(store_factory)
    store.commit(Batch(bandit={("j", "s", "a"): (1, 0), ("j", "s", "b"): (2, 1)}))
    store.commit(Batch(bandit={("j", "s", "a"): (3, 1)}))
    assert store.bandit() == {("j", "s"): {"a": (4, 1), "b": (2, 1)}}


def test_aliases_resolve(store_factory: StoreFactory) -> None:
    """Committed aliases map the previous id to the user."""
    store = _store(store_factory)
    store.commit(Batch(aliases={"anon": "u1"}))
    assert store.aliases(["anon", "u2"]) == {"anon": "u1"}


def test_a_failed_commit_writes_nothing(store_factory: StoreFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the commit fails part-way, none of the batch is visible (the events must not be acknowledged)."""
    if store_factory.kind == "memory":  # type: ignore[attr-defined]
        pytest.skip("the memory store has nothing to roll back")
    store = _store(store_factory)
    runtime = Runtime(Engine(COMPILED), store)

    def broken(*_: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "_history", broken)
    event = Event(type="track", user_id="u1", name="Signed Up", timestamp=T0, message_id="m1")
    with pytest.raises(RuntimeError):
        runtime.process([event], T0)
    assert store.load(["u1"]) == {}
    assert store.seen(["m1"]) == set()


def test_profiles_survive_a_reopen(store_factory: StoreFactory) -> None:
    """What was committed is there after the store is closed and opened again."""
    if store_factory.kind == "memory":  # type: ignore[attr-defined]
        pytest.skip("memory does not survive a restart")
    store = _store(store_factory)
    runtime = Runtime(Engine(COMPILED), store)
    runtime.process([Event(type="identify", user_id="u1", traits={"email": "a@b.c"}, timestamp=T0),
                     Event(type="track", user_id="u1", name="Signed Up", timestamp=T0)], T0)
    store.close()
    again = _store(store_factory)
    profile = again.load(["u1"])["u1"]
    assert profile.instances[("onboarding", "")].state == "welcome"
    assert profile.wake == T0 + timedelta(days=2)
    assert again.outbox()[0]["message"] == "welcome_email"


def test_two_workers_never_claim_the_same_user(store_factory: StoreFactory) -> None:
    """Claims from two workers sharing one database are disjoint (leases; SKIP LOCKED on PostgreSQL)."""
    if store_factory.kind == "memory":  # type: ignore[attr-defined]
        pytest.skip("one process, one heap")
    from concurrent.futures import ThreadPoolExecutor

    first, second = _store(store_factory), _store(store_factory)
    _waking(first, {f"u{n:03}": timedelta(seconds=n) for n in range(400)})

    def drain(store: Any) -> list[str]:
        claimed: list[str] = []
        while found := store.due(T0 + timedelta(hours=1), 25):
            claimed.extend(u for _, u in found)
        return claimed

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(drain, [first, second])
    assert not set(a) & set(b)
    assert len(a) + len(b) == 400


def test_a_worker_that_missed_an_alias_or_an_erasure_cannot_create_that_id_again(store_factory: StoreFactory) -> None:
    """Another worker merged `anon` into `u1`, or erased `gone`, after this one found neither: its new
    profile for that id is refused (ConflictError, nothing written), so the rerun finds the merge or the
    erasure instead of leaving a profile no one would ever merge or erase again."""
    if store_factory.kind == "memory":  # type: ignore[attr-defined]
        pytest.skip("one process: aliases and erasures are applied between batches")
    first, second = _store(store_factory), _store(store_factory)
    engine = Engine(COMPILED)
    assert second.load(["anon", "gone"]) == {}  # this worker looks first
    first.commit(Batch(profiles={"u1": engine.new_profile("u1")}, aliases={"anon": "u1"}))
    first.erase("gone", T0)
    for user in ("anon", "gone"):
        with pytest.raises(ConflictError, match="merged into another user or erased"):
            second.commit(Batch(profiles={user: engine.new_profile(user)}, message_ids=[(f"m-{user}", T0)]))
        assert second.load([user]) == {} and second.seen([f"m-{user}"]) == set()
    second.commit(Batch(profiles={"u2": engine.new_profile("u2")}))
    assert set(second.load(["u1", "u2"])) == {"u1", "u2"}


def _sql_only(store_factory: StoreFactory) -> None:
    if store_factory.kind == "memory":  # type: ignore[attr-defined]
        pytest.skip("one process, one store: nothing to race")


def _identify(user: str, traits: dict[str, Any], at: datetime, message_id: str) -> Event:
    return Event(type="identify", user_id=user, traits=traits, timestamp=at, message_id=message_id)


def test_a_stale_profile_never_overwrites_another_workers_commit(store_factory: StoreFactory) -> None:
    """Worker A loads u1, worker B commits a change to u1, A's commit fails whole with ConflictError; A's rerun
    sees B's change."""
    _sql_only(store_factory)
    a, b = _store(store_factory), _store(store_factory)
    Runtime(Engine(COMPILED), b).process([_identify("u1", {"email": "a@b.c"}, T0, "i0"),
                                          Event(type="track", user_id="u1", name="Signed Up", timestamp=T0)], T0)
    stale = a.load(["u1"])["u1"]  # A claims u1's timer and loads it ...
    Runtime(Engine(COMPILED), b).process([_identify("u1", {"plan": "pro"}, T0, "i1")], T0 + timedelta(hours=1))
    stale.traits["seen_by_a"] = True  # ... and commits its stale copy after B's commit
    with pytest.raises(ConflictError, match="another worker committed first"):
        a.commit(Batch(profiles={"u1": stale}, message_ids=[("m-a", T0)], records=[{"kind": "x", "at": "t"}]))
    assert a.seen(["m-a"]) == set(), "the whole batch rolled back"
    assert a.load(["u1"])["u1"].traits == {"email": "a@b.c", "plan": "pro"}
    Runtime(Engine(COMPILED), a).advance(T0 + timedelta(days=3))  # the rerun starts from B's commit
    assert a.load(["u1"])["u1"].traits == {"email": "a@b.c", "plan": "pro"}


def test_one_message_id_is_committed_by_one_worker_only(store_factory: StoreFactory) -> None:
    """Two workers that both saw a messageId as new cannot both commit it: the second gets ConflictError."""
    _sql_only(store_factory)
    a, b = _store(store_factory), _store(store_factory)
    event = _identify("u1", {"plan": "pro"}, T0, "m1")
    assert a.seen(["m1"]) == b.seen(["m1"]) == set()
    a.commit(Batch(message_ids=[("m1", T0)], profiles={"u1": Engine(COMPILED).new_profile("u1")}))
    with pytest.raises(ConflictError):
        b.commit(Batch(message_ids=[("m1", T0)]))
    with pytest.raises(ConflictError):  # and a new profile is created once
        b.commit(Batch(profiles={"u1": Engine(COMPILED).new_profile("u1")}))
    out = Runtime(Engine(COMPILED), b).process([event], T0)  # the rerun sees it as a duplicate
    assert [r["kind"] for r in out.records] == ["duplicate"]


def _welcome(store: Any) -> None:
    Runtime(Engine(COMPILED), store).process([_identify("u1", {"email": "a@b.c"}, T0, "i0"),
                                              Event(type="track", user_id="u1", name="Signed Up", timestamp=T0)], T0)


def test_a_late_answer_from_an_expired_claim_is_ignored(store_factory: StoreFactory) -> None:
    """Once a second dispatcher re-claimed a send and recorded success, the first one's late answer
    changes nothing, and the send is never handed out again."""
    _sql_only(store_factory)
    a, b = _store(store_factory), _store(store_factory)
    _welcome(a)
    (first,) = a.claim_outbox(T0, 10)
    (again,) = b.claim_outbox(T0 + timedelta(seconds=61), 10)  # a's lease ran out
    assert again["key"] == first["key"] and again["token"] != first["token"]
    done = {"key": first["key"], "attempts": 1, "last_error": None, "next_attempt_at": T0.timestamp() + 61}
    assert b.settle_outbox([{**done, "status": "delivered"}], []) == {first["key"]}
    late = {**done, "status": "pending", "last_error": "timeout", "next_attempt_at": T0.timestamp() + 90}
    assert a.settle_outbox([late], [{"kind": "message_failed", "at": "t", "user": "u1", "send_key": first["key"]}]) \
        == set()
    assert [r["status"] for r in a.outbox()] == ["delivered"]
    assert a.claim_outbox(T0 + timedelta(days=1), 10) == []
    assert [r["kind"] for r in a.trace("u1")].count("message_failed") == 0


def test_finished_outbox_rows_are_pruned_with_the_trace(store_factory: StoreFactory) -> None:
    """Delivered and dead sends older than the trace retention are dropped; pending ones stay."""
    store = _store(store_factory)
    _welcome(store)
    (row,) = store.claim_outbox(T0, 10)
    store.settle_outbox([{"key": row["key"], "status": "delivered", "attempts": 1, "last_error": None,
                          "next_attempt_at": T0.timestamp()}], [])
    assert store.prune(T0 + timedelta(days=89))["outbox"] == 0
    assert store.prune(T0 + timedelta(days=91))["outbox"] == 1
    assert store.outbox() == []


def test_a_replayed_backfill_stays_deduplicated_for_the_window_after_it_arrived(
        store_factory: StoreFactory) -> None:
    """Dedupe is measured from arrival, not from the event's own (possibly weeks old) timestamp."""
    wall = [T0.timestamp()]
    store = (store_factory() if store_factory.kind == "memory"  # type: ignore[attr-defined]
             else store_factory(defaults=_defaults(), wall=lambda: wall[0]))
    store.commit(Batch(message_ids=[("backfilled", T0 - timedelta(days=20))]))
    for days in (0, 6):
        wall[0] = (T0 + timedelta(days=days)).timestamp()
        store.prune(T0 + timedelta(days=days))
        assert store.seen(["backfilled"]) == {"backfilled"}, f"forgotten {days} days after it arrived"
    wall[0] = (T0 + timedelta(days=8)).timestamp()
    store.prune(T0 + timedelta(days=8))
    assert store.seen(["backfilled"]) == set()


def test_erasing_an_aliased_id_erases_the_user_it_was_merged_into(store_factory: StoreFactory) -> None:
    """DELETE of `anon-7` after alias anon-7 -> real-7 erases real-7 too: profile, trace, outbox, aliases,
    processed messageIds; all their ids are refused afterwards."""
    store = _store(store_factory)
    Runtime(Engine(COMPILED), store).process([
        Event(type="track", user_id="anon-7", name="Feature Used", timestamp=T0, message_id="m-anon"),
        _identify("real-7", {"email": "r@example.com"}, T0, "m-real"),
        Event(type="track", user_id="real-7", name="Signed Up", timestamp=T0),
        Event(type="alias", user_id="real-7", previous_id="anon-7", timestamp=T0)], T0)
    store.commit(Batch(message_ids=[("m-late", T0)], senders={"m-late": "real-7"}))
    assert store.outbox_of("real-7") and store.trace("real-7")
    store.erase("anon-7", T0)
    assert store.load(["real-7", "anon-7"]) == {}
    assert store.trace("real-7") == [] and store.outbox_of("real-7") == []
    assert store.aliases(["anon-7"]) == {}
    assert store.seen(["m-late"]) == set()
    assert store.erased(["anon-7", "real-7"]) == {"anon-7", "real-7"}


def _outbox_keys(store: Any) -> list[str]:
    return [row["key"] for row in store.outbox()]


def _trace_kinds(store: Any, user: str) -> list[str]:
    return [r["kind"] for r in store.trace(user)]


def test_a_commit_writes_its_sends_to_the_outbox_and_its_records_to_the_trace(store_factory: StoreFactory) -> None:
    """The sends and trace records of a committed batch are stored with it, once each."""
    store = _store(store_factory)
    runtime = Runtime(Engine(COMPILED), store)
    signup = [_identify("u1", {"email": "a@b.c"}, T0, "i0"),
              Event(type="track", user_id="u1", name="Signed Up", timestamp=T0, message_id="s0")]
    out = runtime.process(signup, T0)
    assert _outbox_keys(store) == [s.idempotency_key for s in out.sends] != []
    assert _trace_kinds(store, "u1") == [r["kind"] for r in out.records if r.get("user") == "u1"]
    runtime.process(signup, T0)  # duplicates: no second send
    assert _outbox_keys(store) == [s.idempotency_key for s in out.sends]


def test_prune_is_part_of_every_store_and_returns_counts(store_factory: StoreFactory) -> None:
    """prune() exists on every store, is idempotent and says how many messageIds it forgot."""
    wall = [T0.timestamp()]
    store = (store_factory() if store_factory.kind == "memory"  # type: ignore[attr-defined]
             else store_factory(defaults=_defaults(), wall=lambda: wall[0]))
    store.commit(Batch(message_ids=[("m1", T0)]))
    assert store.prune(T0)["processed"] == 0
    wall[0] = (T0 + timedelta(days=8)).timestamp()
    assert store.prune(T0 + timedelta(days=8))["processed"] == 1
    assert store.prune(T0 + timedelta(days=8))["processed"] == 0


def test_the_runtime_reruns_a_batch_that_lost_a_race(store_factory: StoreFactory) -> None:
    """Runtime.process reloads and reruns a batch whose commit met another worker's: both changes survive,
    and the rerun never applies the racing event's messageId twice."""
    _sql_only(store_factory)
    a, b = _store(store_factory), _store(store_factory)
    runtime_b = Runtime(Engine(COMPILED), b)
    runtime_b.process([_identify("u1", {"email": "a@b.c"}, T0, "i0")], T0)
    commit = a.commit
    raced: list[bool] = []

    def racing_commit(batch: Batch) -> None:
        if not raced:  # B commits between A's load and A's first commit
            raced.append(True)
            runtime_b.process([_identify("u1", {"plan": "pro"}, T0, "i1")], T0)
        commit(batch)

    a.commit = racing_commit  # type: ignore[method-assign]
    Runtime(Engine(COMPILED), a).process([_identify("u1", {"name": "Ann"}, T0, "i2"),
                                          _identify("u1", {"plan": "pro"}, T0, "i1")], T0)
    assert raced
    assert a.load(["u1"])["u1"].traits == {"email": "a@b.c", "plan": "pro", "name": "Ann"}
    assert a.seen(["i0", "i1", "i2"]) == {"i0", "i1", "i2"}


def test_a_journey_loaded_for_the_first_time_enrolls_its_segments_members(store_factory: StoreFactory,
                                                                          tmp_path: Path) -> None:
    """SPEC §3 item 5: a new journey entered by segment takes the users already in it, once."""
    import shutil

    workspace = tmp_path / "ws"
    shutil.copytree(Path(__file__).parent / "workspaces" / "basic", workspace)
    store = _store(store_factory)
    before = Runtime(Engine(COMPILED), store)
    before.process([Event(type="track", user_id=u, name="Feature Used", timestamp=T0)
                    for u in ("u1", "u2", "u3", "u4") for _ in range(1 if u == "u2" else 5)], T0)
    assert before.enroll(T0).records == []  # every journey of this workspace is now known
    been = store.load(["u3"])["u3"]  # u3 went through `vip` on a store that did not record enrollment
    been.note_entry(("vip", ""), T0.timestamp())
    store.commit(Batch(profiles={"u3": been}))
    (workspace / "vip.yaml").write_text("""version: 1
journey: vip
entry: {segment: power_users}
initial: welcome
states:
  welcome:
    transitions:
      - on: Bye
        to: gone
  gone: {final: true}
""")
    after = Runtime(Engine(load_workspace(workspace)), store)
    entered = [(r["user"], r["journey"]) for r in after.enroll(T0 + timedelta(hours=1), chunk=1).records
               if r["kind"] == "journey_entered"]
    assert entered == [("u1", "vip"), ("u4", "vip")]
    assert after.enroll(T0 + timedelta(hours=2)).records == []
    assert store.load(["u1"])["u1"].instances[("vip", "")].state == "welcome"
