"""`journey report`, `journey preview` and `journey audience`: commands of the `journey` CLI kept beside it
(cli.py stays under the module size limit). `register` adds them to the Typer app with the CLI's own helpers, passed in,
so this module never imports cli.py (no import circle)."""

# annotations are evaluated at definition: the commands use the options passed to `register`

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console


def register(app: typer.Typer, *, load: Callable[[Path], Any], workspace: Callable[[Path | None], Path],
             open_store: Callable[..., Any], database: Callable[[str | None], str], out: Console,
             err: Console, database_opt: Any, workspace_opt: Any) -> None:
    @app.command()
    def report(journey: Annotated[str | None, typer.Argument(help="one journey (default: all)")] = None,
               html: Annotated[Path | None, typer.Option(help="also write one self-contained HTML file")] = None,
               version: Annotated[str | None, typer.Option(
                   help="only the runs on this version of JOURNEY (a version, or its first characters)")] = None,
               db: database_opt = None, ws: workspace_opt = None) -> None:
        """Funnel per state, message performance, holdout lift, bandit estimates, versions and segment cohorts."""
        from adapters.reporting import build_report, render_html, render_terminal
        from journey_engine.errors import UnknownJourneyError

        compiled = load(workspace(ws))
        store = open_store(db, compiled.metrics.defaults)
        try:
            built = build_report(store, compiled, journey, version=version)
        except UnknownJourneyError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
        finally:
            store.close()
        render_terminal(built, out)
        if html is not None:
            html.write_text(render_html(built), encoding="utf-8")
            err.print(f"wrote {html}")

    @app.command()
    def preview(message: Annotated[str, typer.Argument(help="the message id")],
                user: Annotated[str, typer.Option("--user", "-u", help="a user id in the store")],
                db: database_opt = None, ws: workspace_opt = None,
                as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False) -> None:
        """A message rendered for a real stored user: subject, body, locale and URL, whether it would be
        sent now and if not why (the policy's decision), and any template error. Exit 1: no such user or
        message; 2: a template error."""
        from adapters.reporting.preview import preview as build
        from journey_engine.engine import Engine

        compiled = load(workspace(ws))
        store = open_store(db, compiled.metrics.defaults)
        try:
            profile = store.load([user]).get(user)
        finally:
            store.close()
        if profile is None:
            err.print(f"[red]no user `{user}` in {database(db)}[/red]")
            raise typer.Exit(1)
        try:
            shown = build(Engine(compiled), profile, message, datetime.now(UTC))
        except LookupError as exc:
            err.print(f"[red]{exc.args[0]}[/red]")
            raise typer.Exit(1) from None
        if as_json:
            sys.stdout.write(json.dumps(asdict(shown)) + "\n")
        else:
            lines = [f"{shown.message} ({shown.channel}) for {shown.user}, locale {shown.locale or 'default'}"
                     + (f", as journey {shown.journey} would send it" if shown.journey else "")]
            lines += [f"{name}: {value}" for name, value in (("subject", shown.subject), ("title", shown.title),
                                                             ("url", shown.url)) if value]
            if shown.body is not None:
                lines += ["body:", *("  " + line for line in shown.body.splitlines())]
            verdict = {"send": "would be sent now", "defer": f"would be deferred until {shown.until}",
                       "suppress": "would not be sent"}[shown.action]
            lines.append(f"now: {verdict}" + (f" ({shown.reason})" if shown.reason else "")
                         + (f": {shown.explanation}" if shown.explanation else ""))
            if shown.template_error:
                lines.append(f"template error: {shown.template_error}")
            for line in lines:
                out.print(line, markup=False, soft_wrap=True)
        if shown.template_error:
            raise typer.Exit(2)

    @app.command()
    def audience(journey: Annotated[str, typer.Argument(help="journey name")], db: database_opt = None,
                 ws: workspace_opt = None,
                 as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False) -> None:
        """How many stored users would enter a journey now by its entry segment or rule (for an event entry:
        whose guard holds now), how many are in it already, and how many are in each segment."""
        from adapters.reporting.preview import audience as count
        from journey_engine.engine import Engine

        compiled = load(workspace(ws))
        store = open_store(db, compiled.metrics.defaults)
        try:
            found = count(Engine(compiled), store.all_profiles(), journey, datetime.now(UTC))
        except LookupError as exc:
            err.print(f"[red]{exc.args[0]}[/red]")
            raise typer.Exit(1) from None
        finally:
            store.close()
        if as_json:
            sys.stdout.write(json.dumps(asdict(found)) + "\n")
            return
        out.print(f"{found.journey} (entry: {found.entry}): of {found.users} stored users, {found.would_enter} "
                  f"would enter now, {found.in_journey} are in it, {found.not_again} may not enter again",
                  markup=False, soft_wrap=True)
        for name, n in sorted(found.segments.items(), key=lambda item: (-item[1], item[0])):
            out.print(f"  {name}: {n}", markup=False)
