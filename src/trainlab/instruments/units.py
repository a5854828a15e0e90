"""Dead and saturated units, seen where the activation functions are called."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from trainlab import distributed as dist
from trainlab.errors import ConfigError
from trainlab.instruments.monitor import Context, Instrument

#: A tanh unit is saturated on a sample when ``|y| > TANH_LIMIT``.
TANH_LIMIT = 0.99
#: A sigmoid unit is saturated on a sample when ``y < SIGMOID_LOW`` or ``y > SIGMOID_HIGH``.
SIGMOID_LOW, SIGMOID_HIGH = 0.01, 0.99
#: A GELU unit is dead on a sample when its input ``z < GELU_DEAD``: there ``|GELU'(z)| < 0.012``.
GELU_DEAD = -3.0
#: The activation functions watched, by kind: each call's output (its input, for GELU) is read.
FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.Tensor.relu: "relu", F.gelu: "gelu",
             torch.tanh: "tanh", torch.Tensor.tanh: "tanh", F.tanh: "tanh",
             torch.sigmoid: "sigmoid", torch.Tensor.sigmoid: "sigmoid", F.sigmoid: "sigmoid"}
#: Why a model's units cannot be read (kept by :class:`Units` after the first try).
NOTHING = ("the model calls no nn.ReLU, nn.GELU, nn.Tanh or nn.Sigmoid (nor F.relu, F.gelu, torch.tanh or"
           " torch.sigmoid) whose units could be watched")


class Units(Instrument):
    """``units``: the share of units that no longer pass gradient, per activation module.

    Where: every call of an activation function during one forward pass over the sample —
    ``nn.ReLU``, ``nn.GELU``, ``nn.Tanh``, ``nn.Sigmoid`` and the functions they call, also
    called directly in a ``forward`` (``F.relu`` inside ``nn.TransformerEncoderLayer``,
    ``F.gelu`` in Hugging Face's ``GELUActivation``), seen by a torch-function mode; a call is
    named after the innermost module running it (``name#2`` for its second call in one pass).
    A module whose class name holds ``GELU`` (``nn.GELU``, Hugging Face's ``NewGELUActivation``,
    which computes GELU from ``tanh``) counts as one GELU call on its input, whatever it calls.

    A unit is one index along the activation's feature dimension — dimension 1 of a 2-D
    ``(batch, features)`` output and of a channels-first image ``(batch, C, H, W)`` (a
    convolution channel, pooled over positions), the last dimension of a 3-D
    ``(batch, time, features)`` output. Over every sample (and position) of the Monitor's sample:

    * **dead** (ReLU): ``y = 0`` for every one — ``ReLU'(z) = 0`` there, so the unit's
      incoming weights never receive a gradient again (Lu et al. 2019, "Dying ReLU and
      initialization: theory and numerical examples"); (GELU) ``z < -3`` for every one, where
      ``|GELU'(z)| < 0.012``, GELU's counterpart of a saturated sigmoid;
    * **saturated** (tanh: ``|y| > 0.99``; sigmoid: ``y < 0.01`` or ``y > 0.99``)
      on every one — the derivative is below 0.02 (tanh) or 0.0099 (sigmoid), the vanishing
      gradients Glorot & Bengio 2010 traced to saturation ("Understanding the difficulty of
      training deep feedforward neural networks").

    ``value = Σ (dead + saturated units) / Σ units`` over all calls; ``parts`` maps each call's
    name to ``{"dead": share, "saturated": share}``. The lecture's remedies: a better
    initialisation, normalisation (BatchNorm), a lower learning rate. Cost: one forward pass over
    the sample (no gradient); the hooks are removed afterwards, also when the pass fails. A model
    that calls none of these functions is refused once (:class:`~trainlab.errors.ConfigError`,
    one sentence), and later readings repeat that sentence without running the model.

    Under ``torch.distributed`` (a process group of several ranks is initialised) each rank's
    sample is its share, and a unit is stuck when it is stuck on every rank's share (an
    element-wise minimum over the ranks): every rank reads the units of all the samples together.
    """

    name = "units"

    def __init__(self, every: int | None = None):
        super().__init__(every)
        self._cannot: str | None = None  # why the model's units cannot be read, once found

    def reset(self) -> None:
        """Another model: try again."""
        self._cannot = None

    @torch.no_grad()
    def read(self, ctx: Context) -> dict[str, Any]:
        if self._cannot is not None:
            raise ConfigError(self._cannot)
        found = _watched_pass(ctx)  # (name, kind, stuck flag per unit), in call order
        if not found:
            self._cannot = NOTHING
            raise ConfigError(NOTHING)
        if dist.active():  # stuck on every rank's share
            flags = dist.all_reduce_min(torch.cat([f for _, _, f in found]).to(torch.int32))
            found = [(name, kind, part.bool())
                     for (name, kind, _), part in zip(found, flags.split([f.numel() for _, _, f in found]))]
        parts, units, stuck = {}, 0, 0
        for name, kind, flags in found:
            n, k = flags.numel(), int(flags.sum())
            share = k / n if n else 0.0
            dead = kind in ("relu", "gelu")
            parts[name] = {"dead": share if dead else 0.0, "saturated": 0.0 if dead else share}
            units, stuck = units + n, stuck + k
        return {"value": stuck / units if units else 0.0, "parts": parts, "n_units": units}


class _Calls(TorchFunctionMode):
    """Records each watched activation call ``(module name, kind, stuck flags)`` (:data:`FUNCTIONS`),
    naming it after the innermost running module (``stack``); none inside a GELU module."""

    def __init__(self, stack: list[tuple[str, bool]], record: Any):
        super().__init__()
        self.stack, self.record = stack, record

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        kind = FUNCTIONS.get(func)
        if kind is not None and self.stack and not self.stack[-1][1] and isinstance(out, torch.Tensor):
            self.record(self.stack[-1][0], kind, args[0] if kind == "gelu" else out)
        return out


def _watched_pass(ctx: Context) -> list[tuple[str, str, torch.Tensor]]:
    """One forward pass of the loss over the sample, recording every activation call (class docstring)."""
    found: list[tuple[str, str, torch.Tensor]] = []
    calls: dict[str, int] = {}
    stack: list[tuple[str, bool]] = []  # (module name, a GELU module) of the modules running now

    def record(name: str, kind: str, tensor: torch.Tensor) -> None:
        calls[name] = calls.get(name, 0) + 1
        found.append((name if calls[name] == 1 else f"{name}#{calls[name]}", kind, _stuck(kind, tensor)))

    def enter(name: str, gelu: bool):
        def hook(_module: nn.Module, inputs: Any) -> None:
            if gelu and not (stack and stack[-1][1]) and inputs and isinstance(inputs[0], torch.Tensor):
                record(name, "gelu", inputs[0])
            stack.append((name, gelu or bool(stack and stack[-1][1])))
        return hook

    def leave(_module: nn.Module, _inputs: Any, _output: Any) -> None:
        if stack:
            stack.pop()

    handles = []
    try:
        for name, m in ctx.model.named_modules():
            gelu = "GELU" in type(m).__name__
            handles += [m.register_forward_pre_hook(enter(name or "model", gelu)), m.register_forward_hook(leave)]
        with _Calls(stack, record):
            ctx.loss()
    finally:
        for handle in handles:
            handle.remove()
    return found


def _stuck(kind: str, y: torch.Tensor) -> torch.Tensor:
    """A boolean per unit: dead (ReLU: ``y = 0``; GELU: input ``y < -3``) or saturated (tanh,
    sigmoid) on every sample and position."""
    if kind == "relu":
        bad = y == 0
    elif kind == "gelu":
        bad = y < GELU_DEAD
    elif kind == "tanh":
        bad = y.abs() > TANH_LIMIT
    else:
        bad = (y < SIGMOID_LOW) | (y > SIGMOID_HIGH)
    if bad.dim() <= 1:
        return bad.reshape(-1)[:0]  # no feature dimension: no units
    units = -1 if bad.dim() == 3 else 1
    return bad.movedim(units, 0).reshape(bad.shape[units], -1).all(dim=1)
