"""Applying a workspace over a live store (SPEC §3, "Changing a live workspace"): `journey plan`, the
start of `journey serve` and its reloads, and the scenario step `deploy:` (the Harness) share this.

`plan_for` reads the versions in force, the stored definitions and the live instances, and plans the
workspace over them. `deploy` applies a plan that can be applied: the new versions are stored and put
in force in one transaction numbered after the deployment the plan read (another process that applied
a workspace meanwhile makes it fail, `DeploymentRace`). `migrate` then moves the instances that the plan
moves or exits, a chunk of users per commit (`Runtime.migrate`). `running` is the workspace a process
runs: the workspace's journeys, or, when its plan was refused, the versions in force, and beside them
every stored version that live instances are on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .compiler import CompiledWorkspace, with_versions
from .errors import JourneyError
from .ports import Versions
from .runtime import Runtime
from .versions import Plan, definition, plan, restore, runnable


class PlanRefused(JourneyError, RuntimeError):
    """A workspace whose plan cannot be applied over what is live (`journey plan` says why)."""

    def __init__(self, planned: Plan) -> None:
        self.plan = planned
        super().__init__("the workspace cannot be applied over the live versions: " + "; ".join(planned.refusals))


@dataclass(frozen=True, slots=True)
class Deployment:
    """What a process runs after applying (or refusing) a workspace."""

    number: int  # the deployment in force
    plan: Plan
    applied: bool


def plan_for(compiled: CompiledWorkspace, store: Versions) -> tuple[int, Plan]:
    """The deployment in force and the plan of applying `compiled` over it."""
    number, in_force = store.in_force()
    stored = {key: restore(text) for key, text in store.stored_versions().items()}
    ws = compiled.workspace
    check = runnable(ws.messages, ws.segments, ws.metrics)
    return number, plan({n: cj.journey for n, cj in compiled.journeys.items()}, in_force, stored,
                        store.live_instances(), check)


def deploy(compiled: CompiledWorkspace, store: Versions) -> Deployment:
    """Apply `compiled` when its plan can be applied (the versions in force stay otherwise). Raises
    `DeploymentRace` when another process applied a workspace between the plan and the write."""
    number, planned = plan_for(compiled, store)
    if not planned.appliable:
        return Deployment(number, planned, applied=False)
    if number and not planned.changed:
        return Deployment(number, planned, applied=True)  # nothing new: no deployment to number
    definitions = {(n, cj.version): definition(cj.journey) for n, cj in compiled.journeys.items()}
    in_force = {n: cj.version for n, cj in compiled.journeys.items()}
    return Deployment(store.deploy(definitions, in_force, after=number), planned, applied=True)


def running(compiled: CompiledWorkspace, store: Versions, deployment: Deployment) -> CompiledWorkspace:
    """The workspace this process runs: the files' journeys when applied, else the versions in force; and
    every stored version that live instances are on, for them to finish on."""
    stored = {key: restore(text) for key, text in store.stored_versions().items()}
    _, in_force = store.in_force()
    current = None if deployment.applied else {n: stored[(n, v)] for n, v in in_force.items() if (n, v) in stored}
    live = {(j, v) for j, v, _ in store.live_instances()}
    return with_versions(compiled, {key: j for key, j in stored.items() if key in live}, current=current)


def migrate(runtime: Runtime, store: Versions, deployment: Deployment, now: datetime) -> int:
    """Move the instances that the applied plan moves or exits; returns how many users were touched."""
    if not deployment.applied:
        return 0
    journeys = sorted({j.name for j in deployment.plan.journeys
                       if any(f.action in ("move", "exit") for f in j.fates)})
    if not journeys:
        return 0
    users = store.users_in(journeys)
    for start in range(0, len(users), 500):
        runtime.migrate(users[start:start + 500], now)
    return len(users)


def adopt(compiled: CompiledWorkspace, store: Versions) -> CompiledWorkspace:
    """What a process that does not deploy itself runs (an engine worker, a second `serve`): the versions in
    force in the store, which another process applied; the workspace's own journeys where they are those."""
    number, in_force = store.in_force()
    if number == 0:
        return compiled
    mine = {n: cj.version for n, cj in compiled.journeys.items()}
    return running(compiled, store, Deployment(number, Plan([]), applied=mine == in_force))
