"""Where the last update landed on the loss along its own direction: Cockpit's α.

Schneider, Dangel & Hennig 2021 ("Cockpit: A Practical Debugging Tool for the Training of Deep
Neural Networks", NeurIPS) read the quality of a step from a quadratic fitted to the loss along
the step, the quantity of the probabilistic line search of Mahsereci & Hennig 2017
("Probabilistic Line Searches for Stochastic Optimization", JMLR). With ``θ₀`` the parameters
before the update, ``θ₁ = θ₀ + Δθ`` after it, and the loss along the step

    ℓ(τ) = L(θ₀ + τ Δθ),   τ ∈ [0, 1],

four numbers are observed at the step's two ends — values and directional derivatives, the
derivative in units of the whole step (``ℓ′(τ) = ∇L(θ_τ)·Δθ``, so all four are in units of
the loss and weigh alike):

    f₀ = ℓ(0),   f₁ = ℓ(1),   d₀ = ℓ′(0) = ∇L(θ₀)·Δθ,   d₁ = ℓ′(1) = ∇L(θ₁)·Δθ.

A quadratic ``q(τ) = a τ² + b τ + c`` is fitted to them by least squares (four equations
``c = f₀``, ``a + b + c = f₁``, ``b = d₀``, ``2a + b = d₁``; exact when the loss is
quadratic along the step). For ``a > 0`` its minimum lies at ``τ* = −b / (2a)``, and

    α = (1 − τ*) / τ* = 1/τ* − 1

places the step's end on a scale where the start is −1, the fit's minimum 0 and the start's
mirror image across the minimum (``τ = 2τ*``) +1: ``α < 0`` the step stopped short, ``α ≈ 0``
it landed at the minimum along its direction, ``α > 0`` it overshot, ``α > 1`` the loss along
the step rose above where it started (on the quadratic). For gradient descent on
``L(θ) = ½ λ θ²`` with step ``η``: ``Δθ = −ηλθ``, ``τ* = 1/(ηλ)``, so ``α = ηλ − 1`` (0 at
``η = 1/λ``, 1 at the stability limit ``η = 2/λ``).

Any optimizer: only the parameters before and after the update are used (``ctx.previous``, kept
by the Monitor, and the model's current ones), not the optimizer's state. Unlike the stability
``η·λ_max(P⁻¹H)``, which reads the sharpest direction only, α reads the direction the step
actually took. Cockpit fits on the noisy mini-batch losses of two consecutive updates; here
both ends are evaluated on the Monitor's fixed sample (the same samples, in the Monitor's mode,
with the same random seed for dropout at both ends), so the fit sees the change of the
parameters, not of the batch.

Cost: two forward and backward passes over the sample. The model is left as it was: the
parameters are set to ``θ₀`` for the second evaluation and restored exactly, with buffers, flags,
``.grad`` and random states (:func:`trainlab.state.preserved`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainlab import distributed as dist
from trainlab.data.batches import batch_size_of
from trainlab.instruments.monitor import Context, Instrument
from trainlab.state import preserved

#: The least-squares design of ``q(τ) = a τ² + b τ + c`` (columns a, b, c) for the rows
#: ``q(0) = f₀``, ``q(1) = f₁``, ``q′(0) = d₀``, ``q′(1) = d₁``.
DESIGN = ((0.0, 0.0, 1.0), (1.0, 1.0, 1.0), (0.0, 1.0, 0.0), (2.0, 1.0, 0.0))
#: A fitted ``a`` below this many float64 epsilons of the largest observation is rounding: no minimum.
FLAT = 16


def quadratic_fit(f0: float, f1: float, d0: float, d1: float) -> tuple[float, float, float, float]:
    """``(a, b, c, rms)``: the least-squares quadratic ``q(τ) = a τ² + b τ + c`` through the
    values ``f₀ = ℓ(0)``, ``f₁ = ℓ(1)`` and slopes ``d₀ = ℓ′(0)``, ``d₁ = ℓ′(1)``, and the root mean
    square of its four residuals (0 when ``ℓ`` is quadratic). In float64."""
    A = torch.tensor(DESIGN, dtype=torch.float64)
    y = torch.tensor([f0, f1, d0, d1], dtype=torch.float64)
    coef = torch.linalg.solve(A.T @ A, A.T @ y)  # the normal equations: AᵀA is a fixed, well-conditioned 3 × 3
    rms = float((A @ coef - y).pow(2).mean().sqrt())
    a, b, c = coef.tolist()
    return a, b, c, rms


def alpha_of(f0: float, f1: float, d0: float, d1: float) -> tuple[float, float]:
    """``(α, τ*)`` of a step from the loss values ``f₀, f₁`` and the slopes ``d₀, d₁`` (in units of
    the whole step) at its two ends (module docstring): ``τ*`` the minimum of the fitted
    quadratic, ``α = 1/τ* − 1``. Both NaN when the fit has no minimum (``a ≤ 0``: flat or concave
    along the step, up to the fit's float64 rounding), or when ``τ* = 0`` (the step started at the
    minimum)."""
    a, b, _, _ = quadratic_fit(f0, f1, d0, d1)
    if not a > FLAT * torch.finfo(torch.float64).eps * max(abs(f0), abs(f1), abs(d0), abs(d1)):
        return math.nan, math.nan
    tau = -b / (2 * a)
    return (1 / tau - 1 if tau != 0 else math.nan), tau


class Alpha(Instrument):
    """``alpha``: where the last update landed relative to the minimum of a quadratic fitted to the
    loss along its direction (Cockpit's α, Schneider, Dangel & Hennig 2021; module docstring):
    −1 the step stayed at its start, 0 it reached the minimum, +1 the mirror point (overshot).

    Reads the parameters before the update (``ctx.previous``) and after it (the model), and the
    loss and gradient on the Monitor's sample at both. Reading: ``{"value": α, "tau_min": τ*,
    "loss_before": f₀, "loss_after": f₁, "slope_before": d₀, "slope_after": d₁, "curvature":
    2a/‖Δθ‖² (the fit's curvature along the unit direction), "fit_rms": residual of the fit,
    "step_norm": ‖Δθ‖}``; ``value`` NaN with a ``note`` when the step is zero, a loss is not
    finite, or the fit has no minimum. Cost: two forward and backward passes over the sample.
    """

    name = "alpha"
    needs_previous = True
    guarded = True  # evaluates inside its own preserved(model): it sets θ₀ and restores θ₁

    def read(self, ctx: Context) -> dict[str, Any]:
        named, before = ctx.before_update("alpha")
        params = [p for _, p in named]
        with torch.no_grad():
            delta = [p.detach() - b for p, b in zip(params, before)]
        step_norm = math.sqrt(sum(float(d.double().pow(2).sum()) for d in delta))
        if step_norm == 0:
            return {"value": math.nan, "step_norm": 0.0, "note": "the last update did not move the parameters"}
        with preserved(ctx.model):  # parameters included: θ₀ is set below and θ₁ restored on leaving
            ctx.model.train(ctx.mode == "train")
            f1, d1 = _value_and_slope(ctx, params, delta)
            with torch.no_grad():
                for p, b in zip(params, before):
                    p.copy_(b)
            f0, d0 = _value_and_slope(ctx, params, delta)
        if dist.active():
            f0, f1, d0, d1 = _summed(ctx, params[0].device, f0, f1, d0, d1)
        ends = {"loss_before": f0, "loss_after": f1, "slope_before": d0, "slope_after": d1, "step_norm": step_norm}
        if not all(math.isfinite(v) for v in (f0, f1, d0, d1)):
            return {"value": math.nan, **ends, "note": "a loss or slope at the step's ends is not finite"}
        a, _, _, rms = quadratic_fit(f0, f1, d0, d1)
        value, tau = alpha_of(f0, f1, d0, d1)
        reading = {"value": value, "tau_min": tau, **ends, "curvature": 2 * a / step_norm ** 2, "fit_rms": rms}
        if not math.isfinite(value):
            reading["note"] = "the quadratic fitted along the step has no minimum (flat or concave)"
        return reading


def _value_and_slope(ctx: Context, params: list[torch.Tensor], delta: list[torch.Tensor]) -> tuple[float, float]:
    """The loss on the sample at the model's current parameters and its derivative along ``delta``,
    ``∇L·Δθ``; the random state is seeded with ``ctx.seed`` first, so that dropout (in train mode)
    draws the same masks at both ends of the step."""
    torch.manual_seed(ctx.seed)
    loss = ctx.loss()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    slope = sum(float((g.double() * d.double()).sum()) for g, d in zip(grads, delta) if g is not None)
    return float(loss.detach()), slope


def _summed(ctx: Context, device: torch.device, *values: float) -> list[float]:
    """Under ``torch.distributed``: each rank's mean-loss values weighted by its share ``n_r/N`` of
    the samples and summed over the ranks (one all-reduce), so every rank reads the whole sample's."""
    count = torch.tensor([float(batch_size_of(ctx.batch))], dtype=torch.float64, device=device)
    share = float(count / dist.all_reduce_sum(count.clone()))
    return dist.all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=device) * share).tolist()
