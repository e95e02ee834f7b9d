"""The report as rich tables, for `journey report` and `journey demo` in a terminal."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from adapters.reporting.cells import (
    BANDIT_COLUMNS,
    MESSAGE_COLUMNS,
    PROGRAMME_GROUPS,
    SEGMENT_CONVERSION_COLUMNS,
    VERSION_COLUMNS,
    arm_cells,
    funnel_table,
    hidden_note,
    iso_seconds,
    lift_rows,
    lift_sentence,
    message_cells,
    pct,
    programme_title,
    retention_title,
    segment_conversion_cells,
    version_cells,
    versions_title,
)
from adapters.reporting.cohorts import Cohort
from adapters.reporting.model import JourneyReport, Report, SegmentReport
from adapters.reporting.retention import RetentionRow

_SPARKS = "▁▂▃▄▅▆▇█"
_SPARK_DAYS = 60


def render_terminal(report: Report, console: Console) -> None:
    """The report as rich tables: per journey funnel, messages, lift and bandits; then segments."""
    console.rule(f"journey report · as of {iso_seconds(report.now)}")
    for journey in report.journeys:
        _terminal_journey(journey, console)
    if report.programme is not None:
        console.rule("the whole programme")
        console.print(Text(programme_title(report.control_group), style="italic"))
        console.print(_table("programme lift", ("group", "users", "converted", "rate"),
                             lift_rows(report.programme, PROGRAMME_GROUPS)))
        console.print(Text(lift_sentence(report.programme)))
    if report.retention:
        console.rule("retention by first-seen week")
        for grid in report.retention:
            console.print(Text(retention_title(grid), style="italic"))
            if grid.hidden:
                console.print(Text(hidden_note("first-seen", grid.hidden, grid.hidden_users), style="dim"))
            console.print(_grid_table(grid.rows, grid.weeks, "first seen"))
    if report.segments:
        console.rule("segments")
        console.print(_table("segment size (members at the close of each UTC day)",
                             ("segment", "now", "min", "max", f"last {_SPARK_DAYS} days"),
                             [_size_cells(s) for s in report.segments]))
        for segment in report.segments:
            if segment.hidden:
                console.print(Text(hidden_note(segment.segment, segment.hidden, segment.hidden_users), style="dim"))
            if segment.cohorts:
                # A line of its own, not the table's title: rich wraps a title to the narrow table's width.
                console.print(Text(f"{segment.segment}: share of each week's new members still in it at the close "
                                   "of each week since", style="italic"))
                console.print(_cohort_table(segment))


def _terminal_journey(journey: JourneyReport, console: Console) -> None:
    console.rule(f"[bold]{journey.name}[/bold]" + (f" · version {journey.version}" if journey.version else ""))
    summary = f"{journey.entered} entered"
    if journey.goal:
        summary += f", {journey.converted} reached the goal ({pct(journey.conversion_rate)}) · goal: {journey.goal}"
    console.print(Text(summary))
    console.print(_table("funnel", *funnel_table(journey.funnel)))
    # two tables of half the columns each: thirteen columns are unreadable in an 80-column terminal
    cells = [message_cells(r) for r in journey.messages]
    split = MESSAGE_COLUMNS.index("opened")
    console.print(_table("messages: sending", MESSAGE_COLUMNS[:split], [c[:split] for c in cells]))
    console.print(_table("messages: answers", MESSAGE_COLUMNS[:1] + MESSAGE_COLUMNS[split:],
                         [c[:1] + c[split:] for c in cells]))
    if journey.lift is not None:
        console.print(_table("holdout lift (goal conversion)", ("group", "entrants", "converted", "rate"),
                             lift_rows(journey.lift)))
        console.print(Text(lift_sentence(journey.lift)))
    if journey.bandits:
        console.print(_table("bandits (posterior of goal conversion per send)", BANDIT_COLUMNS,
                             [arm_cells(b, arm) for b in journey.bandits for arm in b.arms]))
    if journey.by_segment:
        console.print(_table("goal conversion by segment at entry", SEGMENT_CONVERSION_COLUMNS,
                             [segment_conversion_cells(row) for row in journey.by_segment]))
    if len(journey.versions) > 1 or journey.version is not None:
        console.print(Text(versions_title(journey), style="italic"))
        console.print(_table("versions", VERSION_COLUMNS, [version_cells(row) for row in journey.versions]))


def _table(title: str, columns: Iterable[str], rows: Iterable[list[str]]) -> Table:
    """No vertical rules; a column of single words (numbers, ids) as wide as its longest header word or
    value, while the first column and columns of text take what is left and wrap: a table of nine
    numbers fits an 80-column terminal instead of losing its last columns off the edge."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    rows = list(rows)
    for index, name in enumerate(columns):
        justify = "left" if index == 0 or name in ("channel", "strategy", "arm") else "right"
        words = max(len(word) for word in name.split())
        if index == 0 or any(" " in row[index] for row in rows):
            table.add_column(name, justify=justify, overflow="fold", min_width=words)
        else:  # folded rather than cut to `2…` when even this does not fit
            table.add_column(name, justify=justify, overflow="fold",
                             width=max([words, *(len(row[index]) for row in rows)]))
    for row in rows:
        table.add_row(*row)
    return table


def _size_cells(segment: SegmentReport) -> list[str]:
    counts = [n for _, n in segment.sizes]
    if not counts:
        return [segment.segment, "0", "–", "–", ""]
    return [segment.segment, str(counts[-1]), str(min(counts)), str(max(counts)), _sparkline(counts[-_SPARK_DAYS:])]


def _sparkline(values: list[int]) -> str:
    low, high = min(values), max(values)
    span = (high - low) or 1
    return "".join(_SPARKS[round((v - low) / span * (len(_SPARKS) - 1))] for v in values)


def _cohort_table(segment: SegmentReport) -> Table:
    return _grid_table(segment.cohorts, segment.weeks, "week of entry")


def _grid_table(rows: Sequence[Cohort | RetentionRow], weeks: int, first: str) -> Table:
    table = Table()
    table.add_column(first, overflow="fold")
    table.add_column("users", justify="right", overflow="fold")
    for k in range(weeks):
        table.add_column(f"week {k}", justify="right", overflow="fold")
    for row in rows:
        cells = [_heat_text(share) for share in row.shares]
        cells += [Text("")] * (weeks - len(cells))
        table.add_row(row.week, str(row.users), *cells)
    return table


def _heat_text(share: float | None) -> Text:
    if share is None:
        return Text("")
    shade = 40 + round(share * 180)  # darker blue for higher retention, readable on both backgrounds
    return Text(pct(share), style=f"white on rgb(30,{shade // 2},{shade})")
