"""Shared estimates: Wilson and Newcombe intervals of proportions and their difference, and the Beta
posterior of a conversion rate with its credible interval. Used by selection (the bandit's arms), the
report (holdout lift, bandit estimates) and the demo (its holdouts), so that all three say the same.
Pure functions of counts: no I/O, no randomness.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95%
_BISECTIONS = 60  # halves [0, 1] down to ~1e-18: far below what a report prints


def rate(part: int, whole: int) -> float | None:
    """part / whole, or None when there is no whole."""
    return part / whole if whole else None


# --- proportions ----------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: sound at 0 and 1 and for small n, unlike Wald's."""
    p = successes / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> tuple[float, float]:
    """95% interval of p1 - p2 by Newcombe's hybrid score method (his method 10, Stat Med 1998)."""
    p1, p2 = x1 / n1, x2 / n2
    low1, high1 = wilson_interval(x1, n1, z)
    low2, high2 = wilson_interval(x2, n2, z)
    diff = p1 - p2
    return (diff - math.sqrt((p1 - low1) ** 2 + (high2 - p2) ** 2),
            diff + math.sqrt((high1 - p1) ** 2 + (p2 - low2) ** 2))


# --- Beta posteriors ------------------------------------------------------------------------------


def beta_posterior(sends: int, conversions: int) -> tuple[float, float]:
    """Beta(1 + conversions, 1 + failures): the uniform prior updated with the counts."""
    # Clamped: late attribution can record a conversion the send count has not caught up with.
    wins = min(max(conversions, 0), max(sends, 0))
    return 1.0 + wins, 1.0 + max(sends, 0) - wins


def credible_interval(a: float, b: float, level: float = 0.95) -> tuple[float, float]:
    """The equal-tailed credible interval of Beta(a, b)."""
    tail = (1 - level) / 2
    return beta_quantile(tail, a, b), beta_quantile(1 - tail, a, b)


def beta_quantile(p: float, a: float, b: float) -> float:
    """The p-quantile of Beta(a, b)."""
    # The CDF is monotone on [0, 1], so bisection is exact enough and needs no special cases.
    low, high = 0.0, 1.0
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        low, high = (middle, high) if beta_cdf(middle, a, b) < p else (low, middle)
    return (low + high) / 2


def beta_cdf(x: float, a: float, b: float) -> float:
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
