"""A zoo case: a small seeded training setup with its ground-truth cause, and what ``build`` returns.

A :class:`Case` says what is wrong with a run before anyone looks at it — the ``cause`` (one word
of the stall doctor's vocabulary, ``None`` for a healthy control), the update where the failure
sets in (``onset``) and the healthy ``control`` whose final loss a cured run is measured against.
``build(size, seed)`` gives a :class:`Setup`: everything to train it, as its users would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from trainlab.errors import ConfigError
from trainlab.train.doctor.causes import CAUSES as VOCABULARY

#: The causes the zoo covers (issue 22's list), each a word of the stall doctor's vocabulary
#: (:data:`trainlab.train.doctor.causes.CAUSES`, which also holds verdicts such as ``local_minimum``).
CAUSES = ("saddle", "plateau", "step_too_small", "step_too_large", "spike_damage", "vanishing_gradient",
          "exploding_gradient", "dead_units", "ill_conditioned_features", "needs_warmup", "batch_noise",
          "no_signal")
#: Causes with a safe automatic treatment; the others get advice only.
TREATABLE = ("saddle", "plateau", "step_too_small", "step_too_large", "spike_damage", "exploding_gradient",
             "needs_warmup")
#: The sizes a case builds at: ``full`` for the benchmark, ``small`` (seconds) for the tests.
SIZES = ("full", "small")


@dataclass
class Setup:
    """Everything one training run needs.

    ``train``/``eval``: map-style datasets of ``(x, y)`` pairs or of dicts (an LM's
    ``input_ids``/``labels``); ``loss_fn(outputs, targets)`` for pairs, ``batch_loss(model, batch)``
    for any batch (then ``loss_fn`` is ``None``); ``updates`` optimizer steps of ``batch_size``
    samples; ``framework``: ``"loop"`` (a plain PyTorch loop) or ``"lightning"`` (``model`` is a
    ``LightningModule`` whose ``configure_optimizers`` returns ``optimizer``).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train: Dataset
    eval: Dataset
    updates: int
    batch_size: int
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None
    framework: str = "loop"
    info: dict[str, Any] = field(default_factory=dict)  # what a test needs to check the pathology

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The mean loss of ``batch``, through ``batch_loss`` or ``loss_fn(model(x), y)``."""
        if self.batch_loss is not None:
            return self.batch_loss(model, batch)
        x, y = batch
        return self.loss_fn(model(x), y)


@dataclass(frozen=True)
class Case:
    """One training setup with its ground truth.

    ``name``; ``cause`` (in :data:`CAUSES`, ``None``: healthy); ``architecture`` (``mlp``, ``cnn``,
    ``rnn``, ``transformer_lm``, ``hf_bert``, ``hf_gpt2``, ``lightning``, ``linear``); ``treatable``
    (a safe automatic treatment exists, :data:`TREATABLE`); ``onset`` (the update where the failure
    sets in, ``None`` where unknown: 0 for a run that fails from its start, else measured on the
    untreated run at size "full", seed 0 — the first damaging spike or the gradient's cliff; for a
    step too large or a batch too small, present from the start, the first spike: the loss trend of
    a run that still learns shows nothing before it); ``control`` (the healthy case compared with); ``why`` (one line:
    why it fails, with the paper or lecture part); ``build(size, seed) -> Setup``.
    """

    name: str
    cause: str | None
    architecture: str
    build_fn: Callable[[str, int], Setup]
    control: str | None = None
    onset: int | None = None
    why: str = ""

    def __post_init__(self) -> None:
        if self.cause is not None and self.cause not in VOCABULARY:
            raise ConfigError(f"Case {self.name!r}: cause={self.cause!r} is not allowed; use a word of the stall doctor's"
                              f" vocabulary ({', '.join(VOCABULARY)}) or None")

    @property
    def treatable(self) -> bool:
        """Whether a safe automatic treatment exists for the cause."""
        return self.cause in TREATABLE

    @property
    def healthy(self) -> bool:
        """A control run: nothing is wrong with it."""
        return self.cause is None

    def build(self, size: str = "full", seed: int = 0) -> Setup:
        """Everything to train the case at ``size`` (``"full"`` or ``"small"``) from ``seed``."""
        if size not in SIZES:
            raise ConfigError(f"Case {self.name!r}: size={size!r} is not allowed; use 'full' or 'small'")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"Case {self.name!r}: seed={seed!r} is not allowed; use an integer")
        return self.build_fn(size, seed)
