"""The generalised Gauss–Newton matrix and the empirical Fisher as linear operators.

With outputs ``f_b = model(x_b)`` and ``ℓ_b = loss_fn(f_b, y_b)`` a mean over batch ``b``, the
loss is ``L(θ) = Σ_b (n_b/N) ℓ_b(f_b(θ))`` (as for the Hessian, :mod:`trainlab.curvature.operator`),
and its Hessian over the selected parameters splits by the chain rule into::

    H = G + R,
    G = Σ_b (n_b/N) J_bᵀ (∇²_f ℓ_b) J_b            the generalised Gauss–Newton (GGN),
    R = Σ_b (n_b/N) Σ_k (∂ℓ_b/∂f_k) ∇²_θ f_k       the network's curvature weighted by the residuals,

``J_b = ∂f_b/∂θ``. ``G`` is positive semi-definite whenever the loss is convex in the outputs
(cross-entropy on logits, MSE on the outputs), so every negative eigenvalue of ``H`` comes from
``R``: the part that carries the network's second derivatives (Sagun et al. 2017; Papyan 2019).
The lecture's MSE, :func:`trainlab.nn.mse_onehot`, takes a softmax inside the loss, which is not
convex in the logits: there ``G`` can have negative eigenvalues, and the split says less.

A product never forms ``J``::

    G v = Σ_b (n_b/N) J_bᵀ (∇²_f ℓ_b (J_b v))

``J v`` by the double-VJP trick — with ``u`` a dummy leaf shaped like ``f``, ``a(u) = Jᵀ u =
∂(fᵀu)/∂θ`` is built with its graph, linear in ``u``, and ``J v = ∂(a(u)ᵀ v)/∂u``;
``∇²_f ℓ · w`` by a double backward of the loss to the outputs; ``Jᵀ w`` by one VJP. Forward-mode
AD would give ``J v`` too, but not through custom autograd Functions without a ``jvp`` rule
(trainlab's BatchNorm in training mode), and it is slower once the graphs are kept. With
``keep_graph`` each piece keeps its outputs' graph, the graph of ``a(u)`` and that of ``∂ℓ/∂f``,
so a product costs backward passes only (three per vector); streaming rebuilds them per piece
for every product. Measured (``benchmarks/gauss_newton_check.py``: torch 2.13 CPU, digits, MLP
64-128-128-10, full batch, float32; time of one product ÷ one gradient): GGN kept 1.2, streamed
2.3; Fisher 1.1 and 2.2; the Hessian 1.8 and 2.8; forward-mode ``J v`` with the other graphs
kept 1.7; curvlinops' GGN 3.5. The kept graphs weigh about what the Hessian's does.

The *empirical* Fisher of the per-sample gradients ``g_i = ∇_θ ℓ_i`` (the leading dimension of
a batch indexes the samples, and ``ℓ_b`` is the mean of their losses ``ℓ_i``)::

    F = (1/N) Σ_i g_i g_iᵀ,    g_i = J_iᵀ r_i,   r_i = ∂ℓ_i/∂f_i = n_b ∂ℓ_b/∂f_i,
    F v = (1/N) Σ_i J_iᵀ r_i (r_iᵀ J_i v)

— the same JVP and VJP, no per-sample gradient is formed. ``r_i = n_b ∂ℓ_b/∂f_i`` holds for
outputs with more dimensions too, e.g. ``(B, T, V)`` tokens with a loss averaged over all of
them: then ``ℓ_i`` is sample ``i``'s mean over its tokens. (In ``mode="train"`` with BatchNorm the
samples interact and ``J_i`` is the row block of the batch's Jacobian.) The *true* Fisher,
with ``y`` drawn from the model's predictive distribution, equals ``G`` when the loss is the
negative log-likelihood of an exponential family in its natural parameters — cross-entropy on
logits, MSE as a Gaussian's (up to the noise variance) — hence "fisher" here means the empirical
one, as curvlinops' ``EFLinearOperator``. That operator, with ``reduction="mean"``, is this ``F`` for
``CrossEntropyLoss``; for ``MSELoss`` it counts each of the ``C`` output entries as a loss term
(``c = 1/(N C)``, per-sample losses summed over the entries), giving ``C · F``.

``F`` is positive semi-definite for any loss; unlike ``G`` it is no part of ``H`` and is
small where the model fits the data (``g_i → 0``), whatever the curvature.

Both need ``loss_fn(outputs, targets)`` to split the network from the loss, so ``batch_loss``
is refused. Modes, checks, ``params``, ``distributed``, memory (the measured kept graphs, and
streaming or chunks above ``max_graph_bytes``) are the Hessian operator's.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from trainlab.curvature.operator import (DEFAULT_GRAPH_BYTES, HessianOperator, LossFn, _flat, checked_loss, loss_on,
                                         model_outputs)
from trainlab.curvature.selection import ParamSpec
from trainlab.data.batches import Batch, BatchLoss, batch_size_of
from trainlab.errors import ConfigError


class _Piece:
    """What the products keep of one piece of the data: the outputs ``f`` (with their graph),
    ``∂((n_b/N) ℓ_b)/∂f`` (with its graph for the GGN), the loss, and the graph of ``a(u) = Jᵀ u``
    (built on the first product)."""

    def __init__(self, outputs: torch.Tensor, grad_outputs: torch.Tensor, loss: torch.Tensor):
        self.outputs, self.grad_outputs, self.loss = outputs, grad_outputs, loss
        self.dummy: torch.Tensor | None = None
        self.transposed: tuple[torch.Tensor | None, ...] = ()


class GGNOperator(HessianOperator):
    """``G``, the generalised Gauss–Newton matrix of the full-data loss (module docstring), with
    :class:`HessianOperator`'s constructor, attributes and methods; ``gradient()`` and ``loss``
    are the loss's own (no graph of the gradient is built).

    Refuses (:class:`~trainlab.errors.ConfigError`) ``batch_loss`` and ``loss_fn=None``: it needs
    ``loss_fn(outputs, targets)`` to tell the network's outputs from the loss, and a model that
    returns one tensor.
    """

    kind = "ggn"
    _title = "Gauss–Newton matrix"

    def __init__(self, model: nn.Module, loss_fn: LossFn | None, data: Batch | Iterable[Any],
                 keep_graph: bool | None = None, distributed: bool | None = None, group: object = None,
                 batched: bool | None = None, *, batch_loss: BatchLoss | None = None, max_samples: int | None = None,
                 max_graph_bytes: float = DEFAULT_GRAPH_BYTES, check: bool = True, params: ParamSpec = None):
        if batch_loss is not None or loss_fn is None:
            what = "batch_loss" if batch_loss is not None else "loss_fn=None"
            raise ConfigError(f"{what} is not allowed with operator={self.kind!r}: the {self._title} needs"
                              " loss_fn(outputs, targets) to split the network's outputs from the loss; give loss_fn"
                              " and (inputs, targets) batches, or use operator='hessian'")
        self._kept: list[_Piece] | None = None
        super().__init__(model, loss_fn, data, keep_graph, distributed, group, batched, max_samples=max_samples,
                         max_graph_bytes=max_graph_bytes, check=check, params=params)

    # ---------------------------------------------------------------- pieces
    def _piece(self, batch: Any, n: int, index: int, check: bool = True) -> _Piece:
        """Forward pass of one piece: outputs, loss and output gradient (module docstring)."""
        outputs = model_outputs(self.model, batch[0], index)
        if not isinstance(outputs, torch.Tensor):
            raise ConfigError(f"the model returns {type(outputs).__name__}, not a tensor: operator={self.kind!r}"
                              " needs the outputs f that loss_fn(f, targets) takes")
        if not outputs.requires_grad:  # the selected parameters do not reach the outputs: J = 0
            outputs = outputs.detach().requires_grad_(True)
        loss = checked_loss(loss_on(self.loss_fn, outputs, batch[1], index), "loss_fn")
        if check and self.check:
            self._check_loss(loss, index)
        weighted = loss * (n / self.samples)
        grad_outputs, = torch.autograd.grad(weighted, outputs, create_graph=self._output_hessian)
        return _Piece(outputs, grad_outputs, weighted.detach())

    _output_hessian = True  # whether a product needs the graph of ∂ℓ/∂f (the GGN does, the Fisher not)

    def _jvp(self, piece: _Piece, vectors: torch.Tensor) -> torch.Tensor:
        """``J vᵢ`` for each row, shaped ``(m, *f.shape)``: a backward pass through ``a(u)``."""
        if piece.dummy is None:
            piece.dummy = torch.zeros_like(piece.outputs, requires_grad=True)
            piece.transposed = torch.autograd.grad(piece.outputs, self.params, piece.dummy, create_graph=True,
                                                   allow_unused=True)
        rows = vectors.split([p.numel() for p in self.params], dim=1)
        pairs = [(a, r.reshape(len(vectors), *a.shape)) for a, r in zip(piece.transposed, rows)
                 if a is not None and a.requires_grad]
        if not pairs:
            return vectors.new_zeros(len(vectors), *piece.outputs.shape)
        return self._pull([a for a, _ in pairs], [piece.dummy], [r for _, r in pairs])[0]

    def _output_products(self, piece: _Piece, jv: torch.Tensor) -> torch.Tensor:
        """``(n_b/N) ∇²_f ℓ_b · wᵢ`` for each row ``wᵢ = J vᵢ``: double backward to the outputs."""
        if not piece.grad_outputs.requires_grad:  # ℓ is linear in f
            return torch.zeros_like(jv)
        return self._pull([piece.grad_outputs], [piece.outputs], [jv])[0]

    def _piece_products(self, piece: _Piece, vectors: torch.Tensor) -> torch.Tensor:
        """This piece's share of the products, ``Jᵀ M J vᵢ`` (``M`` the output curvature)."""
        w = self._output_products(piece, self._jvp(piece, vectors))
        return _flat(self._pull([piece.outputs], self.params, [w]), self.params, batch=len(vectors))

    def _pull(self, outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor],
              rows: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``Σ_k (∂outputs_k/∂inputs)ᵀ rows_k[i]`` for each ``i`` (``rows_k`` shaped
        ``(m, *outputs_k.shape)``), stacked; the graph is kept. One batched pass when
        ``self.batched``, else one pass per row (as the Hessian's products)."""
        m = len(rows[0])
        if m > 1 and self.batched:
            try:
                grads = torch.autograd.grad(outputs, inputs, rows, retain_graph=True, allow_unused=True,
                                            is_grads_batched=True)
                return [torch.zeros(m, *x.shape, dtype=x.dtype, device=x.device) if g is None else g
                        for g, x in zip(grads, inputs)]
            except RuntimeError:  # an operation without a batching rule: one row at a time
                pass
        each = [torch.autograd.grad(outputs, inputs, [r[i] for r in rows], retain_graph=True, allow_unused=True)
                for i in range(m)]
        return [torch.stack([torch.zeros_like(x) if g[j] is None else g[j] for g in each])
                for j, x in enumerate(inputs)]

    # ---------------------------------------------------------------- gradient and products
    def _local_gradient(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's ``∇L`` and loss, no graph of the gradient: with ``keep_graph``
        ``Σ_b J_bᵀ ∂((n_b/N) ℓ_b)/∂f_b`` through the pieces kept for the products (built here, so a
        second call after a reset runs the model again), else piece by piece."""
        if not self.keep_graph:
            return self._accumulated_gradient()
        self._kept = [self._piece(batch, n, index) for batch, n, index, _ in self.pieces]
        grad = torch.zeros(self.n, device=self.device, dtype=self.dtype)
        loss = torch.zeros((), device=self.device)
        for p in self._kept:
            grad += _flat(torch.autograd.grad(p.outputs, self.params, p.grad_outputs.detach(), retain_graph=True,
                                              allow_unused=True), self.params)
            loss = loss + p.loss
        return grad, loss

    def _local_products(self, vectors: torch.Tensor) -> torch.Tensor:
        """This rank's share of ``(G vᵢ)ᵢ``: through the kept pieces, or one piece alive at a time."""
        out = torch.zeros_like(vectors)
        if self.keep_graph:
            if self._kept is None:  # (set by the gradient, on every rank)
                self.gradient()
            for piece in self._kept:
                out += self._piece_products(piece, vectors)
            return out
        for batch, n, index, _ in self.pieces:
            piece = self._piece(batch, n, index)
            out += self._piece_products(piece, vectors)
            del piece  # before the next piece is built: one graph alive at a time
        return out

    def release(self) -> None:
        """Free the kept pieces' graphs with the gradient (:meth:`HessianOperator.release`)."""
        super().release()
        self._kept = None

    def _probe(self, batch: Any) -> None:
        """What a product keeps of one batch (the outputs', ``a(u)``'s and ``∂ℓ/∂f``'s graphs) and
        one product through it, for :meth:`HessianOperator._graph_bytes` to measure."""
        piece = self._piece(batch, batch_size_of(batch), 0, check=False)
        self._piece_products(piece, torch.ones(1, self.n, device=self.device, dtype=self.dtype))


class FisherOperator(GGNOperator):
    """``F``, the empirical Fisher ``(1/N) Σ_i g_i g_iᵀ`` of the per-sample gradients (module
    docstring), with the GGN operator's constructor, refusals and memory rules; the model's
    outputs must hold one row per sample (a leading dimension of ``n_b``)."""

    kind = "fisher"
    _title = "empirical Fisher"
    _output_hessian = False

    def _piece(self, batch: Any, n: int, index: int, check: bool = True) -> _Piece:
        piece = super()._piece(batch, n, index, check)
        if piece.outputs.dim() == 0 or len(piece.outputs) != n:
            raise ConfigError(f"the model's outputs have shape {tuple(piece.outputs.shape)} for a batch of {n:,}"
                              " samples: the empirical Fisher needs one row of outputs per sample (leading"
                              " dimension = batch size)")
        return piece

    def _output_products(self, piece: _Piece, jv: torch.Tensor) -> torch.Tensor:
        """``(1/N) r_i (r_iᵀ wᵢ)`` per sample, ``r = N ∂((n_b/N) ℓ_b)/∂f`` (module docstring)."""
        g = piece.grad_outputs
        inner = (g * jv).reshape(*jv.shape[:2], -1).sum(2)  # (m, n_b): r_iᵀ (J v)_i / N
        return self.samples * g * inner.reshape(*inner.shape, *(1,) * (g.dim() - 1))
