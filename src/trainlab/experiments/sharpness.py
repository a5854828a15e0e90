"""The edge of stability (Cohen et al. 2021, "Gradient descent on neural networks typically
occurs at the edge of stability", ICLR) — beside the lecture's learning-rate parts.

On a quadratic with Hessian ``H``, gradient descent ``θ ← θ − η g`` multiplies the error along
an eigenvector of ``H`` by ``1 − ηλ``: it is stable iff ``λ_max < 2/η``. On a network ``H``
changes as θ moves. Full-batch gradient descent with MSE on a tanh MLP shows three things:

* **progressive sharpening** — the sharpness ``λ_max(∇²L)`` rises during training, from
  ``λ₀`` well below ``2/η``;
* **the edge of stability** — once it reaches ``2/η`` it stops there and hovers, for each η:
  the dynamics keep the sharpness at the very value the quadratic model calls unstable;
* the loss keeps falling over the run, but **not monotonically**: at the edge it rises on a
  share of the updates (the oscillation along the top eigenvector) and falls over many.

The sharpness is read with :class:`trainlab.instruments.Sharpness` (Lanczos, warm-started from
the previous reading's top eigenvector) on the whole training subset, i.e. the Hessian of the
very loss gradient descent minimises. :func:`descend` (one run with readings) and
:func:`network` (the tanh MLP, optionally with a larger initial weight scale) are also used by
the warm-up part of :mod:`trainlab.experiments.adaptive_lr`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

import trainlab as tl
from trainlab.experiments.result import Config, Result, one_thread, stages
from trainlab.experiments.statistics import SEEDS, interval, seeds as seeds_of
from trainlab.instruments import Context, Sharpness

NAME = "sharpness"
TITLE = "The edge of stability: full-batch gradient descent drives the sharpness to 2/η"
WIDTHS = (64, 64, 64)
#: full run: 1,000 digits, 600 updates, a reading every 20 in the second half (every 40 before);
#: quick: 250 digits, 300 updates, every 30 (60)
FULL = dict(samples=1000, updates=600, every=20, rates=(0.3, 0.45, 0.6))
QUICK = dict(samples=250, updates=300, every=30, rates=(0.4, 0.5, 0.6))
TOL = 1e-3  # the readings' relative tolerance (Lanczos)
HOVER = 0.10  # "at 2/η": within ±10 %
COLOURS = ("tab:blue", "tab:orange", "tab:red", "tab:green")


def half_mse(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``½‖f(x) − onehot(y)‖²`` averaged over the samples (no softmax) — the loss of Cohen et al.'s MSE runs."""
    return 0.5 * tl.nn.mse_onehot(outputs, target, apply_softmax=False)


def digits(samples: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``samples`` training digits (standardised with the training split's statistics) as one
    float32 batch ``(x, y)``; ``seed`` picks the split."""
    train, _ = tl.data.load_digits(seed=seed)
    x, y = train.tensors
    return x[:samples].float(), y[:samples]


def network(seed: int, widths: Sequence[int] = WIDTHS, scale: float | None = None) -> nn.Sequential:
    """A tanh MLP ``64-widths-10`` with weights drawn from ``seed``.

    ``scale=None`` keeps PyTorch's initialisation (uniform, standard deviation ``1/√(3·fan_in)``);
    a number redraws every weight from ``N(0, scale²/fan_in)`` and sets the biases to 0 — ``scale = 1``
    is √3 times PyTorch's scale, a sharper network at initialisation.
    """
    model = tl.nn.mlp(64, list(widths), 10, activation="tanh", seed=seed)
    if scale is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in model:
                if isinstance(layer, nn.Linear):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * scale / math.sqrt(layer.in_features))
                    layer.bias.zero_()
    return model


@dataclass
class Descent:
    """One full-batch gradient-descent run: ``losses[t]`` the loss before update ``t`` (the last one after
    the final update), ``steps`` the updates at which the sharpness was read, ``sharpness`` its values
    (λ_max), ``rates`` the learning rate of the update that followed each reading, ``diverged`` the update
    at which the loss became non-finite or exceeded ``cap`` (``None``: it did not), ``model`` the network
    after the run."""

    lr: float
    losses: np.ndarray
    steps: np.ndarray
    sharpness: np.ndarray
    rates: np.ndarray
    diverged: int | None
    model: nn.Module = field(repr=False)

    def between(self, start: int, stop: int | None = None) -> np.ndarray:
        """The sharpness readings at updates ``start ≤ t < stop``."""
        keep = (self.steps >= start) & (self.steps < (stop if stop is not None else math.inf))
        return self.sharpness[keep]


def descend(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], lr: float, updates: int,
            read: Callable[[int], bool], warmup: int = 0, seed: int = 0, cap: float = 1e3,
            loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = half_mse) -> Descent:
    """Full-batch gradient descent (:class:`trainlab.optim.SGD`) on ``data`` for ``updates`` updates, reading
    λ_max with :class:`trainlab.instruments.Sharpness` before update ``t`` whenever ``read(t)`` (``t = updates``:
    after the last one).

    ``warmup``: a linear warm-up over that many updates (:func:`trainlab.optim.schedules.linear_warmup`,
    ``η_t = η·min(1, (t + 1)/warmup)``; 0: none). The run stops when the loss is non-finite or above
    ``cap`` times its initial value (``diverged``). ``seed`` seeds the instrument's random start vectors.
    """
    x, y = data
    instrument = Sharpness(every=1, tol=TOL)
    opt = tl.optim.SGD(model.parameters(), lr=lr)
    schedule = tl.optim.schedules.linear_warmup(opt, warmup) if warmup else None
    losses: list[float] = []
    steps, values, rates = [], [], []
    diverged = None
    for t in range(updates + 1):
        if read(t):
            reading = instrument.read(Context(model, loss_fn, (x, y), step=t, seed=seed))
            steps.append(t)
            values.append(reading["value"])
            rates.append(float(opt.param_groups[0]["lr"]))
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]) or losses[-1] > cap * losses[0]:
            diverged = t
            break
        if t == updates:
            break
        loss.backward()
        opt.step()
        if schedule is not None:
            schedule.step()
    return Descent(lr, np.array(losses), np.array(steps), np.array(values, dtype=float), np.array(rates), diverged,
                   model)


def run(config: Config | None = None) -> Result:
    """The edge of stability: :func:`edge` on one thread.

    Parameters:
        config: a :class:`~trainlab.experiments.result.Config` (default ``None``: ``Config()``). ``quick``:
            250 digits, 300 updates, a reading every 30 updates in the second half and every 60 before,
            η = 0.4, 0.5, 0.6 (else 1,000 digits, 600 updates, every 20 and 40, η = 0.3, 0.45, 0.6); ``seed``
            picks the digits split and, with ``seed + i`` for i = 0 … 4, the initial weights; ``progress`` shows
            a bar over the stage.

    Returns:
        A :class:`~trainlab.experiments.result.Result` named ``"sharpness"`` (``seconds`` set) with the table
        ``edge``, the figures ``sharpness`` and ``loss``, and four claims decided over 5 seeds.
    """
    config = config or Config()
    result = Result(NAME, TITLE, config=config)
    with stages(result, 1) as bar, one_thread():
        edge(result, config)
        bar.update()
    return result


def edge(result: Result, config: Config) -> None:
    """Full-batch gradient descent on a 64-64-64-10 tanh MLP with ``½‖f(x) − y‖²`` on standardised digits,
    at three learning rates and 5 seeds, with λ_max read every few updates.

    Claims (Cohen et al. 2021), each decided over the 5 seeds with a 95 % t interval: the sharpness rises
    during training (at the smallest η by more than half of λ₀); it then hovers at 2/η (its median over the
    second half within ±10 % of 2/η, at every η); the loss falls more than tenfold over the run; but not
    monotonically (it rises on more than 10 % of the second half's updates, at every η).

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``quick`` and ``seed`` as in :func:`run`.

    Returns:
        ``None``. Adds the table ``edge`` (per η: 2/η, λ₀, peak λ_max, second-half median of λ_max·η/2 and its
        range, first reading at ≥ 0.9 · 2/η, loss at the start and end, rises), the claims and the figures.
    """
    setting = QUICK if config.quick else FULL
    samples, updates, every, rates = setting["samples"], setting["updates"], setting["every"], setting["rates"]
    data = digits(samples, config.seed)
    seeds = seeds_of(config)
    half = updates // 2

    def read(t: int) -> bool:  # the second half, which the hover claim reads, twice as often as the first
        return t % (every if t >= half else 2 * every) == 0

    runs = {lr: [descend(network(s), data, lr, updates, read, seed=s) for s in seeds] for lr in rates}
    rows = []
    stats: dict[float, dict[str, list[float]]] = {}
    for lr, descents in runs.items():
        s = stats[lr] = {"lam0": [], "peak": [], "hover": [], "low": [], "high": [], "reach": [], "start": [],
                         "end": [], "rises": [], "share": []}
        for d in descents:
            ratio = d.between(half) * lr / 2
            near = d.steps[d.sharpness * lr / 2 >= 1 - HOVER]
            rises = np.diff(d.losses) > 0
            s["lam0"].append(d.sharpness[0])
            s["peak"].append(d.sharpness.max())
            s["hover"].append(np.median(ratio))
            s["low"].append(ratio.min())
            s["high"].append(ratio.max())
            s["reach"].append(near[0] if len(near) else math.nan)
            s["start"].append(d.losses[0])
            s["end"].append(d.losses[-1])
            s["rises"].append(rises.sum())
            s["share"].append(rises[half:].mean())
        rows.append([lr, 2 / lr, np.mean(s["lam0"]), np.mean(s["peak"]), np.mean(s["hover"]), min(s["low"]),
                     max(s["high"]), np.mean(s["reach"]), np.mean(s["start"]), np.mean(s["end"]),
                     np.mean(s["rises"]), np.mean(s["share"])])
    result.table("edge", ["η", "2/η", "λ₀ (mean)", "peak λ_max (mean)",
                          "median of λ_max·η/2 over the second half (mean over seeds)",
                          "lowest λ_max·η/2 read (second half)", "highest λ_max·η/2 read (second half)",
                          "first reading ≥ 0.9 · 2/η (update, mean)", "loss at the start (mean)",
                          "loss at the end (mean)", f"updates on which the loss rose (of {updates}, mean)",
                          "share of the second half's updates with a rise (mean)"], rows)
    _claims(result, stats, rates, len(seeds), updates)
    result.figure("sharpness", f"Sharpness λ_max during full-batch gradient descent against 2/η (seed {config.seed}"
                  f" bold, the other {SEEDS - 1} seeds thin)", _sharpness_figure(runs))
    result.figure("loss", f"Training loss during the same runs (seed {config.seed})", _loss_figure(runs))
    result.notes.append(f"Edge of stability: {samples:,} standardised digits, a 64-64-64-10 tanh MLP (PyTorch's"
                        f" initialisation), loss ½‖f(x) − onehot(y)‖² averaged over samples, full-batch gradient"
                        f" descent for {updates} updates, λ_max read every {every} updates in the second half and every"
                        f" {2 * every} before by"
                        " trainlab.instruments.Sharpness (Lanczos, relative tolerance 10⁻³) on the same samples.")


def _claims(result: Result, stats: dict[float, dict[str, list[float]]], rates: Sequence[float], n: int,
            updates: int) -> None:
    smallest = rates[0]
    s = stats[smallest]
    rise = interval([p / l0 for p, l0 in zip(s["peak"], s["lam0"])])
    lam0 = [v for lr in rates for v in stats[lr]["lam0"]]
    result.decide(f"The sharpness rises during training (progressive sharpening): at the smallest η = {smallest:g},"
                  f" λ_max climbs to more than 1.5 × its value at initialisation (λ₀ lies below 2/η at every η, so"
                  " gradient descent starts stable).", rise,
                  f"peak λ_max / λ₀ at η = {smallest:g}: {rise.mean:.2f} (λ₀ {min(lam0):.2f}–{max(lam0):.2f} over all"
                  f" runs; 2/η = {', '.join(f'{2 / lr:.2f}' for lr in rates)})",
                  "Cohen et al. 2021: λ_max rises (progressive sharpening) until it reaches 2/η", threshold=1.5)
    worst = [max(abs(stats[lr]["hover"][i] - 1) for lr in rates) for i in range(n)]
    hover = interval([HOVER - w for w in worst])
    per_rate = "; ".join(f"η = {lr:g}: {np.mean(stats[lr]['hover']):.3f} (readings {min(stats[lr]['low']):.2f}–"
                         f"{max(stats[lr]['high']):.2f})" for lr in rates)
    result.decide("It then hovers at 2/η (the edge of stability): over the second half of the run the median of"
                  " λ_max lies within ±10 % of 2/η, at every η.", hover,
                  f"median of λ_max·η/2 over the second half, mean over seeds: {per_rate}; the quantity decided is"
                  " 0.10 minus the largest |median − 1| over the η of a seed",
                  "Cohen et al. 2021: λ_max hovers just above 2/η", threshold=0.0)
    fall = interval([min(math.log10(stats[lr]["start"][i] / stats[lr]["end"][i]) for lr in rates) for i in range(n)])
    result.decide("The loss still falls over the run: more than tenfold at every η.", fall,
                  "loss at the start → end, mean over seeds: "
                  + "; ".join(f"η = {lr:g}: {np.mean(stats[lr]['start']):.3f} → {np.mean(stats[lr]['end']):.4f}"
                              for lr in rates) + "; the quantity decided is the smallest log₁₀(start/end) of a seed",
                  "Cohen et al. 2021: the loss falls over long times, non-monotonically", threshold=1.0)
    share = interval([min(stats[lr]["share"][i] for lr in rates) for i in range(n)])
    result.decide("…but not monotonically: over the second half the loss rises on more than 10 % of the updates,"
                  " at every η.", share,
                  f"updates on which the loss rose, of {updates}, mean over seeds: "
                  + "; ".join(f"η = {lr:g}: {np.mean(stats[lr]['rises']):.0f} ({100 * np.mean(stats[lr]['share']):.0f} %"
                              " of the second half)" for lr in rates) + "; the quantity decided is the smallest share"
                  " of a seed", "Cohen et al. 2021: the loss falls over long times, non-monotonically", threshold=0.1)


def _sharpness_figure(runs: dict[float, list[Descent]]) -> Figure:
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for (lr, descents), colour in zip(runs.items(), COLOURS):
        for d in descents[1:]:
            ax.plot(d.steps, d.sharpness, "-", lw=0.7, alpha=0.35, color=colour, zorder=2)
        first = descents[0]
        ax.plot(first.steps, first.sharpness, "-o", ms=2.5, lw=1.6, color=colour,
                label=rf"$\lambda_{{\max}}$ at η = {lr:g}", zorder=3)
        ax.axhline(2 / lr, color=colour, ls="--", lw=1.2, label=f"2/η = {2 / lr:.2f}", zorder=1)
    ax.set(xlabel="update", ylabel=r"sharpness $\lambda_{\max}$")
    ax.tick_params(labelsize=9)
    ax.legend(fontsize=9, ncol=2, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def _loss_figure(runs: dict[float, list[Descent]]) -> Figure:
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for (lr, descents), colour in zip(runs.items(), COLOURS):
        ax.semilogy(descents[0].losses, lw=1.0, color=colour, label=f"η = {lr:g}")
    ax.set(xlabel="update", ylabel="loss ½‖f(x) − y‖² (mean)")
    ax.tick_params(labelsize=9)
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3, which="both")
    return fig
