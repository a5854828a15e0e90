"""Readings and doctor events as TensorBoard scalars and text (extra ``trainlab[tensorboard]``).

:class:`TensorBoardLogger` writes with PyTorch's own ``torch.utils.tensorboard.SummaryWriter``
under the names every integration uses (:mod:`trainlab.integrations`):

* a reading — one scalar per instrument, ``trainlab/<instrument>`` (``trainlab/sharpness``,
  ``trainlab/noise_scale``, …), at the update it was taken;
* a doctor event — its one-line text under ``trainlab/doctor`` (TensorBoard's Text tab) and
  its numbers as ``trainlab/doctor/<field>`` scalars (``event`` = 1 marks the update);
* any other ``{name: value}`` as scalars (the Trainer's per-update loss, for one).

Resuming a run: ``purge_step=S`` (the first update the resumed run redoes) hides everything
the interrupted run wrote at updates ``≥ S`` — TensorBoard's own ``SessionLog.START`` purge —
so the curves show each update once. TensorBoard reads a directory's event files in name order
and the name starts with the second the file was opened, so the logger makes sure its file's
second is later than that of every event file already there.

Usage::

    from trainlab.integrations.tensorboard import TensorBoardLogger
    with TensorBoardLogger("runs/tb") as tb:
        for reading in monitor.after_step(model, loss, loss_fn, data, opt):
            tb.readings([reading], step=monitor.step)
    # tensorboard --logdir runs/tb
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from trainlab.errors import ConfigError
from trainlab.integrations import PREFIX, event_scalars, event_text, require, scalars

_tensorboard = require("torch.utils.tensorboard", "tensorboard", "tensorboard")

#: The tag of doctor events' text.
EVENT_TAG = f"{PREFIX}/doctor"
#: How event files are named (TensorBoard's ``events.out.tfevents.<seconds>.<host>.<pid>…``).
EVENT_FILE = "events.out.tfevents."


class TensorBoardLogger:
    """Write readings, doctor events and scalars into TensorBoard event files in ``log_dir``.

    Parameters:
        log_dir: the directory (created if missing; event files already there are kept, so
            runs can share it or a run can resume into it).
        purge_step: on resume, the first update the resumed run redoes; TensorBoard then hides
            what an earlier run wrote at that update and after (``None``: nothing hidden).
        flush_secs: seconds between writes to disk (TensorBoard's own default is 120; 10 here,
            so a running job shows up soon); :meth:`flush` writes at once.

    Every method takes ``step``, the update count (an integer ≥ 0). Bad arguments raise
    :class:`~trainlab.errors.ConfigError`. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, log_dir: str | os.PathLike[str], *, purge_step: int | None = None, flush_secs: float = 10):
        if isinstance(log_dir, bool) or not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ConfigError(f"TensorBoardLogger: log_dir={log_dir!r} is not allowed; expected a directory path")
        if Path(log_dir).exists() and not Path(log_dir).is_dir():
            raise ConfigError(f"TensorBoardLogger: log_dir={str(log_dir)!r} is a file; expected a directory for"
                              " TensorBoard's event files")
        if purge_step is not None:
            _check_step(purge_step, "purge_step")
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, (int, float)) or not flush_secs > 0:
            raise ConfigError(f"TensorBoardLogger: flush_secs={flush_secs!r} is not allowed; expected seconds > 0")
        self.log_dir = Path(log_dir)
        _after_existing_files(self.log_dir)
        self._writer = _tensorboard.SummaryWriter(str(self.log_dir), purge_step=purge_step, flush_secs=flush_secs)
        self._closed = False

    def readings(self, readings: Iterable[Any], step: int) -> dict[str, float]:
        """One scalar per instrument, ``trainlab/<instrument>``, for :class:`~trainlab.instruments.Reading`
        objects or their ``to_dict()`` lines (non-finite values are left out). Returns what was written."""
        return self.scalars(scalars(readings), step)

    def event(self, event: Mapping[str, Any], step: int) -> dict[str, float]:
        """A stall doctor event: its line of text under ``trainlab/doctor`` and its numbers as
        ``trainlab/doctor/<field>`` scalars. Returns the scalars written."""
        _check_step(step, "step")
        self._open().add_text(EVENT_TAG, event_text(dict(event)), step)
        return self.scalars(event_scalars(dict(event)), step)

    def scalars(self, mapping: Mapping[str, Any], step: int) -> dict[str, float]:
        """Each ``name: value`` as a scalar at ``step`` (``None`` and non-finite values are left
        out: TensorBoard draws a NaN as a gap anyway). Returns what was written."""
        _check_step(step, "step")
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"TensorBoardLogger.scalars: {mapping!r} is not allowed; expected a mapping of names"
                              " to numbers")
        written = {}
        for name, value in mapping.items():
            if value is None:
                continue
            try:
                if isinstance(value, (bool, str)):
                    raise TypeError
                value = float(value.detach() if isinstance(value, torch.Tensor) else value)
            except (TypeError, ValueError, RuntimeError):
                raise ConfigError(f"TensorBoardLogger.scalars: {name}={value!r} is not allowed; expected a"
                                  " number") from None
            if math.isfinite(value):
                written[str(name)] = value
        writer = self._open()
        for name, value in written.items():
            writer.add_scalar(name, value, step)
        return written

    def flush(self) -> None:
        """Write everything pending to disk now."""
        if not self._closed:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file; calling it again does nothing."""
        if not self._closed:
            self._writer.close()
            self._closed = True

    def __enter__(self) -> "TensorBoardLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _open(self) -> Any:
        if self._closed:
            raise ValueError(f"TensorBoardLogger({str(self.log_dir)!r}) is closed; open a new one to write again")
        return self._writer


def _check_step(step: Any, name: str) -> None:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ConfigError(f"TensorBoardLogger: {name}={step!r} is not allowed; expected an update count, an integer"
                          " >= 0")


def _after_existing_files(log_dir: Path) -> None:
    """Wait, if need be, until the clock's second is past that of every event file in
    ``log_dir``: TensorBoard reads the files in name order, and a resumed run's file must come
    after the interrupted one's (at most a second, and only when both open in the same one)."""
    if not log_dir.is_dir():
        return
    seconds = [int(p.name[len(EVENT_FILE):].split(".")[0]) for p in log_dir.iterdir()
               if p.name.startswith(EVENT_FILE) and p.name[len(EVENT_FILE):].split(".")[0].isdigit()]
    latest = max(seconds, default=-1)
    while int(time.time()) <= latest:
        time.sleep(latest + 1 - time.time() + 1e-3)


__all__ = ["EVENT_TAG", "TensorBoardLogger"]
