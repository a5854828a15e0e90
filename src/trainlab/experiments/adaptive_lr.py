"""Lecture part 3 — adaptive learning rates and schedules, on the lecture's own convex surface.

Linear regression ``ŷ = b + w·x`` on the ten points of the lecture, ``L(b, w) = Σ (y − ŷ)²``,
from ``(b, w) = (−120, −4)``. The surface is a long narrow valley (Hessian eigenvalues 5.6
and 1.7 million), so:

* gradient descent with a small η crawls and has not arrived after 100,000 updates; with the
  largest stable η it zig-zags across the valley and still crawls along it;
* dividing by σ = the root mean square of all past gradients, with a constant η, reaches
  the valley and then *bursts* sideways (σ has shrunk along the flat direction);
* decaying η as η/√(t+1) — together that is Adagrad — removes the bursts; RMSProp and Adam at a
  constant η do not settle either: RMSProp ends on a steady oscillation of the order of η, Adam
  reaches the optimum and then bursts as η/σ does;
* warm-up schedules, and warm-up by its mechanism (Gilmer et al. 2021; Kalra & Barkeshli 2024):
  a network whose sharpness at initialisation is far above 2/η diverges under full-batch gradient
  descent at that η; a linear warm-up lets the sharpness fall while η rises, and it trains.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from matplotlib.figure import Figure

import trainlab as tl
from trainlab.experiments import sharpness
from trainlab.experiments.result import Config, Result, one_thread, stages
from trainlab.experiments.statistics import interval, paired, seeds as seeds_of

NAME = "adaptive_lr"
TITLE = "Adaptive learning rate and scheduling on the lecture's error surface"
X = torch.tensor([338.0, 333.0, 328.0, 207.0, 226.0, 25.0, 179.0, 60.0, 208.0, 606.0], dtype=torch.float64)
Y = torch.tensor([640.0, 633.0, 619.0, 393.0, 428.0, 27.0, 193.0, 66.0, 226.0, 1591.0], dtype=torch.float64)
START = (-120.0, -4.0)


def loss(b: torch.Tensor | float, w: torch.Tensor | float) -> torch.Tensor:
    """``Σ (y − (b + w x))²`` — for scalars, or grids of ``b, w``."""
    b, w = torch.as_tensor(b, dtype=torch.float64), torch.as_tensor(w, dtype=torch.float64)
    return ((Y - b[..., None] - w[..., None] * X) ** 2).sum(-1)


def gradient(p: torch.Tensor) -> torch.Tensor:
    """The exact gradient of :func:`loss`: ``∂L/∂b = −2 Σ r``, ``∂L/∂w = −2 Σ r x`` with ``r = y − b − w x``.

    Parameters:
        p: a ``(2,)`` float64 tensor ``(b, w)`` (no default).

    Returns:
        A ``(2,)`` tensor ``(∂L/∂b, ∂L/∂w)``.
    """
    r = Y - p[0] - p[1] * X
    return torch.stack([-2 * r.sum(), -2 * (r * X).sum()])


def optimum() -> torch.Tensor:
    """The minimiser ``(b*, w*)`` of :func:`loss` on the lecture's ten points, by least squares.

    Parameters: none.

    Returns:
        A ``(2,)`` float64 tensor ``(b*, w*)``.
    """
    design = torch.stack([torch.ones_like(X), X], 1)
    return torch.linalg.lstsq(design, Y.unsqueeze(1)).solution[:, 0]


def run(config: Config | None = None) -> Result:
    """Lecture part 3: :func:`valley`, then :func:`schedules`, then :func:`warmup`.

    Parameters:
        config: a :class:`~trainlab.experiments.result.Config` (default ``None``: ``Config()``). ``quick``
            shortens the descents (5,000 updates, 10,000 at η = 1e-7 and for Adam, instead of 100,000 at
            η = 1e-7 and 20,000 for the others) and the warm-up runs (250 digits and 200 updates instead of 1,000 and 400); ``seed`` picks
            the digits split and, with ``seed + i`` for i = 0 … 4, the warm-up networks' weights; ``progress``
            shows a bar over the 3 stages.

    Returns:
        A :class:`~trainlab.experiments.result.Result` named ``"adaptive_lr"`` (``seconds`` set) with the
        tables ``descent`` and ``warmup``; the figures ``valley``, ``distance``, ``schedules``,
        ``transformer_schedule``, ``warmup_sharpness`` and ``warmup_loss``; and ten claims: η = 1e-7 has not
        arrived; a large η zig-zags; η/σ bursts; Adagrad removes the bursts; RMSProp at a constant η does not
        settle; Adam at a constant η bursts; the Transformer schedule's shape; and three on warm-up, decided
        over 5 seeds (without it η = 1 diverges, with it the run trains; the sharpness falls during the
        warm-up; it ends lower than the largest constant η that starts stable).
    """
    config = config or Config()
    result = Result(NAME, TITLE, config=config)
    with stages(result, 3) as bar, one_thread():
        valley(result, config)
        bar.update()
        schedules(result)
        bar.update()
        warmup(result, config)
        bar.update()
    return result


def descend(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], steps: int,
            schedule: Callable[[torch.optim.Optimizer], object] | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The path of ``(b, w)`` (``steps + 1`` points from :data:`START`) and the loss at each point, with the
    exact gradient; a path that leaves the floating-point range ends at its last finite point."""
    p = torch.tensor(START, dtype=torch.float64, requires_grad=True)
    opt = make([p])
    sched = schedule(opt) if schedule else None
    path = torch.empty(steps + 1, 2, dtype=torch.float64)
    path[0] = p.detach()
    for t in range(steps):
        with torch.no_grad():
            p.grad = gradient(p)
        opt.step()
        if sched is not None:
            sched.step()
        path[t + 1] = p.detach()
    finite = torch.isfinite(path).all(1)
    if not bool(finite.all()):
        path = path[:int(torch.argmin(finite.int()))]
    return path, loss(path[:, 0], path[:, 1]).numpy()


def _largest_spike(losses: np.ndarray, after: int) -> float:
    """The largest rise of the loss above its running minimum, after update ``after``."""
    running = np.minimum.accumulate(losses)
    return float((losses[after:] / running[after:]).max()) if len(losses) > after else 1.0


def _first(mask: np.ndarray) -> int | None:
    return int(np.argmax(mask)) if mask.any() else None


def valley(result: Result, config: Config) -> None:
    """Gradient descent, η/σ, Adagrad, RMSProp and Adam from ``(−120, −4)`` on the lecture's valley (exact gradient).

    Lecture claims: with η = 1e-7 gradient descent has not arrived after 100,000 updates; at the largest
    stable η (here 1.9/λ_max) it zig-zags across the valley; dividing by σ, the RMS of all past gradients,
    at a constant η reaches the valley and then bursts; decaying η as η/√(t+1) (Adagrad) removes the bursts.
    Measured beside them: RMSProp (η = 0.05) and Adam (η = 0.5) at a constant η do not settle — RMSProp ends
    on a steady oscillation, Adam reaches the optimum and then bursts. All deterministic (no random draw).

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``quick``: 5,000 updates, 10,000 at η = 1e-7 and for Adam (else 100,000 at η = 1e-7 and 20,000
            for the others).

    Returns:
        ``None``. Adds to ``result`` the table ``descent`` (per method: updates, final b and w, distance to
        the optimum, final loss, first update within 1 of the optimum, largest loss spike afterwards, the
        largest distance over the last 10 % of the updates), six claims and the figures ``valley`` (paths on
        the surface) and ``distance`` (distance to the optimum per update).
    """
    best = optimum()
    design = torch.stack([torch.ones_like(X), X], 1)
    values, vectors = torch.linalg.eigh(2 * design.T @ design)  # the Hessian, constant for this loss
    lam_max, steep = float(values[-1]), vectors[:, -1]
    # quick: 5,000 updates, but 10,000 at η = 1e-7 and for Adam, whose first burst comes after update 7,000
    long, short = (10_000, 5_000) if config.quick else (100_000, 20_000)
    runs = {
        "gradient descent, η = 1e-7": (lambda ps: tl.optim.SGD(ps, lr=1e-7), None, long),
        f"gradient descent, η = {1.9 / lam_max:.2e} (1.9/λ_max)": (lambda ps: tl.optim.SGD(ps, lr=1.9 / lam_max), None,
                                                                   short),
        "η/σ, σ = RMS of past gradients, η = 1": (lambda ps: tl.optim.Adagrad(ps, lr=1.0),
                                                    lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: math.sqrt(t + 1)),
                                                    short),
        "Adagrad: η/√(t+1) ÷ σ, η = 10": (lambda ps: tl.optim.Adagrad(ps, lr=10.0), None, short),
        "RMSProp, η = 0.05, α = 0.9": (lambda ps: tl.optim.RMSProp(ps, lr=0.05, alpha=0.9), None, short),
        "Adam, η = 0.5": (lambda ps: tl.optim.Adam(ps, lr=0.5), None, long if config.quick else short),
    }
    paths, rows, spans = {}, [], {}
    for name, (make, schedule, steps) in runs.items():
        path, losses = descend(make, steps, schedule)
        distance = (path - best).norm(dim=1).numpy()
        reached = _first(distance < 1.0)
        spike = _largest_spike(losses, reached) if reached is not None else 1.0
        tail = distance[-max(1, len(distance) // 10):]
        paths[name], spans[name] = path, (distance, losses)
        rows.append([name, len(path) - 1, float(path[-1, 0]), float(path[-1, 1]), float(distance[-1]), losses[-1],
                     reached, spike, float(tail.max())])
    result.table("descent", ["method", "updates", "final b", "final w", "distance to optimum", "final loss",
                             "first update within 1 of the optimum", "largest loss spike afterwards (×)",
                             "largest distance over the last 10 % of the updates"], rows)
    (small, large, rms, ada, rmsprop, adam) = rows
    result.claim(f"Gradient descent with η = 1e-7 has not arrived after {small[1]:,} updates.", small[4] > 1,
                 f"still {small[4]:.1f} from the optimum ({float(best[0]):.1f}, {float(best[1]):.3f})",
                 "η = 10⁻⁷: not arrived after 100,000 updates")
    zigzag = _zigzag(paths[large[0]], best, steep)
    result.claim("With a large η gradient descent zig-zags across the valley and still crawls along it.",
                 zigzag > 0.9 and large[4] > 1,
                 f"it crosses the valley floor on {100 * zigzag:.0f} % of the first 200 updates; after"
                 f" {large[1]:,} updates still {large[4]:.1f} from the optimum",
                 "η = 10⁻²: oscillates (on the lecture's scaling)")
    result.claim("Dividing by σ (RMS of all past gradients) with a constant η reaches the valley, then bursts.",
                 rms[6] is not None and rms[7] > 10,
                 f"within 1 of the optimum at update {rms[6]}, then the loss jumps to {rms[7]:.0f}× its lowest value",
                 "σ shrinks along the flat direction until the steps 'burst' sideways")
    result.claim("Decaying η as η/√(t+1) (Adagrad) removes the bursts and converges.",
                 ada[6] is not None and ada[7] < 1.5 and ada[4] < 0.1,
                 f"largest rise afterwards {ada[7]:.2f}×; final distance {ada[4]:.1e}", "learning-rate decay fixes it")
    _rmsprop_claim(result, rmsprop, *spans[rmsprop[0]])
    _adam_claim(result, adam, *spans[adam[0]])
    _valley_figures(result, paths, best)


def _rmsprop_claim(result: Result, row: list, distance: np.ndarray, losses: np.ndarray) -> None:
    """RMSProp at a constant η: near the optimum g/σ does not shrink with g, so the steps stay of size ~η."""
    eta = 0.05
    tail = distance[-len(distance) // 10:]
    low = float(loss(*optimum()))
    excess = float(losses[-len(losses) // 10:].max() / low - 1)
    result.claim(f"RMSProp at a constant η = {eta:g} reaches the valley but does not converge: it keeps oscillating"
                 " across it, at a distance of the order of η from the optimum (near the optimum g/σ"
                 " does not shrink with g, so neither do the steps).",
                 row[6] is not None and float(tail.min()) > eta / 10 and float(tail.max()) < 10 * eta,
                 f"within 1 of the optimum at update {row[6]}; over the last {len(tail):,} updates the distance stays"
                 f" between {float(tail.min()):.3g} and {float(tail.max()):.3g} (η/10 = {eta / 10:g}, 10η ="
                 f" {10 * eta:g}); the loss there is up to {100 * excess:.2f} % above its minimum {low:,.1f}",
                 "RMSProp: σᵗ = √(α(σᵗ⁻¹)² + (1−α)(gᵗ)²) — the lecture adds learning-rate decay to settle")


def _adam_claim(result: Result, row: list, distance: np.ndarray, losses: np.ndarray) -> None:
    """Adam at a constant η: at the optimum v decays, m/√v̂ is no longer small, and the steps burst."""
    arrived = _first(distance < 1e-6)
    spike = _largest_spike(losses, arrived) if arrived is not None else 1.0
    first_burst = None
    if arrived is not None:
        above = _first(losses[arrived:] > 1.5 * np.minimum.accumulate(losses)[arrived:])
        first_burst = None if above is None else arrived + above
    wide = float(distance[arrived:].max()) if arrived is not None else math.nan
    result.claim("Adam at a constant η = 0.5 reaches the optimum and then bursts, as η/σ does: its σ (β₂ = 0.999)"
                 " shrinks with the gradient until the steps jump away from the optimum.",
                 arrived is not None and spike > 1.5,
                 (f"within 10⁻⁶ of the optimum at update {arrived:,}; afterwards the loss jumps to {spike:.2f}× its"
                  f" lowest value (first above 1.5× at update {first_burst:,})" if first_burst is not None else
                  f"within 10⁻⁶ of the optimum at update {arrived}; afterwards the loss rises to at most {spike:.2f}×"
                  " its lowest value" if arrived is not None else "never within 10⁻⁶ of the optimum")
                 + (f" and the distance to {wide:.2g}; at the last of {row[1]:,} updates it is {row[4]:.2g}"
                    " (wherever the last burst happened to stop)" if arrived is not None else ""),
                 "σ shrinks along the flat direction until the steps 'burst' sideways; Adam = RMSProp + momentum")


def _zigzag(path: torch.Tensor, best: torch.Tensor, steep: torch.Tensor) -> float:
    """Share of updates that cross the valley floor: the coordinate of ``p − p*`` along the
    steepest direction (the Hessian's top eigenvector) changes sign."""
    d = np.sign(((path[:201] - best) @ steep).numpy())
    return float((d[1:] * d[:-1] < 0).mean())


#: (colour, line style, width, z-order) per method, so no path hides another: wide translucent lines under
#: narrow dashed or dotted ones where paths overlap.
STYLES = [("tab:blue", "-", 5.0, 2), ("tab:cyan", "--", 1.2, 4), ("tab:red", "-", 1.0, 3), ("tab:green", "-", 4.0, 2),
          ("tab:purple", "--", 1.5, 5), ("tab:orange", ":", 2.2, 6)]


def _tex(name: str) -> str:
    """A method's name for a figure: λ_max as matplotlib mathtext."""
    return name.replace("λ_max", r"$\lambda_{\max}$")


def _valley_figures(result: Result, paths: dict[str, torch.Tensor], best: torch.Tensor) -> None:
    b, w = torch.meshgrid(torch.linspace(-200, -100, 200, dtype=torch.float64),
                          torch.linspace(-5, 5, 200, dtype=torch.float64), indexing="ij")
    fig = Figure(figsize=(6.4, 6.6), layout="constrained")
    ax = fig.add_subplot()
    surface = ax.contourf(b.numpy(), w.numpy(), torch.log10(loss(b, w)).numpy(), levels=40, cmap="Greys")
    fig.colorbar(surface, ax=ax, label="log₁₀ L(b, w)")
    for (name, path), (colour, style, width, z) in zip(paths.items(), STYLES):
        ax.plot(path[:, 0].numpy(), path[:, 1].numpy(), style, lw=width, color=colour, label=_tex(name), zorder=z,
                alpha=0.45 if width >= 4 else 0.95)
    ax.plot([START[0]], [START[1]], "ko", ms=7, label="start (−120, −4)", zorder=7)
    ax.plot([float(best[0])], [float(best[1])], "w*", ms=15, markeredgecolor="k",
            label=f"optimum ({float(best[0]):.1f}, {float(best[1]):.2f})", zorder=7)
    ax.set(xlim=(-200, -100), ylim=(-5, 5), xlabel="b", ylabel="w")
    ax.tick_params(labelsize=9)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8.5)
    result.figure("valley", "Paths on the lecture's error surface (b ∈ [−200, −100], w ∈ [−5, 5]); the two"
                  " gradient-descent paths climb the same line at b ≈ −120, the adaptive ones share the valley floor",
                  fig)
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for (name, path), (colour, style, width, z) in zip(paths.items(), STYLES):
        ax.loglog(np.arange(1, len(path) + 1), (path - best).norm(dim=1).numpy() + 1e-14, style, color=colour,
                  lw=min(width, 2.5), label=_tex(name), zorder=z, alpha=0.6 if width >= 4 else 0.95)
    ax.set(xlabel="update", ylabel="distance to the optimum")
    ax.tick_params(labelsize=9)
    ax.legend(fontsize=8.5, loc="lower left")
    ax.grid(alpha=0.3)
    result.figure("distance", "Distance to the optimum per update (10⁻¹⁴ added, so reaching it stays on the log scale)",
                  fig)


def schedules(result: Result) -> None:
    """Three warm-up schedules of :mod:`trainlab.optim.schedules`, and a check of the Transformer schedule.

    Formula (Vaswani et al.): ``ηₜ = d⁻⁰·⁵ · min(t⁻⁰·⁵, t · w⁻¹·⁵)``; at d = 512, w = 4,000 it peaks at
    update 4,000 and is √(1/2) of the peak at update 8,000.

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).

    Returns:
        ``None``. Adds the figures ``schedules`` (``linear_warmup``, ``warmup_cosine``, ``warmup_inverse_sqrt``
        over 1,000 updates, warm-up 100) and ``transformer_schedule``, and one claim.
    """
    shown = {"linear_warmup": dict(warmup_steps=100), "warmup_cosine": dict(warmup_steps=100, total_steps=1000),
             "warmup_inverse_sqrt": dict(warmup_steps=100)}
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for (name, kwargs), style in zip(shown.items(), ("-", "--", ":")):
        ax.plot(tl.optim.schedules.trace(name, 1000, lr=1.0, **kwargs), style, lw=1.8, label=name)
    ax.set(xlabel="update t", ylabel=r"$\eta_t/\eta$")
    ax.tick_params(labelsize=9)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    result.figure("schedules", "Warm-up schedules (trainlab.optim.schedules), warm-up over 100 updates", fig)
    transformer = tl.optim.schedules.trace("warmup_inverse_sqrt", 8000, lr=1.0, warmup_steps=4000, d_model=512)
    peak = int(np.argmax(transformer))
    result.claim("The Transformer schedule d⁻⁰·⁵·min(t⁻⁰·⁵, t·w⁻¹·⁵) rises linearly for w updates, then decays"
                 " as t⁻⁰·⁵.", peak == 3999 and abs(transformer[7999] / transformer[3999] - math.sqrt(4000 / 8000)) < 1e-9,
                 f"d = 512, w = 4,000: peak {transformer[peak]:.3e} at update {peak + 1}; at 8,000 it is"
                 f" {transformer[7999] / transformer[3999]:.4f} of the peak (√(1/2) = 0.7071)",
                 "Vaswani et al.: lrate = d⁻⁰·⁵ · min(step⁻⁰·⁵, step · warmup⁻¹·⁵)")
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(range(1, len(transformer) + 1), transformer, label=r"$d^{-0.5}\,\min(t^{-0.5},\ t\,w^{-1.5})$")
    ax.axvline(4000, color="gray", lw=0.8, ls="--", label="end of the warm-up, t = w = 4,000")
    ax.set(xlabel="update t", ylabel="learning rate")
    ax.tick_params(labelsize=9)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    result.figure("transformer_schedule", "The Transformer schedule d⁻⁰·⁵·min(t⁻⁰·⁵, t·w⁻¹·⁵), d = 512, w = 4,000",
                  fig)


#: The warm-up runs: learning rate, weight scale (N(0, 1/fan_in): √3 × PyTorch's), warm-up length, and per
#: mode the digits, updates and readings (every).
# 150 warm-up updates, not 100: after 100 the runs overshoot to ηₜ·λ_max 6–9 and which seed diverges
# depends on the CPU's rounding (seed 0 did under ATEN_CPU_CAPABILITY=default); after 150 they stay below 4.5
WARM_LR, WARM_SCALE, WARM_UPDATES = 1.0, 1.0, 150
WARM_FULL = dict(samples=1000, updates=400, every=10)
WARM_QUICK = dict(samples=250, updates=200, every=20)
CAP = 1e3  # a run whose loss exceeds CAP × its initial loss is stopped as diverged


def warmup(result: Result, config: Config) -> None:
    """Warm-up by its mechanism: full-batch gradient descent at η = 1 on a sharply initialised tanh MLP
    (64-64-64-10, weights N(0, 1/fan_in), ``½‖f(x) − y‖²``), with a linear warm-up over 150 updates, without
    one, and at the constant η = 2/λ₀ of each network (the largest that starts stable); 5 seeds.

    Lecture claim: warm-up helps when the first steps are large (ResNet: 0.01 for ~400 iterations, then 0.1).
    Mechanism (Gilmer et al. 2021; Kalra & Barkeshli 2024): at initialisation η·λ_max ≈ 10, far above the 2
    gradient descent tolerates; without warm-up the run diverges, while a warm-up lets λ_max fall as η rises.

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``seed`` picks the digits split and, with ``seed + i`` (i = 0 … 4), the weights; ``quick``:
            250 digits, 200 updates, a reading every 20 (else 1,000 digits, 400 updates, every 10).

    Returns:
        ``None``. Adds the table ``warmup`` (per setting: η, runs diverged, final loss, λ_max at the start, at
        the end of the warm-up and at the end, largest ηₜ·λ_max), three claims decided over the 5 seeds, and the
        figures ``warmup_sharpness`` and ``warmup_loss``.
    """
    setting = WARM_QUICK if config.quick else WARM_FULL
    samples, updates, every = setting["samples"], setting["updates"], setting["every"]
    data = sharpness.digits(samples, config.seed)
    seeds = seeds_of(config)
    none, warm, stable = [], [], []
    for s in seeds:
        none.append(sharpness.descend(sharpness.network(s, scale=WARM_SCALE), data, WARM_LR, updates,
                                      lambda t: t < 10 or t % every == 0, seed=s, cap=CAP))
        warm.append(sharpness.descend(sharpness.network(s, scale=WARM_SCALE), data, WARM_LR, updates,
                                      lambda t: t % every == 0 or t == WARM_UPDATES, warmup=WARM_UPDATES, seed=s,
                                      cap=CAP))
        rate = 2 / float(none[-1].sharpness[0])
        stable.append(sharpness.descend(sharpness.network(s, scale=WARM_SCALE), data, rate, updates,
                                        lambda t: t == 0, seed=s, cap=CAP))
    final = {name: [float(d.losses[-1]) for d in runs] for name, runs in
             (("none", none), ("warm", warm), ("stable", stable))}
    lam0 = [float(d.sharpness[0]) for d in warm]
    at_end = [_sharpness_at(d, WARM_UPDATES) for d in warm]
    peak = [float(np.nanmax(d.sharpness * d.rates)) for d in warm]
    diverged = [d.diverged for d in none]
    rows = [[f"no warm-up, η = {WARM_LR:g}", WARM_LR, sum(d is not None for d in diverged), _mean_loss(none),
             np.mean(lam0), math.nan, math.nan, float(np.nanmax([np.nanmax(d.sharpness * d.rates) for d in none]))],
            [f"linear warm-up over {WARM_UPDATES} updates to η = {WARM_LR:g}", WARM_LR,
             sum(d.diverged is not None for d in warm), _mean_loss(warm), np.mean(lam0), np.mean(at_end),
             np.mean([d.sharpness[-1] for d in warm]), np.mean(peak)],
            ["no warm-up, η = 2/λ₀ of each network", float(np.mean([d.lr for d in stable])),
             sum(d.diverged is not None for d in stable), _mean_loss(stable), np.mean(lam0), math.nan, math.nan,
             2.0]]
    result.table("warmup", ["run (tanh MLP 64-64-64-10, weights N(0, 1/fan_in), full-batch GD, ½‖f(x) − y‖²)",
                            "η (mean)", f"runs diverged (of {len(seeds)})", f"loss after {updates} updates (mean)",
                            "λ₀ (mean)", f"λ_max after the warm-up, update {WARM_UPDATES} (mean)",
                            f"λ_max at update {updates} (mean)", "largest ηₜ·λ_max read (mean)"], rows)
    _warmup_claims(result, none, warm, stable, final, lam0, at_end, peak, updates)
    _warmup_figures(result, none[0], warm[0], stable[0], config.seed)
    result.notes.append(f"Warm-up: {samples:,} standardised digits, full-batch gradient descent for {updates} updates;"
                        f" a run is stopped as diverged once its loss exceeds {CAP:,.0f}× its initial loss, and counts"
                        " with the loss at which it stopped.")


def _sharpness_at(run: Any, step: int) -> float:
    """λ_max read at update ``step``; for a run stopped as diverged before it, the last λ_max read:
    its warm-up did not bring the sharpness down, and the claims count it so. (Which seeds diverge
    at the edge of stability can depend on the CPU's rounding: under ATEN_CPU_CAPABILITY=default one
    warm-up run of the quick demo does.)"""
    steps = list(run.steps)
    if step in steps:
        return float(run.sharpness[steps.index(step)])
    read = [float(v) for v in run.sharpness if math.isfinite(float(v))]
    return read[-1] if read else math.nan


def _mean_loss(runs: list) -> float | str:
    """The mean final loss of the runs that did not diverge ("diverged" when none is left)."""
    kept = [float(d.losses[-1]) for d in runs if d.diverged is None]
    return float(np.mean(kept)) if kept else "diverged"


def _warmup_claims(result: Result, none: list, warm: list, stable: list, final: dict[str, list[float]],
                   lam0: list[float], at_end: list[float], peak: list[float], updates: int) -> None:
    n = len(warm)
    stopped = [d.diverged for d in none]
    rescue = paired(np.log10(final["none"]), np.log10(final["warm"]))
    climb = ", ".join(f"{v:.3g}" for v in (none[0].sharpness * none[0].rates)[:6])
    result.decide(f"Warm-up rescues a learning rate that is too large at the start: at η = {WARM_LR:g} (η·λ₀ ≈"
                  f" {WARM_LR * np.mean(lam0):.0f}, far above 2) gradient descent without warm-up diverges, with a"
                  f" linear warm-up over {WARM_UPDATES} updates it trains — its final loss is more than tenfold lower"
                  f" (a diverged run counts with the loss at which it was stopped, over {CAP:,.0f}× its initial loss).",
                  rescue,
                  f"without warm-up {sum(s is not None for s in stopped)} of {n} runs diverged (stopped at updates"
                  f" {', '.join(str(s) for s in stopped if s is not None) or '—'}; η·λ_max read {climb}… on seed"
                  f" {result.config.seed}: the sharpness rises as the run diverges); with warm-up"
                  f" {sum(d.diverged is not None for d in warm)} diverged, final loss"
                  f" {min(final['warm']):.4f}–{max(final['warm']):.4f}; the quantity decided is log₁₀(loss without /"
                  " loss with) per seed",
                  "ResNet: lr 0.01 for ~400 iterations, then 0.1 (the 110-layer CIFAR net)", threshold=1.0)
    fall = interval([l0 / lw for l0, lw in zip(lam0, at_end)])
    result.decide(f"With warm-up the sharpness falls while η rises: by the end of the warm-up (update"
                  f" {WARM_UPDATES}) λ_max has dropped below half its initial value, close to 2/η = {2 / WARM_LR:g}"
                  " — the mechanism by which the large η becomes stable (gradient descent at η needs λ_max ≲ 2/η);"
                  " on the way ηₜ·λ_max overshoots 2 for a while, far less than the ≈ 10 it starts at without"
                  " warm-up.", fall,
                  f"λ₀ {min(lam0):.2f}–{max(lam0):.2f} → λ_max at update {WARM_UPDATES}"
                  f" {min(at_end):.2f}–{max(at_end):.2f} (η·λ_max {WARM_LR * min(at_end):.2f}–"
                  f"{WARM_LR * max(at_end):.2f}); largest ηₜ·λ_max read during the run {min(peak):.2f}–"
                  f"{max(peak):.2f}; the quantity decided is λ₀ / λ_max(update {WARM_UPDATES})",
                  "Gilmer et al. 2021; Kalra & Barkeshli 2024 ('Why warmup the learning rate?'): warm-up lowers the"
                  " sharpness so the large η becomes stable", threshold=2.0)
    better = paired(np.log10(final["stable"]), np.log10(final["warm"]))
    rates = [d.lr for d in stable]
    result.decide(f"With warm-up to η = {WARM_LR:g} the run ends lower than at the largest constant η that starts"
                  " stable, η = 2/λ₀ of each network — what one must choose without warm-up if η·λ₀ < 2 is the rule.",
                  better,
                  f"loss after {updates} updates: warm-up {np.mean(final['warm']):.4f}, constant η = 2/λ₀"
                  f" ({min(rates):.3f}–{max(rates):.3f}) {np.mean(final['stable']):.4f} (means of {n} seeds); the"
                  " quantity decided is log₁₀(loss at 2/λ₀ / loss with warm-up) per seed",
                  "ResNet: lr 0.01 for ~400 iterations, then 0.1", threshold=0.0)


def _warmup_figures(result: Result, none, warm, stable, seed: int) -> None:
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.add_subplot()
    t = np.arange(len(warm.losses))
    eta_t = WARM_LR * np.minimum(1.0, (t + 1) / WARM_UPDATES)
    ax.semilogy(t, 2 / eta_t, "--", color="tab:blue", lw=1.2, label=r"$2/\eta_t$ with warm-up", zorder=2)
    ax.axhline(2 / WARM_LR, color="tab:red", ls=":", lw=1.4, label=f"2/η = {2 / WARM_LR:g} without warm-up", zorder=1)
    ax.semilogy(warm.steps, warm.sharpness, "-o", ms=3, color="tab:blue", lw=1.6, label=r"$\lambda_{\max}$ with warm-up",
                zorder=4)
    top = 1e3  # the diverging run's last readings go off the scale; the legend gives the last one
    label = r"$\lambda_{\max}$ without warm-up"
    if none.diverged is not None:
        label += f" (diverged at update {none.diverged}"
        label += f"; last reading {none.sharpness[-1]:.1e}, off the scale)" if none.sharpness[-1] > top else ")"
    ax.semilogy(none.steps, none.sharpness, "-s", ms=4, color="tab:red", lw=1.6, label=label, zorder=5)
    ax.set(xlabel="update", ylabel=r"sharpness $\lambda_{\max}$", ylim=(1, top))
    ax.tick_params(labelsize=9)
    ax.legend(fontsize=9, loc="upper right")
    ax.grid(alpha=0.3, which="both")
    result.figure("warmup_sharpness", f"Warm-up by its mechanism: λ_max against 2/ηₜ, η = {WARM_LR:g}, seed {seed}",
                  fig)
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    ax.semilogy(warm.losses, "-", color="tab:blue", lw=1.6, label=f"linear warm-up to η = {WARM_LR:g}", zorder=3)
    ax.semilogy(none.losses, "-s", ms=4, color="tab:red", lw=1.6, label=f"no warm-up, η = {WARM_LR:g}", zorder=4)
    ax.semilogy(stable.losses, "--", color="tab:green", lw=1.6, label=f"no warm-up, η = 2/λ₀ = {stable.lr:.3f}",
                zorder=2)
    ax.set(xlabel="update", ylabel="loss ½‖f(x) − y‖² (mean)")
    ax.tick_params(labelsize=9)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3, which="both")
    result.figure("warmup_loss", f"Training loss with and without warm-up (seed {seed})", fig)
