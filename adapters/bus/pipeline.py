"""Commits behind the engine: a bus worker writes batch N while its engine applies batch N+1.

A worker spends about half of its engine thread waiting for PostgreSQL to commit (docs/performance.md).
`InFlight` takes a batch whose profiles are already encoded (`SqlProfiles._encoded`, on the engine
thread) and commits it on a thread of its own, in submission order, settling a future once it is
durable; only then may its events be acknowledged. Until then the next batches must see it as if it were
committed, so `FencedStore` reads through it:

- a messageId of a batch in flight is seen (a duplicate of it is dropped, as after its commit);
- an alias of a batch in flight resolves;
- a profile of a batch in flight is the object that batch wrote, at the version its commit will leave
  (its encoded row is fixed, so the next batch may change the object), and a merged-away one is gone.

The overlay is looked at before the database, and an entry leaves it only after its commit, so a read
never falls between the two. When a commit fails (a conflict, the database away, the lease lost), every
batch behind it was built on it: they fail too without being tried (`EarlierBatchFailed`), and so does
every later one until the caller has seen the failure and called `recover`, then runs them all again,
in order, from fresh loads. The overlay and the kept profiles (which may hold objects changed by the
failed batches) are dropped at the failure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor

from adapters.storage.sql.store import Encoded
from journey_engine.ports import ConflictError
from journey_engine.profile import Profile


class EarlierBatchFailed(ConflictError):
    """A batch committed ahead of this one failed: nothing of this one was written; `recover`, then run it
    again (after the one that failed)."""

    def __init__(self) -> None:
        super().__init__("a batch ahead of this one in the commit pipeline failed")


class InFlight:
    """Batches being committed behind the engine, and what they change, for the reads (see the module)."""

    def __init__(self, commit: Callable[[Encoded], None], forget: Callable[[], None]) -> None:
        """`commit` writes an encoded batch (on the pipeline's thread); `forget` drops what the store keeps
        of profiles, at a failure."""
        self._commit, self._forget = commit, forget
        self._lock = threading.Lock()
        self._seq = 0
        self._profiles: dict[str, tuple[int, int, Profile | None]] = {}  # user -> (batch, version after, profile)
        self._ids: dict[str, int] = {}  # messageId -> batch
        self._aliases: dict[str, tuple[int, str]] = {}  # previous id -> (batch, user)
        self._failed = False
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journey-commit")

    def submit(self, encoded: Encoded) -> Future[None]:
        """Commit `encoded` after the batches before it; the future settles once it is committed."""
        done: Future[None] = Future()
        with self._lock:
            if self._failed:
                done.set_exception(EarlierBatchFailed())
                return done
            self._seq += 1
            seq, batch = self._seq, encoded.batch
            for user, (version, profile) in encoded.kept.items():
                self._profiles[user] = (seq, version, profile)
            for user in batch.deleted:
                self._profiles[user] = (seq, 0, None)
            self._ids.update((message_id, seq) for message_id, _ in batch.message_ids)
            self._aliases.update((old, (seq, new)) for old, new in batch.aliases.items())
        self._thread.submit(self._run, seq, encoded, done)
        return done

    def _run(self, seq: int, encoded: Encoded, done: Future[None]) -> None:
        with self._lock:
            failed = self._failed
        if failed:
            done.set_exception(EarlierBatchFailed())
            return
        try:
            self._commit(encoded)
        except BaseException as exc:
            with self._lock:
                self._failed = True
                self._profiles.clear()
                self._ids.clear()
                self._aliases.clear()
            self._forget()
            done.set_exception(exc)
            return
        with self._lock:
            batch = encoded.batch
            for user in [*encoded.kept, *batch.deleted]:
                if self._profiles.get(user, (0,))[0] == seq:
                    del self._profiles[user]
            for message_id, _ in batch.message_ids:
                if self._ids.get(message_id) == seq:
                    del self._ids[message_id]
            for old in batch.aliases:
                if self._aliases.get(old, (0,))[0] == seq:
                    del self._aliases[old]
        done.set_result(None)

    def seen(self, message_ids: Collection[str]) -> set[str]:
        with self._lock:
            return {m for m in message_ids if m in self._ids} if self._ids else set()

    def aliases(self, users: Collection[str]) -> dict[str, str]:
        with self._lock:
            return {u: self._aliases[u][1] for u in users if u in self._aliases} if self._aliases else {}

    def profiles(self, users: Collection[str]) -> dict[str, tuple[int, Profile | None]]:
        """user -> (the version its commit leaves, the profile; None: merged away), for users in flight."""
        with self._lock:
            if not self._profiles:
                return {}
            return {u: (entry[1], entry[2]) for u in users if (entry := self._profiles.get(u)) is not None}

    def behind(self, job: Callable[[], None]) -> None:
        """Run `job` on the pipeline's thread once the batches submitted so far are done."""
        self._thread.submit(job)

    def flush(self) -> bool:
        """Wait until every batch submitted so far is committed or failed; True when one failed and
        `recover` was not called since."""
        self._thread.submit(lambda: None).result()
        with self._lock:
            return self._failed

    def recover(self) -> None:
        """After a failure was seen: wait for the batches behind it to fail, drop the kept profiles (one
        committed meanwhile may hold an object a failed batch changed), then accept batches again."""
        self.flush()
        self._forget()
        with self._lock:
            self._failed = False

    def close(self) -> None:
        self._thread.shutdown(wait=True)
