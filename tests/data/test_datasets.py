import numpy as np
import pytest
import sklearn.datasets
import torch
from torch.utils.data import TensorDataset

import trainlab as tl
from trainlab.errors import DataError
from tolerance import close


def test_digits_shapes_types_and_split(digits):
    train, test = digits
    assert isinstance(train, TensorDataset) and isinstance(test, TensorDataset)
    assert len(train) + len(test) == 1797
    assert train.tensors[0].shape[1:] == (64,) and train.tensors[0].dtype == torch.float32
    assert train.tensors[1].dtype == torch.int64
    assert tl.data.num_classes(train, test) == 10
    assert len(test) == pytest.approx(0.2 * 1797, abs=10)


def test_digits_split_is_stratified(digits):
    train, test = digits
    _, y = sklearn.datasets.load_digits(return_X_y=True)
    for c in range(10):
        assert int((test.tensors[1] == c).sum()) == int(np.floor((y == c).sum() * 0.2 + 0.5))


def test_digits_standardised_with_training_statistics_only(digits):
    train, test = digits
    x, _ = sklearn.datasets.load_digits(return_X_y=True)
    raw_train, raw_test = tl.data.load_digits(standardize=False)
    mean = raw_train.tensors[0].double().mean(0)
    std = raw_train.tensors[0].double().std(0, unbiased=False)
    std[std == 0] = 1
    # statistics reduced in float64 (Standardizer), then stored and applied in float32: a few float32
    # roundings of raw pixels up to `scale` standard deviations from zero
    scale = float((raw_train.tensors[0].double().abs().max(0).values / std).max())
    torch.testing.assert_close(test.tensors[0].double(), (raw_test.tensors[0].double() - mean) / std,
                               **close(torch.float32, scale=scale))
    # raw values are the sklearn pixels, unchanged
    assert set(np.unique(raw_train.tensors[0].numpy())) <= set(np.unique(x))
    # the test split's own statistics were not used: its mean is not zero
    assert test.tensors[0].double().mean(0).abs().max() > 1e-3


def test_same_seed_same_split_other_seed_other_split():
    a, _ = tl.data.load_digits(seed=3)
    b, _ = tl.data.load_digits(seed=3)
    c, _ = tl.data.load_digits(seed=4)
    assert torch.equal(a.tensors[0], b.tensors[0])
    assert not torch.equal(a.tensors[1], c.tensors[1])


@pytest.mark.parametrize("name, loader", [("wine", sklearn.datasets.load_wine),
                                          ("breast_cancer", sklearn.datasets.load_breast_cancer),
                                          ("iris", sklearn.datasets.load_iris),
                                          ("digits", sklearn.datasets.load_digits)])
def test_bundled_by_name(name, loader):
    x, y = loader(return_X_y=True)
    train, test = tl.data.load(name)
    assert len(train) + len(test) == len(y)
    assert train.tensors[0].shape[1] == x.shape[1]
    assert tl.data.num_classes(train, test) == len(np.unique(y))


def test_mnist1d_is_generated_offline_and_leaves_global_rngs_alone():
    import random

    np.random.seed(123)
    random.seed(123)
    before = (np.random.get_state()[1].copy(), random.getstate())
    train, test = tl.data.load("mnist1d")
    assert (np.random.get_state()[1] == before[0]).all() and random.getstate() == before[1]
    assert len(train) + len(test) == 5000 and train.tensors[0].shape[1] == 40
    assert tl.data.num_classes(train, test) == 10


def test_unknown_name_lists_what_is_allowed():
    with pytest.raises(DataError, match="unknown data set 'mnist'.*digits, wine, breast_cancer, iris, mnist1d"):
        tl.data.load("mnist")


def test_test_fraction_zero_gives_empty_test_split():
    train, test = tl.data.load("iris", test_fraction=0.0)
    assert len(train) == 150 and len(test) == 0


def test_import_trainlab_loads_neither_scikit_learn_nor_scipy():
    import subprocess
    import sys

    code = "import sys, trainlab; print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bundled_sets_carry_their_class_count():
    train, test = tl.data.load("iris")
    assert train.num_classes == test.num_classes == 3
