"""The engine: (profile, input, now) -> the profile moved on, plus trace records and sends.

Inputs are an event, a wake-up (timers, deferred sends, time-driven segments) or an alias merge.
The engine mutates the profile in place (a million users must fit) and never reads the wall clock.
Order of work for one event (SPEC §3 item 2): traits and metrics, segments, then per journey in
name order: exit criteria, goal, the current state's transitions, entry.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from . import clock, trace
from .compiler import CompiledJourney, CompiledTransition, CompiledTrigger, CompiledWorkspace
from .events import Event
from .model import DEFAULT_EXPIRY, AttributeTime, Choose, Message, State, Transition, clock_minutes
from .policies import ADDRESS, Decision, decide, resolve_zone
from .policies import best_hour as learned_hour
from .profile import UNSETTLED, Deferred, Instance, InstanceKey, Profile
from .rules import RULE_ERRORS
from .selection import choose_best, choose_first, choose_random, split_bandit, split_random
from .trace import Record

MAX_CHAIN = 100
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
MIN_WORKSPACE_ENGAGEMENTS = 20  # fewer than this and the workspace's hour is noise: use the default


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
    """What one call did: trace records, sends to hand to channels, and bandit learning to persist.

    A plain class, not a dataclass: compiled (native.py), a dataclass keeps a generated Python __init__,
    and one Outcome is made per event and per wake-up."""

    __slots__ = ("bandit", "records", "sends")

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.sends: list[SendMessage] = []
        self.bandit: dict[tuple[str, str, str], tuple[int, int]] = {}

    def __repr__(self) -> str:
        return f"Outcome(records={self.records!r}, sends={self.sends!r}, bandit={self.bandit!r})"

    def extend(self, other: Outcome) -> None:
        self.records.extend(other.records)
        if other.sends:
            self.sends.extend(other.sends)
        for arm, (sends, conversions) in other.bandit.items():
            self.learned(arm, sends, conversions)

    def learned(self, arm: tuple[str, str, str], sends: int, conversions: int) -> None:
        before = self.bandit.get(arm, (0, 0))
        self.bandit[arm] = (before[0] + sends, before[1] + conversions)


class _Run:
    """The working set of one call: the profile, the clock, the evaluation scope, what happened."""

    __slots__ = ("changed", "current", "due", "entered", "event", "made", "now", "out", "profile", "scope")

    def __init__(self, profile: Profile, now: datetime, event: Event | None = None) -> None:
        self.profile = profile
        self.now = now
        self.due = now  # when the step at work should have happened: its sends expire from then ...
        self.current = now  # ... against the time it really is (later than `now` when catching up)
        self.event = event
        self.out = Outcome()
        self.changed = False
        self.entered: set[str] = set()
        self.made: list[Deferred] | None = None  # sends deferred by this call: leaving their state now keeps them
        # `metrics` reads the stored values, the rule accessor supplies defaults; `segments` is replaced
        # by SegmentBook.evaluate whenever membership changes (it is a tuple)
        self.scope: dict[str, Any] = {"traits": profile.traits, "metrics": profile.metric_values,
                                      "segments": profile.segments, "user_id": profile.user_id}
        if event is not None:
            self.scope["event"] = {"name": event.name, "properties": event.properties,
                                   "timestamp": event.timestamp}
            self.scope["properties"] = event.properties


Stats = dict[str, tuple[int, int]]
_DETAIL = {"segment": "rule", "if": "rule", "always": "rule", "after": "after", "at": "at"}


@dataclass(frozen=True, slots=True)
class _StatePlan:
    """One state's transitions sorted by how they fire, once at load (the hot path never re-sorts).

    The engine moves an instance by assigning the target state: the journey's `transitions` machine
    (cj.machine, built at load, no callbacks) checks the graph there, and firing its trigger would do
    the same assignment for ~7 µs per move (tests/test_fastpaths.py checks every move against it).
    """

    spec: State
    checks: tuple[CompiledTransition, ...]  # on / segment / if / always, in file order
    timers: tuple[tuple[int, Transition], ...]  # after / at, with their index
    clock_rules: tuple[CompiledTransition, ...]  # `if` rules that read $now: they need a wake-up
    candidates: tuple[str, ...]  # the messages `send` names
    choose: str | None  # first / random / best, or None: send every eligible candidate


@dataclass(frozen=True, slots=True)
class _Plan:
    """A compiled journey with what the engine asks of it on every input, precomputed."""

    cj: CompiledJourney
    name: str
    key_prop: str | None
    states: dict[str, _StatePlan]
    reads_journey: bool  # exits, goal or transitions read `journey.*`: _check must set the scope
    ikey: InstanceKey  # the unkeyed instance's key, one tuple shared by every profile
    entry_on: str | None
    entry_segment: str | None
    exits_on: dict[str, tuple[CompiledTrigger, ...]]  # exit criteria an event of that name may meet
    exits_changed: tuple[CompiledTrigger, ...]  # segment and rule exits: whenever something changed
    clock_triggers: tuple[CompiledTrigger, ...]  # exit and goal rules that read $now: they need a wake-up
    clock_entry: CompiledTrigger | None  # an `if:` entry that reads $now, likewise for users not in it

    @classmethod
    def of(cls, cj: CompiledJourney, messages: dict[str, Message]) -> _Plan:
        states = {}
        for name, spec in cj.journey.states.items():
            compiled = cj.transitions[name]
            states[name] = _StatePlan(
                spec=spec,
                checks=tuple(t for t in compiled if t.kind not in ("after", "at")),
                timers=tuple((i, t) for i, t in enumerate(spec.transitions) if t.kind in ("after", "at")),
                clock_rules=tuple(t for t in compiled if t.rule is not None and t.rule.now and t.kind == "if"),
                # a send list is tried in descending priority, list order on a tie (SPEC §3 item 11)
                candidates=tuple(spec.candidates) if isinstance(spec.send, Choose) else tuple(
                    sorted(spec.candidates, key=lambda m: -messages[m].priority if m in messages else 0)),
                choose=spec.send.choose if isinstance(spec.send, Choose) else None)
        triggers = (*cj.exits, *((cj.goal,) if cj.goal else ()))
        rules = [t.rule for t in triggers] + [t.rule for ts in cj.transitions.values() for t in ts]
        return cls(cj=cj, name=cj.name, key_prop=cj.journey.entry.key, states=states,
                   reads_journey=any(r is not None and r.journey for r in rules), ikey=(cj.name, ""),
                   entry_on=cj.entry.on, entry_segment=cj.entry.segment,
                   exits_on={e.on: tuple(x for x in cj.exits if x.on == e.on) for e in cj.exits if e.on},
                   exits_changed=tuple(x for x in cj.exits if x.on is None),
                   clock_triggers=tuple(t for t in triggers if t.on is None and t.rule is not None and t.rule.now),
                   clock_entry=cj.entry if cj.entry.on is None and cj.entry.segment is None
                   and cj.entry.rule is not None and cj.entry.rule.now else None)

    def exits(self, run: _Run, event: Event | None) -> tuple[CompiledTrigger, ...]:
        """The exit criteria that may fire on this input (any one that does ends the instance)."""
        on = self.exits_on.get(event.name) if event is not None and event.name is not None else None
        if not run.changed:
            return on or ()
        return self.exits_changed + on if on else self.exits_changed

    def may_enter(self, run: _Run, event: Event | None) -> bool:
        """The cheap half of entry: the trigger kind matches this input (the rest is in Engine._enter)."""
        if self.entry_on is not None:
            return event is not None and event.name == self.entry_on
        if self.entry_segment is not None:
            return self.entry_segment in run.entered
        return run.changed


class Engine:
    """Runs a compiled workspace. Bandit statistics are the only state it keeps itself."""

    def __init__(self, compiled: CompiledWorkspace, *, seed: int = 0,
                 send_expiry: timedelta | None = DEFAULT_EXPIRY) -> None:
        """`send_expiry` is the service's default for how late a send may go (None: never); a workspace's
        `policies.expires` and a message's `expires` take precedence."""
        self.cw = compiled
        self.seed = seed
        self.policies = compiled.workspace.policies
        self.messages = compiled.workspace.messages
        default = self.policies.expires if "expires" in self.policies.model_fields_set else send_expiry
        self.expiries = {name: msg.expiry(default) for name, msg in self.messages.items()}  # None: never
        # what a transactional message is decided under: no quiet hours, no caps
        self._transactional = self.policies.model_copy(update={"quiet_hours": None, "frequency_caps": []})
        self.bandits: dict[tuple[str, str], Stats] = {}
        self._plans = tuple(_Plan.of(cj, self.messages) for cj in compiled.journeys.values())
        self._plan = {p.name: p for p in self._plans}
        self._clock_entries = any(p.clock_entry for p in self._plans)
        self._clock_rules = self._clock_entries or any(
            p.clock_triggers or any(sp.clock_rules for sp in p.states.values()) for p in self._plans)
        self._defaults = MappingProxyType(compiled.metrics.defaults)  # shared by every profile, read-only
        self._ledger_span = max((c.per for c in self.policies.frequency_caps), default=timedelta(0))
        self._subscribed_by_default = {name: sub.default == "subscribed"
                                       for name, sub in compiled.workspace.subscriptions.items()}

    # --- the three inputs ---------------------------------------------------------------------

    def new_profile(self, user_id: str) -> Profile:
        return Profile(user_id, self._defaults)

    def apply(self, profile: Profile, event: Event, now: datetime) -> Outcome:
        """One event for this user (already deduplicated by the caller)."""
        run = _Run(profile, now, event)
        fresh = _blank(profile)
        traits_changed = False
        changed_metrics = self.cw.metrics.refresh(profile, now)
        if event.traits:
            traits_changed = self._set_traits(profile, event.traits)
        if event.name is not None:
            changed_metrics |= self.cw.metrics.apply(profile, event, now, run.scope)
            sent = self._feedback(run, event) if event.name in FEEDBACK else None
            self._subscription(run, event, sent)
        if fresh:  # a user exists from their first event: every segment is evaluated (SPEC §3 item 13)
            self._segments(run, metrics=self.cw.metrics.metrics.keys(), traits=True, timed=True)
            run.changed = True
        else:
            self._segments(run, metrics=changed_metrics, traits=traits_changed, timed=False)
        run.changed = bool(changed_metrics or traits_changed or run.entered or run.changed)
        if not event.backfill:  # a backfill updates the profile but starts and moves no journey
            self._journeys(run, event)
        self._settle(run)
        return run.out

    def wake(self, profile: Profile, now: datetime, *, current: datetime | None = None) -> Outcome:
        """Everything that falls due for this user at `now`: windows, `for:`, timers, deferred sends.

        `current` is the time it really is when that is later than `now`: a service catching up after it
        was down wakes users at their due times, and what they would be sent expires by `current`."""
        run = _Run(profile, now)
        if current is not None and current > now:
            run.current = current
        if profile.wake_at is not None and profile.wake_at < clock.epoch(now):
            run.due = datetime.fromtimestamp(profile.wake_at, UTC)  # woken late
        self._wake(run)
        self._settle(run)
        return run.out

    def _wake(self, run: _Run) -> None:
        profile = run.profile
        changed = self.cw.metrics.refresh(profile, run.now)
        self._segments(run, metrics=changed, traits=False, timed=True)
        # time alone flips only rules that read $now; the rest need a metric or segment to have moved
        run.changed = run.changed or bool(changed) or self._reads_clock(profile)
        if profile.deferred:
            self._deferred(run)
        groups = _by_journey(profile) if profile.instances else _NO_GROUPS
        for plan in self._plans:
            instances = groups.get(plan.name)
            if instances:
                for inst in instances:
                    if not self._fire_timer(run, plan, inst):
                        self._check(run, plan, inst, None)
            if plan.entry_on is None and (plan.entry_segment is None or plan.entry_segment in run.entered):
                self._enter(run, plan.cj, None)  # a segment entry, or a rule entry if something changed
        run.entered.clear()

    def _reads_clock(self, profile: Profile) -> bool:
        """Whether a rule that reads `$now` matters to this user now: of their current states, their
        journeys' exits and goals, or an `if:` entry."""
        if not self._clock_rules:
            return False
        if self._clock_entries:
            return True
        for (name, _), inst in profile.instances.items():
            plan = self._plan[name]
            if plan.clock_triggers or plan.states[inst.state].clock_rules:
                return True
        return False

    def merge(self, into: Profile, other: Profile, now: datetime) -> Outcome:
        """alias: fold the anonymous profile `other` into `into`, journeys and metrics included."""
        run = _Run(into, now)
        run.out.records.append(trace.other("alias_merged", now, into.user_id, previous_id=other.user_id))
        for name in other.segments:  # the anonymous id ceases to exist: its memberships end
            run.out.records.append(trace.segment("segment_left", now, other.user_id, name))
        into.traits.update({k: v for k, v in other.traits.items() if k not in into.traits})
        self.cw.metrics.merge(into, other, now)
        taken = [key for key in other.instances if key not in into.instances]
        for key in taken:
            into.add_instance(key, other.instances[key])
        # pending sends come along with their runs, and those of runs already ended (a final state's)
        moved = [d for d in other.deferred or () if (d.journey, d.key) in taken or (d.journey, d.key) not in
                 other.instances or other.instances[(d.journey, d.key)].run != d.run]
        into.deferred = (into.deferred or []) + moved or None
        entries = other.entries or ()
        for i in range(0, len(entries), 3):
            key, at = (entries[i], entries[i + 1]), entries[i + 2]
            prior = into.last_entry(key)
            into.note_entry(key, at if prior is None else max(prior, at))
        into.ledger = tuple(sorted((*(into.ledger or ()), *(other.ledger or ())))) or None
        for name, choice in (other.choices or {}).items():
            into.subscriptions.setdefault(name, choice)
        into.engagements = sorted((into.engagements or []) + (other.engagements or []))[-MAX_ENGAGEMENTS:] or None
        into.bounced = tuple(dict.fromkeys((*(into.bounced or ()), *(other.bounced or ())))) or None
        # whether an `if:` entry rule held stays the known user's own: one the merge makes true enters them, as
        # a segment the merge makes them enter does (README reading 10), as far as `reentry` allows
        self._segments(run, metrics=set(self.cw.metrics.metrics), traits=True, timed=True)
        run.changed = True
        self._journeys(run, None)
        self._settle(run)
        return run.out

    def enroll(self, profile: Profile, now: datetime, journeys: Iterable[str]) -> Outcome:
        """A journey loaded for the first time enrolls users already in its entry segment, unless they
        have been through it already (a store that ran it before it learned to record enrollment)."""
        run = _Run(profile, now)
        run.changed = True  # the journey is what changed: its entry is checked as on a change
        been = set((profile.entries or ())[::3])
        for name in journeys:
            cj = self.cw.journeys[name]
            if cj.entry.segment in profile.segments and name not in been:
                run.entered.add(cj.entry.segment)
                self._enter(run, cj, None)
                run.entered.discard(cj.entry.segment)
        self._settle(run)
        return run.out

    # --- profile updates ----------------------------------------------------------------------

    @staticmethod
    def _set_traits(profile: Profile, traits: dict[str, Any]) -> bool:
        changed = any(profile.traits.get(k, _MISSING) != v for k, v in traits.items())
        if changed:
            # every profile has the same few trait names: one shared copy of each, not one per user
            profile.traits.update({sys.intern(k) if type(k) is str else k: v for k, v in traits.items()})
        return changed

    def _subscription(self, run: _Run, event: Event, sent: _SendRef | None) -> None:
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
            run.out.records.append(trace.other("unknown_subscription", run.now, run.profile.user_id,
                                               subscription=name, event=event.name,
                                               known=sorted(self._subscribed_by_default)))
            return
        self._choose(run, name, choice)

    def _choose(self, run: _Run, name: str, choice: bool) -> None:
        if (run.profile.choices or {}).get(name) != choice:
            run.profile.subscriptions[name] = choice
            run.out.records.append(trace.other("subscription_changed", run.now, run.profile.user_id,
                                               subscription=name, subscribed=choice))
            run.changed = True

    def _feedback(self, run: _Run, event: Event) -> _SendRef | None:
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
            run.out.records.append(trace.message(
                "message_engaged", run.now, profile.user_id, sent.journey, sent.key or None, None, sent.message,
                channel, None, event=kind, send_key=sent.send_key))
        return sent

    def _send_ref(self, profile: Profile, properties: dict[str, Any]) -> _SendRef | None:
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
                return _SendRef(send_key, name, prefix[len(mine):], message)
        for name in self._plan:  # a send to an id since merged into this user
            at = prefix.find(f":{name}:")
            if at >= 0:
                return _SendRef(send_key, name, prefix[at + len(name) + 2:], message)
        return None

    def _engaged(self, run: _Run, at: datetime) -> None:
        profile = run.profile
        epochs = sorted([*(profile.engagements or ()), at.timestamp()])[-MAX_ENGAGEMENTS:]
        profile.engagements = epochs
        timezone = _str(profile.traits.get("timezone")) or self.policies.timezone
        hour = at.astimezone(resolve_zone(timezone)).hour
        self._learn(run, *WORKSPACE_HOURS, f"{hour:02d}", 0, 1)

    def _reward(self, run: _Run, sent: _SendRef) -> None:
        """A click credits the `choose: best` arm that chose this message, once (a goal later does not)."""
        inst = run.profile.instances.get((sent.journey, sent.key))
        for i, (arm, _, state) in enumerate(inst.sent or () if inst is not None else ()):
            if arm == sent.message and (sent.journey, state) in self.bandits:
                assert inst is not None and inst.sent is not None
                del inst.sent[i]
                self._learn(run, sent.journey, state, arm, 0, 1)
                return

    def _bounced(self, run: _Run, event: Event, sent: _SendRef | None) -> None:
        props = event.properties
        kind = props.get("bounce_type", props.get("type"))
        if isinstance(kind, str) and kind.lower() in _SOFT_BOUNCES:
            return
        channel = self.messages[sent.message].channel if sent is not None else _str(props.get("channel"))
        channel = channel or next((c for c, name in BOUNCE_EVENTS.items() if name == event.name), "email")
        field = ADDRESS.get(channel)
        address = props.get("address") or props.get(field or "") or run.profile.traits.get(field or "")
        if not isinstance(address, str) or not address or address in (run.profile.bounced or ()):
            return
        run.profile.bounced = (*(run.profile.bounced or ()), address)
        run.out.records.append(trace.other("address_suppressed", run.now, run.profile.user_id, channel=channel,
                                           address=address, reason="hard bounce"))
        run.changed = True

    def _segments(self, run: _Run, *, metrics: AbstractSet[str], traits: bool, timed: bool) -> None:
        run.scope.pop("journey", None)  # membership is per user: never read a journey instance's leftovers
        for name, entered in self.cw.segments.evaluate(run.profile, run.scope, run.now, metrics=metrics,
                                                       traits=traits, timed=timed):
            kind = "segment_entered" if entered else "segment_left"
            run.out.records.append(trace.segment(kind, run.now, run.profile.user_id, name))
            if entered:
                run.entered.add(name)
            run.changed = True

    # --- journeys -----------------------------------------------------------------------------

    def _journeys(self, run: _Run, event: Event | None) -> None:
        groups = _by_journey(run.profile) if run.profile.instances else _NO_GROUPS
        for plan in self._plans:
            instances = groups.get(plan.name)
            if instances:
                key_prop = plan.key_prop
                routed = None
                if event is not None and key_prop is not None and key_prop in event.properties:
                    routed = str(event.properties[key_prop])
                for inst in instances:
                    if routed is None or inst.key == routed:
                        self._check(run, plan, inst, event)
            if plan.may_enter(run, event):
                self._enter(run, plan.cj, event)  # the rest of the entry checks

    def _check(self, run: _Run, plan: _Plan, inst: Instance, event: Event | None) -> None:
        """Exit criteria, then the goal, then the current state's transitions."""
        cj = plan.cj
        if plan.reads_journey:
            self._journey_scope(run, inst)
        for criterion in plan.exits(run, event):
            if self._fires(run, criterion, event, edge=False):
                self._exit(run, cj, inst, "exit")
                return
        if cj.goal is not None and self._fires(run, cj.goal, event, edge=False):
            self._goal(run, cj, inst)
            if cj.journey.goal is not None and cj.journey.goal.exit:
                self._exit(run, cj, inst, "goal")
                return
        transition = self._first(run, plan.states[inst.state].checks, event, arrival=False)
        if transition is not None:
            self._move(run, cj, inst, transition)

    def _fires(self, run: _Run, trigger: CompiledTrigger, event: Event | None, *, edge: bool) -> bool:
        if trigger.on is not None:
            if event is None or event.name != trigger.on:
                return False
        elif trigger.segment is not None:
            if not run.changed or trigger.segment not in (run.entered if edge else run.profile.segments):
                return False
        elif not run.changed:
            return False
        return trigger.rule is None or trigger.rule(run.scope, run.now)

    def _first(self, run: _Run, transitions: tuple[CompiledTransition, ...], event: Event | None, *,
               arrival: bool) -> CompiledTransition | None:
        """The first transition that fires now; timers fire elsewhere."""
        for t in transitions:
            kind = t.kind
            if kind == "on":
                if event is not None and event.name == t.on and (t.rule is None or t.rule(run.scope, run.now)):
                    return t
            elif kind == "segment":
                if (arrival or run.changed) and t.segment in run.profile.segments and (
                        t.rule is None or t.rule(run.scope, run.now)):
                    return t
            elif kind == "if":
                if (arrival or run.changed) and t.rule is not None and t.rule(run.scope, run.now):
                    return t
            elif kind == "always":
                return t
        return None

    def _journey_scope(self, run: _Run, inst: Instance) -> None:
        run.scope["journey"] = {"entered_at": inst.entered_at, "state_entered_at": inst.state_entered_at,
                                "key": inst.key or None, "data": inst.data}

    def _enter(self, run: _Run, cj: CompiledJourney, event: Event | None) -> None:
        entry = cj.entry
        if entry.on is not None:
            if event is None or event.name != entry.on:
                return
        elif entry.segment is not None:
            if entry.segment not in run.entered:
                return
        elif not run.changed or not self._became_true(run, cj):
            return
        key = ""
        if entry.on is not None and event is not None and entry.on == event.name and cj.journey.entry.key:
            value = event.properties.get(cj.journey.entry.key)
            if value is None:
                return
            key = str(value)
        ikey = self._plan[cj.name].ikey if not key else (cj.name, key)
        if ikey in run.profile.instances or not self._may_reenter(run, cj, ikey):
            return
        run.scope.pop("journey", None)
        if not self._fires(run, entry, event, edge=True):
            return
        data = dict(event.properties) if event is not None and entry.on is not None else {}
        run_id = int(clock.epoch(run.now) * 1000)
        last = run.profile.last_entry(ikey)
        if last is not None and int(last * 1000 + 0.01) >= run_id:  # a second entry in the same millisecond
            run_id = int(last * 1000 + 0.01) + 1  # is a run of its own (SPEC §3 item 12)
        inst = Instance(journey=cj.name, version=cj.version, key=key, state=cj.journey.initial,
                        entered_at=run.now, data=data, holdout=self._held_out(cj, run.profile.user_id), run=run_id)
        run.profile.add_instance(ikey, inst)
        run.profile.note_entry(ikey, inst.entry_epoch())
        extra = {"holdout": True} if inst.holdout else {}
        run.out.records.append(trace.journey_entered(run.now, run.profile.user_id, cj.name, key or None,
                                                     inst.state, **extra))
        if not self._leaves_at_once(run, cj, inst):
            self._arrive(run, cj, inst)

    def _leaves_at_once(self, run: _Run, cj: CompiledJourney, inst: Instance) -> bool:
        """An entrant who already meets a segment or rule exit criterion, or the goal, leaves at once,
        before any message: exits and goals are otherwise checked when something changes, and entering
        is not a change of the user's."""
        self._journey_scope(run, inst)
        for criterion in self._plan[cj.name].exits_changed:
            if self._holds(run, criterion):
                self._exit(run, cj, inst, "exit")
                return True
        goal = cj.goal
        if goal is None or goal.on is not None or not self._holds(run, goal):
            return False
        self._goal(run, cj, inst)
        if cj.journey.goal is not None and cj.journey.goal.exit:
            self._exit(run, cj, inst, "goal")
            return True
        return False

    @staticmethod
    def _holds(run: _Run, trigger: CompiledTrigger) -> bool:
        """A segment or rule trigger's condition, now (no edge: being in the segment is enough)."""
        if trigger.segment is not None and trigger.segment not in run.profile.segments:
            return False
        return trigger.rule is None or trigger.rule(run.scope, run.now)

    @staticmethod
    def _became_true(run: _Run, cj: CompiledJourney) -> bool:
        """An `if:` entry fires when its rule becomes true, not on every change while it holds: the
        profile remembers which entry rules held when last checked."""
        assert cj.entry.rule is not None
        run.scope.pop("journey", None)
        holds = cj.entry.rule(run.scope, run.now)
        held = run.profile.held or ()
        if holds == (cj.name in held):
            return False
        run.profile.held = (*held, cj.name) if holds else tuple(n for n in held if n != cj.name) or None
        return holds

    def _may_reenter(self, run: _Run, cj: CompiledJourney, ikey: InstanceKey) -> bool:
        last = run.profile.last_entry(ikey)
        if last is None:
            return True
        policy = cj.journey.entry.reentry
        if policy == "never":
            return False
        if policy == "always":
            return True
        return run.now - datetime.fromtimestamp(last, UTC) >= policy.after  # exact: see Profile.wake

    def _held_out(self, cj: CompiledJourney, user: str) -> bool:
        if cj.journey.holdout <= 0:
            return False
        digest = hashlib.sha1(f"{cj.name}:{user}".encode()).digest()
        return int.from_bytes(digest[:4], "big") / 2**32 < cj.journey.holdout

    def _move(self, run: _Run, cj: CompiledJourney, inst: Instance, t: CompiledTransition,
              trigger: str | None = None) -> None:
        """Leave the state because of an event, a rule turning true or a timer: the sends it deferred
        before this call are cancelled (SPEC §3 item 10), then arrive in the next."""
        if run.profile.deferred:
            self._cancel(run, inst, "left_state", inst.visit)
        src = inst.state
        inst.state = t.to  # see _StatePlan: the same move as cj.machine's, without its 7 µs
        detail = f"event:{t.on}" if t.kind == "on" else _DETAIL[t.kind]
        run.out.records.append(trace.transition(run.now, run.profile.user_id, cj.name, inst.key or None, src,
                                                inst.state, trigger or detail))
        self._arrive(run, cj, inst)

    def _arrive(self, run: _Run, cj: CompiledJourney, inst: Instance) -> None:
        """Enter inst.state: send, start timers, then follow splits, true rules and fallbacks at once."""
        states = self._plan[cj.name].states
        for _ in range(MAX_CHAIN):
            plan = states[inst.state]
            state = plan.spec
            inst.visit += 1
            inst.state_entered_at = run.now
            self._journey_scope(run, inst)
            self._send_state(run, cj, inst, plan)
            if (cj.name, inst.key) not in run.profile.instances:
                return
            if state.final:
                self._exit(run, cj, inst, "final")
                return
            inst.timers = tuple(self._timers(run, plan)) if plan.timers else ()
            if state.split is not None:
                self._split(run, cj, inst)
                continue
            t = self._first(run, plan.checks, None, arrival=True)
            if t is None:
                return
            src = inst.state
            inst.state = t.to
            run.out.records.append(trace.transition(run.now, run.profile.user_id, cj.name, inst.key or None,
                                                    src, inst.state, "rule"))
        run.out.records.append(trace.other("cycle", run.now, run.profile.user_id, journey=cj.name,
                                           key=inst.key or None, state=inst.state,
                                           error=f"more than {MAX_CHAIN} transitions in a row: a loop of "
                                                 "states whose rules are all true; stopped here"))

    def _split(self, run: _Run, cj: CompiledJourney, inst: Instance) -> None:
        split = cj.journey.states[inst.state].split
        assert split is not None
        paths = [(p.to, p.weight) for p in split.paths]
        rng = self._rng(run, inst, "split")
        if split.strategy == "bandit":
            stats = self.bandits.setdefault((cj.name, inst.state), {})
            target = split_bandit(paths, {k[2:]: v for k, v in stats.items() if k.startswith("->")}, rng)
            self._learn(run, cj.name, inst.state, "->" + target, 1, 0)
            _attribute(inst, "->" + target, run.now)
        else:
            target = split_random(paths, rng)
        src = inst.state
        inst.state = target
        run.out.records.append(trace.transition(run.now, run.profile.user_id, cj.name, inst.key or None, src,
                                                inst.state, "split"))

    def _exit(self, run: _Run, cj: CompiledJourney, inst: Instance, reason: str) -> None:
        profile = run.profile
        ikey = self._plan[cj.name].ikey if not inst.key else (cj.name, inst.key)  # the shared tuple if unkeyed
        profile.remove_instance(ikey)
        profile.note_entry(ikey, inst.entry_epoch())
        inst.timers = ()
        if reason != "final" and profile.deferred:  # a final state's deferred sends still go (SPEC §3 item 10)
            self._cancel(run, inst, "left_journey", None)
        run.out.records.append(trace.journey_exited(run.now, profile.user_id, cj.name, inst.key or None, reason,
                                                    state=inst.state))

    def _cancel(self, run: _Run, inst: Instance, reason: str, visit: int | None) -> None:
        """Drop the deferred sends of this run (of one state visit, when given) made before this call."""
        profile = run.profile
        kept = []
        for d in profile.deferred or ():
            if (d.journey == inst.journey and d.key == inst.key and d.run == inst.run
                    and (visit is None or d.visit == visit) and not (run.made and d in run.made)):
                msg = self.messages.get(d.message)
                run.out.records.append(trace.message("message_suppressed", run.now, profile.user_id, d.journey,
                                                     d.key or None, d.state, d.message,
                                                     msg.channel if msg else None, None, reason=reason))
            else:
                kept.append(d)
        profile.deferred = kept or None

    def _goal(self, run: _Run, cj: CompiledJourney, inst: Instance) -> None:
        goal = cj.journey.goal
        assert goal is not None
        credited = []
        for arm, at, state in inst.sent or ():
            if run.now - at <= goal.within and (cj.name, state) in self.bandits:
                self._learn(run, cj.name, state, arm, 0, 1)
                credited.append(arm.removeprefix("->"))
        extra = {"attributed": credited} if credited else {}
        run.out.records.append(trace.goal_reached(run.now, run.profile.user_id, cj.name, inst.key or None,
                                                  **extra))
        inst.sent = None

    # --- timers -------------------------------------------------------------------------------

    def _timers(self, run: _Run, plan: _StatePlan) -> list[tuple[datetime, int]]:
        timers = []
        for index, t in plan.timers:
            due: datetime | None = None
            if t.after is not None:
                due = run.now + t.after
            elif isinstance(t.at, str):
                due = self._next_local(run, t.at)
            elif isinstance(t.at, AttributeTime):
                value = _path(run.scope, t.at.attribute)
                due = value + t.at.offset if isinstance(value, datetime) else None
                if due is not None and due < run.now:
                    due = run.now  # the date has passed while the user was on the way: go now
            if due is not None:
                timers.append((due, index))
        return timers

    def _next_local(self, run: _Run, time_of_day: str) -> datetime:
        zone = resolve_zone(_str(run.profile.traits.get("timezone")), self.policies.timezone)
        local = clock.local(run.now, zone)
        minutes = clock_minutes(time_of_day)
        candidate = local.replace(hour=minutes // 60, minute=minutes % 60, second=0, microsecond=0)
        if candidate <= local:
            candidate = (local + timedelta(days=1)).replace(hour=minutes // 60, minute=minutes % 60, second=0,
                                                           microsecond=0)
        # replace() on an aware datetime keeps the old offset: rebuild in the zone for DST days
        naive = candidate.replace(tzinfo=None)
        return naive.replace(tzinfo=zone).astimezone(UTC)

    def _fire_timer(self, run: _Run, plan: _Plan, inst: Instance) -> bool:
        """The earliest timer due (the first one written on a tie) moves the instance; _arrive sets the scope."""
        first: tuple[datetime, int] | None = None
        for timer in inst.timers:
            if timer[0] <= run.now and (first is None or timer < first):
                first = timer
        if first is None:
            return False
        step_due, run.due = run.due, min(first[0], run.now)  # its sends expire from the timer's time
        self._move(run, plan.cj, inst, plan.cj.transitions[inst.state][first[1]])
        run.due = step_due
        return True

    # --- messages -----------------------------------------------------------------------------

    def _send_state(self, run: _Run, cj: CompiledJourney, inst: Instance, plan: _StatePlan) -> None:
        if not plan.candidates:
            return
        eligible = [m for m in plan.candidates if self._eligible(run, cj, inst, inst.state, m)]
        if plan.choose is None:
            for message_id in eligible:
                self._deliver(run, cj, inst, message_id, inst.state)
            return
        if not eligible:
            return
        if plan.choose == "first":
            chosen = choose_first([(m, self.messages[m].priority) for m in eligible])
        elif plan.choose == "random":
            chosen = choose_random(eligible, self._rng(run, inst, "choose"))
        else:
            chosen = choose_best(eligible, self.bandits.setdefault((cj.name, inst.state), {}),
                                 self._rng(run, inst, "choose"))
            if self._deliver(run, cj, inst, chosen, inst.state):  # a suppressed send teaches nothing
                self._learn(run, cj.name, inst.state, chosen, 1, 0)
                _attribute(inst, chosen, run.now)
            return
        self._deliver(run, cj, inst, chosen, inst.state)

    def _eligible(self, run: _Run, cj: CompiledJourney, inst: Instance | Deferred, state: str,
                  message_id: str) -> bool:
        rule = self.cw.message_rules.get(message_id)
        if rule is None or rule(run.scope, run.now):
            return True
        msg = self.messages[message_id]
        run.out.records.append(trace.message("message_suppressed", run.now, run.profile.user_id, cj.name,
                                             inst.key or None, state, message_id, msg.channel, None,
                                             reason="ineligible"))
        return False

    def _learn(self, run: _Run, journey: str, state: str, arm: str, sends: int, conversions: int) -> None:
        stats = self.bandits.setdefault((journey, state), {})
        before = stats.get(arm, (0, 0))
        stats[arm] = (before[0] + sends, before[1] + conversions)
        run.out.learned((journey, state, arm), sends, conversions)

    def _deliver(self, run: _Run, cj: CompiledJourney, inst: Instance | Deferred, message_id: str, state: str, *,
                 deferred: bool = False, due: datetime | None = None) -> bool:
        """Send, defer or suppress one message of a run (or a deferred send of one); False when suppressed."""
        msg = self.messages[message_id]
        profile = run.profile
        base = (run.now, profile.user_id, cj.name, inst.key or None, state, message_id, msg.channel)
        if isinstance(inst, Instance) and inst.holdout and not msg.transactional:  # a Deferred was never held out
            run.out.records.append(trace.message("message_suppressed", *base, None, reason="holdout"))
            return False
        due = run.due if due is None else due
        expiry = self.expiries[message_id]
        if expiry is not None and run.current - due > expiry:
            run.out.records.append(trace.message(
                "message_suppressed", *base, None, reason="expired", due=trace.iso(due),
                why=f"due at {trace.iso(due)}, more than {_span(expiry)} before {trace.iso(run.current)}"))
            return False
        decision = self._decide(run, msg, deferred)
        if decision.action == "suppress":
            run.out.records.append(trace.message("message_suppressed", *base, None, reason=decision.reason,
                                                 why=decision.explanation))
            return False
        if decision.action == "defer":
            assert decision.until is not None
            held = Deferred(due=decision.until, journey=cj.name, key=inst.key, state=state, message=message_id,
                            visit=inst.visit, run=inst.run, data=inst.data)
            if profile.deferred is None:
                profile.deferred = [held]
            else:
                profile.deferred.append(held)
            if run.made is None:
                run.made = [held]
            else:
                run.made.append(held)
            run.out.records.append(trace.message("message_deferred", *base, None,
                                                 until=trace.iso(decision.until), reason=decision.reason,
                                                 why=decision.explanation))
        else:
            self._emit(run, cj, inst, msg, message_id, state, decision.explanation)
        return True

    def _decide(self, run: _Run, msg: Message, deferred: bool) -> Decision:
        profile = run.profile
        subscribed = True
        if msg.subscription is not None and not msg.transactional:
            default = self._subscribed_by_default.get(msg.subscription, True)  # undeclared: subscribed
            subscribed = profile.choices.get(msg.subscription, default) if profile.choices else default
        bounced = None
        if profile.bounced and msg.channel in ADDRESS:
            address = profile.traits.get(ADDRESS[msg.channel])
            bounced = address if address in profile.bounced else None
        timezone = _str(profile.traits.get("timezone"))
        hour, source = self._best_hour(profile, timezone, run.now) if msg.send_at == "optimal" else (None, None)
        policies = self._transactional if msg.transactional else self.policies
        return decide(now=run.now, message=msg, policies=policies, timezone=timezone,
                      ledger=profile.ledger or (), subscribed=subscribed, best_hour=hour, hour_source=source,
                      deferred=deferred, bounced=bounced)

    def _best_hour(self, profile: Profile, timezone: str | None, now: datetime) -> tuple[int | None, str | None]:
        """The user's own best hour, else the workspace's, else None (the configured default)."""
        if profile.engagements:
            hour = learned_hour(profile.engagements, timezone or self.policies.timezone, now)
            n = len(profile.engagements)
            return hour, f"the user's best hour (from {n} engagement{'s' if n > 1 else ''})"
        hours = self.bandits.get(WORKSPACE_HOURS)
        total = sum(c for _, c in hours.values()) if hours else 0
        if hours and total >= MIN_WORKSPACE_ENGAGEMENTS:
            best = max(hours.items(), key=lambda item: (item[1][1], item[0]))[0]
            return int(best), f"the workspace's best hour (from {total} engagements)"
        return None, None

    def _emit(self, run: _Run, cj: CompiledJourney, inst: Instance | Deferred, msg: Message, message_id: str,
              state: str, why: str = "") -> None:
        """Record the send; rendering happens at delivery, with the context captured here."""
        profile = run.profile
        locale = self._locale(profile, msg)
        if not msg.transactional:  # transactional sends do not count toward caps (SPEC §3 item 11)
            profile.ledger = (*(profile.ledger or ()), (clock.epoch(run.now), msg.channel))
            self._prune_ledger(profile, run.now)
        extra = {"why": why} if why else {}
        run.out.records.append(trace.message("message_sent", run.now, profile.user_id, cj.name, inst.key or None,
                                             state, message_id, msg.channel, locale, **extra))
        run.out.sends.append(SendMessage(
            idempotency_key=f"{profile.user_id}:{cj.name}:{inst.key}:{inst.run}:{inst.visit}:{message_id}",
            at=run.now,
            user=profile.user_id, journey=cj.name, key=inst.key or None, state=state, message=message_id,
            channel=msg.channel, locale=locale,
            context={"traits": dict(profile.traits), "metrics": profile.metrics, "user_id": profile.user_id,
                     "segments": list(profile.segments),
                     "journey": {"name": cj.name, "key": inst.key or None, "data": inst.data},
                     "message": {"id": message_id, "channel": msg.channel}}))

    @staticmethod
    def _locale(profile: Profile, msg: Message) -> str | None:
        """The translation to use: traits.locale `ko-KR` takes `ko-KR`, then `ko`; else the default."""
        locale = _str(profile.traits.get("locale"))
        if locale and msg.translations:
            for candidate in (locale, locale.replace("_", "-").split("-")[0]):
                if candidate in msg.translations:
                    return candidate
        return None

    def render(self, send: SendMessage) -> RenderedMessage:
        """The message's subject, title and body for this send, in its locale (raises TemplateError)."""
        msg = self.messages[send.message]
        content = {"subject": msg.subject, "title": msg.title, "body": self._body(msg.body, msg.template),
                   "url": msg.url}  # a url is a template too (SPEC §3 item 9)
        tr = msg.translations.get(send.locale) if send.locale else None
        if tr is not None:
            content.update({k: v for k, v in (("subject", tr.subject), ("title", tr.title),
                                              ("body", self._body(tr.body, tr.template))) if v})
        render = self.cw.renderer.render
        done = {k: render(v, send.context, now=send.at, html=(k == "body" and msg.channel == "email"))
                for k, v in content.items() if v}
        return RenderedMessage(subject=done.get("subject"), title=done.get("title"), body=done.get("body", ""),
                               url=done.get("url"))

    def _body(self, body: str | None, template: str | None) -> str | None:
        return self.cw.workspace.templates.get(template, "") if template else body

    def _prune_ledger(self, profile: Profile, now: datetime) -> None:
        horizon = (now - self._ledger_span).timestamp()
        if profile.ledger and profile.ledger[0][0] <= horizon:
            profile.ledger = tuple(e for e in profile.ledger if e[0] > horizon) or None

    def _deferred(self, run: _Run) -> None:
        """Deferred sends that fall due are decided again: caps and subscriptions may have changed."""
        profile = run.profile
        assert profile.deferred is not None
        # those due together are tried by priority, then in the order they were held (SPEC §3 item 11)
        due = sorted((d for d in profile.deferred if d.due <= run.now), key=self._deferred_order)
        if not due:
            return
        profile.deferred = [d for d in profile.deferred if d.due > run.now] or None
        for d in due:  # what leaving cancels was dropped then: what is left goes, its run ended or not
            cj = self.cw.journeys.get(d.journey)
            if cj is None or d.message not in self.messages:  # no longer in the workspace
                run.out.records.append(trace.message("message_suppressed", run.now, profile.user_id, d.journey,
                                                     d.key or None, d.state, d.message, None, None,
                                                     reason="version"))
                continue
            self._deferred_scope(run, d)
            if self._eligible(run, cj, d, d.state, d.message):  # eligibility may have changed since
                self._deliver(run, cj, d, d.message, d.state, deferred=True, due=d.due)
        run.scope.pop("journey", None)

    def _deferred_scope(self, run: _Run, d: Deferred) -> None:
        """`journey.*` for a deferred send's rules: its run's, or what the send kept of a run that ended."""
        inst = run.profile.instances.get((d.journey, d.key))
        if inst is not None and inst.run == d.run:
            self._journey_scope(run, inst)
        else:
            run.scope["journey"] = {"entered_at": None, "state_entered_at": None, "key": d.key or None,
                                    "data": d.data}

    def _deferred_order(self, d: Deferred) -> tuple[datetime, int]:
        msg = self.messages.get(d.message)
        return d.due, -msg.priority if msg is not None else 0

    # --- scheduling ---------------------------------------------------------------------------

    def _settle(self, run: _Run) -> None:
        """Fire whatever is already due (timers at `now`), compute the user's next wake-up, and trace the
        rules that failed on the way."""
        self._catch_up(run)
        errors = run.scope.pop(RULE_ERRORS, None)
        if errors:
            seen: set[tuple[str, str]] = set()
            for rule, error in errors:
                if (rule.where, error) not in seen:
                    seen.add((rule.where, error))
                    run.out.records.append(trace.other("rule_error", run.now, run.profile.user_id, rule=rule.where,
                                                       error=error, text=rule.text))

    def _catch_up(self, run: _Run) -> None:
        now = clock.epoch(run.now)
        for _ in range(MAX_CHAIN):
            self._schedule(run)
            if run.profile.wake_at is None or run.profile.wake_at > now:
                return
            self._wake(run)
        self._break_loop(run)
        run.profile.segments_due_at = UNSETTLED  # cut short after a wake-up: its anchors were not noted

    def _break_loop(self, run: _Run) -> None:
        """Still due after MAX_CHAIN wake-ups at one instant: timers that keep falling due at once (states
        whose `at` dates have passed, pointing at each other). Drop them and say so; never spin."""
        for inst in run.profile.instances.values():
            if any(at <= run.now for at, _ in inst.timers):
                inst.timers = tuple(t for t in inst.timers if t[0] > run.now)
                run.out.records.append(trace.other(
                    "cycle", run.now, run.profile.user_id, journey=inst.journey, key=inst.key or None,
                    state=inst.state, error=f"timers fell due at once more than {MAX_CHAIN} times in a row: a "
                                            "loop of timers whose times have passed; this state's timers dropped"))
        self._schedule(run)
        now = clock.epoch(run.now)
        if run.profile.wake_at is not None and run.profile.wake_at <= now:
            run.profile.wake_at = now + 60  # whatever else keeps falling due waits a minute, not a spin

    def _schedule(self, run: _Run) -> None:
        """The earliest of: timers, deferred sends, window expiries, time-driven segments and rules."""
        profile = run.profile
        best: datetime | None = None
        for inst in profile.instances.values():
            for at, _ in inst.timers:
                if best is None or at < best:
                    best = at
        for d in profile.deferred or ():
            if best is None or d.due < best:
                best = d.due
        later: list[datetime | None] = [self.cw.metrics.next_expiry(profile) if profile.windows else None]
        if self.cw.segments.timed:
            run.scope.pop("journey", None)
            later.append(self.cw.segments.schedule(profile, run.scope, run.now))
        if self._clock_rules:
            later.append(self._rule_change(run))
        for candidate in later:
            if candidate is not None and (best is None or candidate < best):
                best = candidate
        profile.wake_at = None if best is None else best.timestamp()

    def _rule_change(self, run: _Run) -> datetime | None:
        """When time alone may next flip a rule that matters to this user: the current states' `if`
        rules, the exit and goal rules of their journeys, and `if:` entries of journeys they are not in."""
        best: datetime | None = None
        for (name, _), inst in run.profile.instances.items():
            plan = self._plan[name]
            rules: tuple[CompiledTransition | CompiledTrigger, ...] = (*plan.states[inst.state].clock_rules,
                                                                       *plan.clock_triggers)
            if not rules:
                continue
            self._journey_scope(run, inst)
            for t in rules:
                assert t.rule is not None
                at = t.rule.next_change(run.scope, run.now)
                if at is not None and (best is None or at < best):
                    best = at
        run.scope.pop("journey", None)
        for plan in self._plans:
            entry = plan.clock_entry
            if entry is None or (plan.key_prop is None and plan.ikey in run.profile.instances):
                continue
            assert entry.rule is not None
            at = entry.rule.next_change(run.scope, run.now)
            if at is not None and (best is None or at < best):
                best = at
        return best

    def _rng(self, run: _Run, inst: Instance, purpose: str) -> random.Random:
        """A generator per decision: the same seed and user give the same choice, whatever the others do."""
        return random.Random(
            f"{self.seed}:{run.profile.user_id}:{inst.journey}:{inst.key}:{inst.run}:{inst.visit}:{purpose}")


@dataclass(frozen=True, slots=True)
class _SendRef:
    """A send named by its idempotency key: user:journey:key:entry:visit:message."""

    send_key: str
    journey: str
    key: str
    message: str


_MISSING = object()
_NO_GROUPS: dict[str, list[Instance]] = {}


def _by_journey(profile: Profile) -> dict[str, list[Instance]]:
    """The user's instances per journey, in the order they were entered."""
    groups: dict[str, list[Instance]] = {}
    for (name, _), inst in profile.instances.items():
        groups.setdefault(name, []).append(inst)
    return groups


def _attribute(inst: Instance, arm: str, at: datetime) -> None:
    """Remember a choice made for this instance, so a goal reached later credits it."""
    choice = (arm, at, inst.state)
    if inst.sent is None:
        inst.sent = [choice]
    else:
        inst.sent.append(choice)


def _blank(profile: Profile) -> bool:
    """A user the engine has not seen yet: nothing about them is stored."""
    return (not profile.traits and not profile.metric_values and not profile.segments and profile.entries is None
            and profile.for_since is None and not profile.instances and profile.windows is None)


def _span(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _path(scope: dict[str, Any], dotted: str) -> Any:
    value: Any = scope
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value
