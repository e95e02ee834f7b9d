"""`journey plan` in the terminal: per journey what changed, and per live state what applying does."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from journey_engine.versions import Fate, JourneyPlan, Plan

_WILL = {"stay": "stay: already on this version", "pinned": "stay pinned to {version}",
         "move": "move to {to} on the new version", "exit": "exit (reason `version`)",
         "finish": "finish on {version} (journey removed)"}


def fate_text(fate: Fate) -> str:
    return _WILL[fate.action].format(version=fate.version, to=fate.to)


def render(plan: Plan, deployment: int, out: Console) -> None:
    """Every journey that changed (an unchanged one gets one line), then the verdict."""
    for jp in plan.journeys:
        if jp.status == "unchanged":
            live = sum(f.users for f in jp.fates)
            out.print(f"[dim]{jp.name}: unchanged ({jp.version}), {live} live[/dim]")
            continue
        _journey(jp, out)
    where = f"over deployment {deployment}" if deployment else "on a store with no deployment yet"
    if plan.appliable:
        changed = len(plan.changed)
        out.print(f"[green]can be applied[/green] {where}: {changed} journey(s) changed")
    else:
        out.print(f"[red]refused[/red] {where}: {len(plan.refusals)} problem(s); nothing would be applied")


def _journey(jp: JourneyPlan, out: Console) -> None:
    versions = f"{jp.in_force or '(new)'} → {jp.version or '(removed)'}"
    out.print(f"[bold]{jp.name}[/bold]: {jp.status}, {versions}, on_change: {jp.on_change}")
    for change in jp.changes:
        out.print(f"  - {change.text}")
    if jp.fates:
        table = Table(box=None, padding=(0, 2), show_edge=False)
        for column, justify in (("state", "left"), ("version", "left"), ("users", "right"), ("will", "left")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for fate in jp.fates:
            table.add_row(fate.state, fate.version, str(fate.users), fate_text(fate))
        out.print(table)
    else:
        out.print("  no live instances")
    for warning in jp.warnings:
        out.print(f"  [yellow]note: {warning}[/yellow]", soft_wrap=True)
    for refusal in jp.refusals:
        out.print(f"  [red]refused: {refusal}[/red]", soft_wrap=True)
