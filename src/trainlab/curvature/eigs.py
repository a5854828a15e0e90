"""Extreme eigenpairs of a model's Hessian, from Hessian-vector products alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from trainlab.curvature.lanczos import lanczos
from trainlab.curvature.operator import HessianOperator, LossFn, Timer, analysis_mode
from trainlab.curvature.products import _operator
from trainlab.data.batches import Batch


@dataclass
class Eigs:
    """Eigenpairs ``H xᵢ ≈ λᵢ xᵢ``, largest ``λ`` first, with the evidence for each:
    ``residuals[i] = ‖H xᵢ − λᵢ xᵢ‖`` and ``converged[i]`` (residual ≤ ``tol · max|λ|``)."""

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    n_hvp: int
    seconds: float
    _shapes: list[tuple[str, torch.Size]] = field(default_factory=list, repr=False)

    def as_params(self, i: int) -> dict[str, torch.Tensor]:
        """Eigenvector ``i`` as ``{parameter name: tensor}``, shaped like the parameters."""
        chunks = self.vectors[i].split([s.numel() for _, s in self._shapes])
        return {name: c.view(shape) for (name, shape), c in zip(self._shapes, chunks)}


def eigs(model: nn.Module, loss_fn: LossFn, data: Batch | Iterable[Batch], k: int = 10, which: str = "largest",
         tol: float = 1e-6, max_hvp: int | None = None, basis_size: int | None = None, seed: int = 0,
         mode: str = "eval", distributed: bool | None = None, group: object = None) -> Eigs:
    """The ``k`` largest (``which="largest"``), ``k`` most negative (``"smallest"``), or both
    (``k`` of each) eigenpairs of ``H``, by thick-restart Lanczos on the model's device."""
    timer = Timer()
    with analysis_mode(model, mode):
        op = _operator(model, loss_fn, data, mode, distributed, group)
        return eigs_of(op, k, which, tol, max_hvp, basis_size, seed, timer)


def eigs_of(op: HessianOperator, k: int, which: str, tol: float, max_hvp: int | None = None,
            basis_size: int | None = None, seed: int = 0, timer: Timer | None = None) -> Eigs:
    timer = timer or Timer()
    before = op.n_hvp
    r = lanczos(op.matvec, op.n, k, which, tol, max_hvp, basis_size, seed, op.device, op.dtype, sync=op.broadcast)
    names = {id(p): name for name, p in op.model.named_parameters()}
    shapes = [(names[id(p)], p.shape) for p in op.params]
    return Eigs(r.values, r.vectors, r.residuals, r.converged, op.n_hvp - before, timer.seconds, shapes)
