"""diagnose and escape on problems whose answer is known."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainlab as tl
from trainlab.curvature import diagnose, escape
from trainlab.errors import ConfigError

from toys import Product, linear_saddle, squared_error


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
    model, x, y = linear_saddle()
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
    assert "the density puts" in str(approx) and f"{exact.n_positive:,.0f} positive" in str(exact)


def test_mode_is_restored_and_bad_options_named(small_mlp_problem):
    model, x, y = small_mlp_problem
    model.train()
    diagnose(model, F.cross_entropy, (x, y))
    assert model.training
    with pytest.raises(ConfigError, match="method='exact' is not allowed"):
        diagnose(model, F.cross_entropy, (x, y), method="exact")
    with pytest.raises(ConfigError, match="grad_tol=-1 is not allowed"):
        diagnose(model, F.cross_entropy, (x, y), grad_tol=-1)


# ---------------------------------------------------------------- counts, budgets, convergence

from hypothesis import given, settings, strategies as st  # noqa: E402

from trainlab.curvature import critical  # noqa: E402


def reference_eigenvalues(model, loss_fn, x, y):
    """All eigenvalues of H by torch.func.hessian of the loss as a function of the flat parameters."""
    names, params = zip(*[(name, p.detach()) for name, p in model.named_parameters()])

    def loss(flat):
        chunks = flat.split([p.numel() for p in params])
        weights = {name: c.view_as(p) for name, c, p in zip(names, chunks, params)}
        return loss_fn(torch.func.functional_call(model, weights, (x,)), y)

    H = torch.func.hessian(loss)(torch.cat([p.reshape(-1) for p in params]))
    return torch.linalg.eigvalsh(H)


@settings(max_examples=25, deadline=None)
@given(inputs=st.integers(1, 4), hidden=st.integers(1, 6), outputs=st.integers(1, 3), k=st.integers(1, 120),
       method=st.sampled_from(["auto", "dense", "lanczos"]), max_hvp=st.one_of(st.none(), st.integers(2, 80)),
       seed=st.integers(0, 3))
def test_counts_add_up_to_the_parameter_count_and_k_is_clamped(inputs, hidden, outputs, k, method, max_hvp, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(12, inputs, generator=gen, dtype=torch.float64)
    y = torch.randn(12, outputs, generator=gen, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, outputs)).double()
    n = sum(p.numel() for p in model.parameters())
    try:
        d = diagnose(model, F.mse_loss, (x, y), method=method, k=k, max_hvp=max_hvp, probes=4, steps=20,
                     progress=False)
    except ConfigError as refusal:  # only the exact path asked for explicitly, beyond the budget
        assert method == "dense" and max_hvp is not None and max_hvp < n + 5, refusal
        return
    counts = (d.n_positive, d.n_negative, d.n_flat)
    assert all(c == int(c) and c >= 0 for c in counts) and sum(counts) == n == d.n_params
    assert max_hvp is None or d.n_hvp <= max_hvp
    assert len(d.residuals) == len(d.converged) == len(d.eigenvalues)
    assert d.minimum_ratio_bounds[0] <= d.minimum_ratio <= d.minimum_ratio_bounds[1]
    if d.method == "lanczos" and k > -(-n // 2):
        assert f"k={k:,} clamped to {-(-n // 2):,}" in " ".join(d.notes)
    if d.method == "dense" or len(d.eigenvalues) == n:  # every eigenvalue known: counts exact
        exact = reference_eigenvalues(model, F.mse_loss, x, y)
        torch.testing.assert_close(d.eigenvalues, exact.flip(0), rtol=1e-9, atol=1e-9)
        t = d.flat_threshold
        assert counts == (float((exact > t).sum()), float((exact < -t).sum()), float((exact.abs() <= t).sum()))


@settings(max_examples=200, deadline=None)
@given(p=st.floats(0, 1), q=st.floats(0, 1), proven=st.tuples(st.integers(0, 60), st.integers(0, 60)),
       n=st.integers(1, 200))
def test_reconciled_counts_are_whole_respect_the_proven_ones_and_sum_to_n(p, q, proven, n):
    if p + q > 1 or sum(proven) > n:
        return
    counts = critical._whole(critical._reconciled((p, q), proven, n), n)
    assert sum(counts) == n and min(counts) >= 0
    assert counts[0] >= proven[0] and counts[1] >= proven[1]


def test_k_above_the_parameter_count_on_the_lanczos_path_computes_every_eigenvalue(small_mlp_problem):
    model, x, y = small_mlp_problem  # 57 parameters
    d = diagnose(model, F.cross_entropy, (x, y), method="lanczos", k=100_000, progress=False)
    assert "k=100,000 clamped to 29 of each end" in d.notes[0] and len(d.eigenvalues) == 57
    torch.testing.assert_close(d.eigenvalues, reference_eigenvalues(model, F.cross_entropy, x, y).flip(0),
                               rtol=1e-9, atol=1e-9)
    assert d.n_hvp <= 57 and d.minimum_ratio_stderr == 0 and "clamped" in str(d)


def test_auto_takes_the_exact_path_when_k_covers_the_spectrum(small_mlp_problem):
    model, x, y = small_mlp_problem  # 57 parameters, above dense_max_params=10
    d = diagnose(model, F.cross_entropy, (x, y), dense_max_params=10, k=29, progress=False)
    assert d.method == "dense" and "covers all 57 eigenvalues" in d.notes[0]
    torch.testing.assert_close(d.eigenvalues, reference_eigenvalues(model, F.cross_entropy, x, y).flip(0),
                               rtol=1e-9, atol=1e-9)
    assert d.n_positive + d.n_negative + d.n_flat == 57
    assert diagnose(model, F.cross_entropy, (x, y), dense_max_params=10, k=28, progress=False).method == "lanczos"


def test_the_exact_path_refuses_past_its_time_and_memory_budget(small_mlp_problem, monkeypatch):
    model, x, y = small_mlp_problem
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match=r"the exact path on 57 parameters would take about .* s .* above"
                                          r" max_seconds=1e-09.*use method='lanczos'"):
        diagnose(model, F.cross_entropy, (x, y), method="dense", max_seconds=1e-9, progress=False)
    d = diagnose(model, F.cross_entropy, (x, y), max_seconds=1e-9, k=3, max_hvp=70, progress=False)  # auto: falls back
    assert d.method == "lanczos" and "the Lanczos path is used instead" in d.notes[0]
    assert d.n_hvp <= 70  # the products timing the exact path count too
    monkeypatch.setattr(critical, "DENSE_MAX_BYTES", 1000)
    with pytest.raises(ConfigError, match=r"above the memory limit DENSE_MAX_BYTES=.*use method=.lanczos."):
        diagnose(model, F.cross_entropy, (x, y), method="dense", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_max_hvp_below_the_exact_path_cost(small_mlp_problem):
    model, x, y = small_mlp_problem
    with pytest.raises(ConfigError, match=r"needs 62 Hessian-vector products .* more than max_hvp=40"):
        diagnose(model, F.cross_entropy, (x, y), method="dense", max_hvp=40, progress=False)
    d = diagnose(model, F.cross_entropy, (x, y), max_hvp=40, progress=False)
    assert d.method == "lanczos" and d.n_hvp <= 40 and "more than max_hvp=40" in d.notes[0]
    with pytest.raises(ConfigError, match="max_hvp=0 is not allowed"):
        diagnose(model, F.cross_entropy, (x, y), max_hvp=0)


@pytest.fixture
def least_squares_minimum():
    """Linear least squares at its solution: g = 0, H = 2XᵀX/n positive definite (a minimum)."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(400, 120, generator=gen, dtype=torch.float64) * torch.linspace(0.1, 3, 120, dtype=torch.float64)
    t = torch.randn(400, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(120, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(X, t).solution.T)
    return model, (X, t)


def test_a_verdict_on_an_unconverged_eigenvalue_says_so(least_squares_minimum):
    model, data = least_squares_minimum
    rushed = diagnose(model, F.mse_loss, data, method="lanczos", k=3, max_hvp=8, progress=False)
    assert rushed.verdict == "local_minimum" and rushed.n_hvp <= 8
    assert not bool(rushed.converged[-1]) and float(rushed.residuals[-1]) > 0 and not rushed.certain
    assert "uncertain: λ_min has not converged, so negative curvature may be missed" in str(rushed)
    assert "not converged: residual" in str(rushed)
    assert any("rests on an unconverged eigenvalue" in note for note in rushed.notes)
    settled = diagnose(model, F.mse_loss, data, method="lanczos", k=3, progress=False)
    assert settled.verdict == "local_minimum" and settled.certain and settled.converged.all()
    assert "uncertain" not in str(settled)
    exact = diagnose(model, F.mse_loss, data, progress=False)
    assert exact.certain and exact.converged.all() and (exact.residuals == 0).all()


def test_every_analysis_takes_batch_loss_and_max_samples(small_mlp_problem):
    """Dict batches through batch_loss, cut at max_samples, against the plain (x, y) pair of those samples."""
    model, x, y = small_mlp_problem
    batches = [{"inputs": x[i:i + 8], "labels": y[i:i + 8], "ids": torch.arange(i, i + 8)} for i in range(0, 40, 8)]

    def batch_loss(m, batch):
        return F.cross_entropy(m(batch["inputs"]), batch["labels"])

    hooked = dict(batch_loss=batch_loss, max_samples=20, progress=False)
    plain = (x[:20], y[:20])
    torch.testing.assert_close(tl.curvature.eigs(model, None, batches, k=3, **hooked).values,
                               tl.curvature.eigs(model, F.cross_entropy, plain, k=3, progress=False).values)
    torch.testing.assert_close(tl.curvature.density(model, None, batches, probes=2, steps=10, **hooked).nodes,
                               tl.curvature.density(model, F.cross_entropy, plain, probes=2, steps=10,
                                                    progress=False).nodes)
    assert tl.curvature.trace(model, None, batches, samples=6, **hooked).value == pytest.approx(
        tl.curvature.trace(model, F.cross_entropy, plain, samples=6, progress=False).value, rel=1e-9)
    for method in ("dense", "lanczos"):
        got = diagnose(model, None, batches, method=method, k=3, **hooked)
        want = diagnose(model, F.cross_entropy, plain, method=method, k=3, progress=False)
        assert got.verdict == want.verdict and got.loss == pytest.approx(want.loss, rel=1e-12)
        torch.testing.assert_close(got.eigenvalues, want.eigenvalues)


def test_escape_takes_batch_loss():
    model, x, y = linear_saddle()
    batches = [{"x": x[i:i + 16], "y": y[i:i + 16]} for i in range(0, 64, 16)]

    def batch_loss(m, batch):
        return F.mse_loss(m(batch["x"]), batch["y"])

    d = diagnose(model, None, batches, batch_loss=batch_loss, progress=False)
    e = escape(model, None, batches, d, batch_loss=batch_loss)
    assert d.verdict == "saddle" and e.accepted
    with torch.no_grad():
        assert e.loss_after == pytest.approx(float(F.mse_loss(model(x), y)), rel=1e-12)


def test_lanczos_counts_agree_with_a_converged_extreme_inside_the_flat_band():
    """The Gauss–Newton G of a ReLU MLP is PSD with a cluster at zero: the density's cells straddle
    it, but a converged λ_min inside the flat band means no negative eigenvalue is counted."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (40,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 30), nn.ReLU(), nn.Linear(30, 3)).double()
    d = diagnose(model, F.cross_entropy, (x, y), method="lanczos", k=3, operator="ggn", progress=False)
    exact = diagnose(model, F.cross_entropy, (x, y), method="dense", operator="ggn", progress=False)
    assert bool(d.converged[-1]) and abs(float(d.eigenvalues[-1])) <= d.flat_threshold
    assert d.n_negative == exact.n_negative == 0 and not d.negative_curvature
    assert d.n_positive + d.n_flat == d.n_params
