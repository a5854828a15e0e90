"""Lecture part 3 — adaptive learning rates and schedules, on the lecture's own convex surface.

Linear regression ``ŷ = b + w·x`` on the ten points of the lecture, ``L(b, w) = Σ (y − ŷ)²``,
from ``(b, w) = (−120, −4)``. The surface is a long narrow valley (Hessian eigenvalues 5.6
and 1.7 million), so:

* gradient descent with a small η crawls and has not arrived after 100,000 updates; with the
  largest stable η it zig-zags across the valley and still crawls along it;
* dividing by σ = the root mean square of all past gradients, with a constant η, reaches
  the valley and then *bursts* sideways (σ has shrunk along the flat direction);
* decaying η as η/√(t+1) — together that is Adagrad — removes the bursts; RMSProp and Adam
  beside;
* warm-up schedules, and warm-up against none on a network where early steps are large.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

import trainlab as tl
from trainlab.experiments.result import Config, Result, stages

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
            shortens the descents (10,000 updates at η = 1e-7 and 5,000 for the others, instead of
            100,000 and 20,000) and the warm-up runs (2 seeds × 3 epochs instead of 4 × 8); ``seed`` picks
            the digits split and the warm-up networks' weights; ``progress`` shows a bar over the 3 stages.

    Returns:
        A :class:`~trainlab.experiments.result.Result` named ``"adaptive_lr"`` (``seconds`` set) with the
        tables ``descent`` and ``warmup``; the figures ``valley``, ``schedules`` and ``transformer_schedule``;
        and seven claims: η = 1e-7 has not arrived; a large η zig-zags; η/σ bursts; Adagrad removes the
        bursts; RMSProp and Adam arrive; the Transformer schedule's shape; warm-up helps.
    """
    config = config or Config()
    result = Result(NAME, TITLE, config=config)
    with stages(result, 3) as bar:
        valley(result, config)
        bar.update()
        schedules(result)
        bar.update()
        warmup(result, config)
        bar.update()
    return result


def descend(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], steps: int,
            schedule: Callable[[torch.optim.Optimizer], object] | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The path of ``(b, w)`` and the loss after each update, with the exact gradient."""
    p = torch.tensor(START, dtype=torch.float64, requires_grad=True)
    opt = make([p])
    sched = schedule(opt) if schedule else None
    path, losses = [p.detach().clone()], [float(loss(*p.detach()))]
    for _ in range(steps):
        with torch.no_grad():
            p.grad = gradient(p)
        opt.step()
        if sched is not None:
            sched.step()
        path.append(p.detach().clone())
        losses.append(float(loss(*p.detach())))
        if not math.isfinite(losses[-1]):
            break
    return torch.stack(path), np.array(losses)


def _largest_spike(losses: np.ndarray, after: int) -> float:
    """The largest rise of the loss above its running minimum, after update ``after``."""
    running = np.minimum.accumulate(losses)
    return float((losses[after:] / running[after:]).max()) if len(losses) > after else 1.0


def valley(result: Result, config: Config) -> None:
    """Gradient descent, η/σ, Adagrad, RMSProp and Adam from ``(−120, −4)`` on the lecture's valley (exact gradient).

    Lecture claims: with η = 1e-7 gradient descent has not arrived after 100,000 updates; at the largest
    stable η (here 1.9/λ_max) it zig-zags across the valley; dividing by σ, the RMS of all past gradients,
    at a constant η reaches the valley and then bursts; decaying η as η/√(t+1) (Adagrad) removes the bursts.

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``quick``: 10,000 updates at η = 1e-7 and 5,000 for the others (else 100,000 and 20,000).

    Returns:
        ``None``. Adds to ``result`` the table ``descent`` (per method: updates, final b and w, distance to
        the optimum, final loss, first update within 1 of the optimum, largest loss spike afterwards),
        five claims and the figure ``valley`` (paths on the surface; distance to the optimum per update).
    """
    best = optimum()
    design = torch.stack([torch.ones_like(X), X], 1)
    values, vectors = torch.linalg.eigh(2 * design.T @ design)  # the Hessian, constant for this loss
    lam_max, steep = float(values[-1]), vectors[:, -1]
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
        "Adam, η = 0.5": (lambda ps: tl.optim.Adam(ps, lr=0.5), None, short),
    }
    paths, rows = {}, []
    for name, (make, schedule, steps) in runs.items():
        path, losses = descend(make, steps, schedule)
        distance = (path - best).norm(dim=1)
        reached = int(np.argmax(distance.numpy() < 1.0)) if bool((distance < 1.0).any()) else None
        spike = _largest_spike(losses, reached) if reached is not None else 1.0
        paths[name] = path
        rows.append([name, len(path) - 1, float(path[-1, 0]), float(path[-1, 1]), float(distance[-1]), losses[-1],
                     reached, spike])
    result.table("descent", ["method", "updates", "final b", "final w", "distance to optimum", "final loss",
                             "first update within 1 of the optimum", "largest loss spike afterwards (×)"], rows)
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
    result.claim("RMSProp and Adam reach the optimum too.", rmsprop[4] < 0.1 and adam[4] < 0.1,
                 f"final distance: RMSProp {rmsprop[4]:.2g}, Adam {adam[4]:.2g}")
    result.figure("valley", "Paths on the lecture's error surface (b ∈ [−200, −100], w ∈ [−5, 5])",
                  _valley_figure(paths, best))


def _zigzag(path: torch.Tensor, best: torch.Tensor, steep: torch.Tensor) -> float:
    """Share of updates that cross the valley floor: the coordinate of ``p − p*`` along the
    steepest direction (the Hessian's top eigenvector) changes sign."""
    d = np.sign(((path[:201] - best) @ steep).numpy())
    return float((d[1:] * d[:-1] < 0).mean())


def _valley_figure(paths: dict[str, torch.Tensor], best: torch.Tensor) -> Figure:
    b, w = torch.meshgrid(torch.linspace(-200, -100, 200, dtype=torch.float64),
                          torch.linspace(-5, 5, 200, dtype=torch.float64), indexing="ij")
    fig = Figure(figsize=(10.0, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.contourf(b.numpy(), w.numpy(), torch.log10(loss(b, w)).numpy(), levels=40, cmap="Greys")
    colours = ["tab:blue", "tab:cyan", "tab:red", "tab:green", "tab:purple", "tab:orange"]
    for (name, path), colour in zip(paths.items(), colours):
        left.plot(path[:, 0].numpy(), path[:, 1].numpy(), "-", lw=1, color=colour, label=name, alpha=0.8)
        right.loglog(np.arange(1, len(path) + 1), (path - best).norm(dim=1).numpy() + 1e-12, color=colour, label=name)
    left.plot([START[0]], [START[1]], "ko")
    left.plot([float(best[0])], [float(best[1])], "w*", ms=14, markeredgecolor="k")
    left.set(xlim=(-200, -100), ylim=(-5, 5), xlabel="b", ylabel="w")
    right.set(xlabel="update", ylabel="distance to the optimum")
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    return fig


def schedules(result: Result) -> None:
    """Three warm-up schedules of :mod:`trainlab.optim.schedules`, and a check of the Transformer schedule.

    Formula (Vaswani et al.): ``η_t = d^−0.5 · min(t^−0.5, t · w^−1.5)``; at d = 512, w = 4,000 it peaks at
    update 4,000 and is √(1/2) of the peak at update 8,000.

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).

    Returns:
        ``None``. Adds the figures ``schedules`` (``linear_warmup``, ``warmup_cosine``, ``warmup_inverse_sqrt``
        over 1,000 updates, warm-up 100) and ``transformer_schedule``, and one claim.
    """
    shown = {"linear_warmup": dict(warmup_steps=100), "warmup_cosine": dict(warmup_steps=100, total_steps=1000),
             "warmup_inverse_sqrt": dict(warmup_steps=100)}
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for name, kwargs in shown.items():
        ax.plot(tl.optim.schedules.trace(name, 1000, lr=1.0, **kwargs), label=name)
    ax.set(xlabel="update t", ylabel="η^t / η")
    ax.legend()
    ax.grid(alpha=0.3)
    result.figure("schedules", "Warm-up schedules (trainlab.optim.schedules)", fig)
    transformer = tl.optim.schedules.trace("warmup_inverse_sqrt", 8000, lr=1.0, warmup_steps=4000, d_model=512)
    peak = int(np.argmax(transformer))
    result.claim("The Transformer schedule d^−0.5·min(t^−0.5, t·w^−1.5) rises linearly for w updates, then decays"
                 " as t^−0.5.", peak == 3999 and abs(transformer[7999] / transformer[3999] - math.sqrt(4000 / 8000)) < 1e-9,
                 f"d = 512, w = 4,000: peak {transformer[peak]:.3e} at update {peak + 1}; at 8,000 it is"
                 f" {transformer[7999] / transformer[3999]:.4f} of the peak (√(1/2) = 0.7071)",
                 "Vaswani et al.: lrate = d^−0.5 · min(step^−0.5, step · warmup^−1.5)")
    fig = Figure(figsize=(6.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(range(1, len(transformer) + 1), transformer)
    ax.axvline(4000, color="gray", lw=0.8)
    ax.set(xlabel="update", ylabel="learning rate")
    ax.grid(alpha=0.3)
    result.figure("transformer_schedule", "The Transformer schedule d^−0.5·min(t^−0.5, t·w^−1.5), d = 512, w = 4,000",
                  fig)


class _Losses(tl.train.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_step_end(self, trainer, record) -> None:
        self.values.append(record["loss"])


def warmup(result: Result, config: Config) -> None:
    """Adam (η = 0.01) on an MLP 64-256×4-10 on the digits, with and without a linear warm-up over 100 updates.

    Lecture claim: warm-up helps when the first steps are large (ResNet; RAdam).

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``seed`` picks the digits split and, with each run's own seed, the initial weights;
            ``quick``: 2 seeds × 3 epochs (else 4 seeds × 8 epochs).

    Returns:
        ``None``. Adds the table ``warmup`` (per setting: highest loss in the first 100 updates, mean and
        worst-seed test accuracy) and one claim, held when warm-up raises the mean test accuracy by > 0.005.
    """
    train, test = tl.data.load_digits(seed=config.seed)
    seeds = range(2 if config.quick else 4)
    rows = []
    for warm in (0, 100):
        early, accuracy = [], []
        for seed in seeds:
            model = tl.nn.mlp(64, [256] * 4, 10, seed=config.seed * 100 + seed)
            opt = tl.optim.Adam(model.parameters(), lr=1e-2)
            losses = _Losses()
            summary = tl.train.Trainer(model, opt, F.cross_entropy, train, 64, 3 if config.quick else 8,
                                       scheduler=tl.optim.schedules.linear_warmup(opt, warm) if warm else None,
                                       eval_data=test, seed=seed, progress=False, device="cpu", callbacks=[losses]).fit()
            early.append(max(losses.values[:100]))
            accuracy.append(summary["eval_accuracy"])
        rows.append([f"Adam η = 0.01, {'warm-up over 100 updates' if warm else 'no warm-up'}", float(np.mean(early)),
                     float(np.mean(accuracy)), float(np.min(accuracy))])
    result.table("warmup", ["run (MLP 64-256×4-10, digits)", "highest loss in the first 100 updates (mean)",
                            "test accuracy (mean)", "test accuracy (worst seed)"], rows)
    none, warm = rows
    better = warm[2] > none[2] + 0.005
    result.claim("Warm-up helps when the first steps are large (Adam, η = 0.01, 4×256 hidden units).", better,
                 f"test accuracy {warm[2]:.3f} with warm-up vs {none[2]:.3f} without (mean of {len(seeds)} seeds);"
                 f" highest early loss {warm[1]:.2f} vs {none[1]:.2f}"
                 + ("" if better else " — this run finds no clear difference"),
                 "ResNet: lr 0.01 for ~400 iterations, then 0.1; RAdam: early σ estimates are unreliable")
