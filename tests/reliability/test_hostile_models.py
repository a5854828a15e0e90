"""Hostile models, outputs, data and budgets given to the curvature analyses (issue 21, items 3
and 4): each is refused with one :class:`ConfigError` / :class:`DataError` sentence naming what
was wrong, before any long work, and the user's model — parameters, buffers, flags, ``.grad``
and the random states (:func:`digests.model_digest`) — is exactly as it was; or, where the issue
says it must work, it gives the number an independent dense reference (``torch.func``) gives.

Families (the ids' first word): ``complex`` parameters (a non-holomorphic loss has no complex
Hessian, and analysing only the real parts answered "no negative curvature" where the real
Hessian has negative eigenvalues), ``precision`` / ``meta`` / ``empty`` models, ``forward``
(a forward that raises or writes its own parameters), ``output`` (tuples, dicts, ``ModelOutput``
given to a ``loss_fn`` that wants a tensor), ``data`` (infinite streams, non-finite values,
mismatched and empty data), ``budget`` (absurd or non-integer counts).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from trainlab import curvature as cv
from trainlab.errors import ConfigError, DataError
from trainlab.instruments import HessianTrace, Monitor, Sharpness
from trainlab.train.doctor import StallDoctor

from digests import model_digest

#: Draws after which an infinite source gives up: an analysis still drawing then would never stop.
DRAW_GUARD = 100_000


def mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)


class ComplexNet(nn.Module):
    """A complex weight ``phase`` read through ``|x W|``: the loss is real and not holomorphic in ``W``."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.phase = nn.Parameter(torch.randn(3, 4, dtype=torch.cfloat, generator=g))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x.to(torch.cfloat) @ self.phase).abs())


class Raising(nn.Module):
    """A forward that raises the user's own error."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("boom: the user's forward failed")


class SecondBatchRaising(Raising):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) == 7:
            raise ValueError("boom: seven samples")
        return self.lin(x)


class Rescaling(nn.Module):
    """A forward that writes its own parameter in place (a home-made weight normalisation)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.lin.weight.mul_(0.5)
        return self.lin(x)


class DataRescaling(Rescaling):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.lin.weight.data.copy_(self.lin.weight.data / self.lin.weight.data.norm())
        return self.lin(x)


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor):
        out = self.lin(x)
        return out, out.pow(2).mean()


class DictNet(TupleNet):
    def forward(self, x: torch.Tensor):
        return {"logits": self.lin(x)}


@dataclass
class ModelOutput:
    """What a HuggingFace model returns: a dataclass of named tensors."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class HFLikeNet(TupleNet):
    def forward(self, x: torch.Tensor):
        return ModelOutput(logits=self.lin(x))


class Endless(IterableDataset):
    """An infinite stream of the same batch; raises after :data:`DRAW_GUARD` draws so a hang shows as a failure."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batched: bool = True) -> None:
        self.x, self.y, self.batched = x, y, batched

    def __iter__(self):
        for draw in itertools.count():
            if draw >= DRAW_GUARD:
                raise AssertionError(f"drew {DRAW_GUARD:,} times from an infinite stream: the analysis never stops")
            i = draw % len(self.x)
            yield (self.x[:4], self.y[:4]) if self.batched else (self.x[i], self.y[i])


def endless_generator(x: torch.Tensor, y: torch.Tensor):
    """The whole batch again and again; raises after :data:`DRAW_GUARD` draws so a hang shows as a failure."""
    for draw in itertools.count():
        if draw >= DRAW_GUARD:
            raise AssertionError(f"drew {DRAW_GUARD:,} times from an infinite generator: the analysis never stops")
        yield x, y


@pytest.fixture
def c():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 3, generator=g)
    y = torch.arange(24) % 3
    model = mlp()
    model(x).sum().backward()  # gradients in .grad, which analyses must keep
    return SimpleNamespace(model=model, x=x, y=y, loss=F.cross_entropy, n=sum(p.numel() for p in model.parameters()))


def case(id, call, error, *names, prepare=None):
    """``call(c)`` must raise ``error`` naming ``names``; ``prepare(c)`` sets the hostile scene first."""
    return pytest.param(call, error, names, prepare, id=id)


def use(model_factory):
    def prepare(c):
        c.model = model_factory()
        c.n = sum(p.numel() for p in c.model.parameters())
    return prepare


def to_dtype(dtype):
    def prepare(c):
        c.model = mlp(dtype=dtype)
        c.x = c.x.to(dtype)
    return prepare


def on_meta(c):
    c.model = mlp().to("meta")


def frozen(c):
    c.model.requires_grad_(False)


def parameterless(c):
    c.model = nn.Sequential(nn.Flatten(), nn.Tanh())
    c.y = torch.randn(24, 3)
    c.loss = F.mse_loss


def fake_saddle(n: int) -> SimpleNamespace:
    """What ``escape`` reads of a diagnosis: a negative direction over ``n`` parameters."""
    return SimpleNamespace(operator="hessian", negative_curvature=True, escape_directions=torch.ones(1, n) / n**0.5,
                           escape_eigenvalues=torch.tensor([-1.0]), grad_norm=0.0, grad_tol=1.0, params=[],
                           eigenvalues=torch.tensor([1.0, -1.0]), flat_threshold=1e-6, verdict="saddle")


def monitor_reading(c, instrument=Sharpness):
    """A Monitor records a failed reading as NaN with the error's sentence, so training goes on:
    raise that sentence here as the error type it names, to check it like the others."""
    monitor = Monitor(every=1, sample=24, instruments=[instrument(every=1)], progress=False)
    with pytest.warns(RuntimeWarning):
        (reading,) = monitor.after_step(c.model, 1.0, c.loss, (c.x, c.y), step=1)
    assert math.isnan(reading.value)
    kind, _, message = reading.extra["error"].partition(": ")
    raise {"ConfigError": ConfigError, "DataError": DataError}.get(kind, RuntimeError)(message)


def doctor_event(c):
    """A flat loss for 20 updates is a stall: the doctor diagnoses it (act=False)."""
    doctor = StallDoctor(window=10, act=False, max_samples=24)
    for _ in range(20):
        doctor.after_step(c.model, 1.0, c.loss, (c.x, c.y))


CX = use(ComplexNet)

COMPLEX = [
    case("complex-gradient", lambda c: cv.gradient(c.model, c.loss, (c.x, c.y)), ConfigError, "phase", "complex",
         prepare=CX),
    case("complex-hvp", lambda c: cv.hvp(c.model, c.loss, (c.x, c.y), torch.ones(c.n)), ConfigError, "phase",
         "complex", prepare=CX),
    case("complex-hessian", lambda c: cv.hessian(c.model, c.loss, (c.x, c.y)), ConfigError, "phase", "complex",
         prepare=CX),
    case("complex-eigs", lambda c: cv.eigs(c.model, c.loss, (c.x, c.y), k=2, progress=False), ConfigError, "phase",
         "complex", prepare=CX),
    case("complex-density", lambda c: cv.density(c.model, c.loss, (c.x, c.y), probes=2, steps=5, progress=False),
         ConfigError, "phase", "complex", prepare=CX),
    case("complex-trace", lambda c: cv.trace(c.model, c.loss, (c.x, c.y), samples=6, progress=False), ConfigError,
         "phase", "complex", prepare=CX),
    case("complex-diagnose-dense", lambda c: cv.diagnose(c.model, c.loss, (c.x, c.y), progress=False), ConfigError,
         "phase", "complex", prepare=CX),
    case("complex-diagnose-lanczos", lambda c: cv.diagnose(c.model, c.loss, (c.x, c.y), method="lanczos", k=2,
                                                           progress=False), ConfigError, "phase", "complex",
         prepare=CX),
    case("complex-escape", lambda c: cv.escape(c.model, c.loss, (c.x, c.y), fake_saddle(c.n)), ConfigError, "phase",
         "complex", prepare=CX),
    case("complex-layerwise", lambda c: cv.layerwise(c.model, c.loss, (c.x, c.y), progress=False), ConfigError,
         "phase", "complex", prepare=CX),
    case("complex-layerwise-one-group", lambda c: cv.layerwise(c.model, c.loss, (c.x, c.y), groups=["phase"],
                                                               progress=False), ConfigError, "phase", "complex",
         prepare=CX),
    case("complex-ggn", lambda c: cv.eigs(c.model, c.loss, (c.x, c.y), k=2, operator="ggn", progress=False),
         ConfigError, "phase", "complex", prepare=CX),
    case("complex-monitor-sharpness", monitor_reading, ConfigError, "phase", "complex", prepare=CX),
    case("complex-monitor-trace", lambda c: monitor_reading(c, HessianTrace), ConfigError, "phase", "complex",
         prepare=CX),
    case("complex-doctor", doctor_event, ConfigError, "phase", "complex", prepare=CX),
]

MODELS = [
    case("precision-float16-gradient", lambda c: cv.gradient(c.model, c.loss, (c.x, c.y)), ConfigError, "float16",
         "0.weight", prepare=to_dtype(torch.float16)),
    case("precision-float16-eigs", lambda c: cv.eigs(c.model, c.loss, (c.x, c.y), k=2, progress=False), ConfigError,
         "float16", prepare=to_dtype(torch.float16)),
    case("precision-float16-diagnose", lambda c: cv.diagnose(c.model, c.loss, (c.x, c.y), progress=False),
         ConfigError, "float16", prepare=to_dtype(torch.float16)),
    case("precision-bfloat16-hvp", lambda c: cv.hvp(c.model, c.loss, (c.x, c.y), torch.ones(c.n)), ConfigError,
         "bfloat16", prepare=to_dtype(torch.bfloat16)),
    case("precision-bfloat16-trace", lambda c: cv.trace(c.model, c.loss, (c.x, c.y), samples=6, progress=False),
         ConfigError, "bfloat16", prepare=to_dtype(torch.bfloat16)),
    case("precision-bfloat16-doctor", doctor_event, ConfigError, "bfloat16", prepare=to_dtype(torch.bfloat16)),
    case("meta-gradient", lambda c: cv.gradient(c.model, c.loss, (c.x, c.y)), ConfigError, "meta", "0.weight",
         prepare=on_meta),
    case("meta-diagnose", lambda c: cv.diagnose(c.model, c.loss, (c.x, c.y), progress=False), ConfigError, "meta",
         prepare=on_meta),
    case("meta-layerwise", lambda c: cv.layerwise(c.model, c.loss, (c.x, c.y), progress=False), ConfigError, "meta",
         prepare=on_meta),
    case("empty-no-parameters-eigs", lambda c: cv.eigs(c.model, c.loss, (c.x, c.y), progress=False), ConfigError,
         "parameters", prepare=parameterless),
    case("empty-no-parameters-diagnose", lambda c: cv.diagnose(c.model, c.loss, (c.x, c.y), progress=False),
         ConfigError, "parameters", prepare=parameterless),
    case("empty-no-parameters-layerwise", lambda c: cv.layerwise(c.model, c.loss, (c.x, c.y), progress=False),
         ConfigError, "parameters", prepare=parameterless),
    case("empty-all-frozen-diagnose", lambda c: cv.diagnose(c.model, c.loss, (c.x, c.y), progress=False),
         ConfigError, "parameters", prepare=frozen),
    case("empty-all-frozen-density", lambda c: cv.density(c.model, c.loss, (c.x, c.y), progress=False),
         ConfigError, "parameters", prepare=frozen),
    case("empty-all-frozen-layerwise", lambda c: cv.layerwise(c.model, c.loss, (c.x, c.y), progress=False),
         ConfigError, "parameters", prepare=frozen),
    case("forward-raises-gradient", lambda c: cv.gradient(c.model, c.loss, (c.x, c.y)), DataError, "model",
         "ValueError", "boom", prepare=use(Raising)),
    case("forward-raises-eigs", lambda c: cv.eigs(c.model, c.loss, (c.x, c.y), progress=False), DataError, "model",
         "boom", prepare=use(Raising)),
    case("forward-raises-diagnose", lambda c: cv.diagnose(c.model, c.loss, (c.x, c.y), progress=False), DataError,
         "model", "boom", prepare=use(Raising)),
    case("forward-raises-density", lambda c: cv.density(c.model, c.loss, (c.x, c.y), progress=False), DataError,
         "model", "boom", prepare=use(Raising)),
    case("forward-raises-ggn", lambda c: cv.eigs(c.model, c.loss, (c.x, c.y), operator="ggn", progress=False),
         DataError, "model", "boom", prepare=use(Raising)),
    case("forward-raises-on-second-batch", lambda c: cv.gradient(c.model, c.loss, [(c.x[:17], c.y[:17]),
                                                                                     (c.x[17:], c.y[17:])]),
         DataError, "batch 1", "seven samples", prepare=use(SecondBatchRaising)),
    case("forward-writes-parameter-gradient", lambda c: cv.gradient(c.model, c.loss, (c.x, c.y)), ConfigError,
         "lin.weight", "in place", prepare=use(Rescaling)),
    case("forward-writes-parameter-eigs", lambda c: cv.eigs(c.model, c.loss, (c.x, c.y), k=2, progress=False),
         ConfigError, "lin.weight", prepare=use(Rescaling)),
    case("forward-writes-parameter-diagnose", lambda c: cv.diagnose(c.model, c.loss, (c.x, c.y), progress=False),
         ConfigError, "lin.weight", prepare=use(Rescaling)),
    case("forward-writes-parameter-data-hvp", lambda c: cv.hvp(c.model, c.loss, (c.x, c.y), torch.ones(c.n)),
         ConfigError, "lin.weight", prepare=use(DataRescaling)),
    case("forward-writes-parameter-data-trace", lambda c: cv.trace(c.model, c.loss, (c.x, c.y), samples=6,
                                                                   progress=False),
         ConfigError, "lin.weight", prepare=use(DataRescaling)),
    case("forward-writes-parameter-layerwise", lambda c: cv.layerwise(c.model, c.loss, (c.x, c.y), progress=False),
         ConfigError, "lin.weight", prepare=use(Rescaling)),
]

OUTPUTS = [
    case("output-tuple-gradient", lambda c: cv.gradient(c.model, c.loss, (c.x, c.y)), ConfigError, "tuple",
         "batch_loss", prepare=use(TupleNet)),
    case("output-tuple-eigs", lambda c: cv.eigs(c.model, c.loss, (c.x, c.y), k=2, progress=False), ConfigError,
         "tuple", "batch_loss", prepare=use(TupleNet)),
    case("output-tuple-diagnose", lambda c: cv.diagnose(c.model, c.loss, (c.x, c.y), progress=False), ConfigError,
         "tuple", "batch_loss", prepare=use(TupleNet)),
    case("output-tuple-layerwise", lambda c: cv.layerwise(c.model, c.loss, (c.x, c.y), progress=False), ConfigError,
         "tuple", "batch_loss", prepare=use(TupleNet)),
    case("output-dict-gradient", lambda c: cv.gradient(c.model, c.loss, (c.x, c.y)), ConfigError, "dict",
         "batch_loss", prepare=use(DictNet)),
    case("output-dict-diagnose", lambda c: cv.diagnose(c.model, c.loss, (c.x, c.y), progress=False), ConfigError,
         "dict", "batch_loss", prepare=use(DictNet)),
    case("output-dict-trace", lambda c: cv.trace(c.model, c.loss, (c.x, c.y), samples=6, progress=False),
         ConfigError, "dict", "batch_loss", prepare=use(DictNet)),
    case("output-modeloutput-gradient", lambda c: cv.gradient(c.model, c.loss, (c.x, c.y)), ConfigError,
         "ModelOutput", "batch_loss", prepare=use(HFLikeNet)),
    case("output-modeloutput-diagnose", lambda c: cv.diagnose(c.model, c.loss, (c.x, c.y), progress=False),
         ConfigError, "ModelOutput", "batch_loss", prepare=use(HFLikeNet)),
    case("output-modeloutput-density", lambda c: cv.density(c.model, c.loss, (c.x, c.y), progress=False),
         ConfigError, "ModelOutput", "batch_loss", prepare=use(HFLikeNet)),
    case("output-tuple-ggn", lambda c: cv.eigs(c.model, c.loss, (c.x, c.y), k=2, operator="ggn", progress=False),
         ConfigError, "tuple", prepare=use(TupleNet)),
    case("output-tuple-doctor", doctor_event, ConfigError, "tuple", "batch_loss", prepare=use(TupleNet)),
]


def nan_at(x, i, j, value=math.nan):
    x = x.clone()
    x[i, j] = value
    return x


DATA = [
    case("data-iterable-dataset-gradient", lambda c: cv.gradient(c.model, c.loss, Endless(c.x, c.y)), DataError,
         "max_samples", "Endless"),
    case("data-iterable-dataset-eigs", lambda c: cv.eigs(c.model, c.loss, Endless(c.x, c.y), progress=False),
         DataError, "max_samples"),
    case("data-iterable-dataset-diagnose", lambda c: cv.diagnose(c.model, c.loss, Endless(c.x, c.y), progress=False),
         DataError, "max_samples"),
    case("data-iterable-dataset-layerwise", lambda c: cv.layerwise(c.model, c.loss, Endless(c.x, c.y),
                                                                   progress=False), DataError, "max_samples"),
    case("data-loader-over-iterable-dataset", lambda c: cv.trace(c.model, c.loss, DataLoader(
        Endless(c.x, c.y, batched=False), batch_size=6), samples=6, progress=False), DataError, "max_samples",
        "DataLoader"),
    case("data-generator-hvp", lambda c: cv.hvp(c.model, c.loss, endless_generator(c.x, c.y), torch.ones(c.n)),
         DataError, "max_samples", "generator"),
    case("data-generator-density", lambda c: cv.density(c.model, c.loss, endless_generator(c.x, c.y),
                                                        progress=False), DataError, "max_samples"),
    case("data-itertools-repeat-diagnose", lambda c: cv.diagnose(c.model, c.loss, itertools.repeat((c.x, c.y)),
                                                                 progress=False), DataError, "max_samples"),
    case("data-inf-input-eigs", lambda c: cv.eigs(c.model, c.loss, (nan_at(c.x, 3, 2, math.inf), c.y),
                                                  progress=False), DataError, "inf", "sample 3"),
    case("data-nan-input-diagnose", lambda c: cv.diagnose(c.model, c.loss, (nan_at(c.x, 5, 0), c.y),
                                                          progress=False), DataError, "nan", "sample 5"),
    case("data-nan-target-layerwise", lambda c: cv.layerwise(c.model, F.mse_loss, (c.x, nan_at(torch.zeros(24, 3),
                                                                                                 7, 1)),
                                                             progress=False), DataError, "nan", "sample 7"),
    case("data-nan-second-batch-trace", lambda c: cv.trace(c.model, c.loss, [(c.x[:12], c.y[:12]),
                                                                            (nan_at(c.x[12:], 2, 1), c.y[12:])],
                                                           samples=6, progress=False), DataError, "batch 1"),
    case("data-mismatched-eigs", lambda c: cv.eigs(c.model, c.loss, (c.x, c.y[:23]), progress=False), DataError,
         "24", "23"),
    case("data-mismatched-diagnose", lambda c: cv.diagnose(c.model, c.loss, [(c.x[:10], c.y[:10]),
                                                                            (c.x[10:], c.y[10:20])], progress=False),
         DataError, "14", "10"),
    case("data-empty-eigs", lambda c: cv.eigs(c.model, c.loss, (c.x[:0], c.y[:0]), progress=False), DataError,
         "no samples"),
    case("data-empty-loader-layerwise", lambda c: cv.layerwise(c.model, c.loss, DataLoader(
        torch.utils.data.TensorDataset(c.x[:0], c.y[:0]), batch_size=4), progress=False), DataError, "no samples"),
    case("data-empty-generator-trace", lambda c: cv.trace(c.model, c.loss, iter([]), samples=6, max_samples=10,
                                                          progress=False), DataError, "no samples"),
]

BUDGETS = [
    case("budget-trace-samples-1e9-int", lambda c: cv.trace(c.model, c.loss, (c.x, c.y), samples=10**9,
                                                            progress=False), ConfigError, "samples", "1,000,000,000"),
    case("budget-trace-samples-1e9-float", lambda c: cv.trace(c.model, c.loss, (c.x, c.y), samples=1e9,
                                                              progress=False), ConfigError, "samples"),
    case("budget-trace-samples-fraction", lambda c: cv.trace(c.model, c.loss, (c.x, c.y), samples=2.5,
                                                             progress=False), ConfigError, "2.5"),
    case("budget-trace-samples-bool", lambda c: cv.trace(c.model, c.loss, (c.x, c.y), samples=True, progress=False),
         ConfigError, "True"),
    case("budget-trace-samples-string", lambda c: cv.trace(c.model, c.loss, (c.x, c.y), samples="10",
                                                           progress=False), ConfigError, "'10'"),
    case("budget-trace-samples-nan", lambda c: cv.trace(c.model, c.loss, (c.x, c.y), samples=math.nan,
                                                        progress=False), ConfigError, "nan"),
    case("budget-density-probes-1e9", lambda c: cv.density(c.model, c.loss, (c.x, c.y), probes=10**9,
                                                           progress=False), ConfigError, "probes", "1,000,000,000"),
    case("budget-density-probes-times-steps", lambda c: cv.density(c.model, c.loss, (c.x, c.y), probes=900_000,
                                                                   steps=30, progress=False),
         ConfigError, "900,000"),
    case("budget-density-grid-points-1e9", lambda c: cv.density(c.model, c.loss, (c.x, c.y), grid_points=10**9,
                                                                progress=False), ConfigError, "grid_points"),
    case("budget-density-steps-nan", lambda c: cv.density(c.model, c.loss, (c.x, c.y), steps=math.nan,
                                                          progress=False), ConfigError, "steps"),
    case("budget-diagnose-probes-1e9", lambda c: cv.diagnose(c.model, c.loss, (c.x, c.y), method="lanczos",
                                                             probes=10**9, progress=False),
         ConfigError, "probes", "1,000,000,000"),
    case("budget-diagnose-steps-string", lambda c: cv.diagnose(c.model, c.loss, (c.x, c.y), method="lanczos",
                                                               steps="80", progress=False), ConfigError, "'80'"),
    case("budget-layerwise-probes-1e9", lambda c: cv.layerwise(c.model, c.loss, (c.x, c.y), method="lanczos",
                                                               probes=10**9, progress=False),
         ConfigError, "probes", "1,000,000,000"),
    case("budget-eigs-max-hvp-1e12", lambda c: cv.eigs(c.model, c.loss, (c.x, c.y), max_hvp=1e12, progress=False),
         ConfigError, "max_hvp"),
    case("budget-eigs-k-float", lambda c: cv.eigs(c.model, c.loss, (c.x, c.y), k=2.0, progress=False), ConfigError,
         "k=2.0"),
    case("budget-trace-max-hvp-nan", lambda c: cv.trace(c.model, c.loss, (c.x, c.y), max_hvp=math.nan,
                                                        progress=False), ConfigError, "max_hvp"),
]


#: A hang fails the case after 30 s instead of stalling the suite (conftest.hang_alarm).
pytestmark = pytest.mark.usefixtures("hang_alarm")


def named(name: str, message: str) -> bool:
    return name.lower() in message.lower()


@pytest.mark.parametrize("call, error, names, prepare", COMPLEX + MODELS + OUTPUTS + DATA + BUDGETS)
def test_refused_in_one_sentence_and_the_model_is_as_it_was(c, call, error, names, prepare):
    if prepare is not None:
        prepare(c)
    before = model_digest(c.model) if not _on_meta(c.model) else None
    with pytest.raises(error) as info:
        call(c)
    message = str(info.value)
    assert "\n" not in message.strip(), message
    for name in names:
        assert named(name, message), f"{name!r} not named in: {message}"
    if before is not None:
        assert model_digest(c.model) == before, "the refused call changed the model, its flags or the random states"


def _on_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


# ---------------------------------------------------------------- what must work, against a dense reference


def reference_hessian(model: nn.Module, loss_of, x: torch.Tensor) -> torch.Tensor:
    """``∇²L`` over every parameter, ``L = loss_of(model(x))``, by ``torch.func.hessian`` of a flat vector."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = list(params)
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]

    def f(flat):
        parts = {k: t.reshape(s) for k, t, s in zip(names, flat.split(sizes), shapes)}
        return loss_of(torch.func.functional_call(model, parts, (x,)))

    flat = torch.cat([params[k].reshape(-1) for k in names])
    return torch.func.hessian(f)(flat)


def tolerance(H: torch.Tensor) -> float:
    """float64 sums over n terms: about √n·ε of the largest entry, with a margin of 100."""
    return 100 * H.shape[0] ** 0.5 * torch.finfo(torch.float64).eps * max(float(H.abs().max()), 1.0)


class Counter(nn.Module):
    """A forward that counts its calls in a buffer (which the output does not read)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def problem64():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = torch.arange(20) % 3
    return x, y


def test_complex_model_with_only_real_parameters_selected_is_the_real_block():
    """The complex parameter held fixed (``params="head"``): the block over the real head is well
    defined, and equals the Hessian of the head alone on the fixed features ``|x W|``."""
    model = ComplexNet()
    x, y = problem64()
    x = x.float()
    before = model_digest(model)
    got = cv.hessian(model, F.cross_entropy, (x, y), params="head").double()
    features = (x.to(torch.cfloat) @ model.phase.detach()).abs().double()

    def f(flat):
        return F.cross_entropy(features @ flat[:12].reshape(3, 4).T + flat[12:], y)

    H = torch.func.hessian(f)(torch.cat([model.head.weight.detach().reshape(-1), model.head.bias.detach()]).double())
    eps = torch.finfo(torch.float32).eps  # the model runs in float32: sums over 20 samples
    torch.testing.assert_close(got, H, atol=50 * len(x) ** 0.5 * eps * float(H.abs().max()), rtol=0)
    assert model_digest(model) == before


def test_forward_that_counts_in_a_buffer_is_analysed_and_the_count_restored():
    model = Counter().double()
    x, y = problem64()
    before = model_digest(model)
    d = cv.diagnose(model, F.cross_entropy, (x, y), progress=False)
    assert model_digest(model) == before  # the buffer counted every forward, and is back
    H = reference_hessian(model.net, lambda out: F.cross_entropy(out, y), x)
    torch.testing.assert_close(d.eigenvalues, torch.linalg.eigvalsh(H).flip(0), atol=tolerance(H), rtol=0)


def test_infinite_stream_with_max_samples_is_its_first_samples():
    """An infinite generator bounded by max_samples: the gradient of its first 30 samples (a batch
    and a half), read lazily."""
    model = mlp(dtype=torch.float64)
    x, y = problem64()
    got = cv.gradient(model, F.cross_entropy, endless_generator(x, y), max_samples=30)
    first = torch.cat([x, x])[:30], torch.cat([y, y])[:30]
    model.zero_grad()
    F.cross_entropy(model(first[0]), first[1]).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(got, expected, atol=tolerance(expected[None]), rtol=0)


def test_loss_fn_that_reads_a_tuple_output_is_not_refused():
    """Only a loss_fn that fails on a non-tensor output is refused; one written for the tuple works."""
    model = TupleNet().double()
    x, y = problem64()
    got = cv.hessian(model, lambda out, t: F.cross_entropy(out[0], t), (x, y))
    params = {k: v.detach() for k, v in model.lin.named_parameters()}

    def f(flat):
        return F.cross_entropy(x @ flat[:9].reshape(3, 3).T + flat[9:], y)

    H = torch.func.hessian(f)(torch.cat([params["weight"].reshape(-1), params["bias"]]))
    torch.testing.assert_close(got, H, atol=tolerance(H), rtol=0)


def test_huge_k_is_clamped_to_the_parameter_count_with_a_note():
    """k=10⁹ is the whole spectrum, said in a note: the values are the dense reference's."""
    model = mlp(dtype=torch.float64)
    x, y = problem64()
    n = sum(p.numel() for p in model.parameters())
    r = cv.eigs(model, F.cross_entropy, (x, y), k=10**9, progress=False)
    assert len(r.values) == n and any("1,000,000,000" in note for note in r.notes)
    exact = torch.linalg.eigvalsh(reference_hessian(model, lambda out: F.cross_entropy(out, y), x)).flip(0)
    scale = float(exact.abs().max())  # converged pairs: |λ - θ| <= residual <= tol · max|λ| (tol 1e-6)
    assert bool(r.converged.all())
    torch.testing.assert_close(r.values, exact, atol=2e-6 * scale, rtol=0)
