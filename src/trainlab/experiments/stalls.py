"""Runs that stall, for the stall doctor: each is trained with and without
:class:`~trainlab.train.StallDoctor` from the same seed and the same budget.

* ``zero_linear`` — a one-hidden-layer linear network (``activation="identity"``) at exactly
  zero: once the output bias has settled, a strict saddle that gradient descent never
  leaves (every weight gradient is a product with another zero weight);
* ``tiny_init`` — a two-hidden-layer tanh MLP with every parameter scaled by 1e-4: a
  near-saddle plateau (the signal through the layers is ~1e-8);
* ``identical_units`` — a tanh MLP whose hidden units all start identical — every hidden
  weight and bias equal (zero, the "initialise everything to the same value" mistake) — with
  zero output weights: the units can never become different;
* ``two_zero_layers`` — two hidden linear layers without biases at zero: not a saddle but a
  *degenerate* point, gradient and Hessian both zero (the loss moves only at third order);
  trained full-batch so no noise moves it;
* ``short_full_batch`` — the ``zero_linear`` network, full-batch, with its output bias started
  off balance (``b₀ = 3``): gradient descent spends about 50 updates settling the bias, then
  stalls at the saddle. A short run (150 updates): a doctor that waits two windows of 100
  leaves it untreated;
* ``crawl`` — a two-hidden-layer ReLU MLP trained by SGD with ``η = 1e-3`` in batches of 32,
  far below ``1/λ_max`` (``η·λ_max ≈ 4e-4``): the loss falls by a fraction of a percent per
  hundred updates. The remedy is a larger learning rate (within stability), not a step along
  the negative curvature a network has everywhere;
* ``too_large_step`` — a linear model fitted by least squares onto the one-hot labels
  (``mse_onehot`` without softmax: an exact quadratic, ``λ_max = 14.56`` on the digits), full-batch
  gradient descent with ``η·λ_max = 2.02``: the sharpest direction grows ×1.02 per update, so
  after a few updates the loss turns and rises, slowly (Cohen et al. 2021: above 2 diverges);
* ``dead_units`` — a two-hidden-layer ReLU MLP whose first layer's biases start at −20: every
  unit of that layer is dead on every sample (and the second layer sees only its biases), so the
  network outputs one constant; the doctor names the units reading and the lecture's remedies
  (initialisation, normalisation) and changes nothing — the run needs a restart;
* ``healthy`` — an ordinary digits run with Adam, which must trigger no event.

:func:`run` records every update's loss, so :meth:`Outcome.onset` can tell when an untreated
run's stall began, and :meth:`Outcome.first_event` when the doctor noticed it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import trainlab as tl
from trainlab.train.callbacks import Callback


@dataclass
class Scenario:
    build: Callable[[int], nn.Module]
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    batch_size: int | str
    epochs: int
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy


def _zeroed(model: nn.Module, *layers: int) -> nn.Module:
    with torch.no_grad():
        for i in layers:
            model[i].weight.zero_()
            if model[i].bias is not None:
                model[i].bias.zero_()
    return model


def _scaled(model: nn.Module, scale: float) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def _off_balance(model: nn.Module, bias: float) -> nn.Module:
    with torch.no_grad():
        model[-1].bias[0] = bias
    return model


def _least_squares(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_n ‖outputs_n − onehot(t_n)‖²``: with a linear model, an exact quadratic."""
    return tl.nn.mse_onehot(outputs, targets, apply_softmax=False)


#: ``λ_max`` of the least-squares quadratic on the digits training split (seed 0):
#: ``2 σ_max([X 1])² / N``, measured once.
LEAST_SQUARES_LAMBDA_MAX = 14.5601


def _dead(model: nn.Module, bias: float = -20.0) -> nn.Module:
    with torch.no_grad():
        model[1].bias.fill_(bias)
    return model


def _sgd(lr: float) -> Callable[[nn.Module], torch.optim.Optimizer]:
    return lambda model: tl.optim.SGD(model.parameters(), lr=lr)


SCENARIOS: dict[str, Scenario] = {
    "zero_linear": Scenario(lambda s: _zeroed(tl.nn.mlp(64, [16], 10, activation="identity", seed=s), 1, 2),
                            _sgd(0.1), 32, 20),
    "tiny_init": Scenario(lambda s: _scaled(tl.nn.mlp(64, [32, 32], 10, activation="tanh", seed=s), 1e-4),
                          _sgd(0.1), 32, 20),
    "identical_units": Scenario(lambda s: _zeroed(tl.nn.mlp(64, [16], 10, activation="tanh", seed=s), 1, 3),
                                _sgd(0.1), 32, 20),
    "two_zero_layers": Scenario(lambda s: _zeroed(nn.Sequential(nn.Linear(64, 8, bias=False), nn.Linear(8, 8, bias=False),
                                                                nn.Linear(8, 10, bias=False)), 0, 1, 2),
                                _sgd(0.5), "full", 400),
    "short_full_batch": Scenario(lambda s: _off_balance(_zeroed(tl.nn.mlp(64, [16], 10, activation="identity", seed=s),
                                                                1, 2), 3.0), _sgd(0.2), "full", 150),
    "crawl": Scenario(lambda s: tl.nn.mlp(64, [32, 32], 10, seed=s), _sgd(1e-3), 32, 10),
    "too_large_step": Scenario(lambda s: tl.nn.mlp(64, [], 10, seed=s), _sgd(2.02 / LEAST_SQUARES_LAMBDA_MAX), "full",
                               150, _least_squares),
    "dead_units": Scenario(lambda s: _dead(tl.nn.mlp(64, [32, 32], 10, seed=s)), _sgd(0.1), 32, 6),
    "healthy": Scenario(lambda s: tl.nn.mlp(64, [32], 10, seed=s),
                        lambda model: tl.optim.Adam(model.parameters(), lr=1e-3), 32, 30),
}


@dataclass
class Outcome:
    losses: list[float]  # training loss per epoch
    events: list[dict]
    seconds: float
    update_losses: list[float] = field(default_factory=list)  # the loss of every update
    full_batch: bool = False

    @property
    def start(self) -> float:
        return self.losses[0]

    @property
    def largest_drift(self) -> float:
        """The largest relative change of the epoch loss from its value after the first epoch."""
        return max(abs(v - self.start) / self.start for v in self.losses)

    def onset(self, span: int | None = None, min_rel_improvement: float = 0.01) -> int:
        """Updates done when the stall began: the first update from which the loss falls by less
        than ``min_rel_improvement`` over every later ``span`` updates — the doctor's definition
        of a stall. Exact losses in a full-batch run; mini-batch losses averaged over ``span``
        updates first (their noise would hide the trend). ``span``: the doctor's windows by
        default, 30 updates full-batch, 100 mini-batch."""
        span = span or (30 if self.full_batch else 100)
        losses = self.update_losses
        if not self.full_batch:
            run = [0.0, *itertools.accumulate(losses)]
            losses = [(run[i + span] - run[i]) / span for i in range(len(losses) - span + 1)]
        moving = [t for t in range(len(losses) - span)
                  if losses[t] - losses[t + span] >= min_rel_improvement * abs(losses[t])]
        return moving[-1] + 1 if moving else 0

    def first_event(self) -> int | None:
        """Updates done when the doctor's first event came (``None``: none came)."""
        return self.events[0]["step"] if self.events else None


class _Recorder(Callback):
    """Keeps every update's loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step_end(self, trainer: object, record: dict) -> None:
        self.losses.append(float(record["loss"]))


def run(name: str, doctor: bool, seed: int = 0, epochs: int | None = None, window: int = 100) -> Outcome:
    """Train one of the :data:`SCENARIOS` on the digits (CPU), with or without a :class:`~trainlab.train.StallDoctor`.

    Parameters:
        name: a key of :data:`SCENARIOS` (no default; another name raises ``KeyError``).
        doctor: attach ``StallDoctor(window=window, seed=seed)`` (no default).
        seed: the digits split, the model's initial weights, the batch order and the doctor's random
            vectors (default 0).
        epochs: epochs to train (default ``None``: the scenario's own).
        window: the doctor's window in updates (default 100); unused without the doctor.

    Returns:
        An :class:`Outcome`: ``losses`` (training loss per epoch), ``events`` (the Trainer's events, e.g. the
        doctor's), ``seconds`` (total training time), ``update_losses`` (every update's loss) and
        ``full_batch`` (whether an epoch is one update).
    """
    scenario = SCENARIOS[name]
    train, _ = tl.data.load_digits(seed=seed)
    model = scenario.build(seed)
    recorder = _Recorder()
    callbacks = [recorder] + ([tl.train.StallDoctor(window=window, seed=seed)] if doctor else [])
    trainer = tl.train.Trainer(model, scenario.optimizer(model), scenario.loss_fn, train, scenario.batch_size,
                               epochs or scenario.epochs, callbacks=callbacks, seed=seed, progress=False, device="cpu")
    summary = trainer.fit()
    return Outcome([r["train_loss"] for r in trainer.history], trainer.events, summary["total_seconds"],
                   recorder.losses, trainer.steps_per_epoch == 1)
