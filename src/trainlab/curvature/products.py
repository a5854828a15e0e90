"""Gradient, Hessian-vector products and the dense Hessian of a model's full-data loss.

``data`` is one ``(x, y)`` batch or an iterable of batches; the loss is their
sample-weighted mean (see :mod:`trainlab.curvature.operator`, which also states the mode
rule, how products are computed, and how ``distributed=`` / ``group=`` share the data
between ``torch.distributed`` ranks).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from trainlab.curvature.operator import HessianOperator, LossFn, analysis_mode
from trainlab.data.batches import Batch

#: Memory for one block of dense-Hessian rows (and the batched backward pass producing it).
HESSIAN_BLOCK_BYTES = 256 * 2**20


def gradient(model: nn.Module, loss_fn: LossFn, data: Batch | Iterable[Batch], mode: str = "eval",
             distributed: bool | None = None, group: object = None) -> torch.Tensor:
    """``∇L(θ)`` as a flat vector over the parameters that require gradients."""
    with analysis_mode(model, mode):
        op = HessianOperator(model, loss_fn, data, keep_graph=False, distributed=distributed, group=group)
        return op.gradient()


def hvp(model: nn.Module, loss_fn: LossFn, data: Batch | Iterable[Batch], v: torch.Tensor,
        mode: str = "eval", distributed: bool | None = None, group: object = None) -> torch.Tensor:
    """``H v`` for a flat ``(n,)`` vector, or ``(H vᵢ)ᵢ`` for the rows of an ``(m, n)`` matrix,
    answered together from one kept gradient graph (in one batched pass on a GPU)."""
    with analysis_mode(model, mode):
        op = _operator(model, loss_fn, data, mode, distributed, group)
        return op.matvec(v) if v.dim() == 1 else op.matmat(v)


def hessian(model: nn.Module, loss_fn: LossFn, data: Batch | Iterable[Batch], max_params: int = 20_000,
            mode: str = "eval", distributed: bool | None = None, group: object = None) -> torch.Tensor:
    """The dense ``n × n`` Hessian, built from products with blocks of the identity (each
    block bounded to :data:`HESSIAN_BLOCK_BYTES`) through one kept gradient graph, and
    symmetrised, ``(H + Hᵀ)/2``.

    Above ``max_params`` parameters it refuses: an ``n × n`` matrix is then too large to be
    useful — :func:`trainlab.curvature.eigs` finds the extreme eigenvalues from products alone.
    """
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n > max_params:
        raise ValueError(f"the model has {n:,} parameters, above max_params={max_params:,}: a dense Hessian would"
                         f" hold {n * n:,} numbers; use trainlab.curvature.eigs (Lanczos) for its extreme"
                         " eigenvalues, or raise max_params")
    with analysis_mode(model, mode):
        op = _operator(model, loss_fn, data, mode, distributed, group)
        return dense(op)


def dense(op: HessianOperator) -> torch.Tensor:
    """``H`` of an operator, block by block of identity rows."""
    n, itemsize = op.n, torch.empty((), dtype=op.dtype).element_size()
    block = max(1, min(n, HESSIAN_BLOCK_BYTES // (4 * n * itemsize)))
    H = torch.empty(n, n, device=op.device, dtype=op.dtype)
    for start in range(0, n, block):
        rows = torch.zeros(min(block, n - start), n, device=op.device, dtype=op.dtype)
        rows[range(len(rows)), range(start, start + len(rows))] = 1
        H[start:start + len(rows)] = op.matmat(rows)
    return (H + H.T) / 2


def _operator(model: nn.Module, loss_fn: LossFn, data: Batch | Iterable[Batch], mode: str,
              distributed: bool | None = None, group: object = None) -> HessianOperator:
    op = HessianOperator(model, loss_fn, data, distributed=distributed, group=group)
    if mode == "train":
        op.check_determinism()
    return op
