"""The service's Prometheus metrics (GET /metrics), fed by every engine host.

An engine process cannot reach this process's registry: it sends what it saw as `Observed`, small enough
to cross a pipe, and the host adds it here (`Metrics.add`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from journey_engine.engine import Outcome
from journey_engine.facts import (
    MessageDeferred,
    MessageEngaged,
    MessageFact,
    MessageSent,
    MessageSuppressed,
    Transitioned,
)
from journey_engine.ports import Outbox, Reads, StoreUnavailable


class WatchedStore(Reads, Outbox, Protocol):
    """What the gauges read: due wake-ups (Reads) and due sends (Outbox)."""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.accepted = Counter("journey_events_accepted", "Events committed", registry=r)
        self.refused = Counter("journey_events_refused", "Events refused by the ingestion routes, by reason (a body "
                               "refused before its messages were read counts as one)", ["reason"], registry=r)
        self.batch_seconds = Histogram("journey_batch_seconds", "Engine batch latency, apply to commit", registry=r)
        self.queue_depth = Gauge("journey_queue_depth", "Events waiting for the engine", registry=r)
        self.sends = Counter("journey_sends", "Send decisions by channel and outcome", ["channel", "outcome"],
                             registry=r)
        self.timers = Counter("journey_timers_fired", "Timer transitions fired", registry=r)
        self.deliveries = Counter("journey_deliveries", "Channel outcomes by status", ["status"], registry=r)
        self.timers_due = Gauge("journey_timers_due", "Users whose wake-up (timer, window, deferred send) is due",
                                registry=r)
        self.timers_lag = Gauge("journey_timers_lag_seconds", "How long the oldest due wake-up has waited: the "
                                "backlog after downtime, drained between requests", registry=r)
        self.outbox_due = Gauge("journey_outbox_due", "Sends due and waiting for their channel", registry=r)

    def observe(self, outcome: Outcome, events: int, seconds: float) -> None:
        self.add(Observed.of(outcome, events, seconds))

    def add(self, seen: Observed) -> None:
        if seen.events:
            self.accepted.inc(seen.events)
            self.batch_seconds.observe(seen.seconds)
        for (channel, result), n in seen.sends.items():
            self.sends.labels(channel, result).inc(n)
        if seen.timers:
            self.timers.inc(seen.timers)

    def watch(self, store: WatchedStore, clock: Callable[[], datetime]) -> None:
        """The gauges read from the store when scraped: due wake-ups, their lag, due sends."""
        self.timers_due.set_function(lambda: timers_due(store, clock()))
        self.timers_lag.set_function(lambda: timers_lag(store, clock()))
        self.outbox_due.set_function(lambda: or_nan(lambda: store.outbox_due(clock())))


@dataclass(slots=True)
class Observed:
    """What the metrics take from one batch or timer round: small enough to cross from an engine process."""

    events: int
    seconds: float
    sends: dict[tuple[str, str], int]  # (channel, outcome) -> count
    timers: int
    records: int = 0  # trace records (`journey bench` reports them)
    effects: int = 0  # sends handed to the outbox (`journey bench` reports them)

    @classmethod
    def of(cls, outcome: Outcome, events: int, seconds: float) -> Observed:
        sends: dict[tuple[str, str], int] = {}
        timers = 0
        for fact in outcome.facts:
            if isinstance(fact, MessageFact):
                key = (fact.channel, _SEND_OUTCOMES[type(fact)])
                sends[key] = sends.get(key, 0) + 1
            elif isinstance(fact, Transitioned) and fact.trigger in _TIMER_TRIGGERS:
                timers += 1
        return cls(events, seconds, sends, timers, len(outcome.facts), len(outcome.sends))


# the `outcome` label of journey_sends: what became of a decision about a message
_SEND_OUTCOMES: dict[type[MessageFact], str] = {MessageSent: "sent", MessageDeferred: "deferred",
                                                MessageSuppressed: "suppressed", MessageEngaged: "engaged"}
_TIMER_TRIGGERS = frozenset({"after", "at"})


def timers_lag(store: Reads, now: datetime) -> float:
    """Seconds the oldest due wake-up has waited (0 when none is due, NaN while the store is down)."""
    def lag() -> float:
        _, earliest = store.overdue(now)
        return 0.0 if earliest is None else max(0.0, (now - earliest).total_seconds())
    return or_nan(lag)


def timers_due(store: Reads, now: datetime) -> float:
    """Users whose wake-up is due, for the gauge (NaN while the store is down)."""
    return or_nan(lambda: store.due_count(now))


def or_nan(read: Callable[[], float]) -> float:
    try:
        return float(read())
    except StoreUnavailable:
        return math.nan
