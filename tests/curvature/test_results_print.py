"""Results print as one-screen summaries (str and repr alike, never a tensor dump), and the
progress bar stays silent when turned off."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.curvature import density, diagnose, eigs, escape, progress, trace


@pytest.fixture
def problem():
    """An MLP of 663 parameters at its random initialisation (a saddle's neighbourhood)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 20, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (100,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 20), nn.Tanh(), nn.Linear(20, 10), nn.Tanh(), nn.Linear(10, 3)).double()
    return model, (x, y)


def assert_summary(result, *phrases):
    text = repr(result)
    assert text == str(result)
    assert "tensor(" not in text and len(text.splitlines()) <= 25, text
    for phrase in phrases:
        assert phrase in text, (phrase, text)


def test_every_result_prints_a_short_summary(problem):
    model, data = problem
    assert_summary(eigs(model, F.cross_entropy, data, k=12, progress=False), "largest first", "converged")
    assert_summary(eigs(model, F.cross_entropy, data, k=4, which="smallest", progress=False),
                   "the last is the most negative")
    assert_summary(eigs(model, F.cross_entropy, data, k=4, which="both", progress=False),
                   "the largest, then the smallest")
    assert_summary(density(model, F.cross_entropy, data, probes=4, steps=30, progress=False), "share negative",
                   "quadrature")
    assert_summary(trace(model, F.cross_entropy, data, samples=12, progress=False), "tr H")
    d = diagnose(model, F.cross_entropy, data, method="lanczos", k=3, probes=4, steps=30, grad_tol=10.0,
                 progress=False)
    assert_summary(d, "verdict:", "Lanczos found", "the density puts", "minimum ratio")
    exact = diagnose(model, F.cross_entropy, data, method="dense", grad_tol=10.0, progress=False)
    assert_summary(exact, "exact")  # 663 eigenvalues, none printed in full
    if exact.negative_curvature:
        assert_summary(escape(model, F.cross_entropy, data, exact), "escape:")


def test_a_diagnosis_of_a_large_k_prints_its_notes(problem):
    model, data = problem
    n = sum(p.numel() for p in model.parameters())
    d = diagnose(model, F.cross_entropy, data, method="lanczos", k=100_000, max_hvp=40, progress=False)
    assert_summary(d, f"k=100,000 clamped to {-(-n // 2):,}", "note:")


def test_progress_off_is_silent_and_on_shows_a_bar(problem, capfd, monkeypatch):
    model, data = problem
    monkeypatch.setattr(progress, "DELAY", 0.0)  # as if every call ran long
    for run in (lambda p: eigs(model, F.cross_entropy, data, k=2, progress=p),
                lambda p: density(model, F.cross_entropy, data, probes=2, steps=10, progress=p),
                lambda p: trace(model, F.cross_entropy, data, samples=6, progress=p),
                lambda p: diagnose(model, F.cross_entropy, data, method="lanczos", k=2, probes=2, steps=10,
                                   progress=p)):
        capfd.readouterr()
        run(False)
        assert capfd.readouterr() == ("", "")
        run(True)
        assert "hvp" in capfd.readouterr().err


@pytest.mark.parametrize("operator,title,products", [("hessian", "Hessian", "Hessian-vector products"),
                                                     ("ggn", "Gauss–Newton G", "GGN-vector products"),
                                                     ("fisher", "empirical Fisher", "Fisher-vector products")])
def test_every_printout_names_the_operator_analysed(problem, operator, title, products):
    model, data = problem
    e = eigs(model, F.cross_entropy, data, k=2, progress=False, operator=operator)
    dens = density(model, F.cross_entropy, data, probes=2, steps=10, progress=False, operator=operator)
    tr = trace(model, F.cross_entropy, data, samples=6, progress=False, operator=operator)
    d = diagnose(model, F.cross_entropy, data, method="lanczos", k=2, probes=2, steps=10, grad_tol=10.0,
                 progress=False, operator=operator)
    for result in (e, dens, tr):
        text = str(result)
        assert f"of the {title}" in text and products in text, text
        others = {"Hessian", "Gauss–Newton", "empirical Fisher"} - {title.removesuffix(" G")}
        assert not any(other in text for other in others), text
    assert str(d).splitlines()[2].startswith(f"  {title} (") and products in str(d)
    assert f"tr {dict(hessian='H', ggn='G', fisher='F')[operator]} ≈" in str(tr)


def test_the_lanczos_path_prints_no_digits_it_cannot_stand_behind(problem):
    """Counts from the density split the cluster at zero arbitrarily between cells, so the Lanczos
    path prints the Ritz values found beyond the flat band and the density's bounds, and a standard
    error only where the bounds are within ±2 of it (issue 21)."""
    model, data = problem
    d = diagnose(model, F.cross_entropy, data, method="lanczos", k=3, probes=4, steps=30, grad_tol=10.0,
                 progress=False)
    text = str(d)
    above = int((d.eigenvalues > d.flat_threshold).sum())
    below = int((d.eigenvalues < -d.flat_threshold).sum())
    low, high = d.minimum_ratio_bounds
    assert f"Lanczos found {above:,} above the flat band" in text and f"and {below:,} below it" in text
    assert f"{low:.3f}–{high:.3f} of the spectrum above" in text
    n_low, n_high = d.negative_share_bounds
    assert n_low <= d.n_negative / d.n_params <= n_high and f"{n_low:.3f}–{n_high:.3f} below" in text
    assert "≈" not in text.split("eigenvalues (of")[1].split("\n")[0]  # no point counts
    if high - low > 4 * d.minimum_ratio_stderr:
        assert "±" not in text and f"between {low:.3f} and {high:.3f}" in text
    exact = diagnose(model, F.cross_entropy, data, method="dense", grad_tol=10.0, progress=False)
    assert f"{exact.n_positive:,.0f} positive, {exact.n_negative:,.0f} negative" in str(exact)
    assert exact.negative_share_bounds == (exact.n_negative / exact.n_params,) * 2
