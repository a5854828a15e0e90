"""Lecture part 2 — small batch vs large batch.

* time per update and per epoch against the batch size, on one CPU thread;
* training and test accuracy against the batch size at an equal number of epochs (the
  lecture reads the drop for large batches as an *optimisation* effect);
* the generalisation gap at *equal training loss* (Keskar et al. 2017): train a small and a
  large batch until the training loss is equally low, then compare test accuracy and the
  sharpness of the minimum, the top eigenvalue of the Hessian, on MNIST-1D;
* the critical batch size (McCandlish et al. 2018): the updates ``S`` and examples ``E`` needed
  to reach a fixed training loss at batch sizes spanning it, the paper's trade-off
  ``(S/S_min − 1)(E/E_min − 1) = 1`` fitted, and the gradient noise scale ``B_simple``
  (:class:`trainlab.instruments.NoiseScale`) against the fitted ``B_crit = E_min/S_min``.

Every claim that depends on random draws (data split, initial weights, batch order) is decided
over :data:`~trainlab.experiments.statistics.SEEDS` seeds, ``config.seed + i``, with a 95 % t interval
(:mod:`trainlab.experiments.statistics`). To afford that, the seeds (and, for the critical batch
size, the learning rates tried) train side by side as one :class:`Ensemble`: independent MLPs
whose weights are stacked, so one batched matrix product serves them all.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import nn

import trainlab as tl
from trainlab.experiments.result import Config, Result, one_thread, stages
from trainlab.experiments.statistics import interval, paired, seeds

NAME = "batch_size"
TITLE = "Batch size: time per update and per epoch, accuracy, sharpness and the critical batch size"
#: Read off the lecture's slide (MNIST, 60,000 training images, on a V100): seconds per epoch.
LECTURE_EPOCH = {1: 362, 10: 44, 100: 14, 1000: 9}
MNIST_TRAIN = 60_000
#: Learning rates tried for the critical batch size: 0.025 · √2ᵏ, k = 0 … 15 (0.025 … 4.5).
LADDER = tuple(0.025 * 2 ** (k / 2) for k in range(16))


def run(config: Config | None = None) -> Result:
    """Lecture part 2, small batch against large batch: :func:`timing`, :func:`equal_epochs`, :func:`equal_loss`,
    :func:`critical_batch`.

    Parameters:
        config: a :class:`~trainlab.experiments.result.Config` (default ``None``: ``Config()``). ``quick``
            times 30 updates per size instead of 100, trains 3 epochs instead of 15, trains to a training loss
            of 0.3 instead of 0.1 on half the training samples for the equal-loss comparison, and to 1.4
            instead of 1.0 at four batch sizes instead of six for the critical batch size; ``seed`` is the
            first of the :data:`~trainlab.experiments.statistics.SEEDS` seeds (data splits, initial weights and batch order); ``progress``
            shows a bar over the 4 stages.

    Returns:
        A :class:`~trainlab.experiments.result.Result` named ``"batch_size"`` (``seconds`` set) with the
        tables ``timing``, ``equal_epochs``, ``equal_loss``, ``critical_batch`` and ``noise_scale``; the
        figures ``timing``, ``equal_epochs`` and ``critical_batch``; seven claims (longer per update; less
        time per epoch; the full batch trains worse at equal epochs; at equal loss the large batch is sharper
        and generalises worse; the trade-off curve fits; ``B_simple`` predicts ``B_crit``); and notes.
    """
    config = config or Config()
    result = Result(NAME, TITLE, config=config)
    with stages(result, 4) as bar, one_thread():
        timing(result, config)
        bar.update()
        equal_epochs(result, config)
        bar.update()
        equal_loss(result, config)
        bar.update()
        critical_batch(result, config)
        bar.update()
    return result


def _sizes(n: int) -> list[int]:
    return [1, 10, 100, 1000, n]


# --------------------------------------------------------------------------------------------- ensemble

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


class Ensemble:
    """``K`` independent MLPs (``tl.nn.mlp``, one per seed, each repeated ``copies`` times) trained side by
    side: layer ``l``'s weights are one ``(K, in, out)`` tensor, so a forward pass is one batched matrix
    product per layer (``torch.baddbmm``) for all of them. Row ``k`` starts from
    ``tl.nn.mlp(in_features, hidden, out_features, activation, seed=seeds[k // copies])``, and a step on the
    sum of the rows' mean losses gives each row exactly its own gradient — row ``k`` trains as that network
    would alone (checked in ``tests/experiments/test_batch_size.py`` against :class:`trainlab.train.Trainer`).

    Parameters: ``in_features``, ``hidden`` (widths), ``out_features``, ``seeds``, ``copies`` (1: rows per
    seed, e.g. one per learning rate), ``activation`` (``"relu"``, ``"tanh"`` or ``"sigmoid"``).
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, seeds: Sequence[int],
                 copies: int = 1, activation: str = "relu"):
        self.shape = (in_features, list(hidden), out_features, activation)
        nets = [tl.nn.mlp(in_features, list(hidden), out_features, activation=activation, seed=s) for s in seeds]
        layers = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
        self.params: list[torch.Tensor] = []
        for i in range(len(layers[0])):
            w = torch.stack([net[i].weight.detach().T for net in layers for _ in range(copies)])
            b = torch.stack([net[i].bias.detach() for net in layers for _ in range(copies)]).unsqueeze(1)
            self.params += [w.contiguous().requires_grad_(), b.contiguous().requires_grad_()]
        self.activation = _ACTIVATIONS[activation]
        self.adam: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.steps = 0

    def __len__(self) -> int:
        return len(self.params[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs ``(K, B, out)`` of inputs ``(K, B, in)`` (row ``k``'s samples through network ``k``)."""
        last = len(self.params) - 2
        for i in range(0, len(self.params), 2):
            x = torch.baddbmm(self.params[i + 1], x, self.params[i])
            if i < last:
                x = self.activation(x)
        return x

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each row's mean cross-entropy, ``(K,)``, on its samples ``x`` ``(K, B, in)``, labels ``y`` ``(K, B)``."""
        out = self.forward(x)
        k, b, c = out.shape
        return F.cross_entropy(out.reshape(k * b, c), y.reshape(-1), reduction="none").view(k, b).mean(1)

    def sgd(self, losses: torch.Tensor, lr: torch.Tensor | float) -> None:
        """One step of plain SGD, ``θ ← θ − η g``, on every row (``lr`` a number or one per row, ``(K, 1, 1)``)."""
        grads = torch.autograd.grad(losses.sum(), self.params)
        self.steps += 1
        with torch.no_grad():
            for p, g in zip(self.params, grads):
                if isinstance(lr, torch.Tensor):
                    p.addcmul_(lr, g, value=-1.0)
                else:
                    p.add_(g, alpha=-lr)

    def adam_step(self, losses: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                  eps: float = 1e-8) -> None:
        """One step of Adam (Kingma & Ba, as ``torch.optim.Adam``) on every row."""
        grads = torch.autograd.grad(losses.sum(), self.params)
        if self.adam is None:
            self.adam = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]
        self.steps += 1
        c1, c2 = 1 - betas[0] ** self.steps, 1 - betas[1] ** self.steps
        with torch.no_grad():
            for p, g, (m, v) in zip(self.params, grads, self.adam):
                m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
                v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
                p.addcdiv_(m, (v / c2).sqrt_().add_(eps), value=-lr / c1)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the rows where the boolean mask ``rows`` is true (the others stop training)."""
        with torch.no_grad():
            self.params = [p[rows].clone().requires_grad_() for p in self.params]
            if self.adam is not None:
                self.adam = [(m[rows].clone(), v[rows].clone()) for m, v in self.adam]

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's mean cross-entropy and accuracy, ``(K,)`` each, on its ``x`` ``(K, N, in)``, ``y`` ``(K, N)``."""
        out = self.forward(x)
        k, n, c = out.shape
        loss = F.cross_entropy(out.reshape(k * n, c), y.reshape(-1), reduction="none").view(k, n).mean(1)
        return loss, (out.argmax(-1) == y).float().mean(1)

    def snapshot(self, k: int) -> list[torch.Tensor]:
        """Row ``k``'s parameters (copies)."""
        return [p[k].detach().clone() for p in self.params]

    def module(self, k: int | list[torch.Tensor]) -> nn.Sequential:
        """Row ``k`` (or a :meth:`snapshot`) as a ``tl.nn.mlp`` module, for the instruments and the curvature API."""
        params = self.snapshot(k) if isinstance(k, int) else k
        net = tl.nn.mlp(*self.shape[:3], activation=self.shape[3])
        with torch.no_grad():
            for i, layer in enumerate(m for m in net if isinstance(m, nn.Linear)):
                layer.weight.copy_(params[2 * i].T)
                layer.bias.copy_(params[2 * i + 1][0])
        return net


def _stacked(loader: Callable[[int], tuple], seed_list: list[int]) -> tuple[torch.Tensor, ...]:
    """Each seed's split, stacked: ``x_train (K, N, d), y_train (K, N), x_test, y_test``."""
    splits = [loader(s) for s in seed_list]
    return (torch.stack([tr.tensors[0] for tr, _ in splits]), torch.stack([tr.tensors[1] for tr, _ in splits]),
            torch.stack([te.tensors[0] for _, te in splits]), torch.stack([te.tensors[1] for _, te in splits]))


def _epoch_orders(generators: list[torch.Generator], n: int) -> torch.Tensor:
    """One permutation of ``n`` samples per generator, ``(K, n)``: the :class:`~trainlab.train.Trainer`'s order."""
    return torch.stack([torch.randperm(n, generator=g) for g in generators])


def _mean_sd(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.3g} ± {statistics.stdev(values):.2g}"


# ----------------------------------------------------------------------------------------------- timing

def timing(result: Result, config: Config) -> None:
    """Time per update and per epoch of SGD on an MLP 64-128-128-10 on the digits, on one CPU thread.

    Lecture claim: a larger batch takes longer per update but less time per epoch (measured there on a V100
    with MNIST). Batch sizes 1, 10, 100, 1,000 and the whole training set. These are measurements of this
    machine, not random draws of a seed, so the claims rest on one measurement each (medians of the timed
    updates).

    The lecture's column of seconds per update is derived from its seconds per epoch, ``s/epoch ÷ (60,000/B)``
    (the slide reads "≈ 0 s" for batches up to 100, which is that number rounded): 362/60,000 ≈ 0.0060 s,
    44/6,000 ≈ 0.0073 s, 14/600 ≈ 0.023 s, 9/60 = 0.15 s (the slide's own 0.15 s).

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``seed`` picks the digits split, the weights and the sample order; ``quick``: 30 timed
            updates per size (else 100; the median leaves out the first 5).

    Returns:
        ``None``. Adds the table ``timing`` (batch size, updates per epoch, median ms per update, s per epoch,
        the lecture's times), two claims, a note and the figure ``timing``.
    """
    train, _ = tl.data.load_digits(seed=config.seed)
    x, y = train.tensors
    rows = []
    for b in _sizes(len(y)):
        model = tl.nn.mlp(64, [128, 128], 10, seed=config.seed)
        opt = tl.optim.SGD(model.parameters(), lr=0.01)
        gen = torch.Generator().manual_seed(config.seed)
        order = torch.randperm(len(y), generator=gen)

        def update(i: int) -> None:
            idx = order[(i * b) % len(y):(i * b) % len(y) + b]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()

        per_update = []
        for i in range(30 if config.quick else 100):
            t0 = time.perf_counter()
            update(i)
            per_update.append(time.perf_counter() - t0)
        updates = -(-len(y) // b)
        t0 = time.perf_counter()
        for i in range(updates):  # one whole epoch
            update(i)
        epoch = time.perf_counter() - t0
        lecture = LECTURE_EPOCH.get(b)
        rows.append([b, updates, 1e3 * statistics.median(per_update[5:]), epoch,
                     lecture / (MNIST_TRAIN / b) if lecture else None, lecture])
    result.table("timing", ["batch size", "updates per epoch", "ms per update", "s per epoch",
                            "lecture s/update (V100, MNIST; s/epoch ÷ 60,000/B)", "lecture s/epoch"], rows)
    first, last = rows[0], rows[-1]
    result.claim("A larger batch takes longer per update.", last[2] > 2 * first[2],
                 f"batch {first[0]}: {first[2]:.3f} ms per update; full batch ({last[0]}): {last[2]:.3f} ms"
                 f" ({last[2] / first[2]:.0f}×, one CPU thread; one measurement of this machine, not a seed draw)",
                 "V100: ≈ 0.006 s (batch 1) to 0.15 s (1,000) per update, from its times per epoch; 1.55 s at 10,000")
    result.claim("A larger batch takes less time per epoch.", last[3] < first[3],
                 f"batch {first[0]}: {first[3]:.3f} s per epoch; full batch: {last[3]:.4f} s"
                 f" ({first[3] / last[3]:.0f}× less)", "V100: 362 s (batch 1) down to 9 s (1,000 and above)")
    result.notes.append("The lecture's seconds per update are its seconds per epoch divided by the updates in an"
                        " epoch of MNIST's 60,000 images: 362/60,000 ≈ 0.0060 s (batch 1), 44/6,000 ≈ 0.0073 s"
                        " (10), 14/600 ≈ 0.023 s (100), 9/60 = 0.15 s (1,000, the slide's own reading); the slide"
                        " shows the first three as '≈ 0 s'.")
    result.figure("timing", "Time per update and per epoch against batch size (one CPU thread)", _timing_figure(rows))


def _timing_figure(rows: list[list]) -> Figure:
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.add_subplot()
    sizes = [r[0] for r in rows]
    ax.loglog(sizes, [r[2] / 1e3 for r in rows], "o-", color="tab:blue", label="time per update (this CPU)")
    ax.loglog(sizes, [r[3] for r in rows], "s-", color="tab:orange", label="time per epoch (this CPU)")
    lecture = [r for r in rows if r[5] is not None]
    ax.loglog([r[0] for r in lecture], [r[4] for r in lecture], "o:", color="tab:blue", mfc="none",
              label="per update, lecture (V100, MNIST)")
    ax.loglog([r[0] for r in lecture], [r[5] for r in lecture], "s:", color="tab:orange", mfc="none",
              label="per epoch, lecture (V100, MNIST)")
    ax.set(xlabel="batch size B", ylabel="seconds")
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    ax.grid(alpha=0.3, which="both")
    return fig


# ------------------------------------------------------------------------------------------ equal epochs

def equal_epochs(result: Result, config: Config) -> None:
    """MLPs 64-32-10 trained by SGD (η = 0.01) for the same number of epochs at each batch size, on the digits.

    Lecture claim: at an equal number of epochs large batches train worse, an optimisation effect.
    Batch sizes 1, 10, 100, 1,000 and the whole training set; each of the :data:`~trainlab.experiments.statistics.SEEDS` seeds draws its own
    digits split, initial weights and batch order (epochs walk a permutation, as the Trainer does).

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``quick``: 3 epochs (else 15); ``seed``: the first seed.

    Returns:
        ``None``. Adds the table ``equal_epochs`` (batch size, updates, and over the seeds the mean train loss,
        train and test accuracy), one claim (the best smaller batch's train accuracy minus the full batch's,
        per seed, held when its 95 % interval lies above 0.02) and the figure ``equal_epochs``.
    """
    seed_list = seeds(config)
    x, y, xt, yt = _stacked(lambda s: tl.data.load_digits(seed=s), seed_list)
    n, epochs = x.shape[1], 3 if config.quick else 15
    rows_of = torch.arange(len(seed_list))[:, None]
    rows, per_seed = [], {}
    for b in _sizes(n):
        ens = Ensemble(64, [32], 10, seed_list)
        gens = [torch.Generator().manual_seed(s) for s in seed_list]
        for _ in range(epochs):
            order = _epoch_orders(gens, n)
            for start in range(0, n, b):
                idx = order[:, start:start + b]
                ens.sgd(ens.losses(x[rows_of, idx], y[rows_of, idx]), 0.01)
        loss, train_acc = ens.evaluate(x, y)
        _, test_acc = ens.evaluate(xt, yt)
        per_seed[b] = train_acc.tolist()
        rows.append([b, ens.steps, float(loss.mean()), float(train_acc.mean()), float(test_acc.mean()),
                     _mean_sd(train_acc.tolist())])
    result.table("equal_epochs", ["batch size", "updates", "train loss", "train accuracy", "test accuracy",
                                  f"train accuracy, mean ± sd over {len(seed_list)} seeds"], rows)
    full = per_seed[n]
    best_small = [max(per_seed[b][i] for b in _sizes(n)[:-1]) for i in range(len(seed_list))]
    iv = paired(best_small, full)
    result.decide(f"At an equal number of epochs ({epochs}, SGD η = 0.01), the full batch trains worse than small"
                  " batches (an optimisation effect): the best smaller batch's training accuracy exceeds the full"
                  " batch's by more than 0.02.", iv,
                  f"train accuracy, mean over {len(seed_list)} seeds: best smaller batch"
                  f" {statistics.fmean(best_small):.3f}, full batch ({n}) {statistics.fmean(full):.3f}"
                  f" ({epochs} updates against up to {epochs * n:,})",
                  "MNIST train accuracy .982 (batch 1) … .838 (60,000); CIFAR-10 .58 … .30", threshold=0.02)
    result.figure("equal_epochs", f"Accuracy after {epochs} epochs against batch size ({len(seed_list)} seeds)",
                  _accuracy_figure(rows, per_seed, seed_list))


def _accuracy_figure(rows: list[list], per_seed: dict[int, list[float]], seed_list: list[int]) -> Figure:
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    sizes = [r[0] for r in rows]
    ax.semilogx(sizes, [r[3] for r in rows], "o-", color="tab:blue", label=f"train (mean of {len(seed_list)} seeds)")
    ax.semilogx(sizes, [r[4] for r in rows], "s--", color="tab:orange", label="test (mean)")
    for i in range(len(seed_list)):
        ax.semilogx(sizes, [per_seed[b][i] for b in sizes], ".", color="tab:blue", alpha=0.4, ms=5,
                    label="train, each seed" if i == 0 else None)
    ax.set(xlabel="batch size B", ylabel="accuracy")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3, which="both")
    return fig


# -------------------------------------------------------------------------------------------- equal loss

def _train_to_loss(x: torch.Tensor, y: torch.Tensor, seed_list: list[int], batch: int, target: float,
                   max_epochs: int) -> tuple[dict[int, tuple[int, int, float, list[torch.Tensor]]], Ensemble]:
    """Adam (η = 3e-3) on MLPs 40-128-128-10, one per seed, until each one's loss over its whole training
    set is below ``target`` (checked after an epoch whose running batch loss is below 1.5 × target).
    Returns per row ``k`` (updates, epochs, training loss, parameters) when it got there (or when the epochs
    ran out), and the ensemble (for :meth:`Ensemble.module`)."""
    ens = Ensemble(x.shape[2], [128, 128], 10, seed_list)
    gens = [torch.Generator().manual_seed(s) for s in seed_list]
    alive, done, n = list(range(len(seed_list))), {}, x.shape[1]
    for epoch in range(1, max_epochs + 1):
        rows = torch.tensor(alive)[:, None]
        order = _epoch_orders([gens[k] for k in alive], n)
        running = torch.zeros(len(alive))
        for start in range(0, n, batch):
            idx = order[:, start:start + batch]
            losses = ens.losses(x[rows, idx], y[rows, idx])
            running += losses.detach() * idx.shape[1] / n
            ens.adam_step(losses, 3e-3)
        if float(running.min()) > 1.5 * target and epoch < max_epochs:
            continue
        loss, _ = ens.evaluate(x[rows[:, 0]], y[rows[:, 0]])
        reached = loss < target
        for j in torch.nonzero(reached).flatten().tolist():
            done[alive[j]] = (ens.steps, epoch, float(loss[j]), ens.snapshot(j))
        if epoch == max_epochs:  # the budget ran out: keep where they are, flagged by their loss
            for j, k in enumerate(alive):
                done.setdefault(k, (ens.steps, epoch, float(loss[j]), ens.snapshot(j)))
        if bool(reached.any()):
            ens.keep(~reached)
            alive = [k for k, r in zip(alive, reached.tolist()) if not r]
        if not alive:
            break
    return done, ens


def equal_loss(result: Result, config: Config) -> None:
    """Small batch (32) against large batch (a tenth of the training set), trained to the same training loss.

    Lecture claim (Keskar et al. 2017): the large batch lands in a sharper minimum and generalises worse.
    MLPs 40-128-128-10 on MNIST-1D, Adam η = 3e-3 until the loss over the whole training set is below the
    target; sharpness is the top Hessian eigenvalue of the training loss on the first 1,000 training samples
    (Lanczos, :func:`trainlab.curvature.eigs`). Keskar et al.'s large batch is 10 % of the training set.

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``quick``: the first 2,000 training samples (batches 32 and 200) and target 0.3 (else all
            4,000, batches 32 and 400, and target 0.1); at most 100 / 400 epochs (small / large batch);
            ``seed``: the first of the seeds (data split, weights and batch order).

    Returns:
        ``None``. Adds the table ``equal_loss`` (per seed and batch size: updates, epochs, train loss, test
        accuracy, top Hessian eigenvalue), two claims decided over the seeds (the log ratio of the top
        eigenvalues above 0; the test accuracy difference small − large above 0) and a note.
    """
    seed_list = seeds(config)
    x, y, xt, yt = _stacked(lambda s: tl.data.load("mnist1d", seed=s), seed_list)
    if config.quick:
        x, y = x[:, :2000], y[:, :2000]
    target = 0.3 if config.quick else 0.1
    small_b, large_b = 32, x.shape[1] // 10
    rows, measured = [], {}
    for b, max_epochs in ((small_b, 100), (large_b, 400)):
        runs, ens = _train_to_loss(x, y, seed_list, b, target, max_epochs)
        for k, s in enumerate(seed_list):
            steps, epochs, loss, params = runs[k]
            model = ens.module(params)
            with torch.no_grad():
                accuracy = float((model(xt[k]).argmax(1) == yt[k]).float().mean())
            top = tl.curvature.eigs(model, F.cross_entropy, (x[k], y[k]), k=1, which="largest", tol=1e-3,
                                    max_samples=1000, progress=False)
            measured[b, k] = (loss, accuracy, float(top.values[0]))
            rows.append([s, b, steps, epochs, loss, accuracy, float(top.values[0])])
    result.table("equal_loss", ["seed", "batch size", "updates", "epochs", "train loss", "test accuracy",
                                "top Hessian eigenvalue"], rows)
    reached = all(measured[b, k][0] < target for b in (small_b, large_b) for k in range(len(seed_list)))
    missed = "" if reached else f"; not every run reached the target {target} within its epochs (see the table)"
    sharp_s = [measured[small_b, k][2] for k in range(len(seed_list))]
    sharp_l = [measured[large_b, k][2] for k in range(len(seed_list))]
    acc_s = [measured[small_b, k][1] for k in range(len(seed_list))]
    acc_l = [measured[large_b, k][1] for k in range(len(seed_list))]
    log_ratio = interval([math.log(a / b) for a, b in zip(sharp_l, sharp_s)])
    result.decide(f"Trained to the same training loss (< {target}), the large batch ({large_b}) lands in a sharper"
                  f" minimum than the small batch ({small_b}): ln(λ_max large / λ_max small) > 0.", log_ratio,
                  f"top Hessian eigenvalue, mean over {len(seed_list)} seeds: {statistics.fmean(sharp_l):.3g}"
                  f" (batch {large_b}) vs {statistics.fmean(sharp_s):.3g} (batch {small_b}), ratio"
                  f" {math.exp(log_ratio.mean):.2f}× (geometric mean){missed}",
                  "Keskar et al. 2017: large batches converge to sharp minima")
    result.decide("... and generalises worse: test accuracy small batch − large batch > 0.", paired(acc_s, acc_l),
                  f"test accuracy, mean over {len(seed_list)} seeds: {statistics.fmean(acc_l):.3f} (batch {large_b})"
                  f" vs {statistics.fmean(acc_s):.3f} (batch {small_b}){missed}",
                  "Keskar et al. Table 2: e.g. F1 (MNIST) test 98.03 → 97.81 %, C1 (CIFAR-10) 80.04 → 77.26 %")
    result.notes.append(f"Equal-loss comparison on MNIST-1D ({x.shape[1]} training samples per seed), MLP"
                        f" 40-128-128-10, Adam η = 3e-3 until the loss over the whole training set is below {target};"
                        " sharpness is the top Hessian eigenvalue of the training loss on the first 1,000 training"
                        f" samples (Lanczos). The large batch, {large_b}, is Keskar et al.'s 10 % of the training set.")


# ------------------------------------------------------------------------------------ critical batch size

def steps_to_target(x: torch.Tensor, y: torch.Tensor, seed_list: list[int], batch: int, lrs: Sequence[float],
                    hidden: Sequence[int], target: float, max_steps: int, window: float = 0.1
                    ) -> dict[int, tuple[int, float, list[torch.Tensor]]]:
    """Updates of SGD at batch size ``batch`` until the training loss is below ``target``, at the best of ``lrs``.

    Every (seed, learning rate) pair trains as one row of an :class:`Ensemble` (MLP ``in``-``hidden``-10,
    ReLU), the rows of a seed on the same batches (drawn with replacement from its training set). The loss
    is the mean of the batch losses over the last ``⌈window · t⌉`` updates, an estimate of the training loss
    at update ``t`` lagging it by about ``window/2 · t`` — the same relative lag at every batch size, so
    ratios of updates are unaffected. A seed is done at the first update where one of its learning rates
    gets below ``target``: no other learning rate can need fewer updates.

    Returns per seed index ``i`` (into ``seed_list``; missing when no learning rate got there within
    ``max_steps``): the updates, the learning rate, and its parameters at that update.
    """
    n_lr, n_seed, n = len(lrs), len(seed_list), x.shape[1]
    ens = Ensemble(x.shape[2], hidden, 10, seed_list, copies=n_lr)
    rows = torch.arange(n_seed * n_lr)  # the original row of each row still training
    lr = torch.tensor([float(v) for _ in seed_list for v in lrs]).view(-1, 1, 1)
    gens = [torch.Generator().manual_seed(s) for s in seed_list]
    sums = torch.zeros(max_steps + 1, n_seed * n_lr)  # cumulative batch losses
    found: dict[int, tuple[int, float, list[torch.Tensor]]] = {}
    for t in range(1, max_steps + 1):
        data_rows = rows // n_lr  # the seed of each row
        seed_of = data_rows.tolist()
        draws = {i: torch.randint(0, n, (batch,), generator=gens[i]) for i in dict.fromkeys(seed_of)}
        idx = torch.stack([draws[i] for i in seed_of])
        losses = ens.losses(x[data_rows[:, None], idx], y[data_rows[:, None], idx])
        ens.sgd(losses, lr)
        sums[t, rows] = sums[t - 1, rows] + losses.detach()
        w = max(1, math.ceil(window * t))
        estimate = (sums[t, rows] - sums[t - w, rows]) / w
        below = estimate < target
        finite = torch.isfinite(losses)
        if bool(below.any()) or not bool(finite.all()):
            for j in torch.nonzero(below).flatten().tolist():  # a tie goes to the smaller rate
                found.setdefault(seed_of[j], (t, lrs[int(rows[j]) % n_lr], ens.snapshot(j)))
            keep = finite & torch.tensor([i not in found for i in seed_of])
            if not bool(keep.any()):
                break
            ens.keep(keep)
            rows, lr = rows[keep], lr[keep]
    return found


def _fit_tradeoff(batches: Sequence[int], steps: Sequence[float]) -> tuple[float, float]:
    """``S_min, E_min`` of ``S = S_min + E_min / B`` — the paper's ``(S/S_min − 1)(E/E_min − 1) = 1`` with
    ``E = B·S`` — by least squares on the relative error ``1 − (S_min + E_min/B)/S`` (linear in both)."""
    b, s = np.asarray(batches, float), np.asarray(steps, float)
    design = np.stack([np.ones_like(b), 1 / b], 1) / s[:, None]
    s_min, e_min = np.linalg.lstsq(design, np.ones_like(s), rcond=None)[0]
    return float(s_min), float(e_min)


def critical_batch(result: Result, config: Config) -> None:
    """The critical batch size on MNIST-1D (McCandlish et al. 2018, "An empirical model of large-batch training").

    For each batch size ``B`` (16, 32, …, 512), SGD on MLPs 40-64-64-10 (ReLU) trains until the training loss
    (the running mean of the batch losses, see :func:`steps_to_target`) is below a target; ``S`` is the
    updates, ``E = B·S`` the examples. The learning rate is tuned per batch size, as in the paper: the
    smallest batch tries eight rates of :data:`LADDER` (0.05 … 0.57); each next batch (twice as large) tries
    the previous winner × (1/√2, 1, √2, 2) — the best rate grows at most in proportion to the batch. The
    paper's model, ``S = S_min (1 + B_crit/B)`` and ``E = E_min (1 + B/B_crit)``, i.e.
    ``(S/S_min − 1)(E/E_min − 1) = 1`` with ``B_crit = E_min/S_min``, is fitted per seed (:func:`_fit_tradeoff`).
    The simple noise scale ``B_simple = tr Σ / ‖G‖²`` (:class:`trainlab.instruments.NoiseScale`, on the first
    1,000 training samples) is read at the parameters where each batch size's run reached the target, and
    pooled, ``Σ tr Σ / Σ ‖G‖²``: the noise scale at the target loss.

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``quick``: target 1.4, batch sizes 16 … 128 and the noise scale on 500 samples (else 1.0,
            16 … 512 and 1,000); ``seed``: the first of the seeds (data split, weights, batch draws).

    Returns:
        ``None``. Adds the tables ``critical_batch`` (per batch size: learning rates tried and chosen, updates
        and examples over the seeds, the fit's updates) and ``noise_scale`` (per seed: ``S_min``, ``E_min``,
        ``B_crit``, ``B_simple`` at the target and at initialisation), two claims decided over the seeds, a
        note and the figure ``critical_batch`` (examples against updates, with the fitted curve).
    """
    seed_list = seeds(config)
    x, y, _, _ = _stacked(lambda s: tl.data.load("mnist1d", seed=s), seed_list)
    target = 1.4 if config.quick else 1.0
    batches = [16, 32, 64, 128] if config.quick else [16, 32, 64, 128, 256, 512]
    samples = 500 if config.quick else 1000  # for the noise scale
    hidden = [64, 64]
    found, tried, winner = {}, {}, None
    for b in batches:
        if winner is None:
            lrs = list(LADDER[2:10])
        else:
            i = LADDER.index(winner)
            lrs = list(LADDER[max(0, i - 1):i + 3])
        tried[b] = lrs
        found[b] = steps_to_target(x, y, seed_list, b, lrs, hidden, target, max_steps=20_000)
        if found[b]:
            winner = min(lr for _, lr, _ in found[b].values())
    complete = [i for i in range(len(seed_list)) if all(i in found[b] for b in batches)]
    noise = tl.instruments.NoiseScale(max_samples=samples)
    ens = Ensemble(x.shape[2], hidden, 10, seed_list)
    fits, table = {}, []
    for i in complete:
        s_min, e_min = _fit_tradeoff(batches, [found[b][i][0] for b in batches])
        trace = norm_sq = 0.0
        for b in batches:
            reading = noise.read(tl.instruments.Context(ens.module(found[b][i][2]), F.cross_entropy,
                                                        (x[i], y[i])))
            trace, norm_sq = trace + reading["trace_sigma"], norm_sq + reading["grad_norm_sq"]
        at_init = noise.read(tl.instruments.Context(ens.module(i), F.cross_entropy, (x[i], y[i])))["value"]
        b_crit, b_simple = e_min / s_min, trace / norm_sq
        fits[i] = (s_min, e_min, b_crit, b_simple)
        table.append([seed_list[i], s_min, e_min, b_crit, b_simple, at_init, b_simple / b_crit])
    result.table("noise_scale", ["seed", "S_min (updates)", "E_min (examples)", "B_crit = E_min/S_min",
                                 f"B_simple at loss {target}", "B_simple at initialisation", "B_simple / B_crit"],
                 table)
    rows = []
    for b in batches:
        steps = [found[b][i][0] for i in complete]
        chosen = [found[b][i][1] for i in complete]
        fitted = [fits[i][0] + fits[i][1] / b for i in complete]
        rows.append([b, ", ".join(f"{v:.3g}" for v in tried[b]), ", ".join(f"{v:.3g}" for v in chosen),
                     statistics.fmean(steps), f"{min(steps)}–{max(steps)}", b * statistics.fmean(steps),
                     statistics.fmean(fitted)])
    result.table("critical_batch", ["batch size B", "SGD η tried", "η chosen (per seed)", "updates S (mean)",
                                    "updates S (range)", "examples E = B·S (mean)", "S of the fitted curve (mean)"],
                 rows)
    missing = len(seed_list) - len(complete)
    lacking = f"; {missing} seed(s) did not reach the target at every batch size and are left out" if missing else ""
    if len(complete) < 2:
        result.notes.append(f"Critical batch size: only {len(complete)} seed(s) reached the target loss {target} at"
                            " every batch size, too few to decide its claims.")
        return
    worst = [max(abs(found[b][i][0] / (fits[i][0] + fits[i][1] / b) - 1) for b in batches) for i in complete]
    result.decide(f"Updates and examples to reach a training loss of {target} trade off as"
                  " (S/S_min − 1)(E/E_min − 1) = 1: the fitted curve is within 15 % of the updates measured at"
                  f" every batch size ({batches[0]} … {batches[-1]}).",
                  interval([0.15 - w for w in worst]),
                  f"largest deviation from the fit, mean over {len(complete)} seeds: {statistics.fmean(worst):.1%}"
                  f" (worst seed {max(worst):.1%}); from B = {batches[0]} to {batches[-1]} the updates fall"
                  f" {rows[0][3] / rows[-1][3]:.1f}× while the batch grows {batches[-1] // batches[0]}×{lacking}",
                  "McCandlish et al. 2018 (not in the lecture): S = S_min(1 + B_crit/B), E = E_min(1 + B/B_crit)",
                  threshold=0.0)
    closeness = [1 - abs(math.log2(fits[i][3] / fits[i][2])) for i in complete]
    ratio = interval([math.log2(fits[i][3] / fits[i][2]) for i in complete])
    result.decide(f"The gradient noise scale predicts the critical batch size: B_simple = tr Σ / ‖G‖², read at the"
                  f" loss {target}, is within a factor of 2 of the fitted B_crit = E_min/S_min"
                  " (1 − |log₂(B_simple/B_crit)| > 0).", interval(closeness),
                  f"B_crit {_mean_sd([fits[i][2] for i in complete])}, B_simple {_mean_sd([fits[i][3] for i in complete])}"
                  f" over {len(complete)} seeds; B_simple/B_crit = 2^({ratio.mean:+.2f}), 95 % interval"
                  f" ×{2 ** ratio.low:.2f} … ×{2 ** ratio.high:.2f}{lacking}",
                  "McCandlish et al. 2018 (not in the lecture): B_crit ≈ B_noise, which B_simple equals when the"
                  " Hessian is a multiple of the identity")
    result.notes.append(
        f"Critical batch size on MNIST-1D ({x.shape[1]} training samples per seed): SGD on MLPs 40-64-64-10 (ReLU),"
        f" batches drawn with replacement, until the mean batch loss over the last 10 % of the updates is below"
        f" {target}; the learning rate tuned per batch size (table critical_batch). B_simple is read with"
        f" trainlab.instruments.NoiseScale on the first {samples:,} training samples at the parameters where each"
        " batch size reached the target, pooled over the batch sizes (Σ tr Σ / Σ ‖G‖²).")
    result.figure("critical_batch", f"Updates against examples to reach a training loss of {target}, with the"
                  " fitted trade-off (S/S_min − 1)(E/E_min − 1) = 1",
                  _tradeoff_figure(batches, found, complete, fits, target))


def _tradeoff_figure(batches: list[int], found: dict, complete: list[int], fits: dict, target: float) -> Figure:
    fig = Figure(figsize=(6.4, 5.0), layout="constrained")
    ax = fig.add_subplot()
    s_min = math.exp(statistics.fmean(math.log(fits[i][0]) for i in complete))
    e_min = math.exp(statistics.fmean(math.log(fits[i][1]) for i in complete))
    b_crit, b_simple = e_min / s_min, math.exp(statistics.fmean(math.log(fits[i][3]) for i in complete))
    cmap = colormaps["viridis"]
    colours = {b: cmap(j / max(len(batches) - 1, 1)) for j, b in enumerate(batches)}
    for b in batches:
        s = [found[b][i][0] for i in complete]
        ax.scatter([b * v for v in s], s, color=colours[b], s=22, alpha=0.75, zorder=3, edgecolors="none",
                   label=f"B = {b} ({len(s)} seeds)")
    grid = np.geomspace(batches[0] / 4, batches[-1] * 4, 200)
    ax.plot(e_min * (1 + grid / b_crit), s_min * (1 + b_crit / grid), "k-", lw=1.5, zorder=2,
            label=r"fit $(S/S_{min}-1)(E/E_{min}-1)=1$")
    ax.axhline(s_min, color="gray", ls="--", lw=1, label=r"$S_{min}$ (infinite batch)")
    ax.axvline(e_min, color="gray", ls=":", lw=1.2, label=r"$E_{min}$ (batch → 0)")
    ax.plot([2 * e_min], [2 * s_min], "k*", ms=14, zorder=4,
            label=rf"$B_{{crit}} = E_{{min}}/S_{{min}} \approx {b_crit:.0f}$: $2S_{{min}}, 2E_{{min}}$")
    ax.plot([e_min * (1 + b_simple / b_crit)], [s_min * (1 + b_crit / b_simple)], "D", color="tab:red", ms=9,
            mfc="none", mew=2, zorder=5, label=rf"$B_{{simple}} \approx {b_simple:.0f}$ on the fitted curve")
    ax.set(xscale="log", yscale="log", xlabel="examples E to reach the target loss",
           ylabel="updates S to reach the target loss")
    ax.set_title(f"training loss {target}; geometric means of the seeds' fits", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3, which="both")
    return fig
