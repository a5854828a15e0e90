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
                   "quadrature bounds")
    assert_summary(trace(model, F.cross_entropy, data, samples=12, progress=False), "tr H")
    d = diagnose(model, F.cross_entropy, data, method="lanczos", k=3, probes=4, steps=30, grad_tol=10.0,
                 progress=False)
    assert_summary(d, "verdict:", "standard error", "the quadrature's resolution", "minimum ratio")
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
