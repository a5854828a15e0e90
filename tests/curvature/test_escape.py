"""escape: refuses away from a critical point unless forced, and changes the parameters only when
it accepts a step — never buffers, flags, .grad or random states, also when the loss raises."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab.curvature import diagnose, escape
from trainlab.errors import ConfigError, DataError

from digests import model_digest
from toys import linear_saddle


@pytest.fixture
def saddle():
    """A linear network through BatchNorm at zero weights: gradient 0, negative curvature along
    every hidden unit. Running statistics, training flags and .grad set to values worth keeping."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(3, 2, generator=gen, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), nn.Dropout(0.3),
                          nn.Linear(4, 2, bias=False)).double()
    with torch.no_grad():
        model[0].weight.zero_()
        model[3].weight.zero_()
        model[1].running_var.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    model.train()
    return model, (x, y)


def test_escape_at_a_saddle_moves_only_the_parameters(saddle):
    model, data = saddle
    d = diagnose(model, F.mse_loss, data, progress=False)
    assert d.verdict == "saddle" and d.grad_norm == 0
    before, params_before = model_digest(model, parameters=False), model_digest(model)
    e = escape(model, F.mse_loss, data, d)
    assert e.accepted and e.loss_after < e.loss_before
    assert model_digest(model) != params_before and model_digest(model, parameters=False) == before


def test_escape_refuses_away_from_a_critical_point_and_changes_nothing(saddle):
    model, data = saddle
    d = diagnose(model, F.mse_loss, data, progress=False)
    d.grad_norm, d.grad_tol = 0.3, 1e-3  # as at a random initialisation
    before = model_digest(model)
    with pytest.raises(ConfigError, match=r"gradient norm 0\.3 is above grad_tol=0\.001: this is not a critical"
                                          r" point.*force=True"):
        escape(model, F.mse_loss, data, d)
    assert model_digest(model) == before
    e = escape(model, F.mse_loss, data, d, force=True)
    assert e.accepted and any("forced" in note for note in e.notes)


def test_a_loss_raising_in_the_line_search_leaves_everything_as_it_was(saddle):
    model, data = saddle
    d = diagnose(model, F.mse_loss, data, progress=False)
    trials = []

    def flaky(out, target):
        if model[3].weight.detach().abs().sum() > 0:  # the line search has moved the parameters
            trials.append(1)
            raise RuntimeError("disk went away")
        return F.mse_loss(out, target)

    before = model_digest(model)
    with pytest.raises(DataError, match=r"loss_fn raised RuntimeError \(disk went away\)"):  # named, and chained
        escape(model, flaky, data, d)
    assert trials and model_digest(model) == before


def test_no_step_qualifies_parameters_bit_identical():
    """A loss that never falls along the direction: not accepted, parameters exactly restored."""
    model, x, y = linear_saddle(n=32, seed=1)
    d = diagnose(model, F.mse_loss, (x, y), progress=False)
    before = model_digest(model)

    def rising(out, target):  # the diagnosed loss plus a wall around the origin
        return F.mse_loss(out, target) + 1e6 * sum((p ** 2).sum() for p in model.parameters())

    e = escape(model, rising, (x, y), d, max_halvings=3)
    assert not e.accepted and e.step == 0 and model_digest(model) == before
    assert "parameters unchanged" in str(e)
