"""Time: what falls due at a wake-up (timers, deferred sends, time-driven segments and rules), firing it
until nothing is due at `now`, and the user's next wake-up."""

from __future__ import annotations

from datetime import datetime

from .. import clock
from ..compiler import CompiledTransition, CompiledTrigger
from ..facts import CycleStopped, RuleFailed
from ..profile import UNSETTLED, Instance, Profile
from ..rules import RULE_ERRORS
from .base import MAX_CHAIN, NO_GROUPS, by_journey
from .plan import Plan, Run
from .versions import Versions


class Schedule(Versions):
    """Wake-ups and the catching up after an input."""

    def _wake(self, run: Run) -> None:
        profile = run.profile
        changed = self.cw.metrics.refresh(profile, run.now)
        self._segments(run, metrics=changed, traits=False, timed=True)
        # time alone flips only rules that read $now; the rest need a metric or segment to have moved
        run.changed = run.changed or bool(changed) or self._reads_clock(profile)
        if profile.deferred:
            self._deferred(run)
        groups = by_journey(profile) if profile.instances else NO_GROUPS
        for plan in self._plans:
            instances = groups.get(plan.name)
            if instances:
                for inst in instances:
                    own = self._running(run, inst)
                    if own is not None:
                        self._timer_then_check(run, own, inst)
            if plan.entry_on is None and (plan.entry_segment is None or plan.entry_segment in run.entered):
                self._enter(run, plan.cj, None)  # a segment entry, or a rule entry if something changed
        for inst, own in self._retired_instances(run, groups):
            self._timer_then_check(run, own, inst)
        run.entered.clear()

    def _timer_then_check(self, run: Run, plan: Plan, inst: Instance) -> None:
        """A due timer fires first (README reading 7); then exits and the goal still hold the instance to the
        user's change, in the state the timer moved it to. Without a due timer: the whole check."""
        if not self._fire_timer(run, plan, inst):
            self._check(run, plan, inst, None)
        elif run.profile.instances.get((inst.journey, inst.key)) is inst:
            self._check(run, plan, inst, None, moves=False)

    def _reads_clock(self, profile: Profile) -> bool:
        """Whether a rule that reads `$now` matters to this user now: of their current states, their
        journeys' exits and goals, or an `if:` entry."""
        if not self._clock_rules:
            return False
        if self._clock_entries:
            return True
        for inst in profile.instances.values():
            plan = self._version_of(inst)
            if plan is not None and (plan.clock_triggers or plan.states[inst.state].clock_rules):
                return True
        return False

    def _fire_timer(self, run: Run, plan: Plan, inst: Instance) -> bool:
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

    def _settle(self, run: Run) -> None:
        """Fire whatever is already due (timers at `now`), compute the user's next wake-up, and trace the
        rules that failed on the way."""
        self._catch_up(run)
        errors = run.scope.pop(RULE_ERRORS, None)
        if errors:
            seen: set[tuple[str, str]] = set()
            for rule, error in errors:
                if (rule.where, error) not in seen:
                    seen.add((rule.where, error))
                    run.out.facts.append(RuleFailed(at=run.now, user=run.profile.user_id, rule=rule.where,
                                                    error=error, text=rule.text))

    def _catch_up(self, run: Run) -> None:
        now = clock.epoch(run.now)
        for _ in range(MAX_CHAIN):
            self._schedule(run)
            if run.profile.wake_at is None or run.profile.wake_at > now:
                return
            self._wake(run)
        self._break_loop(run)
        run.profile.segments_due_at = UNSETTLED  # cut short after a wake-up: its anchors were not noted

    def _break_loop(self, run: Run) -> None:
        """Still due after MAX_CHAIN wake-ups at one instant: timers that keep falling due at once (states
        whose `at` dates have passed, pointing at each other). Drop them and say so; never spin."""
        for inst in run.profile.instances.values():
            if any(at <= run.now for at, _ in inst.timers):
                inst.timers = tuple(t for t in inst.timers if t[0] > run.now)
                run.out.facts.append(CycleStopped(
                    at=run.now, user=run.profile.user_id, journey=inst.journey, key=inst.key or None,
                    state=inst.state, error=f"timers fell due at once more than {MAX_CHAIN} times in a row: a "
                                            "loop of timers whose times have passed; this state's timers dropped"))
        self._schedule(run)
        now = clock.epoch(run.now)
        if run.profile.wake_at is not None and run.profile.wake_at <= now:
            run.profile.wake_at = now + 60  # whatever else keeps falling due waits a minute, not a spin

    def _schedule(self, run: Run) -> None:
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

    def _rule_change(self, run: Run) -> datetime | None:
        """When time alone may next flip a rule that matters to this user: the current states' `if`
        rules, the exit and goal rules of their journeys, and `if:` entries of journeys they are not in."""
        best: datetime | None = None
        for inst in run.profile.instances.values():
            plan = self._version_of(inst)
            if plan is None:
                continue
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
