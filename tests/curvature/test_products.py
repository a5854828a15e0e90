"""gradient, hvp and hessian against analytic results and independent PyTorch references (float64)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

import trainlab as tl
from trainlab.curvature import HessianOperator, analysis_mode, gradient, hessian, hvp
from trainlab.errors import ConfigError

from toys import squared_error


def flat_loss(model, loss_fn, x, y):
    """L as a function of one flat parameter vector, for torch's own derivative tools."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def f(theta):
        chunks = theta.split([s.numel() for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        return loss_fn(functional_call(model, params, (x,)), y)

    return f, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_lecture_toy_gradient_and_hessian(toy):
    model, data = toy
    assert torch.equal(gradient(model, squared_error, data), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(hessian(model, squared_error, data), torch.tensor([[0.0, -2.0], [-2.0, 0.0]], dtype=torch.float64))


def test_least_squares_hessian_is_2_xtx_over_n():
    gen = torch.Generator().manual_seed(0)
    X, t = torch.randn(30, 4, generator=gen, dtype=torch.float64), torch.randn(30, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(4, 1, bias=False).double()
    torch.testing.assert_close(hessian(model, F.mse_loss, (X, t)), 2 * X.T @ X / 30, rtol=1e-13, atol=1e-13)


def test_hvp_matches_torch_autograd_functional(small_mlp_problem):
    model, x, y = small_mlp_problem
    f, theta = flat_loss(model, F.cross_entropy, x, y)
    gen = torch.Generator().manual_seed(1)
    V = torch.randn(4, theta.numel(), generator=gen, dtype=torch.float64)
    expected = torch.stack([torch.autograd.functional.hvp(f, theta, v)[1] for v in V])
    torch.testing.assert_close(hvp(model, F.cross_entropy, (x, y), V[0]), expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hvp(model, F.cross_entropy, (x, y), V), expected, rtol=1e-12, atol=1e-12)
    f_grad = torch.func.grad(f)(theta)
    torch.testing.assert_close(gradient(model, F.cross_entropy, (x, y)), f_grad, rtol=1e-12, atol=1e-12)


def test_hessian_matches_torch_func_on_an_mlp(small_mlp_problem):
    model, x, y = small_mlp_problem
    f, theta = flat_loss(model, F.cross_entropy, x, y)
    torch.testing.assert_close(hessian(model, F.cross_entropy, (x, y)), torch.func.hessian(f)(theta),
                               rtol=1e-10, atol=1e-12)


def test_hessian_matches_torch_func_on_a_cnn_with_batchnorm_in_eval_mode():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 1, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=gen)
    model = tl.nn.small_cnn(in_channels=1, image_size=4, num_classes=3, channels=(2,), batch_norm=True, seed=0).double()
    model.train()
    for _ in range(3):  # non-trivial running statistics
        model(torch.randn(8, 1, 4, 4, generator=gen, dtype=torch.float64) * 2 + 1)
    f, theta = flat_loss(model.eval(), tl.nn.cross_entropy, x, y)
    expected = torch.func.hessian(f)(theta)
    model.train()
    got = hessian(model, tl.nn.cross_entropy, (x, y))  # eval() by default ...
    assert model.training  # ... and the mode is restored
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_a_short_last_batch_gives_exactly_the_full_batch_hessian(small_mlp_problem):
    model, x, y = small_mlp_problem
    loader = DataLoader(TensorDataset(x, y), batch_size=16)  # 16, 16, 8
    full = hessian(model, F.cross_entropy, (x, y))
    torch.testing.assert_close(hessian(model, F.cross_entropy, loader), full, rtol=1e-12, atol=1e-14)
    unweighted = sum(hessian(model, F.cross_entropy, b) for b in loader) / 3  # what a plain average would give
    assert (unweighted - full).abs().max() > 1e-4


def test_streaming_products_equal_the_kept_graph(small_mlp_problem):
    model, x, y = small_mlp_problem
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    v = torch.randn(3, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    with analysis_mode(model, "eval"):
        kept = HessianOperator(model, F.cross_entropy, loader, keep_graph=True)
        streamed = HessianOperator(model, F.cross_entropy, loader, keep_graph=False)
        torch.testing.assert_close(streamed.matmat(v), kept.matmat(v), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(streamed.gradient(), kept.gradient(), rtol=1e-12, atol=1e-14)
        assert kept.n_hvp == streamed.n_hvp == 3


def test_train_mode_needs_determinism(small_mlp_problem):
    model, x, y = small_mlp_problem
    dropout = nn.Sequential(model[0], nn.Dropout(0.5), model[1], model[2])
    with pytest.raises(ConfigError, match="mode='train' gives a different gradient each time.*dropout"):
        hessian(dropout, F.cross_entropy, (x, y), mode="train")
    assert hessian(dropout, F.cross_entropy, (x, y)).shape == (57, 57)  # eval mode: dropout off
    bn = nn.Sequential(model[0], tl.nn.BatchNorm1d(6), model[1], model[2]).double()
    h = hessian(bn, F.cross_entropy, (x, y), mode="train")  # batch statistics are deterministic
    assert torch.isfinite(h).all() and not torch.allclose(h, hessian(bn, F.cross_entropy, (x, y)))
    with pytest.raises(ConfigError, match="mode='fast' is not allowed"):
        hessian(model, F.cross_entropy, (x, y), mode="fast")


def test_unused_and_frozen_parameters(small_mlp_problem):
    model, x, y = small_mlp_problem
    spare = nn.Linear(2, 2).double()  # registered but never used by forward
    wrapped = nn.ModuleDict({"net": model, "spare": spare})
    wrapped.forward = lambda inp: model(inp)
    h = hessian(wrapped, F.cross_entropy, (x, y))
    assert h.shape == (63, 63) and torch.equal(h[57:], torch.zeros(6, 63, dtype=torch.float64))
    model[0].weight.requires_grad_(False)
    assert hessian(model, F.cross_entropy, (x, y)).shape == (27, 27)


def test_dense_hessian_refuses_large_models():
    model = tl.nn.mlp(64, [128], 10)
    with pytest.raises(ValueError, match="9,610 parameters, above max_params=5,000.*trainlab.curvature.eigs"):
        hessian(model, tl.nn.cross_entropy, (torch.randn(4, 64), torch.zeros(4, dtype=torch.long)), max_params=5_000)


def test_dense_hessian_refuses_past_its_time_budget(small_mlp_problem):
    model, x, y = small_mlp_problem
    with pytest.raises(ConfigError, match=r"a dense Hessian of 57 parameters needs 57 Hessian-vector products, about"
                                          r" .* s here .*above max_seconds=1e-09; use trainlab.curvature.eigs"):
        hessian(model, F.cross_entropy, (x, y), max_seconds=1e-9)
    assert hessian(model, F.cross_entropy, (x, y), max_seconds=None).shape == (57, 57)


def test_products_work_inside_no_grad(small_mlp_problem):
    model, x, y = small_mlp_problem
    expected = hessian(model, F.cross_entropy, (x, y))
    with torch.no_grad():
        torch.testing.assert_close(hessian(model, F.cross_entropy, (x, y)), expected, rtol=0, atol=0)
        assert gradient(model, F.cross_entropy, (x, y)).shape == (57,)


@pytest.mark.parametrize("operator", ["hessian", "ggn", "fisher"])
def test_an_operation_without_a_double_backward_is_named(operator):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Hardsigmoid(), nn.Linear(4, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    from digests import model_digest
    before = model_digest(model)
    with pytest.raises(ConfigError, match="the model uses aten::hardsigmoid_backward, whose derivative PyTorch does"
                                          " not implement"):
        tl.curvature.eigs(model, F.cross_entropy, (x, y), k=1, operator=operator, progress=False)
    assert model_digest(model) == before
