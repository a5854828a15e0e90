import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainlab.data import stratified_split
from trainlab.errors import ConfigError


@settings(max_examples=60, deadline=None)
@given(labels=st.lists(st.integers(0, 5), min_size=1, max_size=200),
       fraction=st.floats(0, 0.95), seed=st.integers(0, 2**31))
def test_split_partitions_and_keeps_every_class_share(labels, fraction, seed):
    y = np.array(labels)
    train, test = stratified_split(y, fraction, seed)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(y)))  # a partition
    for c in np.unique(y):
        n_c = np.sum(y == c)
        assert np.sum(y[test] == c) == np.floor(n_c * fraction + 0.5)  # the class's own share, rounded
    again = stratified_split(y, fraction, seed)
    assert all(np.array_equal(a, b) for a, b in zip((train, test), again))  # same seed, same split


def test_split_depends_on_seed():
    y = np.repeat(np.arange(3), 50)
    assert not np.array_equal(stratified_split(y, 0.2, 0)[1], stratified_split(y, 0.2, 1)[1])


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, "0.2", True])
def test_split_refuses_fraction_outside_unit_interval(fraction):
    with pytest.raises(ConfigError, match="test_fraction"):
        stratified_split(np.zeros(10), fraction, 0)


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64, 1.0, True, "0", None])
def test_split_refuses_seeds_torch_or_toml_cannot_take(seed):
    with pytest.raises(ConfigError, match=r"seed=.* is not allowed; expected an integer >= 0 and <= 9223372036854775807"):
        stratified_split(np.zeros(10), 0.2, seed)


def test_split_takes_the_largest_seed_and_numpy_integers():
    y = np.repeat(np.arange(2), 5)
    assert np.array_equal(stratified_split(y, 0.2, 2**63 - 1)[1], stratified_split(y, 0.2, np.int64(2**63 - 1))[1])
