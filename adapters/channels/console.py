"""A channel that prints one line per send instead of delivering it: the demo's default, and what
every unconfigured channel falls back to so a fresh checkout runs with no settings."""

from __future__ import annotations

import sys
from typing import TextIO

from journey_engine.ports import Delivery, DeliveryResult


class ConsoleChannel:
    """Prints `[channel] user journey/message -> to: headline (key=...)` to `stream` (stdout by
    default). `stands_in_for` names the real channel it replaces when it is a fallback."""

    name: str = "console"

    def __init__(self, stream: TextIO | None = None, *, stands_in_for: str | None = None) -> None:
        self.stream = stream
        self.stands_in_for = stands_in_for

    def send(self, delivery: Delivery) -> DeliveryResult:
        # Looked up at each send, not at construction, so a redirected sys.stdout is honoured.
        stream = self.stream if self.stream is not None else sys.stdout
        print(summary(delivery), file=stream, flush=True)
        return DeliveryResult(status="delivered", detail="printed to the console")

    def __repr__(self) -> str:
        return f"ConsoleChannel(stands_in_for={self.stands_in_for!r})"


def summary(delivery: Delivery, width: int = 80) -> str:
    headline = " ".join((delivery.subject or delivery.title or delivery.body).split())
    if len(headline) > width:
        headline = headline[: width - 3] + "..."
    to = delivery.to or "(inbox)"
    return (f"[{delivery.channel}] {delivery.user} {delivery.journey}/{delivery.message} -> {to}: "
            f"{headline} (key={delivery.key})")
