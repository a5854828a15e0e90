"""Lecture part 1 — training stalls at a critical point: local minimum or saddle point?

Two demonstrations:

* the toy network ``ŷ = w₁w₂x`` on the one sample ``x = 1, y = 1``, ``L = (1 − w₁w₂)²``: its
  error surface, the saddle at the origin (gradient 0, Hessian ``[[0, −2], [−2, 0]]``), and the
  escape step along the eigenvector of ``λ = −2``;
* the *minimum ratio* experiment: exact critical points of a small network at many loss
  levels (see :func:`minimum_ratio` for how they are found), and the exact Hessian spectrum
  at each: which are true local minima, and does the share of negative eigenvalues grow
  with the loss (Dauphin et al. 2014)?
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

import trainlab as tl
from trainlab.experiments.result import Config, Result, stages

NAME = "critical_points"
TITLE = "Critical points: local minimum or saddle point?"
WIDTH = 4  # hidden units of the network analysed
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
            uses 150 digits instead of 300, 2 starts per width instead of 5 and 300 L-BFGS iterations
            instead of 1,000; ``seed`` picks the narrower networks' initial weights (the digits are always
            the first of the seed-0 split); ``progress`` shows a bar over the 2 stages.

    Returns:
        A :class:`~trainlab.experiments.result.Result` named ``"critical_points"`` (``seconds`` set) with the
        tables ``toy_hessian`` and ``minimum_ratio``; the figures ``toy_surface`` and ``minimum_ratio``;
        the claims of both stages (three for the toy; two or three for the minimum ratio, the last only
        when at least 3 critical points were found); and a note on the setting.
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
    fig = Figure(figsize=(5.6, 5.0), layout="constrained")
    ax = fig.add_subplot()
    filled = ax.contourf(W1, W2, np.log10(L + 1e-3), levels=30, cmap="viridis")
    fig.colorbar(filled, ax=ax, label="log₁₀ L")
    for sign in (1, -1):  # the valleys w₁w₂ = 1
        branch = np.linspace(0.5, 2, 100) * sign
        ax.plot(branch, 1 / branch, "w--", lw=1)
    ax.plot([0], [0], "r*", ms=14, label="saddle (0, 0)")
    for lam, vec, colour in zip(values.tolist(), vectors.T, ("orange", "cyan")):
        ax.annotate("", xy=(0.9 * float(vec[0]), 0.9 * float(vec[1])), xytext=(0, 0),
                    arrowprops=dict(arrowstyle="->", color=colour, lw=2))
        ax.text(1.0 * float(vec[0]), 1.0 * float(vec[1]), f"λ = {lam:+.0f}", color=colour, fontsize=9)
    ax.plot(*w_after.numpy(), "wo", ms=7, label=f"after escape (loss {e.loss_after:.3g})")
    ax.set(xlabel="w₁", ylabel="w₂", xlim=(-2, 2), ylim=(-2, 2), aspect="equal")
    ax.legend(loc="lower left", fontsize=8)
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


def _minimise(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, iterations: int) -> None:
    """L-BFGS on the loss, then Newton steps ``θ ← θ − H⁻¹∇L`` (exact Hessian) while they lower
    ``‖∇L‖``: near a minimum Newton converges quadratically, to ``‖∇L‖ ≈ 1e-12``."""
    params = list(model.parameters())
    opt = torch.optim.LBFGS(params, lr=1, max_iter=iterations, tolerance_grad=1e-12, tolerance_change=1e-16,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    for _ in range(10):
        g = tl.curvature.gradient(model, loss_fn, (x, y))
        if float(g.norm()) < 1e-11:
            return
        theta = torch.nn.utils.parameters_to_vector(params).detach()
        step = torch.linalg.lstsq(tl.curvature.hessian(model, loss_fn, (x, y)), g.unsqueeze(1)).solution[:, 0]
        torch.nn.utils.vector_to_parameters(theta - step, params)
        if float(tl.curvature.gradient(model, loss_fn, (x, y)).norm()) >= float(g.norm()):
            torch.nn.utils.vector_to_parameters(theta, params)
            return


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
    """Critical points at many loss levels, and their exact spectra.

    Minimising ``½‖∇L‖²`` from points along training mostly stops where ``H∇L = 0`` but
    ``∇L ≠ 0`` — not a critical point (tried first; see the notes). Critical points are found
    instead as minima of narrower networks (L-BFGS, then Newton), embedded in the wide one by
    adding zero units; the wide network's own minima complete the set.
    """
    width, starts = WIDTH, (2 if config.quick else 5)
    x, y = _small_digits(150 if config.quick else 300)
    rows = []
    for k in range(1, width + 1):
        for start in range(starts):
            small = tl.nn.mlp(x.shape[1], [k], 10, activation="tanh", seed=config.seed * 1000 + 10 * k + start).double()
            _minimise(small, regularised(small), x, y, 300 if config.quick else 1000)
            model = _embed(small, width)
            d = tl.diagnose(model, regularised(model), (x, y), grad_tol=GRAD_TOL, eig_tol=EIG_TOL, method="dense")
            rows.append([k, start, d.loss, d.grad_norm, d.n_positive, d.n_negative, d.n_flat, d.minimum_ratio,
                         d.n_negative / d.n_params, d.verdict])
    result.table("minimum_ratio", ["units trained", "start", "training loss", "‖∇L‖", "positive", "negative", "flat",
                                   "minimum ratio", "negative share", "verdict"], rows)
    critical = [r for r in rows if r[3] <= GRAD_TOL]
    minima = [r for r in critical if r[9] == "local_minimum"]
    saddles = [r for r in critical if r[9] == "saddle"]
    result.claim(f"The critical points found are exact: ‖∇L‖ ≤ {GRAD_TOL:g}.", len(critical) >= 0.8 * len(rows),
                 f"{len(critical)} of {len(rows)} points; largest ‖∇L‖ {max(r[3] for r in rows):.1e}")
    result.claim("Critical points with a high loss are saddles; the true local minima have the lowest losses.",
                 bool(minima) and bool(saddles) and max(r[2] for r in minima) < min(r[2] for r in saddles),
                 f"{len(saddles)} saddles, losses {min((r[2] for r in saddles), default=math.nan):.3f}–"
                 f"{max((r[2] for r in saddles), default=math.nan):.3f}; {len(minima)} local minima, losses "
                 f"{min((r[2] for r in minima), default=math.nan):.3f}–{max((r[2] for r in minima), default=math.nan):.3f}",
                 "MNIST: minimum ratio 0–0.55 and 'I never saw a real local minimum'; points at loss ≈ 0.088 had the"
                 " lowest ratios")
    if len(critical) >= 3:
        rho = _spearman([r[2] for r in critical], [r[8] for r in critical])
        result.claim("The share of negative eigenvalues grows with the training loss (Dauphin et al. 2014).",
                     rho > 0, f"Spearman correlation of loss and negative share over {len(critical)} critical points:"
                     f" {rho:+.2f}", "Dauphin et al.: the fraction of negative eigenvalues grows with the training error")
    result.notes.append(
        f"Setting: an MLP {x.shape[1]}-{width}-10 (tanh) on {len(y)} digits, loss cross-entropy + {WEIGHT_DECAY:g}/2 ‖θ‖²"
        " (float64). Critical points: minima of networks with 1…{w} hidden units embedded with zero units, so the"
        " narrower the network, the higher the loss. Minimising ‖∇L‖² from points along training (the lecture's"
        " 'special method') was tried first; on this problem it stops at points where H∇L = 0 but ∇L ≠ 0, which"
        " are not critical, so it cannot supply the points honestly.".replace("{w}", str(width)))
    result.figure("minimum_ratio", "Training loss against minimum ratio at the critical points found",
                  _scatter(rows))


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _scatter(rows: list[list]) -> Figure:
    fig = Figure(figsize=(5.6, 4.2), layout="constrained")
    ax = fig.add_subplot()
    styles = {"saddle": ("tab:blue", "o"), "local_minimum": ("tab:red", "*"), "not_critical": ("lightgray", "x"),
              "local_maximum": ("black", "v"), "degenerate": ("tab:green", "s")}
    for verdict, (colour, marker) in styles.items():
        pts = [(r[7], r[2]) for r in rows if r[9] == verdict]
        if pts:
            ax.scatter(*zip(*pts), c=colour, marker=marker, s=50, label=f"{verdict.replace('_', ' ')} ({len(pts)})")
    ax.set(xlabel="minimum ratio = #positive eigenvalues / #eigenvalues", ylabel="training loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig
