"""An instant as epoch seconds, as ISO-8601 text and in a time zone, each remembered for the last
instant asked.

Everything one input does happens at one `now` (the same datetime object): its trace records, the
checks of windows, caps, quiet hours and wake-ups. Converting it is not free (an aware datetime's
`timestamp()` builds a timedelta; `isoformat()` and `astimezone()` ask tzinfo objects), so the last
answers are kept, matched by identity (datetimes and zones are immutable).
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo

# (instant, answer), replaced whole: a thread never reads one instant's answer for another
_epoch: tuple[datetime | None, float] = (None, 0.0)
_iso: tuple[datetime | None, str] = (None, "")
_local: tuple[datetime | None, tzinfo | None, datetime] = (None, None, datetime.min)


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


def local(at: datetime, zone: tzinfo) -> datetime:
    """`at.astimezone(zone)` (one send decision asks for `now` in the user's zone up to four times)."""
    global _local
    last = _local
    if last[0] is at and last[1] is zone:
        return last[2]
    value = at.astimezone(zone)
    _local = (at, zone, value)
    return value


def _iso_text(at: datetime) -> str:
    """As `isoformat()` writes it, with Z for +00:00; the date part is formatted once a day, since nearly
    every input has an instant of its own but shares its day with many."""
    global _day
    at = at.astimezone(UTC)  # itself when already in UTC
    day = int(epoch(at) // 86400)
    last = _day
    if last[0] == day:
        date = last[1]
    else:
        date = at.isoformat()[:11]  # YYYY-MM-DDT
        _day = (day, date)
    text = f"{date}{_TWO[at.hour]}:{_TWO[at.minute]}:{_TWO[at.second]}"
    micro = at.microsecond
    return f"{text}.{str(1_000_000 + micro)[1:]}Z" if micro else f"{text}Z"


_TWO = tuple(f"{n:02d}" for n in range(60))
_day: tuple[int, str] = (-1, "")
