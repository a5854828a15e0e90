"""alpha (Cockpit's α) against closed forms: an exact quadratic along the step, gradient descent on
an isotropic quadratic (α = ηλ − 1), and an Adam step on an anisotropic least-squares loss, where
τ* = −∇L(θ₀)·Δθ / (Δθᵀ H Δθ) is computed from H itself. Also: the model is left as it was."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from trainlab.instruments import Alpha, Context, Monitor
from trainlab.instruments.alpha import alpha_of, quadratic_fit

from tolerance import tol

#: float64 rounding of O(1) losses and slopes (sums over at most 64 terms), times a margin of 100 for
#: the conditioning of the 4 × 3 least-squares fit and of α = 1/τ* − 1 at the τ* used here (≥ 1/3).
ATOL = tol(torch.float64, 64, scale=100.0)


@pytest.mark.parametrize("tau", [0.25, 0.5, 1.0, 2.0, 4.0])
def test_alpha_of_an_exact_quadratic_is_one_over_tau_minus_one(tau):
    # ℓ(τ) = 3 (τ − τ*)² + 0.7: values and slopes at τ = 0 and 1
    ell = lambda t: 3 * (t - tau) ** 2 + 0.7  # noqa: E731
    slope = lambda t: 6 * (t - tau)  # noqa: E731
    a, b, c, rms = quadratic_fit(ell(0), ell(1), slope(0), slope(1))
    assert (a, b, c) == pytest.approx((3, -6 * tau, 3 * tau ** 2 + 0.7), abs=ATOL * (1 + tau ** 2))
    assert rms == pytest.approx(0, abs=ATOL * (1 + tau ** 2))
    alpha, tau_min = alpha_of(ell(0), ell(1), slope(0), slope(1))
    assert tau_min == pytest.approx(tau, abs=ATOL)
    assert alpha == pytest.approx(1 / tau - 1, abs=ATOL)  # −1 at start … 0 at the minimum … 1 at the mirror point


def test_alpha_of_a_fit_without_minimum_is_nan():
    assert all(math.isnan(v) for v in alpha_of(1.0, 0.0, -1.0, -1.0))  # linear: a = 0
    assert all(math.isnan(v) for v in alpha_of(1.0, -0.5, -1.0, -2.0))  # concave


def test_alpha_of_a_noisy_fit_is_the_least_squares_one():
    # four observations no quadratic passes through: the normal equations solved by hand
    f0, f1, d0, d1 = 1.0, 0.8, -1.0, 0.1
    A = torch.tensor([[0, 0, 1], [1, 1, 1], [0, 1, 0], [2, 1, 0]], dtype=torch.float64)
    y = torch.tensor([f0, f1, d0, d1], dtype=torch.float64)
    a, b, _ = torch.linalg.solve(A.T @ A, A.T @ y).tolist()
    alpha, tau = alpha_of(f0, f1, d0, d1)
    assert tau == pytest.approx(-b / (2 * a), abs=ATOL)
    assert alpha == pytest.approx(1 / tau - 1, abs=ATOL)


def isotropic(lam=4.0, d=6):
    """L(w) = (1/d) Σ_i (s w_i − y_i)² on the rows s·e_i: the Hessian is λ I with λ = 2 s²/d."""
    s = math.sqrt(lam * d / 2)
    x = s * torch.eye(d, dtype=torch.float64)
    y = torch.linspace(-1, 2, d, dtype=torch.float64).unsqueeze(1)
    return TensorDataset(x, y)


def linear(d, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(d, 1, bias=False).double()


@pytest.mark.parametrize("k, expected", [(1.0, 0.0), (2.0, 1.0), (0.5, -0.5), (1.5, 0.5)])
def test_gradient_descent_on_a_quadratic_lands_at_eta_lambda_minus_one(k, expected):
    lam, ds = 4.0, isotropic()
    m = linear(6)
    opt = torch.optim.SGD(m.parameters(), lr=k / lam)
    monitor = Monitor(every=1, sample=6, instruments=[Alpha()])
    x, y = ds.tensors
    monitor.start(m, 0)  # keeps the parameters before the first update (one step: η = 1/λ lands at w*)
    loss = F.mse_loss(m(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    (r,) = monitor.after_step(m, loss, F.mse_loss, ds, opt)
    assert r.step == 1 and r.instrument == "alpha"
    assert r.value == pytest.approx(expected, abs=ATOL)
    assert r.extra["tau_min"] == pytest.approx(1 / k, abs=ATOL)
    assert r.extra["curvature"] == pytest.approx(lam, rel=ATOL)  # the fit's curvature along the step is λ
    assert r.extra["fit_rms"] == pytest.approx(0, abs=ATOL)


def test_an_adam_step_on_an_anisotropic_quadratic_matches_the_closed_form():
    g = torch.Generator().manual_seed(1)
    n, d = 40, 5
    scales = torch.tensor([3.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scales
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    m = linear(d, seed=3)
    opt = torch.optim.Adam(m.parameters(), lr=0.3)
    for _ in range(3):
        opt.zero_grad()
        F.mse_loss(m(x), y).backward()
        opt.step()
    w0 = m.weight.detach().clone()
    opt.zero_grad()
    F.mse_loss(m(x), y).backward()
    opt.step()
    delta = (m.weight.detach() - w0).reshape(-1)
    # reference: L(w) = (1/n)‖Xw − y‖², ∇L = (2/n) Xᵀ(Xw − y), H = (2/n) XᵀX
    grad0 = (2 / n) * x.T @ (x @ w0.reshape(-1, 1) - y)
    H = (2 / n) * x.T @ x
    tau = float(-(grad0.reshape(-1) @ delta) / (delta @ H @ delta))
    out = Alpha().read(Context(m, F.mse_loss, (x, y), previous={"weight": w0}))
    assert out["tau_min"] == pytest.approx(tau, abs=ATOL)
    assert out["value"] == pytest.approx(1 / tau - 1, abs=ATOL)
    assert out["step_norm"] == pytest.approx(float(delta.norm()), rel=ATOL)


def test_a_reading_leaves_the_model_as_it_was_in_train_mode_with_dropout_and_batch_norm():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 5, generator=g), torch.randint(0, 3, (30,), generator=g)
    previous = {k: p.detach().clone() for k, p in m.named_parameters()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    m.eval()
    m[0].weight.grad = torch.ones_like(m[0].weight)
    params = {k: p.detach().clone() for k, p in m.state_dict().items()}
    rng = torch.get_rng_state()
    out = Alpha().read(Context(m, F.cross_entropy, (x, y), mode="train", previous=previous))
    assert math.isfinite(out["value"])
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in params.items())  # parameters and BatchNorm buffers
    assert not m.training and torch.equal(m[0].weight.grad, torch.ones_like(m[0].weight))
    assert m[1].weight.grad is None and torch.equal(torch.get_rng_state(), rng)
    # the same dropout masks at both ends: a second reading is identical
    again = Alpha().read(Context(m, F.cross_entropy, (x, y), mode="train", previous=previous))
    assert again == out
    # and it is the fit of the losses and slopes with the masks of the seed 0 at both ends
    torch.manual_seed(0)
    m.train()
    f1 = F.cross_entropy(m(x), y)
    grads1 = torch.autograd.grad(f1, list(m.parameters()))
    now = {k: p.detach().clone() for k, p in m.named_parameters()}
    with torch.no_grad():
        for k, p in m.named_parameters():
            p.copy_(previous[k])
    torch.manual_seed(0)
    f0 = F.cross_entropy(m(x), y)
    grads0 = torch.autograd.grad(f0, list(m.parameters()))
    delta = [now[k] - previous[k] for k in now]
    d0 = sum(float((g.double() * d.double()).sum()) for g, d in zip(grads0, delta))
    d1 = sum(float((g.double() * d.double()).sum()) for g, d in zip(grads1, delta))
    assert (out["loss_before"], out["loss_after"]) == (float(f0.detach()), float(f1.detach()))
    assert out["slope_before"] == pytest.approx(d0, abs=tol(torch.float32, 64, scale=abs(d0) + 1))
    assert out["slope_after"] == pytest.approx(d1, abs=tol(torch.float32, 64, scale=abs(d1) + 1))


def test_a_zero_step_reads_nan_with_a_note():
    m = linear(3)
    out = Alpha().read(Context(m, F.mse_loss, (torch.ones(4, 3, dtype=torch.float64),
                                              torch.zeros(4, 1, dtype=torch.float64)),
                               previous={k: p.detach().clone() for k, p in m.named_parameters()}))
    assert math.isnan(out["value"]) and out["step_norm"] == 0 and "did not move" in out["note"]


def test_alpha_is_read_every_few_updates_once_the_previous_parameters_are_kept():
    lam, ds = 4.0, isotropic()
    m = linear(6)
    opt = torch.optim.SGD(m.parameters(), lr=0.5 / lam)
    monitor = Monitor(every=10, sample=6, instruments=[Alpha(every=3)])
    x, y = ds.tensors
    readings = []
    for _ in range(9):
        loss = F.mse_loss(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        readings += monitor.after_step(m, loss, F.mse_loss, ds, opt)
    assert [r.step for r in readings] == [3, 6, 9]
    assert all(r.value == pytest.approx(-0.5, abs=ATOL) for r in readings)
