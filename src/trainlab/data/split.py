"""Stratified train/test split: every class keeps its share in both splits."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainlab.errors import ConfigError

#: The largest seed: TOML's integers are int64, and torch's generators take no more.
MAX_SEED = 2**63 - 1


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)``, both sorted: from each class ``c`` with ``n_c`` samples,
    ``round(n_c · test_fraction)`` drawn at random (NumPy generator seeded with ``seed``)
    go to the test split, so every class keeps its share in both splits.

    ``test_fraction`` must be a number in ``[0, 1)`` and ``seed`` an integer in ``[0, 2**63 − 1]``
    (:class:`~trainlab.errors.ConfigError` otherwise, see :func:`check_arguments`)."""
    check_arguments(test_fraction, seed)
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        n_test = int(np.floor(len(members) * test_fraction + 0.5))
        test.append(rng.permutation(members)[:n_test])
    test_idx = np.sort(np.concatenate(test)) if test else np.empty(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return train_idx, test_idx


def check_arguments(test_fraction: Any, seed: Any) -> None:
    """``ConfigError`` unless ``0 <= test_fraction < 1`` and ``seed`` is an integer in ``[0, 2**63 − 1]``."""
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 <= test_fraction < 1:
        raise ConfigError(f"test_fraction must be a number in [0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed={seed!r} is not allowed; expected an integer >= 0 and <= {MAX_SEED} (2**63 - 1)")
