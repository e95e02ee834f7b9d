"""A reference interpreter of SPEC §3-§4, written from SPEC.md, not from the engine.

Plain and slow on purpose: on every event and at every instant where anything could change, it
recomputes metrics from the user's whole event list, every segment from scratch, and walks each
journey by the SPEC's order of work. It reads the parsed workspace (journey_engine.loading/model)
and evaluates rules with rule-engine's own `Rule.evaluate`; nothing of the engine's runtime.

Instants: rather than every minute of 40 days (57,600 evaluations per user), it evaluates at every
instant of a superset of the moments anything can change: each timer, deferred send and event, and
each datetime the user's data holds (traits, metrics, journey times, segment streaks, event times)
plus or minus each duration the workspace writes (rules' t'...', windows, `for:`), and one tick
after. A rule over `$now` compares `$now` with such a datetime and duration, so it can only turn at
one of them (the generated workspaces write no `$today` or clock-hour rules).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import rule_engine
from rule_engine.builtins import Builtins, BuiltinValueGenerator

from journey_engine.events import Event
from journey_engine.loading import Workspace
from journey_engine.model import AttributeTime, Choose, Journey, Message, SendWindow, clock_minutes, parse_duration

TICK = timedelta(microseconds=1)
QUIET_EXEMPT = ("in_app", "webhook")  # README, reading 4: shown when the user opens the app, not pushed at night
MAX_CHAIN = 100
_DURATION = re.compile(r"t'(-?P[0-9A-Z.]+)'")
SPEC_KINDS = ("segment_entered", "segment_left", "journey_entered", "transition", "message_sent",
              "message_deferred", "message_suppressed", "goal_reached", "journey_exited", "rule_error",
              "unknown_subscription")


def iso(at: datetime) -> str:
    text = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return text


class Rules:
    """rule-engine rules over the context of SPEC §3 item 1, `$now` read from `self.now`."""

    def __init__(self) -> None:
        self.now = datetime(1970, 1, 1, tzinfo=UTC)
        self.context = rule_engine.Context(default_timezone="utc", default_value=None)
        self.context._mapping_fallback_warned = True  # `traits.plan` on a mapping is the language
        self.context.builtins = Builtins.from_defaults(
            values={"now": BuiltinValueGenerator(lambda _: self.now)}, timezone=self.context.default_timezone)
        self.compiled: dict[str, rule_engine.Rule] = {}

    def evaluate(self, text: str, scope: dict[str, Any], now: datetime) -> bool | Exception:
        """The rule's truth, or the exception a run-time failure raised (it counts as false)."""
        rule = self.compiled.get(text)
        if rule is None:
            rule = self.compiled[text] = rule_engine.Rule(text, context=self.context)
        self.now = now
        try:
            return bool(rule.evaluate(scope))
        except (rule_engine.EngineError, TypeError, ValueError, ArithmeticError) as exc:
            return exc


@dataclass
class Inst:
    journey: str
    key: str | None
    state: str
    entered_at: datetime
    data: dict[str, Any]
    holdout: bool
    run: int
    state_entered_at: datetime = datetime(1970, 1, 1, tzinfo=UTC)
    visit: int = 0
    timers: list[tuple[datetime, int]] = field(default_factory=list)


@dataclass
class Deferred:
    until: datetime
    journey: str
    key: str | None
    state: str
    message: str
    visit: int
    run: int
    instance_gone: bool = False  # its journey ended at a final state: it is still sent (item 10)
    step: int = 0  # the step that made it: leaving the state in that same step cancels nothing (item 10)


@dataclass
class User:
    id: str
    events: list[tuple[int, Event]] = field(default_factory=list)  # (arrival order, event): every named event
    traits: dict[str, Any] = field(default_factory=dict)
    segments: set[str] = field(default_factory=set)
    since: dict[str, datetime] = field(default_factory=dict)  # segment rule holding continuously since
    instances: dict[tuple[str, str | None], Inst] = field(default_factory=dict)
    last_entry: dict[tuple[str, str | None], datetime] = field(default_factory=dict)
    entry_held: dict[str, bool] = field(default_factory=dict)
    choices: dict[str, bool] = field(default_factory=dict)
    ledger: list[tuple[datetime, str]] = field(default_factory=list)
    deferred: list[Deferred] = field(default_factory=list)
    clock: datetime = datetime(1970, 1, 1, tzinfo=UTC)  # every instant up to here is done


Picker = Callable[[str, str, str | None, str, datetime, str, list[str]], str]


class Reference:
    """Feeds events and time to users; collects the SPEC trace records and the sends."""

    def __init__(self, ws: Workspace, *, pick: Picker | None = None,
                 held_out: Callable[[str, str], bool] | None = None) -> None:
        self.ws = ws
        self.policies = ws.policies
        self.journeys = [ws.journeys[n] for n in sorted(ws.journeys)]
        self.versions = {j.name: j.version for j in self.journeys}  # SPEC §3: a hash of the definition
        self.rules = Rules()
        self.users: dict[str, User] = {}
        self.aliases: dict[str, str] = {}
        self.seen: set[str] = set()
        self.trace: list[dict[str, Any]] = []
        self.sends: list[dict[str, Any]] = []
        self.touched: set[str] = set()
        self.pick = pick or (lambda user, journey, key, state, at, purpose, options: options[0])
        self.held_out = held_out or (lambda journey, user: False)
        self.arrivals = 0
        # item 10's steps: each event's arrival is one, and each instant at which a user's timers and
        # deferred sends fall due is one, however many rounds of timers already due it chains through
        self.step = 0
        self.runs = 0
        self.durations = self._durations()
        self._entered_now: set[str] = set()

    # --- inputs -------------------------------------------------------------------------------------

    def advance(self, until: datetime) -> None:
        """Everything due up to and including `until`, each user at its own instants."""
        for user in list(self.users.values()):
            if user.id in self.users:
                self._catch_up(user, until)

    def event(self, event: Event, now: datetime) -> None:
        """SPEC §3 item 2: deduplicate by messageId, then the event's work for its user."""
        self.advance(now)
        self.step += 1
        if event.message_id is not None:
            if event.message_id in self.seen:
                return
            self.seen.add(event.message_id)
        uid = self.aliases.get(event.user_id, event.user_id)
        is_new = uid not in self.users  # item 13: a user exists from their first event of any kind
        user = self._user(uid, now)
        if event.type == "alias":
            self._alias(user, event, now)
            return
        if event.traits:
            user.traits.update(event.traits)
        if event.name is not None:
            self.arrivals += 1
            user.events.append((self.arrivals, event))
            self._subscription(user, event, now)
        self._segments(user, now, new_user=is_new)
        self._journeys(user, now, event)
        self._settle(user, now)

    def _user(self, uid: str, now: datetime) -> User:
        user = self.users.get(uid)
        if user is None:
            user = self.users[uid] = User(uid, clock=now)
        return user

    def _alias(self, user: User, event: Event, now: datetime) -> None:
        """SPEC §3 item 8: the anonymous profile folds into the known one, journeys and metrics included."""
        prev = event.previous_id
        assert prev is not None
        ignored = prev in self.aliases and self.aliases[prev] != user.id
        if not ignored:  # merged into someone else before: an id is never folded into a second user
            self.aliases[prev] = user.id
        other = self.users.pop(prev, None) if prev != user.id and not ignored else None
        if other is not None:
            # the anonymous id ceases to exist: its memberships end (the history of §4 stays true)
            for name in sorted(other.segments):
                self.trace.append({"kind": "segment_left", "at": iso(now), "user": other.id, "segment": name})
            # reading 2: arrival order breaks ties of `last`; across the two ids the known user's value wins a
            # tie, as its traits do: the anonymous id's events count as arrived before all of the user's
            user.events.extend((n - self.arrivals - 1, e) for n, e in other.events)
            for k, v in other.traits.items():
                user.traits.setdefault(k, v)
            taken = [ikey for ikey in other.instances if ikey not in user.instances]
            for ikey in taken:
                user.instances[ikey] = other.instances[ikey]
            # pending sends come with their runs, and so do those of runs that ended (item 10: a final
            # state's deferred send still goes): they are the known user's now
            user.deferred.extend(d for d in other.deferred if (d.journey, d.key) in taken
                                 or (d.journey, d.key) not in other.instances
                                 or other.instances[(d.journey, d.key)].run != d.run)
            for ikey, at in other.last_entry.items():
                user.last_entry[ikey] = max(at, user.last_entry.get(ikey, at))
            for name, choice in other.choices.items():
                user.choices.setdefault(name, choice)
            user.ledger = sorted(user.ledger + other.ledger)
        self._segments(user, now)
        self._journeys(user, now, None)
        self._settle(user, now)

    # --- time ---------------------------------------------------------------------------------------

    def _catch_up(self, user: User, until: datetime) -> None:
        while True:
            at = self._next_instant(user)
            if at is None or at > until:
                user.clock = max(user.clock, until)
                return
            user.clock = at
            self.step += 1
            self._tick(user, at)
            self._settle(user, at)

    def _settle(self, user: User, now: datetime) -> None:
        """What fell due at this very instant (a timer whose date has passed) fires now."""
        for _ in range(MAX_CHAIN):
            due = [t for i in user.instances.values() for t, _ in i.timers if t <= now]
            due += [d.until for d in user.deferred if d.until <= now]
            if not due:
                return
            self._tick(user, now)
        # still due after MAX_CHAIN rounds: timers whose dates have passed, pointing at each other. Item 2
        # asks for a cycle error, not a hang: their timers are dropped (the engine's `cycle` record says so)
        for inst in user.instances.values():
            if any(t <= now for t, _ in inst.timers):
                inst.timers = [(t, i) for t, i in inst.timers if t > now]
                self.trace.append({"kind": "cycle", "at": iso(now), "user": user.id, "journey": inst.journey})

    def _next_instant(self, user: User) -> datetime | None:
        after = user.clock
        found: list[datetime] = []
        for inst in user.instances.values():
            found.extend(t for t, _ in inst.timers)
            found.extend(inst.entered_at + d for d in self.durations)
            found.extend(inst.state_entered_at + d for d in self.durations)
        found.extend(d.until for d in user.deferred)
        stamps = [e.timestamp for _, e in user.events]
        stamps += [v for v in user.traits.values() if isinstance(v, datetime)]
        stamps += list(user.since.values())
        stamps += [v for v in self._metrics(user, after).values() if isinstance(v, datetime)]
        stamps += [at for at, _ in user.ledger]
        for stamp in stamps:
            found.extend(stamp + d for d in self.durations)
        later = [t for t in found if t > after]
        later += [t + TICK for t in found if t + TICK > after]  # `>` turns one tick after `>=`
        return min(later, default=None)

    def _durations(self) -> list[timedelta]:
        """Every duration the workspace writes, with its negative and zero: the offsets a rule can turn at."""
        texts = [s.rule for s in self.ws.segments.values()]
        texts += [m.where for m in self.ws.metrics.values() if m.where]
        for j in self.journeys:
            texts += [t.if_ for t in (j.entry, *j.exit, *([j.goal] if j.goal else [])) if t.if_]
            texts += [t.if_ for s in j.states.values() for t in s.transitions if t.if_]
        texts += [m.if_ for m in self.ws.messages.values() if m.if_]
        found = {timedelta(0)}
        for text in texts:
            found.update(parse_duration(d) for d in _DURATION.findall(text))
        found.update(m.within for m in self.ws.metrics.values() if m.within)
        found.update(s.for_ for s in self.ws.segments.values() if s.for_)
        found.update(c.per for c in self.policies.frequency_caps)
        return sorted(found | {-d for d in found})

    def _tick(self, user: User, now: datetime) -> None:
        """One instant with no event: segments, deferred sends, then each journey's checks and entry."""
        self._segments(user, now)
        self._deferred(user, now)
        self._journeys(user, now, None)

    # --- profile ------------------------------------------------------------------------------------

    def _metrics(self, user: User, now: datetime) -> dict[str, Any]:
        """SPEC §4: every metric from the user's whole event list, at `now`."""
        out: dict[str, Any] = {}
        for name, m in self.ws.metrics.items():
            events = [(e.timestamp, n, e) for n, e in user.events if m.event in ("any", e.name)]
            if m.where is not None:  # a `where` looks at each event of the name as it is counted, in a window or not
                events = [x for x in events if self._where(user, m.where, x[2], now)]
            if m.within is not None:
                # a window slides over event times against the engine clock: in it while now - within < t <= now
                events = [x for x in events if now - m.within < x[0] <= now]
            events.sort(key=lambda x: (x[0], x[1]))
            if m.kind == "count":
                out[name] = len(events)
            elif m.kind == "sum":
                total: Any = 0
                for _, _, e in events:
                    value = e.properties.get(m.sum or "")
                    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
                        total += value
                out[name] = total
            elif m.kind == "last":
                values = [e.properties[m.last] for _, _, e in events if m.last in e.properties]
                out[name] = values[-1] if values else None
            elif m.kind == "last_seen":
                out[name] = events[-1][0] if events else None
            else:
                out[name] = events[0][0] if events else None
        return out

    def _where(self, user: User, text: str, e: Event, now: datetime) -> bool:
        scope = {"event": {"name": e.name, "properties": e.properties, "timestamp": e.timestamp},
                 "properties": e.properties, "traits": user.traits, "user_id": user.id}
        return self._holds(user, text, scope, now)

    def _holds(self, user: User, text: str, scope: dict[str, Any], now: datetime) -> bool:
        """SPEC §3 item 14: a rule failing at run time counts as false and is traced as rule_error."""
        result = self.rules.evaluate(text, scope, now)
        if isinstance(result, Exception):
            self.touched.add("rule_error")
            self.trace.append({"kind": "rule_error", "at": iso(now), "user": user.id, "rule": text,
                               "error": str(result)})
            return False
        return result

    def _scope(self, user: User, now: datetime, event: Event | None = None,
               inst: Inst | None = None) -> dict[str, Any]:
        scope: dict[str, Any] = {"traits": user.traits, "metrics": self._metrics(user, now),
                                 "segments": set(user.segments), "user_id": user.id}
        if event is not None:
            scope["event"] = {"name": event.name, "properties": event.properties, "timestamp": event.timestamp}
            scope["properties"] = event.properties
        if inst is not None:
            scope["journey"] = {"entered_at": inst.entered_at, "state_entered_at": inst.state_entered_at,
                                "key": inst.key, "data": inst.data}
        return scope

    def _segments(self, user: User, now: datetime, *, new_user: bool = False) -> None:
        """Every segment from scratch; `for:` needs the rule to have held continuously that long (§4)."""
        scope = self._scope(user, now)
        members: set[str] = set()
        for name in sorted(self.ws.segments):
            seg = self.ws.segments[name]
            if self._holds(user, seg.rule, scope, now):
                since = user.since.setdefault(name, now)
                if seg.for_ is None or now - since >= seg.for_:
                    members.add(name)
            else:
                user.since.pop(name, None)
        entered, left = members - user.segments, user.segments - members
        if entered and new_user:
            self.touched.add("new_user_segments")
        for kind, names in (("segment_entered", entered), ("segment_left", left)):
            for name in sorted(names):
                self.trace.append({"kind": kind, "at": iso(now), "user": user.id, "segment": name})
        user.segments = members
        self._entered_now = entered

    def _subscription(self, user: User, event: Event, now: datetime) -> None:
        """SPEC §3 items 6 and 15: Subscribed / Unsubscribed with `properties.subscription`."""
        if event.name not in ("Subscribed", "Unsubscribed"):
            return
        choice = event.name == "Subscribed"
        name = event.properties.get("subscription")
        if name is None and not choice:
            self.touched.add("unsubscribe_all")
            for sub in self.ws.subscriptions:
                user.choices[sub] = False
        elif name not in self.ws.subscriptions:
            self.touched.add("unsubscribe_all")
            self.trace.append({"kind": "unknown_subscription", "at": iso(now), "user": user.id,
                               "subscription": name})
        else:
            user.choices[str(name)] = choice

    # --- journeys -----------------------------------------------------------------------------------

    def _journeys(self, user: User, now: datetime, event: Event | None) -> None:
        """Per journey in name order: each instance's exits, goal and transitions, then entry (item 2)."""
        entered = self._entered_now
        for journey in self.journeys:
            mine = [i for (j, _), i in list(user.instances.items()) if j == journey.name]
            prop = journey.entry.key
            routed = None
            if event is not None and prop is not None and prop in event.properties:
                routed = str(event.properties[prop])  # item 5: only the instance with that key value
            for inst in mine:
                if (journey.name, inst.key) in user.instances:
                    # item 5: the event reaches only its key's instance; the others see the user's change (a
                    # segment or rule exit, goal or transition), as on a wake-up (README reading 15)
                    self._check(user, journey, inst, now, event if routed is None or inst.key == routed else None)
            self._enter(user, journey, now, event, entered)

    def _trigger(self, user: User, trig: Any, scope: dict[str, Any], now: datetime, event: Event | None) -> bool:
        """An exit or goal: an event (with its guard), being in a segment, or a rule holding."""
        if trig.on is not None:
            if event is None or event.name != trig.on:
                return False
        elif trig.segment is not None and trig.segment not in user.segments:
            return False
        return trig.if_ is None or self._holds(user, trig.if_, scope, now)

    def _check(self, user: User, journey: Journey, inst: Inst, now: datetime, event: Event | None) -> None:
        scope = self._scope(user, now, event, inst)
        moved = False
        if event is None:  # reading 7: a due timer fires before exits, the goal and the other transitions
            for index, t in enumerate(journey.states[inst.state].transitions):
                if t.kind in ("after", "at") and self._fires(user, t, index, inst, scope, now, None):
                    self._move(user, journey, inst, t.to, t.kind, now, later=True)
                    if user.instances.get((journey.name, inst.key)) is not inst:
                        return  # it ended where the timer took it
                    moved = True  # exits and the goal still hold it to the user's change, in its new state
                    scope = self._scope(user, now, event, inst)
                    break
        for criterion in journey.exit:
            if self._trigger(user, criterion, scope, now, event):
                self._exit(user, journey, inst, now, "exit")
                return
        if journey.goal is not None and self._trigger(user, journey.goal, scope, now, event):
            self._goal(user, journey, inst, now)
            return
        if moved:
            return
        state = journey.states[inst.state]
        for index, t in enumerate(state.transitions):
            if self._fires(user, t, index, inst, scope, now, event):
                trigger = {"on": f"event:{t.on}", "after": "after", "at": "at"}.get(t.kind, "rule")
                self._move(user, journey, inst, t.to, trigger, now, later=True)
                return

    def _fires(self, user: User, t: Any, index: int, inst: Inst, scope: dict[str, Any], now: datetime,
               event: Event | None) -> bool:
        kind = t.kind
        if kind in ("after", "at"):
            return any(i == index and due <= now for due, i in inst.timers)
        if kind == "on" and (event is None or event.name != t.on):
            return False
        if kind == "segment" and t.segment not in user.segments:
            return False
        return t.if_ is None or self._holds(user, t.if_, scope, now)

    def _enter(self, user: User, journey: Journey, now: datetime, event: Event | None, entered: set[str]) -> None:
        entry = journey.entry
        if entry.on is None and entry.segment is None:
            # a rule entry fires when the rule becomes true (SPEC §3 entry: "a rule becoming true")
            holds = self._holds(user, entry.if_ or "", self._scope(user, now), now)
            was = user.entry_held.get(journey.name, False)
            user.entry_held[journey.name] = holds
            if not holds or was:
                return
        elif entry.on is not None:
            if event is None or event.name != entry.on:
                return
        elif entry.segment not in entered:
            return
        key = None
        if entry.key is not None:
            assert event is not None
            if event.properties.get(entry.key) is None:
                return
            key = str(event.properties[entry.key])
        ikey = (journey.name, key)
        if ikey in user.instances:
            return
        last = user.last_entry.get(ikey)
        if last is not None:
            if entry.reentry == "never":
                return
            if entry.reentry != "always" and now - last < entry.reentry.after:  # since the last entry
                return
        if (entry.on is not None or entry.segment is not None) and entry.if_ is not None and not self._holds(
                user, entry.if_, self._scope(user, now, event), now):
            return
        if last == now:
            self.touched.add("same_instant_entries")
        user.last_entry[ikey] = now
        self.runs += 1
        data = dict(event.properties) if event is not None and entry.on is not None else {}
        inst = Inst(journey=journey.name, key=key, state=journey.initial, entered_at=now, data=data,
                    holdout=self.held_out(journey.name, user.id), run=self.runs, state_entered_at=now)
        user.instances[ikey] = inst
        self.trace.append({"kind": "journey_entered", "at": iso(now), "user": user.id, "journey": journey.name,
                           "key": key, "state": inst.state, "version": self.versions[journey.name]})
        if self._leaves_at_once(user, journey, inst, now):
            return
        self._arrive(user, journey, inst, now)

    def _leaves_at_once(self, user: User, journey: Journey, inst: Inst, now: datetime) -> bool:
        """README, reading 1: an entrant who already meets a segment or rule exit, or the goal, leaves
        at once, before any message (exits come before entry in the order of work)."""
        scope = self._scope(user, now, None, inst)
        for criterion in journey.exit:
            if criterion.on is None and self._trigger(user, criterion, scope, now, None):
                self._exit(user, journey, inst, now, "exit")
                return True
        goal = journey.goal
        if goal is not None and goal.on is None and self._trigger(user, goal, scope, now, None):
            self._goal(user, journey, inst, now)
            return True
        return False

    def _goal(self, user: User, journey: Journey, inst: Inst, now: datetime) -> None:
        self.trace.append({"kind": "goal_reached", "at": iso(now), "user": user.id, "journey": journey.name,
                           "key": inst.key})
        assert journey.goal is not None
        if journey.goal.exit:
            self._exit(user, journey, inst, now, "goal")

    def _move(self, user: User, journey: Journey, inst: Inst, to: str, trigger: str, now: datetime, *,
              later: bool) -> None:
        src = inst.state
        if later:  # item 10: leaving the state because of something after the deferral cancels its sends
            for d in [d for d in user.deferred if (d.journey, d.key, d.state, d.visit, d.run)
                      == (inst.journey, inst.key, src, inst.visit, inst.run) and not d.instance_gone
                      and d.step != self.step]:
                self.touched.add("deferred_state_left")
                user.deferred.remove(d)
                self._record("message_suppressed", user, inst, d.state, d.message, now, reason="left_state")
        inst.state = to
        self.trace.append({"kind": "transition", "at": iso(now), "user": user.id, "journey": journey.name,
                           "key": inst.key, "from": src, "to": to, "trigger": trigger})
        self._arrive(user, journey, inst, now)

    def _arrive(self, user: User, journey: Journey, inst: Inst, now: datetime) -> None:
        """Send, start timers, then follow splits, true rules and `to:`-only fallbacks at once (item 2)."""
        for _ in range(MAX_CHAIN):
            state = journey.states[inst.state]
            inst.visit += 1
            inst.state_entered_at = now
            self._send_state(user, journey, inst, now)
            if state.final:
                self._exit(user, journey, inst, now, "final")
                return
            inst.timers = self._timers(user, journey, inst, now)
            if state.split is not None:
                paths = [p.to for p in state.split.paths]
                target = self.pick(user.id, journey.name, inst.key, inst.state, now, "split", paths)
                assert target in paths
                src, inst.state = inst.state, target
                self.trace.append({"kind": "transition", "at": iso(now), "user": user.id, "journey": journey.name,
                                   "key": inst.key, "from": src, "to": target, "trigger": "split"})
                continue
            scope = self._scope(user, now, None, inst)
            nxt = None
            for index, t in enumerate(state.transitions):
                if t.kind in ("if", "segment", "always") and self._fires(user, t, index, inst, scope, now, None):
                    nxt = t.to
                    break
            if nxt is None:
                return
            src, inst.state = inst.state, nxt
            self.trace.append({"kind": "transition", "at": iso(now), "user": user.id, "journey": journey.name,
                               "key": inst.key, "from": src, "to": nxt, "trigger": "rule"})
        self.trace.append({"kind": "cycle", "at": iso(now), "user": user.id, "journey": journey.name})

    def _exit(self, user: User, journey: Journey, inst: Inst, now: datetime, reason: str) -> None:
        del user.instances[(journey.name, inst.key)]
        inst.timers = []
        for d in [d for d in user.deferred if (d.journey, d.key, d.run) == (inst.journey, inst.key, inst.run)]:
            if reason == "final":  # item 10: reaching a final state cancels nothing
                self.touched.add("final_deferred")
                d.instance_gone = True
            else:
                user.deferred.remove(d)
                self._record("message_suppressed", user, inst, d.state, d.message, now, reason="left_journey")
        self.trace.append({"kind": "journey_exited", "at": iso(now), "user": user.id, "journey": journey.name,
                           "key": inst.key, "reason": reason})

    def _timers(self, user: User, journey: Journey, inst: Inst, now: datetime) -> list[tuple[datetime, int]]:
        """SPEC §3 item 4: timers of this visit; `at` in the user's zone (traits.timezone, else the workspace's)."""
        timers = []
        for index, t in enumerate(journey.states[inst.state].transitions):
            if t.after is not None:
                timers.append((now + t.after, index))
            elif isinstance(t.at, str):
                timers.append((self._next_local(user, now, clock_minutes(t.at), strictly=True), index))
            elif isinstance(t.at, AttributeTime):
                value: Any = self._scope(user, now, None, inst)
                for part in t.at.attribute.split("."):
                    value = value.get(part) if isinstance(value, dict) else None
                if isinstance(value, datetime):
                    timers.append((max(value + t.at.offset, now), index))  # a passed date: go now
        return timers

    # --- messages -----------------------------------------------------------------------------------

    def _zone(self, user: User) -> ZoneInfo:
        tz = user.traits.get("timezone")
        return ZoneInfo(tz if isinstance(tz, str) and tz else self.policies.timezone)

    def _next_local(self, user: User, now: datetime, minutes: int, *, strictly: bool) -> datetime:
        """The next local HH:MM in the user's zone, later than `now` (or at it, unless strictly)."""
        zone = self._zone(user)
        local = now.astimezone(zone)
        for days in range(3):
            day = (local + timedelta(days=days)).date()
            at = datetime(day.year, day.month, day.day, minutes // 60, minutes % 60, tzinfo=zone).astimezone(UTC)
            if at > now or (at == now and not strictly):
                return at
        raise AssertionError("a local time within two days")

    def _send_state(self, user: User, journey: Journey, inst: Inst, now: datetime) -> None:
        state = journey.states[inst.state]
        if state.send is None:
            return
        scope = self._scope(user, now, None, inst)
        eligible = []
        for m in state.candidates:
            rule = self.ws.messages[m].if_
            if rule is None or self._holds(user, rule, scope, now):
                eligible.append(m)
            else:
                self._record("message_suppressed", user, inst, inst.state, m, now, reason="ineligible")
        if not eligible:
            return
        if isinstance(state.send, Choose):
            if state.send.choose == "first":  # the highest priority eligible one; list order breaks ties
                chosen = max(eligible, key=lambda m: (self.ws.messages[m].priority, -eligible.index(m)))
            else:
                chosen = self.pick(user.id, journey.name, inst.key, inst.state, now, "choose", eligible)
                assert chosen in eligible
            self._deliver(user, inst, chosen, inst.state, now)
            return
        # item 11: a send list is tried in descending priority, list order breaking ties
        ordered = sorted(eligible, key=lambda m: -self.ws.messages[m].priority)
        capped = [self._deliver(user, inst, m, inst.state, now) == "frequency_cap" for m in ordered]
        if ordered != eligible and any(capped):
            self.touched.add("send_list_priority")

    def _record(self, kind: str, user: User, inst: Inst | Deferred, state: str, message: str, now: datetime,
                **extra: Any) -> None:
        self.trace.append({"kind": kind, "at": iso(now), "user": user.id, "journey": inst.journey, "key": inst.key,
                           "state": state, "message": message, "channel": self.ws.messages[message].channel,
                           **extra})

    def _deliver(self, user: User, inst: Inst, message: str, state: str, now: datetime) -> str:
        """Holdout, subscription, caps, then quiet hours / window / optimal time: send, defer or suppress."""
        msg = self.ws.messages[message]
        # item 11: a transactional message ignores holdouts, subscriptions, caps and quiet hours; its own
        # `send_at` (a window, the optimal hour) still holds, as the SPEC lists nothing else it ignores
        if msg.transactional:
            self.touched.add("transactional")
        elif inst.holdout:
            return self._suppress(user, inst, state, message, now, "holdout")
        elif self._in_control_group(user.id):
            self.touched.add("control_group")
            return self._suppress(user, inst, state, message, now, "control_group")
        elif not self._subscribed(user, msg):
            return self._suppress(user, inst, state, message, now, "unsubscribed")
        elif self._capped(user, msg, now):  # README, reading 3: a capped send is suppressed now, not deferred
            return self._suppress(user, inst, state, message, now, "frequency_cap")
        reason, until = self._deferral(user, msg, now)
        if reason in ("drop", "closed"):
            return self._suppress(user, inst, state, message, now, "quiet_hours" if reason == "drop" else "window")
        if reason is not None:
            assert until is not None
            user.deferred.append(Deferred(until=until, journey=inst.journey, key=inst.key, state=state,
                                          message=message, visit=inst.visit, run=inst.run, step=self.step))
            self._record("message_deferred", user, inst, state, message, now, until=iso(until), reason=reason)
            return "deferred"
        return self._go(user, inst, message, state, now)

    def _suppress(self, user: User, inst: Inst | Deferred, state: str, message: str, now: datetime,
                  reason: str) -> str:
        self._record("message_suppressed", user, inst, state, message, now, reason=reason)
        return reason

    def _go(self, user: User, inst: Inst | Deferred, message: str, state: str, now: datetime) -> str:
        """Caps (never for a transactional message, which does not count toward them), then the send."""
        msg = self.ws.messages[message]
        if not msg.transactional and self._capped(user, msg, now):
            return self._suppress(user, inst, state, message, now, "frequency_cap")
        if not msg.transactional:
            user.ledger.append((now, msg.channel))
        self._record("message_sent", user, inst, state, message, now)
        self.sends.append({"user": user.id, "journey": inst.journey, "key": inst.key, "message": message,
                           "channel": msg.channel, "at": iso(now)})
        return "sent"

    def _subscribed(self, user: User, msg: Message) -> bool:
        if msg.subscription is None:
            return True
        sub = self.ws.subscriptions.get(msg.subscription)
        default = sub is None or sub.default == "subscribed"
        return user.choices.get(msg.subscription, default)

    def _in_control_group(self, uid: str) -> bool:
        """SPEC §3 item 15: `control_group: 5%` holds out that share of users, deterministic by id: the
        first 4 bytes of sha1("control_group:<id>") as a fraction of 2**32, below the share."""
        share = self.policies.control_group
        digest = hashlib.sha1(f"control_group:{uid}".encode()).digest()
        return share > 0 and int.from_bytes(digest[:4], "big") / 2**32 < share

    def _capped(self, user: User, msg: Message, now: datetime) -> bool:
        """SPEC §3 item 6: a cap counts this user's sends in the last `per` (README, reading 3: now - per < t).
        Item 15: a cap with `if:` applies only while its rule holds for the user."""
        for cap in self.policies.frequency_caps:
            if cap.channel not in ("any", msg.channel):
                continue
            if cap.if_ is not None:
                self.touched.add("cap_if")
                if not self._holds(user, cap.if_, self._scope(user, now), now):
                    continue
            recent = [t for t, ch in user.ledger if now - cap.per < t <= now and cap.channel in ("any", ch)]
            if len(recent) >= cap.max:
                return True
        return False

    def _gates(self, user: User, msg: Message) -> list[tuple[str, int, int]]:
        """Local [start, end) spans a send may go in: its timing (window, optimal hour), then quiet hours."""
        gates = []
        qh = self.policies.quiet_hours if msg.channel not in QUIET_EXEMPT and not msg.transactional else None
        if isinstance(msg.send_at, SendWindow):
            gates.append(("window", *msg.send_at.bounds))
        elif msg.send_at == "optimal":
            hour = self._open_hour(user, qh)
            gates.append(("send_time", hour * 60, (hour + 1) * 60 % 1440))
        if qh is not None:
            gates.append(("quiet_hours", clock_minutes(qh.to), clock_minutes(qh.from_)))
        return gates

    def _deferral(self, user: User, msg: Message, now: datetime) -> tuple[str | None, datetime | None]:
        """Why this send cannot go now (the timing first, then quiet hours: README, reading 4), and the
        first instant every span allows; `drop` when quiet hours hold it and drop, `closed` when no
        instant is ever allowed."""
        gates = self._gates(user, msg)
        closed = [name for name, start, end in gates if not self._within(user, now, start, end)]
        if not closed:
            return None, None
        qh = self.policies.quiet_hours
        if closed[0] == "quiet_hours" and qh is not None and qh.action == "drop":  # never for transactional
            return "drop", None
        at = now
        for _ in range(30):
            shut = [(start, end) for _, start, end in gates if not self._within(user, at, start, end)]
            if not shut:
                return closed[0], at
            at = min(self._next_local(user, at, start, strictly=False) for start, _ in shut)
        return "closed", None

    def _open_hour(self, user: User, qh: Any) -> int:
        """The best hour (no engagement history in generated streams: the default hour), or when it is
        quiet, the nearest hour that is not, the earlier on a tie (README, reading 5)."""
        hour = self.policies.send_time.default_hour
        if qh is None:
            return hour
        start, end = clock_minutes(qh.from_), clock_minutes(qh.to)
        for distance in range(13):
            for h in ((hour - distance) % 24, (hour + distance) % 24):
                minute = h * 60
                if not (start <= minute < end if start < end else minute >= start or minute < end):
                    return h
        return hour

    def _within(self, user: User, at: datetime, start: int, end: int) -> bool:
        """Local [start, end), across midnight when end <= start."""
        local = at.astimezone(self._zone(user))
        minute = local.hour * 60 + local.minute
        return start <= minute < end if start < end else minute >= start or minute < end

    def _deferred(self, user: User, now: datetime) -> None:
        """Item 10: at `until`, a deferred send is decided again on eligibility, subscription and caps."""
        # item 11: those due together go by priority, then in the order they were held (a `send` list's)
        due = sorted((d for d in user.deferred if d.until <= now),
                     key=lambda d: (d.until, -self.ws.messages[d.message].priority))
        for d in due:
            user.deferred.remove(d)
            msg = self.ws.messages[d.message]
            inst = user.instances.get((d.journey, d.key))
            scope = self._scope(user, now, None, inst if inst is not None and inst.run == d.run else None)
            expiry = msg.expiry(self.policies.expires)
            if expiry is not None and now - d.until > expiry:
                self.touched.add("send_expiry")
                self._suppress(user, d, d.state, d.message, now, "expired")
            elif msg.if_ is not None and not self._holds(user, msg.if_, scope, now):
                self._suppress(user, d, d.state, d.message, now, "ineligible")
            elif not msg.transactional and not self._subscribed(user, msg):  # item 11: not for a transactional one
                self._suppress(user, d, d.state, d.message, now, "unsubscribed")
            else:
                self._go(user, d, d.message, d.state, now)

    # --- looking ------------------------------------------------------------------------------------

    def profile(self, uid: str, now: datetime) -> dict[str, Any] | None:
        user = self.users.get(self.aliases.get(uid, uid))
        if user is None:
            return None
        return {"traits": dict(user.traits), "metrics": self._metrics(user, now), "segments": set(user.segments),
                "instances": {(j, k): i.state for (j, k), i in user.instances.items()}}

