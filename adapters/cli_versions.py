"""`journey plan`: what applying a workspace would do to live users (SPEC §3, "Changing a live workspace").
Kept beside cli.py like cli_reach.py: `register` adds it with the CLI's own helpers, passed in."""

# annotations are evaluated at definition: the command uses the options passed to `register`

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console


def register(app: typer.Typer, *, load: Callable[[Path], Any], workspace: Callable[[Path | None], Path],
             open_store: Callable[..., Any], out: Console, database_opt: Any) -> None:
    @app.command()
    def plan(ws: Annotated[Path | None, typer.Argument(envvar="JOURNEY_WORKSPACE", show_default=False,
                                                        help="workspace folder (default: journeys/)")] = None,
             db: database_opt = None,
             as_json: Annotated[bool, typer.Option("--json", help="one JSON object, for CI")] = False) -> None:
        """What applying the workspace would do to live users: per changed journey what changed, and per
        state how many live instances stay pinned, move or exit. Exit 0: it can be applied; 1: something
        would be refused; 2: the workspace does not load."""
        from adapters.reporting.plan import render
        from journey_engine.deployment import plan_for

        compiled = load(workspace(ws))  # exits 2 when it does not load
        store = open_store(db, compiled.metrics.defaults)
        try:
            deployment, planned = plan_for(compiled, store)
        finally:
            store.close()
        if as_json:
            print(json.dumps({"deployment": deployment, **planned.as_json()}, indent=2))
        else:
            render(planned, deployment, out)
        raise typer.Exit(0 if planned.appliable else 1)
