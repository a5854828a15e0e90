"""The Hessian of a model's full-data loss as a linear operator: ``v ↦ H v``.

The loss is the sample-weighted mean over the batches of ``data``::

    L(θ) = Σ_b (n_b / N) · loss_fn(model(x_b), y_b),     N = Σ_b n_b

so a short last batch counts for what it holds. ``H = ∇²L(θ)`` over the parameters that
require gradients, flattened in ``model.parameters()`` order.

How a product is computed (measured on torch 2.13 CPU, digits, MLP 64-128-128-10, full
batch; time of one ``H v`` ÷ time of one gradient): double backward 2.9, ``torch.func``
forward-over-reverse 3.1, ``torch.autograd.functional.hvp`` 4.6, and differentiating a
*kept* gradient graph 1.9. So the operator builds ``g = ∇L`` once with ``create_graph=True``
and answers each product with one backward pass through that graph,
``H v = ∇_θ (gᵀ v)``. A block of vectors goes through in one batched pass
(``is_grads_batched``) on a GPU; on CPU that pass costs 3.0 gradients per vector, so
there the rows are looped (``HessianOperator(batched=...)``; ``benchmarks/hvp_batching.py``
times both). When the data are too large to keep every batch's graph
(``keep_graph=False``, chosen automatically above :data:`KEEP_GRAPH_MAX_SAMPLES`), each
product streams the batches, two backward passes per batch.

Mode rule: the model is analysed in ``eval()`` mode by default — BatchNorm uses its running
statistics, dropout is off — and its mode is restored afterwards (:func:`analysis_mode`).
``mode="train"`` is allowed only when it is deterministic: the gradient is computed twice
and must agree, else a :class:`~trainlab.errors.ConfigError` explains why (dropout or other
randomness makes ``H`` a random matrix).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from trainlab import distributed as dist
from trainlab.data.batches import Batch, as_batches
from trainlab.errors import ConfigError, DataError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MODES = ("eval", "train")
#: Above this many samples the gradient graph is not kept; products stream the batches.
KEEP_GRAPH_MAX_SAMPLES = 50_000


@contextlib.contextmanager
def analysis_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Put ``model`` in ``mode`` ("eval" or "train") and restore every submodule's mode after."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not allowed; use 'eval' (the default: BatchNorm running statistics,"
                          " no dropout) or 'train'")
    modes = {m: m.training for m in model.modules()}
    model.train(mode == "train")
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


class HessianOperator:
    """``H`` of the full-data loss at the model's current parameters.

    Use inside :func:`analysis_mode`. ``matvec(v)`` takes a flat ``(n,)`` vector, ``matmat(V)``
    an ``(m, n)`` block of row vectors; both count into ``n_hvp`` (one per vector).

    Under ``torch.distributed`` (a process group is initialised; ``distributed=False`` turns it
    off, ``group=`` picks another group) each rank's ``data`` is its shard: the loss weights use
    the total sample count, and every gradient, product and loss is summed over the ranks, so
    every rank holds the full-data result.

    ``batched`` decides how ``matmat`` pushes several vectors through the gradient's graph:
    ``True`` in one batched backward pass (``is_grads_batched``), ``False`` one pass per vector,
    ``None`` (default) batched on GPUs and a loop on CPU, where the loop is faster
    (``benchmarks/hvp_batching.py``).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, data: Batch | Iterable[Batch],
                 keep_graph: bool | None = None, distributed: bool | None = None, group: object = None,
                 batched: bool | None = None):
        self.model, self.loss_fn = model, loss_fn
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("the model has no parameters that require gradients")
        self.device, self.dtype = self.params[0].device, self.params[0].dtype
        self.n = sum(p.numel() for p in self.params)
        self.batches = [(x.to(self.device), y.to(self.device)) for x, y in as_batches(data)]
        self.distributed, self.group = dist.active(distributed, group), group
        local = sum(len(y) for _, y in self.batches)
        if self.distributed:
            dist.check_same_parameters(self.params, group)
            local = int(dist.all_reduce_sum(torch.tensor([local], device=self.device), group))
            dist.check_enough_samples(local, group)
        self.samples = local  # over all ranks
        if self.samples == 0:
            raise DataError("data holds no samples")
        self.keep_graph = self.samples <= KEEP_GRAPH_MAX_SAMPLES if keep_graph is None else keep_graph
        self.batched = self.device.type == "cuda" if batched is None else bool(batched)
        self.n_hvp = 0
        self._grad: torch.Tensor | None = None  # this rank's flat gradient; with a graph when keep_graph
        self._full_grad: torch.Tensor | None = None  # summed over ranks
        self._loss: float | None = None

    # ---------------------------------------------------------------- loss and gradient
    def _weighted_losses(self) -> Iterator[torch.Tensor]:
        for x, y in self.batches:
            yield self.loss_fn(self.model(x), y) * (len(y) / self.samples)

    @property
    def loss(self) -> float:
        if self._loss is None:
            self.gradient()
        return self._loss

    def gradient(self) -> torch.Tensor:
        """``∇L`` as a flat vector (detached), over all the data (all ranks)."""
        if self._full_grad is None:
            if self.keep_graph and self.batches:
                total = sum(self._weighted_losses())
                grads = torch.autograd.grad(total, self.params, create_graph=True, allow_unused=True)
                loss, self._grad = total.detach(), _flat(grads, self.params)
            else:
                flat, loss = torch.zeros(self.n, device=self.device, dtype=self.dtype), torch.zeros((), device=self.device)
                for part in self._weighted_losses():
                    flat += _flat(torch.autograd.grad(part, self.params, allow_unused=True), self.params)
                    loss = loss + part.detach()
                self._grad = flat
            full = torch.cat([self._grad.detach().reshape(-1), loss.reshape(1).to(self.dtype)])
            if self.distributed:
                dist.all_reduce_sum(full, self.group)
            self._full_grad, self._loss = full[:-1], float(full[-1])
        return self._full_grad

    def total_loss(self) -> float:
        """The full-data loss at the current parameters (recomputed; no gradient)."""
        with torch.no_grad():
            local = sum((part.detach() for part in self._weighted_losses()), torch.zeros((), device=self.device))
        if self.distributed:
            dist.all_reduce_sum(local, self.group)
        return float(local)

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` on every rank (identity in one process): keeps random start
        vectors identical everywhere."""
        return dist.broadcast(tensor, self.group) if self.distributed else tensor

    # ---------------------------------------------------------------- products
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat ``(n,)`` vector."""
        return self.matmat(v.reshape(1, -1))[0]

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``(H vᵢ)ᵢ`` for the rows of an ``(m, n)`` block, together (see ``_products``)."""
        if vectors.dim() != 2 or vectors.shape[1] != self.n:
            raise ValueError(f"vectors must have shape (m, {self.n}) (one per row); got {tuple(vectors.shape)}")
        vectors = vectors.to(device=self.device, dtype=self.dtype)
        self.n_hvp += len(vectors)
        if self.keep_graph:
            self.gradient()
            out = self._products(self._grad, vectors)
        else:
            out = torch.zeros_like(vectors)
            for part in self._weighted_losses():
                grad = _flat(torch.autograd.grad(part, self.params, create_graph=True, allow_unused=True), self.params)
                out += self._products(grad, vectors)
        return dist.all_reduce_sum(out, self.group) if self.distributed else out

    def _products(self, grad: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """``∇(gᵀ v)`` for each row ``v``: backward passes through the gradient's graph, all
        rows in one batched pass when ``self.batched``, else one pass per row."""
        if not grad.requires_grad:  # the loss is linear in θ (or constant): H = 0
            return torch.zeros_like(vectors)
        if len(vectors) > 1 and self.batched:
            try:
                hv = torch.autograd.grad(grad, self.params, vectors, retain_graph=True, allow_unused=True,
                                         is_grads_batched=True)
                return _flat(hv, self.params, batch=len(vectors))
            except RuntimeError:  # an operation without a batching rule: one vector at a time
                pass
        return torch.stack([_flat(torch.autograd.grad(grad, self.params, v, retain_graph=True, allow_unused=True),
                                  self.params) for v in vectors])

    # ---------------------------------------------------------------- helpers
    def check_determinism(self) -> None:
        """In training mode, the gradient must come out the same twice (no dropout etc.)."""
        first = self.gradient().clone()
        self._grad, self._full_grad, self._loss = None, None, None
        second = self.gradient()
        gap = (first - second).abs().max().item()
        if gap > 0:
            raise ConfigError(
                f"mode='train' gives a different gradient each time (max difference {gap:.3g}): the model draws"
                " random numbers in training mode (dropout?), so its Hessian is a random matrix; analyse it in"
                " mode='eval' (the default), or remove the randomness")


def _flat(tensors: Iterable[torch.Tensor | None], params: list[torch.Tensor] | None = None,
          batch: int | None = None) -> torch.Tensor:
    """Concatenate per-parameter tensors (``None`` → zeros) into one flat vector (per batch row)."""
    parts = []
    for i, t in enumerate(tensors):
        if t is None:
            p = params[i]
            t = torch.zeros((batch, *p.shape) if batch else p.shape, device=p.device, dtype=p.dtype)
        parts.append(t.reshape(batch, -1) if batch else t.reshape(-1))
    return torch.cat(parts, dim=1 if batch else 0)


class Timer:
    """Wall time since construction, in seconds."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
