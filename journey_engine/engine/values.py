"""What the engine hands back: the sends to make (`SendMessage`), a rendered message, and the `Outcome` of
one call (trace records, sends, bandit learning)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..facts import Fact
from ..trace import Record, record


class SendMessage:
    """An effect: hand this rendered message to its channel, once (the key makes retries safe).

    Treat it as a value. A plain class rather than a frozen dataclass, like `Outcome`: compiled, a
    dataclass keeps a generated Python __init__, and one is made per send."""

    __slots__ = ("at", "channel", "context", "idempotency_key", "journey", "key", "locale", "message", "state", "user")

    def __init__(self, *, idempotency_key: str, at: datetime, user: str, journey: str, key: str | None, state: str,
                 message: str, channel: str, locale: str | None, context: dict[str, Any]) -> None:
        self.idempotency_key = idempotency_key
        self.at = at
        self.user = user
        self.journey = journey
        self.key = key
        self.state = state
        self.message = message
        self.channel = channel
        self.locale = locale
        self.context = context  # what the templates see, as it was when the send was decided

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in SEND_FIELDS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SendMessage) and self._values() == other._values()

    def __repr__(self) -> str:
        return "SendMessage(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in SEND_FIELDS) + ")"


# in the order of the constructor: the repr, equality, and the SQL outbox's payload
SEND_FIELDS = ("idempotency_key", "at", "user", "journey", "key", "state", "message", "channel", "locale", "context")


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderedMessage:
    subject: str | None
    title: str | None
    body: str
    url: str | None


class Outcome:
    """What one call did: facts (the trace, typed), sends to hand to channels, and bandit learning to persist.

    A plain class, not a dataclass: compiled (native.py), a dataclass keeps a generated Python __init__,
    and one Outcome is made per event and per wake-up."""

    __slots__ = ("bandit", "facts", "sends")

    def __init__(self) -> None:
        self.facts: list[Fact] = []
        self.sends: list[SendMessage] = []
        self.bandit: dict[tuple[str, str, str], tuple[int, int]] = {}

    @property
    def records(self) -> list[Record]:
        """The facts as SPEC §5 trace records (serialised on each read): what is logged and stored."""
        return [record(fact) for fact in self.facts]

    def __repr__(self) -> str:
        return f"Outcome(facts={self.facts!r}, sends={self.sends!r}, bandit={self.bandit!r})"

    def extend(self, other: Outcome) -> None:
        self.facts.extend(other.facts)
        if other.sends:
            self.sends.extend(other.sends)
        for arm, (sends, conversions) in other.bandit.items():
            self.learned(arm, sends, conversions)

    def learned(self, arm: tuple[str, str, str], sends: int, conversions: int) -> None:
        before = self.bandit.get(arm, (0, 0))
        self.bandit[arm] = (before[0] + sends, before[1] + conversions)
