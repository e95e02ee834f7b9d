"""A profile as compact bytes (msgpack) and back: what stores keep, one blob per user.

Hot counters and timers live inside the blob rather than in JSON columns decoded on every read
(NOTES.md); the store keeps only what it must query (the next wake-up) in columns of its own.
The first element is the format version: a newer format is refused, never misread.
Times the engine keeps as epoch floats stay floats here; the rest are msgpack Timestamps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgpack

from .errors import JourneyError
from .profile import Deferred, Instance, Profile

FORMAT = 3
_READS = (2, 3)  # format 2 ended before the bounced addresses and the held entry rules


class CodecError(JourneyError, ValueError):
    """A blob this version cannot read (written by a newer engine, or damaged)."""


def encode(profile: Profile, defaults: Mapping[str, Any] | None = None) -> bytes:
    """The profile as bytes. Metrics equal to their defaults are already left out of `metric_values`;
    `defaults` is accepted for the stores' sake and not needed."""
    body = [
        FORMAT, profile.user_id, profile.traits, profile.metric_values,
        profile.windows or None,
        profile.segments, profile.for_since,
        [_instance(i) for i in profile.instances.values()],
        profile.entries,
        [x for pair in profile.ledger for x in pair] if profile.ledger else None,
        profile.choices or None,
        [[d.due, d.journey, d.key, d.state, d.message, d.visit] for d in profile.deferred] if profile.deferred
        else None,
        profile.engagements or None, profile.wake_at, profile.segments_due_at, profile.bounced,
        profile.held,
    ]
    return msgpack.packb(body, datetime=True)  # type: ignore[no-any-return]


def decode(blob: bytes, defaults: Mapping[str, Any] | None = None) -> Profile:
    try:
        body = msgpack.unpackb(blob, timestamp=3, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CodecError(f"a stored profile could not be read: {exc}") from None
    if not isinstance(body, list) or not body or body[0] not in _READS:
        version = body[0] if isinstance(body, list) and body else "?"
        raise CodecError(f"a stored profile has format {version}; this engine reads format {FORMAT}: "
                         "upgrade journey-engine")
    if body[0] == 2:
        body.extend((None, None))
    (_, user_id, traits, metrics, windows, segments, for_since, instances, entries, ledger, choices,
     deferred, engagements, wake_at, segments_due_at, bounced, held) = body
    profile = Profile(user_id, defaults)
    profile.traits = traits
    profile.metric_values = metrics
    if windows:
        profile.windows = {k: tuple(v) for k, v in windows.items()}
    if segments:
        profile.segments = tuple(segments)
    profile.for_since = for_since or None
    if instances:
        profile.instances = {(i.journey, i.key): i for i in map(_read_instance, instances)}
    if entries:
        if len(entries) % 3:
            raise CodecError("a stored profile could not be read: its journey entries are not triples")
        profile.entries = tuple(entries)
    if ledger:
        it = iter(ledger)
        profile.ledger = tuple(zip(it, it, strict=True))
    profile.choices = choices
    if deferred:
        profile.deferred = [Deferred(due=d[0], journey=d[1], key=d[2], state=d[3], message=d[4], visit=d[5])
                            for d in deferred]
    profile.engagements = engagements
    profile.wake_at = wake_at
    profile.segments_due_at = segments_due_at
    profile.bounced = tuple(bounced) if bounced else None
    profile.held = tuple(held) if held else None
    return profile


def _instance(i: Instance) -> list[Any]:
    return [i.journey, i.version, i.key, i.state, i.entered_at, i.state_entered_at, i.data, i.holdout, i.visit,
            [x for pair in i.timers for x in pair], [x for triple in i.sent for x in triple] if i.sent else None]


def _read_instance(raw: list[Any]) -> Instance:
    """The instance as `_instance` wrote it (a compiled Instance can only be made through its __init__)."""
    journey, version, key, state, entered_at, state_entered_at, data, holdout, visit, timers, sent = raw
    inst = Instance(journey=journey, version=version, key=key, state=state, entered_at=entered_at, data=data,
                    holdout=holdout)
    inst.state_entered_at = state_entered_at
    inst.visit = visit
    if timers:
        it = iter(timers)
        inst.timers = tuple(zip(it, it, strict=True))
    if sent:
        it = iter(sent)
        inst.sent = list(zip(it, it, it, strict=True))
    return inst
