"""Every experiment in quick mode: the structure of its result, and its numbers against
independent computations."""

import json
import math

import numpy as np
import pytest
import torch

from trainlab.experiments import EXPERIMENTS, Config

QUICK = Config(quick=True, seed=0, progress=False)


@pytest.fixture(scope="module")
def results():
    return {name: module.run(QUICK) for name, module in EXPERIMENTS.items()}


def test_every_result_is_complete_and_serialisable(results):
    assert list(results) == ["critical_points", "batch_size", "momentum", "sharpness", "adaptive_lr", "classification",
                             "normalization"]
    for name, r in results.items():
        assert r.name == name and r.claims and r.figures and r.seconds > 0
        for c in r.claims:
            assert c.text and c.evidence and isinstance(c.held, bool)
        for t in r.tables.values():
            assert all(len(row) == len(t.columns) for row in t.rows)
        doc = json.loads(json.dumps(r.to_json(), default=float))
        assert {"claims", "tables", "figures"} <= set(doc)
        assert all(f["file"].endswith(".png") for f in doc["figures"])


def test_every_figure_reads_on_its_own(results):
    """Colour bars and reference lines labelled, legends complete, text large enough (issue 15)."""
    from trainlab.report.plots import problems

    found = {f"{name}-{key}": problems(fig) for name, r in results.items() for key, (_, fig) in r.figures.items()}
    assert {k: v for k, v in found.items() if v} == {}


def test_claims_over_seeds_carry_their_interval(results):
    decided = [c for r in results.values() for c in r.claims if c.interval]
    assert len(decided) >= 10  # the random-draw claims of every experiment
    for c in decided:
        assert c.verdict in ("held", "not held", "inconclusive") and "5 seeds" in c.interval


def test_critical_points_toy_hessian_and_spectra(results):
    r = results["critical_points"]
    rows = r.tables["toy_hessian"].rows
    assert [rows[0][1], rows[0][2], rows[1][1], rows[1][2]] == [0.0, -2.0, -2.0, 0.0]  # analytic [[0, −2], [−2, 0]]
    assert sorted([rows[0][3], rows[1][3]]) == [-2.0, 2.0]
    assert r.claims[0].held and r.claims[1].held and r.claims[2].held
    for units, _, loss, grad, pos, neg, flat, ratio, negative_share, verdict in r.tables["minimum_ratio"].rows:
        n = pos + neg + flat
        assert ratio == pytest.approx(pos / n) and negative_share == pytest.approx(neg / n)
        if grad <= 1e-8:
            assert verdict == ("saddle" if neg and pos else "local_minimum" if pos else verdict)
    full_width = [row for row in r.tables["minimum_ratio"].rows if row[0] == 4 and row[3] <= 1e-8]
    assert all(row[9] == "local_minimum" for row in full_width)


def test_batch_size_timing_has_one_row_per_batch_size(results):
    rows = results["batch_size"].tables["timing"].rows
    n = rows[-1][0]
    assert [row[0] for row in rows] == [1, 10, 100, 1000, n]
    assert [row[1] for row in rows] == [math.ceil(n / b) for b in (1, 10, 100, 1000, n)]
    assert all(row[2] > 0 and row[3] > 0 for row in rows)
    equal = results["batch_size"].tables["equal_epochs"].rows
    assert [row[1] for row in equal] == [3 * math.ceil(n / b) for b in (1, 10, 100, 1000, n)]  # updates in 3 epochs


def test_momentum_ends_at_the_surface_minima(results):
    roots = sorted(np.roots([1, -1.5, -1.5, 0.7]).real)  # L′(θ) = θ³ − 1.5θ² − 1.5θ + 0.7
    (plain, heavy) = results["momentum"].tables["ends"].rows
    assert plain[1] == pytest.approx(roots[0], abs=1e-2) and heavy[1] == pytest.approx(roots[2], abs=1e-2)
    assert all(c.held for c in results["momentum"].claims)


def test_adaptive_lr_optimum_and_adagrad(results):
    from trainlab.experiments.adaptive_lr import X, Y

    design = np.stack([np.ones(10), X.numpy()], 1)
    best = np.linalg.lstsq(design, Y.numpy(), rcond=None)[0]
    assert best == pytest.approx([-188.4, 2.67], abs=0.05)  # the lecture's optimum
    rows = {row[0]: row for row in results["adaptive_lr"].tables["descent"].rows}
    ada = next(row for name, row in rows.items() if name.startswith("Adagrad"))
    assert np.hypot(ada[2] - best[0], ada[3] - best[1]) == pytest.approx(ada[4], rel=1e-6)
    assert ada[4] < 0.1


def test_classification_softmax_matches_torch(results):
    claim = results["classification"].claims[0]
    expected = torch.softmax(torch.tensor([3.0, 1.0, -3.0], dtype=torch.float64), 0)
    assert claim.held and str([round(float(v), 4) for v in expected]) in claim.evidence
    rows = results["classification"].tables["classifier"].rows
    assert [(r[0], r[1]) for r in rows] == [("cross-entropy", "SGD"), ("cross-entropy", "Adam"), ("MSE", "SGD"),
                                           ("MSE", "Adam")]


def test_normalization_condition_numbers(results):
    from trainlab.experiments.adaptive_lr import X

    x = X.numpy()
    raw = np.stack([np.ones(10), x], 1)
    scaled = np.stack([np.ones(10), (x - x.mean()) / x.std()], 1)
    rows = results["normalization"].tables["features"].rows
    for row, design in zip(rows, (raw, scaled)):
        eig = np.linalg.eigvalsh(design.T @ design)
        assert row[1] == pytest.approx(eig[-1] / eig[0], rel=1e-9)


def test_same_seed_same_numbers():
    from trainlab.experiments import classification, momentum

    for module in (momentum, classification):
        a, b = module.run(QUICK), module.run(QUICK)
        assert [c.evidence for c in a.claims] == [c.evidence for c in b.claims]
        assert {k: t.rows for k, t in a.tables.items()} == {k: t.rows for k, t in b.tables.items()}
