"""Leave a saddle along negative curvature — the lecture's way out, made safe.

With ``u`` an eigenvector of ``H`` with ``λ < 0``, ``L(θ' + t u) ≈ L(θ') + t gᵀu + ½ λ t²‖u‖²``
falls for either sign of ``u`` when ``g ≈ 0``. Negative eigenvalues are often repeated — one
per interchangeable hidden unit — so the step is along the whole negative eigenspace found:
``u ∝ Σᵢ sᵢ |λᵢ| uᵢ``, each sign ``sᵢ`` chosen so that ``gᵀuᵢ ≤ 0`` (never uphill to first
order), normalised to ``‖u‖ = 1``. Its curvature ``uᵀHu`` is measured by one product.

The step length comes from a backtracking line search on the true loss: starting from
``t = max(1, ‖θ‖)``, halve ``t`` until, for the better of ``±u``, the loss falls by at least a
tenth of the Taylor prediction ``t gᵀu + ½ uᵀHu t²`` (Armijo's condition). The parameters are
moved in place; if no step qualifies they are left exactly as they were.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from trainlab.curvature.critical import Diagnosis
from trainlab.curvature.operator import HessianOperator, LossFn, analysis_mode
from trainlab.data.batches import Batch
from trainlab.errors import ConfigError

ARMIJO = 0.1


@dataclass
class Escape:
    loss_before: float
    loss_after: float
    predicted_change: float  # t gᵀu + ½ uᵀHu t² at the accepted step
    step: float  # ‖Δθ‖ = t
    curvature: float  # uᵀHu along the unit direction taken
    n_directions: int
    accepted: bool

    @property
    def change(self) -> float:
        return self.loss_after - self.loss_before

    def __str__(self) -> str:
        if not self.accepted:
            return (f"escape: no step along the {self.n_directions} negative-curvature direction(s) lowered the loss"
                    f" enough; parameters unchanged (loss {self.loss_before:.6g})")
        return (f"escape: stepped {self.step:.4g} along {self.n_directions} negative-curvature direction(s)"
                f" (uᵀHu = {self.curvature:.4g}); loss {self.loss_before:.6g} → {self.loss_after:.6g}"
                f" (change {self.change:.4g}, Taylor predicted {self.predicted_change:.4g})")


@torch.no_grad()
def _set(params: list[torch.Tensor], origin: list[torch.Tensor], direction: list[torch.Tensor], t: float) -> None:
    for p, p0, d in zip(params, origin, direction):
        p.copy_(p0).add_(d, alpha=t)


def escape(model: nn.Module, loss_fn: LossFn, data: Batch | Iterable[Batch], diagnosis: Diagnosis,
           max_halvings: int = 40, mode: str = "eval", distributed: bool | None = None, group: object = None) -> Escape:
    """Move ``model``'s parameters along the negative curvature ``diagnosis`` found."""
    directions = diagnosis.escape_directions
    if not diagnosis.negative_curvature or len(directions) == 0:
        raise ConfigError(
            f"no negative curvature to escape along: the smallest eigenvalue found is"
            f" {float(diagnosis.eigenvalues.min()):.3g} (flat below {diagnosis.flat_threshold:.3g} in magnitude);"
            f" the point is {diagnosis.verdict.replace('_', ' ')}, not a saddle's neighbourhood")
    with analysis_mode(model, mode):
        op = HessianOperator(model, loss_fn, data, distributed=distributed, group=group)
        if directions.shape[1] != op.n:
            raise ConfigError(f"the diagnosis is of a model with {directions.shape[1]} parameters; this one has {op.n}")
        g = op.gradient()
        U = directions.to(device=op.device, dtype=op.dtype)
        signs = torch.where(U @ g > 0, -1.0, 1.0).to(op.dtype)
        u = (signs * diagnosis.escape_eigenvalues.abs().to(device=op.device, dtype=op.dtype)) @ U
        u = u / u.norm()
        curvature, slope = float(u @ op.matvec(u)), float(g @ u)
        loss_before = op.loss

        params = op.params
        origin = [p.detach().clone() for p in params]
        step = [c.view_as(p) for c, p in zip(u.split([p.numel() for p in params]), params)]
        t = max(1.0, float(torch.sqrt(sum((p0.double() ** 2).sum() for p0 in origin))))
        for _ in range(max_halvings):
            best = None
            for sign in (1.0, -1.0):
                _set(params, origin, step, sign * t)
                loss = op.total_loss()
                predicted = sign * t * slope + 0.5 * curvature * t * t
                if loss - loss_before <= ARMIJO * predicted and (best is None or loss < best[0]):
                    best = (loss, sign, predicted)
            if best is not None:
                _set(params, origin, step, best[1] * t)
                return Escape(loss_before, best[0], best[2], t, curvature, len(U), True)
            t /= 2
        _set(params, origin, step, 0.0)
        return Escape(loss_before, loss_before, 0.0, 0.0, curvature, len(U), False)
