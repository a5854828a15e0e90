"""Lecture part 4 — classification: softmax, and why cross-entropy beats MSE.

* softmax(3, 1, −3) ≈ (0.88, 0.12, 0.00);
* the lecture's error surface: three classes, the target is class 1, logits ``y₁, y₂ ∈
  [−10, 10]`` with ``y₃ = −1000``; MSE (softmax output against the one-hot label) is flat in
  the high-loss corner where ``y₂ ≫ y₁``, cross-entropy still slopes; gradient descent from
  that corner on both;
* the same comparison training a real classifier on the digits (and Adam, which the
  lecture says may still rescue MSE), over 5 seeds, the claims decided with 95 % t intervals
  on the first epoch, where the difference between the losses is.
"""

from __future__ import annotations

import statistics

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

import trainlab as tl
from trainlab.experiments.result import Config, Result, stages
from trainlab.experiments.statistics import paired, seeds

NAME = "classification"
TITLE = "Classification: softmax, MSE against cross-entropy"
CORNER = (-8.0, 8.0)  # (y₁, y₂): the target class far below the wrong one


def run(config: Config | None = None) -> Result:
    """Lecture part 4, classification: :func:`softmax_example`, :func:`surfaces`, :func:`classifier`.

    Parameters:
        config: a :class:`~trainlab.experiments.result.Config` (default ``None``: ``Config()``). ``quick``
            runs 100 descent steps instead of 300 and trains 3 epochs instead of 10; ``seed`` is the first of
            the 5 seeds (digits split, weights and batch order); ``progress`` shows a bar over the 3 stages.

    Returns:
        A :class:`~trainlab.experiments.result.Result` named ``"classification"`` (``seconds`` set) with the
        table ``classifier``; the figures ``surfaces`` and ``classifier``; and six claims (softmax(3, 1, −3);
        two-class softmax is a sigmoid; MSE stuck in the corner; cross-entropy slides down; cross-entropy
        learns faster on the digits; Adam narrows the gap for MSE — the last two decided over 5 seeds).
    """
    config = config or Config()
    result = Result(NAME, TITLE, config=config)
    with stages(result, 3) as bar:
        softmax_example(result)
        bar.update()
        surfaces(result, config)
        bar.update()
        classifier(result, config)
        bar.update()
    return result


def softmax_example(result: Result) -> None:
    """``softmax(y)ᵢ = exp(yᵢ) / Σⱼ exp(yⱼ)`` on the lecture's example, and against the sigmoid.

    Lecture claims: softmax(3, 1, −3) ≈ (0.88, 0.12, 0.00); with two classes softmax is the sigmoid of the
    difference (checked on 500 random pairs, generator seed 0).

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).

    Returns:
        ``None``. Adds two claims.
    """
    logits = torch.tensor([3.0, 1.0, -3.0], dtype=torch.float64)
    ours = tl.nn.softmax(logits)
    by_hand = torch.exp(logits) / torch.exp(logits).sum()
    result.claim("softmax(3, 1, −3) ≈ (0.88, 0.12, 0.00).",
                 torch.allclose(ours, by_hand, atol=1e-15) and torch.allclose(ours, torch.tensor(
                     [0.88, 0.12, 0.0], dtype=torch.float64), atol=5e-3),
                 f"softmax = {[round(float(v), 4) for v in ours]}; exp(yᵢ)/Σ exp(yⱼ) by hand agrees to"
                 f" {float((ours - by_hand).abs().max()):.0e}", "(0.88, 0.12, 0.00)")
    a, b = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).chunk(2)
    two = tl.nn.softmax(torch.stack([a, b], 1))[:, 0]
    result.claim("With two classes softmax is the sigmoid of the difference.",
                 torch.allclose(two, torch.sigmoid(a - b), atol=1e-15),
                 f"largest difference over 500 random pairs: {float((two - torch.sigmoid(a - b)).abs().max()):.0e}",
                 "two-class softmax equals a sigmoid")


def _losses(y1: torch.Tensor, y2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE and cross-entropy of logits ``(y₁, y₂, −1000)`` against class 1, for grids of y₁, y₂."""
    logits = torch.stack([y1, y2, torch.full_like(y1, -1000.0)], -1).reshape(-1, 3)
    target = torch.zeros(len(logits), dtype=torch.long)
    p = tl.nn.softmax(logits)
    mse = ((p - F.one_hot(target, 3)) ** 2).sum(-1)
    ce = tl.nn.cross_entropy(logits, target, reduction="none")
    return mse.reshape(y1.shape), ce.reshape(y1.shape)


def _descend(which: int, steps: int, lr: float) -> np.ndarray:
    y = torch.tensor(CORNER, dtype=torch.float64, requires_grad=True)
    path = [y.detach().clone()]
    for _ in range(steps):
        value = _losses(y[0:1], y[1:2])[which].sum()
        (g,) = torch.autograd.grad(value, y)
        with torch.no_grad():
            y -= lr * g
        path.append(y.detach().clone())
    return torch.stack(path).numpy()


def surfaces(result: Result, config: Config) -> None:
    """MSE (softmax against one-hot) and cross-entropy over the logits ``(y₁, y₂, −1000)``, target class 1.

    Lecture claim: in the high-loss corner ``y₂ ≫ y₁`` MSE is flat ("stuck!") while cross-entropy still
    slopes. Gradient descent (η = 1) from ``(y₁, y₂) = (−8, 8)`` on each.

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``quick``: 100 steps (else 300); ``seed`` is not used.

    Returns:
        ``None``. Adds two claims and the figure ``surfaces`` (both surfaces over [−10, 10]², with the paths).
    """
    steps, lr = (100, 1.0) if config.quick else (300, 1.0)
    mse_path, ce_path = _descend(0, steps, lr), _descend(1, steps, lr)
    corner = torch.tensor([CORNER[0]], dtype=torch.float64, requires_grad=True), torch.tensor([CORNER[1]],
                                                                                               dtype=torch.float64,
                                                                                               requires_grad=True)
    mse, ce = _losses(*corner)
    ce_value = float(ce.detach())
    g_mse = torch.cat(torch.autograd.grad(mse.sum(), corner)).norm()
    g_ce = torch.cat(torch.autograd.grad(ce.sum(), corner)).norm()
    moved_mse = float(np.linalg.norm(mse_path[-1] - mse_path[0]))
    final_ce = float(_losses(torch.tensor(ce_path[-1, :1]), torch.tensor(ce_path[-1, 1:]))[1])
    final_mse = float(_losses(torch.tensor(mse_path[-1, :1]), torch.tensor(mse_path[-1, 1:]))[0])
    result.claim("In the high-loss corner MSE is flat: gradient descent on it is stuck.",
                 float(g_mse) < 1e-3 * float(g_ce) and moved_mse < 0.1,
                 f"at (y₁, y₂) = ({CORNER[0]:g}, {CORNER[1]:g}): ‖∇MSE‖ = {float(g_mse):.1e}, ‖∇CE‖ = {float(g_ce):.2f}; {steps} steps of"
                 f" η = {lr} move MSE's point {moved_mse:.1e} (loss stays {final_mse:.4f})", "MSE: 'stuck!'")
    result.claim("Cross-entropy still slopes there: the same descent slides down.", final_ce < 0.1 * ce_value,
                 f"cross-entropy {ce_value:.2f} → {final_ce:.4f} after {steps} steps",
                 "cross-entropy has slope in the same corner")
    grid = torch.linspace(-10, 10, 161, dtype=torch.float64)
    y1, y2 = torch.meshgrid(grid, grid, indexing="ij")
    mse_grid, ce_grid = _losses(y1, y2)
    result.figure("surfaces", "Error surfaces over the logits (y₁, y₂), y₃ = −1000, target class 1",
                  _surface_figure(y1, y2, mse_grid, ce_grid, mse_path, ce_path))


def _surface_figure(y1, y2, mse, ce, mse_path, ce_path) -> Figure:
    """The two surfaces, stacked (one panel above the other, each readable on a phone), each with its
    labelled colour bar, the descent path and its start."""
    fig = Figure(figsize=(6.4, 9.6), layout="constrained")
    for ax, values, path, name in zip(fig.subplots(2, 1), (mse, ce), (mse_path, ce_path),
                                      ("MSE (softmax against one-hot)", "cross-entropy")):
        filled = ax.contourf(y1.numpy(), y2.numpy(), values.numpy(), levels=30, cmap="viridis")
        fig.colorbar(filled, ax=ax).set_label(f"loss: {name}")
        ax.plot(path[:, 0], path[:, 1], "-", color="tab:red", lw=2, zorder=3,
                label=f"gradient descent, η = 1 ({len(path) - 1} steps)")
        ax.plot(*path[0], "o", mfc="none", mec="white", mew=2.5, ms=16, zorder=4,
                label=f"start (y₁, y₂) = ({CORNER[0]:g}, {CORNER[1]:g})".replace("-", "−"))
        ax.plot(*path[-1], "X", color="tab:red", mec="white", ms=9, zorder=5, label="end (inside the ring: stuck)"
                if np.linalg.norm(path[-1] - path[0]) < 0.5 else "end")
        ax.set(title=name, xlabel="y₁ (target class)", ylabel="y₂", xlim=(-10, 10), ylim=(-10, 10))
        ax.legend(loc="lower right", fontsize=9)
    return fig


def classifier(result: Result, config: Config) -> None:
    """MLPs 64-32-10 on the digits trained with cross-entropy and with MSE, each by SGD (η = 0.1) and Adam (η = 1e-3).

    Lecture claims: cross-entropy trains a classifier faster than MSE; Adam may still rescue MSE. Batch 32,
    5 seeds (``config.seed + i``: digits split, weights and batch order). Both claims are tested after the
    first epoch — where MSE with SGD still lags — with a 95 % t interval over the seeds of the paired
    difference: after training long enough every combination reaches the same accuracy, and a gap of zero
    cannot be narrowed.

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``quick``: 3 epochs (else 10); ``seed``: the first seed.

    Returns:
        ``None``. Adds the table ``classifier`` (loss, optimizer, and over the seeds the mean final train loss,
        train and test accuracy, and test accuracy after 1 epoch), two claims and the figure ``classifier``
        (mean test accuracy per epoch).
    """
    epochs = 3 if config.quick else 10
    seed_list = seeds(config)
    combos = [(loss_name, loss_fn, opt_name) for loss_name, loss_fn in (("cross-entropy", tl.nn.cross_entropy),
                                                                        ("MSE", tl.nn.mse_onehot))
              for opt_name in ("SGD", "Adam")]
    first, curves, finals = {}, {}, {}
    for seed in seed_list:
        train, test = tl.data.load_digits(seed=seed)
        for loss_name, loss_fn, opt_name in combos:
            model = tl.nn.mlp(64, [32], 10, seed=seed)
            opt = (tl.optim.SGD(model.parameters(), lr=0.1) if opt_name == "SGD"
                   else tl.optim.Adam(model.parameters(), lr=1e-3))
            trainer = tl.train.Trainer(model, opt, loss_fn, train, 32, epochs, eval_data=test, seed=seed,
                                       progress=False, device="cpu")
            summary = trainer.fit()
            key = (loss_name, opt_name)
            curves.setdefault(key, []).append([r["eval_accuracy"] for r in trainer.history])
            first.setdefault(key, []).append(trainer.history[0]["eval_accuracy"])
            finals.setdefault(key, []).append((summary["train_loss"], summary["train_accuracy"],
                                               summary["eval_accuracy"]))
    rows = [[loss_name, opt_name, *(statistics.fmean(f[j] for f in finals[loss_name, opt_name]) for j in range(3)),
             statistics.fmean(first[loss_name, opt_name])] for loss_name, _, opt_name in combos]
    result.table("classifier", ["loss", "optimizer", "final train loss", "train accuracy", "test accuracy",
                                "test accuracy after 1 epoch"], rows)
    n = len(seed_list)
    ce_sgd, ce_adam = first["cross-entropy", "SGD"], first["cross-entropy", "Adam"]
    mse_sgd, mse_adam = first["MSE", "SGD"], first["MSE", "Adam"]
    result.decide("Training a real classifier (digits, SGD η = 0.1, batch 32), cross-entropy learns faster than MSE:"
                  " test accuracy after one epoch, cross-entropy − MSE > 0.", paired(ce_sgd, mse_sgd),
                  f"test accuracy after 1 epoch, mean over {n} seeds: {statistics.fmean(ce_sgd):.3f} (cross-entropy)"
                  f" vs {statistics.fmean(mse_sgd):.3f} (MSE); after {epochs}:"
                  f" {rows[0][4]:.3f} vs {rows[2][4]:.3f}", "cross-entropy is the usual choice for classification")
    gap_sgd = [a - b for a, b in zip(ce_sgd, mse_sgd)]
    gap_adam = [a - b for a, b in zip(ce_adam, mse_adam)]
    result.decide("Adam narrows the gap for MSE: after one epoch, the test-accuracy gap cross-entropy − MSE is smaller"
                  " with Adam (η = 1e-3) than with SGD (η = 0.1).", paired(gap_sgd, gap_adam),
                  f"gap after 1 epoch, mean over {n} seeds: {statistics.fmean(gap_sgd):+.3f} with SGD,"
                  f" {statistics.fmean(gap_adam):+.3f} with Adam; after {epochs} epochs {rows[0][4] - rows[2][4]:+.3f}"
                  f" with SGD and {rows[1][4] - rows[3][4]:+.3f} with Adam", "Adam may still rescue MSE")
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    styles = {("cross-entropy", "SGD"): ("tab:blue", "o", "-"), ("cross-entropy", "Adam"): ("tab:green", "^", "-"),
              ("MSE", "SGD"): ("tab:red", "s", "--"), ("MSE", "Adam"): ("tab:orange", "D", "--")}
    for key, values in curves.items():
        colour, marker, line = styles[key]
        mean = np.mean(values, 0)
        ax.plot(range(1, len(mean) + 1), mean, line, color=colour, marker=marker, ms=5,
                label=f"{key[0]}, {key[1]}")
    ax.set(xlabel="epoch", ylabel=f"test accuracy (mean of {n} seeds)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    result.figure("classifier", f"Digits: cross-entropy against MSE, with SGD and Adam ({n} seeds)", fig)
