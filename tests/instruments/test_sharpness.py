"""Curvature instruments against independent references: the dense Hessian from
``torch.func.hessian`` and ``torch.linalg.eigvalsh`` (of ``D^1/2 H D^1/2``, with the optimizer's
scaling ``D`` rebuilt here from its state), the trace of that Hessian, and a state digest
showing that a reading leaves the model untouched."""

import math
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

import trainlab as tl
from trainlab.errors import ConfigError
from trainlab.instruments.sharpness import HessianTrace, Sharpness, Stability, top_eigenpair

from digests import model_digest
from schedule import due


def context(model, x, y, optimizer=None, lr=None, step=0, mode="eval", seed=0, batch_size=None):
    return types.SimpleNamespace(model=model, loss_fn=F.cross_entropy, batch=(x, y), batch_loss=None,
                                 optimizer=optimizer, step=step, lr=lr, batch_size=batch_size, mode=mode, seed=seed,
                                 previous=None)


def problem(seed=0, n=40, width=6):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, width), nn.Tanh(), nn.Linear(width, 3)).double()
    return model, x, y


def dense_hessian(model, x, y):
    """``∇²L`` over the flat parameters, by ``torch.func.hessian`` of a functional loss."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            size = shape.numel()
            params[name] = theta[start:start + size].reshape(shape)
            start += size
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    was = model.training
    model.eval()
    H = hessian(loss)(flat)
    model.train(was)
    return (H + H.T) / 2


def train(model, optimizer, x, y, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_sharpness_is_the_largest_eigenvalue_of_the_dense_hessian():
    model, x, y = problem()
    expected = float(torch.linalg.eigvalsh(dense_hessian(model, x, y))[-1])
    inst = Sharpness(every=1, tol=1e-10)
    first = inst.read(context(model, x, y))
    assert first["value"] == pytest.approx(expected, rel=1e-6)
    assert first["converged"] and not first["warm"] and first["n_hvp"] > 0
    again = inst.read(context(model, x, y))  # warm from the eigenvector itself: a couple of products
    assert again["value"] == pytest.approx(expected, rel=1e-6) and again["warm"] and again["n_hvp"] <= 3


@pytest.mark.parametrize("garbage", [False, True])
def test_top_eigenpair_of_a_matrix_with_negative_extremes_and_restarts(monkeypatch, garbage):
    if garbage:  # the basis starts uninitialised: NaN there must never be read, also across restarts
        empty = torch.empty
        monkeypatch.setattr(torch, "empty", lambda *args, **kw: empty(*args, **kw).fill_(math.nan))
    gen = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(80, 80, generator=gen, dtype=torch.float64))
    values = torch.linspace(-30, 5, 80, dtype=torch.float64)  # |λ_min| ≫ λ_max: the algebraic top is wanted
    A = Q @ torch.diag(values) @ Q.T
    pair = top_eigenpair(lambda v: A @ v, 80, tol=1e-10, max_matvecs=500, basis_size=8, dtype=torch.float64)
    assert pair.value == pytest.approx(5.0, rel=1e-8) and pair.converged
    assert abs(float(pair.vector @ Q[:, -1])) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("basis_bytes", [None, 1])  # a float64 basis (it fits), a float32 one (it does not)
def test_top_eigenpair_of_float32_products_in_either_basis(monkeypatch, basis_bytes):
    from trainlab.instruments import sharpness

    if basis_bytes is not None:
        monkeypatch.setattr(sharpness, "BASIS_BYTES", basis_bytes)
    n = 300
    gen = torch.Generator().manual_seed(2)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    values = torch.cat([torch.linspace(-1, 2, n - 1, dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64)])
    A = (Q @ torch.diag(values) @ Q.T).float()
    seen = set()

    def matvec(v):
        seen.add(v.dtype)
        return A @ v

    pair = top_eigenpair(matvec, n, tol=1e-6, max_matvecs=300, basis_size=30, dtype=torch.float32)
    exact = float(torch.linalg.eigvalsh(A.double())[-1])  # of the float32 matrix itself
    eps = torch.finfo(torch.float32).eps
    assert seen == {torch.float32} and pair.vector.dtype == torch.float32 and pair.converged
    # the products carry float32 rounding, ~√n·ε relative to ‖A‖ = 3
    assert pair.value == pytest.approx(exact, abs=3 * 10 * n ** 0.5 * eps)
    assert abs(float(pair.vector.double() @ Q[:, -1])) == pytest.approx(1.0, abs=1e-3)


def test_a_cold_refresh_catches_an_eigenvalue_that_overtakes_the_tracked_one():
    n = 120
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    rest = torch.linspace(0, 5, n, dtype=torch.float64)

    def matrix(t):  # the top two eigenvalues cross at t = 10; their eigenvectors stay put
        values = rest.clone()
        values[0], values[1] = 10 - 0.1 * t, 8 + 0.1 * t
        return Q @ torch.diag(values) @ Q.T, float(values.max())

    errors = {}
    for refresh in (None, 5):
        inst = Sharpness(every=1, refresh=refresh)
        model = nn.Linear(n, 1, bias=False).double()  # stands in for the operator: products go to the matrix
        worst = 0.0
        for t in range(21):
            A, top = matrix(t)
            pair, _ = inst._tracker.track(lambda v: A @ v, n, 0, torch.device("cpu"), torch.float64)
            worst = max(worst, abs(pair.value - top) / top) if t >= 16 else worst
        errors[refresh] = worst
        del model
    assert errors[None] > 0.05  # warm starts alone stay on the old top
    assert errors[5] < 1e-3  # a cold start at reading 15 finds the new one


def test_warm_started_tracking_on_full_batch_gd_is_cheap_and_accurate(digits):
    x, y = digits[0].tensors[0][:200].double(), digits[0].tensors[1][:200]
    model = tl.nn.mlp(64, [16, 16], 10, activation="tanh", seed=0).double()
    opt = tl.optim.SGD(model.parameters(), lr=0.1)
    inst = Sharpness(every=10)
    costs, errors = [], []
    for reading in range(11):
        r = inst.read(context(model, x, y, opt, lr=0.1))
        cold = tl.curvature.eigs(model, F.cross_entropy, (x, y), k=1, tol=1e-10, seed=reading + 1, progress=False)
        costs.append(r["n_hvp"])
        errors.append(abs(r["value"] - float(cold.values[0])) / float(cold.values[0]))
        train(model, opt, x, y, 10)
    assert sum(costs[1:]) / len(costs[1:]) <= 10, costs
    assert max(errors) <= 1e-3, errors


def test_state_dict_carries_the_warm_start():
    model, x, y = problem()
    inst = Sharpness(every=1, tol=1e-8)
    inst.read(context(model, x, y))
    resumed = Sharpness(every=1, tol=1e-8)
    resumed.load_state_dict(inst.state_dict())
    r = resumed.read(context(model, x, y))
    assert r["warm"] and r["n_hvp"] <= 3
    fresh = Sharpness(every=1, tol=1e-8).read(context(model, x, y))
    assert r["value"] == pytest.approx(fresh["value"], rel=1e-6)


@pytest.mark.parametrize("make, threshold", [
    (lambda p: tl.optim.SGD(p, lr=0.3), 2.0),
    (lambda p: tl.optim.SGD(p, lr=0.3, momentum=0.9), 3.8),
    (lambda p: tl.optim.SGD(p, lr=0.3, momentum=0.5, nesterov=True), 1.5),
    (lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.9, dampening=0.5), 3.8),
])
def test_stability_of_sgd_is_lr_times_lambda_max(make, threshold):
    model, x, y = problem()
    opt = make(model.parameters())
    train(model, opt, x, y, 3)
    lam = float(torch.linalg.eigvalsh(dense_hessian(model, x, y))[-1])
    eta = 0.3 * (1 - opt.param_groups[0].get("dampening", 0.0))
    r = Stability(every=1, tol=1e-10).read(context(model, x, y, opt, lr=0.3))
    assert r["value"] == pytest.approx(eta * lam, rel=1e-6)
    assert r["threshold"] == pytest.approx(threshold) and r["preconditioned"] is False


def adam_p(opt, p):
    s, g = opt.state[p], opt.param_groups[0]
    t, (b1, b2) = float(s["step"]), g["betas"]
    return (1 - b1 ** t) * ((s["exp_avg_sq"] / (1 - b2 ** t)).sqrt() + g["eps"])


def amsgrad_p(opt, p):
    s, g = opt.state[p], opt.param_groups[0]
    t, (b1, b2) = float(s["step"]), g["betas"]
    return (1 - b1 ** t) * ((s["max_exp_avg_sq"] / (1 - b2 ** t)).sqrt() + g["eps"])


def rms_p(opt, p):
    return opt.state[p]["square_avg"].sqrt() + opt.param_groups[0]["eps"]


def centered_p(opt, p):
    s = opt.state[p]
    return (s["square_avg"] - s["grad_avg"] ** 2).sqrt() + opt.param_groups[0]["eps"]


def adagrad_p(opt, p):
    return opt.state[p]["sum"].sqrt() + opt.param_groups[0]["eps"]


@pytest.mark.parametrize("make, p_of, threshold", [
    (lambda p: tl.optim.Adam(p, lr=0.01), adam_p, 38.0),
    (lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99)), adam_p, 18.0),
    (lambda p: torch.optim.AdamW(p, lr=0.01), adam_p, 38.0),
    (lambda p: tl.optim.RMSProp(p, lr=0.01), rms_p, 2.0),
    (lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True), amsgrad_p, 38.0),
    (lambda p: torch.optim.RMSprop(p, lr=0.01), rms_p, 2.0),
    (lambda p: torch.optim.RMSprop(p, lr=0.01, centered=True, momentum=0.5), centered_p, 3.0),
    (lambda p: tl.optim.Adagrad(p, lr=0.05), adagrad_p, 2.0),
    (lambda p: torch.optim.Adagrad(p, lr=0.05), adagrad_p, 2.0),
])
def test_stability_of_adaptive_optimizers_is_the_preconditioned_sharpness(make, p_of, threshold):
    model, x, y = problem()
    opt = make(model.parameters())
    train(model, opt, x, y, 4)
    P = torch.cat([p_of(opt, p).reshape(-1) for p in model.parameters()])
    scale = P.rsqrt()
    H = dense_hessian(model, x, y)
    lam = float(torch.linalg.eigvalsh(scale[:, None] * H * scale[None, :])[-1])  # λ_max(P^-1/2 H P^-1/2)
    lr = opt.param_groups[0]["lr"]
    r = Stability(every=1, tol=1e-10).read(context(model, x, y, opt, lr=lr))
    assert r["preconditioned"] is True and r["converged"]
    assert r["lambda_max"] == pytest.approx(lam, rel=1e-6)
    assert r["value"] == pytest.approx(lr * lam, rel=1e-6)
    assert r["threshold"] == pytest.approx(threshold)


def test_stability_of_gradient_descent_reuses_the_sharpness_read_at_the_same_update():
    model, x, y = problem()
    opt = tl.optim.SGD(model.parameters(), lr=0.3)
    ctx = context(model, x, y, opt, lr=0.3)
    lam = Sharpness(every=1, tol=1e-10).read(ctx)["value"]
    r = Stability(every=1).read(ctx)
    assert r["n_hvp"] == 0 and r["value"] == pytest.approx(0.3 * lam, rel=1e-12)


def test_stability_before_the_first_update_falls_back_to_plain_sharpness():
    model, x, y = problem()
    opt = tl.optim.Adam(model.parameters(), lr=0.01)
    lam = float(torch.linalg.eigvalsh(dense_hessian(model, x, y))[-1])
    r = Stability(every=1, tol=1e-10).read(context(model, x, y, opt, lr=0.01))
    assert r["preconditioned"] is False and "no state" in r["note"]
    assert r["value"] == pytest.approx(0.01 * lam, rel=1e-6)
    with pytest.raises(ConfigError, match="learning rate"):
        Stability(every=1).read(context(model, x, y))


def test_trace_matches_the_dense_hessian():
    model, x, y = problem()
    H = dense_hessian(model, x, y)
    n = len(H)
    r = HessianTrace(every=1, samples=3 * n).read(context(model, x, y))  # Hutch++ sketch spans everything: exact
    assert r["value"] == pytest.approx(float(torch.trace(H)), rel=1e-8)
    rough = HessianTrace(every=1, samples=30, method="hutchinson").read(context(model, x, y))
    assert abs(rough["value"] - float(torch.trace(H))) <= 5 * rough["stderr"]


def test_readings_leave_the_model_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 3)).double()
    x, y = torch.randn(32, 5, dtype=torch.float64), torch.randint(0, 3, (32,))
    opt = tl.optim.Adam(model.parameters(), lr=0.01)
    train(model, opt, x, y, 2)  # training mode: BatchNorm statistics and dropout in use
    model[0].weight.requires_grad_(True)
    before = model_digest(model)
    for inst in (Sharpness(every=1), Stability(every=1), HessianTrace(every=1, samples=6)):
        inst.read(context(model, x, y, opt, lr=0.01))
        assert model_digest(model) == before, inst.name


def test_a_summed_loss_is_refused_at_the_first_reading():
    model, x, y = problem()
    ctx = context(model, x, y)
    ctx.loss_fn = nn.CrossEntropyLoss(reduction="sum")
    with pytest.raises(ConfigError, match="reduction='sum'"):
        Sharpness(every=1).read(ctx)


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="every=0"):
        Sharpness(every=0)
    with pytest.raises(ConfigError, match="tol=2"):
        Stability(tol=2)
    with pytest.raises(ConfigError, match="method='exact'"):
        HessianTrace(method="exact")


def test_instruments_read_through_the_monitor(digits):
    from trainlab.instruments.monitor import Monitor

    model = tl.nn.mlp(64, [16], 10, activation="tanh", seed=0)
    opt = tl.optim.Adam(model.parameters(), lr=1e-3)
    x, y = digits[0].tensors[0][:64], digits[0].tensors[1][:64]
    monitor = Monitor(every=1, sample=64, instruments=[Sharpness(every=2), Stability(every=2), HessianTrace(every=2,
                                                                                                           samples=6)],
                      progress=False)
    readings = []
    for _ in range(4):
        train(model, opt, x, y, 1)
        readings += monitor.after_step(model, None, F.cross_entropy, (x, y), opt, batch_size=64)
    assert [(r.step, r.instrument) for r in readings] == [(step, name) for step in due(2, 4)  # 1 (a baseline), 2, 4
                                                          for name in ("sharpness", "stability", "trace")]
    assert all("error" not in r.extra for r in readings), [r.extra for r in readings]
    assert readings[-3].extra["warm"] and readings[-2].extra["preconditioned"]
    assert monitor.state_dict()["instruments"]["sharpness"]["vector"] is not None
