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
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from trainlab.curvature import progress as progress_bar
from trainlab.curvature.eigs import check_max_hvp
from trainlab.curvature.lanczos import _unit, step
from trainlab.curvature.operator import DEFAULT_GRAPH_BYTES, HessianOperator, LossFn, Timer, analysis_mode
from trainlab.curvature.products import TITLES, _operator
from trainlab.curvature.selection import ParamSpec
from trainlab.data.batches import Batch, BatchLoss
from trainlab.errors import ConfigError

TRACE_METHODS = ("hutch++", "hutchinson")
#: The largest ``probes``, ``steps`` and ``samples`` an analysis takes, and the most products a
#: density may plan (``probes × steps``, or ``max_hvp`` when smaller): beyond it a call would run
#: for days (a tiny model does some 10,000 Hessian-vector products a second, a network far
#: fewer) or hold terabytes, so it is refused up front instead of hanging.
MAX_COUNT = 1_000_000
#: The most ``grid_points``: smoothing evaluates ``steps × grid_points`` Gaussians per probe.
MAX_GRID_POINTS = 100_000


@dataclass(repr=False)
class Density:
    """The spectral density of the Hessian, ``(1/n) Σ_j δ(λ − λ_j)``, smoothed.

    Fields:
        grid: ``(grid_points,)`` eigenvalue axis, a little wider than the nodes' range.
        density: the smoothed density on ``grid`` (integrates to 1); stderr: its standard error
            over the probes (NaN with one probe).
        nodes, weights: ``(probes, steps)`` quadrature of each probe: ``nodes[p]`` ascending Ritz
            values, ``weights[p]`` summing to 1 — the estimate itself, before smoothing.
        sigma: the Gaussian smoothing width; n_hvp: products used; seconds: wall time.
        notes: what was changed from the request (fewer probes/steps under ``max_hvp``), and what
            the operator says (attention run on the math kernel, once).

    :meth:`fraction` gives the share of eigenvalues in any interval, with its standard error
    and the quadrature's resolution bounds.
    """

    grid: torch.Tensor
    density: torch.Tensor
    stderr: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    sigma: float
    n_hvp: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    operator: str = "hessian"

    def __str__(self) -> str:
        probes, steps = self.nodes.shape
        negative, positive = self.fraction(high=0.0), self.fraction(low=0.0)
        title, _, products = TITLES[self.operator]
        lines = [f"Density: spectral density of the {title} from {probes} probe(s) × {steps} Lanczos step(s),"
                 f" smoothed with sigma {self.sigma:.3g}; {self.n_hvp} {products}, {self.seconds:.2f} s",
                 f"  eigenvalues within ≈ [{float(self.nodes.min()):.4g}, {float(self.nodes.max()):.4g}]",
                 f"  share negative (λ ≤ 0): {_share(negative)}; share positive (λ > 0): {_share(positive)}",
                 "  .fraction(low, high) gives the share in any interval; .grid and .density the curve"]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    __repr__ = __str__

    def fraction(self, low: float = -math.inf, high: float = math.inf) -> Share:
        """Share of eigenvalues in ``(low, high]``: each node's weight is spread evenly over its
        cell (up to the midpoints to its neighbours), the point estimate takes the part of each
        cell inside the interval, and ``bounds`` count the cells wholly inside (lower) and
        touching it (upper) — the quadrature's own resolution, which dominates near a cluster.

        Parameters: ``low`` (−∞), ``high`` (+∞). Returns :class:`Share` (``value``, ``stderr``,
        ``bounds``). Cost: no products.
        """
        left, right = _cells(self.nodes)
        width = (right - left).clamp_min(1e-300)
        inside = ((right.clamp(max=high) - left.clamp(min=low)) / width).clamp(0, 1)
        estimate = (self.weights * inside).sum(1)
        lower = (self.weights * ((left >= low) & (right <= high))).sum(1)
        upper = (self.weights * ((right > low) & (left < high))).sum(1)
        return Share(float(estimate.mean()), _stderr(estimate), (float(lower.mean()), float(upper.mean())))

    def trace(self, n: int) -> tuple[float, float]:
        """``tr H ≈ n · vᵀHv = n Σ_i τ_i θ_i`` over the unit Rademacher probes (Hutchinson with the
        density's own probes), and its standard error; ``n`` the operator's dimension. Cost: no products."""
        per_probe = n * (self.weights * self.nodes).sum(1)
        return float(per_probe.mean()), _stderr(per_probe)


@dataclass
class Share:
    """An estimated share of the spectrum: ``value ± stderr`` (standard error over the probes),
    and ``bounds = (lower, upper)``: the shares of quadrature cells wholly inside the interval
    and touching it — the quadrature's resolution, which dominates near a cluster."""

    value: float
    stderr: float
    bounds: tuple[float, float]

    @property
    def resolved(self) -> bool:
        """Whether the bounds are within ±2 standard errors: only then does ``value ± stderr``
        mean something (beside bounds of 0.05–0.965 a "± 0.008" claims a precision the quadrature
        does not have)."""
        return self.bounds[1] - self.bounds[0] <= 4 * self.stderr


def _share(share: Share) -> str:
    """The bounds, and the point estimate with its standard error where :attr:`Share.resolved`."""
    low, high = share.bounds
    if share.resolved:
        return f"{share.value:.3f} ± {share.stderr:.3f} (quadrature bounds {low:.3f}–{high:.3f})"
    return f"between {low:.3f} and {high:.3f} (the quadrature's cells straddling the edge cannot be split)"


def _cells(nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For sorted nodes of each probe, the cell edges: midpoints to the neighbouring nodes
    (the outermost cells mirrored)."""
    mids = (nodes[:, 1:] + nodes[:, :-1]) / 2
    left = torch.cat([2 * nodes[:, :1] - mids[:, :1], mids], 1) if nodes.shape[1] > 1 else nodes - 0.5
    right = torch.cat([mids, 2 * nodes[:, -1:] - mids[:, -1:]], 1) if nodes.shape[1] > 1 else nodes + 0.5
    return left, right


@dataclass(repr=False)
class Trace:
    """``tr H ≈ value ± stderr`` (standard error over the random probes).

    Fields: value, stderr, n_hvp (products used), seconds (wall time), method
    (``"hutch++"`` or ``"hutchinson"``), notes (fewer samples under ``max_hvp``; attention run on
    the math kernel, once).
    """

    value: float
    stderr: float
    n_hvp: int
    seconds: float
    method: str = "hutch++"
    notes: list[str] = field(default_factory=list)
    operator: str = "hessian"

    def __str__(self) -> str:
        title, symbol, products = TITLES[self.operator]
        lines = [f"Trace: tr {symbol} ≈ {self.value:.6g} ± {self.stderr:.2g} of the {title} ({self.method},"
                 f" {self.n_hvp} {products}, {self.seconds:.2f} s)"]
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])

    __repr__ = __str__


def density(model: nn.Module, loss_fn: LossFn | None, data: Batch | Iterable[Any], probes: int = 10, steps: int = 80,
            sigma: float | None = None, grid_points: int = 1000, seed: int = 0, mode: str = "eval",
            distributed: bool | None = None, group: object = None, *, batch_loss: BatchLoss | None = None,
            max_samples: int | None = None, max_graph_bytes: float = DEFAULT_GRAPH_BYTES, max_hvp: int | None = None,
            progress: bool = True, params: ParamSpec = None, operator: str = "hessian") -> Density:
    """Spectral density of the Hessian by stochastic Lanczos quadrature (module docstring).

    Parameters:
        model, loss_fn, data: the loss over the batches of ``data`` (see :func:`trainlab.curvature.eigs`).
        probes: random probes (10); more probes, smaller standard errors (``∝ 1/√probes``).
        steps: Lanczos steps per probe (80; at most the parameter count) — the resolution: each
            probe places ``steps`` nodes.
        sigma: Gaussian smoothing width (``None``: 1% of the nodes' range).
        grid_points: points of ``grid`` (1000).
        seed: seed of the probes (0); mode: ``"eval"`` (default) or ``"train"``.
        distributed, group: ``torch.distributed`` sharding (see :class:`HessianOperator`).
        batch_loss, max_samples, max_graph_bytes: as for :func:`trainlab.curvature.eigs`.
        max_hvp: at most this many products (``None``: ``probes × steps``); a smaller budget
            shrinks probes and steps together (at least 2 probes while the budget allows),
            with a note.
        progress: a progress bar when the call runs longer than 2 s (True).
        params, operator: the parameters analysed and the operator (``"hessian"``, ``"ggn"``,
            ``"fisher"``), as for :func:`trainlab.curvature.eigs`.

    Returns:
        :class:`Density` — ``grid``, ``density``, ``stderr``, ``nodes``, ``weights``, ``sigma``,
        ``n_hvp``, ``seconds``, ``notes``; ``.fraction(low, high)`` for shares.

    Cost:
        one gradient and ``probes × steps`` Hessian-vector products (fewer when a probe's
        Krylov space is exhausted), ≤ ``max_hvp``.
    """
    timer = Timer()
    check_counts(probes=probes, steps=steps, grid_points=grid_points)
    check_max_hvp(max_hvp)
    check_plan(probes, steps, max_hvp)
    with analysis_mode(model, mode):
        op = _operator(model, loss_fn, data, mode, distributed, group, operator, params, batch_loss=batch_loss,
                       max_samples=max_samples, max_graph_bytes=max_graph_bytes)
        planned = math.prod(fit_budget(probes, min(steps, op.n), max_hvp)[:2])
        with progress_bar.counting(op, planned, "density", progress):
            return density_of(op, probes, steps, sigma, grid_points, seed, timer, max_hvp)


def density_of(op: HessianOperator, probes: int = 10, steps: int = 80, sigma: float | None = None,
               grid_points: int = 1000, seed: int = 0, timer: Timer | None = None,
               max_hvp: int | None = None) -> Density:
    """:func:`density` of an operator already built (the caller holds :func:`analysis_mode`).

    Parameters: ``op`` a :class:`HessianOperator`; ``probes`` (10), ``steps`` (80), ``sigma``
    (``None``), ``grid_points`` (1000), ``seed`` (0), ``max_hvp`` (``None``) as for :func:`density`;
    ``timer`` (``None``: started here). Returns :class:`Density`. Cost: ``probes × steps`` products, ≤ ``max_hvp``.
    """
    timer = timer or Timer()
    check_counts(probes=probes, steps=steps, grid_points=grid_points)
    if sigma is not None and not (isinstance(sigma, (int, float)) and 0 < sigma < math.inf):
        raise ConfigError(f"sigma={sigma!r} is not allowed; expected a finite number > 0 (the smoothing width),"
                          " or None for 1% of the spectrum's range")
    check_max_hvp(max_hvp)
    check_plan(probes, min(steps, op.n), max_hvp)
    before = op.n_hvp
    gen = torch.Generator().manual_seed(seed)
    probes, steps, notes = fit_budget(probes, min(steps, op.n), max_hvp)
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
    scale = 1 / (sigma * math.sqrt(2 * math.pi))  # probe by probe: steps × grid_points Gaussians at a time
    per_probe = torch.stack([(w[:, None] * torch.exp(-((grid[None, :] - th[:, None]) ** 2) / (2 * sigma**2))).sum(0)
                             for th, w in zip(nodes, weights)]) * scale
    stderr = per_probe.std(0) / math.sqrt(probes) if probes > 1 else torch.full_like(grid, math.nan)
    return Density(grid, per_probe.mean(0), stderr, nodes, weights, sigma, op.n_hvp - before, timer.seconds,
                   notes + _operator_notes(op), op.kind)


def fit_budget(probes: int, steps: int, max_hvp: int | None) -> tuple[int, int, list[str]]:
    """Probes and steps within ``max_hvp`` products: both shrink by the same factor
    ``√(max_hvp / (probes·steps))``, keeping two probes (a standard error) while the budget allows.

    Parameters: ``probes``, ``steps`` as asked; ``max_hvp`` the budget (``None``: none).
    Returns ``(probes, steps, notes)`` with ``probes × steps ≤ max_hvp``. Cost: none.
    """
    if max_hvp is None or probes * steps <= max_hvp:
        return probes, steps, []
    factor = math.sqrt(max_hvp / (probes * steps))
    fewer = min(max(min(probes, 2), int(probes * factor)), max_hvp)
    shorter = max(1, min(steps, max_hvp // fewer))
    return fewer, shorter, [f"max_hvp={max_hvp:,} allows {fewer} probe(s) of {shorter} step(s) instead of"
                            f" {probes} of {steps}: a coarser density with larger standard errors"]


def check_counts(**values: Any) -> None:
    """Raise ConfigError unless each value is an integer from 1 to :data:`MAX_COUNT`
    (``grid_points``: :data:`MAX_GRID_POINTS`). Cost: none."""
    for name, value in values.items():
        most = MAX_GRID_POINTS if name == "grid_points" else MAX_COUNT
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else repr(value)
            raise ConfigError(f"{name}={shown} is not allowed; expected a positive integer, at most {most:,}")


def check_plan(probes: int, steps: int, max_hvp: int | None) -> None:
    """Raise ConfigError when a density plans more than :data:`MAX_COUNT` products. Cost: none."""
    asked = probes * steps
    if (asked if max_hvp is None else min(asked, max_hvp)) > MAX_COUNT:
        raise ConfigError(f"probes={probes:,} × steps={steps:,} asks for {asked:,} Hessian-vector products, more than"
                          f" the {MAX_COUNT:,} one call may plan; use fewer probes or steps, or bound them with max_hvp")


def trace(model: nn.Module, loss_fn: LossFn | None, data: Batch | Iterable[Any], samples: int = 30,
          method: str = "hutch++", seed: int = 0, mode: str = "eval", distributed: bool | None = None,
          group: object = None, *, batch_loss: BatchLoss | None = None, max_samples: int | None = None,
          max_graph_bytes: float = DEFAULT_GRAPH_BYTES, max_hvp: int | None = None, progress: bool = True,
          params: ParamSpec = None, operator: str = "hessian") -> Trace:
    """``tr H`` (the sum of the Hessian's eigenvalues) by Hutch++ or Hutchinson, with a standard error.

    Parameters:
        model, loss_fn, data: the loss over the batches of ``data`` (see :func:`trainlab.curvature.eigs`).
        samples: Hessian-vector products to spend (30; at least 3 for Hutch++, 2 for Hutchinson).
        method: ``"hutch++"`` (default: a third of the products sketch the top of the spectrum, whose
            trace is then exact; the sketch holds ``2·samples/3`` vectors, at most 2 GiB) or
            ``"hutchinson"`` (``E[zᵀHz]`` over Rademacher ``z``, streamed 32 probes at a time).
        seed: seed of the probes (0); mode: ``"eval"`` (default) or ``"train"``.
        distributed, group: ``torch.distributed`` sharding (see :class:`HessianOperator`).
        batch_loss, max_samples, max_graph_bytes: as for :func:`trainlab.curvature.eigs`.
        max_hvp: at most this many products: ``samples`` is lowered to it, with a note (``None``: no limit).
        progress: a progress bar when the call runs longer than 2 s (True).
        params, operator: the parameters analysed and the operator (``"hessian"``, ``"ggn"``,
            ``"fisher"``), as for :func:`trainlab.curvature.eigs`.

    Returns:
        :class:`Trace` — ``value``, ``stderr``, ``n_hvp``, ``seconds``, ``method``, ``notes``.

    Cost:
        one gradient and ``samples`` Hessian-vector products (≤ ``max_hvp``).
    """
    timer = Timer()
    _check_trace(samples, method, max_hvp)
    with analysis_mode(model, mode):
        op = _operator(model, loss_fn, data, mode, distributed, group, operator, params, batch_loss=batch_loss,
                       max_samples=max_samples, max_graph_bytes=max_graph_bytes)
        with progress_bar.counting(op, min(samples, max_hvp or samples), "trace", progress):
            return trace_of(op, samples, method, seed, timer, max_hvp)


def trace_of(op: HessianOperator, samples: int = 30, method: str = "hutch++", seed: int = 0,
             timer: Timer | None = None, max_hvp: int | None = None) -> Trace:
    """:func:`trace` of an operator already built (the caller holds :func:`analysis_mode`).

    Parameters: ``op`` a :class:`HessianOperator`; ``samples`` (30), ``method`` (``"hutch++"``),
    ``seed`` (0), ``max_hvp`` (``None``) as for :func:`trace`; ``timer`` (``None``: started here).
    Returns :class:`Trace`. Cost: ``samples`` products, ≤ ``max_hvp``.
    """
    timer = timer or Timer()
    _check_trace(samples, method, max_hvp)
    notes = []
    if max_hvp is not None and samples > max_hvp:
        notes.append(f"max_hvp={max_hvp:,} allows {max_hvp} samples instead of {samples}: a larger standard error")
        samples = max_hvp
    before = op.n_hvp
    gen = torch.Generator().manual_seed(seed)
    if method == "hutchinson":  # streamed: CHUNK probes at a time, whatever ``samples``
        terms = torch.cat([_hutchinson_terms(op, _rademacher(op, min(CHUNK, samples - start), gen))
                           for start in range(0, samples, CHUNK)])
        return Trace(float(terms.mean()), _stderr(terms), op.n_hvp - before, timer.seconds, method,
                     notes + _operator_notes(op), op.kind)
    third = samples // 3
    sketch = 2 * third * op.n * torch.empty((), dtype=op.dtype).element_size()  # Q and H Q, held together
    if sketch > SKETCH_BYTES:
        raise ConfigError(f"samples={samples:,} with hutch++ holds {third:,} sketch vectors of {op.n:,} parameters"
                          f" twice, about {sketch / 2**30:,.1f} GiB (at most {SKETCH_BYTES / 2**30:g} GiB); use fewer"
                          " samples, or method='hutchinson', which streams its probes")
    Q, _ = torch.linalg.qr(op.matmat(_rademacher(op, third, gen)).T)  # (n, third), orthonormal columns
    exact = float((Q.T * op.matmat(Q.T)).sum())  # tr(Qᵀ H Q)
    g = _rademacher(op, samples - 2 * third, gen)
    g = g - (g @ Q) @ Q.T  # project out the sketched subspace
    terms = _hutchinson_terms(op, g)
    return Trace(exact + float(terms.mean()), _stderr(terms), op.n_hvp - before, timer.seconds, method,
                 notes + _operator_notes(op), op.kind)


def _operator_notes(op: HessianOperator) -> list[str]:
    """What the operator says of every analysis through it (attention on the math kernel:
    :mod:`trainlab.curvature.operator`), for the result's ``notes``."""
    return list(getattr(op, "notes", []))


#: Probes of the Hutchinson estimator pushed through the operator at a time.
CHUNK = 32
#: Memory of hutch++'s sketch (``Q`` and ``H Q``) at most: 2 GiB.
SKETCH_BYTES = 2**31


def _hutchinson_terms(op: HessianOperator, z: torch.Tensor) -> torch.Tensor:
    """``zᵢᵀ H zᵢ`` of each row of ``z``, in float64."""
    return (z * op.matmat(z)).sum(1).double().cpu()


def _check_trace(samples: int, method: str, max_hvp: int | None) -> None:
    if method not in TRACE_METHODS:
        raise ConfigError(f"method={method!r} is not allowed; use one of: {', '.join(TRACE_METHODS)}")
    least = 3 if method == "hutch++" else 2
    if isinstance(samples, bool) or not isinstance(samples, int) or not least <= samples <= MAX_COUNT:
        shown = f"{samples:,}" if isinstance(samples, int) and not isinstance(samples, bool) else repr(samples)
        raise ConfigError(f"samples={shown} is not allowed; expected an integer from {least} to {MAX_COUNT:,} for"
                          f" {method} (one Hessian-vector product each)")
    check_max_hvp(max_hvp, least)


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
