"""The edge-of-stability experiment: its λ_max readings against a dense eigensolve, gradient descent
on a quadratic (constant sharpness, stable iff η < 2/λ_max), and the quick run's result."""

import json
import math

import numpy as np
import pytest
import torch

import trainlab as tl
from trainlab.experiments import sharpness
from trainlab.experiments.result import Config
from trainlab.experiments.statistics import VERDICTS
from trainlab.report.plots import problems


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_lambda_max_at_a_checkpoint_matches_a_dense_eigensolve():
    data = sharpness.digits(200, seed=0)
    model = sharpness.network(0, widths=(16, 16))  # 1,482 parameters: a dense Hessian is cheap
    run = sharpness.descend(model, data, lr=0.6, updates=60, read=lambda t: t % 20 == 0, seed=0)
    assert run.diverged is None and list(run.steps) == [0, 20, 40, 60]
    dense = tl.curvature.hessian(run.model, sharpness.half_mse, data)  # the checkpoint after 60 updates
    top = float(torch.linalg.eigvalsh(dense.double())[-1])
    assert run.sharpness[-1] == pytest.approx(top, rel=2e-3)
    assert run.sharpness[-1] <= top * (1 + 1e-5)  # a Ritz value never exceeds λ_max (up to float32 rounding)
    fresh = sharpness.network(0, widths=(16, 16))  # the same weights as at update 0
    initial = float(torch.linalg.eigvalsh(tl.curvature.hessian(fresh, sharpness.half_mse, data).double())[-1])
    assert run.sharpness[0] == pytest.approx(initial, rel=2e-3)


def test_lambda_max_of_the_experiments_network_matches_thick_restart_lanczos():
    # the experiment's own 64-64-64-10 network (13,130 parameters: too large for a dense Hessian in a test)
    # at the edge of stability, against trainlab.curvature.eigs run to a tight tolerance
    data = sharpness.digits(sharpness.QUICK["samples"], seed=0)
    run = sharpness.descend(sharpness.network(0), data, lr=0.6, updates=120, read=lambda t: t % 40 == 0, seed=0)
    # float32: tol ≥ 2ε (2.4e-7), the floor of a residual a float32 vector can show
    top = tl.curvature.eigs(run.model, sharpness.half_mse, data, k=1, tol=1e-6, progress=False)
    assert top.converged[0] and run.sharpness[-1] == pytest.approx(float(top.values[0]), rel=2e-3)
    assert run.sharpness[-1] * 0.6 / 2 > 0.9  # it is at the edge: λ_max ≈ 2/η


def _linear(seed: int) -> torch.nn.Sequential:
    return sharpness.network(seed, widths=())


def test_gradient_descent_on_a_quadratic_is_stable_iff_eta_below_two_over_lambda():
    # a linear model with ½‖Wx + b − y‖² (mean): H = I₁₀ ⊗ E[(x, 1)(x, 1)ᵀ], constant — no sharpening
    x, y = data = sharpness.digits(300, seed=0)
    z = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    lam = float(torch.linalg.eigvalsh(z.T @ z / len(z))[-1])
    stable = sharpness.descend(_linear(0), data, lr=1.8 / lam, updates=200, read=lambda t: t in (0, 200), seed=0)
    assert stable.diverged is None
    assert stable.sharpness == pytest.approx([lam, lam], rel=2e-3)
    assert stable.losses[-1] < stable.losses[0]
    unstable = sharpness.descend(_linear(0), data, lr=2.2 / lam, updates=2000, read=lambda t: t == 0, seed=0)
    assert unstable.diverged is not None  # the error along the top eigenvector grows by |1 − ηλ| = 1.2 per update
    assert unstable.losses[-1] > 1e3 * unstable.losses[0] or not math.isfinite(unstable.losses[-1])


def test_warmup_rate_follows_the_linear_schedule():
    data = sharpness.digits(100, seed=0)
    run = sharpness.descend(sharpness.network(0, widths=(8,)), data, lr=0.5, updates=12, read=lambda t: True,
                            warmup=10, seed=0)
    assert run.rates == pytest.approx([0.5 * min(1.0, (t + 1) / 10) for t in range(13)])


def test_quick_run_decides_four_claims_over_five_seeds():
    result = sharpness.run(Config(quick=True, seed=0, progress=False))
    assert result.name == "sharpness" and result.seconds > 0
    assert len(result.claims) == 4
    for claim in result.claims:
        assert claim.verdict in VERDICTS and "5 seeds" in claim.interval and claim.evidence
    rising, hovering, falling, oscillating = result.claims
    assert rising.verdict == "held" and falling.verdict == "held" and oscillating.verdict == "held"
    assert hovering.verdict != "not held"  # the mean sits a few % above 2/η: held or inconclusive, never below
    rows = result.tables["edge"].rows
    assert [row[0] for row in rows] == list(sharpness.QUICK["rates"])
    for row in rows:
        assert row[1] == pytest.approx(2 / row[0])
        assert row[2] < row[1]  # λ₀ below 2/η: gradient descent starts stable
        assert 0.9 < row[4] < 1.1  # the second half hovers at 2/η
    assert set(result.figures) == {"sharpness", "loss"}
    for name, (title, fig) in result.figures.items():
        assert problems(fig) == [], name
    doc = json.loads(json.dumps(result.to_json(), default=float))
    assert len(doc["claims"]) == 4 and all(np.isfinite(r[4]) for r in doc["tables"]["edge"]["rows"])
