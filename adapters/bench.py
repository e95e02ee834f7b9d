"""`journey bench` (SPEC §8): a realistic synthetic event mix through the engine, timed.

Events are generated on the fly (generation is not timed) and spread over 30 virtual days, so
timers, windows and time-driven segments fire as they would in production.
"""

from __future__ import annotations

import gc
import heapq
import random
import resource
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from adapters.service.metrics import Metrics, Observed
from adapters.service.processes import ProcessHost
from adapters.storage.sql import SqlStore
from journey_engine import native
from journey_engine.compiler import CompiledWorkspace
from journey_engine.engine import Engine, Outcome
from journey_engine.events import Event
from journey_engine.facts import Transitioned
from journey_engine.memory import MemoryStore
from journey_engine.ports import Store
from journey_engine.runtime import Runtime

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
SPAN = timedelta(days=30)
ZONES = ["Europe/Berlin", "America/New_York", "Asia/Seoul", "Europe/London", "UTC"]
# (event, share): a product-analytics-like mix; page views and feature use dominate, orders are rare
MIX = [("Feature Used", 0.30), ("Page Viewed", 0.25), ("Application Opened", 0.14), ("Product Added", 0.12),
       ("Checkout Started", 0.05), ("Order Completed", 0.03), ("identify", 0.11)]


class Progress(Protocol):
    def print(self, *objects: Any, **kwargs: Any) -> None: ...


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


class _Counter:
    def __init__(self) -> None:
        self.records = 0
        self.sends = 0
        self.timers = 0

    def __call__(self, outcome: Outcome) -> None:
        self.records += len(outcome.facts)
        self.sends += len(outcome.sends)
        for fact in outcome.facts:
            if type(fact) is Transitioned and fact.trigger in _TIMER_TRIGGERS:
                self.timers += 1


_TIMER_TRIGGERS = frozenset({"after", "at"})


def _identify(rng: random.Random, user: str, at: datetime, first: bool) -> Event:
    if first:
        traits: dict[str, Any] = {"email": f"{user}@example.com", "timezone": rng.choice(ZONES),
                                  "first_name": f"N{user[1:]}", "created_at": at, "onboarding_step": "profile"}
        if rng.random() < 0.5:
            traits["push_token"] = f"tok-{user}"
        if rng.random() < 0.1:
            traits["locale"] = "de-DE"
    else:
        traits = {"onboarding_step": rng.choice(["profile", "team", "completed"])}
    return Event(type="identify", user_id=user, traits=traits, timestamp=at)


def _event(rng: random.Random, users: int, at: datetime, names: list[str], weights: list[float]) -> Event:
    user = f"u{rng.randrange(users)}"
    name = rng.choices(names, weights)[0]
    if name == "identify":
        return _identify(rng, user, at, False)
    properties: dict[str, Any] = {}
    if name == "Product Added":
        properties = {"cartId": f"c{rng.randrange(3)}", "price": rng.choice([9, 25, 60, 150]), "name": "x"}
    elif name == "Order Completed":
        properties = {"revenue": rng.choice([20, 45, 90, 300])}
    return Event(type="track", user_id=user, name=name, properties=properties, timestamp=at,
                 message_id=f"m{rng.getrandbits(64):x}")


def _reachable(obj: Any, seen: dict[int, Any]) -> None:
    """Every object `obj` holds, itself included, into `seen` (id -> object)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen or item is None or isinstance(item, bool | type):
            continue
        seen[id(item)] = item
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        else:
            stack.extend(getattr(item, name, None) for name in native.fields(item))


def _bytes_per_user(store: MemoryStore, rng: random.Random, sample: int = 2000) -> tuple[int, int]:
    """Mean bytes a sampled profile holds, journey instances and timers included: (shared, strict).
    `run_bench` adds the store's own per-user structures (`MemoryStore.index_bytes`) to both.

    `shared` splits an object several profiles hold between them (metric and trait names, journey and
    state names, shared defaults and small numbers cost next to nothing per user; trait values and
    everything else a user has alone count in full). `strict` counts every object in full for every
    profile that holds it, as this benchmark first did (all but three interned names). A cold profile
    (kept encoded, see `MemoryStore`) counts its blob and its user id.
    """
    users = [*store.profiles, *store.cold]
    chosen = rng.sample(users, min(sample, len(users)))
    if not chosen:
        return 0, 0
    held = []
    holders: dict[int, int] = {}
    for user in chosen:
        seen: dict[int, Any] = {}
        profile = store.profiles.get(user)
        if profile is not None:
            _reachable(profile, seen)
        else:
            blob = store.cold[user]
            seen = {id(user): user, id(blob): blob}  # `user` is the dict's own key object
        held.append(seen)
        for key in seen:
            holders[key] = holders.get(key, 0) + 1
    shared = sum(sys.getsizeof(o) / holders[k] for seen in held for k, o in seen.items())
    names = {id(sys.intern(name)) for name in ("Feature Used", "email", "onboarding")}
    strict = sum(sys.getsizeof(o) for seen in held for k, o in seen.items() if k not in names)
    return round(shared / len(chosen)), round(strict / len(chosen))


def events_stream(users: int, events: int, seed: int, span: timedelta = SPAN) -> Iterator[Event]:
    """The synthetic stream: everyone identifies and signs up first, then the mix, over `span`."""
    rng = random.Random(seed)
    names = [n for n, _ in MIX]
    weights = [w for _, w in MIX]
    step = span / max(events, 1)
    for i in range(events):
        at = START + step * i
        if i < 2 * users:  # one active journey each
            user = f"u{i // 2}"
            yield _identify(rng, user, at, True) if i % 2 == 0 else Event(
                type="track", user_id=user, name="Signed Up", timestamp=at, message_id=f"s{i}")
        else:
            yield _event(rng, users, at, names, weights)


SESSION_EVENTS = (3, 12)  # events in a session, uniformly
SESSION_GAP = (timedelta(seconds=20), timedelta(minutes=5))  # between a session's events, uniformly


def session_stream(users: int, events: int, seed: int, span: timedelta = SPAN) -> Iterator[Event]:
    """The default mix, shaped as real users come: sessions of 3-12 events a few minutes apart, days
    between a user's sessions. Users arrive over the first part of the span (identify, Signed Up, then
    their first session); the mean gap between sessions spreads each user's share of `events` over `span`.
    The names of the events are drawn from `MIX`, as in the uniform mix; events in time order."""
    rng = random.Random(seed)
    names = [n for n, _ in MIX]
    weights = [w for _, w in MIX]
    per_session = sum(SESSION_EVENTS) / 2
    sessions = max(1.0, (events / max(users, 1) - 2) / per_session)  # each user's, over the span
    gap = span.total_seconds() / sessions  # mean seconds between a user's sessions
    start = START.timestamp()
    # (when, user, events left in the current session, serial); serial 0: the user's first appearance
    heap = [(start + rng.uniform(0, min(gap, span.total_seconds())), u, 0, 0) for u in range(users)]
    heapq.heapify(heap)
    made = 0
    while heap and made < events:
        at_s, u, left, serial = heapq.heappop(heap)
        user, at = f"u{u}", datetime.fromtimestamp(at_s, UTC)
        if serial == 0:
            yield _identify(rng, user, at, True)
            made += 1
            if made < events:
                yield Event(type="track", user_id=user, name="Signed Up", timestamp=at, message_id=f"s{u}")
                made += 1
            left = rng.randint(*SESSION_EVENTS)
        else:
            yield _for(_event(rng, users, at, names, weights), user)
            made += 1
            left -= 1
        if left > 0:
            step = rng.uniform(SESSION_GAP[0].total_seconds(), SESSION_GAP[1].total_seconds())
        else:
            step, left = rng.expovariate(1 / gap), rng.randint(*SESSION_EVENTS)
        heapq.heappush(heap, (at_s + step, u, left, serial + 1))


def _for(event: Event, user: str) -> Event:
    """`event` as `user`'s (the uniform mix draws the user; a session is one user's)."""
    return Event(type=event.type, user_id=user, name=event.name, properties=event.properties, traits=event.traits,
                 timestamp=event.timestamp, message_id=event.message_id)


MIXES: dict[str, Callable[[int, int, int, timedelta], Iterator[Event]]] = {
    "session": session_stream, "uniform": lambda users, events, seed, span: events_stream(users, events, seed, span)}


def run_bench(compiled: CompiledWorkspace, *, users: int, events: int, seed: int = 1, store: Store | None = None,
              batch: int = 1, span: timedelta = SPAN, workers: int = 1, folder: Path | None = None,
              progress: Progress | None = None, mix: str = "session") -> dict[str, Any]:
    """Process the stream through `store` in batches of `batch` events (one commit each).

    The events are spread over `span` of virtual time: over the default 30 days every user's journeys
    run to their end (each event brings ~0.7 timers and ~0.6 sends with it); over a day, most timers
    are still pending when the stream ends (the event path, as in a burst of traffic).

    Latency is from the start of a batch to its commit: every event of the batch is acknowledged
    then, so it bounds each event's wait once the batch is formed.

    `workers` > 1 (SQL stores): the engine processes `journey serve --workers` runs (ProcessHost, loading
    the workspace from `folder`) share the database, each applying the events of its partition of the
    users and claiming only their wake-ups (`Store.due(part=...)`); each call carries `batch` events per
    process. The rate is then all events over the time from the first batch to the last commit.

    `mix`: `session` (default: bursts of events minutes apart, days between a user's sessions) or
    `uniform` (every event of a user drawn at random over the span).
    """
    target: Store = MemoryStore() if store is None else store
    if isinstance(target, SqlStore):
        target.mark_simulated("journey bench")  # its outbox holds simulated sends: `serve` must never send them
    gc.collect()
    rss_before = _rss_mb()
    if workers > 1:
        if not isinstance(target, SqlStore):
            raise ValueError("several workers share a database: use a SQL store")
        if folder is None:
            raise ValueError("engine processes load the workspace from its folder: pass `folder`")
        run = _run_hosted(folder, target, workers, users=users, events=events, seed=seed, batch=batch,
                          span=span, mix=mix)
    else:
        run = _drive(compiled, target, MIXES[mix](users, events, seed, span), seed=seed, batch=batch,
                     progress=progress)
    latencies = sorted(run.latencies)
    report: dict[str, Any] = {
        "events": events, "users": users, "batch": batch, "days": round(span / timedelta(days=1), 3),
        "workers": workers, "mix": mix, "seconds": round(run.seconds, 3),
        "events_per_s": round(events / run.busy) if run.busy else 0,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3) if latencies else 0,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3) if latencies else 0,
        "timers_fired": run.timers,
        "timers_fired_per_s": round(run.timers / run.seconds) if run.seconds else 0,
        "sends": run.sends, "trace_records": run.records,
        "rss_mb": round(_rss_mb(), 1),
        "rss_growth_mb": round(_rss_mb() - rss_before, 1), "native": native.active(),
    }
    if isinstance(target, MemoryStore):
        shared, strict = _bytes_per_user(target, random.Random(seed))
        index = round(target.index_bytes() / max(len(target.profiles) + len(target.cold), 1))
        report.update(bytes_per_user=shared + index, bytes_per_user_strict=strict + index,
                      index_bytes_per_user=index)
        if target.hot is not None:  # a bounded live set: how often a profile had to be decoded and encoded
            report.update(decodes_per_event=round(target.decoded / max(events, 1), 3),
                          encodes_per_event=round(target.encoded / max(events, 1), 3))
    elif isinstance(target, SqlStore):
        report.update(_disk(target.disk_bytes(), users, events))
    return report


@dataclass(slots=True)
class _Run:
    """What one engine process did: `busy` is the time of the event batches, `seconds` adds the final
    drain of what fell due; `latencies` are per batch."""

    busy: float = 0.0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    timers: int = 0
    sends: int = 0
    records: int = 0


def _drive(compiled: CompiledWorkspace, store: Store, stream: Iterable[Event], *, seed: int, batch: int,
           progress: Progress | None = None) -> _Run:
    """Feed `stream` to an engine on `store` in batches, then fire what is due at its last event."""
    counter = _Counter()
    memory = isinstance(store, MemoryStore)
    runtime = Runtime(Engine(compiled, seed=seed), store, sink=counter, claim=1 if memory else 500)
    run = _Run()
    clock = time.perf_counter
    pending: list[Event] = []
    done = 0
    last = START
    for event in stream:
        pending.append(event)
        if len(pending) < batch:
            continue
        began = clock()
        runtime.advance(pending[0].timestamp)
        runtime.process(pending)
        spent = clock() - began
        run.busy += spent
        run.latencies.append(spent)
        done += len(pending)
        last = pending[-1].timestamp
        pending = []
        if progress is not None and done % 100_000 < batch:
            progress.print(f"{done:>9} events  {done / run.busy:,.0f}/s")
    if pending:
        began = clock()
        runtime.process(pending)
        run.busy += clock() - began
        last = pending[-1].timestamp
    began = clock()
    runtime.advance(last)
    run.seconds = run.busy + clock() - began
    run.timers, run.sends, run.records = counter.timers, counter.sends, counter.records
    return run


IN_FLIGHT = 4  # calls the engine processes may still be running while the next batch is sent


def _run_hosted(folder: Path, store: SqlStore, workers: int, *, users: int, events: int, seed: int, batch: int,
                span: timedelta, mix: str = "session") -> _Run:
    """The stream cut into batches before the clock starts (as the one-process run does not time making
    events), then fed through the engine processes of `journey serve --workers` (ProcessHost) on the
    event clock: each batch after firing what fell due before it, up to IN_FLIGHT calls at once. A batch's
    latency is from its sending to its commit by every process it touched."""
    size = batch * workers
    stream = list(MIXES[mix](users, events, seed, span))
    batches = [stream[i:i + size] for i in range(0, len(stream), size)]
    del stream
    tally = _Tally()
    host = ProcessHost(folder, store, workers, metrics=tally, live=False, seed=seed)
    host.start()  # loading the workspace in every process is not timed
    run = _Run()
    calls: deque[Future[Any]] = deque()
    try:
        began = time.perf_counter()
        for chunk in batches:
            sent = time.perf_counter()
            calls.append(host.advance(chunk[0].timestamp))
            done = host.process(chunk)
            done.add_done_callback(lambda _, t=sent: run.latencies.append(time.perf_counter() - t))  # type: ignore[misc]
            calls.append(done)
            while len(calls) > 2 * IN_FLIGHT:
                calls.popleft().result()
        while calls:
            calls.popleft().result()
        run.busy = time.perf_counter() - began
        if batches:
            host.advance(batches[-1][-1].timestamp).result()
        run.seconds = time.perf_counter() - began
    finally:
        host.stop()
    run.timers, run.sends, run.records = tally.fired, tally.effects, tally.records
    return run


class _Tally(Metrics):
    """The metrics of the engine processes, summed for the report."""

    def __init__(self) -> None:
        super().__init__()
        self.fired = self.effects = self.records = 0

    def add(self, seen: Observed) -> None:
        super().add(seen)
        self.fired += seen.timers
        self.effects += seen.effects
        self.records += seen.records


def _disk(sizes: dict[str, int], users: int, events: int) -> dict[str, Any]:
    """Disk use split as it grows: a user's state (the profile row: traits, metrics, segments, journey
    instances with their timers, and its indexes) per user; history (trace, outbox, dedupe records,
    segment history), which grows with activity until pruned, per event."""
    state = sizes.get("profiles", 0)
    history = sum(sizes.values()) - state
    return {"disk_mb": round(sum(sizes.values()) / 2**20, 1), "disk_state_bytes_per_user": round(state / max(users, 1)),
            "disk_history_bytes_per_event": round(history / max(events, 1)),
            "disk_by_table_mb": {name: round(size / 2**20, 1) for name, size in sorted(sizes.items()) if size}}


def run_timer_bench(compiled: CompiledWorkspace, store: Store, *, due: int, pending: int = 0,
                    seed: int = 1, progress: Progress | None = None) -> dict[str, Any]:
    """A spike of `due` timers falling due in the same second (everyone signed up at once, so their
    `after: 2d` is due together, like everyone's "09:00 local"), among `pending` timers due a day later.

    Filling the store, and firing what falls due before the spike, is not timed. Timed: draining the
    spike, claim by claim, each firing a transition committed with its sends, as `journey serve`'s timer
    job does; outcomes are not kept.
    """
    counter = _Counter()
    runtime = Runtime(Engine(compiled, seed=seed), store, sink=counter, claim=500)
    rng = random.Random(seed)
    for first, count, at in ((0, due, START), (due, pending, START + timedelta(days=1))):
        for chunk in range(first, first + count, 1000):
            users = range(chunk, min(chunk + 1000, first + count))
            runtime.process([e for u in users for e in (
                _identify(rng, f"u{u}", at, True),
                Event(type="track", user_id=f"u{u}", name="Signed Up", timestamp=at, message_id=f"s{u}"))], at)
        if progress is not None:
            progress.print(f"{first + count:>9} users in the store")
    spike = START + timedelta(days=2)
    runtime.advance(spike - timedelta(seconds=1))  # what falls due before the spike (deferred sends...)
    counter.timers = counter.sends = 0
    claims = _Timed(store.due)
    store.due = claims  # type: ignore[method-assign]  # how long claiming takes, apart from the rest
    gc.collect()
    rss_before = _rss_mb()
    peak = rss_before
    began = time.perf_counter()
    more = True
    while more:
        _, more = runtime.advance_some(spike, rounds=1)
        peak = max(peak, _rss_mb())
    seconds = time.perf_counter() - began
    del store.due
    return {"timers_due": due, "timers_pending": pending, "timers_fired": counter.timers,
            "seconds": round(seconds, 3), "timers_fired_per_s": round(counter.timers / seconds) if seconds else 0,
            "claim_ms_per_500": round(claims.seconds / max(claims.calls, 1) * 1000, 2),
            "sends": counter.sends, "rss_mb": round(peak, 1), "rss_growth_mb": round(peak - rss_before, 1),
            "native": native.active()}


class _Timed:
    """A store method that counts its calls and the time they take."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self.method = method
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return self.method(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - began
            self.calls += 1
