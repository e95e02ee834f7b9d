"""The instant helpers the engine uses for every record and check: the same answers as the datetime
methods they replace, whatever instants come in and in whatever order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from journey_engine import clock
from journey_engine.profile import Profile

ZONES = [ZoneInfo("Europe/Berlin"), ZoneInfo("Asia/Seoul"), UTC]
instants = st.builds(
    lambda at, offset: at.replace(tzinfo=UTC).astimezone(timezone(timedelta(minutes=offset))),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)),
    st.integers(min_value=-14 * 60, max_value=14 * 60))


@given(st.lists(instants, min_size=1, max_size=20))
def test_iso_and_epoch_match_the_datetime_methods(ats: list[datetime]) -> None:
    """Asked in any order, repeated or not (the memo and the per-day prefix must never leak)."""
    for at in [*ats, *reversed(ats), ats[0]]:
        assert clock.iso(at) == at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        assert clock.epoch(at) == at.timestamp()
        for zone in ZONES:
            assert clock.local(at, zone) == at.astimezone(zone)
            assert clock.local(at, zone).utcoffset() == at.astimezone(zone).utcoffset()


def test_iso_writes_a_fraction_only_when_there_is_one() -> None:
    assert clock.iso(datetime(2026, 1, 5, 9, 0, tzinfo=UTC)) == "2026-01-05T09:00:00Z"
    assert clock.iso(datetime(2026, 1, 5, 9, 0, 1, 5, tzinfo=UTC)) == "2026-01-05T09:00:01.000005Z"


def test_journey_entries_are_kept_per_journey_and_key() -> None:
    profile = Profile("u1")
    assert profile.last_entry(("cart", "c1")) is None
    profile.note_entry(("cart", "c1"), 10.0)
    profile.note_entry(("cart", "c2"), 20.0)
    profile.note_entry(("onboarding", ""), 30.0)
    profile.note_entry(("cart", "c1"), 40.0)  # a re-entry replaces, in place
    assert profile.entries == ("cart", "c1", 40.0, "cart", "c2", 20.0, "onboarding", "", 30.0)
    assert [profile.last_entry(k) for k in (("cart", "c1"), ("cart", "c2"), ("onboarding", ""), ("cart", ""))] \
        == [40.0, 20.0, 30.0, None]
