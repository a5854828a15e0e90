"""Gradient, Hessian-vector products and the dense Hessian of a model's full-data loss.

``data`` is any form of :mod:`trainlab.data.batches` (an ``(x, y)`` pair, a list or
DataLoader of batches, a Dataset, or anything with ``batch_loss``); the loss is the batches'
sample-weighted mean (see :mod:`trainlab.curvature.operator`, which also states the mode
rule, the checks, the memory bound, and how ``distributed=`` / ``group=`` share the data
between ``torch.distributed`` ranks).

Options every function here takes (keyword only), as :class:`HessianOperator` does:
``batch_loss=(model, batch) -> mean loss`` (then ``loss_fn`` may be ``None``),
``max_samples`` (use only the first samples of ``data``; ``None`` = all),
``max_graph_bytes`` (bound on the kept autograd graph, default 2 GiB; beyond it products
stream over the batches) and ``params`` (the parameters analysed, the others held fixed:
tensors, submodules, names or a filter, :mod:`trainlab.curvature.selection`; ``None`` = all).

The model is left exactly as it was — parameters, buffers, flags, ``.grad``, random states —
on success and on failure (:func:`~trainlab.curvature.operator.analysis_mode`).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import torch
from torch import nn

from trainlab.curvature.gauss_newton import FisherOperator, GGNOperator
from trainlab.curvature.operator import DEFAULT_GRAPH_BYTES, HessianOperator, LossFn, analysis_mode
from trainlab.curvature.selection import ParamSpec, select
from trainlab.data.batches import Batch, BatchLoss
from trainlab.errors import ConfigError

#: Memory for one block of dense-Hessian rows (and the batched backward pass producing it).
HESSIAN_BLOCK_BYTES = 256 * 2**20


def gradient(model: nn.Module, loss_fn: LossFn | None, data: Batch | Iterable[Any], mode: str = "eval",
             distributed: bool | None = None, group: object = None, *, batch_loss: BatchLoss | None = None,
             max_samples: int | None = None, max_graph_bytes: float = DEFAULT_GRAPH_BYTES,
             params: ParamSpec = None) -> torch.Tensor:
    """``∇L(θ)`` as a flat vector over the parameters that require gradients.

    Parameters: ``model``, ``loss_fn`` (``(outputs, targets) -> mean loss``, or ``None`` with
    ``batch_loss``), ``data``; ``mode`` "eval" (default) or "train"; ``distributed``/``group``
    for ``torch.distributed``; ``batch_loss``, ``max_samples``, ``max_graph_bytes`` (module
    docstring). Cost: one forward and backward pass over the data (no product); in
    ``mode="train"`` two (determinism check).
    """
    with analysis_mode(model, mode):
        op = _operator(model, loss_fn, data, mode, distributed, group, keep_graph=False, batch_loss=batch_loss,
                       max_samples=max_samples, max_graph_bytes=max_graph_bytes, params=params)
        return op.gradient()


def hvp(model: nn.Module, loss_fn: LossFn | None, data: Batch | Iterable[Any], v: torch.Tensor,
        mode: str = "eval", distributed: bool | None = None, group: object = None, *,
        batch_loss: BatchLoss | None = None, max_samples: int | None = None,
        max_graph_bytes: float = DEFAULT_GRAPH_BYTES, params: ParamSpec = None) -> torch.Tensor:
    """``H v`` for a flat ``(n,)`` vector, or ``(H vᵢ)ᵢ`` for the rows of an ``(m, n)`` matrix,
    answered together from one kept gradient graph (in one batched pass on a GPU), or streamed
    over the batches when that graph would exceed ``max_graph_bytes``.

    Parameters as :func:`gradient`, plus ``v``. Cost: ``m`` Hessian-vector products (about 2
    gradients each), plus the gradient; in ``mode="train"`` one more gradient (determinism check).
    """
    with analysis_mode(model, mode):
        op = _operator(model, loss_fn, data, mode, distributed, group, batch_loss=batch_loss,
                       max_samples=max_samples, max_graph_bytes=max_graph_bytes, params=params)
        return op.matvec(v) if v.dim() == 1 else op.matmat(v)


def hessian(model: nn.Module, loss_fn: LossFn | None, data: Batch | Iterable[Any], max_params: int = 20_000,
            mode: str = "eval", distributed: bool | None = None, group: object = None, *,
            max_seconds: float = 60.0, batch_loss: BatchLoss | None = None, max_samples: int | None = None,
            max_graph_bytes: float = DEFAULT_GRAPH_BYTES, params: ParamSpec = None) -> torch.Tensor:
    """The dense ``n × n`` Hessian (with ``params``: the block of those parameters), built from
    products with blocks of the identity (each block bounded to :data:`HESSIAN_BLOCK_BYTES`)
    through one kept gradient graph, and symmetrised, ``(H + Hᵀ)/2``.

    Cost: ``n`` Hessian-vector products and ``n² × itemsize`` bytes. It refuses
    (:class:`~trainlab.errors.ConfigError`, naming the estimate) above ``max_params``
    parameters (default 20,000), or when one timed product × ``n`` exceeds ``max_seconds``
    (default 60; ``None`` for no limit): :func:`trainlab.curvature.eigs` (Lanczos) finds the
    extreme eigenvalues from a few products. Other parameters as :func:`gradient`.
    """
    chosen = [p for _, p in select(model, params)]
    n, itemsize = sum(p.numel() for p in chosen), chosen[0].element_size()
    if n > max_params:
        raise ConfigError(f"the model has {n:,} parameters, above max_params={max_params:,}: a dense Hessian would"
                          f" hold {n * n:,} numbers ({_size(n * n * itemsize)}); use trainlab.curvature.eigs (Lanczos)"
                          " for its extreme eigenvalues, or raise max_params")
    with analysis_mode(model, mode):
        op = _operator(model, loss_fn, data, mode, distributed, group, batch_loss=batch_loss,
                       max_samples=max_samples, max_graph_bytes=max_graph_bytes, params=params)
        if max_seconds is not None:
            _check_time(op, max_seconds)
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


def _check_time(op: HessianOperator, max_seconds: float) -> None:
    """Time one product and refuse when ``n`` of them would take more than ``max_seconds``."""
    op.gradient()  # the graph is built once, not per product
    probe = torch.zeros(1, op.n, device=op.device, dtype=op.dtype)
    probe[0, 0] = 1
    start = time.perf_counter()
    op.matmat(probe)
    if op.device.type == "cuda":
        torch.cuda.synchronize(op.device)
    estimate = (time.perf_counter() - start) * op.n
    op.n_hvp -= 1  # the timing product is not part of the answer
    if estimate > max_seconds:
        raise ConfigError(f"a dense Hessian of {op.n:,} parameters needs {op.n:,} Hessian-vector products, about"
                          f" {estimate:,.0f} s here (one took {estimate / op.n * 1e3:.3g} ms), above"
                          f" max_seconds={max_seconds:g}; use trainlab.curvature.eigs (Lanczos) or"
                          " diagnose(method='lanczos') for the extreme eigenvalues, or raise max_seconds")


def _size(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


#: The curvature operators an analysis can take: the Hessian, the generalised Gauss–Newton, the empirical Fisher.
_KINDS = {"hessian": HessianOperator, "ggn": GGNOperator, "fisher": FisherOperator}
OPERATORS = tuple(_KINDS)
#: How a printout names each operator, the symbol of its matrix, and its products.
TITLES = {"hessian": ("Hessian", "H", "Hessian-vector products"), "ggn": ("Gauss–Newton G", "G", "GGN-vector products"),
          "fisher": ("empirical Fisher", "F", "Fisher-vector products")}


def _operator(model: nn.Module, loss_fn: LossFn | None, data: Batch | Iterable[Any], mode: str,
              distributed: bool | None = None, group: object = None, operator: str = "hessian",
              params: ParamSpec = None, **options: Any) -> HessianOperator:
    """The operator of an analysis (``options``: ``batch_loss``, ``max_samples``, ``max_graph_bytes``,
    ``check``, ``keep_graph``, ``batched``), with the determinism check in ``mode="train"``.

    Called inside :func:`analysis_mode`: parameters outside ``params`` stop requiring gradients
    for the analysis (the mode restores the flags), so no graph is built for them."""
    kind = operator_class(operator)
    chosen = [p for _, p in select(model, params)]
    kept = {id(p) for p in chosen}
    for p in model.parameters():
        if id(p) not in kept:
            p.requires_grad_(False)
    op = kind(model, loss_fn, data, distributed=distributed, group=group, params=chosen, **options)
    if mode == "train":
        op.check_determinism()
    return op


def operator_class(operator: str) -> type[HessianOperator]:
    """The operator class for ``operator="hessian" | "ggn" | "fisher"`` (ConfigError otherwise)."""
    if isinstance(operator, str) and operator in _KINDS:
        return _KINDS[operator]
    raise ConfigError(f"operator={operator!r} is not allowed; use one of: {', '.join(OPERATORS)} (the Hessian, the"
                      " generalised Gauss–Newton, the empirical Fisher)")
