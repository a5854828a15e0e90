"""Dead and saturated units, seen through forward hooks on the activation modules."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainlab import distributed as dist
from trainlab.errors import ConfigError
from trainlab.instruments.monitor import Context, Instrument

#: A tanh unit is saturated on a sample when ``|y| > TANH_LIMIT``.
TANH_LIMIT = 0.99
#: A sigmoid unit is saturated on a sample when ``y < SIGMOID_LOW`` or ``y > SIGMOID_HIGH``.
SIGMOID_LOW, SIGMOID_HIGH = 0.01, 0.99
WATCHED = (nn.ReLU, nn.Tanh, nn.Sigmoid)


class Units(Instrument):
    """``units``: the share of units that no longer pass gradient, per activation module.

    A unit is one index along the activation's feature dimension — dimension 1 of a 2-D
    ``(batch, features)`` output and of a channels-first image ``(batch, C, H, W)`` (a
    convolution channel, pooled over positions), the last dimension of a 3-D
    ``(batch, time, features)`` output. Over every sample (and position) of the Monitor's sample:

    * **dead** (``nn.ReLU``): ``y = 0`` for every one — ``ReLU'(z) = 0`` there, so the unit's
      incoming weights never receive a gradient again (Lu et al. 2019, "Dying ReLU and
      initialization: theory and numerical examples");
    * **saturated** (``nn.Tanh``: ``|y| > 0.99``; ``nn.Sigmoid``: ``y < 0.01`` or ``y > 0.99``)
      on every one — the derivative is below 0.02 (tanh) or 0.0099 (sigmoid), the vanishing
      gradients Glorot & Bengio 2010 traced to saturation ("Understanding the difficulty of
      training deep feedforward neural networks").

    ``value = Σ (dead + saturated units) / Σ units`` over all watched modules; ``parts`` maps
    each module's name (``name#2`` for its second call in one forward pass) to
    ``{"dead": share, "saturated": share}``. The lecture's remedies: a better initialisation,
    normalisation (BatchNorm), a lower learning rate. Cost: one forward pass over the sample
    (no gradient); the hooks are removed afterwards, also when the pass fails.

    Under ``torch.distributed`` (a process group of several ranks is initialised) each rank's
    sample is its share, and a unit is stuck when it is stuck on every rank's share (an
    element-wise minimum over the ranks): every rank reads the units of all the samples together.
    """

    name = "units"

    @torch.no_grad()
    def read(self, ctx: Context) -> dict[str, Any]:
        modules = [(name, m) for name, m in ctx.model.named_modules() if isinstance(m, WATCHED)]
        if not modules:
            raise ConfigError("the model has no nn.ReLU, nn.Tanh or nn.Sigmoid module whose units could be watched")
        found: list[tuple[str, torch.Tensor]] = []  # (name, stuck flag per unit), in call order
        calls: dict[str, int] = {}

        def watch(name: str, module: nn.Module):
            def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
                calls[name] = calls.get(name, 0) + 1
                found.append((name if calls[name] == 1 else f"{name}#{calls[name]}", _stuck(module, output)))
            return hook

        handles = [m.register_forward_hook(watch(name, m)) for name, m in modules]
        try:
            ctx.loss()
        finally:
            for handle in handles:
                handle.remove()
        if dist.active() and found:  # stuck on every rank's share
            flags = dist.all_reduce_min(torch.cat([f for _, f in found]).to(torch.int32))
            found = [(name, part.bool()) for (name, _), part in zip(found, flags.split([f.numel() for _, f in found]))]
        parts, units, stuck = {}, 0, 0
        by_name = dict(modules)
        for name, flags in found:
            n, k = flags.numel(), int(flags.sum())
            kind = _kind(by_name, name)
            share = k / n if n else 0.0
            parts[name] = {"dead": share if kind == "dead" else 0.0, "saturated": share if kind == "saturated" else 0.0}
            units, stuck = units + n, stuck + k
        return {"value": stuck / units if units else 0.0, "parts": parts, "n_units": units}


def _kind(modules: dict[str, nn.Module], name: str) -> str:
    return "dead" if isinstance(modules[name.partition("#")[0]], nn.ReLU) else "saturated"


def _stuck(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """A boolean per unit: dead (ReLU) or saturated (tanh, sigmoid) on every sample and position."""
    if isinstance(module, nn.ReLU):
        bad = y == 0
    elif isinstance(module, nn.Tanh):
        bad = y.abs() > TANH_LIMIT
    else:
        bad = (y < SIGMOID_LOW) | (y > SIGMOID_HIGH)
    if bad.dim() <= 1:
        return bad.reshape(-1)[:0]  # no feature dimension: no units
    units = -1 if bad.dim() == 3 else 1
    return bad.movedim(units, 0).reshape(bad.shape[units], -1).all(dim=1)
