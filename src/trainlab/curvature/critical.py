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
statistical ``minimum_ratio_stderr``: the true share lies between the bounds up to the
probes' sampling error.

An eigenvalue is *flat* when ``|λ| ≤ max(eig_tol · max|λ|, eig_floor)``. ``negative_curvature``
is reported whatever the gradient: a small but non-zero gradient with a strongly negative
eigenvalue is a saddle's neighbourhood, and the way out is along that eigenvector
(:func:`trainlab.curvature.escape`). The *minimum ratio* is the share of positive
eigenvalues, ``#(λ > 0) / #λ`` (the lecture's scatter plot).

Small models (``n ≤ dense_max_params``) get the exact path: the dense Hessian in float64
(of a float64 copy when the model has another dtype), all eigenvalues by ``eigh``. It costs
``n`` products and ``O(n³)`` for ``eigh``, so it is estimated first (a few timed products, a
timed small ``eigh`` scaled by ``n³``, memory ``3 n² × 8`` bytes) and refused past
``max_seconds`` or :data:`DENSE_MAX_BYTES` — or, when chosen automatically, replaced by the
Lanczos path with a note. Larger models get Lanczos for ``k`` eigenpairs at each end and
stochastic Lanczos quadrature for the counts and the minimum ratio, which are then estimates
with a standard error. When ``k`` covers the whole spectrum (``2k ≥ n``), Lanczos computes
every eigenvalue and the counts are exact.

Counts always add up to ``n``: the density's shares ``(positive, negative, flat)`` are raised
where the eigenvalues found prove more (a Ritz value ``θ_j`` from the top is ``≤ λ_j``, so the
number found above the threshold is a lower bound — Cauchy interlacing — and likewise from
the bottom), the excess is taken back from the other classes, and the counts are rounded to
whole numbers by largest remainders. The same interlacing tells when the verdict is certain
although an eigenvalue has not converged: a Ritz value below ``−threshold`` proves negative
curvature; only "none negative" (or "none positive") resting on an unconverged extreme is
uncertain, and then the summary and ``notes`` say so.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from trainlab.curvature import progress as progress_bar
from trainlab.curvature.density import Share, check_counts, check_plan, density_of, fit_budget
from trainlab.curvature.eigs import check_max_hvp, clamp_k, eigs_of
from trainlab.curvature.operator import DEFAULT_GRAPH_BYTES, HessianOperator, LossFn, Timer, analysis_mode
from trainlab.curvature.products import TITLES, _operator, _size, dense, operator_class
from trainlab.curvature.selection import ParamSpec, names as selected_names
from trainlab.data.batches import Batch, BatchLoss, first_samples, map_tensors
from trainlab.errors import ConfigError

VERDICTS = ("not_critical", "saddle", "local_minimum", "local_maximum", "degenerate")
METHODS = ("auto", "dense", "lanczos")
#: Memory the exact path may use: the Hessian, its symmetrised copy and the eigenvectors, n² float64 each.
DENSE_MAX_BYTES = 8 * 2**30
#: Products the exact path spends to time one product before it commits to ``n`` of them.
TIMING_PRODUCTS = 5
#: At most this many Gauss–Newton products find ``λ_min`` of ``G`` beside the Hessian's on the Lanczos path.
GGN_MAX_HVP = 300


@dataclass(repr=False)
class Diagnosis:
    """What :func:`diagnose` found at the current parameters.

    Fields:
        verdict: one of ``not_critical``, ``saddle``, ``local_minimum``, ``local_maximum``,
            ``degenerate`` (module docstring); ``certain`` tells whether it rests on converged
            eigenvalues only.
        loss, grad_norm: ``L(θ)`` and ``‖∇L(θ)‖``.
        eigenvalues: descending float64 — all ``n`` (exact path) or the ``k`` largest then the
            ``k`` smallest found (Lanczos path); ``residuals`` (``‖H x − λ x‖``) and ``converged``
            beside them (exact path: zeros and all True).
        n_positive, n_negative, n_flat: counts of eigenvalues above ``flat_threshold``, below its
            negative, and between; whole numbers adding up to ``n_params`` (estimates on the
            Lanczos path).
        minimum_ratio: the share of positive eigenvalues, ``n_positive / n_params`` before
            rounding. ``minimum_ratio_stderr``: its standard error over the density's probes (0
            when exact). ``minimum_ratio_bounds``: ``(lower, upper)``, the quadrature's
            resolution — the shares of quadrature cells wholly above the threshold and touching
            it; the true share lies between them up to the sampling error (``(r, r)`` when exact).
            ``negative_share_bounds``: the same for the share below ``−flat_threshold``. The
            printout shows the counts only where they are exact, and the bounds otherwise.
        negative_curvature: some eigenvalue below ``−flat_threshold`` (certain when found).
        escape_directions, escape_eigenvalues: ``(j, n)`` unit eigenvectors with converged
            ``λ < −flat_threshold`` and their ``λ`` — what :func:`trainlab.curvature.escape` uses.
        grad_tol, eig_tol, eig_floor, flat_threshold: the thresholds used
            (``flat_threshold = max(eig_tol · max|λ|, eig_floor)``).
        method: ``"dense"`` (exact) or ``"lanczos"``; n_params; n_hvp (products used); seconds.
        notes: what changed from the request and what to keep in mind (``k`` clamped, budget,
            fallback from the exact path, an unconverged eigenvalue under the verdict).
        trace, trace_stderr: ``tr H`` — exact (the eigenvalues' sum, stderr 0) or estimated from the
            density's probes (Hutchinson: ``n · vᵀHv`` over the unit Rademacher probes).
        params: the names of the parameters analysed (the Hessian's block of those); empty when all are.
        operator: ``"hessian"``, ``"ggn"`` or ``"fisher"`` — what the eigenvalues are of.
        ggn_lambda_min: with the Hessian, at a critical point with negative curvature, ``λ_min`` of
            the Gauss–Newton ``G`` over the same parameters (``None`` otherwise): ``H = G + R`` with ``G ⪰ 0`` for a
            convex loss, so when ``G`` has no negative eigenvalue the negative curvature comes from
            ``R``, the network's second derivatives weighted by the residuals
            (:mod:`trainlab.curvature.gauss_newton`); ``ggn_converged`` tells whether it converged.
    """

    verdict: str
    loss: float
    grad_norm: float
    eigenvalues: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    n_positive: float
    n_negative: float
    n_flat: float
    minimum_ratio: float
    minimum_ratio_stderr: float
    minimum_ratio_bounds: tuple[float, float]
    negative_curvature: bool
    grad_tol: float
    eig_tol: float
    eig_floor: float
    flat_threshold: float
    method: str
    n_params: int
    n_hvp: int
    seconds: float
    escape_directions: torch.Tensor
    escape_eigenvalues: torch.Tensor
    notes: list[str] = field(default_factory=list)
    trace: float = math.nan
    trace_stderr: float = math.nan
    params: list[str] = field(default_factory=list)
    operator: str = "hessian"
    ggn_lambda_min: float | None = None
    ggn_converged: bool = True
    negative_share_bounds: tuple[float, float] = (math.nan, math.nan)

    @property
    def exact(self) -> bool:
        """Whether every eigenvalue was computed in float64 from the dense Hessian (``method="dense"``)."""
        return self.method == "dense"

    @property
    def certain(self) -> bool:
        """Whether the verdict rests on converged eigenvalues only (see the module docstring)."""
        return _doubt(self) is None

    def __str__(self) -> str:
        lam = self.eigenvalues
        doubt = _doubt(self)
        lines = [
            f"verdict: {self.verdict.replace('_', ' ')}" + (f" (uncertain: {doubt})" if doubt else ""),
            f"  loss {self.loss:.6g}, gradient norm {self.grad_norm:.3g} (critical below {self.grad_tol:g})",
            f"  {TITLES[self.operator][0]} ({self.n_params:,} parameters{_block(self)},"
            f" {'exact' if self.exact else 'Lanczos'}):"
            f" λ_max {float(lam[0]):.4g}{_unconverged(self, 0)}, λ_min {float(lam[-1]):.4g}{_unconverged(self, -1)}",
            *_split(self),
            *_counts(self),
            f"  negative curvature: {'yes' if self.negative_curvature else 'no'}"
            + (f" — {len(self.escape_eigenvalues)} escape direction(s), trainlab.curvature.escape can step along them"
               + (" (with force=True: this is not a critical point)" if self.verdict == "not_critical" else "")
               if len(self.escape_eigenvalues) else ""),
            f"  cost: {self.n_hvp:,} {TITLES[self.operator][2]}"
            + (" (the Gauss–Newton G's for the split included)" if self.ggn_lambda_min is not None else "")
            + f", {self.seconds:.2f} s",
        ]
        return "\n".join(lines + [f"  note: {note}" for note in self.notes])

    __repr__ = __str__


def _counts(d: Diagnosis) -> list[str]:
    """The eigenvalue counts and the minimum ratio, with only the digits the analysis stands behind.

    Where every eigenvalue was computed they are exact. On the Lanczos path what is known is the
    number of Ritz values found beyond the flat band (certain: they interlace with the spectrum)
    and the density's bounds on the shares above and below it: its point counts split the cells
    straddling the cluster at zero arbitrarily, and a standard error over the probes is printed
    only where those bounds are no wider than ±2 of it."""
    band = f"|λ| ≤ {d.flat_threshold:.3g}"
    low, high = d.minimum_ratio_bounds
    if d.minimum_ratio_stderr == 0 and low == high:  # the exact path, or every eigenvalue computed
        return [f"  eigenvalues: {d.n_positive:,.0f} positive, {d.n_negative:,.0f} negative, {d.n_flat:,.0f} flat"
                f" ({band})", f"  minimum ratio (share of positive eigenvalues): {d.minimum_ratio:.3f}"]
    above = int((d.eigenvalues > d.flat_threshold).sum())
    below = int((d.eigenvalues < -d.flat_threshold).sum())
    n_low, n_high = d.negative_share_bounds
    resolved = Share(d.minimum_ratio, d.minimum_ratio_stderr, (low, high)).resolved
    ratio = (f"≈ {d.minimum_ratio:.3f} ± {d.minimum_ratio_stderr:.3f} (standard error over the density's probes;"
             f" bounds {low:.3f}–{high:.3f})" if resolved else
             f"between {low:.3f} and {high:.3f} (the quadrature's resolution: its cells straddling the flat band"
             " cannot be split)")
    return [f"  eigenvalues (of {d.n_params:,}): Lanczos found {above:,} above the flat band ({band}) and {below:,}"
            f" below it; the density puts {low:.3f}–{high:.3f} of the spectrum above the band and"
            f" {n_low:.3f}–{n_high:.3f} below it",
            f"  minimum ratio (share of positive eigenvalues): {ratio}"]


def _block(d: Diagnosis) -> str:
    """Which parameters, when not all: the first few names."""
    if not d.params:
        return ""
    shown = ", ".join(d.params[:4]) + (f", … ({len(d.params) - 4} more)" if len(d.params) > 4 else "")
    return f" of {shown}"


def _split(d: Diagnosis) -> list[str]:
    """The line setting λ_min of H beside that of G, and what follows from it."""
    if d.ggn_lambda_min is None:
        return []
    g = d.ggn_lambda_min
    unsure = "" if d.ggn_converged else " (not converged)"
    if g >= -d.flat_threshold:
        source = ("G has none, so the negative curvature comes from R = H − G: the network's second derivatives"
                  " weighted by the residuals (the architecture at this point), not from the loss")
    else:
        source = ("G has negative curvature too: the loss is not convex in the outputs, so part of it comes from the"
                  " loss itself")
    return [f"  λ_min of H {float(d.eigenvalues[-1]):.4g}, of the Gauss–Newton G {g:.4g}{unsure}: {source}"]


def _unconverged(d: Diagnosis, i: int) -> str:
    if bool(d.converged[i]):
        return ""
    return f" (not converged: residual {float(d.residuals[i]):.2g})"


def _doubt(d: Diagnosis) -> str | None:
    """Why the verdict is uncertain, or ``None``: a claim that *no* eigenvalue is positive (or
    negative) resting on an extreme that has not converged. Found signs are proof (interlacing)."""
    if d.verdict == "not_critical":
        return None
    reasons = []
    if float(d.eigenvalues[0]) <= d.flat_threshold and not bool(d.converged[0]):
        reasons.append("λ_max has not converged, so positive curvature may be missed")
    if float(d.eigenvalues[-1]) >= -d.flat_threshold and not bool(d.converged[-1]):
        reasons.append("λ_min has not converged, so negative curvature may be missed")
    if not reasons:
        return None
    return "; ".join(reasons)


def exact_products(n: int) -> int:
    """Hessian-vector products of the exact path for ``n`` parameters: one per parameter and a
    few (:data:`TIMING_PRODUCTS`) to time them. Cost: none."""
    return n + min(n, TIMING_PRODUCTS)


def verdict(grad_norm: float, has_positive: bool, has_negative: bool, grad_tol: float) -> str:
    """The lecture's classification (see the module docstring).

    Parameters: ``grad_norm`` ``‖∇L‖``; ``has_positive`` / ``has_negative`` whether some eigenvalue
    lies above / below the flat threshold; ``grad_tol`` the gradient norm below which the point
    is critical. Returns one of :data:`VERDICTS`. Cost: none.
    """
    if grad_norm > grad_tol:
        return "not_critical"
    if has_negative and has_positive:
        return "saddle"
    if has_positive:
        return "local_minimum"
    if has_negative:
        return "local_maximum"
    return "degenerate"


@dataclass
class _Spectrum:
    """What either path found, before the verdict."""

    values: torch.Tensor  # descending
    residuals: torch.Tensor
    converged: torch.Tensor
    threshold: float
    counts: tuple[int, int, int]  # positive, negative, flat
    ratio: float
    stderr: float
    bounds: tuple[float, float]
    directions: torch.Tensor
    escape_values: torch.Tensor
    grad_norm: float
    loss: float
    n_hvp: int
    trace: float = math.nan
    trace_stderr: float = math.nan
    ggn: tuple[float, bool] | None = None  # λ_min of G and whether it converged
    ggn_hvp: int = 0
    negative_bounds: tuple[float, float] | None = None  # None: the counts are exact
    notes: tuple[str, ...] = ()  # the operator's (attention on the math kernel), said once in the diagnosis


class _OverBudget(ConfigError):
    """The exact path would take longer, or more memory, than allowed; ``estimate`` says how much,
    ``n_hvp`` how many products measuring it took."""

    def __init__(self, estimate: str, n_hvp: int):
        super().__init__(f"{estimate}; use method='lanczos' (extreme eigenvalues and estimated counts), or raise"
                         " max_seconds")
        self.estimate, self.n_hvp = estimate, n_hvp


def diagnose(model: nn.Module, loss_fn: LossFn | None, data: Batch | Iterable[Any], grad_tol: float = 1e-3,
             eig_tol: float = 1e-6, eig_floor: float = 1e-10, method: str = "auto", dense_max_params: int = 2_000,
             k: int = 10, tol: float = 1e-6, probes: int = 10, steps: int = 80, seed: int = 0,
             mode: str = "eval", distributed: bool | None = None, group: object = None, *,
             max_hvp: int | None = None, max_seconds: float | None = 60.0, batch_loss: BatchLoss | None = None,
             max_samples: int | None = None, max_graph_bytes: float = DEFAULT_GRAPH_BYTES,
             progress: bool = True, params: ParamSpec = None, operator: str = "hessian") -> Diagnosis:
    """Loss, gradient norm, Hessian spectrum, verdict and minimum ratio at the current parameters.

    Parameters:
        model, loss_fn, data: the loss ``L = Σ_b (n_b/N) loss_fn(model(x_b), y_b)`` over the batches
            of ``data`` (an ``(x, y)`` pair, a list of batches, a DataLoader or a Dataset).
        grad_tol: the point is critical when ``‖∇L‖ ≤ grad_tol`` (1e-3).
        eig_tol, eig_floor: an eigenvalue is flat when ``|λ| ≤ max(eig_tol · max|λ|, eig_floor)``
            (1e-6, 1e-10).
        method: ``"auto"`` (default: ``"dense"`` up to ``dense_max_params`` parameters, else
            ``"lanczos"``), ``"dense"`` (exact, float64) or ``"lanczos"`` (estimates).
        dense_max_params: the automatic choice's threshold (2,000).
        k: eigenpairs at each end on the Lanczos path (10); clamped to ``ceil(n/2)`` with a note
            (then every eigenvalue is computed and the counts are exact; with ``method="auto"`` the
            exact path is taken instead, within its budget).
        tol: Lanczos convergence tolerance, relative to ``max|λ|`` (1e-6).
        probes, steps: the density's probes and Lanczos steps per probe (10, 80).
        seed: seed of the random vectors (0); mode: ``"eval"`` (default) or ``"train"``.
        distributed, group: ``torch.distributed`` sharding (see :class:`HessianOperator`).
        max_hvp: a total budget of Hessian-vector products (``None``: the Lanczos default of 5,000
            plus ``probes × steps``). On the Lanczos path at most half goes to the density
            (fewer probes/steps, with a note), the rest to the extreme eigenvalues; the exact path
            needs ``n + 5`` (more than the budget: ``"auto"`` takes the Lanczos path, ``"dense"`` refuses).
        max_seconds: the exact path's time budget (60 s; ``None``: none), estimated before it runs
            along with its memory (``3 n² × 8`` bytes, at most :data:`DENSE_MAX_BYTES`). Over budget,
            ``method="dense"`` raises :class:`~trainlab.errors.ConfigError` naming the estimate;
            ``"auto"`` takes the Lanczos path with a note.
        batch_loss: ``(model, batch) -> mean loss`` for batches that are not ``(x, y)`` pairs;
            then ``loss_fn`` may be ``None``.
        max_samples: analyse only the first ``max_samples`` samples of ``data`` (``None``: all).
        max_graph_bytes: bound on the kept autograd graph (2 GiB); beyond, products stream the batches.
        progress: a progress bar (counting products) when the call runs longer than 2 s (True).
        params: the parameters analysed, the others held fixed (``None``: all; tensors, submodules,
            names or a filter ``(name, parameter) -> bool``): the verdict of that block of ``H``.
        operator: ``"hessian"`` (default), ``"ggn"`` or ``"fisher"``: whose spectrum decides. With the
            Hessian, at a critical point with negative curvature (a saddle or a maximum) and with
            ``loss_fn`` given, ``λ_min`` of the Gauss–Newton ``G`` is computed too (exact path: ``n``
            more products; Lanczos: at most :data:`GGN_MAX_HVP`) and reported beside ``λ_min`` of
            ``H`` (``ggn_lambda_min``).

    Returns:
        :class:`Diagnosis` — ``verdict``, ``loss``, ``grad_norm``, ``eigenvalues`` (descending),
        ``residuals``, ``converged``, ``n_positive``/``n_negative``/``n_flat`` (adding up to
        ``n_params``), ``minimum_ratio`` with ``_stderr`` and ``_bounds``, ``negative_curvature``,
        ``escape_directions``, ``escape_eigenvalues``, the thresholds, ``method``, ``n_params``,
        ``n_hvp``, ``seconds``, ``notes``.

    Cost:
        one gradient, then exact path: ``n`` products (plus :data:`TIMING_PRODUCTS` to time them) and an ``O(n³)``
        ``eigh``; Lanczos path: the extremes (typically a few hundred products) and
        ``probes × steps`` for the density (800), all ≤ ``max_hvp``; ``mode="train"`` one more
        gradient.
    """
    _check(method, grad_tol, eig_tol, eig_floor, max_seconds)
    check_max_hvp(max_hvp)
    check_counts(probes=probes, steps=steps)  # up front, not after the extremes' products
    check_plan(probes, steps, max_hvp)
    timer, notes = Timer(), []
    operator_class(operator)
    selected = selected_names(model, params)  # by name: the exact path analyses a float64 copy
    parameters = dict(model.named_parameters())
    n = sum(parameters[name].numel() for name in selected)
    whole = len(selected) == sum(p.requires_grad for p in model.parameters())
    options = dict(batch_loss=batch_loss, max_samples=max_samples, max_graph_bytes=max_graph_bytes, params=selected,
                   operator=operator)
    chosen = method
    if method == "auto":
        chosen = "dense" if n <= dense_max_params else "lanczos"
        if chosen == "lanczos" and 2 * k >= n:
            # k at each end covers the whole spectrum: Lanczos would need n products and a growing
            # basis; the exact path needs the same n products and one eigh (its budget still applies)
            notes.append(f"k={k:,} at each end covers all {n:,} eigenvalues: the exact path is used")
            chosen = "dense"
    needed = exact_products(n)
    if chosen == "dense" and max_hvp is not None and max_hvp < needed:
        reason = (f"the exact path needs {needed:,} Hessian-vector products (one per parameter, and a few to time"
                  f" them), more than max_hvp={max_hvp:,}")
        if method == "dense":
            raise ConfigError(f"{reason}; use method='lanczos' (extreme eigenvalues and estimated counts), or raise"
                              " max_hvp")
        notes.append(f"{reason}: the Lanczos path is used instead")
        chosen = "lanczos"
    spectrum, spent = None, 0  # spent: products of an exact path that turned out over budget
    if chosen == "dense":
        try:
            spectrum = _exact(model, loss_fn, data, mode, distributed, group, options, eig_tol, eig_floor,
                              max_seconds, progress, grad_tol)
        except _OverBudget as refusal:
            if method == "dense":
                raise
            notes.append(f"{refusal.estimate}: the Lanczos path is used instead")
            chosen, spent = "lanczos", refusal.n_hvp
    if spectrum is None:
        k, clamped = clamp_k(k, "both", n)
        notes += clamped
        with analysis_mode(model, mode):
            op = _operator(model, loss_fn, data, mode, distributed, group, **options)
            budget = None if max_hvp is None else max_hvp - spent
            with progress_bar.counting(op, budget, "diagnose", progress):
                spectrum = _estimated(op, k, tol, probes, steps, seed, eig_tol, eig_floor, budget, notes)
            spectrum.notes = tuple(op.notes)
            del op  # its graph goes before the Gauss–Newton's is built
        if _wants_split(spectrum, operator, loss_fn, grad_tol):
            found = _ggn_minimum(model, loss_fn, data, mode, distributed, group, options, tol, seed,
                                 None if budget is None else budget - spectrum.n_hvp, progress)
            if found is not None:
                spectrum.ggn, spectrum.ggn_hvp = found[:2], found[2]
    s = spectrum
    notes += [note for note in s.notes if note not in notes]
    like = next(p for p in model.parameters() if p.requires_grad)  # the caller's device and dtype
    has_positive, has_negative = bool(s.values[0] > s.threshold), bool(s.values[-1] < -s.threshold)
    d = Diagnosis(
        verdict=verdict(s.grad_norm, has_positive, has_negative, grad_tol), loss=s.loss, grad_norm=s.grad_norm,
        eigenvalues=s.values.double().cpu(), residuals=s.residuals.double().cpu(), converged=s.converged.cpu(),
        n_positive=float(s.counts[0]), n_negative=float(s.counts[1]), n_flat=float(s.counts[2]),
        minimum_ratio=s.ratio, minimum_ratio_stderr=s.stderr, minimum_ratio_bounds=s.bounds,
        negative_curvature=has_negative, grad_tol=grad_tol, eig_tol=eig_tol, eig_floor=eig_floor,
        flat_threshold=s.threshold, method=chosen, n_params=n, n_hvp=spent + s.n_hvp + s.ggn_hvp,
        seconds=timer.seconds,
        escape_directions=s.directions.to(device=like.device, dtype=like.dtype),
        escape_eigenvalues=s.escape_values.double().cpu(), notes=notes, trace=s.trace, trace_stderr=s.trace_stderr,
        params=[] if whole else selected, operator=operator, ggn_lambda_min=s.ggn[0] if s.ggn else None,
        ggn_converged=s.ggn[1] if s.ggn else True,
        negative_share_bounds=s.negative_bounds or (s.counts[1] / n,) * 2)
    doubt = _doubt(d)
    if doubt:
        notes.append(f"the verdict {d.verdict.replace('_', ' ')!r} rests on an unconverged eigenvalue: {doubt};"
                     " raise max_hvp, or use method='dense' for a small model")
    return d


def _check(method: str, grad_tol: float, eig_tol: float, eig_floor: float, max_seconds: float | None) -> None:
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is not allowed; use one of: {', '.join(METHODS)}")
    for name, value in (("grad_tol", grad_tol), ("eig_tol", eig_tol), ("eig_floor", eig_floor)):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and value >= 0):
            raise ConfigError(f"{name}={value!r} is not allowed; expected a number >= 0")
    if max_seconds is not None and (isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float))
                                    or not max_seconds > 0):
        raise ConfigError(f"max_seconds={max_seconds!r} is not allowed; expected a number > 0, or None for no limit")


def _exact(model: nn.Module, loss_fn: LossFn | None, data: Any, mode: str, distributed: bool | None, group: object,
           options: dict[str, Any], eig_tol: float, eig_floor: float, max_seconds: float | None,
           progress: bool, grad_tol: float) -> _Spectrum:
    """Every eigenvalue of the dense float64 Hessian, after checking the time and memory it takes."""
    target = _float64_copy(model)
    with analysis_mode(target, mode):
        op = _operator(target, loss_fn, _float64_batches(data, options), mode, distributed, group, **options)
        grad_norm = float(op.gradient().norm())
        _check_dense_budget(op, max_seconds)
        with progress_bar.counting(op, op.n, "diagnose (exact)", progress):
            values, vectors = torch.linalg.eigh(dense(op).cpu())
        n = len(values)
        values, vectors = values.flip(0), vectors.flip(1).T
        threshold = _threshold(values, eig_tol, eig_floor)
        counts = (int((values > threshold).sum()), int((values < -threshold).sum()))
        counts = (*counts, n - sum(counts))
        negative = values < -threshold
        ratio = counts[0] / n
        spectrum = _Spectrum(values, torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.bool), threshold,
                             counts, ratio, 0.0, (ratio, ratio), vectors[negative], values[negative], grad_norm,
                             op.loss, op.n_hvp, float(values.sum()), 0.0, notes=tuple(op.notes))
        del op
        if _wants_split(spectrum, options["operator"], loss_fn, grad_tol):
            g_op = _operator(target, loss_fn, _float64_batches(data, options), mode, distributed, group,
                             **{**options, "operator": "ggn"})
            with progress_bar.counting(g_op, g_op.n, "diagnose (exact G)", progress):
                spectrum.ggn = (float(torch.linalg.eigvalsh(dense(g_op).cpu())[0]), True)
            spectrum.ggn_hvp = g_op.n_hvp
    return spectrum


def _float64_batches(data: Any, options: dict[str, Any]) -> list[Any]:
    """The batches analysed, in float64: a list (the operator holds them all anyway), so data
    without a length is refused or bounded by ``max_samples`` here (:func:`first_samples`)."""
    return [map_tensors(b, _to_float64) for b in first_samples(data, options["max_samples"], options["batch_loss"])]


def _wants_split(spectrum: _Spectrum, operator: str, loss_fn: LossFn | None, grad_tol: float) -> bool:
    """Set λ_min of G beside the Hessian's at a critical point with negative curvature (a saddle or
    a maximum), when the loss is ``loss_fn(outputs, targets)``, which the Gauss–Newton needs."""
    return (operator == "hessian" and loss_fn is not None and spectrum.grad_norm <= grad_tol
            and bool(spectrum.values[-1] < -spectrum.threshold))


def _ggn_minimum(model: nn.Module, loss_fn: LossFn, data: Any, mode: str, distributed: bool | None, group: object,
                 options: dict[str, Any], tol: float, seed: int, budget: int | None, progress: bool
                 ) -> tuple[float, bool, int] | None:
    """``λ_min`` of the Gauss–Newton ``G`` by Lanczos within ``min(budget, GGN_MAX_HVP)`` products,
    whether it converged, and the products spent (``None`` when the budget allows no product)."""
    most = GGN_MAX_HVP if budget is None else min(budget, GGN_MAX_HVP)
    if most < 2:
        return None
    with analysis_mode(model, mode):
        op = _operator(model, loss_fn, data, mode, distributed, group, **{**options, "operator": "ggn"})
        with progress_bar.counting(op, most, "diagnose (G)", progress):
            low = eigs_of(op, 1, "smallest", tol, most, seed=seed)
    return float(low.values[-1]), bool(low.converged[-1]), op.n_hvp


def _check_dense_budget(op: HessianOperator, max_seconds: float | None) -> None:
    """Estimate the exact path — ``n`` products timed on a few, ``eigh`` timed on a small matrix
    and scaled by ``n³``, memory ``3 n² × 8`` bytes — and raise :class:`_OverBudget` past the limits."""
    n = op.n
    memory = 3 * n * n * 8
    seconds = _seconds_per_product(op) * n + _eigh_seconds(n)
    # every rank must take the same decision, or the others would wait for its products forever
    seconds = float(op.broadcast(torch.tensor([seconds], dtype=torch.float64, device=op.device))[0])
    over = []
    if max_seconds is not None and seconds > max_seconds:
        over.append(f"max_seconds={max_seconds:g}")
    if memory > DENSE_MAX_BYTES:
        over.append(f"the memory limit DENSE_MAX_BYTES={_size(DENSE_MAX_BYTES)}")
    if over:
        raise _OverBudget(f"the exact path on {n:,} parameters would take about {seconds:,.0f} s ({n:,} Hessian-vector"
                          f" products and an eigendecomposition) and {_size(memory)}, above {' and '.join(over)}",
                          op.n_hvp)


def _seconds_per_product(op: HessianOperator) -> float:
    """Wall time of one product, measured on a block of a few, as the exact path makes them,
    after one product to warm up (the first pays one-off costs, 100× a product on a small MLP)."""
    rows = torch.eye(min(op.n, TIMING_PRODUCTS), op.n, device=op.device, dtype=op.dtype)
    op.matmat(rows[:1])
    start = time.perf_counter()
    op.matmat(rows[1:] if len(rows) > 1 else rows)
    if op.device.type == "cuda":
        torch.cuda.synchronize(op.device)
    return (time.perf_counter() - start) / max(len(rows) - 1, 1)


def _eigh_seconds(n: int) -> float:
    """``eigh`` of an ``n × n`` float64 matrix, estimated from a small one: ``O(n³)``."""
    m = min(n, 256)
    A = torch.randn(m, m, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    torch.linalg.eigh(A + A.T)
    return (time.perf_counter() - start) * (n / m) ** 3


def _estimated(op: HessianOperator, k: int, tol: float, probes: int, steps: int, seed: int, eig_tol: float,
               eig_floor: float, max_hvp: int | None, notes: list[str]) -> _Spectrum:
    """Extreme eigenpairs by Lanczos and the counts from the density — or, when ``k`` covers the
    spectrum and every eigenvalue was found, the counts from the eigenvalues themselves."""
    check_max_hvp(max_hvp, 2)
    n = op.n
    grad_norm = float(op.gradient().norm())
    whole = 2 * k >= n
    reserve = 0
    if max_hvp is not None and not (whole and max_hvp >= n):
        planned = math.prod(fit_budget(probes, min(steps, n), None)[:2])
        reserve = min(planned, max(1, max_hvp // 2))  # at most half the budget to the density
    found = eigs_of(op, k, "both", tol, None if max_hvp is None else max_hvp - reserve, seed=seed)
    notes += [f"eigenvalues: {note}" for note in found.notes if note not in op.notes]  # op's: said once, bare
    values = found.values
    threshold = _threshold(values, eig_tol, eig_floor)
    negative = (values < -threshold) & found.converged
    directions, escape_values = found.vectors[negative], values[negative]
    if len(values) == n:
        notes.append(f"k covers the whole spectrum: all {n:,} eigenvalues were computed and the counts are exact")
        counts = (int((values > threshold).sum()), int((values < -threshold).sum()))
        counts = (*counts, n - sum(counts))
        ratio = counts[0] / n
        return _Spectrum(values, found.residuals, found.converged, threshold, counts, ratio, 0.0, (ratio, ratio),
                         directions, escape_values, grad_norm, op.loss, op.n_hvp, float(values.sum()), 0.0)
    spectrum = density_of(op, probes, steps, seed=seed, max_hvp=None if max_hvp is None else max_hvp - found.n_hvp)
    notes += [f"density: {note}" for note in spectrum.notes if note not in op.notes]
    positive, below = spectrum.fraction(low=threshold), spectrum.fraction(high=-threshold)
    # a converged extreme inside the flat band says that side is empty, as the verdict does, whatever
    # share the density's cells put there: they straddle the cluster at zero and spill across the band
    none = Share(0.0, 0.0, (0.0, 0.0))
    if bool(found.converged[-1]) and float(values[-1]) >= -threshold:
        below = none
    if bool(found.converged[0]) and float(values[0]) <= threshold:
        positive = none
    # Ritz values interlace with the eigenvalues, so those found beyond the threshold are certain
    proven = (int((values > threshold).sum()), int((values < -threshold).sum()))
    shares = _reconciled((positive.value, below.value), proven, n)
    ratio = shares[0] / n
    low, high = max(positive.bounds[0], proven[0] / n), min(positive.bounds[1], 1 - proven[1] / n)
    bounds = (min(low, ratio), max(high, ratio))
    n_low, n_high = max(below.bounds[0], proven[1] / n), min(below.bounds[1], 1 - proven[0] / n)
    negative_bounds = (min(n_low, shares[1] / n), max(n_high, shares[1] / n))
    return _Spectrum(values, found.residuals, found.converged, threshold, _whole(shares, n), ratio,
                     positive.stderr, bounds, directions, escape_values, grad_norm, op.loss, op.n_hvp,
                     *spectrum.trace(n), negative_bounds=negative_bounds)


def _reconciled(shares: tuple[float, float], proven: tuple[int, int], n: int) -> tuple[float, float, float]:
    """Counts ``(positive, negative, flat)`` adding up to ``n``: the density's shares × ``n``,
    raised to the ``proven`` lower bounds, any excess over ``n`` taken back from the slack above
    those bounds in proportion."""
    counts = [max(share * n, float(least)) for share, least in zip(shares, proven)]
    over = sum(counts) - n
    if over > 0:
        slack = [c - least for c, least in zip(counts, proven)]
        total = sum(slack)
        counts = [c - over * s / total if total > 0 else float(least) for c, s, least in zip(counts, slack, proven)]
    counts = [max(c, float(least)) for c, least in zip(counts, proven)]
    return counts[0], counts[1], max(n - counts[0] - counts[1], 0.0)


def _whole(counts: tuple[float, ...], n: int) -> tuple[int, ...]:
    """Non-negative counts summing to ``n`` rounded to whole numbers that still sum to ``n``:
    floors, then one more for the largest remainders."""
    scale = n / sum(counts) if sum(counts) > 0 else 0.0
    exact = [c * scale for c in counts] if scale else [n / len(counts)] * len(counts)
    floors = [math.floor(c) for c in exact]
    order = sorted(range(len(exact)), key=lambda i: exact[i] - floors[i], reverse=True)
    for i in order[:n - sum(floors)]:
        floors[i] += 1
    return tuple(floors)


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


def _to_float64(t: torch.Tensor) -> torch.Tensor:
    return t.double() if t.is_floating_point() else t
