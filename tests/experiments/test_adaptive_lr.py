"""The adaptive-learning-rate experiment: the descent on the lecture's valley against independent
computations, and the warm-up claims decided over five seeds."""

import json

import numpy as np
import pytest
import torch

import trainlab as tl
from trainlab.experiments import adaptive_lr, sharpness
from trainlab.experiments.result import Config
from trainlab.experiments.statistics import VERDICTS
from trainlab.report.plots import problems


@pytest.fixture(scope="module")
def quick():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return adaptive_lr.run(Config(quick=True, seed=0, progress=False))
    finally:
        torch.set_num_threads(before)


def test_descend_matches_a_plain_gradient_descent_and_stops_at_the_last_finite_point():
    design = torch.stack([torch.ones_like(adaptive_lr.X), adaptive_lr.X], 1)
    lam = float(torch.linalg.eigvalsh(2 * design.T @ design)[-1])
    path, losses = adaptive_lr.descend(lambda ps: tl.optim.SGD(ps, lr=1.5 / lam), 50)
    p = torch.tensor(adaptive_lr.START, dtype=torch.float64)
    for _ in range(50):
        p = p - 1.5 / lam * adaptive_lr.gradient(p)
    assert torch.allclose(path[-1], p, rtol=1e-12) and len(path) == 51
    assert losses[-1] == pytest.approx(float(adaptive_lr.loss(*p)), rel=1e-12)
    # η > 2/λ_max: the error along the steep direction grows by |1 − ηλ| = 2 per update until it overflows
    path, losses = adaptive_lr.descend(lambda ps: tl.optim.SGD(ps, lr=3.0 / lam), 1500)
    assert 100 < len(path) < 1501 and bool(torch.isfinite(path).all()) and len(losses) == len(path)


def test_rmsprop_and_adam_at_a_constant_rate_do_not_settle(quick):
    rows = {row[0]: row for row in quick.tables["descent"].rows}
    rmsprop = next(row for name, row in rows.items() if name.startswith("RMSProp"))
    adam = next(row for name, row in rows.items() if name.startswith("Adam"))
    assert 0.005 < rmsprop[4] < 0.5  # the oscillation's distance: of the order of η = 0.05
    assert adam[7] > 1.5  # after reaching the optimum the loss jumps above 1.5× its lowest value
    claims = {c.text.split(" ")[0]: c for c in quick.claims}
    assert claims["RMSProp"].held and claims["Adam"].held
    assert "reach the optimum too" not in " ".join(c.text for c in quick.claims)


def test_warmup_claims_are_decided_over_five_seeds(quick):
    warm = [c for c in quick.claims if "warm-up" in c.text.lower() and c.interval]
    assert len(warm) == 3
    for claim in warm:
        assert claim.verdict in VERDICTS and "5 seeds" in claim.interval
    rescue, mechanism, _ = warm
    assert rescue.verdict == "held" and mechanism.verdict == "held"
    none, warmed, stable = quick.tables["warmup"].rows
    assert none[2] == 5 and none[3] == "diverged"  # η = 1 without warm-up: every seed diverges
    assert warmed[2] == 0 and warmed[5] < warmed[4] / 2  # with it: none, and λ_max halves by the warm-up's end
    assert stable[1] == pytest.approx(2 / none[4], rel=0.1)  # the constant η is 2/λ₀ of each network


def test_the_warmup_network_is_sharp_at_initialisation():
    data = sharpness.digits(250, seed=0)
    model = sharpness.network(0, scale=adaptive_lr.WARM_SCALE)
    default = sharpness.network(0)
    lam = [float(tl.curvature.eigs(m, sharpness.half_mse, data, k=1, progress=False).values[0]) for m in (model, default)]
    assert lam[0] * adaptive_lr.WARM_LR > 5 and lam[1] * adaptive_lr.WARM_LR < 5  # η·λ₀ far above 2 only there
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            assert float(layer.weight.detach().std()) == pytest.approx(layer.in_features ** -0.5, rel=0.15)


def test_figures_read_on_their_own_and_the_result_serialises(quick):
    assert {"valley", "distance", "schedules", "transformer_schedule", "warmup_sharpness",
            "warmup_loss"} == set(quick.figures)
    for name, (title, fig) in quick.figures.items():
        assert problems(fig) == [], name
        assert "^" not in title, name  # formulas as Unicode, not TeX-ish markup
    assert all("^" not in c.text for c in quick.claims)
    doc = json.loads(json.dumps(quick.to_json(), default=float))
    assert len(doc["claims"]) == 10 and np.isfinite(doc["tables"]["descent"]["rows"][0][4])
