"""Error-surface slices: the loss on a plane through the current parameters ``θ``::

    L(α, β) = L(θ + α d₁ + β d₂),    α, β on a grid

Directions default to random, *filter-normalised* ones (Li et al. 2018, "Visualizing the
loss landscape of neural nets"): every filter of ``d`` — a row of a weight matrix, an
output channel of a convolution — is rescaled to the norm of the same filter of ``θ``, so a
step of 1 along ``d`` is a change of the network's own size, whatever the layer's scale.
Vector parameters (biases, BatchNorm's ``γ, β``) get a zero direction, as in Li et al.
Given directions are used as they are: a flat vector, or tensors shaped like the parameters.

The loss is the sample-weighted mean over ``data`` (any form of :mod:`trainlab.data.batches`:
an ``(x, y)`` batch, a list or DataLoader of batches, a Dataset, or anything with
``batch_loss``), in ``eval()`` mode; the model is left exactly as it was — parameters,
buffers, flags, ``.grad`` and random states — also when the call fails
(:func:`trainlab.state.preserved`).
Draw one with :func:`trainlab.report.plots.surface_figure`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from trainlab.data.batches import Batch, BatchLoss, batch_size_of, first_samples
from trainlab.errors import ConfigError
from trainlab.state import preserved

Direction = torch.Tensor | Sequence[torch.Tensor]


@dataclass
class Surface:
    """``loss[i, j] = L(θ + alphas[i] d₁ + betas[j] d₂)``; ``center = L(θ)``."""

    alphas: torch.Tensor
    betas: torch.Tensor
    loss: torch.Tensor
    center: float
    directions: tuple[list[torch.Tensor], list[torch.Tensor]]


def filter_normalized_direction(model: nn.Module, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """A random direction ``d`` with ``‖d_f‖ = ‖θ_f‖`` for every filter ``f`` of every weight
    of two or more dimensions, and ``d = 0`` for vector parameters."""
    direction = []
    for p in model.parameters():
        d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
        if p.dim() <= 1:
            d.zero_()
        else:
            dims = tuple(range(1, p.dim()))
            norm = torch.linalg.vector_norm  # over every dimension of a filter (a conv's are 3)
            d.mul_(norm(p.detach(), dim=dims, keepdim=True) / norm(d, dim=dims, keepdim=True).clamp_min(1e-12))
        direction.append(d)
    return direction


@torch.no_grad()
def slice2d(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
            data: Batch | Iterable[Any], directions: tuple[Direction, Direction] | None = None,
            span: float | tuple[tuple[float, float], tuple[float, float]] = 1.0, steps: int = 21,
            seed: int = 0, *, batch_loss: BatchLoss | None = None) -> Surface:
    """The loss on a ``steps × steps`` grid over ``α, β ∈ [−span, span]`` (or the two given
    ranges ``((α₀, α₁), (β₀, β₁))``) around the current parameters.

    ``loss_fn(outputs, targets)`` is a batch's mean loss, or ``None`` with
    ``batch_loss=(model, batch) -> mean loss``. ``directions`` default to two filter-normalised
    random ones drawn from ``seed``. Cost: ``steps² + 1`` forward passes over ``data``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ConfigError(f"steps={steps!r} is not allowed; expected an integer >= 2")
    if loss_fn is None and batch_loss is None:
        raise ConfigError("loss_fn=None needs batch_loss=(model, batch) -> mean loss; give one of them")
    params = list(model.parameters())
    if directions is None:
        gen = torch.Generator().manual_seed(seed)
        directions = (filter_normalized_direction(model, gen), filter_normalized_direction(model, gen))
    d1, d2 = (_as_param_list(d, params, name) for d, name in zip(directions, ("directions[0]", "directions[1]")))
    (a0, a1), (b0, b1) = ((-span, span), (-span, span)) if isinstance(span, (int, float)) else span
    alphas, betas = torch.linspace(a0, a1, steps), torch.linspace(b0, b1, steps)
    def batch_mean(batch: Any) -> torch.Tensor:
        return batch_loss(model, batch) if batch_loss is not None else loss_fn(model(batch[0]), batch[1])

    with preserved(model):  # (a DataLoader's iterator draws from the global random state, too)
        # walked steps² times; data without a length is refused or bounded as the analyses do
        data = list(first_samples(data, None, batch_loss))
        model.eval()
        origin = [p.detach().clone() for p in params]
        center = _loss(batch_mean, data)
        loss = torch.empty(steps, steps, dtype=torch.float64)
        for i, a in enumerate(alphas.tolist()):
            for j, b in enumerate(betas.tolist()):
                for p, p0, u, v in zip(params, origin, d1, d2):
                    p.copy_(p0).add_(u, alpha=a).add_(v, alpha=b)
                loss[i, j] = _loss(batch_mean, data)
    return Surface(alphas, betas, loss, center, (d1, d2))


def _loss(batch_mean: Callable[[Any], torch.Tensor], data: list[Any]) -> float:
    """The sample-weighted mean of the batches' mean losses."""
    total, count = 0.0, 0
    for batch in data:
        n = batch_size_of(batch)
        total += float(batch_mean(batch)) * n
        count += n
    return total / count


def _as_param_list(d: Direction, params: list[torch.Tensor], name: str) -> list[torch.Tensor]:
    n = sum(p.numel() for p in params)
    if isinstance(d, torch.Tensor):
        if d.numel() != n:
            raise ConfigError(f"{name} has {d.numel()} entries; the model has {n} parameters")
        return [chunk.view_as(p).to(p) for chunk, p in zip(d.reshape(-1).split([p.numel() for p in params]), params)]
    d = list(d)
    if len(d) != len(params) or any(u.shape != p.shape for u, p in zip(d, params)):
        raise ConfigError(f"{name} must be a flat vector of {n} entries or tensors shaped like the parameters"
                         f" {[tuple(p.shape) for p in params]}")
    return [u.to(p) for u, p in zip(d, params)]
