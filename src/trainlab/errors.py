"""The errors trainlab raises on purpose.

Each carries one sentence that names the bad value and what is allowed; the CLI prints
that sentence and exits with code 2 (``ConfigError``, ``DataError``) without a traceback.
``ConfigError`` and ``DataError`` are ``ValueError`` subclasses, so code that already
catches ``ValueError`` keeps working.
"""

from __future__ import annotations


class TrainlabError(Exception):
    """Base class of every error trainlab raises deliberately."""


class ConfigError(TrainlabError, ValueError):
    """A configuration value, option or argument is not allowed."""


class DataError(TrainlabError, ValueError):
    """A data set is missing, unreadable or malformed."""


class DivergenceError(TrainlabError, RuntimeError):
    """Training stopped because the loss became non-finite or exploded.

    ``step`` is the global step at which the bad loss was seen, ``loss`` its value and
    ``checkpoint`` the path of the last good checkpoint (``None`` when the run has no
    output directory or had not written one yet).
    """

    def __init__(self, message: str, *, step: int, loss: float, checkpoint: str | None):
        super().__init__(message)
        self.step = step
        self.loss = loss
        self.checkpoint = checkpoint
