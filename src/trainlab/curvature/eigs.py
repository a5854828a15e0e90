"""Extreme eigenpairs of a model's Hessian, from Hessian-vector products alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from trainlab.curvature import progress as progress_bar
from trainlab.curvature.lanczos import BASIS_BYTES, check_request, lanczos
from trainlab.curvature.operator import DEFAULT_GRAPH_BYTES, HessianOperator, LossFn, Timer, analysis_mode
from trainlab.curvature.products import TITLES, _operator
from trainlab.curvature.selection import ParamSpec
from trainlab.data.batches import Batch, BatchLoss
from trainlab.errors import ConfigError

#: How many values a summary shows at each end.
SHOWN = 5


@dataclass(repr=False)
class Eigs:
    """Eigenpairs ``H xᵢ ≈ λᵢ xᵢ`` of the Hessian with the evidence for each.

    Order: ``values`` are always **descending** (largest first). For ``which="largest"``
    ``values[0]`` is ``λ_max``; for ``which="smallest"`` the **last** value is the most
    negative (``values[-1] = λ_min``); for ``which="both"`` the ``k`` largest come first, then
    the ``k`` smallest, still descending.

    Fields:
        values: ``(k,)`` float64 eigenvalues, descending (above).
        vectors: ``(k, n)`` unit eigenvectors, row ``i`` for ``values[i]``, in the model's dtype and
            device; :meth:`as_params` reshapes one like the parameters.
        residuals: ``(k,)`` float64, a bound on ``‖H xᵢ − λᵢ xᵢ‖`` of the vectors returned: the
            Lanczos residual plus their rounding in the model's dtype, ``ε·max|λ|``.
        converged: ``(k,)`` bool, ``residuals[i] ≤ tol · max|λ|``. An unconverged value still lies
            inside the spectrum (``λ_min ≤ values[i] ≤ λ_max``) but is not yet an eigenvalue.
        which: ``"largest"``, ``"smallest"`` or ``"both"``, as asked.
        n_hvp: Hessian-vector products used; seconds: wall time.
        notes: what was changed from the request (``k`` clamped, budget reached).
    """

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    n_hvp: int
    seconds: float
    _shapes: list[tuple[str, torch.Size]] = field(default_factory=list)
    which: str = "largest"
    notes: list[str] = field(default_factory=list)
    operator: str = "hessian"

    def as_params(self, i: int) -> dict[str, torch.Tensor]:
        """Eigenvector ``i`` as ``{parameter name: tensor}``, shaped like the parameters."""
        chunks = self.vectors[i].split([s.numel() for _, s in self._shapes])
        return {name: c.view(shape) for (name, shape), c in zip(self._shapes, chunks)}

    def __str__(self) -> str:
        k, done = len(self.values), int(self.converged.sum())
        order = {"largest": "largest first", "smallest": "descending: the last is the most negative",
                 "both": "descending: the largest, then the smallest"}[self.which]
        title, _, products = TITLES[self.operator]
        lines = [f"Eigs: {k} eigenvalue(s) of the {title}, which={self.which!r} ({order}); {done}/{k} converged;"
                 f" {self.n_hvp} {products}, {self.seconds:.2f} s",
                 f"  values:    {_listing(self.values)}",
                 f"  residuals: {_listing(self.residuals, '.1e')}"]
        if done < k:
            lines.append(f"  not converged: {_listing(torch.nonzero(~self.converged).flatten(), 'd')} (indices)")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    __repr__ = __str__


def _listing(values: torch.Tensor, fmt: str = ".6g") -> str:
    """At most :data:`SHOWN` values from each end, ``…`` between."""
    items = [format(v, fmt) for v in values.tolist()]
    if len(items) > 2 * SHOWN:
        items = items[:SHOWN] + [f"… ({len(items) - 2 * SHOWN} more)"] + items[-SHOWN:]
    return ", ".join(items) or "none"


def eigs(model: nn.Module, loss_fn: LossFn | None, data: Batch | Iterable[Any], k: int = 10,
         which: str = "largest", tol: float = 1e-6, max_hvp: int | None = None, basis_size: int | None = None,
         seed: int = 0, mode: str = "eval", distributed: bool | None = None, group: object = None, *,
         batch_loss: BatchLoss | None = None, max_samples: int | None = None,
         max_graph_bytes: float = DEFAULT_GRAPH_BYTES, progress: bool = True, params: ParamSpec = None,
         operator: str = "hessian") -> Eigs:
    """The ``k`` largest, ``k`` most negative, or both, eigenpairs of the Hessian ``H`` of the
    loss, by thick-restart Lanczos (:mod:`trainlab.curvature.lanczos`) on the model's device.

    Parameters:
        model, loss_fn, data: the loss ``L = Σ_b (n_b/N) loss_fn(model(x_b), y_b)`` over the batches
            of ``data`` (an ``(x, y)`` pair, a list of batches, a DataLoader or a Dataset).
        k: eigenpairs wanted (10); above the parameter count ``n`` it is clamped to ``n``
            (``ceil(n/2)`` for ``"both"``) with a note.
        which: ``"largest"`` (default), ``"smallest"`` (most negative) or ``"both"`` (``k`` of each).
        tol: a pair has converged when ``‖H x − λ x‖ ≤ tol · max|λ|`` (1e-6); at least ``2ε`` of
            the model's dtype (float32: 2.4e-7), below which a residual cannot be shown.
        max_hvp: at most this many products (``None``: 5,000); when it runs out, the values found
            so far are returned with ``converged`` False.
        basis_size: Lanczos basis size (``None``: up to 300 vectors, fewer to fit 64 MiB or half the
            kept graph's measured size if more, never fewer than ``k + max(3, k/2)``; :func:`basis_bytes`).
        seed: seed of the random start vector (0).
        mode: ``"eval"`` (default) or ``"train"`` (allowed when deterministic).
        distributed, group: ``torch.distributed`` sharding (see :class:`HessianOperator`).
        batch_loss: ``(model, batch) -> mean loss`` for batches that are not ``(x, y)`` pairs;
            then ``loss_fn`` may be ``None``.
        max_samples: analyse only the first ``max_samples`` samples of ``data`` (``None``: all).
        max_graph_bytes: bound on the kept autograd graph (2 GiB); beyond, products stream the batches.
        progress: show a progress bar (counting products) when the call runs longer than 2 s (True).
        params: the parameters analysed, the others held fixed (``None``: all; tensors, submodules,
            names or a filter ``(name, parameter) -> bool``, :mod:`trainlab.curvature.selection`):
            the eigenpairs of that block of ``H``.
        operator: ``"hessian"`` (default), ``"ggn"`` (the generalised Gauss–Newton ``G``, positive
            semi-definite for a convex loss) or ``"fisher"`` (the empirical Fisher),
            :mod:`trainlab.curvature.gauss_newton`.

    Returns:
        :class:`Eigs` — ``values`` (descending), ``vectors``, ``residuals``, ``converged``, ``n_hvp``,
        ``seconds``, ``notes``.

    Cost:
        one gradient, then typically a few times ``k`` Hessian-vector products for well-separated
        extremes (``which="largest"``); the most negative eigenvalues of a network take more.
        Never more than ``max_hvp``.
    """
    timer = Timer()
    with analysis_mode(model, mode):
        op = _operator(model, loss_fn, data, mode, distributed, group, operator, params, batch_loss=batch_loss,
                       max_samples=max_samples, max_graph_bytes=max_graph_bytes)
        with progress_bar.counting(op, max_hvp, "eigs", progress):
            return eigs_of(op, k, which, tol, max_hvp, basis_size, seed, timer, release=True)


def eigs_of(op: HessianOperator, k: int, which: str, tol: float, max_hvp: int | None = None,
            basis_size: int | None = None, seed: int = 0, timer: Timer | None = None, release: bool = False) -> Eigs:
    """:func:`eigs` of an operator already built (the caller holds :func:`analysis_mode`).

    Parameters: ``op`` a :class:`HessianOperator`; ``k``, ``which``, ``tol``, ``max_hvp``
    (``None``: 5,000), ``basis_size`` (``None``), ``seed`` (0) as for :func:`eigs`; ``release``
    (False): free the operator's kept graph before the eigenvectors are formed (when no more
    products will be asked of it); ``timer``
    (``None``: started here) for ``seconds``. Returns :class:`Eigs`. Cost: as :func:`eigs`, ≤ ``max_hvp``.
    """
    timer = timer or Timer()
    check_max_hvp(max_hvp)
    k, notes = clamp_k(k, which, op.n)
    before = op.n_hvp
    r = lanczos(op.matvec, op.n, k, which, tol, max_hvp, basis_size, seed, op.device, op.dtype, sync=op.broadcast,
                release=op.release if release else None, basis_bytes=basis_bytes(op))
    notes += getattr(op, "notes", [])  # e.g. attention on the math kernel (trainlab.curvature.operator)
    wanted = min(op.n, k * (2 if which == "both" else 1))
    if len(r.values) < wanted or not bool(r.converged.all()):
        notes.append(f"{int(r.converged.sum())} of the {wanted} eigenpairs wanted converged within"
                     f" {r.n_matvec} products" + (f" (max_hvp={max_hvp})" if max_hvp is not None else ""))
    shapes = [(name, p.shape) for name, p in zip(op.names, op.params)]
    return Eigs(r.values, r.vectors, r.residuals, r.converged, op.n_hvp - before, timer.seconds, shapes, which, notes,
                op.kind)


def basis_bytes(op: HessianOperator) -> int:
    """The default Lanczos basis's memory: :data:`~trainlab.curvature.lanczos.BASIS_BYTES`, or half
    the kept graph's measured size when that is more. The graph dominates an eigensolve's memory
    anyway, so a basis half its size adds at most half, while more vectors save products where
    eigenvalues cluster (a small GPT's top 5: 87 products with 8 vectors, 51 with 10; ResNet-18,
    whose 11M parameters make a vector costly beside its graph, keeps the floor of 8)."""
    return max(BASIS_BYTES, (op.graph_bytes or 0) // 2)


def clamp_k(k: int, which: str, n: int) -> tuple[int, list[str]]:
    """``k`` checked and clamped to the ``n`` eigenvalues there are (``ceil(n/2)`` of each end
    for ``which="both"``), with a note saying so.

    Parameters: ``k`` (a positive integer), ``which`` (``"largest"``, ``"smallest"``, ``"both"``),
    ``n`` the parameter count. Returns ``(k, notes)``. Raises ConfigError for a bad ``k`` or
    ``which``. Cost: none.
    """
    check_request(k, which)
    most = -(-n // 2) if which == "both" else n
    if k <= most:
        return k, []
    each = " of each end" if which == "both" else ""
    return most, [f"k={k:,} clamped to {most:,}{each}: the Hessian has {n:,} eigenvalues (one per parameter)"]


def check_max_hvp(max_hvp: int | None, least: int = 1) -> None:
    """Raise ConfigError unless ``max_hvp`` is ``None`` or an integer ≥ ``least`` (default 1). Cost: none."""
    if max_hvp is not None and (isinstance(max_hvp, bool) or not isinstance(max_hvp, int) or max_hvp < least):
        raise ConfigError(f"max_hvp={max_hvp!r} is not allowed; expected None (no limit) or an integer >= {least}")
