"""Every analysis leaves the model and the global random states exactly as it found them —
parameters, buffers (BatchNorm statistics, num_batches_tracked), training and requires_grad
flags, .grad, and the torch / NumPy / random states — on success and when it raises.

The reference is a digest of the full state computed here, independently of trainlab.state.
"""

import inspect
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import trainlab as tl
from trainlab import curvature
from trainlab.errors import ConfigError, DataError
from trainlab.nn.surface import slice2d
from trainlab.state import preserved

from digests import model_digest


def bn_dropout_mlp(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(5, 6), tl.nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(6, 3)).double()


def bn_cnn() -> nn.Module:
    return tl.nn.small_cnn(in_channels=1, image_size=4, num_classes=3, channels=(2,), batch_norm=True, seed=0).double()


def lived_in(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A model as a user holds it mid-training: moved running statistics, a mixed mode, a frozen
    parameter, gradients from the last step."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x * 2 + 1)
    loss = model(x).square().mean()
    loss.backward()
    first = next(model.parameters())
    first.grad.mul_(3)
    modules = list(model.modules())
    modules[-1].eval()  # a mixed mode: one submodule in eval
    list(model.parameters())[-1].requires_grad_(False)
    return model


@pytest.fixture
def problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=gen)
    return x, y


def _call(fn, *args, **kwargs):
    """Pass progress=False to the analyses that have it (no bar in the test log)."""
    if "progress" in inspect.signature(fn).parameters:
        kwargs["progress"] = False
    return fn(*args, **kwargs)


def analyses(data, n):
    v = torch.ones(n, dtype=torch.float64)
    return {
        "gradient": lambda m, lf, mode: curvature.gradient(m, lf, data, mode=mode),
        "hvp": lambda m, lf, mode: curvature.hvp(m, lf, data, v, mode=mode),
        "hessian": lambda m, lf, mode: curvature.hessian(m, lf, data, mode=mode),
        "eigs": lambda m, lf, mode: _call(curvature.eigs, m, lf, data, k=2, mode=mode),
        "density": lambda m, lf, mode: _call(curvature.density, m, lf, data, probes=2, steps=8, mode=mode),
        "trace": lambda m, lf, mode: _call(curvature.trace, m, lf, data, samples=3, mode=mode),
        "diagnose": lambda m, lf, mode: _call(curvature.diagnose, m, lf, data, mode=mode),
        "diagnose_lanczos": lambda m, lf, mode: _call(curvature.diagnose, m, lf, data, method="lanczos", k=2,
                                                      probes=2, steps=8, mode=mode),
        "slice2d": lambda m, lf, mode: slice2d(m, lf, data, steps=2),
    }


NAMES = list(analyses(None, 1))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_an_analysis_leaves_a_batchnorm_model_untouched(problem, name, mode):
    x, y = problem
    model = lived_in(bn_dropout_mlp(), x)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    np.random.seed(3)
    random.seed(3)
    before = model_digest(model)
    analyses(DataLoader(TensorDataset(x, y), batch_size=10), n)[name](model, F.cross_entropy, mode)
    assert model_digest(model) == before


@pytest.mark.parametrize("name", NAMES)
def test_train_mode_with_dropout_raises_and_leaves_no_trace(problem, name):
    x, y = problem
    model = lived_in(bn_dropout_mlp(dropout=0.5), x)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    before = model_digest(model)
    call = analyses((x, y), n)[name]
    if name == "slice2d":  # always in eval mode: dropout off, nothing to refuse
        call(model, F.cross_entropy, "train")
    else:
        with pytest.raises(ConfigError, match="different gradient each time"):
            call(model, F.cross_entropy, "train")
    assert model_digest(model) == before
    call(model, F.cross_entropy, "eval")  # dropout is off in eval mode
    assert model_digest(model) == before


class FailsOnCall:
    """A loss that works ``calls`` times, then raises: the analysis stops midway."""

    def __init__(self, calls: int):
        self.left = calls

    def __call__(self, out, target):
        self.left -= 1
        if self.left < 0:
            raise RuntimeError("loss failed")
        return F.cross_entropy(out, target)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("calls", [1, 4])
def test_a_loss_that_raises_midway_leaves_no_trace(problem, name, mode, calls):
    x, y = problem
    model = lived_in(bn_dropout_mlp(), x)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    before = model_digest(model)
    # the analyses name the user's error in one sentence (a DataError chaining it); slice2d lets it through
    expected = RuntimeError if name == "slice2d" else DataError
    with pytest.raises(expected, match="loss failed"):
        analyses(DataLoader(TensorDataset(x, y), batch_size=10), n)[name](model, FailsOnCall(calls), mode)
    assert model_digest(model) == before


@pytest.mark.parametrize("name", [n for n in NAMES if n != "slice2d"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_nan_data_raises_a_data_error_and_leaves_no_trace(problem, name, mode):
    x, y = problem
    x = x.clone()
    x[13, 1] = float("nan")
    model = lived_in(bn_dropout_mlp(), x[:8])
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    before = model_digest(model)
    with pytest.raises(DataError, match=r"nan.*in x of batch 1, sample 3 \(sample 13 of the data\)"):
        analyses(DataLoader(TensorDataset(x, y), batch_size=10), n)[name](model, F.cross_entropy, mode)
    assert model_digest(model) == before


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", ["gradient", "hvp", "hessian", "eigs", "slice2d"])
def test_a_cnn_with_batchnorm_is_untouched(name, mode):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 1, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=gen)
    model = lived_in(bn_cnn(), x)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    before = model_digest(model)
    analyses([(x[:6], y[:6]), (x[6:], y[6:])], n)[name](model, tl.nn.cross_entropy, mode)
    assert model_digest(model) == before


def test_train_mode_analyses_see_batch_statistics_but_keep_the_running_ones(problem):
    """The guard restores the statistics; it does not stop train mode from using batch statistics."""
    x, y = problem
    model = lived_in(bn_dropout_mlp(), x)
    running = model[1].running_mean.clone()
    h_train = curvature.hessian(model, F.cross_entropy, (x, y), mode="train")
    h_eval = curvature.hessian(model, F.cross_entropy, (x, y), mode="eval")
    assert not torch.allclose(h_train, h_eval)
    assert torch.equal(model[1].running_mean, running)


def test_the_stall_doctor_diagnosis_leaves_no_trace(problem):
    x, y = problem
    model = lived_in(bn_dropout_mlp(dropout=0.3), x)
    doctor = tl.train.StallDoctor(window=10, max_samples=24, act=False)  # act=False: diagnose, change nothing
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = model_digest(model)
    event = doctor._treat(model, F.cross_entropy, (x, y), optimizer, None)
    assert event["verdict"] and model_digest(model) == before


def test_preserved_restores_everything_it_promises():
    model = lived_in(bn_dropout_mlp(dropout=0.2), torch.randn(8, 5, dtype=torch.float64))
    np.random.seed(1)
    random.seed(1)
    before = model_digest(model)
    grad_object = next(model.parameters()).grad
    buffer_object = model[1].running_mean
    with pytest.raises(KeyError):
        with preserved(model):
            model.train()
            model(torch.randn(8, 5, dtype=torch.float64))  # moves statistics, draws dropout masks
            for p in model.parameters():
                p.requires_grad_(True)
                p.data.add_(1)
                p.grad = torch.ones_like(p)
            next(model.parameters()).grad = None
            model[1].running_mean = torch.zeros(6, dtype=torch.float64)  # a replaced buffer
            np.random.rand()
            random.random()
            raise KeyError("fail inside")
    assert model_digest(model) == before
    assert next(model.parameters()).grad is grad_object and model[1].running_mean is buffer_object


def test_preserved_without_parameters_keeps_parameter_changes():
    model = bn_dropout_mlp()
    with preserved(model, parameters=False):
        with torch.no_grad():
            model[0].weight.add_(1)
        model[0].weight.requires_grad_(False)
    assert model[0].weight.requires_grad
    changed = model[0].weight.clone()
    torch.manual_seed(0)
    assert not torch.equal(changed, nn.Sequential(nn.Linear(5, 6)).double()[0].weight)
