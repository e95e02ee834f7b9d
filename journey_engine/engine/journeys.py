"""Journeys: entry, exit criteria, goals, the current state's transitions, arrival in a state (its sends,
timers, splits and the rules that move on at once) and the timers a state arms."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import clock
from ..compiler import CompiledJourney, CompiledTransition, CompiledTrigger
from ..events import Event
from ..facts import CycleStopped, GoalReached, JourneyEntered, JourneyExited, Transitioned
from ..model import AttributeTime, clock_minutes
from ..policies import resolve_zone
from ..profile import Instance, InstanceKey, entry_run
from ..selection import split_bandit, split_random
from .base import MAX_CHAIN, attribute, text
from .messages import Messages
from .plan import Plan, Run, StatePlan

_DETAIL = {"segment": "rule", "if": "rule", "always": "rule", "after": "after", "at": "at"}


class Journeys(Messages):
    """Where each of the user's journeys stands, and how it moves."""

    def _check(self, run: Run, plan: Plan, inst: Instance, event: Event | None, *, moves: bool = True) -> None:
        """Exit criteria, then the goal, then (unless a timer just moved it) the current state's transitions."""
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
        if not moves:
            return
        transition = self._first(run, plan.states[inst.state].checks, event, arrival=False)
        if transition is not None:
            self._move(run, cj, inst, transition)

    def _fires(self, run: Run, trigger: CompiledTrigger, event: Event | None, *, edge: bool) -> bool:
        if trigger.on is not None:
            if event is None or event.name != trigger.on:
                return False
        elif trigger.segment is not None:
            if not run.changed or trigger.segment not in (run.entered if edge else run.profile.segments):
                return False
        elif not run.changed:
            return False
        return trigger.rule is None or trigger.rule(run.scope, run.now)

    def _first(self, run: Run, transitions: tuple[CompiledTransition, ...], event: Event | None, *,
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

    def _enter(self, run: Run, cj: CompiledJourney, event: Event | None) -> None:
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
        ikey = self._of_cj[id(cj)].ikey if not key else (cj.name, key)
        if ikey in run.profile.instances or not self._may_reenter(run, cj, ikey):
            return
        run.scope.pop("journey", None)
        if not self._fires(run, entry, event, edge=True):
            return
        data = dict(event.properties) if event is not None and entry.on is not None else {}
        run_id = int(clock.epoch(run.now) * 1000)
        last = run.profile.last_entry(ikey)
        if last is not None and entry_run(last) >= run_id:  # a second entry in the same millisecond
            run_id = entry_run(last) + 1  # is a run of its own (SPEC §3 item 12)
        for d in run.profile.deferred or ():  # nor share an id with a held send an alias brought (_own_runs)
            if d.journey == cj.name and d.key == key and d.run >= run_id:
                run_id = d.run + 1
        inst = Instance(journey=cj.name, version=cj.version, key=key, state=cj.journey.initial,
                        entered_at=run.now, data=data, holdout=self._held_out(cj, run.profile.user_id), run=run_id)
        run.profile.add_instance(ikey, inst)
        run.profile.note_entry(ikey, inst.entry_epoch())
        run.out.facts.append(JourneyEntered(at=run.now, user=run.profile.user_id, journey=cj.name, key=key or None,
                                            state=inst.state, version=cj.version, holdout=inst.holdout))
        if not self._leaves_at_once(run, cj, inst):
            self._arrive(run, cj, inst)

    def _leaves_at_once(self, run: Run, cj: CompiledJourney, inst: Instance) -> bool:
        """An entrant who already meets a segment or rule exit criterion, or the goal, leaves at once,
        before any message: exits and goals are otherwise checked when something changes, and entering
        is not a change of the user's."""
        self._journey_scope(run, inst)
        for criterion in self._of_cj[id(cj)].exits_changed:
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
    def _holds(run: Run, trigger: CompiledTrigger) -> bool:
        """A segment or rule trigger's condition, now (no edge: being in the segment is enough)."""
        if trigger.segment is not None and trigger.segment not in run.profile.segments:
            return False
        return trigger.rule is None or trigger.rule(run.scope, run.now)

    @staticmethod
    def _became_true(run: Run, cj: CompiledJourney) -> bool:
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

    def _may_reenter(self, run: Run, cj: CompiledJourney, ikey: InstanceKey) -> bool:
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

    def _move(self, run: Run, cj: CompiledJourney, inst: Instance, t: CompiledTransition,
              trigger: str | None = None) -> None:
        """Leave the state because of an event, a rule turning true or a timer: the journey's machine moves the
        instance (its callbacks: `left`, then `entered`), then whatever follows at once is followed."""
        run.steps = 0
        cj.machine.step(inst, inst.state, t.index, self, run, cj,
                        trigger or (f"event:{t.on}" if t.kind == "on" else _DETAIL[t.kind]))
        self._follow(run, cj, inst)

    def _arrive(self, run: Run, cj: CompiledJourney, inst: Instance) -> None:
        """A new instance in its initial state: enter it, then follow what follows at once."""
        run.steps = 0
        self._settle_in(run, cj, inst)
        self._follow(run, cj, inst)

    # the callbacks of the journey's machine (machine.Driver): exit, then entry

    def left(self, inst: Instance, run: Run, cj: CompiledJourney) -> None:
        """The state's exit: the sends it deferred before this call are cancelled (SPEC §3 item 10)."""
        if run.profile.deferred:
            self._cancel(run, inst, "left_state", inst.visit)

    def entered(self, inst: Instance, run: Run, cj: CompiledJourney, source: str, label: str) -> None:
        """The state's entry: the move is traced, then the state entered."""
        run.out.facts.append(Transitioned(at=run.now, user=run.profile.user_id, journey=cj.name, key=inst.key or None,
                                          source=source, target=inst.state, trigger=label))
        self._settle_in(run, cj, inst)

    def _settle_in(self, run: Run, cj: CompiledJourney, inst: Instance) -> None:
        """Enter inst.state: send, start timers; note in `run` the split, true rule or fallback to follow at once."""
        run.follow = None
        run.split_next = False
        run.steps += 1
        if run.steps > MAX_CHAIN:
            run.out.facts.append(CycleStopped(
                at=run.now, user=run.profile.user_id, journey=cj.name, key=inst.key or None, state=inst.state,
                error=f"more than {MAX_CHAIN} transitions in a row: a loop of states whose rules are all true; "
                      "stopped here"))
            return
        plan = self._of_cj[id(cj)].states[inst.state]
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
            run.split_next = True
            return
        run.follow = self._first(run, plan.checks, None, arrival=True)

    def _follow(self, run: Run, cj: CompiledJourney, inst: Instance) -> None:
        """Splits, true rules and fallbacks, taken at once through the machine until a state holds the instance."""
        while True:
            if run.split_next:
                run.split_next = False
                cj.machine.step(inst, inst.state, self._split(run, cj, inst), self, run, cj, "split", split=True)
            elif run.follow is not None:
                t, run.follow = run.follow, None
                cj.machine.step(inst, inst.state, t.index, self, run, cj, "rule")
            else:
                return

    def _split(self, run: Run, cj: CompiledJourney, inst: Instance) -> int:
        """The path a split sends this instance down (a bandit split learns that it chose it)."""
        split = cj.journey.states[inst.state].split
        assert split is not None
        paths = [(p.to, p.weight) for p in split.paths]
        rng = self._rng(run, inst, "split")
        if split.strategy == "bandit":
            stats = self.bandits.setdefault((cj.name, inst.state), {})
            target = split_bandit(paths, {k[2:]: v for k, v in stats.items() if k.startswith("->")}, rng)
            self._learn(run, cj.name, inst.state, "->" + target, 1, 0)
            attribute(inst, "->" + target, run.now, inst.state)
        else:
            target = split_random(paths, rng)
        return next(i for i, (to, _) in enumerate(paths) if to == target)

    def _exit(self, run: Run, cj: CompiledJourney, inst: Instance, reason: str) -> None:
        profile = run.profile
        ikey = self._of_cj[id(cj)].ikey if not inst.key else (cj.name, inst.key)  # the shared tuple if unkeyed
        profile.remove_instance(ikey)
        profile.note_entry(ikey, inst.entry_epoch())
        inst.timers = ()
        if reason != "final" and profile.deferred:  # a final state's deferred sends still go (SPEC §3 item 10)
            self._cancel(run, inst, "left_journey", None)
        run.out.facts.append(JourneyExited(at=run.now, user=profile.user_id, journey=cj.name, key=inst.key or None,
                                           reason=reason, state=inst.state))

    def _goal(self, run: Run, cj: CompiledJourney, inst: Instance) -> None:
        goal = cj.journey.goal
        assert goal is not None
        credited = []
        for arm, at, state in inst.sent or ():
            if run.now - at <= goal.within and (cj.name, state) in self.bandits:
                self._learn(run, cj.name, state, arm, 0, 1)
                credited.append(arm.removeprefix("->"))
        run.out.facts.append(GoalReached(at=run.now, user=run.profile.user_id, journey=cj.name, key=inst.key or None,
                                         attributed=tuple(credited)))
        inst.sent = None

    def _timers(self, run: Run, plan: StatePlan) -> list[tuple[datetime, int]]:
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

    def _next_local(self, run: Run, time_of_day: str) -> datetime:
        zone = resolve_zone(text(run.profile.traits.get("timezone")), self.policies.timezone)
        local = clock.local(run.now, zone)
        minutes = clock_minutes(time_of_day)
        candidate = local.replace(hour=minutes // 60, minute=minutes % 60, second=0, microsecond=0)
        if candidate <= local:
            candidate = (local + timedelta(days=1)).replace(hour=minutes // 60, minute=minutes % 60, second=0,
                                                           microsecond=0)
        # replace() on an aware datetime keeps the old offset: rebuild in the zone for DST days
        naive = candidate.replace(tzinfo=None)
        return naive.replace(tzinfo=zone).astimezone(UTC)


def _path(scope: dict[str, Any], dotted: str) -> Any:
    value: Any = scope
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value
