"""Send decisions: which of a state's messages go (eligibility, `choose`), each one sent, deferred or
suppressed by the policies, deferred sends decided again when due or cancelled when their state is
left, and rendering at delivery."""

from __future__ import annotations

from datetime import datetime, timedelta

from .. import clock
from ..compiler import CompiledJourney
from ..facts import MessageDeferred, MessageSent, MessageSuppressed
from ..model import Choose, Message
from ..policies import ADDRESS, Decision, applicable_caps, decide, in_control_group
from ..policies import best_hour as learned_hour
from ..profile import Deferred, Instance, Profile
from ..selection import bandit_state, choose_best, choose_first, choose_random, cohort_of
from .base import attribute, text
from .feedback import WORKSPACE_HOURS, Feedback
from .plan import Run, StatePlan
from .values import RenderedMessage, SendMessage

MIN_WORKSPACE_ENGAGEMENTS = 20  # fewer than this and the workspace's hour is noise: use the default


class Messages(Feedback):
    """What a state sends, and what becomes of each send."""

    def _send_state(self, run: Run, cj: CompiledJourney, inst: Instance, plan: StatePlan) -> None:
        if not plan.candidates:
            return
        eligible = [m for m in plan.candidates if self._eligible(run, cj, inst, inst.state, m)]
        if plan.choose is None:
            for message_id in eligible:
                self._deliver(run, cj, inst, message_id, inst.state)
            return
        if not eligible:
            return
        if plan.choose == "first":
            chosen = choose_first([(m, self.messages[m].priority) for m in eligible])
        elif plan.choose == "random":
            chosen = choose_random(eligible, self._rng(run, inst, "choose"))
        else:
            learns = self._cohort_state(run, plan, inst.state)  # the state, or its cohort's key (`by:`)
            chosen = choose_best(eligible, self.bandits.setdefault((cj.name, learns), {}),
                                 self._rng(run, inst, "choose"))
            if self._deliver(run, cj, inst, chosen, inst.state):  # a suppressed send teaches nothing
                self._learn(run, cj.name, learns, chosen, 1, 0)
                attribute(inst, chosen, run.now, learns)
            return
        self._deliver(run, cj, inst, chosen, inst.state)

    @staticmethod
    def _cohort_state(run: Run, plan: StatePlan, state: str) -> str:
        """Where a `choose: best` learns: per cohort with `by:` (SPEC §3 item 15), else per state."""
        send = plan.spec.send
        by = send.by if isinstance(send, Choose) else None
        return bandit_state(state, cohort_of(by, run.profile.segments)) if by else state

    def _eligible(self, run: Run, cj: CompiledJourney, inst: Instance | Deferred, state: str,
                  message_id: str) -> bool:
        rule = self.cw.message_rules.get(message_id)
        if rule is None or rule(run.scope, run.now):
            return True
        msg = self.messages[message_id]
        run.out.facts.append(MessageSuppressed(at=run.now, user=run.profile.user_id, journey=cj.name,
                                               key=inst.key or None, state=state, message=message_id,
                                               channel=msg.channel, reason="ineligible"))
        return False

    def _deliver(self, run: Run, cj: CompiledJourney, inst: Instance | Deferred, message_id: str, state: str, *,
                 deferred: bool = False, due: datetime | None = None) -> bool:
        """Send, defer or suppress one message of a run (or a deferred send of one); False when suppressed."""
        msg = self.messages[message_id]
        profile = run.profile
        key = inst.key or None
        if isinstance(inst, Instance) and inst.holdout and not msg.transactional:  # a Deferred was never held out
            run.out.facts.append(MessageSuppressed(at=run.now, user=profile.user_id, journey=cj.name, key=key,
                                                   state=state, message=message_id, channel=msg.channel,
                                                   reason="holdout"))
            return False
        if isinstance(inst, Instance) and self._control and not msg.transactional \
                and in_control_group(profile.user_id, self._control):  # SPEC §3 item 15
            run.out.facts.append(MessageSuppressed(at=run.now, user=profile.user_id, journey=cj.name, key=key,
                                                   state=state, message=message_id, channel=msg.channel,
                                                   reason="control_group"))
            return False
        due = run.due if due is None else due
        expiry = self.expiries[message_id]
        if expiry is not None and run.current - due > expiry:
            run.out.facts.append(MessageSuppressed(
                at=run.now, user=profile.user_id, journey=cj.name, key=key, state=state, message=message_id,
                channel=msg.channel, reason="expired", due=due,
                why=f"due at {clock.iso(due)}, more than {span(expiry)} before {clock.iso(run.current)}"))
            return False
        decision = self._decide(run, msg, deferred)
        if decision.action == "suppress":
            assert decision.reason is not None  # every suppression and deferral says why
            run.out.facts.append(MessageSuppressed(at=run.now, user=profile.user_id, journey=cj.name, key=key,
                                                   state=state, message=message_id, channel=msg.channel,
                                                   reason=decision.reason, why=decision.explanation))
            return False
        if decision.action == "defer":
            assert decision.until is not None and decision.reason is not None
            held = Deferred(due=decision.until, journey=cj.name, key=inst.key, state=state, message=message_id,
                            visit=inst.visit, run=inst.run, data=inst.data)
            if profile.deferred is None:
                profile.deferred = [held]
            else:
                profile.deferred.append(held)
            if run.made is None:
                run.made = [held]
            else:
                run.made.append(held)
            run.out.facts.append(MessageDeferred(at=run.now, user=profile.user_id, journey=cj.name, key=key,
                                                 state=state, message=message_id, channel=msg.channel,
                                                 until=decision.until, reason=decision.reason,
                                                 why=decision.explanation))
        else:
            self._emit(run, cj, inst, msg, message_id, state, decision.explanation)
        return True

    def decision(self, profile: Profile, message_id: str, now: datetime) -> Decision:
        """What delivery policy would decide for this message to this user now (`journey preview`):
        bounces, subscription, caps (with their `if:`), quiet hours, send window and time; not the
        message's eligibility, a holdout or the control group, which the caller checks."""
        return self._decide(Run(profile, now), self.messages[message_id], False)

    def _decide(self, run: Run, msg: Message, deferred: bool) -> Decision:
        profile = run.profile
        subscribed = True
        if msg.subscription is not None and not msg.transactional:
            default = self._subscribed_by_default.get(msg.subscription, True)  # undeclared: subscribed
            subscribed = profile.choices.get(msg.subscription, default) if profile.choices else default
        bounced = None
        if profile.bounced and msg.channel in ADDRESS:
            address = profile.traits.get(ADDRESS[msg.channel])
            bounced = address if address in profile.bounced else None
        timezone = text(profile.traits.get("timezone"))
        hour, source = self._best_hour(profile, timezone, run.now) if msg.send_at == "optimal" else (None, None)
        policies = self._transactional if msg.transactional else self.policies
        caps = None
        if self.cw.cap_rules and not msg.transactional:  # tiers: a cap with `if:` applies to some users only
            caps = applicable_caps(policies.frequency_caps, lambda i: self.cw.cap_rules[i](run.scope, run.now))
        return decide(now=run.now, message=msg, policies=policies, timezone=timezone,
                      ledger=profile.ledger or (), subscribed=subscribed, best_hour=hour, hour_source=source,
                      deferred=deferred, bounced=bounced, caps=caps)

    def _best_hour(self, profile: Profile, timezone: str | None, now: datetime) -> tuple[int | None, str | None]:
        """The user's own best hour, else the workspace's, else None (the configured default)."""
        if profile.engagements:
            hour = learned_hour(profile.engagements, timezone or self.policies.timezone, now)
            n = len(profile.engagements)
            return hour, f"the user's best hour (from {n} engagement{'s' if n > 1 else ''})"
        hours = self.bandits.get(WORKSPACE_HOURS)
        total = sum(c for _, c in hours.values()) if hours else 0
        if hours and total >= MIN_WORKSPACE_ENGAGEMENTS:
            best = max(hours.items(), key=lambda item: (item[1][1], item[0]))[0]
            return int(best), f"the workspace's best hour (from {total} engagements)"
        return None, None

    def _emit(self, run: Run, cj: CompiledJourney, inst: Instance | Deferred, msg: Message, message_id: str,
              state: str, why: str = "") -> None:
        """Record the send; rendering happens at delivery, with the context captured here."""
        profile = run.profile
        locale = self._locale(profile, msg)
        if not msg.transactional:  # transactional sends do not count toward caps (SPEC §3 item 11)
            profile.ledger = (*(profile.ledger or ()), (clock.epoch(run.now), msg.channel))
            self._prune_ledger(profile, run.now)
        run.out.facts.append(MessageSent(at=run.now, user=profile.user_id, journey=cj.name, key=inst.key or None,
                                         state=state, message=message_id, channel=msg.channel, locale=locale, why=why))
        run.out.sends.append(SendMessage(
            idempotency_key=f"{profile.user_id}:{cj.name}:{inst.key}:{inst.run}:{inst.visit}:{message_id}",
            at=run.now,
            user=profile.user_id, journey=cj.name, key=inst.key or None, state=state, message=message_id,
            channel=msg.channel, locale=locale,
            context={"traits": dict(profile.traits), "metrics": profile.metrics, "user_id": profile.user_id,
                     "segments": list(profile.segments),
                     "journey": {"name": cj.name, "key": inst.key or None, "data": inst.data},
                     "message": {"id": message_id, "channel": msg.channel}}))

    @staticmethod
    def _locale(profile: Profile, msg: Message) -> str | None:
        """The translation to use: traits.locale `ko-KR` takes `ko-KR`, then `ko`; else the default."""
        locale = text(profile.traits.get("locale"))
        if locale and msg.translations:
            for candidate in (locale, locale.replace("_", "-").split("-")[0]):
                if candidate in msg.translations:
                    return candidate
        return None

    def render(self, send: SendMessage) -> RenderedMessage:
        """The message's subject, title and body for this send, in its locale (raises TemplateError)."""
        msg = self.messages[send.message]
        content = {"subject": msg.subject, "title": msg.title, "body": self._body(msg.body, msg.template),
                   "url": msg.url}  # a url is a template too (SPEC §3 item 9)
        tr = msg.translations.get(send.locale) if send.locale else None
        if tr is not None:
            content.update({k: v for k, v in (("subject", tr.subject), ("title", tr.title),
                                              ("body", self._body(tr.body, tr.template))) if v})
        render = self.cw.renderer.render
        done = {k: render(v, send.context, now=send.at, html=(k == "body" and msg.channel == "email"))
                for k, v in content.items() if v}
        return RenderedMessage(subject=done.get("subject"), title=done.get("title"), body=done.get("body", ""),
                               url=done.get("url"))

    def _body(self, body: str | None, template: str | None) -> str | None:
        return self.cw.workspace.templates.get(template, "") if template else body

    def _prune_ledger(self, profile: Profile, now: datetime) -> None:
        horizon = (now - self._ledger_span).timestamp()
        if profile.ledger and profile.ledger[0][0] <= horizon:
            profile.ledger = tuple(e for e in profile.ledger if e[0] > horizon) or None

    def _deferred(self, run: Run) -> None:
        """Deferred sends that fall due are decided again: caps and subscriptions may have changed."""
        profile = run.profile
        assert profile.deferred is not None
        # those due together are tried by priority, then in the order they were held (SPEC §3 item 11)
        due = sorted((d for d in profile.deferred if d.due <= run.now), key=self._deferred_order)
        if not due:
            return
        profile.deferred = [d for d in profile.deferred if d.due > run.now] or None
        for d in due:  # what leaving cancels was dropped then: what is left goes, its run ended or not
            cj = self._journey_of(d)
            if cj is None or d.message not in self.messages:  # no longer in the workspace
                run.out.facts.append(MessageSuppressed(at=run.now, user=profile.user_id, journey=d.journey,
                                                       key=d.key or None, state=d.state, message=d.message,
                                                       channel=None, reason="version"))
                continue
            self._deferred_scope(run, d)
            if self._eligible(run, cj, d, d.state, d.message):  # eligibility may have changed since
                self._deliver(run, cj, d, d.message, d.state, deferred=True, due=d.due)
        run.scope.pop("journey", None)

    def _journey_of(self, d: Deferred) -> CompiledJourney | None:
        """The journey a held send belongs to: the version in force, else a stored one (a journey removed
        from the files still finishes what it started)."""
        cj = self.cw.journeys.get(d.journey)
        if cj is None:
            cj = next((v for (name, _), v in self.cw.versions.items() if name == d.journey), None)
        return cj

    def _deferred_scope(self, run: Run, d: Deferred) -> None:
        """`journey.*` for a deferred send's rules: its run's, or what the send kept of a run that ended."""
        inst = run.profile.instances.get((d.journey, d.key))
        if inst is not None and inst.run == d.run:
            self._journey_scope(run, inst)
        else:
            run.scope["journey"] = {"entered_at": None, "state_entered_at": None, "key": d.key or None,
                                    "data": d.data}

    def _deferred_order(self, d: Deferred) -> tuple[datetime, int]:
        msg = self.messages.get(d.message)
        return d.due, -msg.priority if msg is not None else 0

    def _cancel(self, run: Run, inst: Instance, reason: str, visit: int | None) -> None:
        """Drop the deferred sends of this run: all of them when it leaves the journey (`visit` None); of one
        state visit when it leaves that state, only those made before this call (SPEC §3 item 10)."""
        profile = run.profile
        kept = []
        for d in profile.deferred or ():
            if (d.journey == inst.journey and d.key == inst.key and d.run == inst.run
                    and (visit is None or (d.visit == visit and not (run.made and d in run.made)))):
                msg = self.messages.get(d.message)
                run.out.facts.append(MessageSuppressed(at=run.now, user=profile.user_id, journey=d.journey,
                                                       key=d.key or None, state=d.state, message=d.message,
                                                       channel=msg.channel if msg else None, reason=reason))
            else:
                kept.append(d)
        profile.deferred = kept or None


def span(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
