"""Data sets as ``(train, test)`` pairs of :class:`torch.utils.data.TensorDataset`.

Every loader returns inputs as ``float32`` and labels as ``int64`` class indices, split by
:func:`~trainlab.data.split.stratified_split` and, by default, standardised with statistics
of the training split only. Each returned data set carries its class count as the
attribute ``num_classes``, so a configured count with empty classes survives the split.

scikit-learn is imported only when one of its data sets is loaded: ``import trainlab``
stays free of it (and of SciPy, which it pulls in).
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import TensorDataset

from trainlab.data import files
from trainlab.data.split import check_arguments, stratified_split
from trainlab.data.standardizer import Standardizer
from trainlab.errors import ConfigError, DataError

#: The largest class count accepted: an output layer of a million rows is already far past
#: any data set trainlab is meant for; a larger count is a typo.
MAX_CLASSES = 1_000_000


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


def _sklearn(loader: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """One of scikit-learn's bundled data sets, imported when first loaded."""
    def load_xy() -> tuple[np.ndarray, np.ndarray]:
        import sklearn.datasets

        return getattr(sklearn.datasets, loader)(return_X_y=True)

    return load_xy


#: Data sets that need no download: scikit-learn's bundled ones, and MNIST-1D, generated.
BUNDLED: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _sklearn("load_digits"),  # 1,797 × 8×8 images, 10 classes
    "wine": _sklearn("load_wine"),  # 178 × 13, 3 classes
    "breast_cancer": _sklearn("load_breast_cancer"),  # 569 × 30, 2 classes
    "iris": _sklearn("load_iris"),  # 150 × 4, 3 classes
    "mnist1d": _mnist1d,  # 5,000 × 40, 10 classes
}


def load_digits(test_fraction: float = 0.2, seed: int = 0, standardize: bool = True
                ) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 8×8 handwritten digits (1,797 samples, 64 features, 10 classes)."""
    return load("digits", test_fraction=test_fraction, seed=seed, standardize=standardize)


def load(name: str | Path, test_fraction: float = 0.2, seed: int = 0, standardize: bool = True,
         num_classes: int | None = None) -> tuple[TensorDataset, TensorDataset]:
    """A bundled data set by name (``digits``, ``wine``, ``breast_cancer``, ``iris``, ``mnist1d``) or a
    user file: ``.npz`` with arrays ``x`` and ``y``, or ``.csv`` with the label last.

    ``test_fraction`` in ``[0, 1)`` of each class goes to the test split (``0``: no test
    split), drawn with ``seed``; every class must keep at least one training sample.
    ``num_classes``: ``None`` (or ``0``, the config's default) infers ``C`` from the labels,
    which must then be ``0 … C−1`` with every class present; an integer ``>= 2`` fixes ``C``,
    refuses labels ``>= C`` and warns about classes without samples. Both returned data sets
    carry ``C`` as their ``num_classes`` attribute (see :func:`num_classes`).

    Raises :class:`~trainlab.errors.DataError` for an unknown name, a missing file, bad
    contents (see :func:`trainlab.data.files.check` and :func:`trainlab.data.files.classes`)
    or a split that leaves a class without training samples, and
    :class:`~trainlab.errors.ConfigError` for a bad ``test_fraction``, ``seed`` or ``num_classes``.
    """
    if not isinstance(name, (str, Path)) or not str(name):
        raise ConfigError(f"data set name {name!r} is not allowed; expected one of {', '.join(BUNDLED)}"
                          " or a path to a .npz or .csv file")
    check_arguments(test_fraction, seed)  # before reading anything
    wanted = _check_num_classes(num_classes)
    if str(name) in BUNDLED:
        x, y = files.check(*BUNDLED[str(name)](), source=str(name))
    elif Path(name).suffix.lower() in (".npz", ".csv"):
        x, y = files.read(name)
    else:
        raise DataError(f"unknown data set {str(name)!r}; expected one of {', '.join(BUNDLED)}"
                        " or a path to a .npz or .csv file")
    count = files.classes(y, source=str(name), num_classes=wanted)
    train_idx, test_idx = stratified_split(y, test_fraction, seed)
    _check_every_class_trains(y, train_idx, test_fraction, source=str(name))
    x_train, x_test = torch.from_numpy(x[train_idx]).double(), torch.from_numpy(x[test_idx]).double()
    if standardize:
        scaler = Standardizer().fit(x_train)  # training statistics only
        x_train, x_test = scaler(x_train), scaler(x_test)
    return _tensors(x_train, y[train_idx], count), _tensors(x_test, y[test_idx], count)


def num_classes(*datasets: TensorDataset) -> int:
    """The class count of ``(x, y)`` data sets: the ``num_classes`` attribute that
    :func:`load` sets where present, else ``max(label) + 1``; the largest over all given."""
    counts = [getattr(d, "num_classes", None) for d in datasets]
    counts += [int(d.tensors[1].max()) + 1 for d in datasets if len(d) > 0]
    counts = [c for c in counts if c is not None]
    if not counts:
        raise DataError("num_classes needs at least one non-empty data set (or one returned by trainlab.data.load)")
    return max(counts)


def _check_num_classes(num_classes: int | None) -> int | None:
    if num_classes is None or (type(num_classes) is int and num_classes == 0):
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or not 2 <= num_classes <= MAX_CLASSES:
        raise ConfigError(f"num_classes={num_classes!r} is not allowed; expected None or 0 (infer from the labels)"
                          f" or an integer >= 2 and <= {MAX_CLASSES}")
    return int(num_classes)


def _check_every_class_trains(y: np.ndarray, train_idx: np.ndarray, test_fraction: float, source: str) -> None:
    """A class with no training sample cannot be learnt; its test samples would only count as errors."""
    untrained = np.setdiff1d(np.unique(y), np.unique(y[train_idx]))
    if len(untrained):
        c = int(untrained[0])
        raise DataError(f"{source}: test_fraction={test_fraction} puts all {int(np.sum(y == c))} sample(s) of class"
                        f" {c} in the test split; lower data.test_fraction or add samples of that class")


def _tensors(x: torch.Tensor, y: np.ndarray, count: int) -> TensorDataset:
    dataset = TensorDataset(x.float(), torch.as_tensor(y, dtype=torch.int64))
    dataset.num_classes = count  # type: ignore[attr-defined]
    return dataset
