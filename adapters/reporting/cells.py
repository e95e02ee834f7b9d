"""The report's figures as text: the cells and sentences that the terminal and the page both show."""

from __future__ import annotations

from datetime import UTC, datetime

from adapters.reporting.model import (
    EXIT_REASONS,
    LIFT_METHOD,
    ArmEstimate,
    BanditReport,
    JourneyReport,
    Lift,
    MessageStats,
    StateFunnel,
)
from adapters.reporting.retention import Retention, SegmentConversion
from adapters.reporting.versions import VersionRow


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def points(value: float | None) -> str:
    """A difference of two rates, in percentage points."""
    return "–" if value is None else f"{value * 100:+.1f} pp"


def signed_pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f}%"


def reasons(row: MessageStats) -> str:
    if not row.suppressed:
        return "0"
    detail = ", ".join(f"{reason} {n}" for reason, n in sorted(row.suppressed.items()))
    return f"{row.suppressed_total} ({detail})"


def lift_sentence(lift: Lift) -> str:
    interval = lift.interval
    if interval is None:
        return "no lift yet: it needs treated and held-out entrants"
    return (f"difference {points(lift.difference)} (95% CI {points(interval[0])} to {points(interval[1])}, "
            f"{LIFT_METHOD}); relative lift {signed_pct(lift.relative)}")


def programme_title(share: float) -> str:
    return (f"Users who entered a journey with a goal and reached a goal: those messaged against the control "
            f"group ({share * 100:g}% of users, sent nothing but transactional messages).")


SEGMENT_CONVERSION_COLUMNS = ("segment at entry", "entered", "converted", "conversion")


def segment_conversion_cells(row: SegmentConversion) -> list[str]:
    return [row.segment, str(row.entered), str(row.converted), pct(row.rate)]


def retention_title(grid: Retention) -> str:
    return (f"Share of the users first seen each week who were active ({grid.label}) in each week since "
            f"(from segment {grid.segment}; weeks Monday to Sunday, UTC; blank: not ended yet).")


def hidden_note(what: str, cohorts: int, users: int) -> str:
    return (f"{cohorts} older {what} cohort{'s' if cohorts != 1 else ''} ({users} user{'s' if users != 1 else ''}) "
            "began before the report's window and are not shown.")


def iso_seconds(at: datetime) -> str:
    """ISO-8601 UTC to the second, with a Z: how reports and the dashboard show times."""
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


FUNNEL_COLUMNS = ("state", "entered", "now in", "moved on", *(f"exit: {reason}" for reason in EXIT_REASONS),
                  "converted", "conversion")
VERSION_COLUMNS = ("version", "first entry", "entered", "moved in", "moved out", "exit: version", "converted",
                   "conversion")
MESSAGE_COLUMNS = ("message", "channel", "sent", "deferred", "suppressed", "passed over", "delivered", "failed",
                   "opened", "clicked", "bounced", "unsubscribed", "conversions", "per send")
BANDIT_COLUMNS = ("state", "strategy", "arm", "sends", "conversions", "mean", "95% credible interval")


def version_cells(row: VersionRow) -> list[str]:
    first = row.first_entry.strftime("%Y-%m-%d") if row.first_entry is not None else "–"
    return [row.version, first, str(row.entered), str(row.moved_in), str(row.moved_out), str(row.exited_version),
            str(row.converted), pct(row.conversion_rate)]


def versions_title(journey: JourneyReport) -> str:
    if journey.version is not None:
        return (f"Version {journey.version} only: its runs from their entry, or the move that brought them onto "
                "it, to their exit or the move to a newer version (`journey report --version`).")
    return ("Every version runs were on (`journey report JOURNEY --version V` for one of them); the tables "
            "above count them all.")


def funnel_table(funnel: list[StateFunnel]) -> tuple[tuple[str, ...], list[list[str]]]:
    """The funnel's columns and rows; "exit: version" only when a run ended that way (an 80-column
    terminal has room for nine numbers, not ten)."""
    rows = [[row.state, str(row.entered), str(row.now_in), str(row.moved_on),
             *(str(row.exited.get(reason, 0)) for reason in EXIT_REASONS), str(row.converted),
             pct(row.conversion_rate)] for row in funnel]
    if any(row.exited.get("version") for row in funnel):
        return FUNNEL_COLUMNS, rows
    drop = FUNNEL_COLUMNS.index("exit: version")
    return FUNNEL_COLUMNS[:drop] + FUNNEL_COLUMNS[drop + 1:], [cells[:drop] + cells[drop + 1:] for cells in rows]


def message_cells(row: MessageStats) -> list[str]:
    return [row.message, row.channel, str(row.sent), str(row.deferred), reasons(row), str(row.passed_over),
            str(row.delivered),
            str(row.failed), str(row.opened), str(row.clicked), str(row.bounced), str(row.unsubscribed),
            str(row.conversions), pct(row.conversion_rate)]


def arm_cells(bandit: BanditReport, arm: ArmEstimate) -> list[str]:
    label = f"→ {arm.arm}" if arm.kind == "path" else arm.arm
    state = bandit.state if bandit.cohort is None else f"{bandit.state} · {bandit.cohort}"
    return [state, bandit.strategy, label, str(arm.sends), str(arm.conversions), pct(arm.mean),
            f"{pct(arm.low)} – {pct(arm.high)}"]


def lift_rows(lift: Lift, labels: tuple[str, str] = ("treated", "held out")) -> list[list[str]]:
    return [[labels[0], str(lift.treated), str(lift.treated_converted), pct(lift.treated_rate)],
            [labels[1], str(lift.held_out), str(lift.held_out_converted), pct(lift.held_out_rate)]]


PROGRAMME_GROUPS = ("messaged", "control group")
