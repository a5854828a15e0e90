"""Hooks into :class:`~trainlab.train.Trainer`.

Subclass :class:`Callback` and override what you need; every hook receives the trainer,
so it can read ``trainer.model``, ``trainer.optimizer``, ``trainer.step`` or set
``trainer.stop_training = True`` (the run then ends after the current epoch).
A callback with ``state_dict()`` / ``load_state_dict()`` is saved in checkpoints and
restored on resume, each saved state going back to a callback of the same class (so a resume
may add or drop callbacks). Any object with these methods works as a callback:
:class:`trainlab.instruments.Monitor` (readings to ``instruments.jsonl`` through
``trainer.log_readings``) is one, without importing this module.
"""

from __future__ import annotations

from typing import Any


class Callback:
    def on_fit_start(self, trainer: Any) -> None:
        """Before the first step (also when resuming)."""

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """Before epoch ``epoch`` (1-based) draws its batches."""

    def on_step_end(self, trainer: Any, record: dict[str, Any]) -> None:
        """After each optimizer step; ``record`` has ``step, epoch, loss, grad_norm, lr``."""

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        """After each epoch's evaluation; ``record`` is the line written to ``metrics.jsonl``."""

    def on_fit_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        """After the last epoch; ``summary`` is what ``fit()`` returns."""


HOOKS = ("on_fit_start", "on_epoch_start", "on_step_end", "on_epoch_end", "on_fit_end")
