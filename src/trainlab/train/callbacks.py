"""Hooks into :class:`~trainlab.train.Trainer`.

Subclass :class:`Callback` and override what you need; every hook receives the trainer,
so it can read ``trainer.model``, ``trainer.optimizer``, ``trainer.step`` or set
``trainer.stop_training = True`` (the run then ends after the current epoch).
A callback with ``state_dict()`` / ``load_state_dict()`` is saved in checkpoints and
restored on resume, each saved state going back to a callback of the same class (so a resume
may add or drop callbacks). An exception raised in a hook after training started (``on_epoch_start``, ``on_step_end``,
``on_epoch_end``, ``on_fit_end``) does not end the run: it becomes an event ``"callback_error"``
with its sentence (:func:`error_event`; the traceback goes to the ``trainlab`` logger at debug
level), once per callback and message, and training goes on — a failed reading or diagnosis
costs its answer, never the user's training. What the user's own training step does is not a
callback: its errors end the run as before. ``on_fit_start`` errors (a refused state, a bad
argument) also end it, before the first update. Any object with these methods works as a callback:
:class:`trainlab.instruments.Monitor` (readings to ``instruments.jsonl`` through
``trainer.log_readings``) is one, without importing this module.
"""

from __future__ import annotations

import logging
from typing import Any

#: An error's sentence in an event is cut to this many characters (one line).
MESSAGE_CHARS = 300
_log = logging.getLogger("trainlab")


class Callback:
    """Base class of the Trainer's hooks; every hook does nothing until overridden (see the module docstring).

    The Trainer calls each hook on every callback that has it, in the order of its
    ``callbacks``, passing itself first:

    - ``on_fit_start(trainer)``: once per ``fit()``, before the first step (after a resume's
      state is restored).
    - ``on_epoch_start(trainer, epoch)``: before each epoch draws its batches (``epoch`` 1-based).
    - ``on_step_end(trainer, record)``: after each optimizer step; ``record`` has ``step, epoch,
      loss, grad_norm, lr``.
    - ``on_epoch_end(trainer, record)``: after each epoch's evaluation; ``record`` is the
      ``metrics.jsonl`` line.
    - ``on_fit_end(trainer, summary)``: after a completed run (not one that diverged or was
      interrupted); ``summary`` is what ``fit()`` returns.

    Parameters: none. A subclass may add ``state_dict() -> dict`` and ``load_state_dict(state)``:
    the state is saved in each checkpoint under the callback's class name and, on resume, given
    back to a callback of the same class (a state it cannot load is a
    :class:`~trainlab.errors.DataError`).

    Returns: the hooks return ``None``; to stop, set ``trainer.stop_training = True`` (the run ends
    after the current epoch).
    """
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


def error_event(source: str, error: BaseException, step: int | None = None) -> dict[str, Any]:
    """An exception from a reading, a diagnosis or another callback as an event: ``{"event":
    "callback_error", "source", "error" (its type), "message"}`` (and ``step`` when given), the
    message one line naming ``source`` and the error's own sentence; the traceback goes to the
    ``trainlab`` logger at debug level. Cost: none."""
    sentence = " ".join(f"{type(error).__name__}: {error}".split())
    sentence = sentence if len(sentence) <= MESSAGE_CHARS else sentence[:MESSAGE_CHARS - 1] + "…"
    _log.debug("%s failed; training goes on", source, exc_info=error)
    event = {"event": "callback_error", "source": source, "error": type(error).__name__,
             "message": f"{source} failed ({sentence}); training goes on without it"}
    return event if step is None else {**event, "step": step}


class ErrorLog:
    """Callback errors kept as :func:`error_event` events, each message once: ``events`` lists
    them in order; :meth:`add` returns a new one, or ``None`` for a message already seen."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._seen: set[str] = set()

    def add(self, source: str, error: BaseException, step: int | None = None) -> dict[str, Any] | None:
        event = error_event(source, error, step)
        if event["message"] in self._seen:
            return None
        self._seen.add(event["message"])
        self.events.append(event)
        return event
