"""Claims decided with statistics over seeds: an interval on the quantity a claim tests, and a
verdict that can come out *held*, *not held* or *inconclusive*.

A claim that depends on random draws (initialisation, batch order, data split) is measured
once per seed, ``d_s`` for seeds ``s = 1 … n`` (``n ≥ 2``; the demo uses at least 5): a
difference between two settings, or a quantity against a threshold. The seeds are independent
draws, so the Student-t interval for the mean,

    d̄ ± t_{1−α/2, n−1} · s_d / √n,     s_d² = Σ (d_s − d̄)² / (n − 1),

covers the mean over seeds with probability ``1 − α`` (95 % by default) when the ``d_s`` are
roughly normal — with 5 seeds a bootstrap interval would be too narrow (it cannot be wider than
the sample's range), the t interval is the honest one. Paired designs (both settings run with
the same seed, so they share the initialisation and the batch order) take ``d_s = a_s − b_s``
and cancel what the seed shares.

The verdict on "the mean is above ``threshold``": *held* when the whole interval lies above,
*not held* when it lies below, *inconclusive* when it straddles the threshold — a difference
inside the noise decides nothing. (For "below", negate the values.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from trainlab.errors import ConfigError

HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive"
#: Every claim that depends on random draws is decided over this many seeds.
SEEDS = 5
VERDICTS = (HELD, NOT_HELD, INCONCLUSIVE)

#: t_{0.975, df} for df = 1 … 30 (the two-sided 95 % quantile of Student's t).
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)


def t_quantile(df: int) -> float:
    """``t_{0.975, df}``: from a table up to 30 degrees of freedom, beyond by the Cornish–Fisher
    expansion ``z + (z³ + z)/(4 df) + (5z⁵ + 16z³ + 3z)/(96 df²) + (3z⁷ + 19z⁵ + 17z³ − 15z)/(384 df³)``
    (error < 1e-5)."""
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ConfigError(f"df={df!r} is not allowed; a t quantile needs an integer >= 1 degrees of freedom")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


@dataclass(frozen=True)
class Interval:
    """The 95 % t interval ``[low, high]`` for the mean of ``n`` per-seed values (``mean``, ``sd``)."""

    mean: float
    low: float
    high: float
    sd: float
    n: int

    def __str__(self) -> str:
        return f"{_g(self.mean)} [{_g(self.low)}, {_g(self.high)}] (95 % t interval, {self.n} seeds)"


def seeds(config: Any) -> list[int]:
    """The seeds a claim is decided over: ``config.seed + i`` for ``i = 0 … SEEDS − 1``."""
    return [config.seed + i for i in range(SEEDS)]


def interval(values: Sequence[float]) -> Interval:
    """The 95 % Student-t interval for the mean of ``values`` (one per seed, at least 2, finite)."""
    values = [float(v) for v in values]
    if len(values) < 2:
        raise ConfigError(f"an interval over seeds needs at least 2 values, got {len(values)}")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"an interval over seeds needs finite values, got {bad[0]} among {values}")
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, sd, n)


def paired(a: Sequence[float], b: Sequence[float]) -> Interval:
    """The interval for the mean of ``a_s − b_s`` (the same seeds, in the same order)."""
    if len(a) != len(b):
        raise ConfigError(f"paired values need one pair per seed: {len(a)} values against {len(b)}")
    return interval([x - y for x, y in zip(a, b)])


def verdict(iv: Interval, threshold: float = 0.0) -> str:
    """``"held"`` when the interval lies above ``threshold``, ``"not held"`` below, else ``"inconclusive"``."""
    if iv.low > threshold:
        return HELD
    if iv.high < threshold:
        return NOT_HELD
    return INCONCLUSIVE


def _g(x: float) -> str:
    return f"{x:+.3g}" if x else "0"


__all__ = ["HELD", "INCONCLUSIVE", "Interval", "NOT_HELD", "SEEDS", "VERDICTS", "interval", "paired", "seeds",
           "t_quantile", "verdict"]
