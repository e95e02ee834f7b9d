"""Delivery policy (SPEC §3.6) as pure decisions: subscription, frequency caps, send window,
send-time optimisation and quiet hours. `decide` answers send / defer until / suppress for one
send; time is an argument and the user's past sends are a ledger passed in as data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from journey_engine import clock
from journey_engine.graph import format_duration
from journey_engine.model import FrequencyCap, Message, Policies, SendWindow, clock_minutes

Action = Literal["send", "defer", "suppress"]

_DAY_MINUTES = 24 * 60
# In-app messages wait in an inbox until the user opens the app, and webhooks feed other systems:
# neither can wake anybody up, so quiet hours do not hold them back.
_QUIET_EXEMPT = frozenset({"in_app", "webhook"})
# Caps protect people from message fatigue. A webhook is a system call: it neither counts toward
# nor is limited by a `channel: any` cap (a cap that names `webhook` still applies, as a rate limit).
_NOT_PERSON_FACING = frozenset({"webhook"})
# Every gate repeats daily, so the earliest open instant is at most a day (plus a DST shift) away.
_SEARCH_DAYS = 3
# The trait that holds a channel's address; a hard bounce suppresses that address, not the user.
ADDRESS = {"email": "email", "sms": "phone", "push": "push_token"}


class Decision:
    """What to do with one send: `send` now, `defer` until a UTC instant, or `suppress` it.

    A value, treated as immutable. A plain class, not a dataclass: compiled (native.py), a dataclass keeps
    a generated Python __init__, and one is made for most sends that do not go at once."""

    __slots__ = ("action", "explanation", "reason", "until")

    def __init__(self, *, action: Action, until: datetime | None = None, reason: str | None = None,
                 explanation: str = "") -> None:
        self.action = action
        self.until = until
        self.reason = reason
        self.explanation = explanation

    def _fields(self) -> tuple[str, datetime | None, str | None, str]:
        return self.action, self.until, self.reason, self.explanation

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"Decision(action={self.action!r}, until={self.until!r}, reason={self.reason!r}, "
                f"explanation={self.explanation!r})")


_SEND = Decision(action="send")


@dataclass(frozen=True, slots=True)
class _Gate:
    """Local minutes of the day when a send may go: [start, end), crossing midnight when end <= start."""

    reason: str
    start: int
    end: int

    def allows(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


def resolve_zone(timezone: str | None, default: str = "UTC") -> ZoneInfo:
    """The user's zone; a missing or unknown name falls back to `default`, then to UTC."""
    for name in (timezone, default):
        if isinstance(name, str) and name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError, OSError):
                continue
    return ZoneInfo("UTC")


def local_hour(now: datetime, timezone: str | None) -> int:
    """The hour of day (0-23) at `now` in `timezone` (UTC when unknown)."""
    return _aware(now).astimezone(resolve_zone(timezone)).hour


def best_hour(
    engagements: Sequence[float], timezone: str | None, now: datetime, half_life_days: float = 14.0
) -> int | None:
    """The local hour the user engages most, recent engagements weighing more; None without history."""
    if not engagements:
        return None
    zone = resolve_zone(timezone)
    now_s = _aware(now).timestamp()
    weights = [0.0] * 24
    for at in engagements:
        # Clamped at zero: a timestamp slightly ahead of the clock is recent, not weightier than now.
        age_days = max(now_s - at, 0.0) / 86400
        weights[datetime.fromtimestamp(at, zone).hour] += 0.5 ** (age_days / half_life_days)
    return max(range(24), key=lambda hour: (weights[hour], -hour))


def decide(
    *,
    now: datetime,
    message: Message,
    policies: Policies,
    timezone: str | None,
    ledger: Sequence[tuple[float, str]],
    subscribed: bool,
    best_hour: int | None = None,
    hour_source: str | None = None,
    deferred: bool = False,
    bounced: str | None = None,
    caps: Sequence[FrequencyCap] | None = None,
) -> Decision:
    """Decide one send. `ledger` holds the user's past sends as (epoch seconds, channel), all journeys.

    `best_hour` is the local hour `send_at: optimal` aims at and `hour_source` says where it was
    learned (None: the workspace's `send_time.default_hour`). `deferred` is True when this send was
    deferred before and is now due: it is decided again (subscription and caps may have changed) but
    not its timing: it goes out now, at its `until` (SPEC §3 item 10). `bounced` is the user's address on
    this channel when it bounced hard. `caps` are the frequency caps that apply to this user (those whose
    `if:` holds for them; see `applicable_caps`); None: all of the policies' caps.
    """
    now = _aware(now)
    if bounced is not None:
        field = ADDRESS.get(message.channel, "address")
        return Decision(action="suppress", reason="bounced",
                        explanation=f"{bounced} bounced hard; a new traits.{field} lifts this")
    if not subscribed:
        return Decision(action="suppress", reason="unsubscribed", explanation="the user is unsubscribed")
    cap = _reached_cap(now, message.channel, policies.frequency_caps if caps is None else caps, ledger)
    if cap is not None:
        return Decision(action="suppress", reason="frequency_cap", explanation=_cap_text(cap))
    zone = resolve_zone(timezone, policies.timezone)
    if best_hour is None:
        best_hour, hour_source = policies.send_time.default_hour, "the default send hour"
    source = f"{hour_source or 'the best hour'} {best_hour:02d}:00"
    decision = _timing(now, zone, _gates(message, policies, best_hour, deferred), policies, source)
    if decision.action == "send" and message.send_at == "optimal" and not deferred:
        return Decision(action="send", explanation=f"sent at {source} in {zone.key}")
    return decision


def applicable_caps(caps: Sequence[FrequencyCap], holds: Callable[[int], bool]) -> list[FrequencyCap]:
    """The caps that apply to one user: those without `if:`, and those whose rule (by index) holds."""
    return [cap for i, cap in enumerate(caps) if cap.if_ is None or holds(i)]


def in_control_group(user_id: str, share: float) -> bool:
    """Whether the workspace's control group holds this user out: a hash of the id, so the same users
    are held out on every run, every process and every report (SPEC §3 item 15)."""
    if share <= 0:
        return False
    digest = hashlib.sha1(f"control_group:{user_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("times must be timezone-aware (UTC); got a naive datetime")
    return now


def _reached_cap(
    now: datetime, channel: str, caps: Sequence[FrequencyCap], ledger: Sequence[tuple[float, str]]
) -> FrequencyCap | None:
    now_s = clock.epoch(now)
    for cap in caps:
        if not _capped_by(cap, channel):
            continue
        since = now_s - cap.per.total_seconds()
        sent = sum(1 for at, sent_on in ledger if since < at <= now_s and _capped_by(cap, sent_on))
        if sent >= cap.max:
            return cap
    return None


def _capped_by(cap: FrequencyCap, channel: str) -> bool:
    if cap.channel == "any":
        return channel not in _NOT_PERSON_FACING
    return cap.channel == channel


def _cap_text(cap: FrequencyCap) -> str:
    scope = "all channels" if cap.channel == "any" else cap.channel
    tier = f" (for users where {cap.if_})" if cap.if_ is not None else ""
    return f"frequency cap on {scope} reached: {cap.max} per {format_duration(cap.per)}{tier}"


def _gates(message: Message, policies: Policies, hour: int, deferred: bool) -> tuple[_Gate, ...]:
    """The daily windows a send must fall in, the one that explains a deferral first. None for a held send
    that is due: it goes out at its `until` (SPEC §3 item 10), even if the user's time zone changed since."""
    if deferred:
        return ()
    quiet = policies.quiet_hours
    quiet_key = None if quiet is None or message.channel in _QUIET_EXEMPT else (quiet.from_, quiet.to)
    send_at = message.send_at.bounds if isinstance(message.send_at, SendWindow) else message.send_at
    return _gates_of(send_at, quiet_key, hour, deferred)


@lru_cache(maxsize=1024)  # a workspace has few distinct (send_at, quiet hours, hour) combinations
def _gates_of(send_at: str | tuple[int, int], quiet: tuple[str, str] | None, hour: int,
              deferred: bool) -> tuple[_Gate, ...]:
    quiet_gate = _quiet_gate(quiet)
    timing = _timing_gate(send_at, hour, quiet_gate, deferred)
    return tuple(gate for gate in (timing, quiet_gate) if gate is not None)


def _quiet_gate(quiet: tuple[str, str] | None) -> _Gate | None:
    if quiet is None or quiet[0] == quiet[1]:
        return None
    # Sending is allowed from the end of quiet hours to their start.
    return _Gate("quiet_hours", clock_minutes(quiet[1]), clock_minutes(quiet[0]))


def _timing_gate(send_at: str | tuple[int, int], hour: int, quiet: _Gate | None, deferred: bool) -> _Gate | None:
    if isinstance(send_at, tuple):
        start, end = send_at
        return _Gate("window", start, end) if start != end else None
    if send_at != "optimal" or deferred:
        return None
    target = _nearest_open_hour(hour, quiet)
    return None if target is None else _Gate("send_time", target * 60, (target + 1) * 60 % _DAY_MINUTES)


def _nearest_open_hour(hour: int, quiet: _Gate | None) -> int | None:
    """The best hour, or when it is quiet the closest hour that is not (the earlier one on a tie)."""
    if quiet is None:
        return hour
    by_distance = sorted(range(24), key=lambda h: (min((h - hour) % 24, (hour - h) % 24), (hour - h) % 24))
    return next((h for h in by_distance if quiet.allows(h * 60)), None)


def _timing(now: datetime, zone: ZoneInfo, gates: tuple[_Gate, ...], policies: Policies,
            hour_source: str) -> Decision:
    until = _earliest_open(now, zone, gates)
    if until is None:
        return Decision(
            action="suppress", reason="window", explanation="the send window lies entirely in quiet hours"
        )
    if until == now:
        return _SEND
    reason = next(gate.reason for gate in gates if not gate.allows(_minute(now, zone)))
    if reason == "quiet_hours" and policies.quiet_hours is not None and policies.quiet_hours.action == "drop":
        return Decision(action="suppress", reason="quiet_hours",
                        explanation=_closed_text(reason, now, zone, hour_source))
    local = until.astimezone(zone)  # as strftime's "%Y-%m-%d %H:%M %Z" writes it, at a third of the cost
    next_local = f"{local.year:04d}-{local.month:02d}-{local.day:02d} {local.hour:02d}:{local.minute:02d} " \
                 f"{local.tzname()}"
    explanation = f"{_closed_text(reason, now, zone, hour_source)}; next allowed at {next_local}"
    return Decision(action="defer", until=until, reason=reason, explanation=explanation)


def _closed_text(reason: str, now: datetime, zone: ZoneInfo, hour_source: str) -> str:
    what = {"window": "outside the send window", "send_time": f"waiting for {hour_source}"}
    local = clock.local(now, zone)
    return f"{what.get(reason, 'in quiet hours')} at {local.hour:02d}:{local.minute:02d} {zone.key}"


def _earliest_open(now: datetime, zone: ZoneInfo, gates: tuple[_Gate, ...]) -> datetime | None:
    """The first instant from `now` on whose local time every gate allows, within the search horizon.

    Such an instant is `now` or the local opening time of some gate; each candidate is checked at its
    own local time, so deferrals stay right across DST changes (an opening time skipped by a spring
    gap maps to the instant after the gap, which is checked like any other).
    """
    if not gates:
        return now
    minute = _minute(now, zone)
    if all(gate.allows(minute) for gate in gates):  # the usual case: open now, no openings to compute
        return now
    today = clock.local(now, zone).date()
    for day in range(_SEARCH_DAYS):  # a day's openings all come before the next day's: stop at the first
        for candidate in sorted(_openings(today + timedelta(days=day), zone, gates)):
            if candidate >= now and all(gate.allows(_minute(candidate, zone)) for gate in gates):
                return candidate
    return None


def _openings(day: date, zone: ZoneInfo, gates: tuple[_Gate, ...]) -> list[datetime]:
    return [datetime.combine(day, time(gate.start // 60, gate.start % 60), tzinfo=zone).astimezone(UTC)
            for gate in gates]


def _minute(instant: datetime, zone: ZoneInfo) -> int:
    local = clock.local(instant, zone)
    return local.hour * 60 + local.minute
