"""Spectral density and trace estimates against the exact spectrum of H = 2XᵀX/n."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.curvature import density, trace
from trainlab.errors import ConfigError


@pytest.fixture
def least_squares():
    """Linear least squares: H = 2 XᵀX / n exactly, with a few dominant directions."""
    gen = torch.Generator().manual_seed(0)
    scales = torch.cat([torch.full((5,), 10.0), torch.ones(195)]).double()
    X = torch.randn(400, 200, generator=gen, dtype=torch.float64) * scales
    t = torch.randn(400, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(200, 1, bias=False).double()
    H = 2 * X.T @ X / 400
    return model, (X, t), torch.linalg.eigvalsh(H)


def test_density_integrates_to_one_and_counts_match_the_spectrum(least_squares):
    model, data, exact = least_squares
    d = density(model, F.mse_loss, data, probes=20, steps=60)
    assert d.n_hvp == 20 * 60 and d.density.shape == d.grid.shape == d.stderr.shape
    dx = float(d.grid[1] - d.grid[0])
    assert float(d.density.sum()) * dx == pytest.approx(1.0, abs=1e-3)
    assert torch.allclose(d.weights.sum(1), torch.ones(20, dtype=torch.float64))
    for cut in (1.0, 3.0, 50.0):
        share = d.fraction(low=cut)
        truth = float((exact > cut).float().mean())
        assert share.bounds[0] <= share.value <= share.bounds[1]
        assert abs(share.value - truth) <= max(4 * share.stderr, 0.02), (cut, share, truth)
    assert d.fraction().value == pytest.approx(1.0) and d.fraction(low=1e9).value == 0


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_within_its_standard_error(least_squares, method):
    model, data, exact = least_squares
    t = trace(model, F.mse_loss, data, samples=60, method=method)
    assert t.n_hvp == 60
    assert abs(t.value - float(exact.sum())) <= 4 * t.stderr


def test_hutch_plus_plus_has_less_variance_when_a_few_eigenvalues_dominate(least_squares):
    model, data, _ = least_squares
    plain = trace(model, F.mse_loss, data, samples=60, method="hutchinson")
    plus = trace(model, F.mse_loss, data, samples=60, method="hutch++")
    assert plus.stderr < plain.stderr


def test_bad_arguments(least_squares):
    model, data, _ = least_squares
    with pytest.raises(ConfigError, match="method='exact' is not allowed"):
        trace(model, F.mse_loss, data, method="exact")
    with pytest.raises(ConfigError, match="probes=0 is not allowed"):
        density(model, F.mse_loss, data, probes=0)


@pytest.mark.parametrize("max_hvp", [7, 100, 1000])
def test_density_within_max_hvp(least_squares, max_hvp):
    model, data, exact = least_squares
    d = density(model, F.mse_loss, data, probes=10, steps=80, max_hvp=max_hvp, progress=False)
    assert d.n_hvp <= max_hvp
    probes, steps = d.nodes.shape
    if max_hvp < 10 * 80:
        assert probes >= 2 and d.notes[0].startswith(f"max_hvp={max_hvp:,} allows {probes} probe(s) of {steps} step(s)")
        assert "max_hvp" in str(d)
    else:
        assert (probes, steps) == (10, 80) and d.notes == []
    share = d.fraction(low=3.0)  # still an honest estimate, if a coarser one
    truth = float((exact > 3.0).double().mean())
    assert share.bounds[0] - 4 * share.stderr <= truth <= share.bounds[1] + 4 * share.stderr


def test_trace_within_max_hvp(least_squares):
    model, data, exact = least_squares
    t = trace(model, F.mse_loss, data, samples=60, max_hvp=24, progress=False)
    assert t.n_hvp == 24 and "allows 24 samples instead of 60" in t.notes[0]
    assert abs(t.value - float(exact.sum())) <= 4 * t.stderr
    with pytest.raises(ConfigError, match="max_hvp=2 is not allowed"):
        trace(model, F.mse_loss, data, max_hvp=2)  # Hutch++ needs 3


def test_hutchinson_streams_its_probes_and_hutchpp_refuses_a_sketch_beyond_its_memory(monkeypatch):
    """Many Hutchinson probes are pushed through the operator CHUNK at a time (memory bounded by the
    chunk, not ``samples``), and give the mean of zᵀHz over the same probes as a dense reference;
    a Hutch++ sketch beyond SKETCH_BYTES is refused before any product (issue 21)."""
    import pytest

    from trainlab.curvature import analysis_mode
    import importlib

    density_module = importlib.import_module("trainlab.curvature.density")  # the package exports a function of that name
    from trainlab.curvature.products import _operator, dense
    from trainlab.errors import ConfigError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g))
    widths = []
    with analysis_mode(model, "eval"):
        op = _operator(model, F.cross_entropy, data, "eval")
        H = dense(op)
        matmat = op.matmat
        monkeypatch.setattr(op, "matmat", lambda z: widths.append(len(z)) or matmat(z))
        t = density_module.trace_of(op, samples=70, method="hutchinson", seed=3)
        gen = torch.Generator().manual_seed(3)
        z = torch.cat([density_module._rademacher(op, n, gen) for n in (32, 32, 6)])
        expected = ((z @ H) * z).sum(1)
        assert widths == [32, 32, 6] and t.n_hvp == 70
        assert t.value == pytest.approx(float(expected.mean()), rel=1e-12)
        monkeypatch.setattr(density_module, "SKETCH_BYTES", 2 * 10 * op.n * 8 - 1)
        with pytest.raises(ConfigError, match=r"samples=30 with hutch\+\+ holds 10 sketch vectors of .* GiB"):
            density_module.trace_of(op, samples=30)
        assert widths == [32, 32, 6]  # refused before any product
