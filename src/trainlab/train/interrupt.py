"""Stopping on a signal: Ctrl-C (SIGINT) and SIGTERM — what schedulers, Kubernetes and SLURM
send to preempt a job — stop a run the same way.

:class:`Interrupted` is the exception a stopped run raises. It is a ``KeyboardInterrupt``, so
code that catches Ctrl-C catches it, and it carries the signal: ``signum`` and
``exit_code`` (``128 + signum``, the shell's convention: 130 for SIGINT, 143 for SIGTERM).

The Trainer, while it trains, turns the first signal into a flag (:func:`handling`) that the
training loop honours at its next safe point, where it checkpoints; a second one stops at once.
:func:`raising` (the command line, around every command) makes SIGTERM raise
:class:`Interrupted` as Ctrl-C raises ``KeyboardInterrupt``, so ``finally`` blocks run — a
temporary file of an atomic write is removed — instead of the process dying where it stands.
Both restore the handlers found before them, and do nothing outside the main thread (where
Python cannot install a handler).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterator

#: The signals that stop a run.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run (or a command) stopped by signal ``signum``; ``str()`` says which, and ``note`` may
    say what to do next (e.g. how to resume)."""

    def __init__(self, signum: int = signal.SIGINT, note: str = ""):
        self.signum, self.note = int(signum), note
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}" + (f"; {note}" if note else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def signum_of(error: BaseException) -> int:
    """The signal behind a ``KeyboardInterrupt``: its ``signum``, else SIGINT (a plain Ctrl-C)."""
    return getattr(error, "signum", signal.SIGINT)


@contextlib.contextmanager
def handling(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for every signal of :data:`SIGNALS` while inside; the previous ones after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)  # None: a handler set outside Python


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """SIGTERM (and SIGINT) raise :class:`Interrupted` while inside."""
    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    with handling(handler):
        yield
