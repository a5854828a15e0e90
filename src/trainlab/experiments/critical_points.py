"""Lecture part 1 — training stalls at a critical point: local minimum or saddle point?

Two demonstrations:

* the toy network ``ŷ = w₁w₂x`` on the one sample ``x = 1, y = 1``, ``L = (1 − w₁w₂)²``: its
  error surface, the saddle at the origin (gradient 0, Hessian ``[[0, −2], [−2, 0]]``), and the
  escape step along the eigenvector of ``λ = −2``;
* the *minimum ratio* experiment: exact critical points of a small network at several loss
  levels (see :func:`minimum_ratio` for how they are found), and the exact Hessian spectrum
  at each: which are true local minima, and does the share of negative eigenvalues grow
  with the loss (Dauphin et al. 2014)? The points are built from narrower networks padded with
  zero units, and that construction decides much of the answer; the claims say what it implies.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torch.func import functional_call, grad, hessian

import trainlab as tl
from trainlab.experiments.result import Config, Result, stages
from trainlab.experiments.statistics import interval, seeds

NAME = "critical_points"
TITLE = "Critical points: local minimum or saddle point?"
WIDTH = 4  # hidden units of the network analysed (3 in a quick run)
#: Newton stops at this gradient norm: GRAD_TOL (1e-8) with three digits to spare.
NEWTON_TOL = 1e-11
WEIGHT_DECAY = 1e-3  # α in the analysed loss, cross-entropy + (α/2)‖θ‖²
GRAD_TOL = 1e-8  # ‖∇L‖ below which the point counts as critical (float64, Newton-polished)
EIG_TOL = 1e-9  # |λ| / max|λ| below which an eigenvalue is flat (exact float64 spectra)


class TwoWeights(nn.Module):
    """``ŷ = w₁ w₂ x``, both weights starting at 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.w2 = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w1 * self.w2 * x


def squared_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean (target − out)²``: the toy network's loss, ``L = (1 − w₁w₂)²`` at ``x = y = 1``.

    Parameters:
        out, target: tensors of the same shape (no defaults).

    Returns:
        A scalar tensor.
    """
    return ((target - out) ** 2).mean()


def run(config: Config | None = None) -> Result:
    """Lecture part 1, critical points: :func:`toy`, then :func:`minimum_ratio`.

    Parameters:
        config: a :class:`~trainlab.experiments.result.Config` (default ``None``: ``Config()``). ``quick``
            uses 100 digits instead of 300, a network of 3 hidden units instead of 4 and 150 L-BFGS
            iterations instead of 300; ``seed`` is the first of the 5 seeds, which pick the narrower
            networks' initial weights (the digits are always the first of the seed-0 split); ``progress``
            shows a bar over the 2 stages.

    Returns:
        A :class:`~trainlab.experiments.result.Result` named ``"critical_points"`` (``seconds`` set) with the
        tables ``toy_hessian`` and ``minimum_ratio``; the figures ``toy_surface`` and ``minimum_ratio``;
        the claims of both stages (three for the toy; three for the minimum ratio, decided over the seeds
        with at least one minimum and one saddle, or 3 critical points, among their points); and a note on
        the setting.
    """
    config = config or Config()
    result = Result(NAME, TITLE, config=config)
    with stages(result, 2) as bar:
        toy(result)
        bar.update()
        minimum_ratio(result, config)
        bar.update()
    return result


def toy(result: Result) -> None:
    """The toy network ``ŷ = w₁w₂x`` at ``w = (0, 0)`` on the one sample ``x = y = 1``, ``L = (1 − w₁w₂)²``.

    Lecture claims: the gradient vanishes and ``H = [[0, −2], [−2, 0]]`` (λ = ±2), so the origin is a saddle
    point; a step along the eigenvector u of λ = −2 lowers the loss, ``L(θ′ + u) ≈ L(θ′) + ½ λ‖u‖²``
    (taken with :func:`trainlab.escape`).

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).

    Returns:
        ``None``. Adds three claims, the table ``toy_hessian`` (the Hessian, its eigenvalues and
        eigenvectors) and the figure ``toy_surface`` (the surface, the eigenvectors, the point after escape).
    """
    model = TwoWeights()
    data = (torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    g = tl.curvature.gradient(model, squared_error, data)
    H = tl.curvature.hessian(model, squared_error, data)
    values, vectors = torch.linalg.eigh(H)
    analytic = torch.tensor([[0.0, -2.0], [-2.0, 0.0]], dtype=torch.float64)
    result.claim("At w = (0, 0) the gradient vanishes and the Hessian is [[0, −2], [−2, 0]], eigenvalues ±2.",
                 bool(g.abs().max() < 1e-12 and torch.allclose(H, analytic, atol=1e-12)),
                 f"gradient {g.tolist()}, Hessian {H.tolist()}, eigenvalues {values.tolist()}",
                 "H = [[0, −2], [−2, 0]], λ = ±2")
    d = tl.diagnose(model, squared_error, data)
    result.claim("The origin is a saddle point, not a local minimum.", d.verdict == "saddle",
                 f"verdict {d.verdict}: {d.n_positive:.0f} positive, {d.n_negative:.0f} negative eigenvalue(s)",
                 "saddle: one positive and one negative eigenvalue")
    u = vectors[:, 0]  # eigenvector of λ = −2
    e = tl.escape(model, squared_error, data, d)
    w_after = torch.stack([model.w1.detach(), model.w2.detach()])
    alignment = abs(float(w_after @ u)) / float(w_after.norm())
    result.claim("Moving along the eigenvector u of λ = −2, u ∝ (1, 1), lowers the loss.",
                 e.accepted and e.loss_after < e.loss_before and alignment > 0.999,
                 f"step {e.step:.3g} along u = {[round(float(c), 4) for c in u]}: loss {e.loss_before:.4g} →"
                 f" {e.loss_after:.4g} (Taylor ½λ‖u‖²: {e.predicted_change:.4g}); |cos(step, u)| = {alignment:.4f}",
                 "L(θ′ + u) ≈ L(θ′) + ½ λ‖u‖² < L(θ′)")
    result.table("toy_hessian", ["", "∂/∂w₁", "∂/∂w₂", "eigenvalue", "eigenvector"],
                 [["∂/∂w₁", H[0, 0], H[0, 1], values[0], str([round(float(c), 4) for c in vectors[:, 0]])],
                  ["∂/∂w₂", H[1, 0], H[1, 1], values[1], str([round(float(c), 4) for c in vectors[:, 1]])]])
    result.figure("toy_surface", "The toy network's error surface L = (1 − w₁w₂)²",
                  _toy_figure(values, vectors, w_after, e))


def _toy_figure(values: torch.Tensor, vectors: torch.Tensor, w_after: torch.Tensor, e: tl.curvature.Escape) -> Figure:
    w = np.linspace(-2, 2, 201)
    W1, W2 = np.meshgrid(w, w, indexing="ij")
    L = (1 - W1 * W2) ** 2
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    ax = fig.add_subplot()
    filled = ax.contourf(W1, W2, np.log10(L + 1e-3), levels=30, cmap="viridis")
    fig.colorbar(filled, ax=ax, label="log₁₀ L")
    for sign in (1, -1):  # the valleys w₁w₂ = 1
        branch = np.linspace(0.5, 2, 100) * sign
        ax.plot(branch, 1 / branch, "w--", lw=1.2, label="minima: the valleys w₁w₂ = 1" if sign > 0 else None)
    ax.plot([0], [0], "r*", ms=14, label="saddle (0, 0), gradient 0")
    for lam, vec, colour in zip(values.tolist(), vectors.T, ("orange", "cyan")):
        ax.annotate("", xy=(0.9 * float(vec[0]), 0.9 * float(vec[1])), xytext=(0, 0),
                    arrowprops=dict(arrowstyle="->", color=colour, lw=2))
        ax.plot([], [], "-", color=colour, lw=2, label=f"eigenvector of λ = {lam:+.0f}".replace("-", "−")
                + (" (lowers the loss)" if lam < 0 else ""))
    ax.plot(*w_after.numpy(), "wo", ms=7, label=f"after escape (loss {e.loss_after:.3g})")
    ax.set(xlabel="w₁", ylabel="w₂", xlim=(-2, 2), ylim=(-2, 2), aspect="equal")
    ax.legend(loc="lower left", fontsize=9)
    return fig


def _small_digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training digits (float64) without their constant pixels, whose weights would
    add exactly flat directions to every Hessian."""
    train, _ = tl.data.load_digits()
    x, y = train.tensors[0][:n].double(), train.tensors[1][:n]
    return x[:, x.std(0) > 0], y


def regularised(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy plus ``(α/2)‖θ‖²``: without it a network's minima can sit at infinity
    (the loss keeps falling as weights grow); with it every critical point is finite."""
    params = list(model.parameters())
    return lambda out, target: F.cross_entropy(out, target) + 0.5 * WEIGHT_DECAY * sum((p ** 2).sum() for p in params)


def _flat_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`regularised` as a function of the flat parameter vector (``parameters_to_vector`` order)."""
    named = list(model.named_parameters())
    sizes = [p.numel() for _, p in named]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts = torch.split(theta, sizes)
        params = {name: part.view(p.shape) for (name, p), part in zip(named, parts)}
        return F.cross_entropy(functional_call(model, params, (x,)), y) + 0.5 * WEIGHT_DECAY * (theta ** 2).sum()

    return loss


def _minimise(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, iterations: int,
              newton: int = 50) -> None:
    """L-BFGS on the loss, then Newton steps with the absolute Hessian, ``θ ← θ − t |H|⁻¹∇L``
    (``|H| = Q|Λ|Qᵀ``, so every step descends; ``t`` halved until the loss falls enough), until
    ``‖∇L‖ < NEWTON_TOL`` (1e-11): near a minimum this is Newton's method and converges quadratically."""
    params = list(model.parameters())
    opt = torch.optim.LBFGS(params, lr=1, max_iter=iterations, tolerance_grad=1e-12, tolerance_change=1e-16,
                            history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    f = _flat_loss(model, x, y)
    gradient, curvature = grad(f), hessian(f)
    theta = torch.nn.utils.parameters_to_vector(params).detach()
    value = float(f(theta))
    for _ in range(newton):
        g = gradient(theta)
        if float(g.norm()) < NEWTON_TOL:
            break
        lam, q = torch.linalg.eigh(curvature(theta))
        step = q @ ((q.T @ g) / lam.abs().clamp(min=1e-10 * float(lam.abs().max())))
        slope, t = float(g @ step), 1.0
        while t > 1e-12:
            trial = theta - t * step
            trial_value = float(f(trial))
            if trial_value <= value - 1e-4 * t * slope:
                break
            t /= 2
        if t <= 1e-12:
            break
        theta, value = trial, trial_value
    torch.nn.utils.vector_to_parameters(theta, params)


def _embed(small: nn.Sequential, width: int) -> nn.Sequential:
    """``small`` (an MLP with fewer hidden units) as a ``width``-unit MLP whose extra units have
    all weights zero. A critical point of ``small`` becomes a critical point of the wider
    network: every gradient of a zero unit is a product with another zero (the lecture's toy
    saddle, ``ŷ = w₂ w₁ x`` at the origin, once per extra unit)."""
    k = small[1].out_features
    big = tl.nn.mlp(small[1].in_features, [width], small[3].out_features, activation="tanh").double()
    with torch.no_grad():
        for p in big.parameters():
            p.zero_()
        big[1].weight[:k], big[1].bias[:k] = small[1].weight, small[1].bias
        big[3].weight[:, :k], big[3].bias[:] = small[3].weight, small[3].bias
    return big


def minimum_ratio(result: Result, config: Config) -> None:
    """Critical points at several loss levels, and their exact spectra.

    Minimising ``½‖∇L‖²`` from points along training mostly stops where ``H∇L = 0`` but
    ``∇L ≠ 0`` — not a critical point (tried first; see the notes). Critical points are found
    instead as minima of narrower networks (L-BFGS, then Newton, :func:`_minimise`), embedded in
    the wide one by adding zero units (:func:`_embed`); the wide network's own minima complete the
    set. Per seed (5, ``config.seed + i``) one start for each width ``k = 1 … WIDTH``.

    The construction implies most of the picture, and the claims say so: a zero unit is the
    toy's saddle ``ŷ = w₂w₁x`` at the origin once more — its incoming and outgoing weights meet
    in a Hessian block ``[[αI, M], [Mᵀ, αI]]`` with ``M`` the correlation of the inputs with the
    output residuals, so it adds one negative eigenvalue ``α − s`` for each singular value ``s > α``
    of ``M``, at most ``C − 1 = 9`` — and a narrower network fits worse. So the padded points are
    saddles with higher losses, and the more zero units, the more negative directions and the
    higher the loss. What can fail: a padded point that is not a saddle, a full-width point that is
    not a minimum or lies above a padded one.
    """
    width = 3 if config.quick else WIDTH
    x, y = _small_digits(100 if config.quick else 300)
    seed_list = seeds(config)
    rows = []
    for seed in seed_list:
        for k in range(1, width + 1):
            small = tl.nn.mlp(x.shape[1], [k], 10, activation="tanh", seed=seed * 1000 + 10 * k).double()
            _minimise(small, regularised(small), x, y, 150 if config.quick else 300)
            model = _embed(small, width)
            d = tl.diagnose(model, regularised(model), (x, y), grad_tol=GRAD_TOL, eig_tol=EIG_TOL, method="dense")
            rows.append([k, seed, d.loss, d.grad_norm, d.n_positive, d.n_negative, d.n_flat, d.minimum_ratio,
                         d.n_negative / d.n_params, d.verdict])
    result.table("minimum_ratio", ["units trained", "seed", "training loss", "‖∇L‖", "positive", "negative", "flat",
                                   "minimum ratio", "negative share", "verdict"], rows)
    critical = [r for r in rows if r[3] <= GRAD_TOL]
    per_seed = {s: [r for r in rows if r[1] == s] for s in seed_list}
    exact = [sum(r[3] <= GRAD_TOL for r in points) / len(points) for points in per_seed.values()]
    result.decide(f"The critical points found are exact: ‖∇L‖ ≤ {GRAD_TOL:g} at more than 80 % of them (share per"
                  " seed).", interval(exact),
                  f"{len(critical)} of {len(rows)} points over {len(seed_list)} seeds; largest ‖∇L‖"
                  f" {max(r[3] for r in rows):.1e}", threshold=0.8)
    margins, minima_n, saddles_n = [], 0, 0
    for points in per_seed.values():
        minima = [r[2] for r in points if r[3] <= GRAD_TOL and r[9] == "local_minimum"]
        saddles = [r[2] for r in points if r[3] <= GRAD_TOL and r[9] == "saddle"]
        minima_n, saddles_n = minima_n + len(minima), saddles_n + len(saddles)
        if minima and saddles:
            margins.append(min(saddles) - max(minima))
    padded = [r for r in critical if r[0] < width]
    per_zero_unit = sorted({round(r[5] / (width - r[0]), 2) for r in padded})
    losses = [(r[2], r[9]) for r in critical]
    lecture = ("MNIST: minimum ratio 0–0.55 and 'I never saw a real local minimum'; points at loss ≈ 0.088 had the"
               " lowest ratios")
    text = ("Critical points with a high loss are saddles; the true local minima have the lowest losses — largely by"
            " construction here: the saddles are narrower networks' minima padded with zero units, each zero unit"
            " the toy's saddle ŷ = w₂w₁x once more, and with fewer working units they fit worse. Tested: the"
            " lowest saddle lies above the highest minimum (per seed).")
    evidence = (f"{saddles_n} saddles, losses {min((l for l, v in losses if v == 'saddle'), default=math.nan):.3f}–"
                f"{max((l for l, v in losses if v == 'saddle'), default=math.nan):.3f}; {minima_n} local minima (the"
                f" full-width points), losses {min((l for l, v in losses if v == 'local_minimum'), default=math.nan):.3f}–"
                f"{max((l for l, v in losses if v == 'local_minimum'), default=math.nan):.3f}")
    if len(margins) >= 2:
        result.decide(text, interval(margins), evidence + f"; lowest saddle − highest minimum per seed:"
                      f" {', '.join(f'{m:+.3f}' for m in margins)}", lecture)
    else:
        result.claim(text + f" (undecided: {len(margins)} seed(s) with both a minimum and a saddle)", False,
                     evidence, lecture)
    rhos = []
    for points in per_seed.values():
        good = [r for r in points if r[3] <= GRAD_TOL]
        if len(good) >= 3:
            rhos.append(_spearman([r[2] for r in good], [r[8] for r in good]))
    text = ("The share of negative eigenvalues grows with the training loss (Dauphin et al. 2014) — by construction"
            " here: each zero unit adds the same negative eigenvalues (one per singular value above α of the"
            " input–residual correlation, at most C − 1 = 9) and removes capacity, so fewer units means both more"
            " negative directions and a higher loss. Tested: Spearman correlation of loss and negative share per"
            " seed > 0.")
    evidence = (f"negative eigenvalues per zero unit at the padded points: {', '.join(f'{v:g}' for v in per_zero_unit)};"
                f" Spearman correlation per seed: {', '.join(f'{r:+.2f}' for r in rhos)}")
    dauphin = "Dauphin et al.: the fraction of negative eigenvalues grows with the training error"
    if len(rhos) >= 2:
        result.decide(text, interval(rhos), evidence, dauphin)
    else:
        result.claim(text + f" (undecided: {len(rhos)} seed(s) with 3 critical points)", False, evidence, dauphin)
    result.notes.append(
        f"Setting: an MLP {x.shape[1]}-{width}-10 (tanh) on {len(y)} digits, loss cross-entropy + {WEIGHT_DECAY:g}/2 ‖θ‖²"
        f" (float64). Critical points: for each of {len(seed_list)} seeds, minima of networks with 1…{width} hidden"
        " units (L-BFGS, then Newton with the absolute Hessian) embedded with zero units, so the narrower the"
        " network, the higher the loss and the more negative directions: the construction, not the search, orders"
        " the points. Minimising ‖∇L‖² from points along training (the lecture's 'special method') was tried"
        " first; on this problem it stops at points where H∇L = 0 but ∇L ≠ 0, which are not critical, so it"
        " cannot supply the points honestly.")
    result.figure("minimum_ratio", f"Training loss against minimum ratio at the critical points found"
                  f" ({len(seed_list)} seeds)", _scatter(rows))


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _scatter(rows: list[list]) -> Figure:
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    styles = {"saddle": ("tab:blue", "o"), "local_minimum": ("tab:red", "*"), "not_critical": ("lightgray", "x"),
              "local_maximum": ("black", "v"), "degenerate": ("tab:green", "s")}
    for verdict, (colour, marker) in styles.items():
        pts = [(r[7], r[2]) for r in rows if r[9] == verdict]
        if pts:
            ax.scatter(*zip(*pts), c=colour, marker=marker, s=50, label=f"{verdict.replace('_', ' ')} ({len(pts)})")
    ax.set(xlabel="minimum ratio = #positive eigenvalues / #eigenvalues", ylabel="training loss")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    return fig
