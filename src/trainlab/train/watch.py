"""``trainlab.watch``: one line that gives any PyTorch loop a run directory, instruments and the stall doctor.

::

    import trainlab as tl

    with tl.watch(model, opt, F.cross_entropy, train_data, out="runs/mine", doctor=True) as w:
        for epoch in range(10):
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(); loss.backward(); opt.step()
                w.log(loss=loss, epoch=epoch)        # and any number of your own: w.log(acc=...)
    # then: trainlab report runs/mine

**Updates.** The watch hooks the optimizer (``register_step_post_hook``; and, for the next step
only, ``register_step_pre_hook`` after an update the Monitor reads): each ``optimizer.step()`` is
one update, its count :attr:`Watch.step`.
So gradient accumulation counts optimizer steps, not micro-batches, and a step a ``GradScaler``
skips (inf gradients) is no update.

**Which update a value belongs to.** The first update tells where your :meth:`Watch.log` calls sit:

* logged *before* the first ``optimizer.step()`` (the loss logged after ``backward``; with gradient
  accumulation, one log per micro-batch): the values logged between two steps are the coming
  update's;
* else, *after* it (the usual ``opt.step(); w.log(loss=loss)``): the values logged between two steps
  are the update just made's; anything logged before the first step is recorded at step 0.

A loss logged several times for one update is averaged (micro-batches); another value logged
several times keeps its last.

**When the Monitor and the doctor run.** At update ``n``, once its loss is known — at the step in
the first case, at the ``log(loss=...)`` after it in the second, else (no loss logged) just before
the next step or at :meth:`Watch.close` — on the parameters the update left (an update of which
nothing is read, only counted, is counted just after the next step instead): the
:class:`~trainlab.instruments.Monitor` reads the instruments due (every one at update 1, a
baseline, then each on its period) on its bounded sample of ``data``, and the
:class:`~trainlab.train.StallDoctor` gets the update's loss (it needs one: an update logged without
a loss is skipped by the doctor, with one warning). Between readings the watch adds no work beyond
counting and keeping your logged values; step records and readings are written 1,000 updates at a
time, or every 10 s (checked every 100 updates), whichever comes first, and events at once. An
error in a reading or a diagnosis never stops your loop: it becomes a ``callback_error`` event,
once per message.

**The run directory** ``out`` (none: nothing written; readings stay in ``w.monitor.history`` and
events in ``w.events``), the files of a ``trainlab train`` run, so ``trainlab report`` draws it:

* ``config.toml`` — what the watch knows: the model's class and parameters, the optimizer's class
  and hyper-parameters, the loss, the data, the batch size, the Monitor's instruments and periods,
  the doctor's settings (``source = "trainlab.watch"``);
* ``steps.jsonl`` — one line per update: ``step``, ``lr`` (the first group's η of that update),
  ``loss`` and whatever else was logged for it;
* ``instruments.jsonl`` — the Monitor's readings; ``metrics.jsonl`` — the doctor's events (lines
  with an ``"event"`` key);
* ``summary.json`` — at :meth:`Watch.close`: ``status`` (``completed``; ``interrupted`` or
  ``failed`` when a ``with`` block ends by an exception), ``steps``, ``parameters``, ``events`` …

A fresh watch refuses an ``out`` that holds any of these files (``overwrite=True`` replaces them),
and holds the directory's lock until :meth:`Watch.close`, which a ``with`` block calls, and the
interpreter's exit calls for a watch left open.

**torch.distributed.** Every rank builds the watch and runs the Monitor and the doctor (their
readings are collective: each rank passes its own ``data``, and all ranks read the same values);
rank 0 writes the files (``out`` may be given on rank 0 alone), and a directory refused on one rank
stops every rank together. ``steps.jsonl`` holds rank 0's logged values; the doctor decides on the
loss averaged over the ranks, so all ranks act alike. A ``DistributedDataParallel`` (or
``torch.compile``) model is read through the module it wraps.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from trainlab import __version__
from trainlab import _toml
from trainlab import distributed as dist
from trainlab.data.batches import BatchLoss
from trainlab.errors import ConfigError
from trainlab.train import checkpoint, rundir
from trainlab.train.callbacks import ErrorLog

#: The files a watch writes into its run directory.
WATCH_FILES = ("config.toml", "steps.jsonl", "instruments.jsonl", "metrics.jsonl", "summary.json")
#: Step records kept in memory before they are written, at most; or for at most FLUSH_SECONDS.
FLUSH_EVERY = 1000
FLUSH_SECONDS = 10.0
#: Names :meth:`Watch.log` does not take: the watch records them itself.
RESERVED = ("step", "lr")

#: The run directories of this process's open watches.
_OPEN: set[str] = set()
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(", ", ": "))


class Watch:
    """The watch on one model and optimizer (see the module docstring); made by :func:`watch`.

    Attributes: ``step`` (optimizer steps counted), ``monitor`` (the
    :class:`~trainlab.instruments.Monitor` or ``None``), ``doctor`` (the
    :class:`~trainlab.train.StallDoctor` or ``None``), ``events`` (the doctor's events and the
    errors of readings), ``out`` (the run directory or ``None``), ``closed``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[..., torch.Tensor] | None,
                 data: Any, *, out: str | os.PathLike[str] | None, monitor: Any, doctor: Any,
                 batch_loss: BatchLoss | None, scheduler: Any, batch_size: int | None, overwrite: bool):
        _check_model_optimizer(model, optimizer)
        for name, fn in (("loss_fn", loss_fn), ("batch_loss", batch_loss)):
            if fn is not None and not callable(fn):
                raise ConfigError(f"watch: {name}={fn!r} is not callable; pass a function (see help(trainlab.watch))"
                                  " or None")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ConfigError(f"watch: batch_size={batch_size!r} is not allowed; expected the samples per update"
                              " (all ranks, all micro-batches), an integer >= 1, or None")
        if scheduler is not None and not callable(getattr(scheduler, "step", None)):
            raise ConfigError(f"watch: scheduler={scheduler!r} is not a learning-rate scheduler (it has no step());"
                              " pass the one you step, or None")
        self.model = _unwrapped(model)
        self.optimizer, self.loss_fn, self.data, self.batch_loss = optimizer, loss_fn, data, batch_loss
        self.scheduler = scheduler
        self.monitor = _monitor(monitor, batch_loss)
        self.doctor = _doctor(doctor, self.monitor, batch_loss)
        self._reads = self.monitor is not None or self.doctor is not None  # something reads each update
        if self._reads:
            who = " and ".join(n for n, part in (("the Monitor", self.monitor), ("the stall doctor", self.doctor))
                               if part is not None)
            if loss_fn is None and batch_loss is None:
                raise ConfigError(f"watch: {who} evaluate{'s' if ' and ' not in who else ''} the loss on a sample,"
                                  " so pass loss_fn=(outputs, targets) -> mean loss, or batch_loss=(model, batch) ->"
                                  " mean loss (or monitor=None, doctor=False to only log)")
            if data is None:
                raise ConfigError(f"watch: {who} read{'s' if ' and ' not in who else ''} a bounded sample of the"
                                  " training data, so pass data= (a Dataset, a DataLoader or an (x, y) pair)"
                                  " (or monitor=None, doctor=False to only log)")
        self.batch_size = batch_size if batch_size is not None else _batch_size(data)
        self._full_batch = _full_batch(self.batch_size, data)
        self.writer = dist.rank() == 0
        self.distributed = dist.active()
        self.out = Path(out) if out is not None else None
        self.step = 0
        self.events: list[dict[str, Any]] = []
        self.closed = False
        self.status: str | None = None
        self._errors = ErrorLog()
        self._warned: set[str] = set()
        self._mode: str | None = None  # "before" / "after": where the loop's log() calls sit (module docstring)
        self._record_step = 0  # the update the values being logged belong to
        self._losses: list[Any] = []  # its logged losses (numbers or tensors, averaged when written)
        self._values: dict[str, Any] | None = None  # and its other values (None: none yet)
        self._lr: float | None = None  # the η of the update the record holds
        self._processed = True  # whether the Monitor and the doctor have seen the record's update
        self._pending: list[tuple[int, float | None, list[Any], dict[str, Any]]] = []  # step records to write
        self._readings: list[Any] = []  # and the Monitor's readings
        self._last_loss: float | None = None
        self._flush_by = time.monotonic() + FLUSH_SECONDS  # a slow loop's records are written this often
        self._started = time.perf_counter()
        self._stack = contextlib.ExitStack()
        self._check_out(overwrite)
        if self.out is not None and self.writer:
            self._open_directory(overwrite)
        if self.monitor is not None:
            self.monitor.start(self.model, 0)
        self._hooks = [optimizer.register_step_post_hook(self._after_step)]
        self._pre_hook: Any = None  # registered for one step at a time (_after_step), not for every one
        atexit.register(self._at_exit)

    # ---------------------------------------------------------------- the user's calls
    def log(self, loss: Any = None, **scalars: Any) -> None:
        """Record ``loss`` and your own numbers for the current update (which one: module docstring).

        Parameters: ``loss`` the update's loss (a number or a one-element tensor; logged several
        times for one update, averaged); ``scalars`` any other numbers by name (``epoch=`` is the
        step record's epoch). ``step`` and ``lr`` are recorded by the watch itself.
        Returns ``None``. Cost: none beyond keeping the values (tensors are read when written).
        """
        if self.closed:
            raise ConfigError("Watch.log: this watch is closed; start a new one with trainlab.watch(...)")
        if scalars:
            _check_scalars(scalars)
            if self._values is None:
                self._values = {}
            self._values.update({k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in scalars.items()})
        if loss is None:
            return
        if type(loss) is not float:  # (a float, the common case, needs no check)
            _check_number("loss", loss)
            if isinstance(loss, torch.Tensor):
                loss = loss.detach()  # not the graph behind it, which would stay in memory until written
        if self._mode is None and self.step == 0:
            self._mode, self._record_step = "before", 1  # a loss before the first step: the coming update's
        self._losses.append(loss)
        if self._mode == "after" and not self._processed:
            self._process()

    def close(self) -> dict[str, Any] | None:
        """Finish: the last update seen by the Monitor and the doctor, every record written,
        ``summary.json``, the optimizer's hooks removed and the directory's lock released.
        Returns the summary (``None`` when already closed). Calling it again does nothing."""
        if self.closed:
            return None
        self.closed = True
        atexit.unregister(self._at_exit)
        for handle in self._hooks:
            handle.remove()
        if self._pre_hook is not None:
            self._pre_hook.remove()
        try:
            if self.status is None and self._mode == "after" and not self._processed:
                self._process()
            if self._mode != "before":
                self._close_record()
            elif self._losses or self._values:  # values logged after the last step: that step's
                self._record_step = self.step
                self._close_record()
            self._flush()
            summary = self.summary()
            if self.out is not None and self.writer:
                checkpoint.write_json(summary, self.out / "summary.json")
            if self.monitor is not None:
                self.monitor.close()
            return summary
        finally:
            self._stack.close()

    def _at_exit(self) -> None:
        """A watch the interpreter's exit finds open: closed, ``failed`` when an exception ended the
        program (``sys.last_value``), ``interrupted`` for Ctrl-C."""
        last = getattr(sys, "last_value", None)
        if isinstance(last, BaseException) and self.status is None:
            self.status = "interrupted" if isinstance(last, KeyboardInterrupt) else "failed"
        self.close()

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` holds: ``status``, ``steps``, ``loss`` (the last logged),
        ``total_seconds`` (since the watch began), ``parameters``, ``batch_size``, ``device``,
        ``events`` (and ``world_size`` under torch.distributed)."""
        summary = {"status": self.status or ("completed" if self.closed else "running"), "steps": self.step,
                   "loss": self._last_loss, "total_seconds": time.perf_counter() - self._started,
                   "parameters": sum(p.numel() for p in self.model.parameters()), "batch_size": self.batch_size,
                   "device": str(_device(self.model)),
                   "events": self.events}
        if self.distributed:
            summary["world_size"] = dist.world_size()
        return summary

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if kind is not None and not self.closed:
            self.status = "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed"
        self.close()

    # ---------------------------------------------------------------- the optimizer's hooks
    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Just before update ``n + 1``, hooked after an update ``n`` that the Monitor reads (or
        keeps the parameters of): ``n`` is read now if no loss came for it, on the parameters it left."""
        if not self._processed:
            self._process()

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """After update ``n``: count it; its record is queued once complete (module docstring)."""
        if not self._processed:  # update n − 1 came without a loss, and nothing of it is read: counted now
            self._process()
        if self._pre_hook is not None:  # it ran before this step; removed here, outside the optimizer's loop over
            self._pre_hook.remove()  # its pre-hooks (which a removal inside one of them would break)
            self._pre_hook = None
        self.step += 1
        lr = optimizer.param_groups[0]["lr"]  # the η update n used (a scheduler steps after the optimizer)
        if self._mode != "before":  # update n − 1's values are all in: queue them, open update n's
            self._mode = "after"  # (no loss before the first step: values belong to the update just made)
            self._close_record()  # (before the first step: step 0, when something was logged)
            self._record_step, self._lr = self.step, lr
            self._processed = not self._reads
            if not self._processed and self.monitor is not None and self.monitor.looks_at(self.step):
                # read on the parameters update n left, even if no loss comes before the next step
                self._pre_hook = optimizer.register_step_pre_hook(self._before_step)
            return
        self._lr = lr  # "before": the update's loss is in
        self._process()
        self._close_record()
        self._record_step, self._lr = self.step + 1, None

    # ---------------------------------------------------------------- internals
    def _process(self) -> None:
        """The Monitor and the doctor on update ``self.step``; their errors become events."""
        self._processed = True
        if not self._reads:
            return
        losses = self._losses
        if len(losses) == 1 and type(losses[0]) is float:
            loss = losses[0]
        else:
            loss = _mean(losses)
            if loss is not None:
                self._losses = [loss]  # read once
        monitor = self.monitor
        if monitor is not None:
            try:
                follows = monitor.step == self.step - 1
                if not (follows and monitor.counted(self.model, loss)):  # (the common update: only counted)
                    readings = monitor.after_step(self.model, loss, self.loss_fn, self.data, self.optimizer,
                                                  batch_size=self.batch_size, step=None if follows else self.step)
                    self._readings += readings  # written with the step records
            except Exception as e:  # noqa: BLE001 - a reading must never end the user's training
                self._failed("the Monitor", e)
        if self.doctor is not None:
            self._consult(loss)

    def _consult(self, loss: float | None) -> None:
        if loss is None:
            self._warn_once("no_loss", f"trainlab.watch: update {self.step} was logged without a loss, so the stall"
                                       " doctor skips it; call w.log(loss=loss) once per optimizer step")
            return
        if self.distributed:  # every rank decides on the same number
            loss = float(dist.all_reduce_sum(torch.tensor(loss, dtype=torch.float64,
                                                          device=_device(self.model))) / dist.world_size())
        try:
            event = self.doctor.after_step(self.model, loss, self.loss_fn, self.data, self.optimizer,
                                           self.scheduler, full_batch=self._full_batch, batch_size=self.batch_size)
        except Exception as e:  # noqa: BLE001 - a diagnosis must never end the user's training
            self._failed("the stall doctor", e)
            return
        if event is not None:
            self._event(event)

    def _event(self, event: dict[str, Any]) -> None:
        event = {"event": event.get("event", "event"), "step": self.step, **event}
        self.events.append(event)
        self._write_lines("metrics.jsonl", [event])
        if self.writer:
            print(f"trainlab: update {self.step}: {event.get('message') or event.get('action') or event['event']}",
                  file=sys.stderr)

    def _failed(self, source: str, error: Exception) -> None:
        event = self._errors.add(source, error, self.step)
        if event is not None:
            self._event(event)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _close_record(self) -> None:
        """Queue the record being filled (step 0 only when something was logged before the first step)."""
        if self._record_step > 0 or self._losses or self._values:
            self._pending.append((self._record_step, self._lr, self._losses, self._values))
            self._losses, self._values = [], None
            n = len(self._pending)
            if n >= FLUSH_EVERY or n % 100 == 0 and time.monotonic() > self._flush_by:
                self._flush()

    def _flush(self) -> None:
        """Write the queued step records, each a JSON line formatted here (a few numbers under known
        keys: a tenth of ``json.dumps``' cost, which would be measurable between fast updates), and
        the queued readings (a file opened once for several readings, not once for each)."""
        lines = []
        loss = None
        for step, lr, losses, values in self._pending:
            if values is None and type(lr) is float and len(losses) == 1 and type(losses[0]) is float \
                    and lr - lr == 0 and losses[0] - losses[0] == 0:  # the common record: finite η and loss
                loss = losses[0]
                lines.append(f'{{"step": {step}, "lr": {lr!r}, "loss": {loss!r}}}\n')
                continue
            text = f'{{"step": {step}'
            if lr is not None:
                text += f', "lr": {_json_number(lr)}'
            loss = _mean(losses)
            if loss is not None:
                text += f', "loss": {_json_number(loss)}'
            for key, value in (values or {}).items():
                text += f", {_json_key(key)}: {_json_number(value)}"
            lines.append(text + "}\n")
        if self._pending and self._pending[-1][2]:  # the last record's loss, for the summary
            self._last_loss = loss if math.isfinite(loss) else None
        self._pending = []
        self._flush_by = time.monotonic() + FLUSH_SECONDS
        if lines and self.out is not None and self.writer:
            rundir.append_lines(self.out / "steps.jsonl", lines)
        readings, self._readings = self._readings, []
        self._write_lines("instruments.jsonl", [r.to_dict() for r in readings])

    def _write_lines(self, name: str, records: list[dict[str, Any]]) -> None:
        if self.out is not None and self.writer and records:
            rundir.append_lines(self.out / name, [_line(r) + "\n" for r in records])

    def _check_out(self, overwrite: bool) -> None:
        """Refuse an ``out`` holding a run — under torch.distributed on every rank together, before
        rank 0 writes: a rank that raised alone would leave the others waiting in a collective.
        Ranks may pass ``out`` or ``None`` (``out=... if rank == 0 else None`` is fine)."""
        problem = None
        if self.out is not None:
            try:
                rundir.check_fresh(self.out, WATCH_FILES, overwrite)
            except (ConfigError, OSError) as e:
                problem = e
        if self.distributed:
            refused = int(dist.all_reduce_sum(torch.tensor([int(problem is not None)], device=_device(self.model))))
            if refused and problem is None:
                raise ConfigError(f"watch: {refused} other rank(s) refused their run directory (see their error);"
                                  " every rank stops here, before anything is written")
        if problem is not None:
            raise problem

    def _open_directory(self, overwrite: bool) -> None:
        """Lock ``out``, check it holds no run of its own (or replace it), write ``config.toml``."""
        self._stack.enter_context(rundir.locked(self.out))
        key = str(self.out.resolve())
        if key in _OPEN:  # the lock is re-entrant within a thread; two open watches would write one set of files
            self._stack.close()
            raise ConfigError(f"run directory {str(self.out)!r} is in use by another trainlab run (an open watch in"
                              " this process); close it first or choose another directory")
        _OPEN.add(key)
        self._stack.callback(_OPEN.discard, key)
        try:
            rundir.check_fresh(self.out, WATCH_FILES, overwrite)  # again, now that no other run can write
            if overwrite:
                for name in WATCH_FILES:
                    (self.out / name).unlink(missing_ok=True)
            checkpoint.write_text(_toml.dumps(self.config()), self.out / "config.toml")
        except BaseException:
            self._stack.close()
            raise

    def config(self) -> dict[str, Any]:
        """What ``config.toml`` records: the parts' classes and settings the watch can see."""
        params = list(self.model.parameters())
        group = self.optimizer.param_groups[0]
        config: dict[str, Any] = {
            "source": "trainlab.watch", "trainlab": __version__, "torch": torch.__version__,
            "model": {"name": type(self.model).__name__, "parameters": sum(p.numel() for p in params),
                      "trainable": sum(p.numel() for p in params if p.requires_grad),
                      "device": str(_device(self.model)), "dtype": str(params[0].dtype).removeprefix("torch.")},
            "optimizer": {"name": type(self.optimizer).__name__.lower(), "class": _qualified(self.optimizer),
                          **{k: _tomlable(v) for k, v in group.items() if k != "params" and _tomlable(v) is not None}},
            "train": {"loss": _name_of(self.batch_loss or self.loss_fn)},
        }
        if self.batch_size is not None:
            config["train"]["batch_size"] = self.batch_size
        if self.distributed:
            config["train"]["world_size"] = dist.world_size()
        if self.scheduler is not None:
            config["schedule"] = {"name": type(self.scheduler).__name__, "class": _qualified(self.scheduler)}
        if self.data is not None:
            config["data"] = {"name": type(self.data).__name__}
            with contextlib.suppress(TypeError):
                config["data"]["length"] = len(self.data)
        if self.monitor is not None:
            m = self.monitor
            config["monitor"] = {"instruments": [i.name for i in m.instruments],
                                 "periods": [m.period(i) for i in m.instruments], "every": m.every,
                                 "sample": m.sample, "mode": m.mode, "seed": m.seed}
        if self.doctor is not None:
            d = self.doctor
            config["doctor"] = {"window": d.window, "act": d.act, "min_rel_improvement": d.min_rel_improvement,
                                "max_samples": d.max_samples, "max_hvp": d.max_hvp, "seed": d.seed}
        return {k: v for k, v in config.items() if v is not None}


def watch(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable[..., torch.Tensor] | None = None,
          data: Any = None, *, out: str | os.PathLike[str] | None = None, monitor: Any = "economy",
          doctor: Any = False, batch_loss: BatchLoss | None = None, scheduler: Any = None,
          batch_size: int | None = None, overwrite: bool = False) -> Watch:
    """Watch a plain training loop: a run directory, the Monitor's readings and (asked) the stall doctor.

    One line before the loop; ``w.log(loss=loss)`` in it; ``w.close()`` (or a ``with`` block)
    after it. The module docstring (:mod:`trainlab.train.watch`) says which update a value
    belongs to, when the readings happen and what the directory holds.

    Parameters:
        model: the ``nn.Module`` being trained (a ``DistributedDataParallel`` or compiled wrapper
            is read through the module it wraps).
        optimizer: its ``torch.optim.Optimizer``; each ``step()`` is one update.
        loss_fn: ``(outputs, targets) -> mean loss``, for the readings' and the doctor's sample
            loss; ``None`` with ``batch_loss``, or when nothing reads (``monitor=None``, no doctor).
        data: the training data the readings sample (a Dataset, a DataLoader, an ``(x, y)``
            pair, or batches of any form with ``batch_loss``); its first ``sample`` samples are read.
        out: the run directory (``None``: nothing written).
        monitor: ``"economy"`` (default), ``"full"``, a list of instruments or their names, a
            :class:`~trainlab.instruments.Monitor`, or ``None``.
        doctor: ``True`` (a :class:`~trainlab.train.StallDoctor` with its defaults, reading the
            Monitor's latest readings), a ``StallDoctor``, or ``False``.
        batch_loss: ``(model, batch) -> mean loss`` for batches that are not ``(x, y)`` pairs
            (a language model's dicts); given to the Monitor and the doctor too.
        scheduler: the learning-rate scheduler you step, if any: the doctor rescales it with η
            when it changes η, and ``config.toml`` names it.
        batch_size: samples per update over all ranks and micro-batches, for the noise readings and
            the doctor (``None``: a DataLoader's ``batch_size`` times the ranks; give it with
            gradient accumulation).
        overwrite: replace the files of an earlier run in ``out``.

    Returns: the :class:`Watch`. Invalid arguments raise :class:`~trainlab.errors.ConfigError`, and an
    ``out`` holding a run a :class:`~trainlab.errors.ConfigError` too, before anything is written.
    """
    return Watch(model, optimizer, loss_fn, data, out=out, monitor=monitor, doctor=doctor, batch_loss=batch_loss,
                 scheduler=scheduler, batch_size=batch_size, overwrite=overwrite)


# -------------------------------------------------------------------------------------- helpers
def _check_model_optimizer(model: Any, optimizer: Any) -> None:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"watch: model is a {type(model).__name__}, not a torch.nn.Module")
    if not callable(getattr(optimizer, "register_step_post_hook", None)) or not isinstance(
            getattr(optimizer, "param_groups", None), list):
        raise ConfigError(f"watch: optimizer is a {type(optimizer).__name__}, not a torch.optim.Optimizer (the watch"
                          " counts updates through its register_step_post_hook); pass the optimizer you step")
    held = {id(p) for group in optimizer.param_groups for p in group.get("params", ())}
    if not any(id(p) in held for p in _unwrapped(model).parameters()):
        raise ConfigError(f"watch: the optimizer holds none of the model's parameters (its {len(held)} tensors"
                          " belong to another model or a copy); pass the optimizer that trains this model")


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module a ``DistributedDataParallel``/``DataParallel`` (``.module``) or ``torch.compile``
    (``._orig_mod``) wrapper holds: readings run the model itself, not the wrapper's collectives."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _monitor(monitor: Any, batch_loss: BatchLoss | None) -> Any:
    from trainlab.instruments import Monitor

    if monitor is None:
        return None
    if isinstance(monitor, Monitor):
        if monitor.batch_loss is None:
            monitor.batch_loss = batch_loss
        return monitor
    if isinstance(monitor, (str, list, tuple)):
        return Monitor(instruments=monitor, batch_loss=batch_loss, progress=False)
    raise ConfigError(f"watch: monitor={monitor!r} is not allowed; use 'economy', 'full', a list of instruments or"
                      " their names, a trainlab.instruments.Monitor, or None")


def _doctor(doctor: Any, monitor: Any, batch_loss: BatchLoss | None) -> Any:
    from trainlab.train.doctor import StallDoctor

    if doctor is False or doctor is None:
        return None
    if doctor is True:
        return StallDoctor(monitor=monitor, batch_loss=batch_loss)
    if isinstance(doctor, StallDoctor):
        if doctor.batch_loss is None:
            doctor.batch_loss = batch_loss
        if doctor.monitor is None:
            doctor.monitor = monitor
        return doctor
    raise ConfigError(f"watch: doctor={doctor!r} is not allowed; use True, False or a trainlab.train.StallDoctor")


def _batch_size(data: Any) -> int | None:
    """A DataLoader's samples per update over all ranks; ``None`` when the data does not say."""
    size = getattr(data, "batch_size", None)
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size * dist.world_size()
    return None


def _full_batch(batch_size: int | None, data: Any) -> bool:
    """Whether every update sees all of this rank's data (the doctor's full-batch mode)."""
    if batch_size is None:
        return False
    try:
        return batch_size >= len(data) * dist.world_size()
    except TypeError:
        return False


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, (float, int)):
        return
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        return
    if type(value).__module__ == "numpy" and getattr(value, "size", 0) == 1 and getattr(value, "dtype", None) is not None \
            and value.dtype.kind in "biuf":
        return
    raise ConfigError(f"Watch.log: {name}={_short(value)} is not allowed; expected a real number or a one-element"
                      " tensor")


def _check_scalars(scalars: dict[str, Any]) -> None:
    for name, value in scalars.items():
        if name in RESERVED:
            raise ConfigError(f"Watch.log: {name!r} is recorded by the watch itself (the update count and the"
                              " optimizer's η); log your value under another name")
        _check_number(name, value)


def _float(value: Any) -> float | None:
    """A logged value as a number for the JSON line (``None`` where not finite)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().reshape(-1)[0].item()
    elif type(value).__module__ == "numpy":
        value = value.reshape(-1)[0].item() if hasattr(value, "reshape") else value.item()
    if isinstance(value, bool) or (isinstance(value, int) and abs(value) < 2**63):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def _mean(values: list[Any]) -> float | None:
    if not values:
        return None
    if len(values) == 1 and isinstance(values[0], float):
        return values[0]
    numbers = [_float(v) for v in values]
    return sum(math.nan if v is None else float(v) for v in numbers) / len(numbers)


def _json_number(value: Any) -> str:
    """A logged value as JSON number text (``null`` where it is not finite)."""
    if type(value) is float:
        return repr(value) if value - value == 0 else "null"  # inf − inf and NaN − NaN are NaN
    value = _float(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


_KEYS: dict[str, str] = {}


def _json_key(key: str) -> str:
    text = _KEYS.get(key)
    if text is None:
        text = _KEYS[key] = json.dumps(key)
    return text


def _line(record: dict[str, Any]) -> str:
    try:
        return _ENCODER.encode(record)
    except ValueError:  # a NaN or an infinity in an event or a reading: written as null
        return _ENCODER.encode(checkpoint.jsonable(record))


def _tomlable(value: Any) -> Any:
    """An optimizer setting as TOML holds it (numbers, strings, booleans, flat lists), else ``None``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                          for v in value):
        return [float(v) for v in value]
    return None


def _qualified(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _name_of(fn: Any) -> str:
    if fn is None:
        return "none"
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _short(value: Any, limit: int = 40) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


__all__ = ["FLUSH_EVERY", "FLUSH_SECONDS", "RESERVED", "WATCH_FILES", "Watch", "watch"]
