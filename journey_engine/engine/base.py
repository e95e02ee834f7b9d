"""The engine's first layer: the workspace it runs, its plans and bandit statistics, and what every
other layer uses (segment evaluation, the journey scope of rules, learning, per-decision randomness)."""

from __future__ import annotations

import random
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from ..compiler import CompiledWorkspace
from ..facts import SegmentEntered, SegmentLeft
from ..model import DEFAULT_EXPIRY
from ..profile import Instance, Profile
from .plan import Plan, Run

MAX_CHAIN = 100
Stats = dict[str, tuple[int, int]]


class Base:
    """The compiled workspace and the state the engine keeps itself (bandit statistics)."""

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
        self._control = self.policies.control_group  # share of users held out of every journey's sends
        self._plans = tuple(Plan.of(cj, self.messages) for cj in compiled.journeys.values())
        self._plan = {p.name: p for p in self._plans}
        # every version live instances may be on: the ones new entrants take, and the stored ones beside them
        stored = tuple(Plan.of(cj, self.messages) for cj in compiled.versions.values())
        self._versions = {(p.name, p.cj.version): p for p in (*self._plans, *stored)}
        self._of_cj = {id(p.cj): p for p in (*self._plans, *stored)}
        self._retired = tuple(sorted({p.name for p in stored} - set(self._plan)))  # journeys gone from the files
        self._clock_entries = any(p.clock_entry for p in self._plans)
        self._clock_rules = self._clock_entries or any(
            p.clock_triggers or any(sp.clock_rules for sp in p.states.values()) for p in self._versions.values())
        self._defaults = MappingProxyType(compiled.metrics.defaults)  # shared by every profile, read-only
        self._ledger_span = max((c.per for c in self.policies.frequency_caps), default=timedelta(0))
        self._subscribed_by_default = {name: sub.default == "subscribed"
                                       for name, sub in compiled.workspace.subscriptions.items()}

    def _version_of(self, inst: Instance) -> Plan | None:
        """The plan of the version this instance runs on: its own, or for a version never stored (from
        before versions were) the one in force, if it has the instance's state."""
        plan = self._versions.get((inst.journey, inst.version))
        if plan is None:
            plan = self._plan.get(inst.journey)
            if plan is None or inst.state not in plan.states:
                return None
            inst.version = plan.cj.version
        return plan

    def _segments(self, run: Run, *, metrics: AbstractSet[str], traits: bool, timed: bool) -> None:
        run.scope.pop("journey", None)  # membership is per user: never read a journey instance's leftovers
        for name, entered in self.cw.segments.evaluate(run.profile, run.scope, run.now, metrics=metrics,
                                                       traits=traits, timed=timed):
            run.out.facts.append(SegmentEntered(at=run.now, user=run.profile.user_id, segment=name) if entered
                                 else SegmentLeft(at=run.now, user=run.profile.user_id, segment=name))
            if entered:
                run.entered.add(name)
            run.changed = True

    def _journey_scope(self, run: Run, inst: Instance) -> None:
        run.scope["journey"] = {"entered_at": inst.entered_at, "state_entered_at": inst.state_entered_at,
                                "key": inst.key or None, "data": inst.data}

    def _learn(self, run: Run, journey: str, state: str, arm: str, sends: int, conversions: int) -> None:
        stats = self.bandits.setdefault((journey, state), {})
        before = stats.get(arm, (0, 0))
        stats[arm] = (before[0] + sends, before[1] + conversions)
        run.out.learned((journey, state, arm), sends, conversions)

    def _rng(self, run: Run, inst: Instance, purpose: str) -> random.Random:
        """A generator per decision: the same seed and user give the same choice, whatever the others do."""
        return random.Random(
            f"{self.seed}:{run.profile.user_id}:{inst.journey}:{inst.key}:{inst.run}:{inst.visit}:{purpose}")


NO_GROUPS: dict[str, list[Instance]] = {}


def by_journey(profile: Profile) -> dict[str, list[Instance]]:
    """The user's instances per journey, in the order they were entered."""
    groups: dict[str, list[Instance]] = {}
    for (name, _), inst in profile.instances.items():
        groups.setdefault(name, []).append(inst)
    return groups


def attribute(inst: Instance, arm: str, at: datetime, learns: str) -> None:
    """Remember a choice made for this instance, so a goal reached later credits it where it was learnt."""
    choice = (arm, at, learns)
    if inst.sent is None:
        inst.sent = [choice]
    else:
        inst.sent.append(choice)


def text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
