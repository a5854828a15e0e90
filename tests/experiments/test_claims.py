"""The claims of classification, normalization, critical_points and momentum (quick runs): those that
depend on random draws are decided over 5 seeds on the numbers their tables show; the construction the
minimum-ratio claims describe holds as stated (a zero unit adds one negative eigenvalue α − s per singular
value s > α of the input–residual correlation); formulas are Unicode, not TeX."""

import pytest
import torch
import torch.nn.functional as F

import trainlab as tl
from trainlab.experiments import classification, critical_points, momentum, normalization
from trainlab.experiments.result import Config
from trainlab.experiments.statistics import interval, paired

QUICK = Config(quick=True, seed=0, progress=False)


@pytest.fixture(scope="module")
def results():
    return {m.NAME: m.run(QUICK) for m in (classification, normalization, critical_points, momentum)}


def _decided(result):
    return [c for c in result.claims if c.interval]


def test_random_draw_claims_are_decided_over_five_seeds(results):
    expected = {"classification": 2, "normalization": 2, "critical_points": 3, "momentum": 0}
    for name, count in expected.items():
        decided = _decided(results[name])
        assert len(decided) == count, name
        for c in decided:
            assert "5 seeds" in c.interval and c.verdict in ("held", "not held", "inconclusive")


def test_classification_gaps_are_the_tables_first_epoch(results):
    r = results["classification"]
    first = {(row[0], row[1]): row[5] for row in r.tables["classifier"].rows}
    faster, narrows = _decided(r)
    sgd_gap = first["cross-entropy", "SGD"] - first["MSE", "SGD"]
    adam_gap = first["cross-entropy", "Adam"] - first["MSE", "Adam"]
    assert faster.interval.startswith(f"{sgd_gap:+.3g} ")  # the mean of the paired differences
    assert narrows.interval.startswith(f"{sgd_gap - adam_gap:+.3g} ")
    assert f"{sgd_gap:+.3f} with SGD, {adam_gap:+.3f} with Adam" in narrows.evidence
    assert "after one epoch" in narrows.text


def test_normalization_epochs_to_target_give_the_interval(results):
    r = results["normalization"]
    epochs = 3  # quick

    def parse(cell):
        return [epochs + 1 if v.strip().startswith(">") else int(v) for v in cell.split(",")]

    firsts = {(row[0], row[1]): parse(row[3]) for row in r.tables["batch_norm"].rows}
    lrs = sorted({lr for lr, _ in firsts})
    plain = [min(firsts[lr, "no BN"][i] for lr in lrs) for i in range(5)]
    bn = [min(firsts[lr, "BN"][i] for lr in lrs) for i in range(5)]
    fewer, larger = _decided(r)
    assert fewer.interval.startswith(str(paired(plain, bn)))
    assert "lower bound" in fewer.text and f"η = {max(lrs):g}" in larger.text


def test_minimum_ratio_claims_rest_on_the_table(results):
    r = results["critical_points"]
    rows = r.tables["minimum_ratio"].rows
    exact, order, dauphin = _decided(r)
    by_seed = {}
    for row in rows:
        by_seed.setdefault(row[1], []).append(row)
    assert sorted(by_seed) == [0, 1, 2, 3, 4]
    margins = []
    for points in by_seed.values():
        critical = [p for p in points if p[3] <= critical_points.GRAD_TOL]
        minima = [p[2] for p in critical if p[9] == "local_minimum"]
        saddles = [p[2] for p in critical if p[9] == "saddle"]
        if minima and saddles:
            margins.append(min(saddles) - max(minima))
    assert order.interval.startswith(str(interval(margins)))
    assert "by construction" in order.text and "by construction" in dauphin.text and "zero unit" in dauphin.text
    width = max(row[0] for row in rows)
    for units, _, _, grad, _, negative, *_ in rows:  # each zero unit adds the same count, at most C − 1 = 9
        if grad <= critical_points.GRAD_TOL and units < width:
            assert negative % (width - units) == 0 and negative // (width - units) <= 9


def test_a_zero_unit_adds_alpha_minus_each_singular_value_above_alpha():
    x, y = critical_points._small_digits(80)
    small = tl.nn.mlp(x.shape[1], [1], 10, activation="tanh", seed=7).double()
    critical_points._minimise(small, critical_points.regularised(small), x, y, 150)
    padded = critical_points._embed(small, 2)
    loss = critical_points.regularised(padded)
    assert float(tl.curvature.gradient(padded, loss, (x, y)).norm()) < 1e-8
    eigenvalues = torch.linalg.eigvalsh(tl.curvature.hessian(padded, loss, (x, y)))
    # independently: M = mean_i tanh'(0) [x_i, 1] r_iᵀ, r_i = softmax(logits_i) − onehot(y_i)
    with torch.no_grad():
        residual = torch.softmax(small(x), 1) - F.one_hot(y, 10).double()
    inputs = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    singular = torch.linalg.svdvals(inputs.T @ residual / len(x))
    alpha = critical_points.WEIGHT_DECAY
    predicted = torch.sort(alpha - singular[singular > alpha]).values
    assert int((eigenvalues < 0).sum()) == len(predicted) <= 9
    torch.testing.assert_close(eigenvalues[:len(predicted)], predicted, atol=1e-9, rtol=1e-7)


def test_formulas_are_unicode_not_tex(results):
    for r in results.values():
        for c in r.claims:
            for text in (c.text, c.evidence, c.lecture):
                assert "^" not in text and "_{" not in text, text
    assert "mⁱ = λ mⁱ⁻¹ − η gⁱ⁻¹" in results["momentum"].claims[-1].lecture
