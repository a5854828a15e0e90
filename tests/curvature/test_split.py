"""diagnose sets λ_min of the Hessian beside that of the Gauss–Newton G (H = G + R) at a saddle,
and says where the negative curvature comes from; operator= on the analyses."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import trainlab as tl
from trainlab.errors import ConfigError
from toys import linear_saddle, squared_error


@pytest.mark.parametrize("method", ["dense", "lanczos"])
def test_at_the_linear_saddle_g_is_zero_so_the_negative_curvature_comes_from_r(method):
    model, x, y = linear_saddle()  # J = 0 at zero weights: G = 0, H = R
    d = tl.diagnose(model, squared_error, (x, y), method=method, k=4, progress=False)
    assert d.verdict == "saddle" and d.ggn_lambda_min is not None
    assert abs(d.ggn_lambda_min) <= 1e-10 and d.ggn_converged
    assert float(d.eigenvalues[-1]) < -0.1
    text = str(d)
    assert "of the Gauss–Newton G" in text and "comes from R = H − G" in text


def test_g_with_negative_curvature_is_said_to_come_from_the_loss():
    model, x, y = linear_saddle()
    d = tl.diagnose(model, squared_error, (x, y), progress=False)
    shown = str(dataclasses.replace(d, ggn_lambda_min=-0.5))
    assert "the loss is not convex in the outputs" in shown


def test_no_split_away_from_a_critical_point_nor_without_loss_fn(small_mlp_problem):
    model, x, y = small_mlp_problem
    d = tl.diagnose(model, F.cross_entropy, (x, y), progress=False)
    assert d.verdict == "not_critical" and d.ggn_lambda_min is None
    model, x, y = linear_saddle()
    d = tl.diagnose(model, None, (x, y), batch_loss=lambda m, b: squared_error(m(b[0]), b[1]), progress=False)
    assert d.verdict == "saddle" and d.ggn_lambda_min is None


def test_split_costs_are_counted_and_within_max_hvp():
    model, x, y = linear_saddle()
    d = tl.diagnose(model, squared_error, (x, y), method="lanczos", k=2, max_hvp=120, progress=False)
    assert d.n_hvp <= 120


def test_operator_ggn_on_diagnose_and_eigs_is_psd_and_matches_dense(small_mlp_problem):
    model, x, y = small_mlp_problem
    d = tl.diagnose(model, F.cross_entropy, (x, y), operator="ggn", progress=False)
    assert d.operator == "ggn" and "Gauss–Newton G" in str(d)
    assert float(d.eigenvalues[-1]) >= -1e-10 * float(d.eigenvalues[0])
    e = tl.curvature.eigs(model, F.cross_entropy, (x, y), k=3, operator="ggn", tol=1e-10, progress=False)
    assert torch.allclose(e.values, d.eigenvalues[:3], rtol=1e-8, atol=1e-10)
    t = tl.curvature.trace(model, F.cross_entropy, (x, y), operator="fisher", samples=3 * d.n_params, progress=False)
    G = tl.curvature.gauss_newton.FisherOperator(model, F.cross_entropy, (x, y))
    assert t.value == pytest.approx(float(torch.diagonal(tl.curvature.products.dense(G)).sum()), rel=1e-8)


def test_escape_refuses_a_diagnosis_of_another_operator():
    model, x, y = linear_saddle()
    d = tl.diagnose(model, squared_error, (x, y), progress=False)
    with pytest.raises(ConfigError, match="operator='hessian'"):
        tl.escape(model, squared_error, (x, y), dataclasses.replace(d, operator="ggn"))


@pytest.mark.parametrize("bad", ["GGN", "gauss-newton", "", None])
def test_unknown_operator_is_one_clear_error(bad, small_mlp_problem):
    model, x, y = small_mlp_problem
    for analysis in (tl.diagnose, tl.curvature.eigs, tl.curvature.density, tl.curvature.trace):
        with pytest.raises(ConfigError, match="operator=.* is not allowed; use one of: hessian, ggn, fisher"):
            analysis(model, F.cross_entropy, (x, y), operator=bad, progress=False)
