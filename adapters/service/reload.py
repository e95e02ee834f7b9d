"""What `journey serve` runs, and when it starts again: at start and on `--reload` it applies the workspace
over the store's live versions when the plan allows (SPEC §3, "Changing a live workspace"), and it
follows a deployment that another process made, so that every process on one database gives new
entrants the same versions."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import watchfiles
from rich.console import Console

from adapters.reporting.plan import render
from journey_engine.compiler import CompiledWorkspace, load_workspace
from journey_engine.deployment import adopt, deploy, migrate, running
from journey_engine.engine import Engine
from journey_engine.errors import WorkspaceError
from journey_engine.ports import DeploymentRace, ServiceStore
from journey_engine.runtime import Runtime
from journey_engine.versions import Plan

FOLLOW_SECONDS = 2.0  # how often a serve process looks for a deployment made by another


def apply_workspace(compiled: CompiledWorkspace, store: ServiceStore, *, refused: Callable[[Plan], None],
                    say: Callable[[str], None], running_now: CompiledWorkspace | None = None
                    ) -> tuple[CompiledWorkspace, int] | None:
    """Apply `compiled` when its plan can be applied, move the instances it moves, and return what to run
    with its deployment number. A refused plan goes to `refused`; then the workspace running now is kept
    (None: keep it), or at start the versions in force are run."""
    for _ in range(3):
        try:
            done = deploy(compiled, store)
            break
        except DeploymentRace:
            continue  # another process deployed meanwhile: plan again over what it applied
    else:
        raise RuntimeError("three deployments raced this one; start again")
    if not done.applied:
        refused(done.plan)
        if running_now is not None:
            return None
    serving = running(compiled, store, done)
    moved = migrate(Runtime(Engine(serving), store), store, done, datetime.now(UTC))
    if done.applied and done.plan.changed:
        say(f"deployment {done.number}: {len(done.plan.changed)} journey(s) changed, {moved} user(s) moved")
    return serving, done.number


def serve_workspaces(compiled: CompiledWorkspace, store: ServiceStore, folder: Path,
                     run: Callable[[CompiledWorkspace, Callable[[Any], None]], None], *, reload: bool,
                     err: Console) -> None:
    """`journey serve`'s life: apply the workspace, run a server on it (`run(compiled, on_server)`, which
    calls `on_server(server)` before it blocks), and start again when the files change (`reload`) or
    another process makes a deployment. Refusals are printed to `err`."""
    def refused_plan(plan: Plan) -> None:
        err.print("[yellow]the workspace's plan cannot be applied over the live versions; the running versions "
                  "stay:[/yellow]", soft_wrap=True)
        render(plan, 0, err)

    def refused_files(exc: WorkspaceError) -> None:
        err.print("[yellow]the changed workspace does not load; still serving the last one:[/yellow]")
        for problem in exc.problems:
            err.print(str(problem), soft_wrap=True, markup=False)

    applied = apply_workspace(compiled, store, refused=refused_plan, say=err.print)
    assert applied is not None
    serving, number = applied
    while True:
        watchers: list[Callable[[], tuple[str, CompiledWorkspace] | None]] = []

        def on_server(server: Any, watchers: list[Any] = watchers, number: int = number) -> None:
            watchers.append(watch_workspace(folder, server, refused_files, err.print, store=store, number=number,
                                            files=reload))

        run(serving, on_server)
        changed = watchers[0]() if watchers else None
        if changed is None:
            return
        why, new = changed
        if why == "follow":
            serving, number = new, store.in_force()[0]
            continue
        again = apply_workspace(new, store, refused=refused_plan, say=err.print, running_now=serving)
        if again is not None:
            serving, number = again


def watch_workspace(folder: Path, server: Any, refused: Callable[[WorkspaceError], None],
                    say: Callable[[str], None], *, store: ServiceStore, number: int, files: bool,
                    ) -> Callable[[], tuple[str, CompiledWorkspace] | None]:
    """Stop `server` when the workspace's files change and load (`files`; one that does not load goes to
    `refused`, and the running one is kept), or when another process made a deployment after `number`.
    Returns why and what to serve next (files: the workspace to apply; follow: the one to run), or None
    when the server stopped for another reason."""
    found: list[tuple[str, CompiledWorkspace]] = []
    stop = threading.Event()

    def watch() -> None:
        for _ in watchfiles.watch(folder, stop_event=stop, debounce=300):
            try:
                found.append(("files", load_workspace(folder)))
            except WorkspaceError as exc:
                refused(exc)
                continue
            say(f"workspace {folder} changed: reloading")
            server.should_exit = True
            return

    if files:
        threading.Thread(target=watch, name="workspace-watch", daemon=True).start()
    threading.Thread(target=_follow, args=(folder, store, number, server, found, stop, say),
                     name="deployment-follow", daemon=True).start()

    def next_workspace() -> tuple[str, CompiledWorkspace] | None:
        stop.set()
        return found[-1] if found else None

    return next_workspace


def _follow(folder: Path, store: ServiceStore, number: int, server: Any,
            found: list[tuple[str, CompiledWorkspace]], stop: threading.Event, say: Callable[[str], None]) -> None:
    while not stop.wait(FOLLOW_SECONDS):
        now = store.in_force()[0]
        if now != number:
            found.append(("follow", adopt(load_workspace(folder), store)))
            say(f"another process made deployment {now}: following it")
            server.should_exit = True
            return
