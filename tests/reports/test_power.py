"""The power figures a report prints for an inconclusive claim, checked against a direct
simulation of the paired one-sided t-test they describe."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from growbench.reports.statistics import (
    MAX_SEEDS,
    minimum_detectable_effect,
    one_sided_power,
    seeds_needed,
)

TRIALS = 40_000


def simulated_power(effect: float, sd: float, n: int, alpha: float, seed: int = 0) -> float:
    """The fraction of simulated experiments (n normal differences) the t-test rejects."""
    diffs = np.random.default_rng(seed).normal(effect, sd, size=(TRIALS, n))
    p = stats.ttest_1samp(diffs, 0.0, axis=1, alternative="greater").pvalue
    return float((p < alpha).mean())


@pytest.mark.parametrize(("sd", "n", "alpha"), [(1.0, 3, 0.05), (0.4, 5, 0.05), (2.5, 10, 0.01)])
def test_the_minimum_detectable_effect_is_detected_80_percent_of_the_time(sd, n, alpha):
    mde = minimum_detectable_effect(sd, n, alpha)
    assert mde > 0
    assert one_sided_power(mde, sd, n, alpha) == pytest.approx(0.8, abs=1e-9)
    # 40,000 trials: the standard error of the fraction is 0.002
    assert simulated_power(mde, sd, n, alpha) == pytest.approx(0.8, abs=0.01)
    assert simulated_power(mde / 2, sd, n, alpha) < 0.7


@pytest.mark.parametrize(("effect", "sd"), [(0.5, 1.0), (0.2, 0.3)])
def test_seeds_needed_is_the_first_seed_count_with_80_percent_power(effect, sd):
    n = seeds_needed(effect, sd, 0.05)
    assert n is not None
    assert n > 2
    assert simulated_power(effect, sd, n, 0.05) == pytest.approx(
        one_sided_power(effect, sd, n, 0.05), abs=0.01
    )
    assert one_sided_power(effect, sd, n, 0.05) >= 0.8 > one_sided_power(effect, sd, n - 1, 0.05)


def test_power_at_no_effect_is_the_level():
    assert one_sided_power(0.0, 1.0, 6, 0.05) == pytest.approx(0.05)
    assert simulated_power(0.0, 1.0, 6, 0.05) == pytest.approx(0.05, abs=0.005)


def test_edge_cases():
    assert math.isnan(one_sided_power(1.0, 1.0, 1, 0.05))
    assert math.isnan(minimum_detectable_effect(1.0, 1, 0.05))
    assert minimum_detectable_effect(0.0, 4, 0.05) == 0.0
    assert seeds_needed(1.0, 0.0, 0.05) == 2
    assert seeds_needed(0.0, 1.0, 0.05) is None
    assert seeds_needed(-1.0, 1.0, 0.05) is None
    assert seeds_needed(1e-3, 1.0, 0.05) is None  # would need ~6,000 seeds > MAX_SEEDS
    assert one_sided_power(1e-3, 1.0, MAX_SEEDS, 0.05) < 0.8
