"""Delivery policy: subscriptions, frequency caps, send windows, send time and quiet hours."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from journey_engine.model import Message, Policies
from journey_engine.policies import Decision, best_hour, decide, local_hour, resolve_zone

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, zone: ZoneInfo = BERLIN) -> datetime:
    """A local wall-clock time in `zone`, as the aware datetime the engine passes around."""
    return datetime.fromisoformat(text).replace(tzinfo=zone)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def message(channel: str = "push", **fields: Any) -> Message:
    content = {"subject": "Hi"} if channel == "email" else {}
    return Message.model_validate({"channel": channel, "body": "b", **content, **fields})


def policies(**fields: Any) -> Policies:
    return Policies.model_validate({"timezone": "Europe/Berlin", **fields})


QUIET = {"quiet_hours": {"from": "21:00", "to": "08:00"}}


def run(
    now: datetime,
    msg: Message | None = None,
    pol: Policies | None = None,
    *,
    timezone: str | None = None,
    ledger: Sequence[tuple[float, str]] = (),
    subscribed: bool = True,
    hour: int | None = None,
    deferred: bool = False,
) -> Decision:
    return decide(
        now=now,
        message=msg or message(),
        policies=pol or policies(),
        timezone=timezone,
        ledger=ledger,
        subscribed=subscribed,
        best_hour=hour,
        deferred=deferred,
    )


# --- subscription and caps ------------------------------------------------------------------------


def test_unsubscribed_user_is_not_sent() -> None:
    """A user unsubscribed from the message's subscription is suppressed with reason `unsubscribed`."""
    decision = run(at("2026-01-05T12:00"), subscribed=False)
    assert (decision.action, decision.reason) == ("suppress", "unsubscribed")


def test_unsubscribed_wins_over_every_other_reason() -> None:
    """Subscription is checked first, so the trace names it even inside quiet hours."""
    decision = run(at("2026-01-05T23:00"), pol=policies(**QUIET), subscribed=False)
    assert decision.reason == "unsubscribed"


def test_channel_cap_suppresses_once_reached() -> None:
    """`{channel: push, max: 1, per: 4h}` suppresses a second push within four hours."""
    pol = policies(frequency_caps=[{"channel": "push", "max": 1, "per": "4h"}])
    now = at("2026-01-05T12:00")
    earlier = (now - timedelta(hours=3)).timestamp()
    decision = run(now, pol=pol, ledger=[(earlier, "push")])
    assert (decision.action, decision.reason) == ("suppress", "frequency_cap")
    assert "push" in decision.explanation


def test_channel_cap_ignores_other_channels() -> None:
    """A push cap does not count emails."""
    pol = policies(frequency_caps=[{"channel": "push", "max": 1, "per": "4h"}])
    now = at("2026-01-05T12:00")
    assert run(now, pol=pol, ledger=[(now.timestamp() - 60, "email")]).action == "send"


def test_any_cap_counts_every_channel() -> None:
    """`{channel: any, max: 3, per: 1d}` counts sends across channels (and all journeys: the ledger)."""
    pol = policies(frequency_caps=[{"channel": "any", "max": 3, "per": "1d"}])
    now = at("2026-01-05T12:00")
    ledger = [(now.timestamp() - 3600 * h, ch) for h, ch in ((1, "email"), (2, "sms"), (3, "in_app"))]
    assert run(now, pol=pol, ledger=ledger).reason == "frequency_cap"
    assert run(now, pol=pol, ledger=ledger[:2]).action == "send"


def test_cap_window_is_open_at_its_start_and_closed_at_now() -> None:
    """Sends are counted in (now - per, now]: one exactly `per` ago has aged out, one at `now` counts."""
    pol = policies(frequency_caps=[{"channel": "push", "max": 1, "per": "4h"}])
    now = at("2026-01-05T12:00")
    assert run(now, pol=pol, ledger=[(now.timestamp() - 4 * 3600, "push")]).action == "send"
    assert run(now, pol=pol, ledger=[(now.timestamp(), "push")]).action == "suppress"
    assert run(now, pol=pol, ledger=[(now.timestamp() + 1, "push")]).action == "send"


def test_zero_cap_blocks_the_channel() -> None:
    """`max: 0` means the channel is never used."""
    pol = policies(frequency_caps=[{"channel": "sms", "max": 0, "per": "1d"}])
    assert run(at("2026-01-05T12:00"), message("sms"), pol).reason == "frequency_cap"


def test_webhooks_are_outside_any_caps() -> None:
    """A webhook is not person-facing: it neither counts toward nor is limited by `channel: any`."""
    pol = policies(frequency_caps=[{"channel": "any", "max": 1, "per": "1d"}])
    now = at("2026-01-05T12:00")
    assert run(now, message("email"), pol, ledger=[(now.timestamp() - 60, "webhook")]).action == "send"
    assert run(now, message("webhook"), pol, ledger=[(now.timestamp() - 60, "email")]).action == "send"


def test_a_cap_naming_webhook_still_applies() -> None:
    """A cap on `webhook` itself acts as a rate limit."""
    pol = policies(frequency_caps=[{"channel": "webhook", "max": 1, "per": "1h"}])
    now = at("2026-01-05T12:00")
    assert run(now, message("webhook"), pol, ledger=[(now.timestamp() - 60, "webhook")]).action == "suppress"


def test_caps_are_checked_again_when_a_deferred_send_falls_due() -> None:
    """A deferred send decided again with `deferred=True` is suppressed if a cap filled up meanwhile."""
    pol = policies(frequency_caps=[{"channel": "push", "max": 1, "per": "1d"}], **QUIET)
    first = run(at("2026-01-05T23:00"), pol=pol)
    assert first.action == "defer" and first.until is not None
    ledger = [(first.until.timestamp() - 60, "push")]
    assert run(first.until, pol=pol, ledger=ledger, deferred=True).reason == "frequency_cap"


# --- quiet hours ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ("2026-01-05T22:30", "2026-01-06T08:00"),
        ("2026-01-06T03:00", "2026-01-06T08:00"),
        ("2026-01-05T21:00", "2026-01-06T08:00"),
    ],
    ids=["evening", "after-midnight", "at-start"],
)
def test_quiet_hours_defer_to_their_end(local: str, expected: str) -> None:
    """Quiet hours across midnight defer a send to the next local end of quiet hours."""
    decision = run(at(local), pol=policies(**QUIET))
    assert (decision.action, decision.reason) == ("defer", "quiet_hours")
    assert decision.until == at(expected)
    assert decision.until is not None and decision.until.tzinfo is UTC


@pytest.mark.parametrize("local", ["2026-01-05T08:00", "2026-01-05T20:59"], ids=["at-end", "before-start"])
def test_outside_quiet_hours_sends(local: str) -> None:
    """The end of quiet hours is already allowed; the minute before their start too."""
    assert run(at(local), pol=policies(**QUIET)).action == "send"


def test_quiet_hours_within_one_day() -> None:
    """A window that does not cross midnight (a siesta) works the same way."""
    pol = policies(quiet_hours={"from": "13:00", "to": "15:00"})
    assert run(at("2026-01-05T14:00"), pol=pol).until == at("2026-01-05T15:00")
    assert run(at("2026-01-05T12:00"), pol=pol).action == "send"


def test_equal_quiet_bounds_mean_no_quiet_hours() -> None:
    """`from` equal to `to` declares no quiet hours at all."""
    pol = policies(quiet_hours={"from": "08:00", "to": "08:00"})
    assert run(at("2026-01-05T03:00"), pol=pol).action == "send"


def test_drop_action_suppresses() -> None:
    """With `action: drop` a send inside quiet hours is suppressed, not deferred."""
    pol = policies(quiet_hours={"from": "21:00", "to": "08:00", "action": "drop"})
    decision = run(at("2026-01-05T23:00"), pol=pol)
    assert (decision.action, decision.reason) == ("suppress", "quiet_hours")


@pytest.mark.parametrize("channel", ["in_app", "webhook"])
def test_inbox_and_webhook_ignore_quiet_hours(channel: str) -> None:
    """In-app messages wait in an inbox and webhooks reach systems: quiet hours do not apply."""
    assert run(at("2026-01-05T23:00"), message(channel), policies(**QUIET)).action == "send"


def test_quiet_hours_use_the_users_time_zone() -> None:
    """`traits.timezone` decides what local time it is; the workspace zone is the fallback."""
    now = utc("2026-01-05T23:00")  # midnight in Berlin, 18:00 in New York
    pol = policies(**QUIET)
    assert run(now, pol=pol).action == "defer"
    assert run(now, pol=pol, timezone="America/New_York").action == "send"
    assert run(now, pol=pol, timezone="Not/AZone").action == "defer"


def test_deferral_to_the_end_of_quiet_hours_over_the_autumn_dst_change() -> None:
    """Berlin falls back on 25 Oct 2026: 08:00 that morning is 07:00 UTC, not 06:00 or 08:00."""
    decision = run(utc("2026-10-24T20:00"), pol=policies(**QUIET))  # 22:00 CEST
    assert decision.until == utc("2026-10-25T07:00")
    assert decision.until == at("2026-10-25T08:00")


def test_deferral_to_the_end_of_quiet_hours_over_the_spring_dst_change() -> None:
    """Berlin springs forward on 29 Mar 2026: 08:00 that morning is 06:00 UTC."""
    decision = run(utc("2026-03-28T21:00"), pol=policies(**QUIET))  # 22:00 CET
    assert decision.until == utc("2026-03-29T06:00")


def test_deferral_to_a_time_skipped_by_the_spring_gap_goes_after_it() -> None:
    """Quiet hours ending at 02:30 on the night Berlin skips 02:00-03:00 end at 03:00 CEST instead."""
    pol = policies(quiet_hours={"from": "21:00", "to": "02:30"})
    decision = run(at("2026-03-28T23:00"), pol=pol)
    assert decision.until is not None
    assert decision.until.astimezone(BERLIN).hour == 3
    assert decision.until == utc("2026-03-29T01:30")


# --- send windows and send time -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "expected"),
    [("2026-01-05T07:00", "2026-01-05T09:00"), ("2026-01-05T19:00", "2026-01-06T09:00")],
    ids=["before", "after"],
)
def test_window_defers_to_its_next_opening(local: str, expected: str) -> None:
    """`send_at: {window: "09:00-18:00"}` defers to the next local 09:00."""
    decision = run(at(local), message(send_at={"window": "09:00-18:00"}))
    assert (decision.action, decision.reason, decision.until) == ("defer", "window", at(expected))


def test_window_open_sends_now() -> None:
    """Inside the window the message goes at once."""
    assert run(at("2026-01-05T17:59"), message(send_at={"window": "09:00-18:00"})).action == "send"


def test_window_across_midnight() -> None:
    """A window such as 22:00-02:00 is open on both sides of midnight."""
    msg = message(send_at={"window": "22:00-02:00"})
    assert run(at("2026-01-05T01:00"), msg).action == "send"
    assert run(at("2026-01-05T03:00"), msg).until == at("2026-01-05T22:00")


def test_window_and_quiet_hours_together() -> None:
    """A window opening inside quiet hours defers to the first minute both allow."""
    decision = run(at("2026-01-05T06:00"), message(send_at={"window": "07:00-09:00"}), policies(**QUIET))
    assert (decision.reason, decision.until) == ("window", at("2026-01-05T08:00"))


def test_window_inside_quiet_hours_is_never_open() -> None:
    """A window wholly inside quiet hours can never be met: the send is suppressed, not deferred forever."""
    decision = run(at("2026-01-05T12:00"), message(send_at={"window": "22:00-23:00"}), policies(**QUIET))
    assert decision.action == "suppress"


def test_optimal_defers_to_the_best_hour() -> None:
    """`send_at: optimal` waits for the next occurrence of the user's best local hour."""
    decision = run(at("2026-01-05T12:00"), message(send_at="optimal"), hour=19)
    assert (decision.action, decision.reason) == ("defer", "send_time")
    assert decision.until == at("2026-01-05T19:00")
    assert run(at("2026-01-05T20:00"), message(send_at="optimal"), hour=19).until == at("2026-01-06T19:00")


def test_optimal_sends_within_the_best_hour() -> None:
    """Within the best hour the message goes at once."""
    assert run(at("2026-01-05T19:45"), message(send_at="optimal"), hour=19).action == "send"


def test_optimal_without_history_uses_the_default_hour() -> None:
    """Without a learned hour, `policies.send_time.default_hour` is the target."""
    pol = policies(send_time={"default_hour": 10})
    assert run(at("2026-01-05T12:00"), message(send_at="optimal"), pol).until == at("2026-01-06T10:00")


def test_optimal_deferral_over_the_spring_dst_change() -> None:
    """10:00 on the morning Berlin springs forward is 08:00 UTC."""
    decision = run(at("2026-03-28T12:00"), message(send_at="optimal"), hour=10)
    assert decision.until == utc("2026-03-29T08:00")


def test_a_deferred_optimal_send_is_not_deferred_again() -> None:
    """Once due, a send deferred for send time goes even if the best hour has moved meanwhile."""
    decision = run(at("2026-01-05T19:00"), message(send_at="optimal"), hour=9, deferred=True)
    assert decision.action == "send"


@pytest.mark.parametrize(("hour", "target"), [(23, 20), (6, 8), (2, 20)], ids=["late", "early", "tie"])
def test_best_hour_inside_quiet_hours_moves_to_the_closest_allowed_hour(hour: int, target: int) -> None:
    """A quiet best hour is replaced by the closest hour outside quiet hours, the earlier on a tie."""
    decision = run(at("2026-01-05T07:30"), message(send_at="optimal"), policies(**QUIET), hour=hour)
    assert (decision.reason, decision.until) == ("send_time", at(f"2026-01-05T{target:02d}:00"))


def test_send_time_is_reported_before_quiet_hours() -> None:
    """At night, a send waiting for its best hour is deferred for `send_time` to that hour."""
    decision = run(at("2026-01-05T23:00"), message(send_at="optimal"), policies(**QUIET), hour=10)
    assert (decision.reason, decision.until) == ("send_time", at("2026-01-06T10:00"))


def test_naive_times_are_refused() -> None:
    """A naive datetime is ambiguous: the core only works with aware (UTC) times."""
    with pytest.raises(ValueError, match="timezone-aware"):
        run(datetime(2026, 1, 5, 12))


# --- time zones and best hour ---------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "", "Not/AZone", "Europe", "../etc/passwd", "/etc/localtime"])
def test_unknown_zones_fall_back(name: str | None) -> None:
    """A missing, unknown or path-like zone name falls back to the default zone."""
    assert resolve_zone(name, "Asia/Seoul") == ZoneInfo("Asia/Seoul")
    assert resolve_zone(name, "nonsense") == ZoneInfo("UTC")


def test_local_hour() -> None:
    """The local hour follows the zone, DST included."""
    assert local_hour(utc("2026-07-01T12:00"), "Europe/Berlin") == 14
    assert local_hour(utc("2026-01-01T12:00"), "Europe/Berlin") == 13


def test_best_hour_without_history_is_none() -> None:
    """No engagements, no learned hour."""
    assert best_hour([], "Europe/Berlin", utc("2026-01-05T12:00")) is None


def test_best_hour_is_the_most_engaged_local_hour() -> None:
    """Engagement times are binned by the user's local hour."""
    now = utc("2026-01-05T12:00")
    evenings = [utc(f"2026-01-0{d}T18:30").timestamp() for d in (1, 2, 3)]
    engagements = [*evenings, utc("2026-01-04T07:00").timestamp()]
    assert best_hour(engagements, "Europe/Berlin", now) == 19
    assert best_hour(engagements, "UTC", now) == 18


def test_recent_engagements_outweigh_old_ones() -> None:
    """With a 14-day half-life, two engagements this week beat three from two months ago."""
    now = utc("2026-03-01T12:00")
    old = [utc(f"2026-01-0{d}T09:00").timestamp() for d in (1, 2, 3)]
    recent = [utc(f"2026-02-2{d}T20:00").timestamp() for d in (7, 8)]
    assert best_hour(old + recent, "UTC", now) == 20
    assert best_hour(old + recent, "UTC", now, half_life_days=1000) == 9


# --- properties -----------------------------------------------------------------------------------

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"]
clock = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.sampled_from([0, 15, 30, 45]))
# DST changes of the zones above in 2026 (UTC): most bugs live within a day or two of one.
DST_CHANGES = [
    utc(t)
    for t in (
        "2026-03-08T07:00", "2026-03-29T01:00", "2026-04-04T15:00",
        "2026-10-03T15:30", "2026-10-25T01:00", "2026-11-01T06:00",
    )
]
instants = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
) | st.builds(
    lambda change, minutes: change + timedelta(minutes=minutes),
    st.sampled_from(DST_CHANGES),
    st.integers(-2 * 1440, 2 * 1440),
)


def _minute(instant: datetime, zone: str) -> int:
    local = instant.astimezone(ZoneInfo(zone))
    return local.hour * 60 + local.minute


def _inside(minute: int, start: str, end: str) -> bool:
    low, high = (int(t[:2]) * 60 + int(t[3:]) for t in (start, end))
    return low <= minute < high if low < high else minute >= low or minute < high


@settings(max_examples=300, deadline=None)
@given(
    now=instants,
    zone=st.sampled_from(ZONES),
    quiet=st.tuples(clock, clock),
    window=st.none() | st.tuples(clock, clock),
    optimal=st.booleans(),
    hour=st.integers(0, 23),
    channel=st.sampled_from(["email", "push", "in_app"]),
)
def test_sends_respect_quiet_hours_and_deferrals_come_due(
    now: datetime,
    zone: str,
    quiet: tuple[str, str],
    window: tuple[str, str] | None,
    optimal: bool,
    hour: int,
    channel: str,
) -> None:
    """Nothing is sent in quiet hours or outside its window, and a deferred send is sent at `until`."""
    send_at: Any = "optimal" if optimal else "immediately"
    if window:
        send_at = {"window": f"{window[0]}-{window[1]}"}
    msg = message(channel, send_at=send_at)
    pol = policies(quiet_hours={"from": quiet[0], "to": quiet[1]})
    decision = run(now, msg, pol, timezone=zone, hour=hour)
    if decision.action == "defer":
        assert decision.until is not None and decision.until > now
        again = run(decision.until, msg, pol, timezone=zone, hour=hour, deferred=True)
        assert again.action == "send", (decision, again)
        now = decision.until
    elif decision.action == "suppress":
        return
    if channel != "in_app" and quiet[0] != quiet[1]:
        assert not _inside(_minute(now, zone), *quiet)
    if window and window[0] != window[1]:
        assert _inside(_minute(now, zone), *window)


@settings(max_examples=100, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 7 * 86400), min_size=1, max_size=60),
    channels=st.lists(st.sampled_from(["email", "push", "sms", "webhook"]), min_size=60, max_size=60),
)
def test_caps_are_never_exceeded(offsets: list[int], channels: list[str]) -> None:
    """Whatever the attempts, no window of `per` ever holds more sends than a cap allows."""
    pol = policies(
        frequency_caps=[{"channel": "any", "max": 3, "per": "1d"}, {"channel": "push", "max": 1, "per": "4h"}]
    )
    start = utc("2026-01-05T00:00")
    ledger: list[tuple[float, str]] = []
    for offset, channel in zip(sorted(offsets), channels, strict=False):
        now = start + timedelta(seconds=offset)
        if run(now, message(channel), pol, ledger=ledger).action == "send":
            ledger.append((now.timestamp(), channel))
    for sent_at, _ in ledger:
        person = [t for t, ch in ledger if sent_at - 86400 < t <= sent_at and ch != "webhook"]
        pushes = [t for t, ch in ledger if sent_at - 4 * 3600 < t <= sent_at and ch == "push"]
        assert len(person) <= 3 and len(pushes) <= 1
