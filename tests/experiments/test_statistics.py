"""The statistics behind the demo's claims, against SciPy's t distribution and planted cases."""

import math
import random

import pytest

from trainlab.errors import ConfigError
from trainlab.experiments.statistics import (HELD, INCONCLUSIVE, NOT_HELD, interval, paired, t_quantile,
                                             verdict)

stats = pytest.importorskip("scipy.stats")  # scikit-learn's own dependency: an independent reference


@pytest.mark.parametrize("df", [1, 2, 4, 9, 29, 30, 31, 45, 100, 1000])
def test_t_quantile_against_scipy(df):
    assert t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-5)


def test_interval_against_scipy():
    values = [0.91, 0.94, 0.93, 0.95, 0.92]
    iv = interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / 5, scale=stats.sem(values))
    assert (iv.low, iv.high) == pytest.approx((low, high), abs=1e-6)
    assert iv.n == 5 and iv.mean == pytest.approx(0.93)


def test_a_planted_difference_is_held_and_none_is_inconclusive():
    rng = random.Random(0)
    noise = [rng.gauss(0, 0.01) for _ in range(5)]
    base = [0.9 + e for e in noise]
    better = [b + 0.05 + rng.gauss(0, 0.005) for b in base]  # planted +0.05, paired noise cancels
    same = [b + rng.gauss(0, 0.005) for b in base]  # no effect
    assert verdict(paired(better, base)) == HELD
    assert verdict(paired(base, better)) == NOT_HELD
    assert verdict(paired(same, base)) == INCONCLUSIVE


def test_coverage_of_the_interval_is_about_95_percent():
    """Over many planted samples of 5 normal draws, the interval covers the true mean ~95 % of the time."""
    rng = random.Random(1)
    trials = 4000
    covered = 0
    for _ in range(trials):
        iv = interval([rng.gauss(3.0, 2.0) for _ in range(5)])
        covered += iv.low <= 3.0 <= iv.high
    assert abs(covered / trials - 0.95) < 0.015


def test_threshold_and_text():
    iv = interval([1.0, 1.1, 0.9, 1.05, 0.95])
    assert verdict(iv, threshold=0.5) == HELD and verdict(iv, threshold=2.0) == NOT_HELD
    assert verdict(iv, threshold=1.0) == INCONCLUSIVE
    assert "95 % t interval, 5 seeds" in str(iv)


@pytest.mark.parametrize("values, match", [([1.0], "at least 2"), ([1.0, math.nan], "finite"),
                                           ([1.0, math.inf, 2.0], "finite")])
def test_bad_values(values, match):
    with pytest.raises(ConfigError, match=match):
        interval(values)


def test_unpaired_lengths_are_refused():
    with pytest.raises(ConfigError, match="one pair per seed"):
        paired([1.0, 2.0], [1.0])
    with pytest.raises(ConfigError, match="degrees of freedom"):
        t_quantile(0)
