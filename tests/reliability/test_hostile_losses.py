"""Hostile losses and labels given to the curvature analyses (issue 21, items 3 and 4).

Families (the ids' first word):

* ``flat`` — losses whose second derivative is zero almost everywhere (``F.l1_loss``, a
  ReLU hinge, ``smooth_l1_loss`` beyond its ``beta``): the loss term's Hessian is 0 but the
  network's part is not. They crashed inside the graph-size probe ("invalid python storage":
  autograd's zero tensors have no storage); now each analysis must give the number the dense
  float64 reference ``torch.func.hessian`` gives.
* ``labels`` — out of range, negative, float or wrongly shaped targets: one DataError sentence
  naming the value, not torch's bare IndexError/RuntimeError.
* ``loss`` — a loss_fn that detaches, calls ``.item()``, is constant, returns a tuple, a
  non-scalar, a Python number, NaN or inf, or raises: one sentence naming what was wrong.

Every refusal leaves the model exactly as it was (:func:`digests.model_digest`).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainlab import curvature as cv
from trainlab.errors import ConfigError, DataError
from trainlab.train.doctor import StallDoctor

from digests import model_digest


#: A hang fails the case after 30 s instead of stalling the suite (conftest.hang_alarm).
pytestmark = pytest.mark.usefixtures("hang_alarm")


# ---------------------------------------------------------------- flat losses against a dense reference

def net64() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def hinge(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - out * t).mean()


def smooth_l1_far(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(out, t, beta=1e-3)  # every residual lies beyond beta: linear pieces only


FLAT_LOSSES = {"l1": F.l1_loss, "hinge": hinge, "smooth_l1": smooth_l1_far}


def flat_problem(loss: str):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    t = torch.randn(16, 2, generator=g, dtype=torch.float64)
    if loss == "hinge":
        t = torch.where(t > 0, 1.0, -1.0).double()
    return net64(), x, t, FLAT_LOSSES[loss]


def reference(model: nn.Module, loss_fn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The dense Hessian over every parameter (model order), by ``torch.func.hessian`` in float64."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    shapes = {k: v.shape for k, v in params.items()}
    sizes = [v.numel() for v in params.values()]

    def f(flat):
        parts = {k: p.reshape(shapes[k]) for k, p in zip(params, flat.split(sizes))}
        return loss_fn(torch.func.functional_call(model, parts, (x,)), t)

    return torch.func.hessian(f)(torch.cat([v.reshape(-1) for v in params.values()]))


def atol(H: torch.Tensor, factor: float = 100.0) -> float:
    """float64 sums over n terms: ~√n·ε of the largest entry, times a margin."""
    return factor * H.shape[0] ** 0.5 * torch.finfo(torch.float64).eps * max(float(H.abs().max()), 1.0)


def blocks(model: nn.Module) -> dict[str, slice]:
    """Each Linear's slice of the flat parameter vector, by the layerwise row name."""
    found, start = {}, 0
    for name, module in model.named_children():
        size = sum(p.numel() for p in module.parameters(recurse=False))
        if size:
            found[name] = slice(start, start + size)
        start += size
    return found


def check_hvp(model, loss_fn, x, t, H):
    v = torch.linspace(-1, 1, H.shape[0], dtype=torch.float64)
    torch.testing.assert_close(cv.hvp(model, loss_fn, (x, t), v), H @ v, atol=atol(H) * H.shape[0] ** 0.5, rtol=0)


def check_hessian(model, loss_fn, x, t, H):
    torch.testing.assert_close(cv.hessian(model, loss_fn, (x, t)), H, atol=atol(H), rtol=0)


def check_eigs(model, loss_fn, x, t, H):
    r = cv.eigs(model, loss_fn, (x, t), k=2, which="both", tol=1e-10, progress=False)
    exact = torch.linalg.eigvalsh(H)
    expected = torch.cat([exact[-2:].flip(0), exact[:2].flip(0)])
    torch.testing.assert_close(r.values.sort(descending=True).values, expected.sort(descending=True).values,
                               atol=1e-8 * float(exact.abs().max()), rtol=0)


def check_diagnose(model, loss_fn, x, t, H):
    d = cv.diagnose(model, loss_fn, (x, t), progress=False)
    torch.testing.assert_close(d.eigenvalues, torch.linalg.eigvalsh(H).flip(0), atol=atol(H), rtol=0)
    assert d.n_negative == int((torch.linalg.eigvalsh(H) < -d.flat_threshold).sum())


def check_diagnose_lanczos(model, loss_fn, x, t, H):
    d = cv.diagnose(model, loss_fn, (x, t), method="lanczos", k=3, tol=1e-10, progress=False)
    exact = torch.linalg.eigvalsh(H)
    scale = float(exact.abs().max())
    assert abs(float(d.eigenvalues[0]) - float(exact[-1])) <= 1e-8 * scale
    assert abs(float(d.eigenvalues[-1]) - float(exact[0])) <= 1e-8 * scale


def check_layerwise(model, loss_fn, x, t, H):
    table = cv.layerwise(model, loss_fn, (x, t), couplings=False, progress=False)
    for name, part in blocks(model).items():
        exact = torch.linalg.eigvalsh(H[part, part])
        row = table.row(name)
        assert abs(row.lambda_max - float(exact[-1])) <= atol(H), (name, row.lambda_max, exact)
        assert abs(row.lambda_min - float(exact[0])) <= atol(H), (name, row.lambda_min, exact)


def check_trace(model, loss_fn, x, t, H):
    n = H.shape[0]  # Hutch++ with a sketch of n vectors spans the whole space: the trace is exact
    r = cv.trace(model, loss_fn, (x, t), samples=3 * n, progress=False)
    assert abs(r.value - float(H.trace())) <= atol(H) * n


def check_doctor(model, loss_fn, x, t, H):
    doctor = StallDoctor(window=10, act=False, max_samples=64)
    events = [e for e in (doctor.after_step(model, 1.0, loss_fn, (x, t)) for _ in range(20)) if e]
    exact = torch.linalg.eigvalsh(H)
    assert len(events) == 1
    assert abs(events[0]["lambda_max"] - float(exact[-1])) <= atol(H)
    assert abs(events[0]["lambda_min"] - float(exact[0])) <= atol(H)


CHECKS = {"hvp": check_hvp, "hessian": check_hessian, "eigs": check_eigs, "diagnose": check_diagnose,
          "diagnose-lanczos": check_diagnose_lanczos, "layerwise": check_layerwise, "trace": check_trace,
          "doctor": check_doctor}
FLAT = [pytest.param(loss, check, id=f"flat-{loss}-{check}") for loss in FLAT_LOSSES for check in CHECKS
        if loss == "l1" or check in ("hvp", "eigs", "diagnose", "layerwise", "doctor")]


@pytest.mark.parametrize("loss, check", FLAT)
def test_flat_loss_gives_the_dense_reference(loss, check):
    model, x, t, loss_fn = flat_problem(loss)
    H = reference(model, loss_fn, x, t)
    assert float(H.abs().max()) > 1e-3  # the network's part of H is not zero
    before = model_digest(model)
    CHECKS[check](model, loss_fn, x, t, H)
    assert model_digest(model) == before


# ---------------------------------------------------------------- labels and loss functions refused

@pytest.fixture
def c():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 3, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 10))  # ten classes
    model(x).sum().backward()  # gradients in .grad, which analyses must keep
    return SimpleNamespace(model=model, x=x, y=torch.arange(24) % 10, loss=F.cross_entropy,
                           n=sum(p.numel() for p in model.parameters()))


def case(id, call, error, *names, labels=None):
    """``call(c)`` must raise ``error`` naming ``names``; ``labels(c)`` replaces the targets first."""
    return pytest.param(call, error, names, labels, id=id)


def label(value):
    return lambda c: torch.full((24,), value, dtype=torch.long)


def as_float(c):
    return c.y.float()


def column(c):
    return c.y[:, None]


LABELS = [
    case("labels-ten-of-ten-gradient", lambda c: cv.gradient(c.model, c.loss, (c.x, c.y)), DataError, "10",
         labels=label(10)),
    case("labels-ten-of-ten-eigs", lambda c: cv.eigs(c.model, c.loss, (c.x, c.y), progress=False), DataError, "10",
         labels=label(10)),
    case("labels-ten-of-ten-diagnose", lambda c: cv.diagnose(c.model, c.loss, (c.x, c.y), progress=False),
         DataError, "10", labels=label(10)),
    case("labels-ten-of-ten-density", lambda c: cv.density(c.model, c.loss, (c.x, c.y), progress=False), DataError,
         "10", labels=label(10)),
    case("labels-ten-of-ten-nll", lambda c: cv.gradient(c.model, lambda o, t: F.nll_loss(o.log_softmax(1), t),
                                                        (c.x, c.y)), DataError, "10", labels=label(10)),
    case("labels-negative-gradient", lambda c: cv.gradient(c.model, c.loss, (c.x, c.y)), DataError, "-1",
         labels=label(-1)),
    case("labels-negative-layerwise", lambda c: cv.layerwise(c.model, c.loss, (c.x, c.y), progress=False),
         DataError, "-1", labels=label(-1)),
    case("labels-float-gradient", lambda c: cv.gradient(c.model, c.loss, (c.x, c.y)), DataError, "float",
         labels=as_float),
    case("labels-float-trace", lambda c: cv.trace(c.model, c.loss, (c.x, c.y), samples=6, progress=False),
         DataError, "float", labels=as_float),
    case("labels-column-gradient", lambda c: cv.gradient(c.model, c.loss, (c.x, c.y)), DataError, "(24, 1)",
         labels=column),
    case("labels-column-eigs", lambda c: cv.eigs(c.model, c.loss, (c.x, c.y), progress=False), DataError, "(24, 1)",
         labels=column),
    case("labels-ten-of-ten-ggn", lambda c: cv.eigs(c.model, c.loss, (c.x, c.y), operator="ggn", progress=False),
         DataError, "10", labels=label(10)),
]


def detached(out, t):
    return F.cross_entropy(out.detach(), t)


def itemised(out, t):
    return F.cross_entropy(out, t).item()


def constant(out, t):
    return torch.tensor(1.0)


def no_grad_loss(out, t):
    with torch.no_grad():
        return F.cross_entropy(out, t)


def paired(out, t):
    return F.cross_entropy(out, t), out.abs().mean()


def per_sample(out, t):
    return F.cross_entropy(out, t, reduction="none")


def raising(out, t):
    raise ValueError("my loss failed on purpose")


def nan_loss(out, t):
    return F.cross_entropy(out, t) * math.nan


def inf_loss(out, t):
    return F.cross_entropy(out, t) + math.inf


def log_of_negative(out, t):
    return torch.log(F.cross_entropy(out, t) - 100)


LOSSES = [
    case("loss-detached-gradient", lambda c: cv.gradient(c.model, detached, (c.x, c.y)), ConfigError, "loss_fn",
         "parameters"),
    case("loss-detached-eigs", lambda c: cv.eigs(c.model, detached, (c.x, c.y), progress=False), ConfigError,
         "loss_fn", "parameters"),
    case("loss-detached-diagnose", lambda c: cv.diagnose(c.model, detached, (c.x, c.y), progress=False), ConfigError,
         "loss_fn", "parameters"),
    case("loss-detached-layerwise", lambda c: cv.layerwise(c.model, detached, (c.x, c.y), progress=False),
         ConfigError, "loss_fn", "parameters"),
    case("loss-no-grad-hvp", lambda c: cv.hvp(c.model, no_grad_loss, (c.x, c.y), torch.ones(c.n)), ConfigError,
         "loss_fn", "parameters"),
    case("loss-detached-batch-loss", lambda c: cv.gradient(c.model, None, (c.x, c.y), batch_loss=lambda m, b: detached(
        m(b[0]), b[1])), ConfigError, "batch_loss", "parameters"),
    case("loss-item-gradient", lambda c: cv.gradient(c.model, itemised, (c.x, c.y)), ConfigError, "float", ".item()"),
    case("loss-item-diagnose", lambda c: cv.diagnose(c.model, itemised, (c.x, c.y), progress=False), ConfigError,
         "float"),
    case("loss-constant-gradient", lambda c: cv.gradient(c.model, constant, (c.x, c.y)), ConfigError, "loss_fn",
         "parameters"),
    case("loss-constant-eigs", lambda c: cv.eigs(c.model, constant, (c.x, c.y), progress=False), ConfigError,
         "loss_fn", "parameters"),
    case("loss-constant-diagnose", lambda c: cv.diagnose(c.model, constant, (c.x, c.y), progress=False),
         ConfigError, "loss_fn", "parameters"),
    case("loss-constant-trace", lambda c: cv.trace(c.model, constant, (c.x, c.y), samples=6, progress=False),
         ConfigError, "loss_fn", "parameters"),
    case("loss-python-number-hvp", lambda c: cv.hvp(c.model, lambda o, t: 1.0, (c.x, c.y), torch.ones(c.n)),
         ConfigError, "float"),
    case("loss-tuple-gradient", lambda c: cv.gradient(c.model, paired, (c.x, c.y)), ConfigError, "tuple"),
    case("loss-tuple-diagnose", lambda c: cv.diagnose(c.model, paired, (c.x, c.y), progress=False), ConfigError,
         "tuple"),
    case("loss-per-sample-eigs", lambda c: cv.eigs(c.model, per_sample, (c.x, c.y), progress=False), ConfigError,
         "(24,)"),
    case("loss-raises-gradient", lambda c: cv.gradient(c.model, raising, (c.x, c.y)), DataError, "loss_fn",
         "ValueError", "my loss failed"),
    case("loss-raises-diagnose", lambda c: cv.diagnose(c.model, raising, (c.x, c.y), progress=False), DataError,
         "loss_fn", "my loss failed"),
    case("loss-nan-gradient", lambda c: cv.gradient(c.model, nan_loss, (c.x, c.y)), DataError, "nan"),
    case("loss-nan-eigs", lambda c: cv.eigs(c.model, nan_loss, (c.x, c.y), progress=False), DataError, "nan"),
    case("loss-nan-diagnose", lambda c: cv.diagnose(c.model, nan_loss, (c.x, c.y), progress=False), DataError,
         "nan"),
    case("loss-log-of-negative-layerwise", lambda c: cv.layerwise(c.model, log_of_negative, (c.x, c.y),
                                                                  progress=False), DataError, "nan"),
    case("loss-inf-hvp", lambda c: cv.hvp(c.model, inf_loss, (c.x, c.y), torch.ones(c.n)), DataError, "inf"),
    case("loss-inf-density", lambda c: cv.density(c.model, inf_loss, (c.x, c.y), progress=False), DataError, "inf"),
]


@pytest.mark.parametrize("call, error, names, labels", LABELS + LOSSES)
def test_refused_in_one_sentence_and_the_model_is_as_it_was(c, call, error, names, labels):
    if labels is not None:
        c.y = labels(c)
    before = model_digest(c.model)
    with pytest.raises(error) as info:
        call(c)
    message = str(info.value)
    assert "\n" not in message.strip(), message
    for name in names:
        assert name.lower() in message.lower(), f"{name!r} not named in: {message}"
    assert model_digest(c.model) == before, "the refused call changed the model, its flags or the random states"
