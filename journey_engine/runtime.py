"""The loop around the engine: batches of events and the passing of time, committed through a Store.

`Runtime` is the same for every store: deduplicate, resolve aliases, load the batch's profiles,
apply the events in order, commit once (group commit). Time moves users through `advance`, which
claims the users with something due, earliest first: the cost of time passing is proportional to
the users with something due, never to all users. `MemoryStore` is the store of simulations, tests
and the in-memory benchmark.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

from . import clock, codec, trace
from .engine import Engine, Outcome, SendMessage
from .events import Event
from .facts import AliasIgnored, DuplicateIgnored
from .ports import DEDUPE_FOR, Batch, ConflictError, Part, Store, partition
from .profile import Profile

_INF = float("inf")


class MemoryStore:
    """The Store port in memory: a heap of wake-ups, no durability.

    `hot=None` keeps every profile live, as simulations and tests want. A bound lets a population of
    millions fit: at most `hot` profiles stay live objects (`profiles`), the others are kept as codec
    blobs (`cold`, about a sixth of the memory of the objects), decoded when next loaded and encoded
    again when they leave the live set. Blobs never leave the process, so they name journeys, states,
    segments and metrics by numbers of the store's `codec.Names` (30-day bench profiles: 307 bytes on
    average against 468 with the names; a decoded profile shares the names instead of holding copies).
    A round trip costs ~7 µs compiled with its objects in cache (encode 3.7, decode 3.4), and about as
    much again in cache misses when they are not.

    Which profiles stay live: those whose next wake-up comes soonest. A timer, a window or a deferred
    send is an access the store knows in advance, where the next event of a user is anyone's guess, so
    the profile evicted is the one whose wake-up is furthest (none: first), often the one just
    committed, while its objects are still in the CPU's caches: encoding a profile last touched long
    ago, and freeing its objects, cost about as much again in cache misses as the encoding itself.
    On the 30-day bench mix (100k users, 1M events) this cut misses from 1.94 to 1.68 an event at
    hot=5000 and from 1.57 to 1.20 at hot=20000 against least-recently-committed-first (replayed from
    the engine's access log). Keeping the last tenth committed live as well (for users in a session)
    missed 5% less but ran 5-10% slower, its evictions being of profiles no longer in cache.
    """

    def __init__(self, *, hot: int | None = None) -> None:
        if hot is not None and hot < 1:
            raise ValueError("a MemoryStore keeps at least one profile live (hot >= 1)")
        self.profiles: dict[str, Profile] = {}  # live
        self.cold: dict[str, bytes] = {}
        self.hot = hot
        # when bounded: each live user's wake-up as last committed (inf: none), and a heap of them whose
        # top is the furthest; an entry whose user was committed again with another wake-up is stale
        self._live_wake: dict[str, float] = {}
        self._furthest: list[tuple[float, str]] = []  # (-wake-up, user)
        self.wakeups: list[tuple[float, str]] = []
        self.processed: dict[str, float | None] = {}  # messageId -> first prune that saw it (None: none yet)
        self.alias_map: dict[str, str] = {}
        self.records: list[trace.Record] | None = None  # keep the trace only when asked
        # committed sends, in commit order, kept only when asked (like the trace): nothing dispatches them,
        # and a long simulation would otherwise hold every send's template context for ever
        self.outbox: list[SendMessage] | None = None
        self._bandit: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
        self._woken: dict[str, float] = {}
        self._enrolled: set[str] = set()
        self._defaults: Mapping[str, Any] | None = None  # the workspace's metric defaults, for decoding
        self._names = codec.Names()  # blobs never leave the process: names are written as numbers
        # profiles decoded from blobs and encoded into them so far: the misses of a bounded live set,
        # which `journey bench` reports per event (unlike time, they are the same on every machine)
        self.decoded = 0
        self.encoded = 0

    def load(self, users: Collection[str]) -> dict[str, Profile]:
        found = {}
        for user in users:
            profile = self.profiles.get(user)
            if profile is None:
                blob = self.cold.get(user)
                if blob is None:
                    continue
                profile = self._decode(user, blob)
            found[user] = profile
        return found

    def _get(self, user: str) -> Profile | None:
        """A profile without loading it for a change: a cold one is decoded and made live."""
        profile = self.profiles.get(user)
        if profile is None and user in self.cold:
            profile = self._decode(user, self.cold.pop(user))
            self._keep(user, profile)
        return profile

    def _decode(self, user: str, blob: bytes) -> Profile:
        profile = codec.decode(blob, self._defaults, self._names)
        profile.user_id = user  # the store's key: one string per user, not two (54 bytes)
        self.decoded += 1
        return profile

    def _keep(self, user: str, profile: Profile) -> None:
        """`profile` live; beyond `hot`, the live profiles whose wake-up is furthest become blobs."""
        profiles = self.profiles
        if profiles.get(user) is None and self.hot is not None:
            self.cold.pop(user, None)
        profiles[user] = profile
        if self.hot is None:
            return
        wake = profile.wake_at
        key = _INF if wake is None else wake
        if self._live_wake.get(user) != key:
            self._live_wake[user] = key
            heap = self._furthest
            heapq.heappush(heap, (-key, user))
            if len(heap) > 2 * len(profiles) + 64:  # drop the stale entries now and then (amortised O(1))
                heap[:] = [(-wake, live) for live, wake in self._live_wake.items()]
                heapq.heapify(heap)
        while len(profiles) > self.hot:
            self._evict()

    def _evict(self) -> None:
        """Encode the live profile whose wake-up is furthest."""
        live_wake, heap = self._live_wake, self._furthest
        while True:
            key, user = heapq.heappop(heap)
            if live_wake.get(user) == -key:
                del live_wake[user]
                evicted = self.profiles.pop(user)
                self._defaults = evicted.defaults
                self.cold[user] = codec.encode(evicted, names=self._names)
                self.encoded += 1
                return

    def aliases(self, users: Collection[str]) -> dict[str, str]:
        return {u: self.alias_map[u] for u in users if u in self.alias_map}

    def seen(self, message_ids: Collection[str]) -> set[str]:
        return {m for m in message_ids if m in self.processed}

    def due(self, until: datetime, limit: int, part: Part | None = None) -> list[tuple[datetime, str]]:
        """`_woken` holds each user's wake-up as last committed; the heap holds an entry for it, or an
        earlier one. Moving a wake-up later (what most events and timers do) adds nothing to the heap:
        the old entry is pushed again at the new time when it comes up, without loading the profile
        (cold profiles decoded only to learn that, then encoded again, were 4% of the decoding in the
        30-day bench mix at hot=5000: 1.533 decodes an event before, 1.474 after). A move earlier
        pushes an entry and leaves the old one behind (see `_watch`). Entries of other partitions than
        `part` are put back."""
        found: list[tuple[datetime, str]] = []
        others: list[tuple[float, str]] = []
        limit_ts = clock.epoch(until)
        heap, woken = self.wakeups, self._woken
        while heap and heap[0][0] <= limit_ts and len(found) < limit:
            at, user = heapq.heappop(heap)
            held = woken.get(user)
            if held is None or held < at:
                continue  # no wake-up any more, or superseded by an earlier entry
            if held > at:  # moved later since: wait in the heap again
                heapq.heappush(heap, (held, user))
                continue
            if part is not None and partition(user, part[1]) != part[0]:
                others.append((at, user))
                continue
            del woken[user]
            profile = self._get(user)
            if profile is not None and profile.wake_at is not None:
                found.append((datetime.fromtimestamp(at, UTC), user))
        for entry in others:
            heapq.heappush(heap, entry)
        return found

    def _watch(self, user: str, at: float | None) -> None:
        """Note the wake-up `user` was committed with, and keep a heap entry at or before it. The entries
        a move earlier leaves behind are dropped once they outnumber half the users: each holds 88 bytes
        (a tuple, a float and a slot), and in the one-day bench mix, where windows of an hour pull
        wake-ups earlier, they reached 1.8 a user."""
        woken = self._woken
        held = woken.get(user)
        if at is None:
            if held is not None:
                del woken[user]  # its entry is passed over when it comes up
            return
        woken[user] = at
        if held is None or at < held:
            heap = self.wakeups
            heapq.heappush(heap, (at, user))
            if len(heap) > len(woken) + len(woken) // 2 + 64:  # amortised O(1) a push
                heap[:] = [(t, u) for u, t in woken.items()]
                heapq.heapify(heap)

    def commit(self, batch: Batch) -> None:
        for user, profile in batch.profiles.items():
            self._keep(user, profile)
            self._watch(user, profile.wake_at)
        if batch.released or batch.deleted or batch.aliases or batch.enrolled:
            self._rest(batch)
        for message_id, _ in batch.message_ids:
            self.processed[message_id] = None  # arrived now; `prune` stamps it with its own clock
        if self.outbox is not None:
            self.outbox.extend(batch.sends)
        if self.records is not None:
            self.records.extend(batch.records)
        for (journey, state, arm), (sends, conversions) in batch.bandit.items():
            stats = self._bandit.setdefault((journey, state), {})
            before = stats.get(arm, (0, 0))
            stats[arm] = (before[0] + sends, before[1] + conversions)

    def _rest(self, batch: Batch) -> None:
        """The rarer parts of a commit: released claims, merged-away users, aliases."""
        for user in batch.released:
            kept = self._get(user)
            self._watch(user, None if kept is None else kept.wake_at)
        for user in batch.deleted:
            self.profiles.pop(user, None)
            self._live_wake.pop(user, None)
            self.cold.pop(user, None)
            self._woken.pop(user, None)
        self.alias_map.update(batch.aliases)
        self._enrolled |= batch.enrolled

    def index_bytes(self) -> int:
        """Bytes of the store's own per-user structures: the maps of live and cold profiles, the wake-up
        heap and its index, and (bounded) the live set's wake-ups and eviction heap, with the tuples and
        floats they hold. Not the profiles, blobs and user ids, which are each user's own."""
        counted = {id(p.wake_at) for p in self.profiles.values()}  # a live profile's own
        total = 0
        for container in (self.profiles, self.cold, self._live_wake, self._woken, self.wakeups, self._furthest):
            total += sys.getsizeof(container)
        held: list[object] = [*self._live_wake.values(), *self._woken.values()]
        for heap in (self.wakeups, self._furthest):
            for entry in heap:
                held.append(entry)
                held.append(entry[0])
        for obj in held:
            if id(obj) not in counted:
                counted.add(id(obj))
                total += sys.getsizeof(obj)
        return total

    def enrolled(self) -> set[str]:
        return set(self._enrolled)

    def segment_members(self, segment: str, after: str | None, limit: int) -> list[str]:
        members = sorted(u for u, p in self.items() if segment in p.segments and (after is None or u > after))
        return members[:limit]

    def items(self) -> Iterator[tuple[str, Profile]]:
        """Every profile, live or decoded (a cold one decoded here is a copy: changes go through `commit`)."""
        yield from list(self.profiles.items())
        for user, blob in list(self.cold.items()):
            yield user, codec.decode(blob, self._defaults, self._names)

    def bandit(self) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
        return {k: dict(v) for k, v in self._bandit.items()}

    def prune(self, now: datetime, trace_for_days: float = 90) -> dict[str, int]:
        """Forget messageIds that arrived longer than DEDUPE_FOR ago. Arrival is measured by the prune
        clock (this store has no wall clock): an id is stamped by the first prune after it arrived, so
        the event time of a replayed backfill never shortens its window."""
        at = clock.epoch(now)
        horizon = at - DEDUPE_FOR.total_seconds()
        before = len(self.processed)
        self.processed = {k: at if v is None else v for k, v in self.processed.items() if v is None or v >= horizon}
        return {"processed": before - len(self.processed), "trace": 0, "outbox": 0}

    def close(self) -> None:
        pass


CONFLICT_RETRIES = 5  # two workers racing for one user rarely collide more than once


class Runtime:
    """Feeds events and the passing of time to an engine through a store, one commit per batch."""

    def __init__(self, engine: Engine, store: Store | None = None,
                 sink: Callable[[Outcome], None] | None = None, *, claim: int = 1, part: Part | None = None,
                 live: bool = False) -> None:
        """`live`: `now` is the wall clock (a service), so what fell due long before it is late and its sends
        expire; otherwise time is simulated or replayed, and the batching of a replay is never lateness."""
        self.engine = engine
        self.live = live
        self.store: Store = store if store is not None else MemoryStore()
        self.sink = sink
        self.claim = claim  # users claimed per round in `advance`; 1 keeps strict time order
        self.part = part  # (i, n): this runtime applies the events of partition i of n, and claims only its users
        engine.bandits = self.store.bandit()

    def profile(self, user_id: str) -> Profile | None:
        user = self.store.aliases([user_id]).get(user_id, user_id)
        return self.store.load([user]).get(user)

    def ingest(self, event: Event, now: datetime) -> Outcome:
        """Apply one event at `now`, after everything due before it."""
        self.advance(now)
        return self.process([event], now)

    def process(self, events: Iterable[Event], now: datetime | None = None) -> Outcome:
        """Apply a batch of events in order and commit them together; return what happened.

        `now` is the engine clock for the whole batch; None replays each event at its own timestamp.
        When this returns, the batch is committed: its events may be acknowledged.
        """
        events = list(events)
        return _retrying(lambda: self._process(events, now))

    def _process(self, events: list[Event], now: datetime | None) -> Outcome:
        ids = [e.message_id for e in events if e.message_id is not None]
        already = self.store.seen(ids) if ids else set()
        named = {e.user_id for e in events} | {e.previous_id for e in events if e.previous_id}
        aliases = self.store.aliases(named)
        profiles = self.store.load({aliases.get(u, u) for u in named})
        batch = Batch()
        out = Outcome()
        try:
            for event in events:
                self._apply(event, now, already, aliases, profiles, batch, out)
        except Exception:
            self.engine.bandits = self.store.bandit()  # forget what the batch that failed taught
            raise
        batch.profiles.update(profiles)
        self._finish(batch, out)
        return out

    def _apply(self, event: Event, now: datetime | None, already: set[str], aliases: dict[str, str],
               profiles: dict[str, Profile], batch: Batch, out: Outcome) -> None:
        """One event of a batch: deduplicated, then applied (after what fell due for its user before it)."""
        at = event.timestamp if now is None else now
        if event.message_id is not None:
            if event.message_id in already:
                out.facts.append(DuplicateIgnored(at=at, user=event.user_id, message_id=event.message_id))
                return
            already.add(event.message_id)
            batch.message_ids.append((event.message_id, at))
            batch.senders[event.message_id] = aliases.get(event.user_id, event.user_id)
        self._one(event, at, aliases, profiles, batch, out)

    def _one(self, event: Event, now: datetime, aliases: dict[str, str], profiles: dict[str, Profile],
             batch: Batch, out: Outcome) -> None:
        """One event into `out`: first what fell due for its user before it."""
        user = aliases.get(event.user_id, event.user_id)
        profile = profiles.get(user)
        if profile is None:
            profile = profiles[user] = self.engine.new_profile(user)
        self._catch_up(profile, now, out)
        if event.type != "alias":
            out.extend(self.engine.apply(profile, event, now))
            return
        assert event.previous_id is not None
        merged_into = aliases.get(event.previous_id)
        if merged_into is not None and merged_into != user:
            # an id merged into another user once stays theirs: never fold two known customers together
            out.facts.append(AliasIgnored(at=now, user=user, previous_id=event.previous_id,
                                          reason=f"`{event.previous_id}` was merged into `{merged_into}` before"))
            out.extend(self.engine.apply(profile, event, now))
            return
        aliases[event.previous_id] = user
        batch.aliases[event.previous_id] = user
        old = profiles.pop(event.previous_id, None) if event.previous_id != user else None
        if old is not None:
            batch.deleted.add(event.previous_id)
            out.extend(self.engine.merge(profile, old, now))
        else:  # nothing to fold in: the alias is this user's event like any other (SPEC §3 item 13)
            out.extend(self.engine.apply(profile, event, now))

    def _catch_up(self, profile: Profile, now: datetime, out: Outcome) -> None:
        """Whatever fell due for this user before `now`, at its own time (live: its sends expire by `now`)."""
        now_s = clock.epoch(now)
        current = now if self.live else None
        while profile.wake_at is not None and profile.wake_at <= now_s:
            out.extend(self.engine.wake(profile, datetime.fromtimestamp(profile.wake_at, UTC), current=current))

    def enroll(self, now: datetime, chunk: int = 500) -> Outcome:
        """Journeys loaded for the first time on this store that enter by segment take the users already
        in the segment (SPEC §3 item 5), a chunk per commit. Run at start; a no-op once done."""
        known = self.store.enrolled()
        new = [cj for name, cj in self.engine.cw.journeys.items() if name not in known]
        total = Outcome()
        for segment in sorted({cj.entry.segment for cj in new if cj.entry.segment is not None}):
            names = [cj.name for cj in new if cj.entry.segment == segment]
            after = None
            while users := self.store.segment_members(segment, after, chunk):
                after = users[-1]
                total.extend(_retrying(partial(self._enroll, users, names, now)))
        if new:
            self._finish(Batch(enrolled={cj.name for cj in new}), Outcome())
        return total

    def _enroll(self, users: list[str], journeys: list[str], now: datetime) -> Outcome:
        batch, out = Batch(), Outcome()
        for user, profile in self.store.load(users).items():
            self._catch_up(profile, now, out)
            out.extend(self.engine.enroll(profile, now, journeys))
            batch.profiles[user] = profile
        self._finish(batch, out)
        return out

    def advance(self, until: datetime, *, late: bool | None = None) -> Outcome:
        """Fire everything due up to `until`, earliest first, committing round by round. `late` (default:
        `live`): it is `until` now (a service on the wall clock, or back after an outage), so what was due
        long before is sent only within its expiry; otherwise everything fires on time."""
        total = Outcome()
        more = True
        while more:
            out, more = self.advance_some(until, rounds=16, late=late)
            total.extend(out)
        return total

    def advance_some(self, until: datetime, rounds: int, wake: Callable[[list[str], datetime], Outcome] | None = None,
                     *, late: bool | None = None) -> tuple[Outcome, bool]:
        """At most `rounds` claims of what is due up to `until`; True when more may be due. A service
        calls this between batches of events, so a spike of timers neither stalls ingestion nor
        gathers every outcome in memory. `wake` (default `self.wake`) wakes one round's claimed users:
        a service wraps it to isolate a user the engine or the store fails on."""
        total = Outcome()
        for _ in range(rounds):
            due = self.store.due(until, self.claim, self.part)
            if not due:
                return total, False
            try:
                users = [user for _, user in due]
                out = self.wake(users, until, late=late) if wake is None else wake(users, until)
            except ConflictError:  # another worker moved these users: free the round's claims, claim again
                self.store.commit(Batch(released={user for _, user in due}))
                continue
            total.extend(out)
        return total, True

    def wake(self, users: list[str], until: datetime, *, late: bool | None = None) -> Outcome:
        """Wake these claimed users whose wake-up has come by `until`, and commit; one who moved on
        since the claim is released. `late` as in `advance`."""
        until_s = clock.epoch(until)
        current = until if (self.live if late is None else late) else None
        profiles = self.store.load(users)
        batch = Batch()
        outcomes = []
        for user in users:
            profile = profiles.get(user)
            wake_at = None if profile is None else profile.wake_at
            if profile is None or wake_at is None or wake_at > until_s:
                batch.released.add(user)  # moved on since the index said so
                continue
            outcomes.append(self.engine.wake(profile, datetime.fromtimestamp(wake_at, UTC), current=current))
            batch.profiles[user] = profile
        out = outcomes[0] if len(outcomes) == 1 else _joined(outcomes)
        self._finish(batch, out)
        return out

    def _finish(self, batch: Batch, out: Outcome) -> None:
        """Commit the batch with what `out` says happened, then hand `out` to the sink."""
        batch.records.extend(out.records)
        batch.sends.extend(out.sends)
        if out.bandit:
            batch.bandit.update(out.bandit)
        try:
            self.store.commit(batch)
        except BaseException:
            self.engine.bandits = self.store.bandit()  # forget what the lost batch taught
            raise
        if self.sink is not None:
            self.sink(out)


def _retrying(run: Callable[[], Outcome]) -> Outcome:
    """`run` a load-apply-commit again when another worker committed first (it reloads each time)."""
    for _ in range(CONFLICT_RETRIES - 1):
        try:
            return run()
        except ConflictError:
            continue
    return run()


def _joined(outcomes: list[Outcome]) -> Outcome:
    joined = Outcome()
    for out in outcomes:
        joined.extend(out)
    return joined
