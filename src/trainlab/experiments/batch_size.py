"""Lecture part 2 — small batch vs large batch.

* time per update and per epoch against the batch size, on one CPU thread;
* training and test accuracy against the batch size at an equal number of epochs (the
  lecture reads the drop for large batches as an *optimisation* effect);
* the generalisation gap at *equal training loss* (Keskar et al. 2017): train a small and a
  large batch until the training loss is equally low, then compare test accuracy and the
  sharpness of the minimum, the top eigenvalue of the Hessian. The digits are too easy to
  show it, so this part uses MNIST-1D.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch.utils.data import TensorDataset

import trainlab as tl
from trainlab.experiments.result import Config, Result, one_thread, stages

NAME = "batch_size"
TITLE = "Batch size: time per update, time per epoch, accuracy and sharpness"
LECTURE_TIMES = {1: (0.0, 362), 10: (0.0, 44), 100: (0.0, 14), 1000: (0.15, 9)}  # V100, MNIST: s/update, s/epoch


def run(config: Config | None = None) -> Result:
    """Lecture part 2, small batch against large batch: :func:`timing`, :func:`equal_epochs`, :func:`equal_loss`.

    Parameters:
        config: a :class:`~trainlab.experiments.result.Config` (default ``None``: ``Config()``). ``quick``
            times 30 updates per size instead of 100, trains 3 epochs instead of 15, and trains to a
            training loss of 0.3 instead of 0.05 with a quarter of the epoch budget; ``seed`` picks the data
            splits, initial weights and batch order; ``progress`` shows a bar over the 3 stages.

    Returns:
        A :class:`~trainlab.experiments.result.Result` named ``"batch_size"`` (``seconds`` set) with the
        tables ``timing``, ``equal_epochs`` and ``equal_loss``; the figures ``timing`` and ``equal_epochs``;
        five claims (longer per update; less time per epoch; the full batch trains worse at equal epochs;
        at equal loss the large batch is sharper and generalises worse); and a note on the equal-loss setting.
    """
    config = config or Config()
    result = Result(NAME, TITLE, config=config)
    with stages(result, 3) as bar:
        timing(result, config)
        bar.update()
        equal_epochs(result, config)
        bar.update()
        equal_loss(result, config)
        bar.update()
    return result


def _sizes(n: int) -> list[int]:
    return [1, 10, 100, 1000, n]


def timing(result: Result, config: Config) -> None:
    """Time per update and per epoch of SGD on an MLP 64-128-128-10 on the digits, on one CPU thread.

    Lecture claim: a larger batch takes longer per update but less time per epoch (measured there on a V100
    with MNIST). Batch sizes 1, 10, 100, 1,000 and the whole training set.

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``seed`` picks the digits split, the weights and the sample order; ``quick``: 30 timed
            updates per size (else 100; the median leaves out the first 5).

    Returns:
        ``None``. Adds the table ``timing`` (batch size, updates per epoch, median ms per update, s per epoch,
        the lecture's times), two claims and the figure ``timing``.
    """
    train, _ = tl.data.load_digits(seed=config.seed)
    x, y = train.tensors
    rows = []
    with one_thread():
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
            lecture = LECTURE_TIMES.get(b)
            rows.append([b, updates, 1e3 * statistics.median(per_update[5:]), epoch,
                         lecture[0] if lecture else None, lecture[1] if lecture else None])
    result.table("timing", ["batch size", "updates per epoch", "ms per update", "s per epoch",
                            "lecture s/update (V100, MNIST)", "lecture s/epoch"], rows)
    first, last = rows[0], rows[-1]
    result.claim("A larger batch takes longer per update.", last[2] > 2 * first[2],
                 f"batch {first[0]}: {first[2]:.3f} ms per update; full batch ({last[0]}): {last[2]:.3f} ms"
                 f" ({last[2] / first[2]:.0f}×, one CPU thread)",
                 "V100: ≈ constant up to 1,000, then 1.55 s at 10,000; on a CPU it grows much sooner")
    result.claim("A larger batch takes less time per epoch.", last[3] < first[3],
                 f"batch {first[0]}: {first[3]:.3f} s per epoch; full batch: {last[3]:.4f} s"
                 f" ({first[3] / last[3]:.0f}× less)", "V100: 362 s (batch 1) down to 9 s (1,000 and above)")
    result.figure("timing", "Time per update and per epoch against batch size (one CPU thread)", _timing_figure(rows))


def _timing_figure(rows: list[list]) -> Figure:
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    sizes = [r[0] for r in rows]
    ax.loglog(sizes, [r[2] / 1e3 for r in rows], "o-", label="time per update")
    ax.loglog(sizes, [r[3] for r in rows], "s-", label="time per epoch")
    ax.set(xlabel="batch size", ylabel="seconds")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return fig


def equal_epochs(result: Result, config: Config) -> None:
    """An MLP 64-32-10 trained by SGD (η = 0.01) for the same number of epochs at each batch size, on the digits.

    Lecture claim: at an equal number of epochs large batches train worse, an optimisation effect.
    Batch sizes 1, 10, 100, 1,000 and the whole training set.

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``quick``: 3 epochs (else 15); ``seed``: digits split, weights and batch order.

    Returns:
        ``None``. Adds the table ``equal_epochs`` (batch size, updates, train loss, train and test accuracy),
        one claim (held when the full batch's train accuracy is > 0.02 below the best smaller batch's) and
        the figure ``equal_epochs``.
    """
    train, test = tl.data.load_digits(seed=config.seed)
    epochs = 3 if config.quick else 15
    rows = []
    for b in _sizes(len(train)):
        model = tl.nn.mlp(64, [32], 10, seed=config.seed)
        summary = tl.train.Trainer(model, tl.optim.SGD(model.parameters(), lr=0.01), F.cross_entropy, train, b,
                                   epochs, eval_data=test, seed=config.seed, progress=False, device="cpu").fit()
        rows.append([b, summary["steps"], summary["train_loss"], summary["train_accuracy"], summary["eval_accuracy"]])
    result.table("equal_epochs", ["batch size", "updates", "train loss", "train accuracy", "test accuracy"], rows)
    best_small = max(rows[:-1], key=lambda r: r[3])
    full = rows[-1]
    result.claim(f"At an equal number of epochs ({epochs}, SGD η = 0.01), the full batch trains worse than small"
                 " batches (an optimisation effect).", full[3] < best_small[3] - 0.02,
                 f"train accuracy: batch {best_small[0]} {best_small[3]:.3f}, full batch {full[3]:.3f}"
                 f" ({full[1]} updates against {best_small[1]})",
                 "MNIST train accuracy .982 (batch 1) … .838 (60,000); CIFAR-10 .58 … .30")
    result.figure("equal_epochs", f"Accuracy after {epochs} epochs against batch size", _accuracy_figure(rows))


def _accuracy_figure(rows: list[list]) -> Figure:
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    sizes = [r[0] for r in rows]
    ax.semilogx(sizes, [r[3] for r in rows], "o-", label="train")
    ax.semilogx(sizes, [r[4] for r in rows], "s-", label="test")
    ax.set(xlabel="batch size", ylabel="accuracy")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return fig


def _train_to_loss(train: TensorDataset, batch_size: int, target: float, max_epochs: int, seed: int
                   ) -> tuple[torch.nn.Module, int, float]:
    """Adam until the training loss (over the whole training set) is below ``target``."""
    model = tl.nn.mlp(train.tensors[0].shape[1], [256, 256], 10, seed=seed)
    trainer = tl.train.Trainer(model, tl.optim.Adam(model.parameters(), lr=1e-3), F.cross_entropy, train,
                               batch_size, max_epochs, seed=seed, progress=False, device="cpu",
                               callbacks=[_StopBelow(train, target)])
    trainer.fit()
    return model, trainer.step, trainer.evaluate(train)["loss"]


class _StopBelow(tl.train.Callback):
    def __init__(self, data: TensorDataset, target: float):
        self.data, self.target = data, target

    def on_epoch_end(self, trainer, record) -> None:
        if trainer.evaluate(self.data)["loss"] < self.target:
            trainer.stop_training = True


def equal_loss(result: Result, config: Config) -> None:
    """Small batch (32) against large batch (a quarter of the training set), trained to the same training loss.

    Lecture claim (Keskar et al. 2017): the large batch lands in a sharper minimum and generalises worse.
    An MLP 40-256-256-10 on MNIST-1D, Adam η = 1e-3 until the full training loss is below the target;
    sharpness is the top Hessian eigenvalue on the training set (Lanczos).

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``quick``: target 0.3 and at most 50 / 750 epochs (else 0.05 and 200 / 3,000); ``seed``:
            data split, weights and batch order.

    Returns:
        ``None``. Adds the table ``equal_loss`` (batch size, updates, train loss, test accuracy, top Hessian
        eigenvalue), two claims (held only if both runs reached the target) and a note.
    """
    train, test = tl.data.load("mnist1d", seed=config.seed)
    target = 0.3 if config.quick else 0.05
    small_b, large_b = 32, len(train) // 4
    rows = []
    for b, max_epochs in ((small_b, 200), (large_b, 3000)):
        model, steps, loss = _train_to_loss(train, b, target, max_epochs if not config.quick else max_epochs // 4,
                                            config.seed)
        with torch.no_grad():
            accuracy = float((model(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean())
        top = tl.curvature.eigs(model, F.cross_entropy, train.tensors, k=1, which="largest", tol=1e-4)
        rows.append([b, steps, loss, accuracy, float(top.values[0])])
    result.table("equal_loss", ["batch size", "updates", "train loss", "test accuracy", "top Hessian eigenvalue"], rows)
    (sb, _, sl, sacc, slam), (lb, _, ll, lacc, llam) = rows
    reached = max(sl, ll) < target
    result.claim(f"Trained to the same training loss (< {target}), the large batch ({lb}) lands in a sharper minimum"
                 f" than the small batch ({sb}).", reached and llam > slam,
                 f"top eigenvalue {llam:.3g} (batch {lb}) vs {slam:.3g} (batch {sb}); train loss {ll:.3f} vs {sl:.3f}",
                 "Keskar et al. 2017: large batches converge to sharp minima")
    result.claim("... and generalises worse.", reached and lacc < sacc,
                 f"test accuracy {lacc:.3f} (batch {lb}) vs {sacc:.3f} (batch {sb})",
                 "Keskar et al. Table 2: e.g. F1 (MNIST) test 98.03 → 97.81 %, C1 (CIFAR-10) 80.04 → 77.26 %")
    result.notes.append(f"Equal-loss comparison on MNIST-1D ({len(train)} training samples), MLP 40-256-256-10, Adam"
                        f" η = 1e-3 until the full training loss is below {target}; sharpness is the top Hessian"
                        " eigenvalue on the training set (Lanczos).")
