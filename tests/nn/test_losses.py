"""Losses against torch.nn.functional (values and gradients) and the lecture's examples."""

import pytest
import torch
import torch.nn.functional as F

import trainlab as tl
from tolerance import tol

DTYPES = [torch.float32, torch.float64]


def logits_cases(dtype):
    gen = torch.Generator().manual_seed(0)
    random = torch.randn(16, 7, generator=gen, dtype=dtype) * 3
    extreme = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4 - 1, -5.0], [0.0, 1e-3, -1e4]],
                           dtype=dtype)
    return [random, extreme]


def value_and_grad(fn, logits, *args):
    x = logits.clone().requires_grad_()
    out = fn(x, *args)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    return out.detach(), grad


def close(a, b, n):
    """Equal up to the rounding of sums over ``n`` terms in ``b``'s dtype, relative to the largest value."""
    torch.testing.assert_close(a, b, rtol=tol(b.dtype, n), atol=tol(b.dtype, n, scale=float(b.abs().max())))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [0, 1])
def test_softmax_and_log_softmax_match_torch(dtype, case):
    logits = logits_cases(dtype)[case]
    for ours, theirs in ((tl.nn.softmax, torch.softmax), (tl.nn.log_softmax, torch.log_softmax)):
        weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        a, ga = value_and_grad(lambda x: (ours(x, 1) * weights).sum(), logits)
        b, gb = value_and_grad(lambda x: (theirs(x, 1) * weights).sum(), logits)
        assert torch.isfinite(a) and torch.isfinite(ga).all()
        close(a, b, logits.numel()), close(ga, gb, logits.numel())  # the weighted sum over every logit


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [0, 1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch_for_class_and_probability_targets(dtype, case, reduction):
    logits = logits_cases(dtype)[case]
    gen = torch.Generator().manual_seed(2)
    classes = torch.randint(0, logits.shape[1], (len(logits),), generator=gen)
    probs = torch.softmax(torch.randn(logits.shape, generator=gen, dtype=dtype), 1)
    for target in (classes, probs):
        a, ga = value_and_grad(tl.nn.cross_entropy, logits, target, reduction)
        b, gb = value_and_grad(F.cross_entropy, logits, target, None, None, -100, None, reduction)
        assert torch.isfinite(a).all() and torch.isfinite(ga).all()
        close(a, b, logits.numel()), close(ga, gb, logits.numel())  # a mean or sum over every logit


def test_second_derivatives_match_torch():
    """Hessian-vector products through the loss (what curvature analysis needs)."""
    logits = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (8,))
    v = torch.randn(8, 5, dtype=torch.float64)
    hvps = []
    for fn in (tl.nn.cross_entropy, F.cross_entropy):
        (g,) = torch.autograd.grad(fn(logits, target), logits, create_graph=True)
        hvps.append(torch.autograd.grad((g * v).sum(), logits)[0])
    torch.testing.assert_close(hvps[0], hvps[1], rtol=1e-12, atol=1e-12)


def test_mse_onehot_against_an_independent_computation():
    logits = torch.randn(10, 4, dtype=torch.float64)
    target = torch.randint(0, 4, (10,))
    expected = ((torch.softmax(logits, 1) - F.one_hot(target, 4)) ** 2).sum(1).mean()
    torch.testing.assert_close(tl.nn.mse_onehot(logits, target), expected)
    raw = ((logits - F.one_hot(target, 4)) ** 2).sum(1).mean()
    torch.testing.assert_close(tl.nn.mse_onehot(logits, target, apply_softmax=False), raw)
    extreme = tl.nn.mse_onehot(logits_cases(torch.float32)[1], torch.tensor([1, 0, 2, 0]))
    assert torch.isfinite(extreme)


def test_lecture_softmax_example_and_two_class_sigmoid():
    torch.testing.assert_close(tl.nn.softmax(torch.tensor([3.0, 1.0, -3.0])), torch.tensor([0.8789, 0.1189, 0.0022]),
                               atol=1e-4, rtol=0)
    a, b = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    torch.testing.assert_close(tl.nn.softmax(torch.stack([a, b], 1))[:, 0], torch.sigmoid(a - b))


def test_mse_is_flat_where_cross_entropy_is_not():
    """A 2-class logistic model started with large wrong logits: ‖∇ MSE‖ < 1 % of ‖∇ CE‖."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=gen, dtype=torch.float64)
    x[:, 0] = torch.sign(x[:, 0]) * (1 + x[:, 0].abs())  # |x₀| ≥ 1: every sample far from the boundary
    y = (x[:, 0] > 0).long()
    model = torch.nn.Linear(5, 2).double()
    with torch.no_grad():  # logits favour the wrong class by 20|x₀| ≥ 20 for every sample
        model.weight.zero_()
        model.weight[0, 0], model.weight[1, 0] = 10.0, -10.0
        model.bias.zero_()

    def grad_norm(loss_fn):
        model.zero_grad()
        loss_fn(model(x), y).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm().item()

    with torch.no_grad():
        assert (model(x).argmax(1) != y).float().mean() > 0.99  # confidently wrong
    ce, mse = grad_norm(tl.nn.cross_entropy), grad_norm(tl.nn.mse_onehot)
    assert ce > 1 and mse < 0.01 * ce


@pytest.mark.parametrize("call, match", [
    (lambda: tl.nn.cross_entropy(torch.zeros(3, 4), torch.tensor([0, 4, 1])),
     r"target 4 at position 1 is not a class index in \[0, 4\)"),
    (lambda: tl.nn.cross_entropy(torch.zeros(3, 4), torch.tensor([0, -1, 1])), "target -1 at position 1"),
    (lambda: tl.nn.cross_entropy(torch.zeros(3, 4), torch.tensor([0, 1])), r"targets of shape \(2,\) do not match"),
    (lambda: tl.nn.cross_entropy(torch.zeros(3, 4), torch.zeros(3, 3)), "probability targets of shape"),
    (lambda: tl.nn.cross_entropy(torch.zeros(4), torch.tensor([0])), r"logits must be a float tensor of shape"),
    (lambda: tl.nn.cross_entropy(torch.zeros(3, 4), torch.tensor([0, 1, 2]), "avg"), "reduction='avg'"),
    (lambda: tl.nn.mse_onehot(torch.zeros(3, 4), torch.zeros(3)), "targets must be integer class indices"),
    (lambda: tl.nn.mse_onehot(torch.zeros(3, 4), torch.tensor([0, 1, 2]), num_classes=5), "num_classes=5"),
])
def test_bad_targets_and_shapes_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cross_entropy_gives_per_sample_gradients_under_vmap():
    """torch.func.vmap cannot run the target check's data-dependent branch; the loss still
    works there (the instruments' per-sample gradients) and equals a loop of single samples."""
    from torch.func import functional_call, grad, vmap

    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    x, y = torch.randn(7, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (7,), generator=gen)
    params = dict(model.named_parameters())

    def one(p, xi, yi):
        return tl.nn.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per_sample = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(y)):
        loop = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), list(params.values()))
        for name, g in zip(params, loop):
            torch.testing.assert_close(per_sample[name][i], g, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="target 7 at position 0"):
        tl.nn.cross_entropy(model(x), torch.full((7,), 7))
