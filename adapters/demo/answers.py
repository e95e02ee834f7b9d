"""How the demo's users answer the engine's messages: the response model.

Answers to messages. For each send the engine makes, the user engages with a probability from
published benchmarks, times a factor for their group at the time of the send and one for the
message (`MESSAGES`): email 98% delivered (else `Email Bounced`), 22% of those opened (Mailchimp's
all-industry average), 12% of opens clicked; push opened 5% (Airship's direct open rates); in-app
messages are seen at the next session if it comes within 7 days, and clicked 15%; SMS clicked 10%.
Groups: new (signed up this week, no order) x1.3, browser (no order) x0.8, buyer x1, repeat buyer
x1.3, lapsed (no order for 30 days) x0.6; by age (`AGE_CHANNEL`), push x1.5 and email x0.4 for users
under 30, push x0.3 and email x2 for the others. An engaged user converts with the message's rate, times
the group's: an order (on the message's cart for a journey keyed by cartId) or, for a journey whose
goal is a rule (`reactivation`), the finished set-up. Feedback follows Segment's spec: `Email
Delivered` seconds after the send, `Email Opened` a lognormal delay later (median 2 hours, skipping
the user's night), `Email Link Clicked`, `Push Opened`, `Message Clicked` (in-app, SMS), each with
properties message_id, journey, send_key (the send's idempotency key) and channel; 1% of opens
`Unsubscribed`. A click opens a short session; a conversion adds checkout and order (or the set-up
step) and restarts the user's activity decay. An order a message brings is extra: a customer's own
next purchase (CDNOW's clock) stays where it was, and only starts if none was coming. Answers are
never earlier than the last event handed to the engine (so they may come up to BATCH_WINDOW late).
The stylised part: in each `choose: best` state one candidate is clearly better for most users
(`tips_push`, `vip_perks_in_app`, `winback_in_app`, `resume_sms`) and it is not the first listed, and
the VIP messages work well; `DemoResult` compares the bandit's picks with always sending the first
eligible candidate under this same model, and holdout users, who are sent nothing and so never
answer, give the baseline of the lift. The tips are the per-cohort case: tips_push is better for
users under 30, tips_email for the others, so one answer for everyone is wrong for one of them.
For a choice learnt per cohort (`by:`), each decision is also put to a single bandit for everyone
(`_Shadow`: Thompson sampling on its own counts, learning from a click drawn from this model at once,
as the engine learns from clicks, so it has it easier than the engine), and the best fixed
per-cohort assignment (the preference order of candidates, per cohort, with the most expected
conversions over that cohort's decisions) is found after the run: the three side by side.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from adapters.demo.population import DAY, HOUR, MINUTE, Population
from adapters.demo.results import Answered, ChoiceResult, CohortResult, HoldoutResult
from journey_engine.compiler import CompiledWorkspace
from journey_engine.engine import Outcome, SendMessage
from journey_engine.facts import (
    Fact,
    GoalReached,
    JourneyEntered,
    MessageDeferred,
    MessageFact,
    MessageSent,
    MessageSuppressed,
)
from journey_engine.model import Choose
from journey_engine.selection import EVERYONE_ELSE, choose_best

if TYPE_CHECKING:
    from adapters.demo.population import _User

EMAIL_DELIVERED = 0.98
EMAIL_OPEN = 0.22
EMAIL_CLICK = 0.12  # of opens
PUSH_OPEN = 0.05
IN_APP_CLICK = 0.15
IN_APP_SEEN_WITHIN = 7 * DAY
SMS_CLICK = 0.10
UNSUBSCRIBE = 0.01  # of opens
CAP = 0.9  # no probability of the model goes above this
# group at send time: (engagement factor, conversion factor)
GROUPS: dict[str, tuple[float, float]] = {
    "new": (1.3, 1.0), "browser": (0.8, 0.8), "buyer": (1.0, 1.0), "repeat": (1.3, 1.4), "lapsed": (0.6, 0.9),
}
# message: (appeal: engagement factor, conversion rate of the engaged)
MESSAGES: dict[str, tuple[float, float]] = {
    "welcome_email": (1.5, 0.04), "tips_email": (1.2, 0.30), "tips_push": (2.0, 0.30),
    "first_order_push": (1.5, 0.25), "first_order_email": (1.2, 0.25), "activated_in_app": (1.0, 0.05),
    "cart_reminder_push": (1.8, 0.25), "cart_reminder_email": (1.3, 0.25), "cart_discount_email": (1.4, 0.35),
    "winback_email_a": (1.0, 0.15), "winback_email_b": (1.3, 0.18), "winback_push": (1.0, 0.10),
    "winback_in_app": (1.5, 0.35), "winback_last_chance_email": (1.1, 0.20),
    "vip_welcome_email": (2.0, 0.50), "vip_welcome_in_app": (2.0, 0.50), "vip_perks_email": (1.0, 0.10),
    "vip_perks_push": (1.0, 0.20), "vip_perks_in_app": (2.0, 0.50), "points_push": (1.3, 0.30),
    "points_email": (1.2, 0.30), "gold_email": (1.5, 0.05),
    "resume_in_app": (1.5, 0.40), "resume_email": (1.2, 0.35), "resume_push": (1.0, 0.25), "resume_sms": (1.0, 0.60),
}
DEFAULT_MESSAGE = (1.0, 0.10)
YOUNG = 30  # users under this age are the young ones of the response model (and of `young_adults`)
# (under YOUNG, channel): engagement factor
AGE_CHANNEL: dict[tuple[bool, str], float] = {(True, "push"): 1.5, (True, "email"): 0.4,
                                              (False, "push"): 0.3, (False, "email"): 2.0}
# what the demo's people are, for a segment a `by:` names: the others count as not in it
SEGMENT_TRUTH = {"young_adults": lambda user: user.age < YOUNG}
CLICK_EVENTS = {"email": "Email Link Clicked", "push": "Push Opened", "in_app": "Message Clicked",
                "sms": "Message Clicked"}


@dataclass(slots=True)
class _Decision:
    """A `choose: best` pick, waiting for the send and the answer."""

    eligible: tuple[str, ...]
    picked: str = ""
    expected: float = 0.0
    fixed: float = 0.0
    best: float = 0.0
    converted: bool = False
    cohort: str = ""  # with `by:`: the cohort of the user at the decision
    chances: dict[str, float] = field(default_factory=dict)  # expected conversions of each eligible candidate
    single: float = 0.0  # expected conversions of the single bandit's pick (`_Shadow`)


@dataclass(slots=True)
class _Tally:
    choices: dict[tuple[str, str], list[_Decision]] = field(default_factory=dict)
    entrants: dict[str, dict[str, tuple[float, bool]]] = field(default_factory=dict)  # holdout journeys
    journeys: dict[str, dict[str, int]] = field(default_factory=dict)
    groups: dict[str, list[int]] = field(default_factory=dict)


class Responses:
    """The users' answers to what the engine sends: `observe` reads its outcomes (the trace says what it
    decided, the sends what went out) and schedules feedback, clicks and conversions into the population's
    stream; the tallies become the result's choices, groups, journeys and holdouts."""

    def __init__(self, people: Population, compiled: CompiledWorkspace) -> None:
        self.people = people
        self.tally = _Tally()
        self.workspace = _WorkspaceFacts(compiled)
        self._ineligible: dict[tuple[str, str, str | None, str], tuple[datetime | None, set[str]]] = {}
        self._decisions: dict[tuple[str, str, str | None, str, str], _Decision] = {}
        self._shadow = _Shadow(random.Random(people.seed + 3))

    def group(self, user: _User, at: float) -> str:
        """Where the user is when a message reaches them: the response model's groups."""
        if not user.orders:
            return "new" if user.signup is not None and at - user.signup < 7 * DAY else "browser"
        if at - user.orders[-1] > 30 * DAY:
            return "lapsed"
        return "repeat" if len(user.orders) >= 2 else "buyer"

    def chance(self, user: _User, message: str, channel: str, at: float) -> tuple[float, float]:
        """(P(engage), P(goal | engaged)) for this user sent this message at `at`."""
        appeal, convert = MESSAGES.get(message, DEFAULT_MESSAGE)
        engage, conversion = GROUPS[self.group(user, at)]
        engage *= AGE_CHANNEL.get((user.age < YOUNG, channel), 1.0)
        if channel == "email":
            p = EMAIL_DELIVERED * min(CAP, EMAIL_OPEN * engage * appeal) * EMAIL_CLICK
        elif channel == "push":
            p = min(CAP, PUSH_OPEN * engage * appeal)
        elif channel == "in_app":
            seen = user.next_session is not None and user.next_session - at <= IN_APP_SEEN_WITHIN
            p = min(CAP, IN_APP_CLICK * engage * appeal) if seen else 0.0
        elif channel == "sms":
            p = min(CAP, SMS_CLICK * engage * appeal)
        else:
            p = 0.0
        return p, min(CAP, convert * conversion)

    def observe(self, outcome: Outcome) -> None:
        """Learn from the engine's facts what it decided, and schedule the users' answers to its sends."""
        for fact in outcome.facts:
            self._fact(fact)
        for send in sorted(outcome.sends, key=lambda s: (s.at, s.idempotency_key)):
            self._answer(send)

    def _fact(self, f: Fact) -> None:
        facts = self.workspace
        assert facts is not None
        if isinstance(f, JourneyEntered):
            stats = self.tally.journeys.setdefault(f.journey, {"entered": 0, "goals": 0})
            stats["entered"] += 1
            if f.journey in facts.holdouts:
                entrants = self.tally.entrants.setdefault(f.journey, {})
                if f.user not in entrants:
                    entrants[f.user] = (f.at.timestamp(), f.holdout)
        elif isinstance(f, GoalReached):
            self.tally.journeys.setdefault(f.journey, {"entered": 0, "goals": 0})["goals"] += 1
        elif isinstance(f, MessageFact) and f.state is not None and (f.journey, f.state) in facts.choices:
            self._choice(f, f.state)

    def _choice(self, f: MessageFact, state_name: str) -> None:
        """Pair a `choose: best` pick with the candidates that were eligible when it was made."""
        assert self.workspace is not None
        state = (f.user, f.journey, f.key, state_name)
        if isinstance(f, MessageSuppressed) and f.reason == "ineligible":
            at, found = self._ineligible.get(state, (None, set()))
            if at != f.at:
                found = set()
            found.add(f.message)
            self._ineligible[state] = (f.at, found)
            return
        pick = (*state, f.message)
        if pick in self._decisions:  # a pick deferred earlier, sent or dropped now
            if isinstance(f, MessageSuppressed):
                del self._decisions[pick]
            return
        at, ineligible = self._ineligible.pop(state, (None, set()))
        candidates = self.workspace.choices[(f.journey, state_name)]
        eligible = tuple(m for m in candidates if at != f.at or m not in ineligible)
        if isinstance(f, (MessageSent, MessageDeferred)):
            self._decisions[pick] = _Decision(eligible=eligible)

    def _answer(self, send: SendMessage) -> None:
        facts = self.workspace
        assert facts is not None
        user = self.people.find(send.user)
        if user is None:
            return
        at = send.at.timestamp()
        decision = self._decisions.pop((send.user, send.journey, send.key, send.state, send.message), None)
        if decision is not None:
            self._decided(user, send, at, decision)
        group = self.tally.groups.setdefault(self.group(user, at), [0, 0, 0])
        group[0] += 1
        engage, convert = self.chance(user, send.message, send.channel, at)
        engaged_at = self._feedback(user, send, at, engage)
        if engaged_at is None:
            return
        group[1] += 1
        rng = self.people.answers
        converted = rng.random() < convert
        if converted:
            group[2] += 1
            if decision is not None:
                decision.converted = True
        self.people.sessions["message"] += 1
        first = "Application Opened" if send.channel in ("push", "in_app") else "Page Viewed"
        events = 0 if send.channel == "in_app" else max(1, round(3 * rng.lognormvariate(0, 0.6)))
        action = facts.actions.get(send.journey, "order")
        if not converted:
            self.people.session(user, engaged_at + 5, first=first, events=events)
        elif action == "setup":
            self.people.session(user, engaged_at + 5, first=first, events=events, setup=True)
        else:
            cart = str(send.key) if send.key is not None and facts.keys.get(send.journey) == "cartId" else None
            self.people.session(user, engaged_at + 5, first=first, events=events, buy="message", cart=cart)
        if user.since is not None:
            user.since = max(user.since, engaged_at)

    def _feedback(self, user: _User, send: SendMessage, at: float, engage: float) -> float | None:
        """Emit the message's feedback events; return when the user engaged, or None."""
        rng = self.people.answers
        props = {"message_id": send.message, "journey": send.journey, "send_key": send.idempotency_key,
                 "channel": send.channel}
        now = max(at, self.people.frontier)
        if send.channel == "email":
            delivered = now + rng.uniform(2, 30)
            if rng.random() >= EMAIL_DELIVERED:
                self.people.track(delivered, user, "Email Bounced", props)
                return None
            self.people.track(delivered, user, "Email Delivered", props)
            opened = engage / (EMAIL_DELIVERED * EMAIL_CLICK)
            if rng.random() >= opened:
                return None
            open_at = max(delivered + 1, self.people.awake(user, at + 2 * HOUR * rng.lognormvariate(0, 1.2)))
            self.people.track(open_at, user, "Email Opened", props)
            if rng.random() < UNSUBSCRIBE and self.workspace and self.workspace.subscriptions.get(send.message):
                self.people.track(open_at + 30, user, "Unsubscribed",
                            {**props, "subscription": self.workspace.subscriptions[send.message]})
                return None
            if rng.random() >= EMAIL_CLICK:
                return None
            click_at = open_at + 40 * rng.lognormvariate(0, 0.8)
        elif send.channel == "in_app":
            if rng.random() >= engage or user.next_session is None:
                return None
            click_at = max(now, user.next_session + 20 * rng.lognormvariate(0, 0.5))
        elif send.channel in ("push", "sms"):
            if rng.random() >= engage:
                return None
            click_at = max(now, self.people.awake(user, at + 4 * MINUTE * rng.lognormvariate(0, 1.2)))
        else:
            return None
        if click_at >= self.people.end:
            return None
        self.people.track(click_at, user, CLICK_EVENTS[send.channel], props)
        return click_at

    def _decided(self, user: _User, send: SendMessage, at: float, decision: _Decision) -> None:
        chances = {}
        for message in decision.eligible:
            channel = self.workspace.channels[message] if self.workspace else send.channel
            engage, convert = self.chance(user, message, channel, at)
            chances[message] = engage * convert
        decision.picked = send.message
        decision.expected = chances.get(send.message, 0.0)
        decision.fixed = chances[decision.eligible[0]] if decision.eligible else decision.expected
        decision.best = max(chances.values(), default=decision.expected)
        by = self.workspace.by.get((send.journey, send.state)) if self.workspace else None
        if by and decision.eligible:
            decision.chances = chances
            decision.cohort = next((s for s in by if SEGMENT_TRUTH.get(s, _nobody)(user)), EVERYONE_ELSE)
            picked = self._shadow.pick((send.journey, send.state), decision.eligible)
            decision.single = chances[picked]
            clicked = self._clicks(user, picked, at)
            self._shadow.learn((send.journey, send.state), picked, clicked)
        self.tally.choices.setdefault((send.journey, send.state), []).append(decision)

    def _clicks(self, user: _User, message: str, at: float) -> bool:
        """Whether the user would click `message` sent at `at`: drawn from the model, sending nothing."""
        channel = self.workspace.channels[message] if self.workspace else "email"
        return self._shadow.rng.random() < self.chance(user, message, channel, at)[0]

    # --- for the result -----------------------------------------------------------------------------

    def answered(self) -> Answered:
        return self.choices(), self.holdouts(), self.tally.groups, self.tally.journeys

    def choices(self) -> tuple[ChoiceResult, ...]:
        choices = []
        for (journey, state), candidates in self.workspace.choices.items():
            made = self.tally.choices.get((journey, state), [])
            n = len(made)
            choices.append(ChoiceResult(
                journey=journey, state=state, candidates=candidates, decisions=n,
                with_choice=sum(len(d.eligible) > 1 for d in made),
                picks=dict(sorted(Counter(d.picked for d in made).items())),
                conversions=sum(d.converted for d in made),
                adaptive_rate=_mean([d.expected for d in made]), fixed_rate=_mean([d.fixed for d in made]),
                best_rate=_mean([d.best for d in made]), cohorts=_cohorts(made)))
        return tuple(choices)

    def holdouts(self) -> tuple[HoldoutResult, ...]:
        return tuple(self._holdout(journey, within) for journey, within in self.workspace.holdouts.items())

    def _holdout(self, journey: str, within: float) -> HoldoutResult:
        counts = {False: [0, 0], True: [0, 0]}
        late = 0
        for user_id, (at, held) in self.tally.entrants.get(journey, {}).items():
            user = self.people.find(user_id)
            if user is None:
                continue
            if at + within > self.people.end:
                late += 1
                continue
            counts[held][0] += 1
            # the order that made them eligible is at `at`: count the ones after it
            counts[held][1] += any(at + 1 < t <= at + within for t in user.orders)
        return HoldoutResult(journey=journey, within_days=within / DAY, treated=counts[False][0],
                             treated_converted=counts[False][1], holdout=counts[True][0],
                             holdout_converted=counts[True][1], too_late=late)


class _WorkspaceFacts:
    """What the response model needs to know about a workspace's journeys and messages."""

    def __init__(self, compiled: CompiledWorkspace) -> None:
        messages = compiled.workspace.messages
        self.channels = {m: msg.channel for m, msg in messages.items()}
        self.subscriptions = {m: msg.subscription for m, msg in messages.items() if msg.subscription}
        self.choices: dict[tuple[str, str], tuple[str, ...]] = {}
        self.by: dict[tuple[str, str], tuple[str, ...]] = {}
        self.holdouts: dict[str, float] = {}
        self.actions: dict[str, str] = {}
        self.keys: dict[str, str | None] = {}
        for name, cj in compiled.journeys.items():
            journey = cj.journey
            self.keys[name] = journey.entry.key
            goal = journey.goal
            # a goal that is a rule (reactivation: the set-up finished) is reached by finishing the set-up
            self.actions[name] = "setup" if goal is not None and goal.on is None else "order"
            if journey.holdout > 0 and goal is not None:
                self.holdouts[name] = goal.within.total_seconds()
            for state_name, state in journey.states.items():
                if isinstance(state.send, Choose) and state.send.choose == "best":
                    self.choices[(name, state_name)] = tuple(state.send.from_)
                    if state.send.by:
                        self.by[(name, state_name)] = tuple(state.send.by)


class _Shadow:
    """A single `choose: best` bandit for everyone, beside the engine's per-cohort ones: it picks for the
    same decisions and learns from clicks drawn from the response model; nothing it picks is sent."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.stats: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}

    def pick(self, choice: tuple[str, str], eligible: tuple[str, ...]) -> str:
        return choose_best(eligible, self.stats.setdefault(choice, {}), self.rng)

    def learn(self, choice: tuple[str, str], arm: str, clicked: bool) -> None:
        sends, clicks = self.stats[choice].get(arm, (0, 0))
        self.stats[choice][arm] = (sends + 1, clicks + clicked)


def _nobody(user: _User) -> bool:
    return False


def _cohorts(made: list[_Decision]) -> dict[str, CohortResult]:
    """Per cohort: its decisions, and expected conversions per decision of the engine's per-cohort bandit,
    of the single bandit, and of the best fixed assignment for the cohort."""
    found: dict[str, list[_Decision]] = {}
    for d in made:
        if d.cohort:
            found.setdefault(d.cohort, []).append(d)
    return {cohort: CohortResult(decisions=len(ds), per_cohort_rate=_mean([d.expected for d in ds]),
                                 single_rate=_mean([d.single for d in ds]), **_best_fixed(ds))
            for cohort, ds in sorted(found.items())}


def _best_fixed(made: list[_Decision]) -> dict[str, Any]:
    """The preference order of the candidates that, always followed (the first eligible one in it), has
    the most expected conversions over these decisions."""
    candidates = sorted({m for d in made for m in d.eligible})
    best: tuple[float, tuple[str, ...]] = (-1.0, ())
    for order in itertools.permutations(candidates):
        total = sum(d.chances[next(m for m in order if m in d.chances)] for d in made)
        best = max(best, (total, order))
    return {"fixed_order": best[1], "fixed_rate": round(best[0] / len(made), 6) if made else 0.0}

def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 6) if values else 0.0
