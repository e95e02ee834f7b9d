"""The store in memory: every port (Store, Outbox, Inbox, Erasure, Reads, Versions) in one process, without
durability. Simulations, tests and the in-memory benchmark run on it, and so do `journey serve` and
`journey report` with `JOURNEY_DATABASE_URL=memory://`.
"""

from __future__ import annotations

import heapq
import json
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from . import clock, codec, trace
from .engine import SEND_FIELDS, RenderedMessage, SendMessage
from .ports import (
    DEDUPE_FOR,
    LEASE_SECONDS,
    Batch,
    DeploymentRace,
    Part,
    inbox_items,
    parse_time,
    partition,
    state_deltas,
)
from .profile import Profile

_INF = float("inf")


class MemoryService:
    """The ports beyond Store on the memory store's own maps (`MemoryStore` fills them): the outbox's rows,
    the trace, the erased ids. Without `keep` there is no trace and no outbox: their reads are empty."""

    records: list[trace.Record] | None
    sends: dict[str, dict[str, Any]] | None
    processed: dict[str, float | None]
    alias_map: dict[str, str]
    _bandit: dict[tuple[str, str], dict[str, tuple[int, int]]]
    _counts: dict[tuple[str, str], int] | None
    _senders: dict[str, str]
    _erased: dict[str, float]
    _claims: dict[str, str]
    _tokens: int
    _woken: dict[str, float]
    _simulated: str | None
    _definitions: dict[tuple[str, str], str]
    _in_force: dict[str, str]
    _deployment: int

    def items(self) -> Iterator[tuple[str, Profile]]:
        raise NotImplementedError

    def _get(self, user: str) -> Profile | None:
        raise NotImplementedError

    def _drop(self, user: str) -> None:
        raise NotImplementedError

    def _keep_batch(self, batch: Batch) -> None:
        """The trace, outbox rows, state counts and senders of a committed batch (with `keep`)."""
        assert self.records is not None and self.sends is not None and self._counts is not None
        self.records.extend(batch.records)
        for send in batch.sends:
            if send.idempotency_key not in self.sends:  # the same send committed again adds nothing
                self.sends[send.idempotency_key] = _outbox_row(send)
        for key, n in state_deltas(batch.records).items():
            self._counts[key] = self._counts.get(key, 0) + n
        self._senders.update(batch.senders)

    def _prune_kept(self, horizon: float) -> dict[str, int]:
        """Drop trace records and finished sends older than `horizon` (epoch seconds), as SQL's prune does."""
        if self.records is None or self.sends is None:
            return {"trace": 0, "outbox": 0}
        oldest = datetime.fromtimestamp(horizon, UTC).isoformat().replace("+00:00", "Z")
        records, sends = len(self.records), len(self.sends)
        self.records = [r for r in self.records if r["at"] >= oldest]
        self.sends = {k: r for k, r in self.sends.items()
                      if r["status"] not in ("delivered", "dead", "expired") or r["next_attempt_at"] >= horizon}
        return {"trace": records - len(self.records), "outbox": sends - len(self.sends)}

    # --- Outbox and Inbox -------------------------------------------------------------------------

    def claim_outbox(self, now: datetime, limit: int, lease: float = LEASE_SECONDS) -> list[dict[str, Any]]:
        at = clock.epoch(now)
        due = sorted((row for row in (self.sends or {}).values() if row["status"] == "pending"
                      and row["channel"] != "in_app" and row["next_attempt_at"] <= at),
                     key=lambda r: (r["next_attempt_at"], r["key"]))[:limit]
        self._tokens += 1
        token = f"{self._tokens:016x}"
        for row in due:
            row["next_attempt_at"], row["token"] = at + lease, token
            self._claims[row["key"]] = token
        return sorted((dict(row) for row in due), key=lambda r: (r["at"], r["key"]))

    def settle_outbox(self, updates: list[dict[str, Any]], records: list[dict[str, Any]], *,
                      durable: bool = True) -> set[str]:
        sends = self.sends or {}
        held = set()
        for u in sorted(updates, key=lambda u: u["key"]):
            row, token = sends.get(u["key"]), u.get("token") or self._claims.get(u["key"])
            if row is not None and row["status"] == "pending" and token is not None and row["token"] == token:
                row.update(status=u["status"], attempts=u["attempts"], next_attempt_at=u["next_attempt_at"],
                           last_error=u["last_error"], token=None)
                held.add(u["key"])
        late = {u["key"] for u in updates} - held
        if self.records is not None:
            self.records.extend(r for r in records if r.get("send_key") not in late)
        for u in updates:
            self._claims.pop(u["key"], None)
        return held

    def outbox(self, status: str | None = None) -> list[dict[str, Any]]:
        rows = (r for r in (self.sends or {}).values() if status is None or r["status"] == status)
        return sorted((dict(r) for r in rows), key=lambda r: (r["at"], r["key"]))

    def outbox_of(self, user: str, channel: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.outbox() if r["user_id"] == user and (channel is None or r["channel"] == channel)]

    def outbox_due(self, now: datetime) -> int:
        at = clock.epoch(now)
        return sum(1 for r in (self.sends or {}).values()
                   if r["status"] == "pending" and r["channel"] != "in_app" and r["next_attempt_at"] <= at)

    def inbox(self, user: str, render: Callable[[SendMessage], RenderedMessage]) -> list[dict[str, Any]]:
        return inbox_items(self.outbox_of(user, "in_app"), render)

    def mark_read(self, user: str, key: str) -> bool:
        row = (self.sends or {}).get(key)
        if row is None or row["user_id"] != user or row["channel"] != "in_app":
            return False
        row["status"] = "read"
        return True

    # --- Erasure ----------------------------------------------------------------------------------

    def erase(self, user: str, now: datetime) -> bool:
        if "\x00" in user:  # as on SQL: no stored id has one
            return False
        if user in self._erased:
            users = {user}
        else:
            target = self.alias_map.get(user, user)
            users = {user, target} | {prev for prev, to in self.alias_map.items() if to == target}
        found = False
        for gone in sorted(users):
            profile = self._get(gone)
            if profile is not None:
                found = True
                if self._counts is not None:
                    for inst in profile.instances.values():
                        key = (inst.journey, inst.state)
                        self._counts[key] = self._counts.get(key, 0) - 1
                self._drop(gone)
            self._erased[gone] = clock.epoch(now)
        self.alias_map = {k: v for k, v in self.alias_map.items() if k not in users and v not in users}
        if self.records is not None:
            self.records = [r for r in self.records if r.get("user", "") not in users]
        if self.sends is not None:
            self.sends = {k: r for k, r in self.sends.items() if r["user_id"] not in users}
        ids = {m for m, u in self._senders.items() if u in users}
        self.processed = {k: v for k, v in self.processed.items() if k not in ids}
        self._senders = {m: u for m, u in self._senders.items() if m not in ids}
        return found

    def erased(self, users: Collection[str]) -> set[str]:
        return {u for u in users if u in self._erased}

    # --- Reads ------------------------------------------------------------------------------------

    def bandit(self) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
        return {k: dict(v) for k, v in self._bandit.items()}

    def state_counts(self) -> dict[str, dict[str, int]]:
        """Kept from the trace's moves (`keep`), otherwise counted in the profiles."""
        counts: dict[str, dict[str, int]] = {}
        if self._counts is not None:
            for (journey, state), n in self._counts.items():
                counts.setdefault(journey, {})[state] = n
            return counts
        for _, profile in self.items():
            for inst in profile.instances.values():
                states = counts.setdefault(inst.journey, {})
                states[inst.state] = states.get(inst.state, 0) + 1
        return counts

    def trace(self, user: str, limit: int = 200) -> list[dict[str, Any]]:
        mine = [r for r in self.records or [] if r.get("user", "") == user]
        return [_as_stored(r) for r in mine[-limit:]] if limit > 0 else []

    @contextmanager
    def snapshot(self) -> Iterator[MemorySnapshot]:
        yield MemorySnapshot(list(self.records or []), self.state_counts(), self.bandit())

    def due_count(self, until: datetime) -> int:
        limit = clock.epoch(until)
        return sum(1 for at in self._woken.values() if at <= limit)

    def overdue(self, now: datetime) -> tuple[int, datetime | None]:
        limit = clock.epoch(now)
        due = [at for at in self._woken.values() if at <= limit]
        return len(due), datetime.fromtimestamp(min(due), UTC) if due else None

    def unwritable(self, timeout: float = 1.0) -> str | None:
        return None  # memory always takes a write

    def mark_simulated(self, by: str) -> None:
        self._simulated = by

    def simulated(self) -> str | None:
        return self._simulated

    def advice(self) -> list[str]:
        return []

    # --- Versions ---

    def stored_versions(self) -> dict[tuple[str, str], str]:
        return dict(self._definitions)

    def in_force(self) -> tuple[int, dict[str, str]]:
        return self._deployment, dict(self._in_force)

    def deploy(self, definitions: Mapping[tuple[str, str], str], in_force: Mapping[str, str], *,
               after: int) -> int:
        if after != self._deployment:
            raise DeploymentRace(after, self._deployment)
        for key, text in definitions.items():
            self._definitions.setdefault(key, text)
        self._in_force = dict(in_force)
        self._deployment += 1
        return self._deployment

    def live_instances(self) -> dict[tuple[str, str, str], int]:
        found: dict[tuple[str, str, str], int] = {}
        for _, profile in self.items():
            for inst in profile.instances.values():
                key = (inst.journey, inst.version, inst.state)
                found[key] = found.get(key, 0) + 1
        return found

    def users_in(self, journeys: Collection[str]) -> list[str]:
        wanted = set(journeys)
        return sorted(user for user, p in self.items() if any(i.journey in wanted for i in p.instances.values()))


class MemorySnapshot:
    """The reads of `MemoryStore.snapshot`: the trace as it was when the snapshot was taken."""

    def __init__(self, records: list[trace.Record], counts: dict[str, dict[str, int]],
                 bandit: dict[tuple[str, str], dict[str, tuple[int, int]]]) -> None:
        self.records, self.counts, self.arms = records, counts, bandit

    def trace_records(self, kinds: Collection[str], journey: str | None = None) -> Iterator[dict[str, Any]]:
        wanted = set(kinds)
        for r in self.records:
            if r["kind"] in wanted and (journey is None or r.get("journey") == journey or r["kind"] == "alias_merged"):
                yield _as_stored(r)

    def latest(self) -> datetime | None:
        return max((parse_time(r["at"]) for r in self.records), default=None)

    def segment_history(self) -> Iterator[tuple[str, str, str, str | None]]:
        stays: list[list[Any]] = []  # [segment, user, entered_at, left_at]
        open_stays: dict[tuple[str, str], list[list[Any]]] = {}
        for r in self.records:
            if r["kind"] == "segment_entered":
                stay = [r["segment"], r["user"], r["at"], None]
                stays.append(stay)
                open_stays.setdefault((r["user"], r["segment"]), []).append(stay)
            elif r["kind"] == "segment_left":
                for stay in open_stays.pop((r["user"], r["segment"]), []):
                    stay[3] = r["at"]
        yield from ((s[0], s[1], s[2], s[3]) for s in sorted(stays, key=lambda s: (s[0], s[1], s[2])))

    def state_counts(self) -> dict[str, dict[str, int]]:
        return {journey: dict(states) for journey, states in self.counts.items()}

    def bandit(self) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
        return {k: dict(v) for k, v in self.arms.items()}


def _outbox_row(send: SendMessage) -> dict[str, Any]:
    """The outbox row of a committed send, as the SQL store writes it (see the Outbox contract)."""
    at = clock.epoch(send.at)
    payload = json.dumps({name: getattr(send, name) for name in SEND_FIELDS}, default=_json_default,
                         separators=(",", ":"), ensure_ascii=False)
    return {"key": send.idempotency_key, "user_id": send.user, "at": at, "channel": send.channel,
            "message": send.message, "journey": send.journey, "payload": payload, "status": "pending",
            "attempts": 0, "next_attempt_at": at, "last_error": None, "token": None}


def _as_stored(record: trace.Record) -> dict[str, Any]:
    """A trace record as a store that writes JSON reads it back."""
    loaded: dict[str, Any] = json.loads(json.dumps(record, default=_json_default, ensure_ascii=False))
    return loaded


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, set | frozenset):
        return sorted(value)
    return str(value)


class MemoryStore(MemoryService):
    """The Store port in memory: a heap of wake-ups, no durability.

    `hot=None` keeps every profile live, as simulations and tests want. A bound lets a population of
    millions fit: at most `hot` profiles stay live objects (`profiles`), the others are kept as codec
    blobs (`cold`), decoded when next loaded and encoded again when they leave the live set. Blobs never
    leave the process, so they name journeys, states, segments and metrics by numbers of the store's
    `codec.Names`; a decoded profile shares the names instead of holding copies.

    Which profiles stay live: those whose next wake-up comes soonest. A timer, a window or a deferred
    send is an access the store knows in advance, where the next event of a user is anyone's guess, so
    the profile evicted is the one whose wake-up is furthest (none: first), often the one just
    committed, while its objects are still in the CPU's caches. docs/performance.md has the figures
    behind these choices.
    """

    def __init__(self, *, hot: int | None = None, keep: bool = False) -> None:
        """`keep`: also keep the trace, the outbox, the erased ids and the state counts, as a service
        (`JOURNEY_DATABASE_URL=memory://`) and tests want; a simulation keeps none of them."""
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
        # the trace and the outbox's rows (key -> row, in commit order) are kept only when asked: a long
        # simulation would otherwise hold every record and every send's template context for ever
        self.records: list[trace.Record] | None = [] if keep else None
        self.sends: dict[str, dict[str, Any]] | None = {} if keep else None
        self._counts: dict[tuple[str, str], int] | None = {} if keep else None
        self._senders: dict[str, str] = {}  # messageId -> the user it was applied to (kept: for erasure)
        self._erased: dict[str, float] = {}
        self._claims: dict[str, str] = {}  # send key -> the token of this store's latest claim of it
        self._tokens = 0
        self._simulated: str | None = None
        self._definitions: dict[tuple[str, str], str] = {}
        self._in_force: dict[str, str] = {}
        self._deployment = 0
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
        if self.records is not None:
            self._keep_batch(batch)
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
            self._drop(user)
        self.alias_map.update(batch.aliases)
        self._enrolled |= batch.enrolled

    def _drop(self, user: str) -> None:
        """Forget a user's profile and wake-up (merged away, erased)."""
        self.profiles.pop(user, None)
        self._live_wake.pop(user, None)
        self.cold.pop(user, None)
        self._woken.pop(user, None)

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


    def prune(self, now: datetime, trace_for_days: float = 90) -> dict[str, int]:
        """Forget messageIds that arrived longer than DEDUPE_FOR ago. Arrival is measured by the prune
        clock (this store has no wall clock): an id is stamped by the first prune after it arrived, so
        the event time of a replayed backfill never shortens its window."""
        at = clock.epoch(now)
        horizon = at - DEDUPE_FOR.total_seconds()
        before = len(self.processed)
        self.processed = {k: at if v is None else v for k, v in self.processed.items() if v is None or v >= horizon}
        if self._senders:
            self._senders = {k: v for k, v in self._senders.items() if k in self.processed}
        return {"processed": before - len(self.processed), **self._prune_kept(at - trace_for_days * 86400)}

    def close(self) -> None:
        pass


