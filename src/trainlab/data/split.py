"""Stratified train/test split and feature standardisation fitted on the training split.

Standardisation is the lecture's *feature normalisation*: each feature ``x_i`` becomes
``x̃_i = (x_i − m_i) / σ_i`` with ``m_i, σ_i`` the mean and (biased) standard deviation of
that feature **over the training split only**, so no test statistics leak into training.
A constant feature (``σ_i = 0``) is centred and left unscaled.
"""

from __future__ import annotations

import numpy as np

from trainlab.errors import ConfigError


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)``, both sorted: from each class ``c`` with ``n_c`` samples,
    ``round(n_c · test_fraction)`` drawn at random (NumPy generator seeded with ``seed``)
    go to the test split, so every class keeps its share in both splits."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 <= test_fraction < 1:
        raise ConfigError(f"test_fraction must be a number in [0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        n_test = int(np.floor(len(members) * test_fraction + 0.5))
        test.append(rng.permutation(members)[:n_test])
    test_idx = np.sort(np.concatenate(test)) if test else np.empty(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return train_idx, test_idx


def standardize(train_x: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``[(x − m) / σ for x in (train_x, *others)]`` with ``m, σ`` per feature of ``train_x``
    (computed in float64; ``σ = 0`` replaced by 1)."""
    mean = train_x.mean(axis=0, dtype=np.float64)
    std = train_x.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    return [(x - mean) / std for x in (train_x, *others)]
