"""Data sets as ``(train, test)`` pairs of :class:`torch.utils.data.TensorDataset`.

Every loader returns inputs as ``float32`` and labels as ``int64`` class indices, split by
:func:`~trainlab.data.split.stratified_split` and, by default, standardised with statistics
of the training split only.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Callable

import numpy as np
import sklearn.datasets
import torch
from torch.utils.data import TensorDataset

from trainlab.data import files
from trainlab.data.split import stratified_split
from trainlab.data.standardizer import Standardizer
from trainlab.errors import DataError

@functools.lru_cache(maxsize=1)
def _mnist1d() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-1D (Greydanus 2020): 5,000 one-dimensional "digits" of 40 points, 10 classes,
    generated offline by the ``mnist1d`` package with its standard arguments (its seed 42),
    so it is the canonical data set. Harder than the 8×8 digits: small and large batches
    really differ on it. Its generator seeds NumPy's and Python's global generators; their
    states are restored afterwards."""
    from mnist1d.data import get_dataset_args, make_dataset

    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return np.concatenate([d["x"], d["x_test"]]), np.concatenate([d["y"], d["y_test"]])


#: Data sets that need no download: scikit-learn's bundled ones, and MNIST-1D, generated.
BUNDLED: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "digits": lambda: sklearn.datasets.load_digits(return_X_y=True),  # 1,797 × 8×8 images, 10 classes
    "wine": lambda: sklearn.datasets.load_wine(return_X_y=True),  # 178 × 13, 3 classes
    "breast_cancer": lambda: sklearn.datasets.load_breast_cancer(return_X_y=True),  # 569 × 30, 2 classes
    "iris": lambda: sklearn.datasets.load_iris(return_X_y=True),  # 150 × 4, 3 classes
    "mnist1d": _mnist1d,  # 5,000 × 40, 10 classes
}


def load_digits(test_fraction: float = 0.2, seed: int = 0, standardize: bool = True
                ) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 8×8 handwritten digits (1,797 samples, 64 features, 10 classes)."""
    return load("digits", test_fraction=test_fraction, seed=seed, standardize=standardize)


def load(name: str | Path, test_fraction: float = 0.2, seed: int = 0, standardize: bool = True
         ) -> tuple[TensorDataset, TensorDataset]:
    """A bundled data set by name (``digits``, ``wine``, ``breast_cancer``, ``iris``, ``mnist1d``) or a
    user file: ``.npz`` with arrays ``x`` and ``y``, or ``.csv`` with the label last.

    Raises :class:`~trainlab.errors.DataError` for an unknown name, a missing file or bad
    contents (see :func:`trainlab.data.files.check`).
    """
    if str(name) in BUNDLED:
        x, y = BUNDLED[str(name)]()
    elif Path(name).suffix.lower() in (".npz", ".csv"):
        x, y = files.read(name)
    else:
        raise DataError(f"unknown data set {str(name)!r}; expected one of {', '.join(BUNDLED)}"
                        " or a path to a .npz or .csv file")
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    if len(train_idx) == 0:
        raise DataError(f"{name}: test_fraction={test_fraction} leaves no training samples")
    x_train, x_test = torch.from_numpy(x[train_idx]).double(), torch.from_numpy(x[test_idx]).double()
    if standardize:
        scaler = Standardizer().fit(x_train)  # training statistics only
        x_train, x_test = scaler(x_train), scaler(x_test)
    return _tensors(x_train, y[train_idx]), _tensors(x_test, y[test_idx])


def num_classes(*datasets: TensorDataset) -> int:
    """``max(label) + 1`` over all given ``(x, y)`` data sets."""
    return max(int(d.tensors[1].max()) + 1 for d in datasets if len(d) > 0)


def _tensors(x: torch.Tensor, y: np.ndarray) -> TensorDataset:
    return TensorDataset(x.float(), torch.as_tensor(y, dtype=torch.int64))
