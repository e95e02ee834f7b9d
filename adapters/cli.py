"""The `journey` command (SPEC §7): wiring of the core and adapters from flags and environment."""

from __future__ import annotations

import json
import os
import shlex
import sys
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from adapters import cli_bus, cli_reach, cli_versions
from adapters.service.tuning import tune_gc
from journey_engine.errors import JourneyError, ScenarioError, UnknownJourneyError, WorkspaceError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="An adaptive customer-journey engine: journeys as YAML state machines.")
app.command()(cli_bus.worker)  # `journey worker` (SPEC §9), in adapters/cli_bus.py with the bus's other options
err = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160)  # piped: wide

WorkspaceOpt = Annotated[Path | None, typer.Option("--workspace", "-w", envvar="JOURNEY_WORKSPACE",
                                                   help="workspace folder (default: journeys/)")]
ScenarioWorkspaceOpt = Annotated[Path | None, typer.Option("--workspace", "-w", help="workspace folder "
                                                           "(default: the scenario's own)")]


DatabaseOpt = Annotated[str | None, typer.Option("--database", "-d", envvar="JOURNEY_DATABASE_URL",
                                                 help="database URL (default: sqlite:///journey.db)")]


class Format(StrEnum):
    mermaid = "mermaid"
    dot = "dot"
    svg = "svg"


class StoreKind(StrEnum):
    memory = "memory"
    sqlite = "sqlite"
    postgres = "postgres"


class Clock(StrEnum):
    wall = "wall"
    event = "event"


def _database(url: str | None) -> str:
    """The URL given (--database or $JOURNEY_DATABASE_URL, see DatabaseOpt), or the embedded default."""
    from adapters.storage.sql import DEFAULT_URL

    return url or DEFAULT_URL


def _open_store(url: str | None, defaults: dict[str, object] | None = None,  # type: ignore[no-untyped-def]
                schema: str | None = None):
    from adapters.storage import open_store
    from journey_engine.ports import StoreUnavailable, StoreVersionError

    try:
        return open_store(_database(url), defaults=dict(defaults or {}), schema=schema)
    except (StoreUnavailable, StoreVersionError) as exc:
        err.print(f"[red]{exc}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None


def _workspace(path: Path | None) -> Path:
    """The folder given (--workspace or $JOURNEY_WORKSPACE, see WorkspaceOpt), or journeys/."""
    return path or Path("journeys")


def _load(path: Path, *, long_running: bool = False):  # type: ignore[no-untyped-def]
    from journey_engine.compiler import load_workspace

    try:
        compiled = load_workspace(path)
    except WorkspaceError as exc:
        _problems(exc)
        raise typer.Exit(2) from None
    if long_running:
        tune_gc()
    return compiled


def _problems(exc: WorkspaceError) -> None:
    for p in exc.problems:
        style = "red" if p.severity == "error" else "yellow"
        err.print(f"[{style}]{p}[/{style}]", soft_wrap=True)
    errors = sum(p.severity == "error" for p in exc.problems)
    err.print(f"{errors} error(s), {len(exc.problems) - errors} warning(s)")


@app.command()
def validate(workspace: Annotated[Path | None, typer.Argument(envvar="JOURNEY_WORKSPACE",
                                                               help="workspace folder (default: journeys/)")]
             = None) -> None:
    """Load and lint a workspace; print every problem as file:line:col; exit 1 on error."""
    from journey_engine.compiler import load_workspace

    root = _workspace(workspace)
    try:
        compiled = load_workspace(root)
    except WorkspaceError as exc:
        _problems(exc)
        raise typer.Exit(1) from None
    for p in compiled.warnings:
        err.print(f"[yellow]{p}[/yellow]", soft_wrap=True)
    ws = compiled.workspace
    out.print(f"[green]ok[/green] {root}: {len(ws.journeys)} journeys, {len(ws.messages)} messages, "
              f"{len(ws.segments)} segments, {len(ws.metrics)} metrics, {len(compiled.warnings)} warning(s)")


@app.command()
def schema() -> None:
    """Print the JSON Schema of a workspace file, for editors to complete and check journey files."""
    from journey_engine.model import WorkspaceFile

    document = WorkspaceFile.model_json_schema(by_alias=True)
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "journey-engine workspace file"
    out.print_json(json.dumps(document))


@app.command()
def graph(journey: Annotated[str, typer.Argument(help="journey name")],
          format: Annotated[Format, typer.Option("--format", "-f", help="the drawing's format")] = Format.mermaid,
          workspace: WorkspaceOpt = None) -> None:
    """Draw a journey as mermaid, dot, or svg (svg needs graphviz's `dot`)."""
    from journey_engine.graph import to_dot, to_mermaid

    compiled = _load(_workspace(workspace))
    journeys = compiled.workspace.journeys
    if journey not in journeys:
        err.print(f"[red]{UnknownJourneyError(journey, journeys)}[/red]")
        raise typer.Exit(1)
    if format == "mermaid":
        sys.stdout.write(to_mermaid(journeys[journey]) + "\n")
    elif format == "dot":
        sys.stdout.write(to_dot(journeys[journey]) + "\n")
    else:
        from adapters.graphviz import to_svg

        try:
            sys.stdout.write(to_svg(journeys[journey]))
        except JourneyError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None


@app.command()
def simulate(scenario: Annotated[list[Path], typer.Argument(help="scenario file(s)")],
             workspace: ScenarioWorkspaceOpt = None,
             as_json: Annotated[bool, typer.Option("--json", help="the trace as JSON lines")] = False) -> None:
    """Run scenarios on a virtual clock: exit 0 when every expect holds, 1 when one fails, 2 when one
    does not load."""
    from journey_engine.compiler import load_workspace
    from journey_engine.simulation import format_record, load_scenario, run_scenario

    failed = False
    for path in scenario:
        try:
            loaded = load_scenario(path)
            compiled = load_workspace(workspace or loaded.workspace_dir())
            result = run_scenario(loaded, compiled)  # checks the expects' names before playing
        except ScenarioError as exc:
            err.print(str(exc), style="red", soft_wrap=True, markup=False)
            raise typer.Exit(2) from None
        except WorkspaceError as exc:
            _problems(exc)
            raise typer.Exit(2) from None
        failed = failed or not result.passed
        if as_json:
            for record in result.trace:
                sys.stdout.write(json.dumps(record, default=str) + "\n")
            sys.stdout.write(json.dumps(result.summary()) + "\n")
            continue
        out.print(f"[bold]{loaded.scenario.scenario}[/bold]  ({path})")
        for record in result.trace:
            out.print("  " + format_record(record), soft_wrap=True, markup=False)
        for failure in result.failures:
            err.print(failure.describe(str(path)), soft_wrap=True, markup=False)
        verdict = "[green]passed[/green]" if result.passed else "[red]FAILED[/red]"
        out.print(f"{verdict}: {result.expectations - len(result.failures)}/{result.expectations} "
                  "expectations hold\n")
    raise typer.Exit(1 if failed else 0)


@app.command()
def bench(users: Annotated[int, typer.Option(help="distinct users")] = 100_000,
          events: Annotated[int, typer.Option(help="events to process")] = 1_000_000,
          store: Annotated[StoreKind, typer.Option(help="where the profiles are kept")] = StoreKind.memory,
          batch: Annotated[int | None, typer.Option(help="events per commit (1 in memory, 500 on disk)")] = None,
          days: Annotated[float, typer.Option(help="virtual days the events are spread over (30: every journey "
                                                   "runs to its end; 1: mostly the event path)")] = 30,
          workers: Annotated[int, typer.Option(min=1, help="with --store sqlite|postgres: engine processes (as "
                                                           "`serve --workers` runs them) sharing the database, "
                                                           "each owning a partition of the users")] = 1,
          hot: Annotated[int | None, typer.Option(help="with --store memory: profiles kept as live objects; the "
                                                       "others are kept encoded (less memory, slower)")] = None,
          workspace: WorkspaceOpt = None, seed: int = 1, database: DatabaseOpt = None,
          http: Annotated[str | None, typer.Option(help="drive a running `journey serve` at this URL instead")] = None,
          rate: Annotated[float | None, typer.Option(help="with --http: events/s to offer (default: flat out)")] = None,
          requests: Annotated[int, typer.Option(help="with --http: /v1/batch requests of 100 events")] = 500,
          timers: Annotated[int, typer.Option(help="instead of events: a spike of this many timers due in the "
                                                   "same second, drained and committed")] = 0,
          pending: Annotated[int, typer.Option(help="with --timers: timers due a day later, in the store")] = 0,
          as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
          mix: cli_bus.MixOpt = cli_bus.Mix.session, bus: cli_bus.Bus = None) -> None:
    """Throughput and latency on this machine (SPEC §8). Disk stores count only committed events."""
    import tempfile

    from adapters.bench import run_bench, run_timer_bench
    from journey_engine.memory import MemoryStore

    if http is not None or bus is not None:  # a running serve (adapters/loadtest.py), the bus (adapters/bench_bus.py)
        return cli_bus.bench_elsewhere(http, bus, _workspace(workspace), _database(database), users=users,
                                       events=events, seed=seed, days=days, mix=mix.value, rate=rate,
                                       requests=requests, workers=workers, progress=None if as_json else err)

    if not days > 0:
        err.print("[red]--days must be more than 0[/red]")
        raise typer.Exit(2)
    if workers > 1 and store == "memory":
        err.print("[red]--workers is 1 or more, and more than 1 only with --store sqlite or postgres (processes "
                  "share a database, not memory)[/red]")
        raise typer.Exit(2)
    if hot is not None and (store != "memory" or hot < 1):
        err.print("[red]--hot is a number of profiles (1 or more), with --store memory[/red]")
        raise typer.Exit(2)
    folder = _workspace(workspace)
    compiled = _load(folder, long_running=True)
    target: Any = None
    scratch = None
    if store == "sqlite":
        scratch = tempfile.TemporaryDirectory(prefix="journey-bench-")
        target = _open_store(database or f"sqlite:///{scratch.name}/bench.db", compiled.metrics.defaults)
    elif store == "postgres":
        url = _database(database)
        if not url.startswith("postgres"):
            err.print("[red]--store postgres needs JOURNEY_DATABASE_URL (or --database): a postgresql:// URL[/red]")
            raise typer.Exit(2)
        target = _open_store(url, compiled.metrics.defaults, schema=f"journey_bench_{os.getpid()}")
    else:
        target = MemoryStore(hot=hot)
    try:
        if timers:
            report = run_timer_bench(compiled, target, due=timers, pending=pending, seed=seed,
                                     progress=None if as_json else err)
        else:
            report = run_bench(compiled, users=users, events=events, seed=seed, store=target,
                               batch=batch or (1 if store == "memory" else 500), span=timedelta(days=days),
                               workers=workers, folder=folder, progress=None if as_json else err, mix=mix.value)
    finally:
        if target is not None:
            if store == "postgres":
                target.drop_schema()
            target.close()
        if scratch is not None:
            scratch.cleanup()
    report["store"] = store.value
    if store == "memory":
        report["hot"] = hot
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        for key, value in report.items():
            out.print(f"{key:>22}: {value}")


db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(database: DatabaseOpt = None) -> None:
    """Create or upgrade the schema in place (Alembic); data is kept."""
    store = _open_store(database)
    out.print(f"schema at revision {store.revision()} ({_database(database)})")
    store.close()


@app.command()
def ingest(source: Annotated[str, typer.Argument(help="a .jsonl file of Segment messages, or - for stdin")],
           database: DatabaseOpt = None, workspace: WorkspaceOpt = None,
           clock: Annotated[Clock, typer.Option(help="wall: apply at ingestion time; event: replay each event "
                                                     "at its own timestamp (backfills, tests)")] = Clock.wall,
           batch: Annotated[int, typer.Option(help="events per commit (per engine process)")] = 500,
           workers: Annotated[int, typer.Option(min=1, help="engine processes, each applying its partition of "
                                                            "the users' events (SQL stores)")] = 1) -> None:
    """Feed Segment-format events from a file or stdin, validated like the HTTP API, with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from adapters.service.host import EngineHost, InProcessHost
    from adapters.service.processes import ProcessHost
    from adapters.sources.jsonl import BadLine, IngestReport, open_source
    from adapters.sources.jsonl import ingest as ingest_lines
    from journey_engine.engine import Engine
    from journey_engine.ports import StoreUnavailable
    from journey_engine.runtime import Runtime

    try:
        handle, total = open_source(source)
    except OSError as exc:
        err.print(f"[red]{source}: {exc.strerror or exc}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None
    folder = _workspace(workspace)
    compiled = _load(folder, long_running=True)
    store = _open_store(database, compiled.metrics.defaults)
    host: EngineHost  # with workers, the same calls, each split by the users' partitions over engine processes
    if workers > 1:
        host = ProcessHost(folder, store, workers)
    else:
        host = InProcessHost(Runtime(Engine(compiled), store, claim=500), store)
    host.start()
    report = IngestReport()

    def bad(item: BadLine) -> None:
        err.print(f"[yellow]{source}: {item}[/yellow]", soft_wrap=True)

    columns = (TextColumn("ingest"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with handle, Progress(*columns, console=err, disable=not err.is_terminal) as bar:
            task = bar.add_task("ingest", total=total)
            ingest_lines(handle, host, erased=store.erased, clock="event" if clock == Clock.event else "wall",
                         batch=batch * workers, on_bad=bad, report=report, read_ahead=workers > 1,
                         on_progress=lambda r: bar.update(task, completed=r.lines))
            bar.update(task, completed=report.lines)
    except StoreUnavailable as exc:
        err.print(f"[red]{exc}[/red]", soft_wrap=True)
        err.print(f"{report.accepted} events committed before the error; run the same command again to resume "
                  "(duplicates are ignored)")
        raise typer.Exit(1) from None
    finally:
        host.stop()
        store.close()
    dropped = f", {report.erased} of erased users dropped" if report.erased else ""
    out.print(f"{report.accepted} events committed, {report.refused} refused{dropped}")
    if report.refused:
        raise typer.Exit(1)


@app.command()
def serve(host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port")] = 8000,
          workspace: WorkspaceOpt = None, database: DatabaseOpt = None,
          write_keys: Annotated[str, typer.Option(envvar="JOURNEY_WRITE_KEYS", help="comma-separated")] = "",
          admin_key: Annotated[str | None, typer.Option(envvar="JOURNEY_ADMIN_KEY", help="the admin key")] = None,
          trigger_window: Annotated[str, typer.Option(
              envvar="JOURNEY_TRIGGER_WINDOW", help="events older than this update metrics but move no "
                                                    "journey")] = "24h",
          queue_limit: Annotated[int, typer.Option(
              envvar="JOURNEY_QUEUE_LIMIT", min=1, help="events waiting for the engine before 429")] = 50_000,
          reload: Annotated[bool, typer.Option(
              "--reload", help="reload the journeys when workspace files change (a workspace that does not "
                               "load is reported and the running one kept)")] = False,
          workers: Annotated[int, typer.Option(
              min=1, help="engine processes, each owning a partition of the users (use the cores: one engine "
                          "process runs on one)")] = 1,
          allow_simulated: Annotated[bool, typer.Option(
              "--allow-simulated", help="serve a database written by `journey demo` or `bench`, sending "
                                        "through the console channel only")] = False, bus: cli_bus.Bus = None) -> None:
    """The HTTP API, the engine worker and its timers on the configured store (embedded SQLite by default)."""
    import logging

    import uvicorn

    from adapters.channels import ChannelConfigError, ChannelSettings, build_channels
    from adapters.service.reload import serve_workspaces
    from adapters.service.settings import Settings
    from adapters.sources.http_api import create_app
    from journey_engine.model import parse_duration

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # "skipped: max instances" is by design
    try:
        channels = build_channels(ChannelSettings.from_env())
        window = parse_duration(trigger_window)
        expiry_text = os.environ.get("JOURNEY_SEND_EXPIRY") or "24h"
        expiry = None if expiry_text.strip() == "never" else parse_duration(expiry_text)
    except (ChannelConfigError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]", soft_wrap=True)
        raise typer.Exit(1) from None
    folder = _workspace(workspace)
    compiled = _load(folder, long_running=True)
    store = _open_store(database, compiled.metrics.defaults)
    simulated = store.simulated()
    if simulated is not None:
        if not allow_simulated:
            store.close()
            err.print(f"[red]{_database(database)} was written by `{simulated}`: its timers and outbox hold "
                      "simulated sends to made-up people, and serving it would send them. Point "
                      "JOURNEY_DATABASE_URL (or --database) at a real database, or pass --allow-simulated to "
                      "serve it with every channel printing to the console.[/red]", soft_wrap=True)
            raise typer.Exit(1)
        err.print(f"[yellow]a database written by `{simulated}`: every channel prints to the console[/yellow]")
        channels = build_channels(ChannelSettings())
    _overdue(store)
    keys = [k.strip() for k in write_keys.split(",") if k.strip()]
    admin = admin_key or None
    if not keys:
        err.print("[yellow]no write keys configured (JOURNEY_WRITE_KEYS): any client may send events[/yellow]")
    if admin is None:
        err.print("[yellow]no admin key configured (JOURNEY_ADMIN_KEY): user and journey reads are open[/yellow]")
    for advice in store.advice():
        err.print(f"[yellow]{advice}[/yellow]", soft_wrap=True)
    settings = Settings(write_keys=keys, admin_key=admin, tick=float(os.environ.get("JOURNEY_TICK_SECONDS", "1")),
                        trigger_window=window, queue_limit=queue_limit, send_expiry=expiry,
                        outbox_lease=float(os.environ.get("JOURNEY_OUTBOX_LEASE_SECONDS") or 60))
    engines = f"  {workers} engine processes" if workers > 1 else ""
    err.print(f"journey-engine on http://{host}:{port}  workspace {folder}  database {_database(database)}{engines}")
    def run(serving: Any, on_server: Any) -> None:
        if isinstance(getattr(store, "defaults", None), dict):  # SQL decodes with them; memory keeps its own
            store.defaults = dict(serving.metrics.defaults)  # a reloaded workspace may add metrics
        served = create_app(serving, store, settings, channels=channels, workers=workers, folder=folder,
                            host=cli_bus.publisher_for(bus, store, settings), scheduler=bus is None)
        server = uvicorn.Server(uvicorn.Config(served, host=host, port=port, log_level="warning"))
        on_server(server)
        server.run()

    try:
        serve_workspaces(compiled, store, folder, run, reload=reload, err=err)
    finally:
        store.close()


def _overdue(store: Any) -> None:
    """Say what fell due while the service was down: it fires now, a few rounds between batches of events,
    and sends older than their expiry are suppressed `expired` (/metrics: journey_timers_due)."""
    now = datetime.now(UTC)
    count, earliest = store.overdue(now)
    if count and earliest is not None:
        late = now - earliest
        err.print(f"{count} user(s) have timers or deferred sends overdue, the oldest by {late}: they fire now, "
                  "between requests; what would go out more than its expiry late is suppressed `expired`",
                  soft_wrap=True)


@app.command()
def user(user_id: Annotated[str, typer.Argument(help="the user id")], database: DatabaseOpt = None,
         workspace: WorkspaceOpt = None,
         as_json: Annotated[bool, typer.Option("--json", help="what GET /v1/users/{id} returns")] = False) -> None:
    """Where a user is in every journey and why: the event, rule or timer that moved them, and every
    message that was or was not sent, with the reason."""
    from adapters.reporting.explain import explain_move, explain_timer
    from adapters.service.views import user_view
    from journey_engine.engine import Engine
    from journey_engine.simulation import format_record

    compiled = _load(_workspace(workspace))
    store = _open_store(database, compiled.metrics.defaults)
    try:
        view = user_view(store, Engine(compiled), user_id, datetime.now(UTC))
    finally:
        store.close()
    if view is None:
        err.print(f"[red]no user `{user_id}` in {_database(database)}[/red]")
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(json.dumps(view, default=str) + "\n")
        return
    out.print(f"[bold]{view['user_id']}[/bold]  segments: {', '.join(view['segments']) or '-'}")
    for inst in view["journeys"]:
        key = f" [{inst['key']}]" if inst["key"] else ""
        out.print(f"  {inst['journey']}{key}: [bold]{inst['state']}[/bold] since {inst['since']}")
        if inst["why"]:
            moved = explain_move(compiled, inst["why"])  # the rule's text and the target, not `trigger=rule`
            out.print("    because " + format_record(inst["why"]) + (f" ({moved})" if moved else ""), markup=False)
        for timer in inst["timers"]:
            goes = explain_timer(compiled, inst["journey"], inst["state"], timer["transition"])
            out.print(f"    next: {goes} at {timer['due']}", markup=False)
    if not view["journeys"]:
        out.print("  in no journey now")
    out.print("[bold]decisions[/bold]")
    for record in view["decisions"]:
        out.print("  " + format_record(record), markup=False, soft_wrap=True)


@app.command()
def erase(user_id: Annotated[str, typer.Argument(help="the user id")], database: DatabaseOpt = None) -> None:
    """Erase a user everywhere, as DELETE /v1/users/{id} does: profile, journeys, timers, pending sends,
    trace; later events for the id are dropped. Exit 0 when erased, 1 when no such user was stored."""
    store = _open_store(database)
    try:
        erased = store.erase(user_id, datetime.now(UTC))
    finally:
        store.close()
    if not erased:
        from rich.markup import escape

        err.print(f"[red]no user `{escape(user_id)}` in {_database(database)}[/red] (later events for the id "
                  "are dropped all the same)", soft_wrap=True)
        raise typer.Exit(1)
    out.print(f"erased `{user_id}`", markup=False)


@app.command()
def demo(users: Annotated[int, typer.Option(help="synthetic users")] = 10_000,
         days: Annotated[int, typer.Option(help="simulated days")] = 30,
         seed: Annotated[int, typer.Option(help="the population's seed")] = 7,
         html: Annotated[Path, typer.Option(help="where to write the HTML report")] = Path("journey-demo.html"),
         database: Annotated[str, typer.Option(help="a fresh database for the demo (replaced each run)")] =
         "sqlite:///journey-demo.db",
         workspace: WorkspaceOpt = None) -> None:
    """A synthetic population lives through the workspace for 30 simulated days on the embedded SQLite
    store, then the report is printed and written as HTML."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from adapters.demo import run_demo
    from adapters.reporting import build_report, render_html, render_terminal
    from adapters.reporting.page import cohort_sentence

    compiled = _load(_workspace(workspace), long_running=True)
    if database.startswith("sqlite:///"):
        for suffix in ("", "-wal", "-shm"):
            Path(database.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
    store = _open_store(database, compiled.metrics.defaults)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn())
    try:
        with Progress(*columns, console=err) as bar:
            task = bar.add_task(f"{users:,} users × {days} days", total=1.0)
            result = run_demo(compiled, store, users=users, days=days, seed=seed,
                              progress=lambda done, note: bar.update(task, completed=done, description=note))
        built = build_report(store, compiled)
    finally:
        store.close()
    render_terminal(built, out)
    out.rule("adaptive choice vs a fixed one (expected conversions per decision, same responses)")
    for c in result.choices:
        out.print(f"  {c.journey}.{c.state}: bandit {c.adaptive_rate:.2%}, always first {c.fixed_rate:.2%}, "
                  f"best possible {c.best_rate:.2%} ({c.decisions} decisions)")
    verdict = "beats" if result.adaptive_beat_fixed else "does not beat"
    out.print(f"  overall: the bandit {verdict} the fixed choice: "
              f"{result.adaptive_rate:.2%} vs {result.fixed_rate:.2%}")
    for c in result.choices:
        if c.cohorts:
            out.rule("learning per cohort vs one bandit for everyone vs the best fixed choice per cohort")
            for cohort, r in c.cohorts.items():
                out.print(f"  {c.journey}.{c.state} · {cohort}: per-cohort {r.per_cohort_rate:.2%}, single "
                          f"{r.single_rate:.2%}, best fixed {r.fixed_rate:.2%} ({' > '.join(r.fixed_order)}; "
                          f"{r.decisions} decisions)", soft_wrap=True)
            out.print(f"  {cohort_sentence(c)}", soft_wrap=True)
    out.rule("journeys against their holdout")
    for h in result.holdouts:
        treated, held = h.treated_rate or 0.0, h.holdout_rate or 0.0
        line = f"  {h.journey}: {treated:.1%} of {h.treated} treated converted vs {held:.1%} of {h.holdout} held out"
        if h.difference is not None and h.interval is not None:
            low, high = h.interval
            line += f"; difference {h.difference * 100:+.1f} pp (95% CI {low * 100:+.1f} to {high * 100:+.1f} pp)"
        out.print(line, soft_wrap=True)
    html.write_text(render_html(built, result), encoding="utf-8")
    out.print(f"\n{result.events:,} events, {result.sends:,} sends in {result.elapsed_seconds:.0f} s; "
              f"report written to {html}")
    command = f"journey report --database {shlex.quote(database)}"
    if workspace is not None:
        command += f" --workspace {shlex.quote(str(workspace))}"
    out.print(f"report on this run again with: {command}", soft_wrap=True, markup=False)


cli_reach.register(app, load=_load, workspace=_workspace, open_store=_open_store, database=_database, out=out,
                   err=err, database_opt=DatabaseOpt, workspace_opt=WorkspaceOpt)
cli_versions.register(app, load=_load, workspace=_workspace, open_store=_open_store, out=out, database_opt=DatabaseOpt)

def main() -> None:
    app()


if __name__ == "__main__":
    main()
