"""The Hessian of a model's full-data loss as a linear operator: ``v ↦ H v``.

The loss is the sample-weighted mean over the batches of ``data``::

    L(θ) = Σ_b (n_b / N) · L_b(θ),     N = Σ_b n_b,
    L_b = loss_fn(model(x_b), y_b)      or      L_b = batch_loss(model, batch_b)

so a short last batch counts for what it holds (``data`` forms: :mod:`trainlab.data.batches`).
``H = ∇²L(θ)`` over the parameters that require gradients, flattened in
``model.parameters()`` order.

How a product is computed (measured on torch 2.13 CPU, digits, MLP 64-128-128-10, full
batch; time of one ``H v`` ÷ time of one gradient): double backward 2.9, ``torch.func``
forward-over-reverse 3.1, ``torch.autograd.functional.hvp`` 4.6, and differentiating a
*kept* gradient graph 1.9. So the operator builds ``g = ∇L`` once with ``create_graph=True``
and answers each product with one backward pass through that graph,
``H v = ∇_θ (gᵀ v)``. A block of vectors goes through in one batched pass
(``is_grads_batched``) on a GPU; on CPU that pass costs 3.0 gradients per vector, so
there the rows are looped (``HessianOperator(batched=...)``; ``benchmarks/hvp_batching.py``
times both).

Memory: the kept graph grows with the sample count, so it is kept only while it fits
``max_graph_bytes`` (default :data:`DEFAULT_GRAPH_BYTES`) — the graph together with a product
running through it, which on a CNN takes about 1.5× the graph alone. Both are measured, not
guessed, on a slice of ``m ≤ 32`` samples of the first batch: with ``bytes(n) = a + b n`` per
batch (``a, b ≥ 0``), its ``w`` bytes bound a batch of ``n ≥ m`` by ``w n / m``, which decides
when it fits; else a second slice of ``m/2`` samples fits ``a`` and ``b``. The graph is
measured as the tensors autograd saves while building ``∇L``
(``torch.autograd.graph.saved_tensors_hooks``, each storage once), the peak as the tensors the
operations create, alive at once at the worst moment (a ``TorchDispatchMode``);
parameters, buffers and data are left out of both. Above the budget each product streams the
batches (two backward passes per batch, one graph alive at a time), and a batch whose own
peak exceeds the budget is split into chunks — exact in ``eval`` mode, where samples do not
interact; in ``train`` mode with BatchNorm a chunk would change the batch statistics, so that
case is refused. The process's own peak adds the allocator's slack and the kernels'
workspaces on top (``benchmarks/analysis_memory.py`` measures it).

Checks (``check=True``): non-finite data (:class:`~trainlab.errors.DataError` naming the
tensor, batch and sample); a non-finite loss at the analysed point (``DataError`` naming the
batch, and a non-finite parameter if there is one); a loss that is not a mean over the batch
(:class:`~trainlab.errors.ConfigError`): ``reduction='sum'`` or ``'none'`` on a torch loss
module, or, for any loss, the scale check ``L(batch) ≈ L(first half) + L(second half)`` where
a mean gives the halves' weighted mean (on at most :data:`SCALE_CHECK_SAMPLES` samples of the
first batch) — a sum would scale every eigenvalue by the batch size and void ``grad_tol``.

The user's code (:func:`loss_of`): an exception raised in the model's forward pass, in
``loss_fn`` or in ``batch_loss`` becomes one :class:`~trainlab.errors.DataError` sentence
naming where it came from, the batch, the shapes, and the user's own message (the original
chained as ``__cause__``); a ``loss_fn`` that fails on a model output that is not a tensor (a
tuple, a dict, a HuggingFace ``ModelOutput``) a :class:`~trainlab.errors.ConfigError` pointing
to ``batch_loss=``; a loss with no graph to the parameters (``.detach()``, ``.item()``,
``torch.no_grad()``, a constant) a ``ConfigError``. The first forward pass (the check above)
also refuses a model whose forward writes its own parameters in place — caught before the
write, so the parameters stay as they were.

Attention: PyTorch's fused kernels of ``scaled_dot_product_attention`` (flash, memory-efficient,
cuDNN; on CPU the flash kernel) have no double backward, so every analysis runs attention on
the math kernel, ``softmax(Q Kᵀ/√d + mask) V`` written out in differentiable operations: the same
value up to rounding. :func:`analysis_mode` enters ``sdpa_kernel(SDPBackend.MATH)`` for its block
and restores the user's choice after, and the operator says so once, in ``notes``, when the model
calls attention (``nn.MultiheadAttention``, ``nn.TransformerEncoder``, Hugging Face models,
``F.scaled_dot_product_attention`` itself) — not once per product.

Mode rule: the model is analysed in ``eval()`` mode by default — BatchNorm uses its running
statistics, dropout is off — and everything it holds is restored afterwards
(:func:`analysis_mode`). ``mode="train"`` is allowed only when it is deterministic: the
gradient is computed twice and must agree, else a :class:`~trainlab.errors.ConfigError`
explains why (dropout or other randomness makes ``H`` a random matrix).
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from trainlab import distributed as dist
from trainlab.curvature.selection import ParamSpec, select
from trainlab.data.batches import (Batch, BatchLoss, batch_size_of, first_non_finite, first_samples, named_tensors,
                                   take, to_device)
from trainlab.errors import ConfigError, DataError, TrainlabError
from trainlab.state import preserved

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MODES = ("eval", "train")
#: Default bound on the memory of the kept autograd graph (bytes).
DEFAULT_GRAPH_BYTES = 2 * 2**30
#: The graph's size is measured on this many samples of the first batch, and on twice as many.
GRAPH_PROBE_SAMPLES = 16
#: The sum-or-mean scale check looks at most at this many samples of the first batch.
SCALE_CHECK_SAMPLES = 256


@contextlib.contextmanager
def analysis_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Put ``model`` in ``mode`` ("eval" or "train") for the block, and leave it exactly as it
    was afterwards, also when the block raises: buffers (BatchNorm running statistics,
    ``num_batches_tracked``), ``training`` and ``requires_grad`` flags, ``.grad`` and the
    global random states (:func:`trainlab.state.preserved`; parameters are not copied —
    analyses do not write them)."""
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is not allowed; use 'eval' (the default: BatchNorm running statistics,"
                          " no dropout) or 'train'")
    with preserved(model, parameters=False), math_attention():
        model.train(mode == "train")
        yield


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Run ``scaled_dot_product_attention`` on PyTorch's math kernel inside the block, whose
    operations all have second derivatives (the fused kernels have none; module docstring), and
    restore the kernels allowed before afterwards."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


#: The note an analysis carries when the model called attention (module docstring).
MATH_ATTENTION_NOTE = ("attention ran on PyTorch's math kernel (scaled_dot_product_attention's fused kernels have no"
                       " second derivative); the values equal the fused kernels' up to rounding")


class _AttentionCalls(TorchFunctionMode):
    """Counts the calls of ``F.scaled_dot_product_attention`` and ``F.multi_head_attention_forward``
    inside the block (a torch-function mode: seen before any kernel is chosen)."""

    WATCHED = (torch.nn.functional.scaled_dot_product_attention, torch.nn.functional.multi_head_attention_forward)

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in self.WATCHED:
            self.calls += 1
        return func(*args, **(kwargs or {}))


class HessianOperator:
    """``H`` of the full-data loss at the model's current parameters.

    Use inside :func:`analysis_mode`. ``matvec(v)`` takes a flat ``(n,)`` vector, ``matmat(V)``
    an ``(m, n)`` block of row vectors; both count into ``n_hvp`` (one per vector).

    Parameters:
        model, loss_fn, data: ``L_b = loss_fn(model(x_b), y_b)`` over the batches of ``data``
            (any form of :mod:`trainlab.data.batches`). ``loss_fn`` may be ``None`` when
            ``batch_loss`` is given.
        keep_graph: ``True`` keep the gradient's graph for all products, ``False`` stream the
            batches for each product, ``None`` (default) keep it when it fits ``max_graph_bytes``.
        distributed, group: under ``torch.distributed`` (a process group is initialised;
            ``distributed=False`` turns it off, ``group=`` picks another group) each rank's
            ``data`` is its shard: the loss weights use the total sample count, and every
            gradient, product and loss is summed over the ranks, so every rank holds the
            full-data result.
        batched: how ``matmat`` pushes several vectors through the graph: ``True`` in one
            batched backward pass (``is_grads_batched``), ``False`` one pass per vector, ``None``
            (default) batched on GPUs and a loop on CPU, where the loop is faster.
        batch_loss: ``(model, batch) -> mean loss`` (a 0-d tensor), for batches that are not
            ``(x, y)`` pairs (dicts, extra fields) or models that compute their own loss.
        max_samples: use only the first ``max_samples`` samples of ``data`` (of this rank's
            shard), the last batch used cut to fit; ``None`` (default) uses all.
        max_graph_bytes: bound on the kept autograd graph at its peak, with a product running
            through it; default 2 GiB (module docstring).
        check: check the data and the loss (module docstring); one extra forward pass over the
            first batch. ``True`` by default.
        params: the parameters analysed, the others held fixed (:mod:`trainlab.curvature.selection`):
            ``None`` (default) all that require gradients; parameter tensors, submodules or names of
            the model, or a filter ``(name, parameter) -> bool``. ``H`` is then the block of those.

    Attributes: ``notes`` (what an analysis's result should say: attention on the math kernel,
    module docstring), ``params`` and ``names`` (the parameters analysed), ``n`` (their count),
    ``samples`` (over all ranks), ``n_hvp``, ``loss``, ``keep_graph``, ``graph_bytes`` (the whole kept graph's size as
    measured, or a bound above it when that bound fits the budget) and ``peak_bytes``
    (its peak with a product running through it), both ``None`` with ``keep_graph=True``.
    """

    #: the ``operator=`` name of this operator (:data:`trainlab.curvature.products.TITLES` names it in printouts)
    kind = "hessian"

    def __init__(self, model: nn.Module, loss_fn: LossFn | None, data: Batch | Iterable[Any],
                 keep_graph: bool | None = None, distributed: bool | None = None, group: object = None,
                 batched: bool | None = None, *, batch_loss: BatchLoss | None = None, max_samples: int | None = None,
                 max_graph_bytes: float = DEFAULT_GRAPH_BYTES, check: bool = True, params: ParamSpec = None):
        _check_options(loss_fn, batch_loss, max_samples, max_graph_bytes)
        self.model, self.loss_fn, self.batch_loss = model, loss_fn, batch_loss
        self.max_graph_bytes, self.check = max_graph_bytes, bool(check)
        chosen = select(model, params)
        self.names, self.params = [name for name, _ in chosen], [p for _, p in chosen]
        self.device, self.dtype = self.params[0].device, self.params[0].dtype
        self.n = sum(p.numel() for p in self.params)
        self.batches = _load(data, batch_loss, max_samples, self.device)
        self.sizes = [batch_size_of(b) for b in self.batches]
        self.distributed, self.group = dist.active(distributed, group), group
        local = sum(self.sizes)
        if self.distributed:
            dist.check_same_parameters(self.params, group)
            local = int(dist.all_reduce_sum(torch.tensor([local], device=self.device), group))
            dist.check_enough_samples(local, group)
        self.samples = local  # over all ranks
        if self.samples == 0:
            raise DataError("data holds no samples")
        if self.check and self.batches:
            with preserved(model, parameters=False), torch.no_grad():  # check passes leave no trace
                self._check_data()
                with _NoParameterWrites(self.model):
                    self._check_mean()
        self._graph_size = self._measure_graph() if keep_graph is not True and self.batches else None
        size = self._graph_size
        self.graph_bytes = size.total(self.sizes, "graph") if size else None
        self.peak_bytes = size.total(self.sizes) if size else None
        self.keep_graph = self.peak_bytes <= max_graph_bytes if keep_graph is None and size is not None \
            else bool(keep_graph if keep_graph is not None else True)
        # (batch, samples, index of the user's batch, first sample in it): chunks of over-large batches
        self.pieces = self._pieces()
        self.batched = self.device.type == "cuda" if batched is None else bool(batched)
        self.n_hvp = 0
        self._grad: torch.Tensor | None = None  # this rank's flat gradient; with a graph when keep_graph
        self._full_grad: torch.Tensor | None = None  # summed over ranks
        self._loss: float | None = None
        self.notes: list[str] = []

    # ---------------------------------------------------------------- checks and memory
    def batch_loss_of(self, batch: Any, index: int = 0) -> torch.Tensor:
        """``L_b`` of one batch (the ``index``-th, for messages), a 0-d tensor (:func:`loss_of`)."""
        return loss_of(self.model, self.loss_fn, batch, self.batch_loss, index)

    def _check_data(self) -> None:
        offset = 0
        for index, batch in enumerate(self.batches):
            for name, t in named_tensors(batch):
                if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
                    sample, value = first_non_finite(t)
                    raise DataError(f"the data hold a non-finite value ({value}) in {name} of batch {index}, sample"
                                    f" {sample} (sample {offset + sample} of the data): remove or repair it before"
                                    " the analysis")
            offset += self.sizes[index]

    def _check_mean(self) -> None:
        """Refuse a loss that sums over the batch instead of averaging (module docstring)."""
        advice = "use reduction='mean' or divide by the batch size"
        reduction = getattr(self.loss_fn, "reduction", None) if isinstance(self.loss_fn, nn.Module) else None
        if self.batch_loss is None and reduction in ("sum", "none"):
            effect = ("every eigenvalue and the gradient would scale with the batch size" if reduction == "sum" else
                      "it returns one loss per sample")
            raise ConfigError(f"loss_fn is {type(self.loss_fn).__name__}(reduction={reduction!r}), not a mean over the"
                              f" batch: {effect}; {advice}")
        batch, n = self.batches[0], self.sizes[0]
        if n > SCALE_CHECK_SAMPLES:  # a slice tells a sum from a mean as well, in bounded memory
            batch, n = take(batch, 0, SCALE_CHECK_SAMPLES), SCALE_CHECK_SAMPLES
        whole = float(self.batch_loss_of(batch))  # also the guarded first forward pass (module docstring)
        least = self._least_samples()
        if n < 2 * least:
            return
        half = n // 2
        first, second = float(self.batch_loss_of(take(batch, 0, half))), float(self.batch_loss_of(take(batch, half, n)))
        as_mean, as_sum = (half * first + (n - half) * second) / n, first + second
        gap = abs(as_sum - as_mean)
        if abs(whole - as_sum) < abs(whole - as_mean) and abs(whole - as_sum) <= 0.25 * gap:
            source = "batch_loss" if self.batch_loss is not None else "loss_fn"
            raise ConfigError(f"{source} returns a sum over the batch (reduction='sum'?), not a mean: its value on the"
                              f" first batch ({whole:.6g}) is the sum of its halves' ({first:.6g} + {second:.6g}),"
                              f" so eigenvalues would scale with the batch size; {advice}")

    def _check_loss(self, loss: torch.Tensor, index: int) -> None:
        if bool(torch.isfinite(loss)):
            return
        bad = next((name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())), None)
        why = (f"parameter {bad!r} holds non-finite values (a diverged run?)" if bad is not None else
               "the parameters and data are finite, so the model or the loss overflows at these parameters")
        raise DataError(f"the loss on batch {index} is {float(loss.detach())} at the analysed point: {why}; no"
                        " curvature can be computed there")

    def _measure_graph(self) -> "_GraphSize":
        """Graph and peak bytes of one batch, measured on slices of the first batch (module docstring).

        First a slice of ``m = min(n, 2·GRAPH_PROBE_SAMPLES)`` samples, ``w`` bytes. The sizes
        grow as ``a + b n`` with ``a, b ≥ 0``, so ``w · max(n, m) / m`` bounds a batch of ``n``
        samples from above; when that bound fits ``max_graph_bytes`` it decides (the graph is
        kept, nothing chunked). Otherwise a slice of ``m/2`` samples gives the fit ``a + b n``,
        by which batches are chunked. Both are kept per model (:data:`_GRAPH_SIZES`)."""
        batch, n = self.batches[0], self.sizes[0]
        large = min(n, 2 * GRAPH_PROBE_SAMPLES)
        key = self._graph_key(batch, large)
        known = _GRAPH_SIZES.get(self.model, {}).get(key)
        if known is not None and (known.fitted or known.total(self.sizes) <= self.max_graph_bytes):
            return known
        small = large // 2
        with preserved(self.model, parameters=False):  # a train-mode forward moves BatchNorm statistics
            whole = known.probed if known is not None else \
                self._graph_bytes(take(batch, 0, large) if large < n else batch)
            size = _GraphSize.bound(large, whole)
            if size.total(self.sizes) > self.max_graph_bytes and small >= self._least_samples():
                half = self._graph_bytes(take(batch, 0, small))
                size = _GraphSize(*(_Affine.through(small, h, large, w) for h, w in zip(half, whole)), whole, True)
        _GRAPH_SIZES.setdefault(self.model, {})[key] = size
        return size

    def _least_samples(self) -> int:
        """The fewest samples a batch can be run with: 2 for a BatchNorm in training mode (batch statistics), else 1."""
        return 2 if self.model.training and _has_batch_norm(self.model) else 1

    def _graph_key(self, batch: Any, large: int) -> tuple:
        """What a graph measurement depends on besides the model: the operator, the analysed
        parameters (names, shapes, dtypes, devices), the loss, the mode and the probe's per-sample
        shapes — not the parameters' values, which change no tensor's size."""
        return (type(self).__name__, id(self.loss_fn), id(self.batch_loss), self.model.training, large,
                tuple((name, tuple(p.shape), p.dtype, p.device) for name, p in zip(self.names, self.params)),
                tuple((name, tuple(t.shape[1:]), t.dtype) for name, t in named_tensors(batch)))

    def _graph_bytes(self, batch: Any) -> tuple[int, int]:
        """Bytes of the gradient graph of ``L_b`` (``create_graph=True``) and the peak bytes of
        building it and running one product through it. The graph: the tensors autograd saves,
        each storage once. The peak: every tensor the operations create, alive at once at the
        worst moment. Both leave out tensors alive anyway (parameters, buffers, data)."""
        held = {_storage_key(t) for t in [*self.model.parameters(), *self.model.buffers()]}
        held |= {_storage_key(t) for _, t in named_tensors(batch)}
        saved: dict[tuple, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            key = _storage_key(t)
            if key not in held:
                saved[key] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad(), \
                _LiveBytes(held) as live, _second_derivatives():
            self._probe(batch)
        return sum(saved.values()), live.peak

    def _probe(self, batch: Any) -> None:
        """Build what the products keep of one batch and run one product through it (measured by
        :meth:`_graph_bytes`): here the gradient's graph and one backward pass through it."""
        grad = _flat(torch.autograd.grad(self.batch_loss_of(batch), self.params, create_graph=True,
                                         allow_unused=True), self.params)
        if grad.requires_grad:
            torch.autograd.grad(grad, self.params, torch.ones_like(grad), allow_unused=True)

    def _pieces(self) -> list[tuple[Any, int, int, int]]:
        if self.keep_graph or self._graph_size is None:
            return [(b, n, i, 0) for i, (b, n) in enumerate(zip(self.batches, self.sizes))]
        pieces = []
        for index, (batch, n) in enumerate(zip(self.batches, self.sizes)):
            chunk = self._graph_size.fitting(self.max_graph_bytes)
            if n > chunk and self.model.training and _has_batch_norm(self.model):
                raise ConfigError(
                    f"batch {index} of {n:,} samples needs an autograd graph of about"
                    f" {_gib(self._graph_size.bytes(n))}, above max_graph_bytes={_gib(self.max_graph_bytes)}, and"
                    " in mode='train' splitting it would change its BatchNorm statistics: pass smaller batches"
                    f" (at most {chunk:,} samples, e.g. a DataLoader), use mode='eval', or raise max_graph_bytes")
            pieces += [(take(batch, s, min(s + chunk, n)) if chunk < n else batch, min(chunk, n - s), index, s)
                       for s in range(0, n, chunk)]
        return pieces

    # ---------------------------------------------------------------- loss and gradient
    def _weighted_losses(self) -> Iterator[torch.Tensor]:
        """``(n_b / N) L_b`` piece by piece (a piece is a batch, or a chunk of an over-large one)."""
        for batch, n, index, _ in self.pieces:
            loss = self.batch_loss_of(batch, index)
            if self.check:
                self._check_loss(loss, index)
            yield loss * (n / self.samples)

    @property
    def loss(self) -> float:
        if self._loss is None:
            self.gradient()
        return self._loss

    @torch.enable_grad()  # (also when the caller is inside torch.no_grad())
    def gradient(self) -> torch.Tensor:
        """``∇L`` as a flat vector (detached), over all the data (all ranks)."""
        if self._full_grad is None:
            with _second_derivatives(), self._noting_attention():
                self._grad, loss = self._local_gradient()
            if not self.distributed:  # the kept graph's gradient itself, not a second copy of it
                self._full_grad, self._loss = self._grad.detach(), float(loss)
                return self._full_grad
            full = dist.all_reduce_sum(torch.cat([self._grad.detach().reshape(-1), loss.reshape(1).to(self.dtype)]),
                                       self.group)
            self._full_grad, self._loss = full[:-1], float(full[-1])
        return self._full_grad

    def _local_gradient(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's flat gradient and loss; with ``keep_graph`` the gradient keeps its graph,
        through which every product then runs."""
        if self.keep_graph and self.pieces:
            total = sum(self._weighted_losses())
            grads = torch.autograd.grad(total, self.params, create_graph=True, allow_unused=True)
            return _flat(grads, self.params), total.detach()
        return self._accumulated_gradient()

    def _accumulated_gradient(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's flat gradient and loss, piece by piece, keeping no graph."""
        flat = torch.zeros(self.n, device=self.device, dtype=self.dtype)
        loss = torch.zeros((), device=self.device)
        for part in self._weighted_losses():
            flat += _flat(torch.autograd.grad(part, self.params, allow_unused=True), self.params)
            loss = loss + part.detach()
        return flat, loss

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

    @torch.enable_grad()
    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``(H vᵢ)ᵢ`` for the rows of an ``(m, n)`` block, together (see ``_products``)."""
        if vectors.dim() != 2 or vectors.shape[1] != self.n:
            raise ConfigError(f"vectors must have shape (m, {self.n}) (one per row); got {tuple(vectors.shape)}")
        vectors = vectors.to(device=self.device, dtype=self.dtype)
        self.n_hvp += len(vectors)
        # without a kept graph, products run the model (attention noted); through one they do not (building it
        # is noted by gradient()), and a torch-function mode would cost each product a tenth of its time
        noting = contextlib.nullcontext() if self.keep_graph else self._noting_attention()
        with _second_derivatives(), noting:
            out = self._local_products(vectors)
        return dist.all_reduce_sum(out, self.group) if self.distributed else out

    def _local_products(self, vectors: torch.Tensor) -> torch.Tensor:
        """This rank's share of the products: through the kept graph, or piece by piece."""
        if self.keep_graph:
            self.gradient()
            return self._products(self._grad, vectors)
        out = torch.zeros_like(vectors)
        for part in self._weighted_losses():
            grad = _flat(torch.autograd.grad(part, self.params, create_graph=True, allow_unused=True), self.params)
            out += self._products(grad, vectors)
        return out

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
        out = None  # allocated after the first backward pass, so it never adds to that pass's peak
        for i, v in enumerate(vectors):
            hv = torch.autograd.grad(grad, self.params, v, retain_graph=True, allow_unused=True)
            out = torch.empty_like(vectors) if out is None else out
            _flat(hv, self.params, out=out[i])  # written in place: no stacked copy of the products
        return out

    # ---------------------------------------------------------------- helpers
    @contextlib.contextmanager
    def _noting_attention(self) -> Iterator[None]:
        """Add the math-kernel note to ``notes`` when the model calls attention inside the block
        (watched until it does, then no longer: the note is said once)."""
        if MATH_ATTENTION_NOTE in self.notes:
            yield
            return
        with _AttentionCalls() as attention:
            yield
        if attention.calls and MATH_ATTENTION_NOTE not in self.notes:  # (a gradient inside a product noted it)
            self.notes.append(MATH_ATTENTION_NOTE)

    def release(self) -> None:
        """Free the kept graph (and the cached gradient); a later call builds them again."""
        self._grad, self._full_grad, self._loss = None, None, None

    def check_determinism(self) -> None:
        """In training mode, the gradient must come out the same twice (no dropout etc.)."""
        first = self.gradient().clone()
        self.release()
        second = self.gradient()
        gap = (first - second).abs().max().item()
        if gap > 0:
            raise ConfigError(
                f"mode='train' gives a different gradient each time (max difference {gap:.3g}): the model draws"
                " random numbers in training mode (dropout?), so its Hessian is a random matrix; analyse it in"
                " mode='eval' (the default), or remove the randomness")


class _Affine:
    """``a + b · max(n, least)`` bytes for a batch of ``n`` samples."""

    def __init__(self, constant: float, per_sample: float, least: int = 0):
        self.constant, self.per_sample, self.least = constant, per_sample, least

    @classmethod
    def through(cls, n1: int, b1: float, n2: int, b2: float) -> "_Affine":
        per = max(b2 - b1, 0) / (n2 - n1)
        return cls(max(b1 - per * n1, 0.0), per)

    def __call__(self, n: int) -> float:
        return self.constant + self.per_sample * max(n, self.least)


#: Graph measurements by model and :meth:`HessianOperator._graph_key`: a model analysed again (the
#: stall doctor's looks, a Monitor's readings) is not probed again — a probe runs a double backward
#: pass under a dispatch mode (two for a fit), 11 ms of a 57-ms look on the digits MLP.
_GRAPH_SIZES: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, _GraphSize]]" = weakref.WeakKeyDictionary()


class _GraphSize:
    """One batch's kept gradient graph, ``graph(n)``, and the peak of building it and running a
    product through it, ``bytes(n)`` — what ``max_graph_bytes`` bounds: ``fitted`` to two slices,
    or an upper bound from the first slice alone (:meth:`bound`); ``probed`` is that slice's
    ``(graph, peak)`` bytes."""

    def __init__(self, graph: _Affine, peak: _Affine, probed: tuple[int, int], fitted: bool):
        self.graph, self.bytes, self.probed, self.fitted = graph, peak, probed, fitted

    @classmethod
    def bound(cls, m: int, probed: tuple[int, int]) -> "_GraphSize":
        """``w · max(n, m) / m`` from a slice of ``m`` samples of ``w`` bytes: at least ``a + b n`` for any
        ``n`` when ``a, b ≥ 0``."""
        return cls(*(_Affine(0.0, w / m, least=m) for w in probed), probed, False)

    def total(self, sizes: list[int], of: str = "bytes") -> int:
        """All batches' graphs kept together (their sum)."""
        return int(sum(getattr(self, of)(n) for n in sizes))

    def fitting(self, budget: float) -> int:
        """The most samples whose peak fits ``budget`` (at least 1)."""
        if self.bytes.per_sample <= 0:
            return 2**62
        return max(1, int((budget - self.bytes.constant) // self.bytes.per_sample))


class _LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages the operations inside the block create (skipping
    ``held`` ones) while they are alive, and keeps the peak."""

    def __init__(self, held: set[tuple]):
        super().__init__()
        self.held, self.alive, self.live, self.peak = held, {}, 0, 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = _storage_key(t)
                if key[2] and key not in self.held:
                    if key in self.alive and self.alive[key][0].expired():  # freed, its address reused
                        self.live -= self.alive.pop(key)[1]
                    if key not in self.alive:
                        nbytes = t.untyped_storage().nbytes()
                        self.alive[key] = (StorageWeakRef(t.untyped_storage()), nbytes)
                        self.live += nbytes
        # Freed storages are dropped only when the count would set a new peak: ``live`` may then
        # overcount (never undercount) what is alive, so a count at or below the peak cannot raise
        # it, and one above is made exact before it does — the same peak, without a scan per operation.
        if self.live > self.peak:
            for key in [k for k, (ref, _) in self.alive.items() if ref.expired()]:
                self.live -= self.alive.pop(key)[1]
            self.peak = max(self.peak, self.live)
        return out


def _check_options(loss_fn: Any, batch_loss: Any, max_samples: Any, max_graph_bytes: Any) -> None:
    if loss_fn is None and batch_loss is None:
        raise ConfigError("loss_fn=None needs batch_loss=(model, batch) -> mean loss; give one of them")
    if batch_loss is not None and not callable(batch_loss):
        raise ConfigError(f"batch_loss={batch_loss!r} is not allowed; expected a function (model, batch) -> mean loss")
    if loss_fn is not None and not callable(loss_fn):
        raise ConfigError(f"loss_fn={loss_fn!r} is not allowed; expected a function (outputs, targets) -> mean loss")
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples < 1):
        raise ConfigError(f"max_samples={max_samples!r} is not allowed; expected an integer >= 1 or None (all)")
    if isinstance(max_graph_bytes, bool) or not isinstance(max_graph_bytes, (int, float)) \
            or math.isnan(max_graph_bytes) or max_graph_bytes <= 0:
        raise ConfigError(f"max_graph_bytes={max_graph_bytes!r} is not allowed; expected a number of bytes > 0")


@contextlib.contextmanager
def _second_derivatives() -> Iterator[None]:
    """Turn PyTorch's "derivative for aten::… is not implemented" — an operation without the
    double backward that curvature products need — into a :class:`ConfigError` naming it.
    (Attention's fused kernels never get here: analyses run it on the math kernel.)"""
    try:
        yield
    except RuntimeError as e:
        text = str(e)
        if "derivative for" not in text or "is not implemented" not in text:
            raise
        what = text.split("derivative for", 1)[1].split("is not implemented", 1)[0].strip()
        raise ConfigError(f"the model uses {what}, whose derivative PyTorch does not implement, and curvature needs"
                          f" the network's second derivatives: for the analysis replace the operation that calls"
                          f" it{_instead(what)}") from None


#: Operations without a double backward that have a twice-differentiable stand-in: (name part, advice).
STAND_INS = (("hardsigmoid", "nn.Hardsigmoid by nn.Sigmoid"), ("hardswish", "nn.Hardswish by nn.SiLU"))


def _instead(op: str) -> str:
    """The stand-in for ``op`` when one is known (``" (nn.Hardswish by nn.SiLU)"``), else nothing."""
    advice = [text for part, text in STAND_INS if part in op.lower()]
    return f" ({advice[0]})" if advice else ""


def loss_of(model: nn.Module, loss_fn: LossFn | None, batch: Any, batch_loss: BatchLoss | None = None,
            index: int = 0) -> torch.Tensor:
    """``L_b = loss_fn(model(x), y)`` or ``batch_loss(model, batch)`` of one batch (the ``index``-th,
    for messages) as a 0-d tensor; the user's failures named in one sentence (module docstring):
    :class:`DataError` for an exception in the forward pass or the loss, :class:`ConfigError` for a
    non-tensor output ``loss_fn`` cannot take, a loss that is not a scalar tensor, or (when
    gradients are enabled) one with no graph to the parameters."""
    if batch_loss is not None:
        try:
            loss = batch_loss(model, batch)
        except Exception as e:  # noqa: BLE001 - named and chained, not swallowed
            _reraise_ours(e)
            raise DataError(f"batch_loss raised {_error(e)} on batch {index}") from e
        return checked_loss(loss, "batch_loss")
    return checked_loss(loss_on(loss_fn, model_outputs(model, batch[0], index), batch[1], index), "loss_fn")


def model_outputs(model: nn.Module, inputs: Any, index: int = 0) -> Any:
    """``model(inputs)``; an exception in the user's forward pass becomes a :class:`DataError` naming it."""
    try:
        return model(inputs)
    except Exception as e:  # noqa: BLE001 - named and chained, not swallowed
        _reraise_ours(e)
        raise DataError(f"the model raised {_error(e)} in its forward pass on batch {index} (inputs"
                        f" {_describe(inputs)})") from e


def loss_on(loss_fn: LossFn, outputs: Any, targets: Any, index: int = 0) -> Any:
    """``loss_fn(outputs, targets)``; its exception becomes a :class:`ConfigError` pointing to
    ``batch_loss=`` when ``outputs`` is not a tensor, else a :class:`DataError` naming the shapes."""
    try:
        return loss_fn(outputs, targets)
    except Exception as e:  # noqa: BLE001 - named and chained, not swallowed
        _reraise_ours(e)
        if not isinstance(outputs, torch.Tensor):
            raise ConfigError(f"the model returns {_kind(outputs)}, not a tensor, and loss_fn(outputs, targets) fails"
                              f" on it ({_error(e)}): pass batch_loss=lambda model, batch:"
                              f" loss_fn({_pick(outputs)}, batch[1]) to hand it the tensor it needs") from e
        raise DataError(f"loss_fn raised {_error(e)} on batch {index} (outputs {_describe(outputs)}, targets"
                        f" {_describe(targets)})") from e


def checked_loss(loss: Any, source: str) -> torch.Tensor:
    """``loss`` as a 0-d tensor (:func:`_mean_loss`); while gradients are enabled, a loss that does
    not require one — no graph to the parameters analysed — is a :class:`ConfigError`."""
    loss = _mean_loss(loss, source)
    if torch.is_grad_enabled() and not loss.requires_grad:
        raise ConfigError(f"{source} returns a loss that does not depend on the parameters analysed (it has no"
                          " autograd graph: a .detach(), torch.no_grad() or a constant inside?), so it has no"
                          " gradient and no curvature; compute it from the model's outputs")
    return loss


def _reraise_ours(e: Exception) -> None:
    """trainlab's own errors and running out of memory are not the user's code failing: raise them as they are."""
    if isinstance(e, (TrainlabError, MemoryError, torch.cuda.OutOfMemoryError)):
        raise e


def _error(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0].strip() if lines else ""
    text = text if len(text) <= 300 else text[:299] + "…"
    return f"{type(e).__name__}" + (f" ({text})" if text else "")


def _describe(t: Any) -> str:
    if isinstance(t, torch.Tensor):
        return f"of shape {tuple(t.shape)}, {str(t.dtype).replace('torch.', '')}"
    return _kind(t)


def _kind(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, dict):
        return f"a {type(value).__name__} with keys {list(value)[:3]}"
    return f"a {type(value).__name__}"


def _pick(outputs: Any) -> str:
    """How ``batch_loss`` might take the tensor out of ``outputs``."""
    if isinstance(outputs, dict) and outputs:
        return f"model(batch[0])[{next(iter(outputs))!r}]"
    if hasattr(outputs, "logits"):
        return "model(batch[0]).logits"
    if isinstance(outputs, (tuple, list)):
        return "model(batch[0])[0]"
    return "<the tensor of model(batch[0])>"


class _NoParameterWrites(TorchDispatchMode):
    """Raises a :class:`ConfigError` before an operation inside the block writes a parameter of
    ``model`` in place (``p.mul_()``, ``p.data.copy_()``): an analysis must leave it as it was."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.names = {_storage_key(p): name for name, p in model.named_parameters()}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        for i, argument in enumerate(func._schema.arguments):
            if argument.alias_info is None or not argument.alias_info.is_write:
                continue
            value = args[i] if i < len(args) else kwargs.get(argument.name)
            for t in tree_leaves(value):
                name = self.names.get(_storage_key(t)) if isinstance(t, torch.Tensor) else None
                if name is not None:
                    raise ConfigError(f"the model's forward pass writes its parameter {name!r} in place"
                                      f" ({func.__name__}): an analysis must leave the model as it was, and a loss"
                                      " that changes the parameters it is differentiated in has no Hessian; move"
                                      " the update out of forward(), or use torch.nn.utils.parametrize")
        return func(*args, **kwargs)


def _mean_loss(loss: Any, source: str) -> torch.Tensor:
    """``loss`` as a 0-d tensor, or a :class:`ConfigError` saying that ``source`` must return a scalar mean."""
    if isinstance(loss, (int, float)) and not isinstance(loss, bool):
        raise ConfigError(f"{source} returns a Python {type(loss).__name__} ({loss:.6g}), not a tensor: .item(),"
                          " float() or a constant cut the loss off from the parameters; return the loss tensor")
    if not isinstance(loss, torch.Tensor):
        raise ConfigError(f"{source} returns {_kind(loss)}, not a tensor: return the batch's mean loss itself, a 0-d"
                          " tensor (other values can be logged from the model or the loss function)")
    if loss.numel() != 1:
        raise ConfigError(f"{source} returns a tensor of shape {tuple(loss.shape)}, not a scalar mean over the batch:"
                          " use reduction='mean' (or .mean() over the samples)")
    return loss.reshape(())


def _load(data: Any, batch_loss: BatchLoss | None, max_samples: int | None, device: torch.device) -> list[Any]:
    """The batches of ``data`` on ``device``, stopping after ``max_samples`` samples."""
    return [to_device(batch, device) for batch in first_samples(data, max_samples, batch_loss)]


def _has_batch_norm(model: nn.Module) -> bool:
    """Whether a module in training mode normalises with batch statistics."""
    return any(m.training and (isinstance(m, nn.modules.batchnorm._BatchNorm) or "BatchNorm" in type(m).__name__)
               for m in model.modules())


def _storage_key(t: torch.Tensor) -> tuple:
    """``(device type, index, data pointer)``; pointer 0 for a tensor without a storage (autograd's
    zero tensors, e.g. the derivative of ``sign`` in ``l1_loss``'s double backward), which holds no bytes."""
    if t._is_zerotensor() or t.is_meta:
        return (t.device.type, t.device.index, 0)
    return (t.device.type, t.device.index, t.untyped_storage().data_ptr())


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _flat(tensors: Iterable[torch.Tensor | None], params: list[torch.Tensor] | None = None,
          batch: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Concatenate per-parameter tensors (``None`` → zeros) into one flat vector (per batch row),
    written into ``out`` when given."""
    parts = []
    for i, t in enumerate(tensors):
        if t is None:
            p = params[i]
            t = torch.zeros((batch, *p.shape) if batch else p.shape, device=p.device, dtype=p.dtype)
        parts.append(t.reshape(batch, -1) if batch else t.reshape(-1))
    if out is not None:
        return torch.cat(parts, dim=1 if batch else 0, out=out)
    return torch.cat(parts, dim=1 if batch else 0)


class Timer:
    """Wall time since construction, in seconds."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
