"""Next best message and splits (SPEC §3.7): first by priority, uniform or weighted random, and a
Thompson-sampling bandit over (sends, conversions) per arm. Randomness comes only from the
`random.Random` passed in, so a seeded simulation picks the same arms every run.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
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
