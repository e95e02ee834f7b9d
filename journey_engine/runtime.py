"""The loop around the engine: batches of events and the passing of time, committed through a Store.

`Runtime` is the same for every store: deduplicate, resolve aliases, load the batch's profiles,
apply the events in order, commit once (group commit). Time moves users through `advance`, which
claims the users with something due, earliest first: the cost of time passing is proportional to
the users with something due, never to all users. Without a store it runs on a `MemoryStore`
(memory.py), the store of simulations, tests and the in-memory benchmark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial

from . import clock
from .engine import Engine, Outcome
from .events import Event
from .facts import AliasIgnored, DuplicateIgnored
from .memory import MemoryStore
from .ports import Batch, ConflictError, Part, Store
from .profile import Profile

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
        batch, out = self.prepare(events, now)
        self._commit(batch, out)
        return out

    def prepare(self, events: list[Event], now: datetime | None = None) -> tuple[Batch, Outcome]:
        """`process` up to the commit: the batch to commit and what happened. The caller commits it (a bus
        worker behind the engine, adapters/bus/pipeline.py); if that fails, it must reset the bandits
        (`forget`) and run the events again, and acknowledge nothing before a commit."""
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
            self.forget()  # what the batch that failed taught
            raise
        batch.profiles.update(profiles)
        self._seal(batch, out)
        return batch, out

    def forget(self) -> None:
        """Forget what uncommitted batches taught the bandits: back to the committed arms."""
        self.engine.bandits = self.store.bandit()

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

    def migrate(self, users: list[str], now: datetime) -> Outcome:
        """After a deploy: move these users' instances that the versions in force move (or exit), caught
        up to `now` first, and commit (SPEC §3, "Changing a live workspace")."""
        return _retrying(partial(self._migrate, users, now))

    def _migrate(self, users: list[str], now: datetime) -> Outcome:
        batch, out = Batch(), Outcome()
        for user, profile in self.store.load(users).items():
            self._catch_up(profile, now, out)
            out.extend(self.engine.migrate(profile, now))
            batch.profiles[user] = profile
        self._finish(batch, out)
        return out

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
        self._seal(batch, out)
        self._commit(batch, out)

    @staticmethod
    def _seal(batch: Batch, out: Outcome) -> None:
        """The batch gets what `out` says happened: trace records, sends, bandit deltas."""
        batch.records.extend(out.records)
        batch.sends.extend(out.sends)
        if out.bandit:
            batch.bandit.update(out.bandit)

    def _commit(self, batch: Batch, out: Outcome) -> None:
        try:
            self.store.commit(batch)
        except BaseException:
            self.forget()  # what the lost batch taught
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
