"""Profile updates that come with an event: traits, subscription choices, and delivery and engagement
feedback on the sends (the best hour, the `choose: best` bandit, hard bounces)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ..events import Event
from ..facts import AddressSuppressed, MessageEngaged, SubscriptionChanged, SubscriptionUnknown
from ..policies import ADDRESS, resolve_zone
from ..profile import Profile
from .base import Base, text
from .plan import Run

SUBSCRIPTION_EVENTS = {"Subscribed": True, "Unsubscribed": False}
# Delivery and engagement come back as events with Segment's spec names (from the dispatcher, a
# provider's webhooks or the app), naming the send by `properties.send_key`, the idempotency key
# every channel hands its provider. Each maps to the column of the message report it counts in.
FEEDBACK = MappingProxyType({
    "Email Delivered": "delivered", "Email Opened": "opened", "Email Link Clicked": "clicked",
    "Email Bounced": "bounced", "Push Opened": "opened", "Push Notification Bounced": "bounced",
    "SMS Bounced": "bounced", "Message Clicked": "clicked", "Unsubscribed": "unsubscribed"})
BOUNCE_EVENTS = MappingProxyType({"email": "Email Bounced", "push": "Push Notification Bounced",
                                  "sms": "SMS Bounced"})
# When the user is reachable (the best hour learns from these), and what counts as the message
# working for the `choose: best` bandit (a click or a tap; opens are too noisy: mail clients prefetch).
_ENGAGED = frozenset({"Email Opened", "Email Link Clicked", "Push Opened", "Message Clicked"})
_REWARDED = frozenset({"Email Link Clicked", "Push Opened", "Message Clicked"})
_SOFT_BOUNCES = frozenset({"soft", "transient", "temporary"})
MAX_ENGAGEMENTS = 50
WORKSPACE_HOURS = ("*", "best_hour")  # the engagement-hour histogram of all users, kept as bandit counts


@dataclass(frozen=True, slots=True)
class SendRef:
    """A send named by its idempotency key: user:journey:key:entry:visit:message."""

    send_key: str
    journey: str
    key: str
    message: str


_MISSING = object()


class Feedback(Base):
    """What an event tells about the user besides its journeys."""

    @staticmethod
    def _set_traits(profile: Profile, traits: dict[str, Any]) -> bool:
        changed = any(profile.traits.get(k, _MISSING) != v for k, v in traits.items())
        if changed:
            # every profile has the same few trait names: one shared copy of each, not one per user
            profile.traits.update({sys.intern(k) if type(k) is str else k: v for k, v in traits.items()})
        return changed

    def _subscription(self, run: Run, event: Event, sent: SendRef | None) -> None:
        """`Subscribed` / `Unsubscribed` name a subscription, or come from a message that has one; an
        `Unsubscribed` that names none leaves every subscription, one naming an unknown one changes nothing
        (SPEC §3 item 15)."""
        choice = SUBSCRIPTION_EVENTS.get(event.name or "")
        if choice is None:
            return
        name = event.properties.get("subscription")
        if name is None and sent is not None:
            name = self.messages[sent.message].subscription
        if name is None and not choice:
            for every in self._subscribed_by_default:
                self._choose(run, every, choice)
            return
        if not isinstance(name, str) or name not in self._subscribed_by_default:  # `Subscribed` to nothing too
            known = tuple(sorted(self._subscribed_by_default))
            run.out.facts.append(SubscriptionUnknown(at=run.now, user=run.profile.user_id, subscription=name,
                                                     event=event.name, known=known))
            return
        self._choose(run, name, choice)

    def _choose(self, run: Run, name: str, choice: bool) -> None:
        if (run.profile.choices or {}).get(name) != choice:
            run.profile.subscriptions[name] = choice
            run.out.facts.append(SubscriptionChanged(at=run.now, user=run.profile.user_id, subscription=name,
                                                     subscribed=choice))
            run.changed = True

    def _feedback(self, run: Run, event: Event) -> SendRef | None:
        """A delivery or engagement event: traced against its send; teaches the best hour and the bandit;
        a hard bounce suppresses the address. Returns the send it names, if it names one of ours."""
        assert event.name is not None
        profile = run.profile
        sent = self._send_ref(profile, event.properties)
        if event.name in _ENGAGED:
            self._engaged(run, event.timestamp)
        if sent is not None and event.name in _REWARDED:
            self._reward(run, sent)
        kind = FEEDBACK[event.name]
        if kind == "bounced":
            self._bounced(run, event, sent)
        if sent is not None:
            channel = self.messages[sent.message].channel
            run.out.facts.append(MessageEngaged(
                at=run.now, user=profile.user_id, journey=sent.journey, key=sent.key or None, state=None,
                message=sent.message, channel=channel, event=kind, send_key=sent.send_key))
        return sent

    def _send_ref(self, profile: Profile, properties: dict[str, Any]) -> SendRef | None:
        """The send a feedback event names by `send_key` (`email_id` as Segment's email spec has it)."""
        send_key = properties.get("send_key") or properties.get("email_id")
        if not isinstance(send_key, str):
            return None
        head, sep, message = send_key.rpartition(":")
        parts = head.rsplit(":", 2)  # user:journey:key : entry : visit
        if not sep or message not in self.messages or len(parts) != 3:
            return None
        prefix = parts[0]
        for name in self._plan:
            mine = f"{profile.user_id}:{name}:"
            if prefix.startswith(mine):  # most events: this user's own send
                return SendRef(send_key, name, prefix[len(mine):], message)
        for name in self._plan:  # a send to an id since merged into this user
            at = prefix.find(f":{name}:")
            if at >= 0:
                return SendRef(send_key, name, prefix[at + len(name) + 2:], message)
        return None

    def _engaged(self, run: Run, at: datetime) -> None:
        profile = run.profile
        epochs = sorted([*(profile.engagements or ()), at.timestamp()])[-MAX_ENGAGEMENTS:]
        profile.engagements = epochs
        timezone = text(profile.traits.get("timezone")) or self.policies.timezone
        hour = at.astimezone(resolve_zone(timezone)).hour
        self._learn(run, *WORKSPACE_HOURS, f"{hour:02d}", 0, 1)

    def _reward(self, run: Run, sent: SendRef) -> None:
        """A click credits the `choose: best` arm that chose this message, once (a goal later does not)."""
        inst = run.profile.instances.get((sent.journey, sent.key))
        for i, (arm, _, state) in enumerate(inst.sent or () if inst is not None else ()):
            if arm == sent.message and (sent.journey, state) in self.bandits:
                assert inst is not None and inst.sent is not None
                del inst.sent[i]
                self._learn(run, sent.journey, state, arm, 0, 1)
                return

    def _bounced(self, run: Run, event: Event, sent: SendRef | None) -> None:
        props = event.properties
        kind = props.get("bounce_type", props.get("type"))
        if isinstance(kind, str) and kind.lower() in _SOFT_BOUNCES:
            return
        channel = self.messages[sent.message].channel if sent is not None else text(props.get("channel"))
        channel = channel or next((c for c, name in BOUNCE_EVENTS.items() if name == event.name), "email")
        field = ADDRESS.get(channel)
        address = props.get("address") or props.get(field or "") or run.profile.traits.get(field or "")
        if not isinstance(address, str) or not address or address in (run.profile.bounced or ()):
            return
        run.profile.bounced = (*(run.profile.bounced or ()), address)
        run.out.facts.append(AddressSuppressed(at=run.now, user=run.profile.user_id, channel=channel, address=address,
                                               reason="hard bounce"))
        run.changed = True
