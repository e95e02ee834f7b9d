"""Next best message and splits (SPEC §3.7): first by priority, uniform or weighted random, and a
Thompson-sampling bandit over (sends, conversions) per arm. Randomness comes only from the
`random.Random` passed in, so a seeded simulation picks the same arms every run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import NamedTuple, TypedDict

_CREDIBLE = 0.95
_BISECTIONS = 60  # halves [0, 1] down to ~1e-18: far below what a report prints


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
    sends, conversions = arm
    # Clamped: late attribution can record a conversion the send count has not caught up with.
    wins = min(max(conversions, 0), max(sends, 0))
    return 1.0 + wins, 1.0 + max(sends, 0) - wins


def _estimate(sends: int, conversions: int) -> Estimate:
    a, b = _posterior((sends, conversions))
    tail = (1 - _CREDIBLE) / 2
    return Estimate(
        sends=sends,
        conversions=conversions,
        mean=a / (a + b),
        low=_beta_quantile(tail, a, b),
        high=_beta_quantile(1 - tail, a, b),
    )


def _beta_quantile(p: float, a: float, b: float) -> float:
    # The CDF is monotone on [0, 1], so bisection is exact enough and needs no special cases.
    low, high = 0.0, 1.0
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        low, high = (middle, high) if _beta_cdf(middle, a, b) < p else (low, middle)
    return (low + high) / 2


def _beta_cdf(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (Numerical Recipes, §6.4)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # The continued fraction converges fast only on one side of the mean: use the symmetry on the other.
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(x, a, b) / a
    return 1.0 - front * _beta_fraction(1 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    """Lentz's evaluation of the continued fraction for I_x(a, b)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        for numerator in (even, odd):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return result
