"""`journey preview MESSAGE --user ID` and `journey audience JOURNEY`: a message rendered for a real
stored user with the decision delivery would make now, and how many stored users a journey would take.
Pure over what the caller read from the store: a profile, or all of them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from journey_engine.engine import Engine, SendMessage
from journey_engine.errors import did_you_mean
from journey_engine.policies import in_control_group
from journey_engine.profile import Instance, Profile
from journey_engine.templates import TemplateError


@dataclass(frozen=True, slots=True)
class Preview:
    message: str
    channel: str
    user: str
    locale: str | None  # the translation chosen; None: the default text
    journey: str | None  # the journey whose state sends it, when the user is in it (its data is used)
    subject: str | None
    title: str | None
    body: str | None
    url: str | None
    action: str  # send | defer | suppress
    reason: str | None
    explanation: str
    until: str | None
    template_error: str | None


def _scope(engine: Engine, profile: Profile, now: datetime) -> dict[str, Any]:
    return {"traits": profile.traits, "metrics": engine.cw.metrics.current(profile, now),
            "segments": set(profile.segments), "user_id": profile.user_id}


def _sender(engine: Engine, profile: Profile, message: str) -> tuple[str | None, str, Instance | None]:
    """The first journey (by name) with a state that sends `message`, its state, and the user's run in it."""
    for name, cj in engine.cw.journeys.items():
        for state_name, state in cj.journey.states.items():
            if message in state.candidates:
                run = next((i for (j, _), i in profile.instances.items() if j == name), None)
                return name, state_name, run
    return None, "", None


def preview(engine: Engine, profile: Profile, message: str, now: datetime) -> Preview:
    """The message as this user would get it now, and whether and why it would (not) be sent now."""
    if message not in engine.messages:
        raise LookupError(f"unknown message `{message}`{did_you_mean(message, engine.messages)}")
    msg = engine.messages[message]
    journey, state, run = _sender(engine, profile, message)
    locale = Engine._locale(profile, msg)
    scope = _scope(engine, profile, now)
    send = SendMessage(idempotency_key=f"preview:{profile.user_id}:{message}", at=now, user=profile.user_id,
                       journey=journey or "", key=run.key or None if run else None, state=state, message=message,
                       channel=msg.channel, locale=locale,
                       context={"traits": dict(profile.traits), "metrics": scope["metrics"], "user_id": profile.user_id,
                                "segments": list(profile.segments),
                                "journey": {"name": journey, "key": run.key or None if run else None,
                                            "data": run.data if run else {}},
                                "message": {"id": message, "channel": msg.channel}})
    error = None
    subject = title = body = url = None
    try:
        done = engine.render(send)
        subject, title, body, url = done.subject, done.title, done.body, done.url
    except TemplateError as exc:
        error = str(exc)
    action, reason, explanation, until = _decision(engine, profile, message, run, scope, now)
    return Preview(message=message, channel=msg.channel, user=profile.user_id, locale=locale, journey=journey,
                   subject=subject, title=title, body=body, url=url, action=action, reason=reason,
                   explanation=explanation, until=until, template_error=error)


def _decision(engine: Engine, profile: Profile, message: str, run: Instance | None, scope: dict[str, Any],
              now: datetime) -> tuple[str, str | None, str, str | None]:
    msg = engine.messages[message]
    rule = engine.cw.message_rules.get(message)
    if rule is not None and not rule(scope, now):
        return "suppress", "ineligible", f"its rule does not hold for this user: {rule.text}", None
    if not msg.transactional and run is not None and run.holdout:
        return "suppress", "holdout", "the user is in the journey's holdout", None
    if not msg.transactional and in_control_group(profile.user_id, engine.policies.control_group):
        return "suppress", "control_group", "the user is in the workspace's control group", None
    decided = engine.decision(profile, message, now)
    until = decided.until.astimezone(UTC).isoformat().replace("+00:00", "Z") if decided.until else None
    return decided.action, decided.reason, decided.explanation, until


@dataclass(slots=True)
class Audience:
    """Stored users against a journey's entry: who would enter now, who is in it, who may not again."""

    journey: str
    entry: str  # the entry, in words
    users: int = 0
    would_enter: int = 0
    in_journey: int = 0
    not_again: int = 0  # entered before and `reentry` does not let them in now
    segments: dict[str, int] = field(default_factory=dict)  # every segment's members among stored users


def audience(engine: Engine, profiles: Iterable[Profile], journey: str, now: datetime) -> Audience:
    """How many stored users would enter `journey` now by its entry segment or rule (for an event entry:
    whose guard holds now, so the event would take them in), and how many are in each segment. Segment
    membership is as stored: the engine's last evaluation of each user."""
    cj = engine.cw.journeys.get(journey)
    if cj is None:
        raise LookupError(f"unknown journey `{journey}`{did_you_mean(journey, engine.cw.journeys)}")
    entry = cj.journey.entry
    words = (f"on event {entry.on}" if entry.on else f"entering segment {entry.segment}" if entry.segment
             else f'rule "{entry.if_}"') + (f' if "{entry.if_}"' if entry.if_ and (entry.on or entry.segment) else "")
    found = Audience(journey=journey, entry=words, segments=dict.fromkeys(engine.cw.workspace.segments, 0))
    for profile in profiles:
        found.users += 1
        for name in profile.segments:
            found.segments[name] = found.segments.get(name, 0) + 1
        if any(j == journey for j, _ in profile.instances) and entry.key is None:
            found.in_journey += 1
            continue
        last = profile.last_entry((journey, ""))
        policy = entry.reentry
        if last is not None and (policy == "never" or (policy != "always" and
                                                      now.timestamp() - last < policy.after.total_seconds())):
            found.not_again += 1
            continue
        segment_ok = entry.segment is None or entry.segment in profile.segments
        rule = cj.entry.rule
        if segment_ok and (rule is None or rule(_scope(engine, profile, now), now)):
            found.would_enter += 1
    return found
