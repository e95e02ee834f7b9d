"""Next best message and splits (SPEC §3.7): first by priority, uniform or weighted random, and a
Thompson-sampling bandit over (sends, conversions) per arm, learnt apart per cohort when a `choose`
has `by:` (SPEC §3 item 15). Randomness comes only from the `random.Random` passed in, so a seeded
simulation picks the same arms every run.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple, TypedDict

from journey_engine.stats import beta_posterior, credible_interval

_CREDIBLE = 0.95


class ArmStats(NamedTuple):
    """What a bandit knows about one arm; a plain (sends, conversions) pair to store."""

    sends: int
    conversions: int


class Estimate(TypedDict):
    sends: int
    conversions: int
    mean: float
    low: float
    high: float


Stats = Mapping[str, tuple[int, int]]

# The cohort of the users in none of a `by:` list's segments. Not a valid segment name (no spaces).
EVERYONE_ELSE = "everyone else"
# A per-cohort bandit is stored under the state `<state>@<cohort>`, so the store, the goal's
# attribution and the reports keep their (journey, state, arm) shape.
_COHORT_MARK = "@"


def cohort_of(by: Sequence[str], segments: Collection[str]) -> str:
    """The first segment of `by` the user is in, else EVERYONE_ELSE."""
    return next((name for name in by if name in segments), EVERYONE_ELSE)


def bandit_state(state: str, cohort: str | None) -> str:
    """The state key a bandit learns under: the state itself, or its cohort's own key."""
    return state if cohort is None else f"{state}{_COHORT_MARK}{cohort}"


def split_bandit_state(key: str) -> tuple[str, str | None]:
    """(state, cohort) of a bandit's state key; cohort None for a bandit without `by:`."""
    state, mark, cohort = key.rpartition(_COHORT_MARK)
    return (state, cohort) if mark and state else (key, None)


def choose_first(candidates: Sequence[tuple[str, int]]) -> str:
    """The candidate with the highest priority; the earliest one given among equals."""
    _require(candidates)
    best = candidates[0]
    for candidate in candidates[1:]:
        if candidate[1] > best[1]:
            best = candidate
    return best[0]


def choose_random(candidates: Sequence[str], rng: random.Random) -> str:
    """A candidate picked uniformly."""
    _require(candidates)
    return candidates[rng.randrange(len(candidates))]


def choose_best(candidates: Sequence[str], stats: Stats, rng: random.Random) -> str:
    """Thompson sampling: draw each arm's conversion rate from Beta(1 + conversions, 1 + failures).

    Arms are sampled in the order given, so the same rng state gives the same pick. An arm absent
    from `stats` has never been sent and is drawn from the uniform prior.
    """
    _require(candidates)
    draws = [rng.betavariate(*_posterior(stats.get(arm, (0, 0)))) for arm in candidates]
    return candidates[max(range(len(candidates)), key=draws.__getitem__)]


def split_random(paths: Sequence[tuple[str, float]], rng: random.Random) -> str:
    """A path target picked with probability proportional to its weight."""
    _require(paths)
    return rng.choices([to for to, _ in paths], weights=[weight for _, weight in paths])[0]


def split_bandit(paths: Sequence[tuple[str, float]], stats: Stats, rng: random.Random) -> str:
    """A path target picked by Thompson sampling over its goal conversions; weights are not used."""
    return choose_best([to for to, _ in paths], stats, rng)


def estimates(stats: Stats) -> dict[str, Estimate]:
    """Per arm: posterior mean conversion rate and a 95% equal-tailed credible interval."""
    return {arm: _estimate(sends, conversions) for arm, (sends, conversions) in stats.items()}


def _require(candidates: Sequence[object]) -> None:
    if not candidates:
        raise ValueError("nothing to choose from: the candidate list is empty")


def _posterior(arm: tuple[int, int]) -> tuple[float, float]:
    return beta_posterior(*arm)


def _estimate(sends: int, conversions: int) -> Estimate:
    a, b = beta_posterior(sends, conversions)
    low, high = credible_interval(a, b, _CREDIBLE)
    return Estimate(sends=sends, conversions=conversions, mean=a / (a + b), low=low, high=high)
