"""Shipped fakes for people testing their journeys with pytest: a virtual clock and a harness.

    h = Harness.load("journeys", start="2026-01-05T09:00:00Z")
    h.identify("u1", email="a@example.com")
    h.track("u1", "Signed Up")
    h.wait("2d")
    assert h.state("u1", "onboarding") == "nudge"
    assert h.sent("u1") == ["welcome_email", "tips_push"]
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .compiler import CompiledWorkspace, load_workspace
from .engine import Engine, Outcome, SendMessage
from .events import Event, parse_datetime, with_datetimes
from .memory import MemoryStore
from .model import parse_duration
from .ports import Store
from .runtime import Runtime
from .trace import Record

if TYPE_CHECKING:
    from .ports import ServiceStore
    from .versions import Plan

__all__ = ["Harness", "MemoryStore", "RecordingChannel", "VirtualClock"]


class VirtualClock:
    """The engine's clock in a simulation: it moves only when told to."""

    def __init__(self, start: datetime) -> None:
        self.now = start.astimezone(UTC)

    def advance(self, by: timedelta) -> datetime:
        self.now += by
        return self.now


class RecordingChannel:
    """A channel that keeps what it was handed, once per idempotency key."""

    def __init__(self) -> None:
        self.sent: list[SendMessage] = []
        self._keys: set[str] = set()

    def send(self, message: SendMessage) -> None:
        if message.idempotency_key not in self._keys:
            self._keys.add(message.idempotency_key)
            self.sent.append(message)


def _time(value: str | datetime) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    parsed = parse_datetime(value)
    if parsed is None:
        raise ValueError(f"{value!r} is not an ISO-8601 date-time")
    return parsed


class Harness:
    """Send events, move the clock, and look at states, segments, sends and the trace."""

    def __init__(self, compiled: CompiledWorkspace, *, start: str | datetime, seed: int = 0,
                 store: Store | None = None) -> None:
        self.clock = VirtualClock(_time(start))
        self.engine = Engine(compiled, seed=seed)
        self.channel = RecordingChannel()
        self.trace: list[Record] = []
        self.store: Store = store if store is not None else MemoryStore()
        self.runtime = Runtime(self.engine, self.store, sink=self._collect)

    def deploy(self, workspace: str | Path | CompiledWorkspace) -> Plan:
        """Apply another workspace from now on, as `journey serve --reload` would: live instances stay pinned,
        move or exit as its plan says (SPEC §3, "Changing a live workspace"). Raises PlanRefused, applying
        nothing, when the plan cannot be applied. The store must keep versions (MemoryStore, SqlStore)."""
        from .deployment import PlanRefused, deploy, migrate, running

        new = workspace if isinstance(workspace, CompiledWorkspace) else load_workspace(workspace)
        store = cast("ServiceStore", self.store)
        if store.in_force()[0] == 0:
            deploy(self.engine.cw, store)  # what ran so far was never deployed: it is deployment 1
        done = deploy(new, store)
        if not done.applied:
            raise PlanRefused(done.plan)
        engine = Engine(running(new, store, done), seed=self.engine.seed)
        engine.bandits = self.engine.bandits
        self.engine = self.runtime.engine = engine
        migrate(self.runtime, store, done, self.clock.now)
        return done.plan

    @classmethod
    def load(cls, workspace: str | Path, *, start: str | datetime, seed: int = 0) -> Harness:
        return cls(load_workspace(workspace), start=start, seed=seed)

    def _collect(self, outcome: Outcome) -> None:
        self.trace.extend(outcome.records)
        for send in outcome.sends:
            self.channel.send(send)

    # --- inputs ---------------------------------------------------------------------------------

    def send(self, event: Event) -> None:
        self.runtime.ingest(event, self.clock.now)

    def track(self, user: str, event: str, properties: dict[str, Any] | None = None, *,
              message_id: str | None = None, timestamp: str | datetime | None = None) -> None:
        self.send(Event(type="track", user_id=user, name=event, properties=with_datetimes(properties or {}),
                        timestamp=_time(timestamp) if timestamp else self.clock.now, message_id=message_id))

    def identify(self, user: str, traits: dict[str, Any] | None = None, *, message_id: str | None = None,
                 timestamp: str | datetime | None = None, **more: Any) -> None:
        self.send(Event(type="identify", user_id=user, traits=with_datetimes({**(traits or {}), **more}),
                        timestamp=_time(timestamp) if timestamp else self.clock.now, message_id=message_id))

    def alias(self, user: str, previous_id: str, *, message_id: str | None = None) -> None:
        self.send(Event(type="alias", user_id=user, previous_id=previous_id, timestamp=self.clock.now,
                        message_id=message_id))

    def wait(self, duration: str | timedelta) -> None:
        """Advance the clock; everything due meanwhile fires in time order."""
        by = parse_duration(duration)
        self.runtime.advance(self.clock.now + by)
        self.clock.advance(by)

    def outage(self, duration: str | timedelta) -> None:
        """The engine is down for `duration`: nothing fires meanwhile; on resume what fell due fires, as
        after a restart (each at its due time), and sends older than their expiry are suppressed."""
        self.clock.advance(parse_duration(duration))
        self.runtime.advance(self.clock.now, late=True)

    # --- looking --------------------------------------------------------------------------------

    def state(self, user: str, journey: str, key: str | None = None) -> str | None:
        profile = self.runtime.profile(user)
        inst = profile.instances.get((journey, key or "")) if profile else None
        return inst.state if inst else None

    def segments(self, user: str) -> set[str]:
        profile = self.runtime.profile(user)
        return set(profile.segments) if profile else set()

    def metrics(self, user: str) -> dict[str, Any]:
        profile = self.runtime.profile(user)
        return self.engine.cw.metrics.current(profile, self.clock.now) if profile else {}

    def sent(self, user: str, journey: str | None = None) -> list[str]:
        """Message ids sent to this user so far, in order (of one journey when named)."""
        target = self._resolved(user)
        return [s.message for s in self.channel.sent
                if s.user == target and (journey is None or s.journey == journey)]

    def suppressed(self, user: str) -> list[str]:
        """Message ids suppressed for this user so far, in order (whatever the reason)."""
        return [r["message"] for r in self.records(self._resolved(user), "message_suppressed")]

    def exited(self, user: str, journey: str, key: str | None = None) -> str | None:
        """How this user's last run of the journey ended (final, exit, goal, version); None while a run is
        in progress or when they never entered."""
        if self.state(user, journey, key) is not None:
            return None
        ends = [r["reason"] for r in self.records(self._resolved(user), "journey_exited")
                if r["journey"] == journey and r.get("key") == (key or None)]
        return ends[-1] if ends else None

    def rendered(self, user: str, message: str) -> str | None:
        """The last send of `message` to this user as they read it (subject, title, body and url), or None."""
        target = self._resolved(user)
        sends = [s for s in self.channel.sent if s.user == target and s.message == message]
        if not sends:
            return None
        done = self.engine.render(sends[-1])
        return "\n".join(part for part in (done.subject, done.title, done.body, done.url) if part)

    def _resolved(self, user: str) -> str:
        return self.runtime.store.aliases([user]).get(user, user)

    def records(self, user: str | None = None, kind: str | None = None) -> list[Record]:
        return [r for r in self.trace if (user is None or r.get("user") == user)
                and (kind is None or r["kind"] == kind)]
