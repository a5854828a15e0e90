"""Leave a saddle along negative curvature — the lecture's way out, made safe.

With ``u`` an eigenvector of ``H`` with ``λ < 0``, ``L(θ' + t u) ≈ L(θ') + t gᵀu + ½ λ t²‖u‖²``
falls for either sign of ``u`` when ``g ≈ 0``. Negative eigenvalues are often repeated — one
per interchangeable hidden unit — so the step is along the whole negative eigenspace found:
``u ∝ Σᵢ sᵢ |λᵢ| uᵢ``, each sign ``sᵢ`` chosen so that ``gᵀuᵢ ≤ 0`` (never uphill to first
order), normalised to ``‖u‖ = 1``. Its curvature ``uᵀHu`` is measured by one product.

The step length comes from a backtracking line search on the true loss: starting from
``t = max(1, ‖θ‖)``, halve ``t`` until, for the better of ``±u``, the loss falls by at least a
tenth of the Taylor prediction ``t gᵀu + ½ uᵀHu t²`` (Armijo's condition). The parameters are
moved in place; if no step qualifies — or the loss raises during the search — they are left
exactly as they were. Nothing else about the model changes (buffers, flags, ``.grad``, random
states: :func:`~trainlab.curvature.operator.analysis_mode`).

Only at a critical point (``‖∇L‖ ≤ grad_tol`` of the diagnosis) is the negative curvature the
way down; away from one the gradient is, and the quadratic model behind the step is dominated
by the slope, so ``escape`` refuses there unless ``force=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from trainlab.curvature.critical import Diagnosis
from trainlab.curvature.operator import DEFAULT_GRAPH_BYTES, LossFn, analysis_mode
from trainlab.curvature.products import _operator
from trainlab.data.batches import Batch, BatchLoss
from trainlab.errors import ConfigError

ARMIJO = 0.1


@dataclass(repr=False)
class Escape:
    """The outcome of :func:`escape`.

    Fields:
        loss_before, loss_after: the full-data loss before and after (equal when not accepted).
        predicted_change: ``t gᵀu + ½ uᵀHu t²`` at the accepted step (0 when none).
        step: ``‖Δθ‖ = t`` (0 when none); curvature: ``uᵀHu`` along the unit direction ``u``.
        n_directions: negative-curvature eigenvectors combined into ``u``.
        accepted: whether the parameters moved. notes: e.g. a forced step away from a critical point.
    Property ``change = loss_after − loss_before``.
    """

    loss_before: float
    loss_after: float
    predicted_change: float
    step: float
    curvature: float
    n_directions: int
    accepted: bool
    notes: list[str] = field(default_factory=list)

    @property
    def change(self) -> float:
        """``loss_after − loss_before`` (negative when the loss fell)."""
        return self.loss_after - self.loss_before

    def __str__(self) -> str:
        if not self.accepted:
            line = (f"escape: no step along the {self.n_directions} negative-curvature direction(s) lowered the loss"
                    f" enough; parameters unchanged (loss {self.loss_before:.6g})")
        else:
            line = (f"escape: stepped {self.step:.4g} along {self.n_directions} negative-curvature direction(s)"
                    f" (uᵀHu = {self.curvature:.4g}); loss {self.loss_before:.6g} → {self.loss_after:.6g}"
                    f" (change {self.change:.4g}, Taylor predicted {self.predicted_change:.4g})")
        return "\n".join([line] + [f"  note: {note}" for note in self.notes])

    __repr__ = __str__


@torch.no_grad()
def _set(params: list[torch.Tensor], origin: list[torch.Tensor], direction: list[torch.Tensor], t: float) -> None:
    for p, p0, d in zip(params, origin, direction):
        p.copy_(p0).add_(d, alpha=t)


@torch.no_grad()
def _restore(params: list[torch.Tensor], origin: list[torch.Tensor]) -> None:
    for p, p0 in zip(params, origin):
        p.copy_(p0)


def escape(model: nn.Module, loss_fn: LossFn | None, data: Batch | Iterable[Any], diagnosis: Diagnosis,
           max_halvings: int = 40, mode: str = "eval", distributed: bool | None = None, group: object = None, *,
           force: bool = False, batch_loss: BatchLoss | None = None, max_samples: int | None = None,
           max_graph_bytes: float = DEFAULT_GRAPH_BYTES) -> Escape:
    """Move ``model``'s parameters along the negative curvature ``diagnosis`` found (module docstring).

    Parameters:
        model, loss_fn, data: the loss, as given to :func:`trainlab.curvature.diagnose` for ``diagnosis``.
        diagnosis: a :class:`Diagnosis` of this model at these parameters, with
            ``escape_directions`` (converged eigenvectors of ``λ < −flat_threshold``); when it is of
            a block (``diagnosis.params``), only those parameters move.
        max_halvings: line-search halvings of the step before giving up (40).
        mode: ``"eval"`` (default) or ``"train"``; distributed, group: ``torch.distributed`` sharding.
        force: step even away from a critical point (``diagnosis.grad_norm > diagnosis.grad_tol``),
            where it is refused by default (False).
        batch_loss, max_samples, max_graph_bytes: as for :func:`trainlab.curvature.eigs`.

    Returns:
        :class:`Escape` — ``loss_before``, ``loss_after``, ``predicted_change``, ``step``,
        ``curvature``, ``n_directions``, ``accepted``, ``notes``.

    Raises:
        ConfigError: no negative curvature in ``diagnosis``; away from a critical point without
        ``force``; a diagnosis of a model with another parameter count.

    Cost:
        one gradient, one Hessian-vector product, and two loss evaluations per halving tried.
        Changes the parameters only when a step is accepted; nothing else.
    """
    directions = diagnosis.escape_directions
    if diagnosis.operator != "hessian":
        raise ConfigError(f"the diagnosis is of the operator {diagnosis.operator!r}; escape steps along the Hessian's"
                          " negative curvature: diagnose with operator='hessian'")
    if not diagnosis.negative_curvature or len(directions) == 0:
        raise ConfigError(
            f"no negative curvature to escape along: the smallest eigenvalue found is"
            f" {float(diagnosis.eigenvalues.min()):.3g} (flat below {diagnosis.flat_threshold:.3g} in magnitude);"
            f" the point is {diagnosis.verdict.replace('_', ' ')}, not a saddle's neighbourhood")
    notes = []
    if diagnosis.grad_norm > diagnosis.grad_tol:
        away = (f"the gradient norm {diagnosis.grad_norm:.3g} is above grad_tol={diagnosis.grad_tol:g}: this is not a"
                " critical point, so the gradient, not negative curvature, is the way down")
        if not force:
            raise ConfigError(f"escape refused: {away}; keep training (or a gradient step), or pass force=True to step"
                              " along the negative curvature anyway")
        notes.append(f"forced: {away}")
    with analysis_mode(model, mode):
        op = _operator(model, loss_fn, data, mode, distributed, group, params=diagnosis.params or None,
                       batch_loss=batch_loss, max_samples=max_samples, max_graph_bytes=max_graph_bytes)
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
        result = Escape(loss_before, loss_before, 0.0, 0.0, curvature, len(U), False, notes)
        try:
            result = _line_search(op, params, origin, step, slope, curvature, max_halvings, result)
        finally:
            if not result.accepted:  # no step qualified, or the loss raised: back to the origin exactly
                _restore(params, origin)
        return result


def _line_search(op: Any, params: list[torch.Tensor], origin: list[torch.Tensor], step: list[torch.Tensor],
                 slope: float, curvature: float, max_halvings: int, result: Escape) -> Escape:
    """Backtracking from ``t = max(1, ‖θ‖)``: the better of ``±t`` that meets Armijo's condition."""
    t = max(1.0, float(torch.sqrt(sum((p0.double() ** 2).sum() for p0 in origin))))
    for _ in range(max_halvings):
        best = None
        for sign in (1.0, -1.0):
            _set(params, origin, step, sign * t)
            loss = op.total_loss()
            predicted = sign * t * slope + 0.5 * curvature * t * t
            if loss - result.loss_before <= ARMIJO * predicted and (best is None or loss < best[0]):
                best = (loss, sign, predicted)
        if best is not None:
            _set(params, origin, step, best[1] * t)
            return Escape(result.loss_before, best[0], best[2], t, curvature, result.n_directions, True, result.notes)
        t /= 2
    return result
