import pytest
import torch

import trainlab as tl
from trainlab.data import Standardizer


def test_fit_transform_against_hand_computation():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(100, 4, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 10.0, 1e3, 0.1]) + 5
    test = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    s = Standardizer().fit(train)
    z = s(train)
    torch.testing.assert_close(z.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(s.transform(test), (test - train.mean(0)) / train.std(0, unbiased=False))
    torch.testing.assert_close(s.inverse_transform(s(test)), test)
    assert tl.nn.Standardizer is Standardizer


def test_constant_feature_is_centred_not_divided_by_zero():
    x = torch.tensor([[1.0, 7.0], [3.0, 7.0]])
    z = Standardizer().fit_transform(x)
    assert torch.isfinite(z).all() and torch.equal(z[:, 1], torch.zeros(2))


def test_state_dict_round_trip_into_an_unfitted_standardizer():
    fitted = Standardizer().fit(torch.randn(20, 1, 3, 3))
    fresh = Standardizer()
    fresh.load_state_dict(fitted.state_dict())
    x = torch.randn(5, 1, 3, 3)
    assert torch.equal(fresh(x), fitted(x))
    model = torch.nn.Sequential(fitted, torch.nn.Flatten(), torch.nn.Linear(9, 2))
    assert {"0.mean", "0.std"} <= set(model.state_dict())


def test_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        Standardizer()(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"fitted on features of shape \(3,\); got inputs of shape \(2, 4\)"):
        Standardizer().fit(torch.zeros(2, 3))(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="NaN or Inf"):
        Standardizer().fit(torch.tensor([[0.0], [float("nan")]]))


def test_bad_inputs_are_data_errors():
    from trainlab.errors import DataError

    with pytest.raises(DataError, match=r"complex inputs \(torch.complex64\)"):
        Standardizer().fit(torch.zeros(3, 2, dtype=torch.complex64))
    with pytest.raises(DataError, match="at least one sample"):
        Standardizer().fit(torch.zeros(0, 2))
    with pytest.raises(DataError, match="fitted on features of shape"):
        Standardizer().fit(torch.zeros(2, 3))(torch.zeros(2, 4))
