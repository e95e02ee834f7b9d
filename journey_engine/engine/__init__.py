"""The engine: (profile, input, now) -> the profile moved on, plus trace records and sends.

Inputs are an event, a wake-up (timers, deferred sends, time-driven segments) or an alias merge.
The engine mutates the profile in place (a million users must fit) and never reads the wall clock.
Order of work for one event (SPEC §3 item 2): traits and metrics, segments, then per journey in
name order: exit criteria, goal, the current state's transitions, entry.

`Engine` is the facade. It is built in layers, one concern per module, each using only the layers
below it: base (workspace, plans, segments, learning) <- feedback (traits, subscriptions, delivery
and engagement) <- messages (send decisions, deferred sends) <- journeys (entry, exit, goal,
transitions, timers armed) <- versions (which version each instance runs on, the walk over the
user's journeys) <- schedule (wake-ups) <- Engine (the inputs). Single inheritance, so
the compiled build (mypyc) keeps every call a direct one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from .. import clock
from ..events import Event
from ..facts import AliasMerged, SegmentLeft
from ..profile import Deferred, Instance, Profile, entry_run
from .base import MAX_CHAIN
from .feedback import BOUNCE_EVENTS, FEEDBACK, MAX_ENGAGEMENTS, SUBSCRIPTION_EVENTS, WORKSPACE_HOURS
from .plan import Run
from .schedule import Schedule
from .values import SEND_FIELDS, Outcome, RenderedMessage, SendMessage

__all__ = ["BOUNCE_EVENTS", "FEEDBACK", "MAX_CHAIN", "SEND_FIELDS", "SUBSCRIPTION_EVENTS", "WORKSPACE_HOURS",
           "Engine", "Outcome", "RenderedMessage", "SendMessage"]


class Engine(Schedule):
    """Runs a compiled workspace. Bandit statistics are the only state it keeps itself."""

    def new_profile(self, user_id: str) -> Profile:
        return Profile(user_id, self._defaults)

    def apply(self, profile: Profile, event: Event, now: datetime) -> Outcome:
        """One event for this user (already deduplicated by the caller)."""
        run = Run(profile, now, event)
        fresh = _blank(profile)
        traits_changed = False
        changed_metrics = self.cw.metrics.refresh(profile, now)
        if event.traits:
            traits_changed = self._set_traits(profile, event.traits)
        if event.name is not None:
            changed_metrics |= self.cw.metrics.apply(profile, event, now, run.scope)
            sent = self._feedback(run, event) if event.name in FEEDBACK else None
            self._subscription(run, event, sent)
        if fresh:  # a user exists from their first event: every segment is evaluated (SPEC §3 item 13)
            self._segments(run, metrics=self.cw.metrics.metrics.keys(), traits=True, timed=True)
            run.changed = True
        else:
            self._segments(run, metrics=changed_metrics, traits=traits_changed, timed=False)
        run.changed = bool(changed_metrics or traits_changed or run.entered or run.changed)
        if not event.backfill:  # a backfill updates the profile but starts and moves no journey
            self._journeys(run, event)
        self._settle(run)
        return run.out

    def wake(self, profile: Profile, now: datetime, *, current: datetime | None = None) -> Outcome:
        """Everything that falls due for this user at `now`: windows, `for:`, timers, deferred sends.

        `current` is the time it really is when that is later than `now`: a service catching up after it
        was down wakes users at their due times, and what they would be sent expires by `current`."""
        run = Run(profile, now)
        if current is not None and current > now:
            run.current = current
        if profile.wake_at is not None and profile.wake_at < clock.epoch(now):
            run.due = datetime.fromtimestamp(profile.wake_at, UTC)  # woken late
        self._wake(run)
        self._settle(run)
        return run.out

    def merge(self, into: Profile, other: Profile, now: datetime) -> Outcome:
        """alias: fold the anonymous profile `other` into `into`, journeys and metrics included."""
        run = Run(into, now)
        run.out.facts.append(AliasMerged(at=now, user=into.user_id, previous_id=other.user_id))
        for name in other.segments:  # the anonymous id ceases to exist: its memberships end
            run.out.facts.append(SegmentLeft(at=now, user=other.user_id, segment=name))
        into.traits.update({k: v for k, v in other.traits.items() if k not in into.traits})
        self.cw.metrics.merge(into, other, now)
        taken = [key for key in other.instances if key not in into.instances]
        # pending sends come along with their runs, and those of runs already ended (a final state's)
        moved = [d for d in other.deferred or () if (d.journey, d.key) in taken or (d.journey, d.key) not in
                 other.instances or other.instances[(d.journey, d.key)].run != d.run]
        _own_runs(into, [other.instances[key] for key in taken], moved)
        for key in taken:
            into.add_instance(key, other.instances[key])
        into.deferred = (into.deferred or []) + moved or None
        entries = other.entries or ()
        for i in range(0, len(entries), 3):
            key, at = (entries[i], entries[i + 1]), entries[i + 2]
            prior = into.last_entry(key)
            into.note_entry(key, at if prior is None else max(prior, at))
        into.ledger = tuple(sorted((*(into.ledger or ()), *(other.ledger or ())))) or None
        for name, choice in (other.choices or {}).items():
            into.subscriptions.setdefault(name, choice)
        into.engagements = sorted((into.engagements or []) + (other.engagements or []))[-MAX_ENGAGEMENTS:] or None
        into.bounced = tuple(dict.fromkeys((*(into.bounced or ()), *(other.bounced or ())))) or None
        # whether an `if:` entry rule held stays the known user's own: one the merge makes true enters them, as
        # a segment the merge makes them enter does (README reading 10), as far as `reentry` allows
        self._segments(run, metrics=set(self.cw.metrics.metrics), traits=True, timed=True)
        run.changed = True
        self._journeys(run, None)
        self._settle(run)
        return run.out

    def migrate(self, profile: Profile, now: datetime) -> Outcome:
        """Move this user's instances that the versions in force move (the service's sweep after a deploy;
        the engine also moves an instance the first time it touches it)."""
        run = Run(profile, now)
        for inst in list(profile.instances.values()):
            self._running(run, inst)
        self._settle(run)
        return run.out

    def enroll(self, profile: Profile, now: datetime, journeys: Iterable[str]) -> Outcome:
        """A journey loaded for the first time enrolls users already in its entry segment, unless they
        have been through it already (a store that ran it before it learned to record enrollment)."""
        run = Run(profile, now)
        run.changed = True  # the journey is what changed: its entry is checked as on a change
        been = set((profile.entries or ())[::3])
        for name in journeys:
            cj = self.cw.journeys[name]
            if cj.entry.segment in profile.segments and name not in been:
                run.entered.add(cj.entry.segment)
                self._enter(run, cj, None)
                run.entered.discard(cj.entry.segment)
        self._settle(run)
        return run.out


def _own_runs(into: Profile, instances: list[Instance], deferred: list[Deferred]) -> None:
    """Runs that come with an alias keep ids of their own (SPEC §3 item 12): each still has its own sends
    and idempotency keys. A run of the anonymous id whose id the known user has used, or may have used for
    a run that has ended (any id up to the known user's last entry into that journey: ids grow with time),
    gets the next free id above them, with its pending sends. The sends of an ended run of the known user
    carry its id and are in the outbox, so a held send of the anonymous id with that id would be taken for
    one of them and never go out."""
    used: dict[tuple[str, str], set[int]] = {}
    for inst in into.instances.values():
        used.setdefault((inst.journey, inst.key), set()).add(inst.run)
    for d in into.deferred or ():
        used.setdefault((d.journey, d.key), set()).add(d.run)
    both: list[Instance | Deferred] = [*instances, *deferred]
    runs = {(x.journey, x.key, x.run) for x in both}
    for journey, key, run in sorted(runs):
        mine = used.setdefault((journey, key), set())
        last = into.last_entry((journey, key))
        floor = -1 if last is None else entry_run(last)
        if run not in mine and run > floor:
            mine.add(run)
            continue
        fresh = max(mine | {floor} | {r for j, k, r in runs if (j, k) == (journey, key)}) + 1
        mine.add(fresh)
        for x in both:
            if (x.journey, x.key, x.run) == (journey, key, run):
                x.run = fresh


def _blank(profile: Profile) -> bool:
    """A user the engine has not seen yet: nothing about them is stored."""
    return (not profile.traits and not profile.metric_values and not profile.segments and profile.entries is None
            and profile.for_since is None and not profile.instances and profile.windows is None)
