"""Gradient-noise readings from per-sample gradients: noise scale, GSNR, the norm test.

On the Monitor's fixed sample of ``n`` examples, with per-sample gradients ``gᵢ = ∇ℓ(θ; xᵢ, yᵢ)``::

    G   = (1/n) Σᵢ gᵢ                              (the mean gradient)
    Σ_jj = Σᵢ (g_ij − G_j)² / (n − 1)              (per-coordinate variance, unbiased)
    tr Σ = Σ_j Σ_jj                                (total variance of one sample's gradient)

The per-sample gradients come from ``torch.func``: ``vmap(grad(ℓ))`` over the samples, where
``ℓ`` is the loss of one sample through ``functional_call(model, parameters, ...)``. Where the
model's code cannot run under ``vmap`` — data-dependent control flow, such as Hugging Face's
attention-mask code asking ``padding_mask.all()`` — the same gradients are taken sample by
sample, each its own forward and backward pass (slower, the same numbers), from that chunk on.
They come in chunks of at most ``chunk`` samples, never held all at once: each chunk's mean and sum of squared deviations are merged into running float64
totals (Chan, Golub & LeVeque 1979; float32 on Apple's MPS, which has no float64), so memory
is ``chunk × parameters`` plus two vectors.

A per-sample gradient exists only when samples do not interact: BatchNorm in training mode
normalises with the batch's statistics, so those readings refuse ``mode="train"`` with
BatchNorm (the Monitor's default, ``eval``, uses the running statistics and is exact).
Readings run inside :func:`trainlab.curvature.analysis_mode` and leave the model as it was.

Under ``torch.distributed`` (a process group of several ranks is initialised) each rank's
sample is its share: the ranks' moments are gathered and merged in rank order by the same
exact update, so every rank reads the moments of all the ranks' samples together.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from trainlab import distributed as dist
from trainlab.curvature import analysis_mode
from trainlab.curvature.operator import _has_batch_norm
from trainlab.data.batches import BatchLoss, batch_size_of, map_tensors, take
from trainlab.errors import ConfigError, DataError
from trainlab.instruments.sharpness import _check_every, wide

#: Samples per vmap chunk, at most: fewer, larger vmap calls are faster (measured on one core, 256
#: digits: 128 per call takes 0.7× the time of 64 for the digits MLP, 0.86× for the small CNN).
CHUNK = 128
#: GSNR leaves out coordinates whose variance is rounding: a standard deviation below this many
#: machine epsilons (of the gradients' dtype) times the gradient's scale, the largest coordinate's
#: root mean square (:class:`GSNR`).
ZERO_GRADIENT = 100
#: Memory for one chunk of flat per-sample gradients; the chunk shrinks to fit.
CHUNK_BYTES = 256 * 2**20


class _LossOfOne(nn.Module):
    """``batch_loss(model, batch)`` as a module, so that ``functional_call`` swaps the
    parameters of the model that ``batch_loss`` calls."""

    def __init__(self, model: nn.Module, batch_loss: BatchLoss):
        super().__init__()
        self.model, self.batch_loss = model, batch_loss

    def forward(self, batch: Any) -> torch.Tensor:
        return self.batch_loss(self.model, batch)


def per_sample_gradients(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
                         batch: Any, chunk: int = CHUNK, *, batch_loss: BatchLoss | None = None
                         ) -> Iterator[torch.Tensor]:
    """The gradient of each sample's loss, ``gᵢ = ∇_θ loss_fn(model(xᵢ), yᵢ)`` over the parameters
    that require gradients (flattened in ``model.parameters()`` order), chunk by chunk.

    Parameters: ``model``; ``loss_fn(outputs, targets)`` (a mean over the batch, or ``None``
    with ``batch_loss``); ``batch`` an ``(x, y)`` pair or, with ``batch_loss=(model, batch) ->
    loss``, any batch whose tensors have a leading sample dimension; ``chunk`` at most this many
    samples per ``vmap`` call (128; fewer when a chunk's gradients would exceed 256 MiB).
    Each sample goes through the model as a batch of one. The model's current mode is used
    (call inside :func:`trainlab.curvature.analysis_mode`); BatchNorm in training mode is
    refused (samples interact through its batch statistics).

    Yields: ``(m, n_params)`` tensors in the parameters' dtype, ``m ≤ chunk``, in sample order.
    Cost: about one forward and backward pass per sample, vectorised; where ``vmap`` fails on the
    model's code (module docstring), one pass per sample in a loop.
    """
    for pieces in _per_sample_pieces(model, loss_fn, batch, chunk, batch_loss=batch_loss):
        yield pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)


def _per_sample_pieces(model: nn.Module, loss_fn: Any, batch: Any, chunk: int = CHUNK, *,
                       batch_loss: BatchLoss | None = None) -> Iterator[list[torch.Tensor]]:
    """:func:`per_sample_gradients`, each chunk as its columns' pieces: a list of ``(m, kᵢ)``
    tensors, one per parameter (``vmap``'s own results; one piece where samples were looped),
    which concatenate to the chunk. So the moments need no concatenated copy (:meth:`Moments.of`)."""
    _check_chunk(chunk)
    if loss_fn is None and batch_loss is None:
        raise ConfigError("loss_fn=None needs batch_loss=(model, batch) -> mean loss; give one of them")
    if _has_batch_norm(model):
        raise ConfigError("per-sample gradients are undefined with BatchNorm in training mode (each sample's output"
                          " depends on the whole batch); read them in mode='eval', which uses the running statistics")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("the model has no parameters that require gradients")
    params = {name: p.detach() for name, p in named}
    frozen = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    buffers = {name: b for name, b in model.named_buffers()}
    n_params = sum(p.numel() for p in params.values())
    itemsize = named[0][1].element_size()
    chunk = max(1, min(chunk, CHUNK_BYTES // max(n_params * itemsize, 1)))
    n = batch_size_of(batch)

    if batch_loss is None:
        def loss_of_one(p: dict[str, torch.Tensor], sample: Any) -> torch.Tensor:
            x, y = map_tensors(sample, lambda t: t.unsqueeze(0))
            out = functional_call(model, {**p, **frozen, **buffers}, (x,))
            return loss_fn(out, y).reshape(())
        in_dims: Any = 0
    else:
        wrapper = _LossOfOne(model, batch_loss)
        prefixed = {f"model.{k}": v for k, v in {**frozen, **buffers}.items()}

        def loss_of_one(p: dict[str, torch.Tensor], sample: Any) -> torch.Tensor:
            one = map_tensors(sample, lambda t: t.unsqueeze(0))
            state = {**{f"model.{k}": v for k, v in p.items()}, **prefixed}
            return functional_call(wrapper, state, (one,)).reshape(())
        # tensors with a leading sample dimension are split; anything else is passed whole
        in_dims = tree_map(lambda t: 0 if isinstance(t, torch.Tensor) and t.dim() > 0 and len(t) == n else None,
                           batch)

    per_sample = vmap(grad(loss_of_one), in_dims=(None, in_dims))
    looped = False  # vmap failed on the model's code: sample by sample from then on
    for start in range(0, n, chunk):
        piece = take(batch, start, min(start + chunk, n))
        if not looped:
            try:
                with warnings.catch_warnings():
                    # ops without a batching rule run as a loop inside vmap: slower but exact,
                    # so torch's per-call warning is not repeated here
                    warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
                    grads = per_sample(params, piece)
                yield [grads[name].reshape(grads[name].shape[0], -1) for name in params]
                continue
            except (RuntimeError, NotImplementedError) as e:
                if "randomness" in str(e):
                    raise ConfigError("the model draws random numbers (dropout?) in this mode, so per-sample"
                                      " gradients are random; read them in mode='eval' (the default)") from None
                looped = True  # e.g. data-dependent control flow (an attention mask's .all()) under vmap
        yield [_looped_gradients(model, loss_fn, batch_loss, piece, [p for _, p in named])]


@torch.enable_grad()
def _looped_gradients(model: nn.Module, loss_fn: Any, batch_loss: BatchLoss | None, piece: Any,
                      params: list[torch.Tensor]) -> torch.Tensor:
    """The rows of :func:`per_sample_gradients` for ``piece``, one sample at a time: each sample
    as a batch of one through the model, its own backward pass (where ``vmap`` cannot go)."""
    rows = []
    for i in range(batch_size_of(piece)):
        one = take(piece, i, i + 1)
        loss = batch_loss(model, one) if batch_loss is not None else loss_fn(model(one[0]), one[1])
        grads = torch.autograd.grad(loss.reshape(()), params, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]))
    return torch.stack(rows)


@dataclass
class Moments:
    """Running mean and per-coordinate sum of squared deviations of gradients (float64):
    ``count``, ``mean`` (= ``G``), ``m2`` (``Σᵢ (gᵢ − G)²`` per coordinate), and the ``dtype``
    the gradients were computed in."""

    count: int
    mean: torch.Tensor
    m2: torch.Tensor
    dtype: torch.dtype = torch.float64  # of the gradients

    @classmethod
    def of(cls, chunks: Iterator[torch.Tensor | list[torch.Tensor]], overwrite: bool = False) -> "Moments":
        """Merge chunks of per-sample gradients, rows = samples (Chan et al.: exact, no
        cancellation from a raw sum of squares). A chunk may come as a list of column pieces
        (:func:`_per_sample_pieces`), taken piece by piece; with ``overwrite`` the chunks' own
        memory holds the deviations (no copy of a chunk: the peak stays one chunk)."""
        total: Moments | None = None
        for chunk in chunks:
            pieces = chunk if isinstance(chunk, list) else [chunk]
            means, m2s = [], []
            for rows in pieces:
                # within a chunk (≤ 128 rows) the model's precision is enough; the merge is float64
                mean = rows.mean(0)
                deviations = rows.sub_(mean) if overwrite and rows.is_contiguous() else rows - mean
                means.append(wide(mean))
                m2s.append(wide(deviations.square_().sum(0)))
            part = cls(len(pieces[0]), _joined(means), _joined(m2s), pieces[0].dtype)
            total = part if total is None else total.merged(part)
        if total is None:
            raise DataError("the sample holds no samples")
        return total

    def over_ranks(self) -> "Moments":
        """The moments of every rank's gradients together (gathered, merged in rank order: the
        same result on every rank); ``self`` without an active process group."""
        if not dist.active():
            return self
        device = self.mean.device
        counts = dist.all_gather(torch.tensor([self.count], device=device))
        means, m2s = dist.all_gather(self.mean), dist.all_gather(self.m2)
        parts = [Moments(int(c), mean, m2, self.dtype) for c, mean, m2 in zip(counts, means, m2s) if int(c) > 0]
        total = parts[0]
        for part in parts[1:]:
            total = total.merged(part)
        return total

    def merged(self, other: "Moments") -> "Moments":
        """The moments of both sets of gradients together (Chan et al.'s pairwise update), exact.

        With ``n = n_a + n_b`` and ``δ = G_b − G_a``: ``G = G_a + δ · n_b/n`` and
        ``m2 = m2_a + m2_b + δ² · n_a n_b / n``.

        Parameters: ``other`` the second :class:`Moments` (same shape). Returns: a new
        :class:`Moments` (``count``, ``mean``, ``m2``; ``dtype`` kept from ``self``); neither input changes.
        """
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta ** 2 * (self.count * other.count / count)
        return Moments(count, mean, m2, self.dtype)

    @property
    def variance(self) -> torch.Tensor:
        """``Σ_jj``, unbiased (``n − 1``)."""
        return self.m2 / (self.count - 1)


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def gradient_moments(ctx: Any, chunk: int = CHUNK, max_samples: int | None = None) -> Moments:
    """:class:`Moments` of the per-sample gradients on ``ctx.batch`` (its first ``max_samples``
    samples; ``None``: all), in ``ctx.mode``, computed once per context: instruments read at the
    same update (noise scale, GSNR) share them."""
    key = (chunk, max_samples, getattr(ctx, "mode", "eval"))
    cached = getattr(ctx, "_gradient_moments", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    batch = ctx.batch
    if max_samples is not None and batch_size_of(batch) > max_samples:
        batch = take(batch, 0, max_samples)
    with analysis_mode(ctx.model, getattr(ctx, "mode", "eval")):
        pieces = _per_sample_pieces(ctx.model, ctx.loss_fn, batch, chunk, batch_loss=getattr(ctx, "batch_loss", None))
        moments = Moments.of(pieces, overwrite=True).over_ranks()  # (the gradients are not needed after)
    if moments.count < 2:
        raise DataError(f"the sample holds {moments.count} sample: a gradient variance needs at least 2")
    try:
        ctx._gradient_moments = (key, moments)
    except AttributeError:  # a context that takes no attributes: nothing is shared
        pass
    return moments


def _check_max_samples(max_samples: Any) -> int | None:
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)
                                    or max_samples < 2):
        raise ConfigError(f"max_samples={max_samples!r} is not allowed; expected an integer >= 2 or None (the whole"
                          " sample)")
    return max_samples


def _check_chunk(chunk: Any) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ConfigError(f"chunk={chunk!r} is not allowed; expected an integer >= 1 (samples per vmap call)")
    return chunk


def _batch_size(ctx: Any) -> int | None:
    b = getattr(ctx, "batch_size", None)
    return None if b is None else int(b)


class NoiseScale:
    """``noise_scale``: the simple gradient noise scale of McCandlish, Kaplan, Amodei et al. 2018
    ("An empirical model of large-batch training")::

        B_simple = tr(Σ) / ‖G‖²

    with ``G`` the mean gradient and ``Σ`` the per-sample gradient covariance on the sample
    (module docstring). It estimates the critical batch size: batches much smaller than
    ``B_simple`` waste updates on noise (each update could take a larger step with a larger
    batch), much larger ones waste samples. ``‖G‖²`` of a sample mean is biased upward by
    ``tr(Σ)/n``; ``"debiased"`` uses ``‖G‖² − tr(Σ)/n`` instead (``None`` when that is ≤ 0:
    the noise hides the mean at this sample size).

    Parameters: ``every`` (100; ``None``: the Monitor's), ``chunk`` (128 samples per vmap call),
    ``max_samples`` (``None``: the whole sample; else its first ``max_samples``, ≥ 2).
    Reading: ``{"value": B_simple, "trace_sigma", "grad_norm_sq", "samples", "batch_size",
    "batch_over_noise": batch_size / B_simple, "debiased"}`` (``batch_size`` and
    ``batch_over_noise`` ``None`` when the context does not know the batch size).
    Cost: per-sample gradients of the sample, shared with :class:`GSNR` at the same update.
    Measured on one CPU core, 1,024 digits: about 40 times one gradient of the whole sample
    for the MLP 64-128-128-10 (whose gradient is cheap next to writing out 1,024 gradients of
    its 26k parameters) and 3–6 times for ``tl.nn.small_cnn``. ``max_samples`` bounds it.
    """

    name = "noise_scale"
    guarded = True  # reads inside its own analysis_mode (the Monitor adds none)

    def __init__(self, every: int | None = 100, chunk: int = CHUNK, max_samples: int | None = None):
        self.every, self.chunk = _check_every(every), _check_chunk(chunk)
        self.max_samples = _check_max_samples(max_samples)

    def read(self, ctx: Any) -> dict:
        m = gradient_moments(ctx, self.chunk, self.max_samples)
        trace = float(m.variance.sum())
        norm_sq = float((m.mean ** 2).sum())
        value = trace / norm_sq if norm_sq > 0 else math.inf
        unbiased = norm_sq - trace / m.count
        b = _batch_size(ctx)
        return {"value": value, "trace_sigma": trace, "grad_norm_sq": norm_sq, "samples": m.count,
                "batch_size": b, "batch_over_noise": None if b is None else b / value,
                "debiased": trace / unbiased if unbiased > 0 else None}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class GSNR:
    """``gsnr``: the gradient signal-to-noise ratio of Liu et al. 2020 ("Understanding why neural
    networks generalize well through GSNR of parameters", ICLR), per parameter coordinate
    ``r_j = G_j² / Σ_jj``, averaged over the coordinates whose variance is not negligible::

        sqrt(Σ_jj) > τ,    τ = c · ε · s,    s = max_j sqrt(mean_i g_ij²)

    with ``ε`` the machine epsilon of the gradients' dtype (float32: 1.2e-7), ``c`` =
    :data:`ZERO_GRADIENT` (100) and ``s`` the gradient's scale, its largest coordinate's root mean
    square. A gradient computed in floating point carries absolute rounding errors of about
    ``ε · s``, so a spread below ``τ`` cannot be told from rounding: such a coordinate's ratio
    ``G_j²/Σ_jj`` would be ``1/ε²``-sized noise (``4·10⁹`` and more in float32) and one of them
    would dominate the mean. Left out so are coordinates no sample moves (``Σ_jj = 0``), those
    whose gradient is zero up to rounding (attention's key bias, which softmax ignores), and
    those whose gradient is the same for every sample up to rounding (the output bias of a token
    absent from the sample, once a language model predicts the same distribution everywhere).
    So every ratio averaged is at most ``1/(c ε)²`` (7·10⁹ in float32). Large GSNR: the samples
    agree on the direction, and what is learnt on one sample carries to others.

    Also the norm test of Byrd, Chin, Nocedal & Wu 2012 ("Sample size selection in optimization
    methods for machine learning", Math. Programming): a batch of ``b`` samples gives a
    descent direction reliably when ``E‖g_B − ∇L‖² ≤ θ² ‖∇L‖²``, estimated as::

        T = tr(Σ) / (b ‖G‖²)   ≤ θ²      (b = ctx.batch_size, θ = 0.9 by default)

    ``T`` is ``B_simple / b``; when the test fails, the batch is too small for the noise.

    Parameters: ``every`` (100; ``None``: the Monitor's), ``theta`` (0.9), ``chunk`` (128),
    ``max_samples`` (``None``: the whole sample).
    Reading: ``{"value": mean GSNR, "coordinates": coordinates averaged, "norm_test": T,
    "norm_test_passes": T ≤ θ², "theta", "batch_size"}`` (``norm_test`` and its verdict ``None``
    without a batch size). Cost: per-sample gradients, shared with :class:`NoiseScale`.
    """

    name = "gsnr"
    guarded = True  # reads inside its own analysis_mode (the Monitor adds none)

    def __init__(self, every: int | None = 100, theta: float = 0.9, chunk: int = CHUNK,
                 max_samples: int | None = None):
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0 < theta < math.inf:
            raise ConfigError(f"theta={theta!r} is not allowed; expected a finite number > 0 (Byrd et al. use 0.9)")
        self.every, self.theta, self.chunk = _check_every(every), float(theta), _check_chunk(chunk)
        self.max_samples = _check_max_samples(max_samples)

    def read(self, ctx: Any) -> dict:
        m = gradient_moments(ctx, self.chunk, self.max_samples)
        var = m.variance
        rms = (m.mean ** 2 + m.m2 / m.count).sqrt()  # sqrt(mean_i g_ij²)
        floor = ZERO_GRADIENT * torch.finfo(m.dtype).eps * float(rms.max())  # rounding's spread (docstring)
        used = var.sqrt() > floor
        ratio = m.mean[used] ** 2 / var[used]
        value = float(ratio.mean()) if bool(used.any()) else math.nan
        trace, norm_sq = float(var.sum()), float((m.mean ** 2).sum())
        b = _batch_size(ctx)
        test = None if b is None else (trace / (b * norm_sq) if norm_sq > 0 else math.inf)
        return {"value": value, "coordinates": int(used.sum()), "norm_test": test,
                "norm_test_passes": None if test is None else bool(test <= self.theta ** 2), "theta": self.theta,
                "batch_size": b}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


__all__ = ["GSNR", "Moments", "NoiseScale", "gradient_moments", "per_sample_gradients"]
