"""The whole spectrum at a glance: eigenvalue density by stochastic Lanczos quadrature, and
the trace by Hutchinson / Hutch++ — each with a standard error over its random probes.

Stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani et al. 2019): for a random
unit probe ``v``, ``m`` Lanczos steps from ``v`` give ``T = Y diag(θ) Yᵀ`` and

    vᵀ f(H) v ≈ Σ_i τ_i f(θ_i),     τ_i = (Y_{0i})²

so the spectral measure ``(1/n) Σ_j δ(λ − λ_j)`` is estimated, probe by probe, by the nodes
``θ_i`` with weights ``τ_i`` (which sum to 1). Averaging over probes and smoothing each node
with a Gaussian of width ``sigma`` gives the density; the share of eigenvalues in an
interval is the mean over probes of the weights of the nodes inside it, and its standard
error is the probes' standard deviation divided by ``√probes``.

Hutchinson: ``tr H = E[zᵀ H z]`` for Rademacher ``z``. Hutch++ (Meyer et al. 2021) spends a
third of the products on a sketch ``Q`` of the top of the spectrum, takes ``tr(Qᵀ H Q)``
exactly, and Hutchinson only on the rest, ``(I − QQᵀ) H (I − QQᵀ)`` — much less variance when
a few eigenvalues dominate, as in a network's Hessian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from trainlab.curvature.lanczos import _unit, step
from trainlab.curvature.operator import HessianOperator, LossFn, Timer, analysis_mode
from trainlab.curvature.products import _operator
from trainlab.data.batches import Batch
from trainlab.errors import ConfigError

TRACE_METHODS = ("hutch++", "hutchinson")


@dataclass
class Density:
    """Smoothed spectral density on ``grid`` (integrates to 1), its standard error, and the
    quadrature it comes from: ``nodes[p]``, ``weights[p]`` for probe ``p``."""

    grid: torch.Tensor
    density: torch.Tensor
    stderr: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    sigma: float
    n_hvp: int
    seconds: float

    def fraction(self, low: float = -math.inf, high: float = math.inf) -> Share:
        """Share of eigenvalues in ``(low, high]``: each node's weight is spread evenly over its
        cell (up to the midpoints to its neighbours), the point estimate takes the part of each
        cell inside the interval, and ``bounds`` count the cells wholly inside (lower) and
        touching it (upper) — the quadrature's own resolution, which dominates near a cluster."""
        left, right = _cells(self.nodes)
        width = (right - left).clamp_min(1e-300)
        inside = ((right.clamp(max=high) - left.clamp(min=low)) / width).clamp(0, 1)
        estimate = (self.weights * inside).sum(1)
        lower = (self.weights * ((left >= low) & (right <= high))).sum(1)
        upper = (self.weights * ((right > low) & (left < high))).sum(1)
        return Share(float(estimate.mean()), _stderr(estimate), (float(lower.mean()), float(upper.mean())))


@dataclass
class Share:
    """An estimated share of the spectrum: ``value ± stderr`` over probes, within ``bounds``."""

    value: float
    stderr: float
    bounds: tuple[float, float]


def _cells(nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For sorted nodes of each probe, the cell edges: midpoints to the neighbouring nodes
    (the outermost cells mirrored)."""
    mids = (nodes[:, 1:] + nodes[:, :-1]) / 2
    left = torch.cat([2 * nodes[:, :1] - mids[:, :1], mids], 1) if nodes.shape[1] > 1 else nodes - 0.5
    right = torch.cat([mids, 2 * nodes[:, -1:] - mids[:, -1:]], 1) if nodes.shape[1] > 1 else nodes + 0.5
    return left, right


@dataclass
class Trace:
    value: float
    stderr: float
    n_hvp: int
    seconds: float


def density(model: nn.Module, loss_fn: LossFn, data: Batch | Iterable[Batch], probes: int = 10, steps: int = 80,
            sigma: float | None = None, grid_points: int = 1000, seed: int = 0, mode: str = "eval",
            distributed: bool | None = None, group: object = None) -> Density:
    """Spectral density of ``H`` from ``probes`` Lanczos runs of ``steps`` products each."""
    timer = Timer()
    with analysis_mode(model, mode):
        return density_of(_operator(model, loss_fn, data, mode, distributed, group), probes, steps, sigma, grid_points,
                          seed, timer)


def density_of(op: HessianOperator, probes: int = 10, steps: int = 80, sigma: float | None = None,
               grid_points: int = 1000, seed: int = 0, timer: Timer | None = None) -> Density:
    timer = timer or Timer()
    for name, value in (("probes", probes), ("steps", steps), ("grid_points", grid_points)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r} is not allowed; expected a positive integer")
    before = op.n_hvp
    gen = torch.Generator().manual_seed(seed)
    steps = min(steps, op.n)
    nodes, weights = [], []
    for _ in range(probes):
        theta, tau = _quadrature(op, _rademacher(op, 1, gen)[0], steps)
        nodes.append(theta)
        weights.append(tau)
    nodes, weights = torch.stack(nodes), torch.stack(weights)
    low, high = float(nodes.min()), float(nodes.max())
    width = max(high - low, abs(high), 1e-12)
    sigma = sigma if sigma is not None else 0.01 * width
    grid = torch.linspace(low - 0.05 * width, high + 0.05 * width, grid_points, dtype=torch.float64)
    kernel = torch.exp(-((grid[None, None, :] - nodes[:, :, None]) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    per_probe = (weights[:, :, None] * kernel).sum(1)
    stderr = per_probe.std(0) / math.sqrt(probes) if probes > 1 else torch.full_like(grid, math.nan)
    return Density(grid, per_probe.mean(0), stderr, nodes, weights, sigma, op.n_hvp - before, timer.seconds)


def trace(model: nn.Module, loss_fn: LossFn, data: Batch | Iterable[Batch], samples: int = 30,
          method: str = "hutch++", seed: int = 0, mode: str = "eval", distributed: bool | None = None,
          group: object = None) -> Trace:
    """``tr H`` from ``samples`` products, with a standard error."""
    timer = Timer()
    with analysis_mode(model, mode):
        return trace_of(_operator(model, loss_fn, data, mode, distributed, group), samples, method, seed, timer)


def trace_of(op: HessianOperator, samples: int = 30, method: str = "hutch++", seed: int = 0,
             timer: Timer | None = None) -> Trace:
    timer = timer or Timer()
    if method not in TRACE_METHODS:
        raise ConfigError(f"method={method!r} is not allowed; use one of: {', '.join(TRACE_METHODS)}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < (3 if method == "hutch++" else 2):
        raise ConfigError(f"samples={samples!r} is not allowed; expected an integer >= "
                          f"{3 if method == 'hutch++' else 2} for {method}")
    before = op.n_hvp
    gen = torch.Generator().manual_seed(seed)
    if method == "hutchinson":
        z = _rademacher(op, samples, gen)
        terms = (z * op.matmat(z)).sum(1).double().cpu()
        return Trace(float(terms.mean()), _stderr(terms), op.n_hvp - before, timer.seconds)
    third = samples // 3
    Q, _ = torch.linalg.qr(op.matmat(_rademacher(op, third, gen)).T)  # (n, third), orthonormal columns
    exact = float((Q.T * op.matmat(Q.T)).sum())  # tr(Qᵀ H Q)
    g = _rademacher(op, samples - 2 * third, gen)
    g = g - (g @ Q) @ Q.T  # project out the sketched subspace
    terms = (g * op.matmat(g)).sum(1).double().cpu()
    return Trace(exact + float(terms.mean()), _stderr(terms), op.n_hvp - before, timer.seconds)


def _quadrature(op: HessianOperator, v: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes θ and weights τ of ``steps`` Lanczos steps from ``v`` (full reorthogonalisation)."""
    V = torch.zeros(steps, op.n, device=op.device, dtype=op.dtype)
    T = torch.zeros(steps, steps, dtype=torch.float64)
    V[0] = _unit(v)
    size = steps
    for j in range(steps):
        w, beta, exhausted = step(op.matvec, V, T, j)
        if j + 1 == steps:
            break
        if exhausted:  # the probe's Krylov space is exhausted
            size = j + 1
            break
        V[j + 1] = w / beta
    theta, Y = torch.linalg.eigh(T[:size, :size])  # ascending
    nodes = torch.full((steps,), float(theta[-1]), dtype=torch.float64)  # padding keeps the order, weight 0
    weights = torch.zeros(steps, dtype=torch.float64)
    nodes[:size], weights[:size] = theta, Y[0] ** 2
    return nodes, weights


def _rademacher(op: HessianOperator, count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` rows of random ±1 entries."""
    signs = torch.randint(0, 2, (count, op.n), generator=gen, dtype=torch.int8)
    return op.broadcast((signs.to(dtype=op.dtype) * 2 - 1).to(op.device))


def _stderr(samples: torch.Tensor) -> float:
    return float(samples.std() / math.sqrt(len(samples))) if len(samples) > 1 else math.nan
