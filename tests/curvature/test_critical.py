"""diagnose and escape on problems whose answer is known."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainlab as tl
from trainlab.curvature import diagnose, escape
from trainlab.errors import ConfigError

from toys import Product, squared_error


class Point(nn.Module):
    """The parameters themselves as the output: with loss_fn a function of θ, L(θ) is anything."""

    def __init__(self, theta):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x):
        return self.theta


def quadratic(A):
    return lambda theta, _: 0.5 * theta @ A @ theta


DUMMY = (torch.zeros(1), torch.zeros(1))
A = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64))


def test_lecture_toy_is_a_saddle_and_escape_lowers_the_loss(toy):
    model, data = toy
    d = tl.diagnose(model, squared_error, data)
    assert d.verdict == "saddle" and d.grad_norm == 0 and d.loss == 1.0
    torch.testing.assert_close(d.eigenvalues, torch.tensor([2.0, -2.0], dtype=torch.float64))
    assert (d.n_positive, d.n_negative, d.n_flat, d.minimum_ratio) == (1, 1, 0, 0.5)
    assert d.negative_curvature and d.exact and "verdict: saddle" in str(d)
    u = d.escape_directions[0]
    assert abs(float(u[0])) == pytest.approx(2 ** -0.5) and float(u[0] * u[1]) > 0  # ∝ (1, 1)
    e = tl.escape(model, squared_error, data, d)
    assert e.accepted and e.loss_after < e.loss_before
    assert e.curvature == pytest.approx(-2.0) and e.predicted_change == pytest.approx(0.5 * -2.0 * e.step ** 2)
    w1, w2 = (float(w.detach()) for w in model.w)
    assert e.loss_after == pytest.approx((1 - w1 * w2) ** 2)


def test_convex_quadratic_is_a_local_minimum_and_its_negation_a_maximum():
    zero = torch.zeros(3, dtype=torch.float64)
    d = diagnose(Point(zero), quadratic(A), DUMMY)
    assert d.verdict == "local_minimum" and d.minimum_ratio == 1.0 and not d.negative_curvature
    torch.testing.assert_close(d.eigenvalues, torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64))
    d = diagnose(Point(zero), quadratic(-A), DUMMY)
    assert d.verdict == "local_maximum" and d.minimum_ratio == 0.0 and d.n_negative == 3
    with pytest.raises(ConfigError, match="no negative curvature to escape along.*local minimum"):
        escape(Point(zero), quadratic(A), DUMMY, diagnose(Point(zero), quadratic(A), DUMMY))


def test_three_weights_at_zero_are_degenerate():
    d = diagnose(Product(3), squared_error, (torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)))
    assert d.verdict == "degenerate" and d.n_flat == 3 and d.grad_norm == 0


def test_away_from_a_critical_point_and_its_negative_curvature_still_reported():
    theta = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    B = torch.diag(torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64))
    d = diagnose(Point(theta), quadratic(B), DUMMY)
    assert d.verdict == "not_critical" and d.grad_norm == pytest.approx(1.0)
    assert d.negative_curvature  # reported, though away from a critical point the gradient is the way down
    model = Point(theta)
    with pytest.raises(ConfigError, match=r"escape refused: the gradient norm 1 is above grad_tol=0.001.*force=True"):
        escape(model, quadratic(B), DUMMY, d)
    assert torch.equal(model.theta.detach(), theta)
    e = escape(model, quadratic(B), DUMMY, d, force=True)
    assert e.accepted and e.loss_after < e.loss_before and "forced" in str(e)


def test_flat_directions_are_counted_and_allowed_at_a_minimum():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    X[:, 2] = 0  # a constant input feature: its weight has no curvature
    t = X @ torch.tensor([[1.0], [2.0], [0.0], [-1.0]], dtype=torch.float64)
    model = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0, 0.7, -1.0]], dtype=torch.float64))
    d = diagnose(model, F.mse_loss, (X, t))
    assert d.verdict == "local_minimum" and d.n_flat == 1 and d.n_positive == 3
    assert d.minimum_ratio == 0.75


def test_escape_moves_every_interchangeable_unit():
    """A linear network at zero: one negative eigenvalue per hidden unit; all units must leave zero."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(3, 2, generator=gen, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)).double()
    for p in model.parameters():
        nn.init.zeros_(p)
    d = diagnose(model, F.mse_loss, (x, y))
    assert d.verdict == "saddle" and d.grad_norm == 0
    smallest = d.escape_eigenvalues.min()
    assert int((d.escape_eigenvalues - smallest).abs().le(1e-9).sum()) == 4  # repeated: one per hidden unit
    e = escape(model, F.mse_loss, (x, y), d)
    assert e.accepted and e.loss_after < e.loss_before
    assert (model[0].weight.norm(dim=1) > 1e-3).all() and (model[1].weight.norm(dim=0) > 1e-3).all()


def test_lanczos_path_agrees_with_the_exact_path(digits):
    train, _ = digits
    x, y = train.tensors[0][:300].double(), train.tensors[1][:300]
    model = tl.nn.mlp(64, [16], 10, activation="tanh", seed=0).double()
    opt = tl.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    exact = diagnose(model, F.cross_entropy, (x, y), grad_tol=1.0)
    approx = diagnose(model, F.cross_entropy, (x, y), grad_tol=1.0, method="lanczos", k=5, probes=20)
    assert exact.method == "dense" and approx.method == "lanczos" and exact.n_params == 1210
    assert approx.verdict == exact.verdict == "saddle"
    assert float(approx.eigenvalues[0]) == pytest.approx(float(exact.eigenvalues[0]), rel=1e-6)
    assert float(approx.eigenvalues[-1]) == pytest.approx(float(exact.eigenvalues[-1]), rel=1e-6)
    low, high = approx.minimum_ratio_bounds
    assert approx.minimum_ratio_stderr > 0 and low <= approx.minimum_ratio <= high
    assert low - 4 * approx.minimum_ratio_stderr <= exact.minimum_ratio <= high + 4 * approx.minimum_ratio_stderr
    assert exact.minimum_ratio_bounds == (exact.minimum_ratio, exact.minimum_ratio)
    assert "estimated" in str(approx)


def test_mode_is_restored_and_bad_options_named(small_mlp_problem):
    model, x, y = small_mlp_problem
    model.train()
    diagnose(model, F.cross_entropy, (x, y))
    assert model.training
    with pytest.raises(ConfigError, match="method='exact' is not allowed"):
        diagnose(model, F.cross_entropy, (x, y), method="exact")
    with pytest.raises(ConfigError, match="grad_tol=-1 is not allowed"):
        diagnose(model, F.cross_entropy, (x, y), grad_tol=-1)
