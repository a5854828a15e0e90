"""Is training stuck at a critical point, and which kind? The lecture's test, automated.

Near ``θ'`` the loss is ``L(θ) ≈ L(θ') + gᵀ(θ − θ') + ½ (θ − θ')ᵀ H (θ − θ')``. At a critical
point ``g = 0`` and the Hessian's eigenvalues decide:

* ``not_critical`` — ``‖g‖ > grad_tol``: the gradient still points downhill (a plateau or a
  narrow valley is *not* a critical point);
* ``saddle`` — some eigenvalues negative, some positive;
* ``local_minimum`` — none negative (flat ones allowed: real networks have many, e.g. the
  weights of a constant input feature; their count is reported);
* ``local_maximum`` — none positive;
* ``degenerate`` — all flat: the Hessian vanishes and second order cannot decide (as for a
  product of three weights at zero).

For large models the counts and the minimum ratio come from the spectral density, whose
resolution near zero is coarse: a network's Hessian has a dense cluster of tiny eigenvalues
there, exactly where the sign is decided. ``minimum_ratio_bounds`` reports that resolution
(the shares of quadrature cells wholly above and touching the threshold), beside the
statistical ``minimum_ratio_stderr``.

An eigenvalue is *flat* when ``|λ| ≤ max(eig_tol · max|λ|, eig_floor)``. ``negative_curvature``
is reported whatever the gradient: a small but non-zero gradient with a strongly negative
eigenvalue is a saddle's neighbourhood, and the way out is along that eigenvector
(:func:`trainlab.curvature.escape`). The *minimum ratio* is the share of positive
eigenvalues, ``#(λ > 0) / #λ`` (the lecture's scatter plot).

Small models (``n ≤ dense_max_params``) get the exact path: the dense Hessian in float64
(of a float64 copy when the model has another dtype), all eigenvalues by ``eigvalsh``. Larger ones get Lanczos for ``k``
eigenpairs at each end and stochastic Lanczos quadrature for the counts and the minimum
ratio, which are then estimates with a standard error.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn

from trainlab.curvature.density import density_of
from trainlab.curvature.eigs import eigs_of
from trainlab.curvature.operator import HessianOperator, LossFn, Timer, analysis_mode
from trainlab.curvature.products import dense
from trainlab.data.batches import Batch, as_batches
from trainlab.errors import ConfigError

VERDICTS = ("not_critical", "saddle", "local_minimum", "local_maximum", "degenerate")
METHODS = ("auto", "dense", "lanczos")


@dataclass
class Diagnosis:
    verdict: str
    loss: float
    grad_norm: float
    eigenvalues: torch.Tensor  # descending: all (dense) or the extremes found (lanczos)
    n_positive: float
    n_negative: float
    n_flat: float
    minimum_ratio: float
    minimum_ratio_stderr: float  # over the density's probes; 0 when exact
    minimum_ratio_bounds: tuple[float, float]  # the quadrature's resolution; (r, r) when exact
    negative_curvature: bool
    grad_tol: float
    eig_tol: float
    eig_floor: float
    flat_threshold: float
    method: str
    n_params: int
    n_hvp: int
    seconds: float
    escape_directions: torch.Tensor = field(repr=False)  # (j, n) unit eigenvectors with λ < −threshold
    escape_eigenvalues: torch.Tensor = field(repr=False)  # (j,)

    @property
    def exact(self) -> bool:
        return self.method == "dense"

    def __str__(self) -> str:
        lam = self.eigenvalues
        approx = "" if self.exact else "≈ "
        low, high = self.minimum_ratio_bounds
        ratio = (f"{self.minimum_ratio:.3f}" if self.exact
                 else f"{self.minimum_ratio:.3f} ± {self.minimum_ratio_stderr:.3f} (estimated; quadrature bounds"
                      f" {low:.3f}–{high:.3f})")
        lines = [
            f"verdict: {self.verdict.replace('_', ' ')}",
            f"  loss {self.loss:.6g}, gradient norm {self.grad_norm:.3g} (critical below {self.grad_tol:g})",
            f"  Hessian ({self.n_params:,} parameters, {'exact' if self.exact else 'Lanczos'}):"
            f" λ_max {float(lam[0]):.4g}, λ_min {float(lam[-1]):.4g}",
            f"  eigenvalues: {approx}{self.n_positive:,.0f} positive, {approx}{self.n_negative:,.0f} negative,"
            f" {approx}{self.n_flat:,.0f} flat (|λ| ≤ {self.flat_threshold:.3g})",
            f"  minimum ratio (share positive): {ratio}",
            f"  negative curvature: {'yes' if self.negative_curvature else 'no'}"
            + (f" — {len(self.escape_eigenvalues)} escape direction(s), trainlab.curvature.escape can step along them"
               if self.negative_curvature else ""),
            f"  cost: {self.n_hvp} Hessian-vector products, {self.seconds:.2f} s",
        ]
        return "\n".join(lines)


def verdict(grad_norm: float, has_positive: bool, has_negative: bool, grad_tol: float) -> str:
    """The lecture's classification (see the module docstring)."""
    if grad_norm > grad_tol:
        return "not_critical"
    if has_negative and has_positive:
        return "saddle"
    if has_positive:
        return "local_minimum"
    if has_negative:
        return "local_maximum"
    return "degenerate"


def diagnose(model: nn.Module, loss_fn: LossFn, data: Batch | Iterable[Batch], grad_tol: float = 1e-3,
             eig_tol: float = 1e-6, eig_floor: float = 1e-10, method: str = "auto", dense_max_params: int = 2_000,
             k: int = 10, tol: float = 1e-6, probes: int = 10, steps: int = 80, seed: int = 0,
             mode: str = "eval", distributed: bool | None = None, group: object = None) -> Diagnosis:
    """Loss, gradient norm, Hessian spectrum, verdict and minimum ratio at the current parameters."""
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not allowed; use one of: {', '.join(METHODS)}")
    for name, value in (("grad_tol", grad_tol), ("eig_tol", eig_tol), ("eig_floor", eig_floor)):
        if not (isinstance(value, (int, float)) and value >= 0):
            raise ConfigError(f"{name}={value!r} is not allowed; expected a number >= 0")
    timer = Timer()
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if method == "auto":
        method = "dense" if n <= dense_max_params else "lanczos"
    target = _float64_copy(model) if method == "dense" else model
    batches = [_float64_batch(b) for b in as_batches(data)] if method == "dense" else data
    with analysis_mode(target, mode):
        op = HessianOperator(target, loss_fn, batches, distributed=distributed, group=group)
        if mode == "train":
            op.check_determinism()
        grad_norm = float(op.gradient().norm())
        if method == "dense":
            values, vectors = torch.linalg.eigh(dense(op).cpu())
            values, vectors = values.flip(0), vectors.flip(1).T
            threshold = _threshold(values, eig_tol, eig_floor)
            counts = [float((values > threshold).sum()), float((values < -threshold).sum())]
            ratio, ratio_err = counts[0] / n, 0.0
            bounds = (ratio, ratio)
            negative = values < -threshold
            directions, escape_values = vectors[negative], values[negative]
        else:
            found = eigs_of(op, k, "both", tol, seed=seed)
            values = found.values
            threshold = _threshold(values, eig_tol, eig_floor)
            spectrum = density_of(op, probes, steps, seed=seed)
            positive, negative_share = spectrum.fraction(low=threshold), spectrum.fraction(high=-threshold)
            counts = [positive.value * n, negative_share.value * n]
            ratio, ratio_err, bounds = positive.value, positive.stderr, positive.bounds
            negative = (values < -threshold) & found.converged
            directions, escape_values = found.vectors[negative], values[negative]
            # the extremes found are certain even where the density's counts are not
            counts = [max(counts[0], float((values > threshold).sum())), max(counts[1], float(negative.sum()))]
    has_positive, has_negative = bool(values.max() > threshold), bool(values.min() < -threshold)
    like = next(p for p in model.parameters() if p.requires_grad)  # the caller's device and dtype
    return Diagnosis(
        verdict=verdict(grad_norm, has_positive, has_negative, grad_tol), loss=op.loss, grad_norm=grad_norm,
        eigenvalues=values.double().cpu(), n_positive=counts[0], n_negative=counts[1],
        n_flat=max(n - counts[0] - counts[1], 0.0), minimum_ratio=ratio, minimum_ratio_stderr=ratio_err,
        minimum_ratio_bounds=bounds,
        negative_curvature=has_negative, grad_tol=grad_tol, eig_tol=eig_tol, eig_floor=eig_floor,
        flat_threshold=threshold, method=method, n_params=n, n_hvp=op.n_hvp, seconds=timer.seconds,
        escape_directions=directions.to(device=like.device, dtype=like.dtype),
        escape_eigenvalues=escape_values.double().cpu())


def _threshold(values: torch.Tensor, eig_tol: float, eig_floor: float) -> float:
    """``|λ|`` at or below which an eigenvalue counts as flat."""
    return max(eig_tol * float(values.abs().max()), eig_floor)


def _float64_copy(model: nn.Module) -> nn.Module:
    """The exact path analyses the model in float64, so eigenvalues are exact to ~1e-15
    relative: a float64 model itself, any other a float64 copy (then a ``loss_fn`` that reads
    the original's parameters, e.g. for weight decay, would not see the copy's)."""
    if all(p.dtype == torch.float64 for p in model.parameters()):
        return model
    return copy.deepcopy(model).double()


def _float64_batch(batch: Batch) -> Batch:
    x, y = batch
    return (x.double() if x.is_floating_point() else x, y.double() if y.is_floating_point() else y)
