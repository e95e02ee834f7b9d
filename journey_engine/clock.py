"""An instant as epoch seconds and as ISO-8601 text, each remembered for the last instant asked.

Everything one input does happens at one `now` (the same datetime object): its trace records, the
checks of windows, caps and wake-ups. Converting it again for each of them cost ~4% of the engine's
time (an aware datetime's `timestamp()` builds a timedelta; `isoformat()` asks its tzinfo), so the
last instant's answers are kept, matched by identity (datetimes are immutable).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

# (instant, answer), replaced whole: a thread never reads one instant's answer for another
_epoch: tuple[datetime | None, float] = (None, 0.0)
_iso: tuple[datetime | None, str] = (None, "")


def epoch(at: datetime) -> float:
    """`at.timestamp()`."""
    global _epoch
    last = _epoch
    if last[0] is at:
        return last[1]
    value = at.timestamp()
    _epoch = (at, value)
    return value


def iso(at: datetime) -> str:
    """ISO-8601 UTC with a Z, seconds precision unless there is a fraction."""
    global _iso
    last = _iso
    if last[0] is at:
        return last[1]
    text = _iso_text(at)
    _iso = (at, text)
    return text


@lru_cache(maxsize=512)  # for instants met again between others (a deferral's `until` between `now`s)
def _iso_text(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")
