"""The batch-size experiment's machinery against independent computations: the ensemble trains each row
as the network would train alone, the trade-off fit recovers a planted curve, the critical batch size's
steps do not depend on which other learning rates share the ensemble, and the lecture's times per update
are its times per epoch divided by the updates in an epoch."""

import math

import pytest
import torch
import torch.nn.functional as F

import trainlab as tl
from trainlab.experiments import batch_size
from trainlab.experiments.batch_size import Ensemble, _fit_tradeoff, steps_to_target
from trainlab.experiments.result import Config, Result

from tolerance import close


def test_an_ensemble_row_trains_as_the_trainer_trains_that_network():
    train, _ = tl.data.load_digits(seed=3)
    model = tl.nn.mlp(64, [32], 10, seed=3)
    tl.train.Trainer(model, tl.optim.SGD(model.parameters(), lr=0.05), F.cross_entropy, train, 50, 2, seed=3,
                     progress=False, device="cpu").fit()
    ens = Ensemble(64, [32], 10, [2, 3])  # row 1 is seed 3; row 0 trains on other data alongside
    x, y = train.tensors
    gens = [torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)]
    steps = 0
    for _ in range(2):
        order = batch_size._epoch_orders(gens, len(y))
        for start in range(0, len(y), 50):
            idx = order[:, start:start + 50]
            ens.sgd(ens.losses(x[idx], y[idx]), 0.05)
            steps += 1
    # batched float32 products against torch's per-network ones, each update feeding the next: steps² terms
    for ours, theirs in zip(ens.module(1).parameters(), model.parameters()):
        torch.testing.assert_close(ours, theirs, **close(torch.float32, steps * steps))


def test_ensemble_adam_is_torch_adam_per_row():
    x, y = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(0)), torch.randint(0, 10, (2, 64))
    ens = Ensemble(8, [16], 10, [0, 1])
    for _ in range(20):
        ens.adam_step(ens.losses(x, y), 1e-2)
    for row, seed in enumerate((0, 1)):
        model = tl.nn.mlp(8, [16], 10, seed=seed)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(20):
            opt.zero_grad()
            F.cross_entropy(model(x[row]), y[row]).backward()
            opt.step()
        for ours, theirs in zip(ens.module(row).parameters(), model.parameters()):
            torch.testing.assert_close(ours, theirs, **close(torch.float32, 20 * 20))  # 20 float32 Adam steps


def test_keep_drops_rows_and_their_adam_state():
    x, y = torch.randn(3, 16, 8), torch.randint(0, 10, (3, 16))
    ens = Ensemble(8, [4], 10, [0, 1, 2])
    ens.adam_step(ens.losses(x, y), 1e-2)
    before = ens.snapshot(2)
    ens.keep(torch.tensor([True, False, True]))
    assert len(ens) == 2 and all(torch.equal(a, b) for a, b in zip(ens.snapshot(1), before))
    ens.adam_step(ens.losses(x[[0, 2]], y[[0, 2]]), 1e-2)  # the state follows the rows kept


def test_the_tradeoff_fit_recovers_a_planted_curve():
    batches = [16, 32, 64, 128, 256, 512]
    s_min, b_crit = 120.0, 150.0
    steps = [s_min * (1 + b_crit / b) for b in batches]
    fitted_s, fitted_e = _fit_tradeoff(batches, steps)
    assert fitted_s == pytest.approx(s_min, rel=1e-9) and fitted_e / fitted_s == pytest.approx(b_crit, rel=1e-9)
    # (S/S_min − 1)(E/E_min − 1) = 1 at every planted point
    for b, s in zip(batches, steps):
        assert (s / fitted_s - 1) * (b * s / fitted_e - 1) == pytest.approx(1.0, rel=1e-9)
    noisy = [s * (1.05 if i % 2 else 0.95) for i, s in enumerate(steps)]
    assert _fit_tradeoff(batches, noisy)[1] / _fit_tradeoff(batches, noisy)[0] == pytest.approx(b_crit, rel=0.25)


def test_steps_to_target_do_not_depend_on_the_other_learning_rates_tried():
    train, _ = tl.data.load("mnist1d", seed=0)
    x, y = train.tensors[0][:1000].unsqueeze(0), train.tensors[1][:1000].unsqueeze(0)
    together = steps_to_target(x, y, [0], 32, [0.1, 0.4], [16], 1.9, 2000)
    alone = steps_to_target(x, y, [0], 32, [together[0][1]], [16], 1.9, 2000)
    assert together[0][0] == alone[0][0] and together[0][1] in (0.1, 0.4)
    for a, b in zip(together[0][2], alone[0][2]):
        torch.testing.assert_close(a, b)
    # the windowed loss was below the target at that update: the training loss is near it
    net = Ensemble(40, [16], 10, [0]).module(together[0][2])
    with torch.no_grad():
        assert float(F.cross_entropy(net(x[0]), y[0])) < 1.9 * 1.1


def test_timing_table_derives_the_lectures_seconds_per_update():
    config = Config(quick=True, seed=0, progress=False)
    result = Result("batch_size", "", config=config)
    batch_size.timing(result, config)
    rows = {row[0]: row for row in result.tables["timing"].rows}
    assert rows[1][4] == pytest.approx(362 / 60_000) and rows[10][4] == pytest.approx(44 / 6_000)
    assert rows[100][4] == pytest.approx(14 / 600) and rows[1000][4] == pytest.approx(0.15)
    assert rows[1][5] == 362 and all(row[4] is None for b, row in rows.items() if b not in batch_size.LECTURE_EPOCH)


@pytest.fixture(scope="module")
def critical():
    config = Config(quick=True, seed=0, progress=False)
    result = Result("batch_size", "", config=config)
    batch_size.critical_batch(result, config)
    return result


def test_critical_batch_tables_agree_with_the_fit_and_the_claims(critical):
    table = critical.tables["critical_batch"]
    fits = critical.tables["noise_scale"].rows
    assert [row[0] for row in fits] == batch_size.seeds(Config(seed=0))
    for seed, s_min, e_min, b_crit, b_simple, at_init, ratio in fits:
        assert b_crit == pytest.approx(e_min / s_min) and ratio == pytest.approx(b_simple / b_crit)
        assert s_min > 0 and e_min > 0 and b_simple > 0 and at_init > 0
    for b, _, _, steps, _, examples, fitted in table.rows:
        assert examples == pytest.approx(b * steps)
        assert fitted == pytest.approx(sum(f[1] + f[2] / b for f in fits) / len(fits))
    assert table.rows[0][3] > table.rows[-1][3]  # larger batches need fewer updates …
    assert table.rows[0][5] < table.rows[-1][5]  # … and more examples
    fit, noise = critical.claims
    assert "5 seeds" in fit.interval and "5 seeds" in noise.interval
    assert fit.verdict in ("held", "inconclusive", "not held") and "critical_batch" in critical.figures
    closeness = [1 - abs(math.log2(row[6])) for row in fits]
    assert f"{sum(closeness) / len(closeness):+.3g}" in noise.interval
