import pytest
import torch
from torch import nn

import trainlab as tl
from trainlab.errors import ConfigError


@pytest.mark.parametrize("activation, kind", [("relu", nn.ReLU), ("tanh", nn.Tanh), ("sigmoid", nn.Sigmoid)])
def test_mlp_layers_and_shapes(activation, kind):
    model = tl.nn.mlp(64, [32, 16], 10, activation=activation)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 16), (16, 10)]
    assert sum(isinstance(m, kind) for m in model) == 2
    assert model(torch.randn(5, 64)).shape == (5, 10)
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)  # flattens image-shaped input


def test_identity_activation_is_a_deep_linear_network():
    model = tl.nn.mlp(6, [5, 4], 3, activation="identity", seed=0).double()
    w1, w2, w3 = (m.weight for m in model if isinstance(m, nn.Linear))
    b1, b2, b3 = (m.bias for m in model if isinstance(m, nn.Linear))
    x = torch.randn(7, 6, dtype=torch.float64)
    expected = x @ (w3 @ w2 @ w1).T + (w3 @ (w2 @ b1 + b2) + b3)  # W3 W2 W1 x + b, computed by hand
    torch.testing.assert_close(model(x), expected)


def test_mlp_batch_norm_after_each_hidden_linear():
    model = tl.nn.mlp(64, [32, 32], 10, batch_norm=True)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Flatten, nn.Linear, tl.nn.BatchNorm1d, nn.ReLU, nn.Linear, tl.nn.BatchNorm1d, nn.ReLU, nn.Linear]


def test_mlp_hidden_as_int_and_empty():
    assert len([m for m in tl.nn.mlp(4, 8, 2) if isinstance(m, nn.Linear)]) == 2
    assert len([m for m in tl.nn.mlp(4, [], 2) if isinstance(m, nn.Linear)]) == 1


def test_seed_reproduces_weights_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = tl.nn.mlp(64, [32], 10, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = tl.nn.mlp(64, [32], 10, seed=7)
    c = tl.nn.mlp(64, [32], 10, seed=8)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize("kwargs, match", [
    ({"activation": "gelu"}, "unknown activation 'gelu'; allowed: relu, tanh, sigmoid, identity"),
    ({"hidden": [32, 0]}, r"hidden=\[32, 0\]"),
    ({"in_features": -1}, "in_features=-1"),
])
def test_mlp_bad_arguments(kwargs, match):
    args = {"in_features": 64, "hidden": [32], "out_features": 10, **kwargs}
    with pytest.raises(ConfigError, match=match):
        tl.nn.mlp(**args)


def test_small_cnn_takes_flat_and_image_input_and_learns_a_gradient():
    model = tl.nn.small_cnn(seed=0)
    flat = torch.randn(4, 64)
    out = model(flat)
    assert out.shape == (4, 10)
    torch.testing.assert_close(model(flat.reshape(4, 1, 8, 8)), out)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_small_cnn_batch_norm_and_bad_sizes():
    assert any(isinstance(m, tl.nn.BatchNorm2d) for m in tl.nn.small_cnn(batch_norm=True))
    with pytest.raises(ConfigError, match="image_size=8 is not divisible by 2\\*\\*4"):
        tl.nn.small_cnn(channels=(4, 4, 4, 4))
    with pytest.raises(ConfigError, match="channels"):
        tl.nn.small_cnn(channels=())
