"""The ports the core talks through, with their contracts. Adapters implement them; the core never
imports an adapter.

Store contract (every adapter passes tests/test_store_contract.py):
- `commit(batch)` is atomic: the profiles, deletions, aliases, processed messageIds, trace records,
  outbox rows and bandit deltas of one batch are all written, or none is (the exception propagates
  and the caller must not acknowledge the batch's events).
- `seen(ids)` answers which messageIds were committed before (exact, for at least `DEDUPE_FOR`).
- `load(users)` returns the committed profiles of those users (absent users are absent), objects the
  caller may mutate and then `commit`. Disk stores return fresh copies; MemoryStore returns the live
  objects (there is nothing to copy from), so with it a mutation is visible before the commit and a
  failed batch is not rolled back.
- `due(until, limit, part)` claims up to `limit` users whose next wake-up is at or before `until`, earliest
  first, as (wake-up, user). A claim is a lease: a claimed user is not returned again until the
  claim is committed or the lease runs out (a crashed worker's claims come back). With `part=(i, n)`
  only users with `partition(user, n) == i` are claimed: workers that split the users between them
  (each applying the events of its own partition) then never claim each other's users.
- Ordering: a user's events are committed in the order they were given to `Runtime.process`.
- Concurrency: several workers may share one database. A commit writes a profile only over the
  version its `load` returned (on the same thread), creates a profile only if none exists, and
  records a messageId only if no one recorded it first; otherwise nothing of the batch is written and
  `commit` raises `ConflictError`. The caller then runs the batch again from the start
  (`Runtime.process` / `Runtime.advance` reload, so the rerun sees the winner's changes and
  duplicates); its events must not be acknowledged before the rerun commits.
Errors: `StoreUnavailable` when the database cannot be reached or is locked, `StoreVersionError` when
it was written by a newer version. Both are JourneyErrors with a message for the operator.

Outbox contract (every store; tests/contract/, tests/test_dispatcher.py):
- Rows are dicts with `key` (the send's idempotency key), `user_id`, `at` (epoch seconds of the
  decision), `channel`, `message`, `journey`, `payload` (the SendMessage as JSON, read back by
  `send_from_payload`), `status` (pending, delivered, dead, expired; in-app: pending, read),
  `attempts`, `next_attempt_at` (epoch seconds), `last_error` and `token`. A send's key is its
  row's key: committing the same send again adds nothing (idempotent).
- A send committed with its decision waits in the outbox until a dispatcher claims it. A claim is a
  lease under a fresh token: no other dispatcher gets the send until the lease runs out (a killed
  dispatcher's claims come back), and only the latest claim's token can settle it.
- Once, as far as a kill allows: the dispatcher settles each send in its own commit as soon as its
  channel answered, and hands the next send over only after that commit. A kill (SIGKILL, a crash)
  at any instant therefore repeats at most the one send whose channel call had begun and was not yet
  settled; sends settled before it stay settled, and the claimed sends not yet handed over are sent
  once, when their lease has run out. A repeat carries the same `Delivery.key`, which channels pass to
  their provider (Message-ID, Idempotency-Key), but not every provider deduplicates (SMTP servers do
  not). Settles may skip the flush to disk (`durable=False`): a power cut, unlike a kill, can also
  repeat the sends settled since the last durable settle, which the dispatcher makes at the end of
  each batch.
- A channel call must finish within half the lease: the dispatcher hands a send over only while its
  claim has that long left, and gives the rest of its batch back for any dispatcher to claim at once.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from .batch import BanditDelta as BanditDelta  # re-exported: adapters and tests take them from here
from .batch import Batch as Batch
from .engine import RenderedMessage, SendMessage
from .errors import JourneyError
from .profile import Profile

DEDUPE_FOR = timedelta(days=7)
LEASE_SECONDS = 60.0  # how long a claim (of a user's timers, of a send) keeps it from other workers
SHARDS = 4096  # a user's shard is stored with the profile; partitions are shards modulo the worker count

Part = tuple[int, int]  # (this worker's partition, number of partitions)


def shard(user_id: str) -> int:
    """The user's shard: stable across processes, restarts and Python versions (CRC-32, not `hash`,
    which is salted per process)."""
    return zlib.crc32(user_id.encode()) % SHARDS


def partition(user_id: str, parts: int) -> int:
    """The partition that owns `user_id` among `parts` workers."""
    return shard(user_id) % parts if parts > 1 else 0


class StoreUnavailable(JourneyError, ConnectionError):
    """The database cannot be reached, or is locked by another process."""


class StoreVersionError(JourneyError, RuntimeError):
    """The database was written by a newer journey-engine (or needs `journey db upgrade`)."""


class ConflictError(JourneyError, RuntimeError):
    """Another worker committed first: a profile of the batch changed since it was loaded, or one of
    its messageIds was committed meanwhile. Nothing of the batch was written; run it again from the
    start (`Runtime.process` reloads, so the rerun sees the other worker's changes and duplicates)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"another worker committed first ({what}); nothing of this batch was written, "
                         "run the batch again")


class Store(Protocol):
    """Where the engine's state lives. Every method may raise `StoreUnavailable` (unreachable, locked,
    a dropped connection); construction may also raise `StoreVersionError`. Reads are of committed data."""

    def load(self, users: Collection[str]) -> dict[str, Profile]:
        """The committed profiles of `users` (absent users are absent), for the caller to mutate and
        `commit` (see above); remembers their versions for that commit (same thread)."""
        ...

    def aliases(self, users: Collection[str]) -> dict[str, str]:
        """previous id -> the user it was merged into, for those of `users` that were merged."""
        ...

    def seen(self, message_ids: Collection[str]) -> set[str]:
        """The messageIds among these that were committed within at least `DEDUPE_FOR` of arrival."""
        ...

    def due(self, until: datetime, limit: int, part: Part | None = None) -> list[tuple[datetime, str]]:
        """Claim up to `limit` users whose wake-up is at or before `until`, earliest first, of partition
        `part` when given (see above)."""
        ...

    def commit(self, batch: Batch) -> None:
        """Write the whole batch atomically (see above). Raises `ConflictError` when another worker
        committed first, `StoreUnavailable` when the database failed; either way nothing was written."""
        ...

    def bandit(self) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
        """Every bandit's arms as committed: (journey, state) -> arm -> (sends, conversions)."""
        ...

    def enrolled(self) -> set[str]:
        """Journeys that have enrolled the users already in their entry segment (`Batch.enrolled`):
        a journey not among them is loaded for the first time on this store (SPEC §3 item 5)."""
        ...

    def segment_members(self, segment: str, after: str | None, limit: int) -> list[str]:
        """Up to `limit` users now in `segment` whose id sorts after `after`, in id order (a cursor)."""
        ...

    def prune(self, now: datetime, trace_for_days: float = 90) -> dict[str, int]:
        """Forget messageIds that arrived more than `DEDUPE_FOR` ago, and trace records and finished
        sends older than `trace_for_days` before `now`. Idempotent; returns how many went, per kind."""
        ...

    def close(self) -> None:
        """Release connections. Idempotent."""
        ...


class Outbox(Protocol):
    """Where committed sends wait for their channel (see the Outbox contract above). Both methods may
    raise `StoreUnavailable`, and `ConflictError` when another dispatcher's transaction crossed (nothing
    was written)."""

    def claim_outbox(self, now: datetime, limit: int, lease: float = ...) -> list[dict[str, Any]]:
        """Claim up to `limit` pending sends due at `now` (not in-app), earliest first, for `lease` seconds
        under a fresh token: rows with `key`, `payload`, `attempts`, `token`, and the lease's end as
        `next_attempt_at`."""
        ...

    def settle_outbox(self, updates: list[dict[str, Any]], records: list[dict[str, Any]], *,
                      durable: bool = True) -> set[str]:
        """Record what channels answered — each update's `status` (pending, delivered, dead), `attempts`,
        `next_attempt_at`, `last_error`, under its claim's `token` — with the trace `records`, in one
        transaction. A send whose claim is no longer the latest (the lease ran out and another dispatcher
        claimed it) is left alone, with its records (those whose `send_key` is that send's key). Returns
        the keys settled. `durable=False`: the commit survives a kill, and a power cut only once a later
        durable commit flushed it."""
        ...

    def outbox(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every send (with `status`: those in it), by decision time then key: operators and tests."""
        ...

    def outbox_of(self, user: str, channel: str | None = None) -> list[dict[str, Any]]:
        """The user's sends (on `channel` when given), by decision time then key."""
        ...

    def outbox_due(self, now: datetime) -> int:
        """How many pending sends are due by `now` and wait for their channel (not in-app), claimed or not."""
        ...


class Inbox(Protocol):
    """In-app messages: committed sends on the `in_app` channel wait in the outbox for the app to read
    them instead of for a dispatcher. May raise `StoreUnavailable`."""

    def inbox(self, user: str, render: Callable[[SendMessage], RenderedMessage]) -> list[dict[str, Any]]:
        """The user's unread in-app messages, oldest first: `id` (the send's key), `message`, `journey`,
        `at` (ISO-8601, Z), and the `title`, `body` and `url` that `render` (the engine's) gives the send."""
        ...

    def mark_read(self, user: str, key: str) -> bool:
        """Mark the user's in-app message `key` read (it leaves the inbox); False when the user has no
        such in-app message. Idempotent: marking it again answers True and changes nothing."""
        ...


class Erasure(Protocol):
    """Erasure on request (GDPR). May raise `StoreUnavailable`."""

    def erase(self, user: str, now: datetime) -> bool:
        """Erase a user everywhere: profile, aliases (both ways), trace, outbox rows, segment history,
        processed messageIds, and their place in the state counts; their ids are refused from then on
        (`erased`). An id aliased to a user erases that user with all their ids; the aliases of an id
        erased before are not followed. One transaction. True when a profile was erased; idempotent."""
        ...

    def erased(self, users: Collection[str]) -> set[str]:
        """Those of `users` that were erased: their later events are dropped."""
        ...


class Snapshot(Protocol):
    """Reads that all see one state of the store while the engine writes (`Reads.snapshot`). Times are
    ISO-8601 strings as the trace writes them (`parse_time` reads them)."""

    def trace_records(self, kinds: Collection[str], journey: str | None = None) -> Iterator[dict[str, Any]]:
        """Trace records of these kinds in commit order; with `journey`, that journey's and every
        `alias_merged` (a merge moves the runs of every journey)."""
        ...

    def latest(self) -> datetime | None:
        """The time of the newest trace record or segment change; None when there is none."""
        ...

    def segment_history(self) -> Iterator[tuple[str, str, str, str | None]]:
        """(segment, user, entered_at, left_at) of every stay in a segment (left_at None: still in), by
        segment, user and entry."""
        ...

    def state_counts(self) -> dict[str, dict[str, int]]:
        """As `Reads.state_counts`, in this snapshot."""
        ...

    def bandit(self) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
        """As `Store.bandit`, in this snapshot."""
        ...


class Reads(Protocol):
    """What operators, the HTTP API, the dashboard, `journey user` and the reports read. Every method may
    raise `StoreUnavailable`; none writes."""

    def state_counts(self) -> dict[str, dict[str, int]]:
        """journey -> state -> users in it now (derived from committed trace records by `state_deltas`,
        less the erased). A state no one is in may be absent or 0."""
        ...

    def bandit(self) -> dict[tuple[str, str], dict[str, tuple[int, int]]]:
        """As `Store.bandit`."""
        ...

    def trace(self, user: str, limit: int = 200) -> list[dict[str, Any]]:
        """The user's last `limit` trace records, oldest first."""
        ...

    def snapshot(self) -> AbstractContextManager[Snapshot]:
        """Several reads on one state of the store (a report)."""
        ...

    def due_count(self, until: datetime) -> int:
        """How many users' wake-up is at or before `until`, claimed or not."""
        ...

    def overdue(self, now: datetime) -> tuple[int, datetime | None]:
        """How many users' wake-up is due by `now`, and the earliest of them: the backlog after downtime."""
        ...

    def unwritable(self, timeout: float = 1.0) -> str | None:
        """Why the store cannot take a write now (locked, full, read-only, unreachable), or None: what
        `/healthz` reports. Writes nothing; waits at most about `timeout` seconds."""
        ...

    def simulated(self) -> str | None:
        """The command whose simulation wrote this store (`journey demo`, `bench`), or None for a real one:
        `journey serve` refuses to send from a simulation."""
        ...

    def advice(self) -> list[str]:
        """What an operator should change in the database's settings, said once at start."""
        ...


class DeploymentRace(ConflictError):
    """Another process applied a workspace since this one read the versions in force."""

    def __init__(self, seen: int, now: int) -> None:
        JourneyError.__init__(self, f"another process applied a workspace meanwhile (deployment {seen} is now "
                                    f"{now}); read the versions in force again and re-plan")


class Versions(Protocol):
    """Journey versions (SPEC §3, "Changing a live workspace"): every definition that has run, and which
    version new entrants take. Every process on one database reads the versions in force from here, so
    none enters new users into a version another has replaced."""

    def stored_versions(self) -> dict[tuple[str, str], str]:
        """(journey, version) -> its definition (`journey_engine.versions.definition`), for every version
        ever deployed on this store. Definitions are never changed or dropped by a deploy."""
        ...

    def in_force(self) -> tuple[int, dict[str, str]]:
        """The deployment's number (0 before the first) and journey -> the version new entrants take."""
        ...

    def deploy(self, definitions: Mapping[tuple[str, str], str], in_force: Mapping[str, str], *,
               after: int) -> int:
        """Atomically: store the definitions not stored yet, make `in_force` the versions in force (a journey
        absent from it takes no new entrants) and number the deployment `after + 1`, which is returned. Raises
        `DeploymentRace` (nothing written) when the deployment in force is no longer `after`."""
        ...

    def live_instances(self) -> dict[tuple[str, str, str], int]:
        """(journey, version, state) -> how many instances are live there now, read from every profile."""
        ...

    def users_in(self, journeys: Collection[str]) -> list[str]:
        """The users with a live instance of any of `journeys`, in id order."""
        ...


class ServiceStore(Store, Outbox, Inbox, Erasure, Reads, Versions, Protocol):
    """Every port at once: what `journey serve` runs on (SqlStore, MemoryStore)."""


def inbox_items(rows: list[dict[str, Any]], render: Callable[[SendMessage], RenderedMessage]) -> list[dict[str, Any]]:
    """The Inbox's answer from a user's in-app outbox rows, whichever store holds them: unread, rendered."""
    return [{"id": row["key"], "message": row["message"], "journey": row["journey"],
             "at": datetime.fromtimestamp(row["at"], UTC).isoformat().replace("+00:00", "Z"),
             "title": rendered.title, "body": rendered.body, "url": rendered.url}
            for row in rows if row["status"] != "read"
            for rendered in (render(send_from_payload(row["payload"])),)]


def state_deltas(records: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """How the trace of a batch moves users between journey states (the state counts' increments)."""
    deltas: dict[tuple[str, str], int] = {}

    def add(journey: str, state: str, n: int) -> None:
        deltas[(journey, state)] = deltas.get((journey, state), 0) + n

    for r in records:
        kind = r["kind"]
        if kind == "journey_entered":
            add(r["journey"], r["state"], 1)
        elif kind in ("transition", "journey_migrated"):  # a move to another version may map the state
            add(r["journey"], r["from"], -1)
            add(r["journey"], r["to"], 1)
        elif kind == "journey_exited":
            add(r["journey"], r["state"], -1)
    return deltas


def send_from_payload(payload: str) -> SendMessage:
    """The SendMessage an outbox row's `payload` holds."""
    data = json.loads(payload)
    data["at"] = datetime.fromisoformat(data["at"].replace("Z", "+00:00"))
    return SendMessage(**data)


def parse_time(text: str) -> datetime:
    """A stored ISO time; one without a zone is UTC."""
    at = datetime.fromisoformat(text)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """A send ready for its channel: rendered and addressed. `key` is the idempotency key (user,
    journey, key, journey run, state visit, message): the same key is never delivered twice."""

    key: str
    user: str
    journey: str
    message: str
    channel: str
    to: str | None  # email address, phone number, push token, webhook URL; None for in-app
    subject: str | None
    title: str | None
    body: str
    url: str | None
    locale: str | None
    data: dict[str, object] = field(default_factory=dict)  # user_id, traits, journey data, for webhooks
    attempt: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryResult:
    """`delivered`; `retry` for a transient failure (network, 429, 5xx); `failed` for a permanent one
    (invalid address, 4xx, hard bounce). `detail` says what the provider answered."""

    status: str
    detail: str = ""
    provider_id: str | None = None
    suppress_address: bool = False  # a hard bounce: never send to this address again


class Channel(Protocol):
    """Channel contract (tests/test_channels.py runs against every adapter):
    - `send` never raises for a provider's answer: it maps it to a DeliveryResult. An exception is
      treated as `retry` by the dispatcher.
    - It passes `delivery.key` to the provider as an idempotency key where the provider has one
      (webhook-id, Idempotency-Key, Message-ID): the one send a crash may repeat (see the Outbox
      contract) is then not a second message at the providers that deduplicate.
    - It does no retrying itself: the dispatcher owns backoff, jitter, caps and dead letters.
    - It may keep a connection between sends (SMTP does); then it has a `close()` that releases it,
      which the service calls at shutdown. Sends come from one thread at a time.
    """

    name: str

    def send(self, delivery: Delivery) -> DeliveryResult: ...
