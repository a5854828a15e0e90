"""trainlab BatchNorm against torch.nn.BatchNorm1d/2d: forward, backward, buffers, state_dict."""

import math

import pytest
import torch

import trainlab as tl
from tolerance import close

CASES = [  # (ours, torch's, input shape)
    (tl.nn.BatchNorm1d, torch.nn.BatchNorm1d, (32, 6)),
    (tl.nn.BatchNorm1d, torch.nn.BatchNorm1d, (16, 6, 5)),
    (tl.nn.BatchNorm2d, torch.nn.BatchNorm2d, (8, 6, 4, 3)),
]


def assert_matches(a, b, n):
    """Equal up to the rounding of reductions over ``n`` values (a channel's batch statistics), relative to
    the largest value compared: elements near zero come from the same cancelling sums."""
    torch.testing.assert_close(a, b, **close(b.dtype, n, scale=float(b.abs().max())))


def pair(ours_cls, torch_cls, dtype, **kwargs):
    ours, theirs = ours_cls(6, **kwargs).to(dtype), torch_cls(6, **kwargs).to(dtype)
    if ours.affine:  # non-trivial γ, β so their gradients are tested
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for a, b in ((ours.weight, theirs.weight), (ours.bias, theirs.bias)):
                a.copy_(torch.randn(6, generator=gen, dtype=dtype))
                b.copy_(a)
    return ours, theirs


def step(module, x, dy):
    x = x.clone().requires_grad_()
    y = module(x)
    y.backward(dy)
    grads = [x.grad] + [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    return y.detach(), grads


@pytest.mark.parametrize("ours_cls, torch_cls, shape", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kwargs", [{}, {"affine": False}, {"momentum": None}, {"track_running_stats": False},
                                    {"momentum": 0.3, "eps": 1e-3}])
def test_train_then_eval_matches_torch(ours_cls, torch_cls, shape, dtype, kwargs):
    ours, theirs = pair(ours_cls, torch_cls, dtype, **kwargs)
    per_channel = math.prod(shape) // shape[1]  # values each channel's statistics reduce
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):  # 20 training steps: outputs, all gradients, running buffers
        x = (torch.randn(shape, generator=gen, dtype=dtype) * 3 + 2)
        dy = torch.randn(shape, generator=gen, dtype=dtype)
        (ya, ga), (yb, gb) = step(ours, x, dy), step(theirs, x, dy)
        assert_matches(ya, yb, per_channel)
        for a, b in zip(ga, gb):
            assert_matches(a, b, per_channel)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a is None) == (b is None)
        if a is not None and a.is_floating_point():
            assert_matches(a, b, 20 * per_channel)  # running averages over the 20 steps
        elif a is not None:
            assert torch.equal(a, b)  # a count
    ours.eval(), theirs.eval()
    x, dy = torch.randn(shape, generator=gen, dtype=dtype), torch.randn(shape, generator=gen, dtype=dtype)
    (ya, ga), (yb, gb) = step(ours, x, dy), step(theirs, x, dy)
    assert_matches(ya, yb, 20 * per_channel)  # normalised by the running statistics
    for a, b in zip(ga, gb):
        assert_matches(a, b, 20 * per_channel)


@pytest.mark.parametrize("ours_cls, torch_cls, shape", CASES)
def test_hessian_vector_products_in_training_mode_match_torch(ours_cls, torch_cls, shape):
    """Second derivatives through batch statistics (create_graph=True), in float64."""
    ours, theirs = pair(ours_cls, torch_cls, torch.float64)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    target = torch.randn(shape, generator=gen, dtype=torch.float64)
    v = [torch.randn(shape, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)]
    results = []
    for module in (ours, theirs):
        xi = x.clone().requires_grad_()
        loss = ((module(xi) - target) ** 3).mean()  # cubic, so the Hessian depends on where we are
        gx, gw = torch.autograd.grad(loss, (xi, module.weight), create_graph=True)
        results.append(torch.autograd.grad((gx * v[0]).sum() + (gw * v[1]).sum(), (xi, module.weight, module.bias)))
    for a, b in zip(*results):
        assert_matches(a, b, math.prod(shape))  # the mean loss and the batch statistics


@pytest.mark.parametrize("ours_cls, torch_cls, shape", CASES)
def test_state_dict_loads_both_ways(ours_cls, torch_cls, shape):
    theirs = torch_cls(6)
    for _ in range(3):
        theirs(torch.randn(shape) * 2 + 1)
    ours = ours_cls(6)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    back = torch_cls(6)
    back.load_state_dict(ours.state_dict())
    ours.eval(), back.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), back(x))
    assert int(ours.num_batches_tracked) == 3


def test_batch_of_one_in_training_is_refused_as_torch_does():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch.nn.BatchNorm1d(4)(torch.randn(1, 4))
    with pytest.raises(ValueError, match=r"needs more than 1 value per channel when training.*shape \(1, 4\)"):
        tl.nn.BatchNorm1d(4)(torch.randn(1, 4))
    bn = tl.nn.BatchNorm1d(4).eval()
    assert bn(torch.randn(1, 4)).shape == (1, 4)  # evaluation uses the running statistics


@pytest.mark.parametrize("module, x, match", [
    (tl.nn.BatchNorm1d(4), torch.randn(2, 4, 3, 3), r"expects a 2D or 3D input"),
    (tl.nn.BatchNorm2d(4), torch.randn(2, 4), r"expects a 4D input"),
    (tl.nn.BatchNorm1d(4), torch.randn(2, 5), r"BatchNorm1d\(4\) got 5 channels"),
])
def test_wrong_shapes_are_named(module, x, match):
    with pytest.raises(ValueError, match=match):
        module(x)


def test_lecture_moving_average_with_p():
    """μ̄ ← p μ̄ + (1 − p) μ with p = 1 − momentum, computed by hand."""
    bn = tl.nn.BatchNorm1d(3, momentum=0.1)
    expected = torch.zeros(3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(10, 3, generator=gen) + 4
        bn(x)
        expected = 0.9 * expected + 0.1 * x.mean(0)
    assert_matches(bn.running_mean, expected, 5 * 10)  # float32 means of 10 samples over 5 updates


def test_mlp_with_batch_norm_trains(digits):
    train, test = digits
    model = tl.nn.mlp(64, [32], 10, batch_norm=True, seed=0)
    summary = tl.train.Trainer(model, tl.optim.Adam(model.parameters(), lr=1e-2), tl.nn.cross_entropy, train, 64, 5,
                               eval_data=test, progress=False).fit()
    assert summary["eval_accuracy"] > 0.9
