"""What a demo run did (`DemoResult`) and its parts: plain data, no behaviour of the population."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from journey_engine.stats import newcombe_interval


@dataclass(frozen=True, slots=True, kw_only=True)
class CohortResult:
    """One cohort of a choice learnt per cohort (`by:`): expected conversions per decision of the engine's
    bandit for this cohort, of a single bandit for everyone at the same decisions, and of the best fixed
    assignment for this cohort (the candidates' preference order `fixed_order`)."""

    decisions: int
    per_cohort_rate: float
    single_rate: float
    fixed_rate: float
    fixed_order: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChoiceResult:
    """One `choose: best` state: the bandit's picks against always sending the first-listed candidate.

    Rates are conversions per decision expected under the response model (the probability that this
    user, sent this message, answers it with the goal), so the comparison is free of sampling noise.
    """

    journey: str
    state: str
    candidates: tuple[str, ...]
    decisions: int  # sends decided by the bandit
    with_choice: int  # of them, with two or more eligible candidates
    picks: dict[str, int]
    conversions: int  # realised: answers to the bandit's picks that reached the goal
    adaptive_rate: float
    fixed_rate: float  # the first-listed eligible candidate, every time
    best_rate: float  # the best candidate for each user, every time (the ceiling)
    cohorts: dict[str, CohortResult] = field(default_factory=dict)  # with `by:`: per cohort

    @property
    def per_cohort_rate(self) -> float:
        """With `by:`: the engine's per-cohort bandits, per decision (the decisions with a cohort)."""
        return _weighted(self.cohorts, "per_cohort_rate")

    @property
    def single_rate(self) -> float:
        """With `by:`: a single bandit for everyone at the same decisions."""
        return _weighted(self.cohorts, "single_rate")

    @property
    def cohort_fixed_rate(self) -> float:
        """With `by:`: the best fixed assignment of each cohort."""
        return _weighted(self.cohorts, "fixed_rate")

    @property
    def lift(self) -> float | None:
        return self.adaptive_rate / self.fixed_rate - 1 if self.fixed_rate else None


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldoutResult:
    """A journey with a holdout: entrants who ordered again within the goal window, treated against held out.

    Like with like: both groups are the journey's first entries whose whole goal window lies inside the
    run (entered at least `within_days` before its end, the warm-up year included), and a conversion is
    an order after the one they entered with, within the window. The engine picks the held-out users by
    a hash of their id, so the two groups differ only in the messages.
    """

    journey: str
    within_days: float
    treated: int
    treated_converted: int
    holdout: int
    holdout_converted: int
    too_late: int  # entrants left out: their goal window was still open at the end

    @property
    def treated_rate(self) -> float | None:
        return self.treated_converted / self.treated if self.treated else None

    @property
    def holdout_rate(self) -> float | None:
        return self.holdout_converted / self.holdout if self.holdout else None

    @property
    def lift(self) -> float | None:
        t, h = self.treated_rate, self.holdout_rate
        return t / h - 1 if t is not None and h else None

    @property
    def difference(self) -> float | None:
        t, h = self.treated_rate, self.holdout_rate
        return t - h if t is not None and h is not None else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """95% interval of the difference of rates (Newcombe's hybrid score, as `journey report`)."""
        if not self.treated or not self.holdout:
            return None
        return newcombe_interval(self.treated_converted, self.treated, self.holdout_converted, self.holdout)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficResult:
    """The population's behaviour in the period, measured on the events handed to the engine (answers to
    messages included): sessions cut after 30 minutes without an event, not counting sign-up records and
    email delivery and opens (they happen off the site).

    Repeat gaps: days between a customer's consecutive purchase days (as CDNOW counts them), over the
    orders of the run, the replayed warm-up year included (a 30-day period alone could not show a gap
    of more than 30 days). Like CDNOW's, whose customers all first bought in its first quarter and were
    followed for 18 months, `repeat_gap_median` is over the cohort that first bought in the first 90
    days of the warm-up, followed to the end; `repeat_gap_median_all` over every customer is lower,
    because the later a customer starts, the fewer of their long gaps end inside the run.
    """

    sessions: int
    median_events: float
    add_to_cart: float  # share of sessions with a Product Added
    carts: int
    abandoned: float  # share of the period's carts never ordered
    converted: float  # share of sessions with an Order Completed
    repeat_gaps: int  # of the cohort
    repeat_gap_median: float
    repeat_gap_median_all: float


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupResult:
    """Sends to one group of users (by where they were when the message went out) and their answers."""

    sends: int = 0
    engaged: int = 0  # opened a push, clicked an email, an in-app message or an SMS
    conversions: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoResult:
    """What a demo run did. Counts cover the whole run, the existing customers' replayed orders included."""

    users: int
    days: int
    seed: int
    start: datetime
    end: datetime
    warmup_days: int
    events: int
    events_by_name: dict[str, int]
    sessions: dict[str, int]  # organic, purchase (a CDNOW repeat), message (opened from a message)
    sends: int
    sends_by_message: dict[str, int]
    sends_by_channel: dict[str, int]
    feedback: dict[str, int]  # Email Delivered, Email Opened, ... as sent to the engine
    orders: dict[str, int]  # history (replayed), organic, repeat, message
    revenue: float
    population: dict[str, dict[str, int]]  # signups / existing: users, buyers, orders (in the period)
    groups: dict[str, GroupResult]
    journeys: dict[str, dict[str, int]]  # entered, goals
    choices: tuple[ChoiceResult, ...]
    holdouts: tuple[HoldoutResult, ...]
    traffic: TrafficResult
    elapsed_seconds: float

    @property
    def adaptive_rate(self) -> float:
        """Expected conversions per decision of every `choose: best` state, the bandit's picks."""
        decisions = sum(c.decisions for c in self.choices)
        return sum(c.adaptive_rate * c.decisions for c in self.choices) / decisions if decisions else 0.0

    @property
    def fixed_rate(self) -> float:
        decisions = sum(c.decisions for c in self.choices)
        return sum(c.fixed_rate * c.decisions for c in self.choices) / decisions if decisions else 0.0

    @property
    def adaptive_beat_fixed(self) -> bool:
        return self.adaptive_rate > self.fixed_rate

    def numbers(self) -> dict[str, Any]:
        """Everything but the time it took: equal for two runs with the same seed."""
        data = asdict(self)
        data.pop("elapsed_seconds")
        return data


# what the users' answers to the engine's sends came to (`answers.Responses.answered`): the choices,
# the holdouts, per group [sends, engaged, conversions], per journey {entered, goals}
Answered = tuple[tuple[ChoiceResult, ...], tuple[HoldoutResult, ...], dict[str, list[int]], dict[str, dict[str, int]]]


def _weighted(cohorts: dict[str, CohortResult], rate: str) -> float:
    decisions = sum(c.decisions for c in cohorts.values())
    return sum(getattr(c, rate) * c.decisions for c in cohorts.values()) / decisions if decisions else 0.0
