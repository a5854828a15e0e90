"""The stall doctor's evidence: everything it read about the patient at one look, in one object.

The causes (:mod:`trainlab.train.doctor.causes`) decide from this object alone. It holds

* the **diagnosis** of :func:`trainlab.diagnose` on the bounded sample (loss, ‖∇L‖, λ_max, λ_min, verdict);
* the **readings** ``stability`` (``η·λ_max``, preconditioned for adaptive optimizers, with its
  threshold), ``units`` (share of dead or saturated units, per layer) and ``noise_scale``
  (``B_simple``) — a Monitor's fresh ones, else measured here;
* cheap readings computed here, each one gradient or less:

  - the **layer profile**: ``‖∇_W L‖`` of every module holding a weight matrix, first to last —
    ``first / last ≪ 1`` is the vanishing-gradient signature (Hochreiter 1991; Glorot & Bengio 2010),
    ``≫ 1`` the exploding one (Pascanu, Mikolov & Bengio 2013);
  - the **marginal entropy** ``H(p) = −Σ_c p_c log p_c`` of the sample's integer labels: a
    cross-entropy at ``H(p)`` is that of a model predicting the label frequencies, whatever the
    input — the network carries no input information (ln 10 = 2.30 for ten balanced classes; the
    unigram entropy of a language model);
  - the **update ratio**: the median over tensors of ``‖Δθ‖/‖θ‖`` of Adam's next step,
    ``η m̂/(√v̂ + ε)`` (Adam's state), where a step that rewrites a large part of every weight
    matrix each update says the step outran the early, noisy second-moment estimate
    (Liu et al. 2020, "On the variance of the adaptive learning rate and beyond"; Xiong et al.
    2020, "On layer normalization in the Transformer architecture");
  - the **feature spread**: the largest over the smallest root-mean-square of the input columns —
    the lecture's elongated bowl, since the curvature along a feature scales with its second moment;
  - the **saturation** ``‖∂CE/∂z‖ / ‖∂L/∂z‖`` at the outputs: a loss (MSE on softmax) flat where
    cross-entropy is not — the lecture's plateau of MSE for classification;
  - the **weight scales** ``rms(W)·√fan_in`` of the weight-holding modules: a layer at or near
    zero (a zero or tiny initialisation) vanishes the gradient by symmetry, a saddle, not by depth;

* readings the doctor takes at every update, almost free:

  - the **gradient norm** ``‖g‖`` of each update, read from the parameters' ``.grad`` after
    ``optimizer.step()`` (one multi-tensor reduction, :func:`grad_norm_of`) or from the Trainer's
    step record: its growth from the run's first updates (``≫ 1``: exploding) and its spikes;
  - the **early update ratio**: the median over the run's first :data:`EARLY` updates of Adam's
    update ratio — a warm-up is about the first steps, and by the time a stall shows the ratio has
    long collapsed (post-LN char LM, Adam η = 1e-2: 0.069 at update 5, 6e-5 at update 150);

* the run's facts: the spike the doctor saw (if any) and the sample loss of the last good state
  before it, the data set's size, the batch, whether every update saw all the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainlab.curvature import analysis_mode
from trainlab.curvature.operator import loss_of
from trainlab.data.batches import BatchLoss, concat, first_samples
from trainlab.instruments import Context, Stability, Units
from trainlab.instruments.noise import NoiseScale

#: Optimizers whose step is scaled by a diagonal preconditioner read from their state.
ADAPTIVE = ("adam", "adamw", "nadam", "radam", "adamax", "rmsprop", "adagrad")
#: A loss within this share of the labels' marginal entropy sits at it (shuffled digits labels after
#: 150 updates of Adam: 2.23 against 2.30, 3 %; the healthy post-LN LM after 100 updates: 11 % below).
MARGINAL_TOL = 0.05
#: The run's first updates, whose Adam update ratio and gradient norms are the run's start.
EARLY = 5
#: An adaptive optimizer's median update ratio ``‖Δθ‖/‖θ‖`` above this: a step no weight survives for
#: long (the post-LN LM without warm-up: 0.061 at update 5, healthy 0.0008; Adam η = 0.05 on the digits
#: MLP: 0.018, η = 1e-3: 0.003).
UPDATE_RATIO = 1e-2
#: ... below this: a crawl (AdamW η = 1e-6 on the tiny BERT and GPT-2).
CRAWL_RATIO = 1e-4
#: Per-sample gradients the doctor's own noise reading takes.
NOISE_SAMPLES = 128
#: A weight-holding module whose scale ``rms(W)·√fan_in`` is below this has collapsed to (near) zero.
COLLAPSED = 1e-2


@dataclass
class Evidence:
    """What the doctor knows at one look: the patient, the diagnosis, the readings (module docstring)
    and the doctor's own thresholds (``settings``: the :class:`~trainlab.train.doctor.StallDoctor`)."""

    model: nn.Module
    loss_fn: Any
    sample: Any
    optimizer: Any
    scheduler: Any
    diagnosis: Any
    readings: dict[str, dict[str, Any]]
    settings: Any
    full_batch: bool = False
    batch_size: int | None = None
    data_size: int | None = None
    layers: dict[str, float] = field(default_factory=dict)
    marginal: float | None = None
    update_ratio: float | None = None
    feature_spread: float | None = None
    spike: dict[str, Any] | None = None
    good: Any = None  # the last good state before a spike (a treatments.Snapshot), if any
    grad_norms: list[float] = field(default_factory=list)  # the last updates' ‖g‖, oldest first
    early_grad_norm: float | None = None  # the median ‖g‖ of the run's first EARLY updates
    early_update_ratio: float | None = None  # the median of Adam's update ratio over the first EARLY updates
    saturation: float | None = None  # ‖∂CE/∂z‖ / ‖∂L/∂z‖ on the outputs z: the loss flat where cross-entropy is not
    weights: dict[str, float] = field(default_factory=dict)  # rms(W)·√fan_in of every weight-holding module

    # ------------------------------------------------------------ derived facts the rules share
    @property
    def loss(self) -> float:
        return float(self.diagnosis.loss)

    @property
    def lam_max(self) -> float:
        return float(self.diagnosis.eigenvalues[0])

    @property
    def lam_min(self) -> float:
        return float(self.diagnosis.eigenvalues[-1])

    @property
    def stability(self) -> float | None:
        s = self.readings.get("stability")
        return None if s is None else s["value"]

    @property
    def threshold(self) -> float | None:
        s = self.readings.get("stability")
        return None if s is None else s["threshold"]

    @property
    def by_update_ratio(self) -> bool:
        """An adaptive optimizer's step is judged by its update ratio, not by ``η·λ_max``: the
        preconditioned ``η·λ_max`` divides by ``√v̂ + ε``, which a few coordinates of near-zero
        gradient make huge early on (2.8·10⁴ after one update of Adam η = 1e-3 on the digits MLP,
        a healthy step) while the ratio reads the step the optimizer actually takes."""
        return self.optimizer is not None and adaptive(self.optimizer) and self.update_ratio is not None

    @property
    def too_large(self) -> bool:
        if self.by_update_ratio:
            return self.update_ratio > UPDATE_RATIO
        return self.stability is not None and self.stability > self.threshold

    @property
    def crawling(self) -> bool:
        if self.by_update_ratio:
            return self.update_ratio < CRAWL_RATIO
        return self.stability is not None and self.stability < self.settings.crawl

    @property
    def critical(self) -> bool:
        return self.diagnosis.grad_norm <= self.settings.grad_tol

    @property
    def dead_share(self) -> float | None:
        u = self.readings.get("units")
        return None if u is None else u["value"]

    @property
    def units_dead(self) -> bool:
        # ">=": a dead net's sigmoid-free ReLU layers often read exactly one half
        return self.dead_share is not None and self.dead_share >= self.settings.dead_share

    @property
    def layer_ratio(self) -> float | None:
        """``‖∇L‖`` of the first weight-holding module over that of the last (``None``: fewer than 3)."""
        norms = list(self.layers.values())
        if len(norms) < 3 or not norms[-1] > 0:
            return None
        return norms[0] / norms[-1]

    @property
    def at_marginal(self) -> bool:
        return self.marginal is not None and self.marginal > 0 and abs(self.loss - self.marginal) <= (
            MARGINAL_TOL * self.marginal)

    @property
    def batch_ratio(self) -> float | None:
        """``B / B_simple`` of a mini-batch run with a noise reading."""
        noise = self.readings.get("noise_scale")
        if noise is None or self.full_batch:
            return None
        ratio = noise.get("batch_over_noise")
        if ratio is None and self.batch_size and noise["value"] > 0:
            ratio = self.batch_size / noise["value"]
        return ratio if ratio is not None and math.isfinite(ratio) else None

    @property
    def grad_growth(self) -> float | None:
        """The median ``‖g‖`` of the last :data:`EARLY` updates over that of the run's first
        (``inf`` for a non-finite gradient; ``None``: no reading)."""
        recent = self.grad_norms[-EARLY:]
        if not recent or self.early_grad_norm is None or not self.early_grad_norm > 0:
            return None
        if not all(math.isfinite(g) for g in recent):
            return math.inf
        return median(recent) / self.early_grad_norm

    @property
    def collapsed(self) -> bool:
        """Some weight-holding module's weights are all zero or nearly (scale below :data:`COLLAPSED`,
        a hundredth of an initialisation's): the gradient vanishes by the symmetry of the point
        near zero — a saddle — not by depth."""
        return bool(self.weights) and min(self.weights.values()) < COLLAPSED

    def units_by_layer(self) -> dict[str, float] | None:
        """Each watched layer's share of dead or saturated units (``None``: no per-layer reading)."""
        parts = (self.readings.get("units") or {}).get("parts")
        if not isinstance(parts, dict):
            return None
        return {name: float(p.get("dead", 0.0)) + float(p.get("saturated", 0.0)) for name, p in parts.items()
                if isinstance(p, dict)}


# ---------------------------------------------------------------- readings
def adaptive(optimizer: Any) -> bool:
    """Whether the optimizer scales its step by a diagonal preconditioner (Adam, RMSProp, Adagrad…)."""
    return type(optimizer).__name__.lower() in ADAPTIVE


def threshold(optimizer: Any) -> float:
    """The stability threshold on ``η·λ_max`` (preconditioned for adaptive optimizers): 2 for
    plain steps, ``2(1+β)`` with heavy-ball momentum β (``2(1+β)/(1+2β)`` Nesterov, divided by
    ``1−τ`` with PyTorch's dampening τ), ``2(1+β₁)/(1−β₁)`` for Adam (its first moment is an average)."""
    group = {} if optimizer is None else optimizer.param_groups[0]
    if "betas" in group:
        b1 = float(group["betas"][0])
        return 2 * (1 + b1) / (1 - b1)
    beta = float(group.get("momentum") or 0.0)
    if group.get("nesterov"):
        return 2 * (1 + beta) / (1 + 2 * beta)
    return 2 * (1 + beta) / (1 - float(group.get("dampening") or 0.0))


def _instrument(name: str) -> Any:
    """A fresh instrument of :mod:`trainlab.instruments` for the reading ``name``."""
    return {"units": Units, "stability": Stability, "noise_scale": NoiseScale}[name]()


def readings(monitor: Any, changed_at: int, model: nn.Module, loss_fn: Any, sample: Any, batch_loss: BatchLoss | None,
             optimizer: Any, d: Any, full_batch: bool, batch_size: int | None, step: int,
             seed: int) -> dict[str, dict[str, Any]]:
    """``stability`` (value, threshold), ``units`` and ``noise_scale``: the Monitor's latest
    readings taken after update ``changed_at`` (the doctor's last change, or a window ago), else
    measured here; for plain and momentum SGD ``stability`` is ``η`` times this look's own λ_max.
    A reading that fails (e.g. no activation module to watch) is left out: evidence, not a verdict."""
    latest = getattr(monitor, "latest", None) or {}
    found: dict[str, dict[str, Any]] = {}
    lr = None if optimizer is None else float(optimizer.param_groups[0]["lr"])
    lam = float(d.eigenvalues[0])
    if lr is not None and not adaptive(optimizer) and math.isfinite(lam):
        # this look's own λ_max, fresher than any Monitor reading (a healthy RNN's λ_max grew 40× in
        # 700 updates: a stale reading made η·λ_max ≈ 1 look like a crawl)
        found["stability"] = {"value": lr * lam, "threshold": threshold(optimizer), "source": "diagnosis"}
    for name in ("stability", "units", "noise_scale"):
        if name in found:
            continue
        r = latest.get(name)
        value = getattr(r, "value", None)
        fresh = getattr(r, "step", -1) > changed_at
        if r is not None and value is not None and math.isfinite(value) and fresh:
            found[name] = {**dict(getattr(r, "extra", None) or {}), "value": float(value), "source": "monitor"}
    if found.get("stability", {}).get("source") == "monitor":
        found["stability"].setdefault("threshold", threshold(optimizer))
        lam = found["stability"].get("lambda_max")
        if lr is not None and isinstance(lam, (int, float)) and math.isfinite(lam):
            found["stability"]["value"] = lr * lam  # η now: a schedule may have moved it since the reading
    elif optimizer is not None and not adaptive(optimizer) and "stability" not in found:  # λ_max not read: NaN
        found["stability"] = {"value": lr * lam, "threshold": threshold(optimizer),
                              "source": "diagnosis"}
    ctx = None
    for name in ("stability", "units", "noise_scale"):
        # an adaptive optimizer's step is judged by its update ratio (Evidence.by_update_ratio): its
        # preconditioned λ_max is not worth a look's products
        if name in found or (name == "stability" and (optimizer is None or adaptive(optimizer))) or (
                name == "noise_scale" and (
                full_batch or batch_size is None)):
            continue
        if ctx is None:
            ctx = Context(model, loss_fn, sample, batch_loss, optimizer, step, lr, batch_size, "eval", seed)
        try:
            with analysis_mode(model, "eval"):
                # B_simple from NOISE_SAMPLES per-sample gradients: the noise's trace and the mean
                # gradient need hundreds of samples, and per-sample gradients are the dearest reading
                here = ctx if name != "noise_scale" else Context(
                    model, loss_fn, bounded_sample(sample, NOISE_SAMPLES, batch_loss), batch_loss, optimizer, step, lr,
                    batch_size, "eval", seed)
                result = dict(_instrument(name).read(here))
        except Exception:  # noqa: BLE001 — a reading that cannot be taken is missing evidence, never a crash
            continue
        value = float(result.pop("value"))
        if math.isfinite(value):
            found[name] = {**result, "value": value, "source": "doctor"}
    if "stability" in found:
        found["stability"].setdefault("threshold", threshold(optimizer))
    return found


def layer_profile(model: nn.Module, loss_fn: Any, sample: Any, batch_loss: BatchLoss | None) -> dict[str, float]:
    """``‖∇_W L‖`` on the sample of every module that holds a parameter of two or more dimensions
    (a weight matrix, a convolution kernel, an embedding), in the model's order: one gradient,
    taken without touching ``.grad``. Empty when the loss cannot be differentiated."""
    return gradient_profile(model, loss_fn, sample, batch_loss)[2]


def gradient_profile(model: nn.Module, loss_fn: Any, sample: Any,
                     batch_loss: BatchLoss | None) -> tuple[float, float, dict[str, float]]:
    """One gradient on the sample: the loss, ``‖∇L‖`` over every trainable parameter, and the
    per-module profile of :func:`layer_profile` (empty with fewer than two weight-holding
    modules). ``(nan, nan, {})`` when the loss cannot be differentiated."""
    params = [p for p in model.parameters() if p.requires_grad]
    owners: dict[str, list[int]] = {}
    index = {id(p): i for i, p in enumerate(params)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            owners.setdefault(name.rpartition(".")[0], []).append(index[id(p)])
    owners = {name: ids for name, ids in owners.items() if any(params[i].dim() >= 2 for i in ids)}
    try:
        with analysis_mode(model, "eval"), torch.enable_grad():
            loss = loss_of(model, loss_fn, sample, batch_loss)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
    except Exception:  # noqa: BLE001 — evidence, not a verdict
        return math.nan, math.nan, {}
    squares = [0.0 if g is None else float(g.detach().double().pow(2).sum()) for g in grads]
    norms = {(name or "(model)"): math.sqrt(sum(squares[i] for i in ids)) for name, ids in owners.items()}
    return float(loss.detach()), math.sqrt(sum(squares)), norms if len(owners) >= 2 else {}


def weight_norms(model: nn.Module) -> dict[str, float]:
    """The weight scale of every module holding a parameter of two or more dimensions:
    ``rms(W) · √fan_in`` (``fan_in`` = the entries of one output row), about ``1/√3`` at PyTorch's
    default initialisation and 1 at He's, whatever the layer's width."""
    squares: dict[str, list[float]] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and p.dim() >= 2 and p.numel() > 0:
                owner = name.rpartition(".")[0] or "(model)"
                fan_in = p[0].numel()
                sq = squares.setdefault(owner, [0.0, 0.0])
                sq[0] += float(p.detach().double().pow(2).sum()) * fan_in
                sq[1] += p.numel()
    return {owner: math.sqrt(total / count) for owner, (total, count) in squares.items()}


def saturation(model: nn.Module, loss_fn: Any, sample: Any, batch_loss: BatchLoss | None) -> float | None:
    """``‖∂CE/∂z‖ / ‖∂L/∂z‖``: how much flatter the loss ``L`` is at the model's outputs ``z`` than
    cross-entropy on the same outputs and integer labels would be. MSE on softmax probabilities
    saturates — ``∂L/∂z`` carries the softmax's Jacobian ``diag(p) − ppᵀ``, near zero where the
    probabilities are near uniform or confident — while cross-entropy's ``p − y`` does not: the
    lecture's plateau of MSE for classification. 1 for cross-entropy itself; ``None`` where it
    does not apply (no ``loss_fn``, outputs not ``(N, C)`` logits of the labels' classes)."""
    y = labels_of(sample)
    if loss_fn is None or batch_loss is not None or y is None or y.dim() != 1:
        return None
    try:
        with analysis_mode(model, "eval"), torch.no_grad():
            z = model(sample[0])
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or len(z) != len(y) or not z.is_floating_point():
            return None
        if int(y.min()) < 0 or int(y.max()) >= z.shape[1]:
            return None
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            (own,) = torch.autograd.grad(loss_fn(z, y), z)
            (ce,) = torch.autograd.grad(torch.nn.functional.cross_entropy(z, y), z)
    except Exception:  # noqa: BLE001 — evidence, not a verdict
        return None
    own_norm, ce_norm = float(own.double().norm()), float(ce.double().norm())
    return ce_norm / own_norm if own_norm > 0 and math.isfinite(own_norm) else None


def labels_of(sample: Any) -> torch.Tensor | None:
    """The integer labels of an ``(x, y)`` pair or of a dict batch's ``"labels"`` (``None``: none)."""
    y = sample.get("labels") if isinstance(sample, dict) else (
        sample[1] if isinstance(sample, (tuple, list)) and len(sample) == 2 else None)
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        return None
    return y


def marginal_entropy(sample: Any) -> float | None:
    """``H(p) = −Σ_c p_c log p_c`` of the labels' frequencies (negative labels, e.g. −100, ignored)."""
    y = labels_of(sample)
    if y is None:
        return None
    y = y.reshape(-1)
    y = y[y >= 0]
    if y.numel() == 0:
        return None
    p = torch.bincount(y.cpu()).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def update_ratio(optimizer: Any) -> float | None:
    """The median over tensors of ``‖η m̂/(√v̂ + ε)‖ / ‖θ‖`` from Adam's state (``None``: no such state)."""
    if optimizer is None:
        return None
    ratios = []
    for group in optimizer.param_groups:
        betas, eps = group.get("betas"), group.get("eps", 1e-8)
        if betas is None:
            return None
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            m, v, t = state.get("exp_avg"), state.get("exp_avg_sq"), state.get("step")
            if m is None or v is None or t is None:
                continue
            t = float(t)
            if t < 1:
                continue
            m_hat = m / (1 - betas[0] ** t)
            v_hat = v / (1 - betas[1] ** t)
            norm = float(p.detach().norm())
            if norm > 0:
                ratios.append(float(group["lr"]) * float((m_hat / (v_hat.sqrt() + eps)).norm()) / norm)
    if not ratios:
        return None
    ratios.sort()
    return ratios[len(ratios) // 2]


def median(values: list[float]) -> float:
    """The middle value (the upper of the two middle ones for an even count)."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def grad_norm_of(model: nn.Module) -> float | None:
    """``‖g‖₂`` over every parameter's ``.grad`` as one vector — one multi-tensor reduction
    (``torch._foreach_norm``, as ``clip_grad_norm_``) where the gradients share device and dtype;
    ``None`` when no parameter holds a gradient (a framework that zeroes them before its callbacks)."""
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None and not p.grad.is_sparse]
    if not grads:
        return None
    if all(g.device == grads[0].device and g.dtype == grads[0].dtype for g in grads):
        return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).double()))
    return float(torch.sqrt(sum(g.double().pow(2).sum().cpu() for g in grads)))


def feature_spread(sample: Any) -> float | None:
    """Largest over smallest root-mean-square of the input columns of a 2-D float ``x`` (zero columns skipped)."""
    x = sample[0] if isinstance(sample, (tuple, list)) and len(sample) == 2 else None
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point() or x.shape[0] < 2:
        return None
    rms = x.detach().double().pow(2).mean(0).sqrt()
    rms = rms[rms > 1e-12 * float(rms.max())] if float(rms.max()) > 0 else rms[:0]
    if rms.numel() < 2:
        return None
    return float(rms.max() / rms.min())


def data_size(source: Any) -> int | None:
    """Samples in the training data when it says so (a Dataset, a DataLoader's dataset, an ``(x, y)`` pair)."""
    if isinstance(source, (tuple, list)):
        first = source[0] if len(source) == 2 else None
        return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else None
    for obj in (source, getattr(source, "dataset", None)):
        if obj is not None and hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and not isinstance(obj, dict):
            try:
                return int(len(obj))
            except TypeError:
                continue
    return None


def bounded_sample(source: Any, limit: int, batch_loss: BatchLoss | None = None) -> Any:
    """The first ``limit`` samples of a dataset, a DataLoader or an ``(x, y)`` batch, as one
    batch (with ``batch_loss``: of batches in any form, e.g. dicts, joined key by key)."""
    batches = list(first_samples(source, limit, batch_loss))
    return batches[0] if len(batches) == 1 else concat(batches)


__all__ = ["ADAPTIVE", "CRAWL_RATIO", "EARLY", "UPDATE_RATIO", "Evidence", "adaptive", "bounded_sample", "data_size", "feature_spread",
           "gradient_profile", "grad_norm_of", "layer_profile", "median", "marginal_entropy", "readings", "saturation", "threshold",
           "update_ratio", "weight_norms"]
