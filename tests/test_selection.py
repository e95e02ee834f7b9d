"""Next best message and splits: first, random, Thompson-sampling bandit, and its estimates."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from journey_engine.selection import (
    ArmStats,
    choose_best,
    choose_first,
    choose_random,
    estimates,
    split_bandit,
    split_random,
)

names = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6, unique=True)
counts = st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)).map(lambda t: (max(t), min(t)))


Stats = dict[str, tuple[int, int]]


def simulate(pick: str, rates: dict[str, float], rng: random.Random, stats: Stats) -> None:
    """Record one send of `pick` and whether it converted, as the engine's attribution would."""
    sends, conversions = stats.get(pick, (0, 0))
    stats[pick] = (sends + 1, conversions + (rng.random() < rates[pick]))


def test_first_takes_the_highest_priority() -> None:
    """`choose: first` takes the eligible candidate with the highest priority."""
    assert choose_first([("a", 1), ("b", 10), ("c", 5)]) == "b"


def test_first_breaks_ties_by_order() -> None:
    """Among equal priorities the one listed first wins."""
    assert choose_first([("a", 0), ("b", 3), ("c", 3)]) == "b"


@pytest.mark.parametrize(
    "choose",
    [
        choose_first,
        lambda c: choose_random(c, random.Random(1)),
        lambda c: choose_best(c, {}, random.Random(1)),
        lambda c: split_random(c, random.Random(1)),
    ],
    ids=["first", "random", "best", "split"],
)
def test_nothing_to_choose_from_is_an_error(choose: Callable[[list[Any]], str]) -> None:
    """An empty candidate list is a bug upstream (ineligible candidates are filtered first), not a pick."""
    with pytest.raises(ValueError, match="empty"):
        choose([])


def test_random_is_uniform_and_seeded() -> None:
    """`choose: random` picks uniformly, and the same seed picks the same sequence."""
    picks = [choose_random(["a", "b", "c"], rng) for rng in [random.Random(7)] for _ in range(3000)]
    again = [choose_random(["a", "b", "c"], rng) for rng in [random.Random(7)] for _ in range(3000)]
    assert picks == again
    assert all(900 < n < 1100 for n in Counter(picks).values())


def test_best_learns_the_better_arm() -> None:
    """With a clearly better message, Thompson sampling sends it most of the time after feedback."""
    rng, world = random.Random(3), random.Random(4)
    rates = {"tips_push": 0.05, "discount_email": 0.25}
    stats: Stats = {}
    picks = []
    for _ in range(1000):
        pick = choose_best(list(rates), stats, rng)
        simulate(pick, rates, world, stats)
        picks.append(pick)
    assert Counter(picks)["discount_email"] > 700
    assert Counter(picks[-200:])["discount_email"] > 180


def test_best_is_reproducible_for_a_seed() -> None:
    """The same seed and the same feedback give the same sequence of picks."""

    def run(seed: int) -> list[str]:
        rng, world, stats = random.Random(seed), random.Random(seed + 1), Stats()
        rates = {"a": 0.1, "b": 0.2, "c": 0.15}
        picks = []
        for _ in range(200):
            picks.append(choose_best(list(rates), stats, rng))
            simulate(picks[-1], rates, world, stats)
        return picks

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_best_explores_an_unseen_arm() -> None:
    """A new message with no sends still gets tried against a mediocre incumbent."""
    stats = {"old": (1000, 100)}
    picks = Counter(choose_best(["old", "new"], stats, random.Random(s)) for s in range(400))
    assert picks["new"] > 100


def test_best_tolerates_more_conversions_than_sends() -> None:
    """Late attribution can count a conversion before its send: the arm is treated as all-converting."""
    stats = {"a": (2, 5), "b": (1000, 0)}
    assert choose_best(["a", "b"], stats, random.Random(0)) == "a"


def test_arm_stats_are_plain_pairs() -> None:
    """`ArmStats` is a (sends, conversions) tuple, so it can be stored and passed as one."""
    stats = {"a": ArmStats(sends=10, conversions=9), "b": ArmStats(10, 0)}
    assert choose_best(["a", "b"], stats, random.Random(0)) == "a"
    assert tuple(stats["a"]) == (10, 9)


def test_random_split_follows_weights() -> None:
    """A random split sends each path its weighted share of users, reproducibly."""
    rng = random.Random(5)
    picks = Counter(split_random([("a", 90), ("b", 10)], rng) for _ in range(5000))
    assert 4400 < picks["a"] < 4600
    paths = [("a", 1.0), ("b", 1.0)]
    assert [split_random(paths, random.Random(s)) for s in range(20)] == [
        split_random(paths, random.Random(s)) for s in range(20)
    ]


def test_bandit_split_learns_the_better_path() -> None:
    """A bandit split moves users toward the path whose users reach the goal more often."""
    rng, world = random.Random(8), random.Random(9)
    rates = {"variant_a": 0.3, "variant_b": 0.1}
    stats: Stats = {}
    picks: Counter[str] = Counter()
    for _ in range(1000):
        pick = split_bandit([("variant_a", 50), ("variant_b", 50)], stats, rng)
        simulate(pick, rates, world, stats)
        picks[pick] += 1
    assert picks["variant_a"] > 800


def test_estimates_without_data_are_the_uniform_prior() -> None:
    """With no sends the mean is 0.5 and the 95% interval is (0.025, 0.975)."""
    estimate = estimates({"a": (0, 0)})["a"]
    assert estimate["mean"] == pytest.approx(0.5)
    assert estimate["low"] == pytest.approx(0.025)
    assert estimate["high"] == pytest.approx(0.975)


def test_estimates_match_a_closed_form() -> None:
    """All-converting arms have Beta(n + 1, 1) posteriors, whose quantiles are p ** (1 / (n + 1))."""
    estimate = estimates({"a": (4, 4)})["a"]
    assert estimate == {
        "sends": 4,
        "conversions": 4,
        "mean": pytest.approx(5 / 6),
        "low": pytest.approx(0.025 ** (1 / 5), abs=1e-9),
        "high": pytest.approx(0.975 ** (1 / 5), abs=1e-9),
    }


def test_estimates_narrow_with_data() -> None:
    """More sends at the same rate give a tighter interval around that rate."""
    small, large = estimates({"s": (20, 2), "l": (20_000, 2_000)}).values()
    assert large["high"] - large["low"] < (small["high"] - small["low"]) / 10
    assert large["low"] < 0.1 < large["high"]


@given(candidates=names, seed=st.integers(0, 2**32), data=st.data())
def test_best_always_picks_a_candidate(candidates: list[str], seed: int, data: st.DataObject) -> None:
    """Whatever the stats, the pick is one of the candidates."""
    stats = {name: data.draw(counts) for name in candidates}
    assert choose_best(candidates, stats, random.Random(seed)) in candidates


@given(priorities=st.lists(st.tuples(st.text(max_size=4), st.integers(-5, 5)), min_size=1))
def test_first_pick_has_the_top_priority(priorities: list[tuple[str, int]]) -> None:
    """The pick is the first candidate carrying the maximum priority."""
    top = max(priority for _, priority in priorities)
    assert choose_first(priorities) == next(name for name, priority in priorities if priority == top)


@given(arm=counts)
def test_estimate_interval_contains_its_mean(arm: tuple[int, int]) -> None:
    """0 <= low <= mean <= high <= 1 for any (sends, conversions)."""
    estimate = estimates({"a": arm})["a"]
    assert 0 <= estimate["low"] <= estimate["mean"] <= estimate["high"] <= 1
