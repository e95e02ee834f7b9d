"""`journey serve --reload`: the service starts again with the workspace when its files change."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import watchfiles

from journey_engine.compiler import CompiledWorkspace, load_workspace
from journey_engine.errors import WorkspaceError


def watch_workspace(folder: Path, server: Any, refused: Callable[[WorkspaceError], None],
                    say: Callable[[str], None]) -> Callable[[], CompiledWorkspace | None]:
    """Watch the workspace; when it changes and loads, stop `server` so serve starts again with it (one
    that does not load goes to `refused`, and the running one is kept). Returns what to serve next: the
    new workspace, or None when the server stopped for another reason."""
    found: list[CompiledWorkspace] = []
    stop = threading.Event()

    def watch() -> None:
        for _ in watchfiles.watch(folder, stop_event=stop, debounce=300):
            try:
                found.append(load_workspace(folder))
            except WorkspaceError as exc:
                refused(exc)
                continue
            say(f"workspace {folder} changed: reloading")
            server.should_exit = True
            return

    threading.Thread(target=watch, name="workspace-watch", daemon=True).start()

    def next_workspace() -> CompiledWorkspace | None:
        stop.set()
        return found[-1] if found else None

    return next_workspace
