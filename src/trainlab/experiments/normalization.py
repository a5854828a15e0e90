"""Lecture part 5 — feature normalisation and batch normalisation.

* Feature normalisation: the lecture's regression with raw inputs (``x`` in the hundreds:
  a long, narrow error surface) against standardised ones (``x̃ = (x − m)/σ``: a round one);
  gradient descent at its largest safe rate on each;
* batch normalisation on the BN paper's MNIST network (3 hidden layers of 100 sigmoid units,
  batch 60, SGD), on the digits, with and without BN at several learning rates, over 5 seeds
  (claims decided with 95 % t intervals);
* inference with the moving averages ``μ̄ ← p μ̄ + (1 − p) μ``: predictions one sample at a time.
  The slide's "PyTorch p = 0.1" is PyTorch's ``momentum = 0.1``, the weight of the *new*
  batch — the lecture's ``p = 0.9``.
"""

from __future__ import annotations

import copy
import statistics

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn

import trainlab as tl
from trainlab.experiments.adaptive_lr import X, Y
from trainlab.experiments.result import Config, Result, stages
from trainlab.experiments.statistics import paired, seeds

NAME = "normalization"
TITLE = "Feature normalisation and batch normalisation"
TARGET = 0.9  # test accuracy whose first epoch is compared


def run(config: Config | None = None) -> Result:
    """Lecture part 5, normalisation: :func:`features`, :func:`batch_norm`, then :func:`inference`.

    Parameters:
        config: a :class:`~trainlab.experiments.result.Config` (default ``None``: ``Config()``). ``quick``
            allows 20,000 descent updates instead of 200,000 and trains 3 epochs at η ∈ {0.1, 1} instead of
            10 at η ∈ {0.1, 0.5, 2}; ``seed`` is the first of the 5 seeds (digits split, weights, batch order)
            and picks the random batches of :func:`inference`; ``progress`` shows a bar over the 3 stages.

    Returns:
        A :class:`~trainlab.experiments.result.Result` named ``"normalization"`` (``seconds`` set) with the
        tables ``features`` and ``batch_norm``; the figures ``features`` and ``batch_norm``; five claims
        (standardising converges fast; BN reaches 90 % in fewer epochs; BN tolerates a larger η; BN predicts
        one sample at a time as in a batch; PyTorch's momentum 0.1 is the lecture's p = 0.9); and a note.
    """
    config = config or Config()
    result = Result(NAME, TITLE, config=config)
    with stages(result, 3) as bar:
        features(result, config)
        bar.update()
        models = batch_norm(result, config)
        bar.update()
        inference(result, config, models)
        bar.update()
    return result


def _gradient_descent(design: np.ndarray, steps: int) -> tuple[np.ndarray, int | None]:
    """GD on ``Σ (y − design·p)²`` at η = 1/λ_max from p = 0; path, and the first update whose
    loss is within 1e-6 (relative) of the optimum's."""
    y = Y.numpy()
    H, c = 2 * design.T @ design, 2 * design.T @ y
    lr = 1 / np.linalg.eigvalsh(H)[-1]
    best = np.linalg.lstsq(design, y, rcond=None)[0]
    optimum = ((y - design @ best) ** 2).sum()
    p, path, converged = np.zeros(2), [np.zeros(2)], None
    for t in range(steps):
        p = p - lr * (H @ p - c)
        if t % 10 == 0 or t < 1000:
            path.append(p.copy())
        if converged is None and ((y - design @ p) ** 2).sum() <= optimum * (1 + 1e-6):
            converged = t + 1
            break
    return np.array(path), converged


def features(result: Result, config: Config) -> None:
    """Gradient descent at η = 1/λ_max on the lecture's regression, with raw inputs and with ``x̃ = (x − m)/σ``.

    Lecture claim: features on different scales make a long, narrow error surface; standardising makes it
    round, so gradient descent converges in a handful of updates instead of crawling.

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``quick``: at most 20,000 updates (else 200,000); ``seed`` is not used.

    Returns:
        ``None``. Adds the table ``features`` (Hessian condition number; updates until the loss is within
        1e-6, relative, of the optimum's), one claim and the figure ``features``.
    """
    x = X.numpy()
    steps = 20_000 if config.quick else 200_000
    raw = np.stack([np.ones_like(x), x], 1)
    scaled = np.stack([np.ones_like(x), (x - x.mean()) / x.std()], 1)
    rows, paths = [], {}
    for name, design in (("raw x", raw), ("standardised x", scaled)):
        eig = np.linalg.eigvalsh(2 * design.T @ design)
        path, converged = _gradient_descent(design, steps)
        paths[name] = (design, path)
        rows.append([name, eig[-1] / eig[0], converged if converged else f"> {steps:,}"])
    result.table("features", ["inputs", "Hessian condition number λ_max/λ_min", "updates to converge (η = 1/λ_max)"],
                 rows)
    result.claim("Standardising the features makes the error surface round, so gradient descent converges in a"
                 " handful of updates instead of crawling.",
                 isinstance(rows[1][2], int) and not isinstance(rows[0][2], int),
                 f"condition number {rows[0][1]:.3g} → {rows[1][1]:.3g}; updates to reach the optimum's loss (1e-6"
                 f" relative): {rows[0][2]} raw, {rows[1][2]} standardised",
                 "different feature scales make an elongated error surface; x̃ = (x − m)/σ makes it round")
    result.figure("features", "The same regression with raw and with standardised inputs", _features_figure(paths))


def _features_figure(paths: dict[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """Both error surfaces (log₁₀ of the loss, labelled colour bar) with gradient descent's path, stacked."""
    fig = Figure(figsize=(6.4, 10.0), layout="constrained")
    y = Y.numpy()
    for ax, (name, (design, path)) in zip(fig.subplots(2, 1), paths.items()):
        best = np.linalg.lstsq(design, y, rcond=None)[0]
        span = np.abs(best).max() * 1.3 + 1
        a, b = np.meshgrid(np.linspace(best[0] - span, best[0] + span, 200),
                           np.linspace(best[1] - span, best[1] + span, 200), indexing="ij")
        values = ((y[None, None] - a[..., None] * design[:, 0] - b[..., None] * design[:, 1]) ** 2).sum(-1)
        lines = ax.contour(a, b, np.log10(values), levels=25, cmap="viridis")
        fig.colorbar(lines, ax=ax).set_label("log₁₀ loss Σ (y − b − w·x)²")
        ax.plot(path[:, 0], path[:, 1], ".-", color="tab:red", ms=3, lw=1, zorder=3,
                label=r"gradient descent, $\eta = 1/\lambda_{max}$")
        ax.plot(*path[0], "o", mfc="none", mec="tab:red", mew=2, ms=10, zorder=4, label="start (0, 0)")
        ax.plot(*best, "k*", ms=13, zorder=5, label="optimum (least squares)")
        ax.set(title=name, xlabel="bias b", ylabel="weight w", aspect="equal")
        ax.legend(fontsize=9, loc="upper right")
    return fig


def _bn_paper_network(batch_norm: bool, seed: int) -> nn.Sequential:
    """3 hidden layers of 100 sigmoid units (Ioffe & Szegedy's MNIST network), for the digits."""
    return tl.nn.mlp(64, [100, 100, 100], 10, activation="sigmoid", batch_norm=batch_norm, seed=seed)


def batch_norm(result: Result, config: Config) -> dict[float, nn.Module]:
    """The BN paper's MNIST network (3 × 100 sigmoid units, batch 60, SGD) on the digits, with and without BN.

    Lecture claims (Ioffe & Szegedy 2015): batch normalisation reaches a given accuracy (here 90 % test
    accuracy) in fewer epochs, and tolerates a larger learning rate. 5 seeds (``config.seed + i``: digits
    split, weights and batch order), each claim decided on the paired per-seed difference.

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``quick``: 3 epochs at η ∈ {0.1, 1} (else 10 at η ∈ {0.1, 0.5, 2}); ``seed``: the first seed.

    Returns:
        The first seed's trained BN networks by learning rate, ``{η: model}``, for :func:`inference`. Adds the
        table ``batch_norm`` (η, network, over the seeds the mean final test accuracy and the first epoch at
        ≥ 90 % per seed), two claims and the figure ``batch_norm`` (mean test accuracy per epoch).
    """
    epochs = 3 if config.quick else 10
    lrs = (0.1, 1.0) if config.quick else (0.1, 0.5, 2.0)
    seed_list = seeds(config)
    curves, firsts, finals, bn_models = {}, {}, {}, {}
    for seed in seed_list:
        train, test = tl.data.load_digits(seed=seed)
        for lr in lrs:
            for bn in (False, True):
                model = _bn_paper_network(bn, seed)
                trainer = tl.train.Trainer(model, tl.optim.SGD(model.parameters(), lr=lr), tl.nn.cross_entropy,
                                           train, 60, epochs, eval_data=test, seed=seed, progress=False,
                                           device="cpu")
                summary = trainer.fit()
                accuracy = [r["eval_accuracy"] for r in trainer.history]
                key = (lr, "BN" if bn else "no BN")
                curves.setdefault(key, []).append(accuracy)
                # not reached within the epochs: counted as epochs + 1, so differences are lower bounds
                firsts.setdefault(key, []).append(next((i + 1 for i, a in enumerate(accuracy) if a >= TARGET),
                                                       epochs + 1))
                finals.setdefault(key, []).append(summary["eval_accuracy"])
                if bn and seed == seed_list[0]:
                    bn_models[lr] = model
    rows = [[lr, net, statistics.fmean(finals[lr, net]),
             ", ".join(str(e) if e <= epochs else f"> {epochs}" for e in firsts[lr, net])]
            for lr in lrs for net in ("no BN", "BN")]
    result.table("batch_norm", ["SGD η", "network", f"test accuracy after {epochs} epochs (mean)",
                                f"first epoch at ≥ {TARGET:.0%} test accuracy (per seed)"], rows)
    n = len(seed_list)
    best_plain = [min(firsts[lr, "no BN"][i] for lr in lrs) for i in range(n)]
    best_bn = [min(firsts[lr, "BN"][i] for lr in lrs) for i in range(n)]

    def shown(values: list[int]) -> str:
        return ", ".join(str(v) if v <= epochs else f"> {epochs}" for v in values)

    result.decide(f"With batch normalisation the sigmoid network reaches {TARGET:.0%} test accuracy in fewer epochs"
                  f" (best over η ∈ {{{', '.join(f'{v:g}' for v in lrs)}}}; a run that never reaches it counts as"
                  f" {epochs + 1} epochs, so the difference is a lower bound).", paired(best_plain, best_bn),
                  f"epochs to {TARGET:.0%} per seed: {shown(best_bn)} with BN, {shown(best_plain)} without",
                  "Inception: 72.2 % in 13.3M steps with BN vs 31.0M without (BN-x5: 2.1M, '14× fewer')")
    top = max(lrs)
    result.decide(f"Batch normalisation tolerates a larger learning rate (η = {top:g}): test accuracy with BN −"
                  " without > 0.", paired(finals[top, "BN"], finals[top, "no BN"]),
                  f"test accuracy at η = {top:g} after {epochs} epochs, mean over {n} seeds:"
                  f" {statistics.fmean(finals[top, 'BN']):.3f} with BN, {statistics.fmean(finals[top, 'no BN']):.3f}"
                  " without",
                  "BN-x5 / BN-x30: 5× and 30× the learning rate; BN-x5-Sigmoid 69.8 % where plain sigmoid stays at chance")
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    colours = dict(zip(lrs, ("tab:blue", "tab:orange", "tab:green")))
    for (lr, net), values in curves.items():
        mean = np.mean(values, 0)
        ax.plot(range(1, len(mean) + 1), mean, "o-" if net == "BN" else "s--", color=colours[lr], ms=4,
                label=f"{net}, η = {lr:g}")
    ax.axhline(TARGET, color="gray", lw=1, ls=":", label=f"{TARGET:.0%} test accuracy (the target)")
    ax.set(xlabel="epoch", ylabel=f"test accuracy (mean of {n} seeds)", ylim=(0, 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=9, ncol=2, loc="upper right", bbox_to_anchor=(1, 0.86))
    ax.grid(alpha=0.3)
    result.figure("batch_norm", f"The BN paper's sigmoid network on the digits, with and without BN ({n} seeds)", fig)
    return bn_models


def inference(result: Result, config: Config, models: dict[float, nn.Module]) -> None:
    """Batch normalisation at inference, with the moving averages ``μ̄ ← p μ̄ + (1 − p) μ``.

    Lecture claims: with μ̄ and σ̄ a BN network predicts one sample at a time exactly as in a batch (compared
    too with the statistics of batches of 2); PyTorch's ``momentum = 0.1`` is the lecture's p = 0.9
    (5 random batches through a fresh ``BatchNorm1d(3)``).

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``seed`` picks the digits split and the random batches; ``quick`` is not used.
        models: ``{η: trained BN model}`` from :func:`batch_norm` (no default; the first seed's); the smallest
            η's is used, and switched to eval mode. Both claims are identities, true or false whatever the
            seed, so they rest on this one model.

    Returns:
        ``None``. Adds two claims and a note.
    """
    _, test = tl.data.load_digits(seed=config.seed)
    x, y = test.tensors
    model = models[min(models)].eval()
    with torch.no_grad():
        batched = float((model(x).argmax(1) == y).float().mean())
        one_by_one = float(torch.cat([model(x[i:i + 1]).argmax(1) for i in range(len(y))]).eq(y).float().mean())
        pairs = copy.deepcopy(model).train()  # batch statistics of 2 samples, running averages untouched
        for m in pairs.modules():
            if isinstance(m, tl.nn.BatchNorm1d):
                m.track_running_stats = False
        two = float(torch.cat([pairs(x[i:i + 2]).argmax(1) for i in range(0, len(y) - 1, 2)])
                    .eq(y[:len(y) - len(y) % 2]).float().mean())
    result.claim("With the moving averages μ̄, σ̄ a batch-normalised network predicts one sample at a time exactly as"
                 " in a batch.", one_by_one == batched,
                 f"test accuracy {one_by_one:.4f} one by one, {batched:.4f} batched; with the statistics of batches of"
                 f" 2 instead it would be {two:.4f}", "inference uses μ̄ ← p μ̄ + (1 − p) μᵗ from training")
    bn = tl.nn.BatchNorm1d(3)  # PyTorch's momentum 0.1 is the lecture's p = 0.9
    gen = torch.Generator().manual_seed(config.seed)
    expected = torch.zeros(3)
    for _ in range(5):
        batch = torch.randn(16, 3, generator=gen) + 2
        bn(batch)
        expected = 0.9 * expected + 0.1 * batch.mean(0)
    result.claim("PyTorch's momentum = 0.1 is the lecture's p = 0.9: μ̄ ← 0.9 μ̄ + 0.1 μᵗ.",
                 torch.allclose(bn.running_mean, expected, atol=1e-6),
                 f"after 5 batches μ̄ = {[round(float(v), 4) for v in bn.running_mean]}, by hand with p = 0.9:"
                 f" {[round(float(v), 4) for v in expected]}", "the slide says 'PyTorch p = 0.1'")
    result.notes.append("The slide's 'p = 0.1 in PyTorch' refers to PyTorch's momentum = 0.1, the weight of the new"
                        " batch: in the lecture's formula μ̄ ← p μ̄ + (1 − p) μ that is p = 0.9. PyTorch (and trainlab)"
                        " keep the running variance unbiased, n/(n−1) σ², and normalise training batches with the"
                        " biased one.")
