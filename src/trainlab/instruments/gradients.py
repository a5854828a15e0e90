"""First-order readings: the gradient norm and the update-to-parameter ratio."""

from __future__ import annotations

import math
from typing import Any

import torch

from trainlab import distributed as dist
from trainlab.data.batches import batch_size_of
from trainlab.instruments.monitor import Context, Instrument


class GradNorm(Instrument):
    """``grad_norm``: the norm of the loss gradient on the Monitor's sample,

        value = ‖∇L(θ)‖₂ = sqrt(Σ_i ‖∇_{θ_i} L‖²),   parts[i] = ‖∇_{θ_i} L‖₂

    over all parameters that require gradients (``i`` a parameter tensor, by name), with ``L``
    the mean loss on the sample in the Monitor's mode. Large or growing norms are the
    exploding gradients of Pascanu, Mikolov & Bengio 2013 ("On the difficulty of training
    recurrent neural networks"); a vanishing norm with a high loss is a stall at a critical
    point. Cockpit (Schneider, Dangel & Hennig 2021) shows the same gauge. Cost: one forward
    and one backward pass over the sample.

    Under ``torch.distributed`` (a process group of several ranks is initialised) each rank's
    sample is its share: the gradient is ``Σ_r (n_r/N) ∇L_r`` summed over the ranks (one
    all-reduce), so every rank reads the gradient norm of all the ranks' samples together.
    """

    name = "grad_norm"

    def read(self, ctx: Context) -> dict[str, Any]:
        named = ctx.parameters()
        params = [p for _, p in named]
        loss = ctx.loss()
        if dist.active():
            count = torch.tensor([float(batch_size_of(ctx.batch))], dtype=torch.float64, device=params[0].device)
            loss = loss * float(count / dist.all_reduce_sum(count.clone()))
        grads = [torch.zeros_like(p) if g is None else g
                 for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))]
        if dist.active():
            flat = dist.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]))
            grads = [part.view_as(p) for part, p in zip(flat.split([p.numel() for p in params]), params)]
        norms = _norms(grads)
        parts = {name: norm for (name, _), norm in zip(named, norms)}
        return {"value": math.sqrt(sum(v * v for v in norms)), "parts": parts}


class UpdateRatio(Instrument):
    """``update_ratio``: how far the last update moved the parameters, relative to their size,

        value = ‖θ_t − θ_{t−1}‖₂ / ‖θ_t‖₂ (all parameters as one vector),
        parts[i] = ‖θ_{t,i} − θ_{t−1,i}‖₂ / ‖θ_{t,i}‖₂ (each parameter tensor; NaN when ‖θ_{t,i}‖ = 0)

    with ``θ_{t−1}`` the parameters just before the last update (``ctx.previous``, kept by the
    Monitor). The rule of thumb of the CS231n notes (Karpathy, "Neural networks part 3")
    puts a healthy ratio near 1e-3: far below, the learning rate is too low; far above, too
    high. Per-layer ratios are what LARS (You, Gitman & Ginsburg 2017) equalises with its
    layer-wise trust ratio. No forward pass: it reads parameters only.
    """

    name = "update_ratio"
    needs_previous = True
    runs_model = False

    @torch.no_grad()
    def read(self, ctx: Context) -> dict[str, Any]:
        named, before = ctx.before_update("update_ratio")
        params = [p for _, p in named]
        deltas = _norms(torch._foreach_sub(params, before) if _uniform(params) else
                        [p - b for p, b in zip(params, before)])
        norms = _norms(params)
        parts = {name: d / n if n > 0 else math.nan for (name, _), d, n in zip(named, deltas, norms)}
        size = math.sqrt(sum(n * n for n in norms))
        return {"value": math.sqrt(sum(d * d for d in deltas)) / size if size > 0 else math.nan, "parts": parts}


def _norms(tensors: list[torch.Tensor]) -> list[float]:
    """``‖t‖₂`` of each tensor, read back in one transfer (one synchronisation on a GPU); one
    multi-tensor kernel (``torch._foreach_norm``, as ``clip_grad_norm_``) when the tensors share
    device and dtype — a reading between cheap updates should not cost a launch per tensor."""
    if not tensors:
        return []
    device = tensors[0].device
    if _uniform(tensors):
        return torch.stack(torch._foreach_norm(tensors)).to(torch.float64).tolist()
    return torch.stack([torch.linalg.vector_norm(t).to(device, torch.float64) for t in tensors]).tolist()


def _uniform(tensors: list[torch.Tensor]) -> bool:
    """All on one device, in one dtype: what the multi-tensor (foreach) kernels take."""
    return all(t.device == tensors[0].device and t.dtype == tensors[0].dtype for t in tensors)
