"""Batch normalisation, written from the lecture's formulas.

For each channel (feature) ``c``, over the ``n`` values of a mini-batch (batch × spatial
positions), training computes::

    μ = (1/n) Σ z                     σ² = (1/n) Σ (z − μ)²          (biased variance)
    ẑ = (z − μ) / sqrt(σ² + eps)      y = γ ⊙ ẑ + β                  (γ = 1, β = 0 at the start)

and keeps moving averages for inference, with ``p = 1 − momentum``::

    μ̄ ← p μ̄ + (1 − p) μ              σ̄² ← p σ̄² + (1 − p) · n/(n−1) σ²    (unbiased, as PyTorch)

Evaluation normalises with ``μ̄, σ̄²`` instead of the batch's statistics. PyTorch's
``momentum = 0.1`` is the weight of the *new* batch, i.e. the lecture's ``p = 0.9``;
``momentum=None`` gives the cumulative average ``μ̄ = mean of all batches so far``.

The backward pass, with ``g = ∂L/∂y`` and means over the same ``n`` values::

    ∂L/∂β = Σ g        ∂L/∂γ = Σ g ẑ
    ∂L/∂z = γ / sqrt(σ² + eps) · (g − mean(g) − ẑ · mean(g ẑ))

It is computed in that closed form (``_BatchNormFunction``) rather than by differentiating
the forward ops, which takes several times longer; with ``create_graph=True`` (Hessian-vector
products through a training-mode network) the same formula is evaluated with differentiable
ops, so second derivatives are exact. Buffers and ``state_dict`` keys are those of
``torch.nn.BatchNorm1d/2d`` (``weight, bias, running_mean, running_var,
num_batches_tracked``), so weights load both ways.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class _BatchNorm(nn.Module):
    _dims: tuple[int, ...] = ()  # accepted input ranks, set by subclasses

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None):
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features={num_features!r} is not allowed; expected a positive integer")
        if not eps > 0:
            raise ValueError(f"eps={eps!r} is not allowed; expected a number > 0")
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"momentum={momentum!r} is not allowed; expected a number in [0, 1] or None")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        factory = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))
            self.bias = nn.Parameter(torch.zeros(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() not in self._dims:
            raise ValueError(f"{type(self).__name__} expects a {' or '.join(f'{d}D' for d in self._dims)} input"
                             f" (batch, {self.num_features} channels, ...); got shape {tuple(z.shape)}")
        if z.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) got {z.shape[1]} channels"
                             f" in input of shape {tuple(z.shape)}")
        if self.training or not self.track_running_stats:
            return self._normalise_with_batch_statistics(z)
        shape = _channel_shape(z)
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.affine:
            scale = scale * self.weight
        shift = -self.running_mean * scale
        if self.affine:
            shift = shift + self.bias
        return torch.addcmul(shift.view(shape), z, scale.view(shape))

    def _normalise_with_batch_statistics(self, z: torch.Tensor) -> torch.Tensor:
        n = z.numel() // z.shape[1]
        if self.training and n <= 1:
            raise ValueError(f"{type(self).__name__} needs more than 1 value per channel when training to"
                             f" compute a batch variance; got input of shape {tuple(z.shape)}"
                             " (use a larger batch, or call .eval() to use the running statistics)")
        running = self.training and self.track_running_stats
        new_weight = 0.0  # the weight 1 − p of this batch in the running statistics
        if running:
            self.num_batches_tracked.add_(1)
            new_weight = 1 / int(self.num_batches_tracked) if self.momentum is None else self.momentum
        return _BatchNormFunction.apply(z, self.weight, self.bias, self.eps, self.running_mean if running else None,
                                        self.running_var if running else None, new_weight)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of ``(N, C)`` or ``(N, C, L)`` inputs, per channel ``C``."""

    _dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of ``(N, C, H, W)`` images, per channel over batch and pixels."""

    _dims = (4,)


def _channel_shape(z: torch.Tensor) -> tuple[int, ...]:
    """``(1, C, 1, …)``: per-channel values broadcast over batch and spatial dims."""
    return (1, z.shape[1]) + (1,) * (z.dim() - 2)


def _reduce_dims(z: torch.Tensor) -> tuple[int, ...]:
    return (0, *range(2, z.dim()))


class _BatchNormFunction(torch.autograd.Function):
    """``y`` from ``z`` with the batch's statistics, updating the running ones when given;
    closed-form backward."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                running_mean: torch.Tensor | None, running_var: torch.Tensor | None, new_weight: float
                ) -> torch.Tensor:
        dims, shape = _reduce_dims(z), _channel_shape(z)
        n = z.numel() // z.shape[1]
        mean = z.mean(dims, keepdim=True)
        # (z − μ)² in one pass; y's memory holds it first, so one large buffer serves the forward
        y = nn.functional.mse_loss(z, mean.expand_as(z), reduction="none")
        var = y.mean(dims, keepdim=True)
        if running_mean is not None:  # μ̄ ← p μ̄ + (1 − p) μ,  σ̄² ← p σ̄² + (1 − p) n/(n−1) σ²
            running_mean.lerp_(mean.view(-1), new_weight)
            running_var.mul_(1 - new_weight).add_(var.view(-1), alpha=new_weight * n / (n - 1))
        invstd = var.add_(eps).rsqrt_()
        scale = invstd if weight is None else invstd * weight.view(shape)
        shift = -mean * scale if bias is None else torch.addcmul(bias.view(shape), mean, scale, value=-1)
        torch.addcmul(shift, z, scale, out=y)  # y = γ ẑ + β = z · γ/σ + (β − μ γ/σ)
        ctx.save_for_backward(z, weight, mean, invstd, scale)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        z, weight, mean, invstd, scale = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the backward must itself be differentiable
            return _differentiable_backward(z, weight, dy, ctx.eps, ctx.needs_input_grad)
        dims = _reduce_dims(z)
        n = z.numel() // z.shape[1]
        sum_dy = dy.sum(dims, keepdim=True)
        dz = torch.mul(dy, z)
        # Σ g ẑ = (Σ g z − μ Σ g) / σ
        sum_dy_zhat = torch.addcmul(dz.sum(dims, keepdim=True), mean, sum_dy, value=-1).mul_(invstd)
        # ∂L/∂z = γ/σ · (g − Σg/n − ẑ Σgẑ/n) = scale · g − c · z / n + offset,
        # with c = scale Σgẑ / σ and offset = (μ c − scale Σg) / n; two passes over the batch
        c = torch.mul(sum_dy_zhat, invstd).mul_(scale)
        offset = torch.addcmul(mean * c, scale, sum_dy, value=-1).div_(n)
        torch.addcmul(offset, z, c, value=-1 / n, out=dz).addcmul_(dy, scale)
        dweight = sum_dy_zhat.view(-1) if weight is not None and ctx.needs_input_grad[1] else None
        dbias = sum_dy.view(-1) if ctx.needs_input_grad[2] else None
        return dz, dweight, dbias, None, None, None, None


def _differentiable_backward(z: torch.Tensor, weight: torch.Tensor | None, dy: torch.Tensor, eps: float,
                             needs: tuple[bool, ...]) -> tuple[Any, ...]:
    """The same closed form, with the statistics recomputed from ``z`` by differentiable ops."""
    dims = _reduce_dims(z)
    mean = z.mean(dims, keepdim=True)
    zmu = z - mean
    invstd = torch.rsqrt((zmu * zmu).mean(dims, keepdim=True) + eps)
    zhat = zmu * invstd
    g = dy if weight is None else dy * weight.view(_channel_shape(z))
    dz = invstd * (g - g.mean(dims, keepdim=True) - zhat * (g * zhat).mean(dims, keepdim=True))
    dweight = (dy * zhat).sum(dims) if weight is not None and needs[1] else None
    dbias = dy.sum(dims) if needs[2] else None
    return dz, dweight, dbias, None, None, None, None
