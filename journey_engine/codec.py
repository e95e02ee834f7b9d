"""A profile as compact bytes (msgpack) and back: what stores keep, one blob per user.

Hot counters and timers live inside the blob rather than in JSON columns decoded on every read; the
store keeps only what it must query (the next wake-up) in columns of its own.
The first element is the format version: a newer format is refused, never misread.
Times the engine keeps as epoch floats stay floats here; the rest are msgpack Timestamps.

A store whose blobs never leave the process (`MemoryStore`) passes a `Names` table: the names a
workspace repeats in every profile (journeys, versions, states, segments, channels, messages,
metrics) are then written as small integers, so decoding makes no string for them, and every
decoded profile shares one copy of each instead of holding its own.
Such a blob is marked with its own format number, which a decoder without the table refuses.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import msgpack

from .errors import JourneyError
from .profile import Deferred, Instance, Profile

FORMAT = 3
_READS = (2, 3)  # format 2 ended before the bounced addresses and the held entry rules
LOCAL = 103  # FORMAT with names as numbers of a process's `Names` table


class CodecError(JourneyError, ValueError):
    """A blob this version cannot read (written by a newer engine, or damaged)."""


class Names:
    """Process-local numbers for the names profiles repeat, as many as the workspace has names. A number,
    once given, never changes; new names are numbered under a lock (rare: once per name)."""

    __slots__ = ("_lock", "index", "names")

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self._lock = threading.Lock()

    def code(self, name: str) -> int:
        number = self.index.get(name)
        if number is None:
            with self._lock:
                number = self.index.get(name)
                if number is None:
                    number = len(self.names)
                    self.names.append(name)
                    self.index[name] = number
        return number


# One Packer per thread, reused: `packb` makes a new one (and its buffer) for every blob, which took
# half of the packing time (a Packer is not safe to share between threads).
_local = threading.local()


def _packer() -> msgpack.Packer:
    packer: msgpack.Packer | None = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(datetime=True)
    return packer


def encode(profile: Profile, defaults: Mapping[str, Any] | None = None, names: Names | None = None) -> bytes:
    """The profile as bytes. Metrics equal to their defaults are already left out of `metric_values`;
    `defaults` is accepted for the stores' sake and not needed. With `names`, a blob for this process only."""
    if names is None:
        body: list[Any] = [
            FORMAT, profile.user_id, profile.traits, profile.metric_values, profile.windows or None,
            profile.segments, profile.for_since, [_instance(i, None) for i in profile.instances.values()],
            profile.entries, [x for pair in profile.ledger for x in pair] if profile.ledger else None,
            profile.choices or None,
            [[d.due, d.journey, d.key, d.state, d.message, d.visit, d.run, d.data] for d in profile.deferred]
            if profile.deferred
            else None, profile.engagements or None, profile.wake_at, profile.segments_due_at, profile.bounced,
            profile.held, profile.stamps]
        return _packer().pack(body)  # type: ignore[no-any-return]
    code = names.code
    entries: list[Any] | None = None
    if profile.entries:
        entries = list(profile.entries)
        for i in range(0, len(entries), 3):
            entries[i] = code(entries[i])
    ledger: list[Any] | None = None
    if profile.ledger:
        ledger = []
        for at, channel in profile.ledger:
            ledger.append(at)
            ledger.append(code(channel))
    body = [
        LOCAL, profile.user_id, profile.traits, _flat(profile.metric_values, names),
        _flat(profile.windows, names) if profile.windows else None, [code(s) for s in profile.segments],
        _flat(profile.for_since, names) if profile.for_since else None,
        [_instance(i, names) for i in profile.instances.values()], entries, ledger, profile.choices or None,
        [[d.due, code(d.journey), d.key, code(d.state), code(d.message), d.visit, d.run, d.data]
         for d in profile.deferred]
        if profile.deferred else None, profile.engagements or None, profile.wake_at, profile.segments_due_at,
        profile.bounced, [code(j) for j in profile.held] if profile.held else None,
        _flat(profile.stamps, names) if profile.stamps else None]
    return _packer().pack(body)  # type: ignore[no-any-return]


def _flat(values: Mapping[str, Any], names: Names) -> list[Any]:
    """A map keyed by names as a flat list of numbered names and values (msgpack maps want str keys)."""
    flat: list[Any] = []
    for key, value in values.items():
        flat.append(names.code(key))
        flat.append(value)
    return flat


def _keyed(flat: list[Any], names: list[str]) -> dict[str, Any]:
    return {names[flat[i]]: flat[i + 1] for i in range(0, len(flat), 2)}


def decode(blob: bytes, defaults: Mapping[str, Any] | None = None, names: Names | None = None) -> Profile:
    try:
        body = msgpack.unpackb(blob, timestamp=3, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CodecError(f"a stored profile could not be read: {exc}") from None
    version = body[0] if isinstance(body, list) and body else "?"
    local = version == LOCAL and names is not None
    if version == LOCAL and names is None:
        raise CodecError("a stored profile was written for one process's name table (a MemoryStore's) "
                         "and cannot be read without it")
    if not local and version not in _READS:
        raise CodecError(f"a stored profile has format {version}; this engine reads format {FORMAT}: "
                         "upgrade journey-engine")
    if version == 2:
        body.extend((None, None))
    if len(body) == 17:  # written before `last` metrics kept their events' times
        body.append(None)
    (_, user_id, traits, metrics, windows, segments, for_since, instances, entries, ledger, choices,
     deferred, engagements, wake_at, segments_due_at, bounced, held, stamps) = body
    table: list[str] | None = names.names if local and names is not None else None
    profile = Profile(user_id, defaults)
    profile.traits = traits
    profile.metric_values = metrics if table is None else _keyed(metrics, table)
    if windows:
        profile.windows = {k: tuple(v) for k, v in (windows if table is None else _keyed(windows, table)).items()}
    if segments:
        profile.segments = tuple(segments) if table is None else tuple([table[s] for s in segments])
    if for_since:
        profile.for_since = for_since if table is None else _keyed(for_since, table)
    if instances:
        profile.instances = {(i.journey, i.key): i for i in [_read_instance(raw, table) for raw in instances]}
    if entries:
        if len(entries) % 3:
            raise CodecError("a stored profile could not be read: its journey entries are not triples")
        if table is not None:
            for i in range(0, len(entries), 3):
                entries[i] = table[entries[i]]
        profile.entries = tuple(entries)
    if ledger:
        if table is not None:
            for i in range(1, len(ledger), 2):
                ledger[i] = table[ledger[i]]
        it = iter(ledger)
        profile.ledger = tuple(zip(it, it, strict=True))
    profile.choices = choices
    if deferred:
        if table is not None:
            for d in deferred:
                d[1], d[3], d[4] = table[d[1]], table[d[3]], table[d[4]]
        profile.deferred = [_read_deferred(d, profile) for d in deferred]
    profile.engagements = engagements
    profile.wake_at = wake_at
    profile.segments_due_at = segments_due_at
    profile.bounced = tuple(bounced) if bounced else None
    if held:
        profile.held = tuple(held) if table is None else tuple([table[j] for j in held])
    if stamps:
        profile.stamps = stamps if table is None else _keyed(stamps, table)
    return profile


def _read_deferred(d: list[Any], profile: Profile) -> Deferred:
    """A deferred send; one stored before it named its run belongs to the run of its journey in progress."""
    if len(d) < 8:
        inst = profile.instances.get((d[1], d[2]))
        d = [*d, inst.run if inst is not None else 0, inst.data if inst is not None else {}]
    return Deferred(due=d[0], journey=d[1], key=d[2], state=d[3], message=d[4], visit=d[5], run=d[6], data=d[7])


def _instance(i: Instance, names: Names | None) -> list[Any]:
    sent: list[Any] | None = None
    if i.sent:
        sent = []
        for message, at, state in i.sent:
            sent.extend((message, at, state) if names is None else (names.code(message), at, names.code(state)))
    if names is None:
        return [i.journey, i.version, i.key, i.state, i.entered_at, i.state_entered_at, i.data, i.holdout, i.visit,
                [x for pair in i.timers for x in pair], sent, i.run]
    return [names.code(i.journey), names.code(i.version), i.key, names.code(i.state), i.entered_at,
            i.state_entered_at, i.data, i.holdout, i.visit, [x for pair in i.timers for x in pair], sent, i.run]


def _read_instance(raw: list[Any], table: list[str] | None) -> Instance:
    """The instance as `_instance` wrote it (a compiled Instance can only be made through its __init__)."""
    journey, version, key, state, entered_at, state_entered_at, data, holdout, visit, timers, sent = raw[:11]
    if table is not None:
        journey, version, state = table[journey], table[version], table[state]
    inst = Instance(journey=journey, version=version, key=key, state=state, entered_at=entered_at, data=data,
                    holdout=holdout, run=raw[11] if len(raw) > 11 else None)  # 11 fields: stored before runs had ids
    inst.state_entered_at = state_entered_at
    inst.visit = visit
    if timers:
        it = iter(timers)
        inst.timers = tuple(zip(it, it, strict=True))
    if sent:
        if table is not None:
            for k in range(0, len(sent), 3):
                sent[k], sent[k + 2] = table[sent[k]], table[sent[k + 2]]
        it = iter(sent)
        inst.sent = list(zip(it, it, it, strict=True))
    return inst
