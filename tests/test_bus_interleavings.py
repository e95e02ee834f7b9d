"""Aliases and erasures across partitions (README, "Running on several machines"): an explicit table of
the orders in which two partitions' owners can apply an event of the anonymous id and the alias that
merges it (or an event of an aliased id and the erasure of its user), including the order where one
worker loads before the other commits and commits after, and a redelivery of everything after a
failover. In every order the event is applied once, to the right profile, and nothing comes back.

The two owners are two runtimes on two stores over one PostgreSQL database, as two bus workers are;
`race` makes one of them load, let the other commit, then commit (a hook on its store's commit).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.sources.segment import not_erased
from adapters.storage.sql import SqlStore
from journey_engine.compiler import load_workspace
from journey_engine.engine import Engine
from journey_engine.events import Event
from journey_engine.ports import ConflictError, partition
from journey_engine.runtime import Runtime

from .test_bus import WORKSPACE, bus_database  # noqa: F401 (a fixture: imported to be used)

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
ANON, KNOWN = "anon-1", "user-9"  # different partitions of 16, as the bus routes them
ORDER = Event(type="track", user_id=ANON, name="Order Completed", properties={"revenue": 40}, timestamp=NOW,
              message_id="order")
ALIAS = Event(type="alias", user_id=KNOWN, previous_id=ANON, timestamp=NOW, message_id="alias")
BEFORE = [Event(type="identify", user_id=ANON, traits={"email": "a@example.com"}, timestamp=NOW, message_id="i-a"),
          Event(type="identify", user_id=KNOWN, traits={"plan": "pro"}, timestamp=NOW, message_id="i-k")]


class Owner:
    """A partition's owner: a runtime on a store of its own, whose next commit can be made to wait for
    another owner's whole batch (`race`)."""

    def __init__(self, url: str, *, kept: bool) -> None:
        compiled = load_workspace(WORKSPACE)
        self.store = SqlStore(url, defaults=dict(compiled.metrics.defaults))
        if kept:  # as a bus worker keeps the profiles it committed (SqlProfiles.keep_profiles)
            self.store.keep_profiles(100)
        self.runtime = Runtime(Engine(compiled), self.store)
        self._commit = self.store.commit
        self._before: Callable[[], Any] | None = None
        self.conflicts = 0  # commits refused because another owner committed first
        self.store.commit = self._hooked  # type: ignore[method-assign]

    def _hooked(self, batch: Any) -> None:
        before, self._before = self._before, None
        if before is not None:
            before()
        try:
            self._commit(batch)
        except ConflictError:
            self.conflicts += 1
            raise

    def apply(self, events: list[Event]) -> None:
        """As a bus worker commits a batch: the events of erased ids left out (`InProcessHost`), and the
        batch run again from the start while another worker's commit got in the way (`BusWorker._commit`)."""
        for _ in range(10):
            kept = not_erased(events, self.store.erased)
            try:
                self.runtime.process([events[i] for i in kept], NOW)
                return
            except ConflictError:
                continue
        raise AssertionError("the batch kept conflicting")

    def race(self, events: list[Event], other: Owner, theirs: list[Event]) -> None:
        """Load and apply `events`, let `other` apply and commit `theirs`, then commit (which conflicts and
        is run again from a new load, as a worker does)."""
        self._before = lambda: other.apply(theirs)
        self.apply(events)


ALIAS_ORDERS: dict[str, Callable[[Owner, Owner], None]] = {
    "event, then alias": lambda a, b: (a.apply([ORDER]), b.apply([ALIAS])),
    "alias, then event": lambda a, b: (b.apply([ALIAS]), a.apply([ORDER])),
    "event loaded, alias committed, event committed": lambda a, b: a.race([ORDER], b, [ALIAS]),
    "alias loaded, event committed, alias committed": lambda a, b: b.race([ALIAS], a, [ORDER]),
}


@pytest.fixture(params=["loading", "keeping"])
def owners(bus_database: str, request: pytest.FixtureRequest) -> Any:  # noqa: F811
    """Two owners that load every profile they apply, or that keep the profiles they committed and find them
    written, merged away or erased by the other since."""
    made = [Owner(bus_database, kept=request.param == "keeping") for _ in range(2)]
    made[0].apply(BEFORE[:1])
    made[1].apply(BEFORE[1:])
    yield made
    for owner in made:
        owner.store.close()


@pytest.mark.parametrize("order", list(ALIAS_ORDERS))
def test_an_event_of_the_anonymous_id_reaches_the_merged_profile_once_in_every_order(order: str,
                                                                                    owners: list[Owner]) -> None:
    """The anonymous id's order (its partition's owner) and the alias (the known id's owner) in every order:
    the known profile has the order once and the anonymous traits, the anonymous profile is gone; the
    same batches delivered again after a failover change nothing."""
    a, b = owners
    assert partition(ANON, 16) != partition(KNOWN, 16)
    ALIAS_ORDERS[order](a, b)
    if "loaded" in order:  # the race happened: the owner that loaded first had to run its batch again
        assert (a if order.startswith("event") else b).conflicts >= 1
    for again in (lambda: a.apply([ORDER]), lambda: b.apply([ALIAS])):  # redelivered to a new owner
        again()
    found = a.store.load([ANON, KNOWN])
    assert set(found) == {KNOWN}
    known = found[KNOWN]
    assert known.traits == {"email": "a@example.com", "plan": "pro"}
    assert (known.metrics["orders"], known.metrics["revenue"]) == (1, 40)
    assert a.store.aliases([ANON]) == {ANON: KNOWN}
    assert a.store.seen(["order", "alias"]) == {"order", "alias"}


LATE = Event(type="track", user_id=ANON, name="Order Completed", properties={"revenue": 5}, timestamp=NOW,
             message_id="late")
ERASE_ORDERS: dict[str, Callable[[Owner, Owner], None]] = {
    "event, then erasure": lambda a, b: (a.apply([LATE]), b.store.erase(KNOWN, NOW)),
    "erasure, then event": lambda a, b: (b.store.erase(KNOWN, NOW), a.apply([LATE])),
    "event loaded, erasure committed, event committed": lambda a, b: a.race([LATE], b, []),
}


@pytest.mark.parametrize("order", list(ERASE_ORDERS))
def test_an_erasure_reaches_every_id_of_the_user_in_every_order(order: str, owners: list[Owner]) -> None:
    """After an alias, an event of the anonymous id (its owner) and the erasure of the known user (the
    known id's owner) in every order: neither id has a profile afterwards, both are refused from then
    on, and a redelivery of the event brings nothing back."""
    a, b = owners
    b.apply([ALIAS])
    if order.startswith("event loaded"):
        b.apply = lambda events: b.store.erase(KNOWN, NOW)  # type: ignore[method-assign]  # the erasure as theirs
    ERASE_ORDERS[order](a, b)
    if "loaded" in order:
        assert a.conflicts >= 1
    a.apply([LATE, Event(type="track", user_id=KNOWN, name="Signed Up", timestamp=NOW, message_id="after")])
    assert a.store.load([ANON, KNOWN]) == {}
    assert a.store.erased([ANON, KNOWN]) == {ANON, KNOWN}
    assert a.store.aliases([ANON]) == {}


def test_a_kept_profile_written_by_another_owner_since_is_read_afresh(bus_database: str) -> None:  # noqa: F811
    """A worker keeps what it committed; after a failover another owner wrote the profile: the first one,
    given the partition back, applies its next event to the other owner's version, not to its kept copy."""
    a, b = Owner(bus_database, kept=True), Owner(bus_database, kept=True)
    try:
        a.apply(BEFORE[:1])  # a keeps anon-1 at version 1
        b.apply([ORDER])  # the partition moved to b: anon-1 at version 2 with the order
        a.apply([Event(type="track", user_id=ANON, name="Order Completed", properties={"revenue": 2},
                       timestamp=NOW, message_id="again")])
        assert a.conflicts == 0  # it read the new version instead of committing over it
        (profile,) = a.store.load([ANON]).values()
        assert (profile.metrics["orders"], profile.metrics["revenue"]) == (2, 42)
        assert profile.traits == {"email": "a@example.com"}
    finally:
        a.store.close()
        b.store.close()
