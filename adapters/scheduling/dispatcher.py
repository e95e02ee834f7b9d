"""The outbox dispatcher: committed sends are rendered, addressed and handed to their channel, with
retries (exponential backoff with jitter and a cap), a dead letter after the last attempt, and the
outcome in the trace.

Sends go out one at a time, each settled in a commit of its own as soon as its channel answered and
before the next is handed over: a kill at any instant repeats at most the one send whose channel call
was under way (with the same idempotency key), never a batch (the Outbox contract in ports.py).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from journey_engine import trace
from journey_engine.engine import BOUNCE_EVENTS, Engine, SendMessage
from journey_engine.events import Event
from journey_engine.policies import ADDRESS
from journey_engine.ports import LEASE_SECONDS, Channel, Delivery, DeliveryResult, Outbox, send_from_payload
from journey_engine.templates import TemplateError

log = logging.getLogger("journey.dispatch")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 8
    base: float = 30.0  # seconds before the second attempt
    cap: float = 6 * 3600.0  # never wait longer than this between attempts
    jitter: float = 0.2  # +-20%: many sends failing together do not retry together

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        raw = self.base * 2 ** (attempt - 1) * (1 + rng.uniform(-self.jitter, self.jitter))
        return min(self.cap, raw)


class Dispatcher:
    def __init__(self, store: Outbox, engine: Engine, channels: Mapping[str, Channel], *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), retry: RetryPolicy | None = None,
                 rng: random.Random | None = None, feedback: Callable[[list[Event]], Any] | None = None,
                 lease: float = LEASE_SECONDS) -> None:
        """`feedback` takes events back to the engine: a hard bounce, so the address is suppressed.
        `lease`: seconds a claim keeps a send from other dispatchers; a channel call must take less than half."""
        self.store, self.engine, self.channels, self.clock = store, engine, channels, clock
        self.retry = retry or RetryPolicy()
        self.rng = rng or random.Random()
        self.feedback = feedback
        self.lease = lease

    def run_once(self, limit: int = 200) -> dict[str, int]:
        """Claim up to `limit` due sends and hand them to their channels one at a time, each settled as
        soon as its channel answered; return how many ended in each status."""
        rows = self.store.claim_outbox(self.clock(), limit, self.lease)
        counts: dict[str, int] = {}
        for i, row in enumerate(rows):
            now = self.clock()
            if now.timestamp() > row["next_attempt_at"] - self.lease / 2:  # too little lease left for a call
                self._give_back(rows[i:], now)
                break
            # the batch's last settle is flushed to disk, the ones before with it: a power cut repeats a batch at most
            status = self._dispatch(row, now, durable=i == len(rows) - 1)
            counts[status] = counts.get(status, 0) + 1
        return counts

    def _dispatch(self, row: dict[str, Any], now: datetime, *, durable: bool) -> str:
        """One send: its channel call, then its outcome and trace record committed before anything else
        happens, so that a kill from here on can repeat this send and no other."""
        send = send_from_payload(row["payload"])
        attempt = row["attempts"] + 1
        expiry = self.engine.expiries.get(send.message)
        if expiry is not None and now - send.at > expiry:  # late is not always better than never
            update, record = self._expired(row, send, attempt, now, expiry)
        else:
            result = self._attempt(send, attempt)
            update, record = self._settle(row, send, attempt, result, now)
        records = [] if record is None else [record]
        if self.store.settle_outbox([update], records, durable=durable):  # a late answer (lease lost) is dropped
            self._bounces(records, now)
        return str(update["status"])

    def _give_back(self, rows: list[dict[str, Any]], now: datetime) -> None:
        """Claimed sends not handed over: due again at once, for whichever dispatcher claims first."""
        self.store.settle_outbox([{"key": r["key"], "token": r["token"], "status": "pending",
                                   "attempts": r["attempts"], "next_attempt_at": now.timestamp(),
                                   "last_error": r["last_error"]} for r in rows], [])

    def _bounces(self, records: list[dict[str, Any]], now: datetime) -> None:
        """A hard bounce goes back to the engine as the event a provider would send: `Email Bounced`."""
        events = [Event(type="track", user_id=r["user"], name=BOUNCE_EVENTS[r["channel"]], timestamp=now,
                        message_id=f"bounce:{r['send_key']}",
                        properties={"send_key": r["send_key"], "bounce_type": "hard", "channel": r["channel"],
                                    "address": r.get("address")})
                  for r in records if r.get("suppress_address") and r["channel"] in BOUNCE_EVENTS]
        if events and self.feedback is not None:
            try:
                self.feedback(events)
            except Exception:  # the engine is behind: the next send to the address fails and says it again
                log.warning("could not report %d bounce(s) to the engine", len(events), exc_info=True)

    def _attempt(self, send: SendMessage, attempt: int) -> DeliveryResult:
        channel = self.channels.get(send.channel)
        if channel is None:
            return DeliveryResult(status="failed", detail=f"no channel `{send.channel}` is configured")
        try:
            delivery = self._delivery(send, attempt)
        except TemplateError as exc:
            return DeliveryResult(status="failed", detail=f"template: {exc}")
        if delivery.to is None and send.channel in ADDRESS:
            return DeliveryResult(status="failed", detail=f"the user has no traits.{ADDRESS[send.channel]}")
        try:
            return channel.send(delivery)
        except Exception as exc:  # a channel bug or an unexpected error: try again later
            log.exception("channel %s raised", send.channel)
            return DeliveryResult(status="retry", detail=f"{type(exc).__name__}: {exc}")

    def _delivery(self, send: SendMessage, attempt: int) -> Delivery:
        rendered = self.engine.render(send)
        traits = send.context.get("traits", {})
        field = ADDRESS.get(send.channel)
        to = traits.get(field) if field else (rendered.url if send.channel == "webhook" else None)
        return Delivery(key=send.idempotency_key, user=send.user, journey=send.journey, message=send.message,
                        channel=send.channel, to=to if isinstance(to, str) and to else None,
                        subject=rendered.subject, title=rendered.title, body=rendered.body, url=rendered.url,
                        locale=send.locale, attempt=attempt,
                        data={"user_id": send.user, "traits": traits,
                              "journey": send.context.get("journey", {})})

    @staticmethod
    def _expired(row: dict[str, Any], send: SendMessage, attempt: int, now: datetime,
                 expiry: timedelta) -> tuple[dict[str, Any], dict[str, Any]]:
        """A send still in the outbox more than its expiry after it was decided (the dispatcher was down or
        retrying): never handed over, traced like the engine's own expired sends (SPEC §3 item 10)."""
        why = f"decided at {trace.iso(send.at)}, more than {expiry} before {trace.iso(now)}"
        update = {"key": row["key"], "token": row["token"], "attempts": attempt - 1, "status": "expired",
                  "last_error": why, "next_attempt_at": now.timestamp()}
        record = trace.message("message_suppressed", now, send.user, send.journey, send.key, send.state,
                               send.message, send.channel, send.locale, reason="expired", due=trace.iso(send.at),
                               why=why, send_key=send.idempotency_key)
        return update, record

    def _settle(self, row: dict[str, Any], send: SendMessage, attempt: int, result: DeliveryResult,
                now: datetime) -> tuple[dict[str, Any], dict[str, Any] | None]:
        base = {"key": row["key"], "token": row["token"], "attempts": attempt, "last_error": None,
                "next_attempt_at": now.timestamp()}
        fields = dict(send_key=send.idempotency_key, detail=result.detail, attempt=attempt)
        kind = None
        if result.status == "delivered":
            update = {**base, "status": "delivered"}
            kind = "message_delivered"
        elif result.status == "retry" and attempt < self.retry.attempts:
            wait = self.retry.delay(attempt, self.rng)
            update = {**base, "status": "pending", "last_error": result.detail,
                      "next_attempt_at": now.timestamp() + wait}
        else:
            update = {**base, "status": "dead", "last_error": result.detail}
            kind = "message_failed"
            if result.suppress_address:
                fields["suppress_address"] = True
                address = send.context.get("traits", {}).get(ADDRESS.get(send.channel, ""))
                if isinstance(address, str):
                    fields["address"] = address
        record = None if kind is None else trace.message(
            kind, now, send.user, send.journey, send.key, send.state, send.message, send.channel, send.locale,
            **fields)
        return update, record
