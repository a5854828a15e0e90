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
* ``healthy`` — an ordinary digits run with Adam, which must trigger no event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import trainlab as tl


@dataclass
class Scenario:
    build: Callable[[int], nn.Module]
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    batch_size: int | str
    epochs: int


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
    "healthy": Scenario(lambda s: tl.nn.mlp(64, [32], 10, seed=s),
                        lambda model: tl.optim.Adam(model.parameters(), lr=1e-3), 32, 30),
}


@dataclass
class Outcome:
    losses: list[float]  # training loss per epoch
    events: list[dict]
    seconds: float

    @property
    def start(self) -> float:
        return self.losses[0]

    @property
    def largest_drift(self) -> float:
        """The largest relative change of the epoch loss from its value after the first epoch."""
        return max(abs(v - self.start) / self.start for v in self.losses)


def run(name: str, doctor: bool, seed: int = 0, epochs: int | None = None, window: int = 100) -> Outcome:
    scenario = SCENARIOS[name]
    train, _ = tl.data.load_digits(seed=seed)
    model = scenario.build(seed)
    callbacks = [tl.train.StallDoctor(window=window, seed=seed)] if doctor else []
    trainer = tl.train.Trainer(model, scenario.optimizer(model), F.cross_entropy, train, scenario.batch_size,
                               epochs or scenario.epochs, callbacks=callbacks, seed=seed, progress=False, device="cpu")
    summary = trainer.fit()
    return Outcome([r["train_loss"] for r in trainer.history], trainer.events, summary["total_seconds"])
