"""Which version of its journey each instance runs on (SPEC §3, "Changing a live workspace"), and the
per-event walk over the user's journeys that asks it.

An instance runs on the version it entered with (pinned). When the version in force has
`on_change: move`, an instance of another version moves to it the first time the engine touches it
(or when the service sweeps the users after a deploy, `Engine.migrate`): into the state of the same
name or the one `moves:` maps it to, keeping the timers whose transition (trigger and target) is
unchanged and arming the others from when it entered the state; an instance whose state is gone and
not mapped exits with reason `version`. A journey removed from the files finishes its live
instances on their stored version and takes no one new.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..events import Event
from ..facts import JourneyExited, JourneyMigrated
from ..profile import Instance
from ..versions import transition_ids
from .base import NO_GROUPS, by_journey
from .journeys import Journeys
from .plan import Plan, Run

if TYPE_CHECKING:
    from collections.abc import Iterator


class Versions(Journeys):
    """The walk over the user's journeys for one input, each instance on the version it runs on."""

    def _journeys(self, run: Run, event: Event | None) -> None:
        groups = by_journey(run.profile) if run.profile.instances else NO_GROUPS
        for plan in self._plans:
            instances = groups.get(plan.name)
            if instances:
                key_prop = plan.key_prop
                routed = None
                if event is not None and key_prop is not None and key_prop in event.properties:
                    routed = str(event.properties[key_prop])
                for inst in instances:
                    own = self._running(run, inst)
                    if own is None:
                        continue
                    if routed is None or inst.key == routed:
                        self._check(run, own, inst, event)
                    elif run.changed:
                        self._unrouted(run, own, inst)
            if plan.may_enter(run, event):
                self._enter(run, plan.cj, event)  # the rest of the entry checks
        for inst, own in self._retired_instances(run, groups):
            key_prop = own.key_prop
            if event is None or key_prop is None or key_prop not in event.properties \
                    or inst.key == str(event.properties[key_prop]):
                self._check(run, own, inst, event)
            elif run.changed:
                self._unrouted(run, own, inst)
        run.entered.clear()  # each segment entered is one edge: it enters its journeys once, not again this step

    def _unrouted(self, run: Run, plan: Plan, inst: Instance) -> None:
        """An event carrying another key does not reach this instance (SPEC §3 item 5), but the change it made
        to the user does: its segment and rule exits, goal and transitions are checked without the event."""
        scope = run.scope
        saved = scope.pop("event", None), scope.pop("properties", None)
        try:
            self._check(run, plan, inst, None)
        finally:
            if saved[0] is not None:
                scope["event"], scope["properties"] = saved

    def _retired_instances(self, run: Run, groups: dict[str, list[Instance]]) -> Iterator[tuple[Instance, Plan]]:
        """The live instances of journeys gone from the files, with the version each finishes on."""
        for name in self._retired:
            for inst in groups.get(name, ()):
                own = self._running(run, inst)
                if own is not None:
                    yield inst, own

    def _running(self, run: Run, inst: Instance) -> Plan | None:
        """The plan this instance runs on now, after moving it to the version in force if that one says
        `on_change: move`; None when it has just left (its state is gone)."""
        plan = self._plan.get(inst.journey)
        if plan is not None and plan.cj.version == inst.version:
            return plan  # the common case: on the version in force
        own = self._version_of(inst)
        if own is None:
            self._gone(run, inst)
            return None
        if plan is not None and own is not plan and plan.cj.journey.on_change == "move":
            return self._move_to(run, own, plan, inst)
        return own

    def _move_to(self, run: Run, old: Plan, new: Plan, inst: Instance) -> Plan | None:
        target = new.cj.journey.moves.get(inst.state, inst.state)
        if target not in new.states:
            self._exit(run, old.cj, inst, "version")
            return None
        before = dict(enumerate(transition_ids(old.cj.journey.states[inst.state].transitions)))
        after = {tid: i for i, tid in enumerate(transition_ids(new.cj.journey.states[target].transitions))}
        kept = {after[before[i]]: due for due, i in inst.timers if before.get(i) in after}
        run.out.facts.append(JourneyMigrated(at=run.now, user=run.profile.user_id, journey=inst.journey,
                                             key=inst.key or None, from_version=inst.version,
                                             to_version=new.cj.version, source=inst.state, target=target))
        inst.version = new.cj.version
        inst.state = target
        state = new.states[target]
        if state.timers:
            now = run.now
            run.now = inst.state_entered_at  # a new or changed timer counts from when the state was entered
            self._journey_scope(run, inst)
            armed = {i: max(due, now) for due, i in self._timers(run, state)}
            run.now = now
            armed.update(kept)
            inst.timers = tuple(sorted((due, i) for i, due in armed.items()))
        else:
            inst.timers = ()
        return new

    def _gone(self, run: Run, inst: Instance) -> None:
        """An instance whose version is not stored and whose state the version in force lacks: it exits."""
        key = (inst.journey, inst.key)
        run.profile.remove_instance(key)
        run.profile.note_entry(key, inst.entry_epoch())
        if run.profile.deferred:
            self._cancel(run, inst, "left_journey", None)
        run.out.facts.append(JourneyExited(at=run.now, user=run.profile.user_id, journey=inst.journey,
                                           key=inst.key or None, reason="version", state=inst.state))
