"""Mini-batch training with metrics, atomic checkpoints and exact resume.

One epoch draws a permutation of the training set from a seeded ``torch.Generator`` and
walks it in batches of ``batch_size`` (the last may be shorter); ``batch_size="full"``
gives full-batch gradient descent. Each step is

    loss = loss_fn(model(x), y);  zero_grad;  loss.backward();  optimizer.step();  scheduler.step()

so a scheduler advances once per **update**, not per epoch. The epoch's ``train_loss`` and
``train_accuracy`` are sample-weighted means of the per-batch values seen while training
(no extra pass); ``eval_*`` come from a pass over ``eval_data`` in ``eval()`` mode.

A run directory ``out`` receives

* ``metrics.jsonl`` — one JSON object per epoch: ``epoch, step, train_loss, train_accuracy,
  eval_loss, eval_accuracy, seconds`` (wall time of the epoch, evaluation included),
  ``seconds_per_update``, ``lr`` and ``grad_norm`` (mean over the epoch's steps);
* ``steps.jsonl`` — one object per update: ``step, epoch, loss, grad_norm, lr``;
* ``checkpoint.pt`` — ``model, optimizer, scheduler, epoch, step, rng`` (and the position
  inside an epoch when written on Ctrl-C), replaced atomically;
* ``summary.json`` — the last epoch's figures plus totals and ``status``;
* ``instruments.jsonl`` — with a :class:`~trainlab.instruments.Monitor` among the callbacks,
  one object per reading: ``step, instrument, value, seconds`` and the instrument's fields.

With ``tensorboard=DIR`` (extra ``trainlab[tensorboard]``) the same figures also go to
TensorBoard event files in ``DIR``, at their update: each update's :data:`TENSORBOARD_STEP`
scalars, each epoch's :data:`TENSORBOARD_EPOCH`, every reading as ``trainlab/<instrument>`` and
every doctor event as text and ``trainlab/doctor/<field>`` scalars
(:class:`trainlab.integrations.tensorboard.TensorBoardLogger`). A resumed run hides what the
interrupted one wrote after its checkpoint, so each update shows once.

The directory is safe to hand over (see :mod:`trainlab.train.rundir`): a fresh run refuses
one that already holds any of these files unless ``overwrite=True``; the run holds an
exclusive lock on it throughout; a checkpoint is written only when every parameter, buffer
and optimizer state and the epoch's losses are finite, so the last checkpoint is always a
good one. Resuming checks the checkpoint (loads, every key, same shapes, finite) and the
logs (a damaged line is refused with its line number; a torn last line is dropped) before
anything is written, then restores every random state, so an interrupted-and-resumed run
ends with the same parameters, bit for bit on CPU, as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset, default_collate
from tqdm.auto import tqdm

from trainlab import distributed as dist
from trainlab.errors import ConfigError, DataError, DivergenceError
from trainlab.nn import batchnorm as tnn_batchnorm
from trainlab.state import plain
from trainlab.train import checkpoint, interrupt, rundir
from trainlab.train.callbacks import HOOKS, ErrorLog

#: A loss larger than this multiple of the run's first loss counts as divergence.
DIVERGENCE_FACTOR = 1e3
EVAL_BATCH_SIZE = 1024
#: The files a Trainer writes into its run directory: all of a run's but run.train's config.toml.
TRAINER_FILES = tuple(name for name in rundir.RUN_FILES if name != "config.toml")
#: What a checkpoint written by the Trainer holds (``callbacks`` is optional: older runs lack it).
STATE_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "batch", "partial", "first_loss", "rng")
#: With ``tensorboard=DIR``: the TensorBoard scalar of each step record's field (every update) …
TENSORBOARD_STEP = {"loss": "trainlab/train/loss", "grad_norm": "trainlab/train/grad_norm", "lr": "trainlab/train/lr"}
#: … and of each metrics record's field (every epoch, at its last update).
TENSORBOARD_EPOCH = {"train_loss": "trainlab/epoch/train_loss", "train_accuracy": "trainlab/epoch/train_accuracy",
                     "eval_loss": "trainlab/epoch/eval_loss", "eval_accuracy": "trainlab/epoch/eval_accuracy"}


class Trainer:
    """Train ``model`` with ``optimizer`` on ``train_data`` (a map-style dataset of
    ``(input, target)`` pairs; a ``TensorDataset`` takes the fast path of indexing its
    tensors directly).

    ``device="auto"`` picks CUDA, then MPS, then CPU; the model and, for a
    ``TensorDataset``, the whole data set are moved there once. ``callbacks`` are
    :class:`~trainlab.train.Callback` objects. ``seed`` fixes the batch order and every
    other random draw during training (dropout uses the global generator, which ``fit``
    seeds inside :func:`torch.random.fork_rng` and restores afterwards).

    ``out`` is the run directory (none: nothing is written). A fresh run refuses an ``out``
    that holds any of :data:`TRAINER_FILES` unless ``overwrite=True``, which deletes them
    first; ``resume=True`` continues the run in ``out``.

    ``tensorboard`` is a directory for TensorBoard event files (none: no TensorBoard), written
    by rank 0 alongside the run directory's logs (module docstring); give each run a directory
    of its own, and the same one again when resuming it.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], train_data: Dataset,
                 batch_size: int | str, epochs: int, scheduler: Any = None, eval_data: Dataset | None = None,
                 callbacks: Iterable[Any] = (), seed: int = 0, device: str | torch.device = "auto",
                 out: str | Path | None = None, *, checkpoint_every: int = 1, resume: bool = False,
                 progress: bool = True, distributed: bool | None = None, overwrite: bool = False,
                 tensorboard: str | os.PathLike[str] | None = None):
        _check_positive_int("epochs", epochs)
        _check_optimizer(model, optimizer)
        from trainlab.integrations import tensorboard_dir  # (stdlib only; the framework only when asked for)

        self.tensorboard = tensorboard_dir(tensorboard)
        _check_positive_int("checkpoint_every", checkpoint_every)
        if len(train_data) == 0:
            raise DataError("train_data holds no samples")
        self.distributed = dist.active(distributed)
        self.rank, self.world = dist.rank(), dist.world_size()
        if self.distributed:
            dist.check_enough_samples(len(train_data))
            dist.check_same_parameters(list(model.parameters()))
        self.device = dist.device() if self.distributed and device == "auto" else resolve_device(device)
        self.module = model.to(self.device)  # the model itself; self.model may wrap it for data parallelism
        self.model = self._wrap(self.module)
        self.optimizer, self.scheduler, self.loss_fn = optimizer, scheduler, loss_fn
        self.train_data = _on_device(train_data, self.device)
        self.eval_data = _on_device(eval_data, self.device) if eval_data is not None and len(eval_data) else None
        self._shard = math.ceil(len(train_data) / self.world)  # samples this rank trains on per epoch
        self.batch_size = samples_per_update(batch_size, self._shard)
        _check_data(self.train_data, self.eval_data)
        _check_batch_norm_batches(self.module, self.batch_size, self._shard)
        self.epochs, self.seed, self.checkpoint_every = epochs, seed, checkpoint_every
        self.callbacks = list(callbacks)
        self._hooks = {name: [getattr(cb, name) for cb in self.callbacks if hasattr(cb, name)] for name in HOOKS}
        self.out = Path(out) if out is not None else None
        self.writer = self.rank == 0  # only rank 0 writes files and draws the progress bar
        self.resume, self.overwrite, self.progress = resume, overwrite, progress and self.writer
        self.epoch = 0  # epochs completed
        self.step = 0  # updates completed
        self.history: list[dict[str, Any]] = []  # the metrics.jsonl records of this run
        self.events: list[dict[str, Any]] = []  # what callbacks reported (e.g. the stall doctor)
        self._callback_errors = ErrorLog()  # callback errors already logged as events
        self.stop_training = False
        self._generator = torch.Generator().manual_seed(seed)
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        self._first_loss: float | None = None
        self._interrupted = 0  # the signal (SIGINT, SIGTERM) that asked the run to stop; 0: none
        self._unwritten_steps: list[dict[str, Any]] = []  # step records since the last write
        self._prepared: dict[str, Any] | None = None  # what prepare() checked, for fit() to use
        self._good: tuple[int, int, int] | None = None  # (epoch, step, batch) of the last good checkpoint
        self._bar: tqdm | None = None  # the progress bar while fit() runs
        self._figures: dict[str, str] = {}  # the last epoch's figures on the progress bar
        self._postfix: dict[str, str] = {}  # and after them, the latest short readings
        self._board: Any = None  # the TensorBoardLogger while fit() runs with tensorboard=DIR

    # ------------------------------------------------------------------ public
    @property
    def steps_per_epoch(self) -> int:
        return updates_per_epoch(self.batch_size, len(self.train_data), self.world)

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out / "checkpoint.pt" if self.out is not None else None

    def fit(self, resume: bool | None = None) -> dict[str, Any]:
        """Train up to ``epochs`` and return the summary (also written to ``summary.json``).

        ``resume=True`` (default: the constructor's ``resume``) continues from
        ``out/checkpoint.pt``. The run directory is locked for the whole call and checked
        (:meth:`prepare`) before anything is written. Raises
        :class:`~trainlab.errors.DivergenceError` when the loss becomes non-finite or exceeds
        ``1e3 ×`` the first loss, or a checkpoint would hold non-finite values (the previous
        checkpoint is kept, and the message says which epoch it holds). Ctrl-C (SIGINT) or
        SIGTERM (a scheduler's preemption) stops the run at the next safe point — after the
        current update, or after the epoch's evaluation — with a checkpoint of it, and raises
        :class:`~trainlab.train.interrupt.Interrupted`, a ``KeyboardInterrupt`` naming the signal.
        """
        resume = self.resume if resume is None else resume
        if resume:
            self._checkpoint_to_resume()  # before locking, which would create a missing directory
        with self._locked():
            if self._prepared is None or self._prepared["resume"] != resume:
                self.prepare(resume)
            prepared, self._prepared = self._prepared, None
            cuda = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(self.seed)
                position = self._restore(prepared) if resume else self._start()
                self._call("on_fit_start")
                with self._deferred_interrupt(), self._progress_bar() as bar, self._tensorboard_open(resume):
                    self._bar = bar
                    try:
                        while self.epoch < self.epochs and not self.stop_training:
                            self._run_epoch(bar, *position)
                            position = (None, 0, None)
                    except DivergenceError:
                        self._finish("diverged")
                        raise
                    except KeyboardInterrupt:
                        self._finish("interrupted")
                        raise
                    finally:
                        self._bar = None
            summary = self._finish("completed")
            self._call("on_fit_end", summary)
        return summary

    def prepare(self, resume: bool | None = None) -> None:
        """Check the run directory without writing to it; :meth:`fit` calls this itself.

        A fresh run: ``out`` holds none of :data:`TRAINER_FILES` (unless ``overwrite``). A
        resume: ``checkpoint.pt`` loads, has every key, fits the model and optimizer (same
        keys and shapes) and is finite, and the logs (``metrics.jsonl``, ``steps.jsonl``,
        ``instruments.jsonl``) have no damaged line but a torn last one; then the callbacks take
        their saved states back (the one step that changes anything, and only in memory).
        Raises :class:`ConfigError`/:class:`DataError` otherwise.
        Calling it before ``fit`` (as :func:`trainlab.train.run.train` does, holding the
        directory's lock) lets a caller write its own files only once the run will start.
        """
        resume = self.resume if resume is None else resume
        prepared: dict[str, Any] = {"resume": resume}
        if not resume:
            if self.out is not None:
                rundir.check_fresh(self.out, TRAINER_FILES, self.overwrite)
        else:
            path = self._checkpoint_to_resume()
            state = checkpoint.load(path, map_location=self.device, require=STATE_KEYS)
            self._check_state(state, path)
            prepared["state"] = state
            if self.writer:
                prepared["metrics"] = rundir.read_log(self.out / "metrics.jsonl", "epoch")
                prepared["steps"] = rundir.read_log(self.out / "steps.jsonl", "step")
                prepared["instruments"] = rundir.read_log(self.out / "instruments.jsonl", "step")
            # last: the one check that changes state
            self._load_callbacks(state.get("callbacks") or [], state.get("callback_names"), path)
        self._prepared = prepared

    def _load_callbacks(self, states: list[Any], names: list[str] | None, path: Path) -> None:
        """Callbacks' states back from a checkpoint; one a callback refuses is a DataError.

        Each callback takes the next saved state of its own class (so a resume may add or drop
        a callback, e.g. ``--doctor`` beside ``--monitor``); checkpoints without class names
        are matched by position."""
        if isinstance(names, list) and len(names) == len(states):
            saved = list(zip(names, states))
            matched = []
            for cb in self.callbacks:
                i = next((i for i, (name, _) in enumerate(saved) if name == type(cb).__name__), None)
                matched.append(saved.pop(i)[1] if i is not None else None)
            states = matched
        for cb, cb_state in zip(self.callbacks, states):
            if cb_state is not None and hasattr(cb, "load_state_dict"):
                try:
                    cb.load_state_dict(cb_state)
                except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
                    reason = " ".join(f"{type(e).__name__}: {e}".split())
                    raise DataError(f"checkpoint {str(path)!r} holds a state that callback {type(cb).__name__}"
                                    f" cannot load ({reason})") from None

    @torch.no_grad()
    def evaluate(self, data: Dataset) -> dict[str, float | None]:
        """``{"loss", "accuracy"}`` of the model on ``data`` in ``eval()`` mode
        (sample-weighted means; accuracy is ``None`` unless targets are class indices)."""
        data = _on_device(data, self.device)
        was_training = self.module.training
        self.module.eval()
        try:
            loss_sum, correct, n = 0.0, 0, len(data)
            for start in range(0, n, EVAL_BATCH_SIZE):
                x, y = _gather(data, slice(start, start + EVAL_BATCH_SIZE), self.device)
                out = self.module(x)
                loss_sum += self.loss_fn(out, y).item() * len(y)
                correct = _add_correct(correct, out, y)
        finally:
            self.module.train(was_training)
        return {"loss": loss_sum / n, "accuracy": None if correct is None else int(correct) / n}

    def log_event(self, event: dict[str, Any]) -> None:
        """Record a callback's finding: into ``events``, the summary, ``metrics.jsonl`` (a line
        with an ``"event"`` key) and, as one line, the progress bar."""
        event = {"event": event.get("event", "event"), "epoch": self.epoch + 1, "step": self.step, **event}
        self.events.append(event)
        self._write_lines("metrics.jsonl", [event])
        if self._board is not None:
            self._board.event(event, self.step)
        if self.progress:
            tqdm.write(f"step {self.step}: {event.get('message', event['event'])}")

    def log_readings(self, readings: list[dict[str, Any]], postfix: dict[str, str] | None = None) -> None:
        """Record an instrument monitor's readings: one line each in ``instruments.jsonl``;
        ``postfix`` (short labels and values) goes on the progress bar."""
        self._write_lines("instruments.jsonl", readings)
        if self._board is not None:
            self._board.readings(readings, self.step)
        if postfix:
            self._postfix.update(postfix)
            if self._bar is not None:
                self._bar.set_postfix({**self._figures, **self._postfix}, refresh=False)

    # ------------------------------------------------------------------ epochs and steps
    def _run_epoch(self, bar: tqdm, shuffle_state: torch.Tensor | None, first_batch: int,
                   partial: dict[str, Any] | None) -> None:
        """One epoch, from batch ``first_batch`` when resuming inside it."""
        started = time.perf_counter()
        if shuffle_state is None:
            shuffle_state = self._generator.get_state()
        else:
            self._generator.set_state(shuffle_state)
        order = self._my_share(torch.randperm(len(self.train_data), generator=self._generator)).to(self.device)
        tally = partial or {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "grad_norm_sum": 0.0}
        epoch = self.epoch + 1
        self._call("on_epoch_start", epoch)
        self.model.train()
        bar.set_description(f"epoch {epoch}/{self.epochs}")
        for b in range(first_batch, self.steps_per_epoch):
            x, y = _gather(self.train_data, order[b * self.batch_size:(b + 1) * self.batch_size], self.device)
            record = self._train_step(x, y, epoch, tally)
            self._unwritten_steps.append(record)
            if self._board is not None:
                self._board.scalars({name: record[key] for key, name in TENSORBOARD_STEP.items()}, self.step)
            self._call("on_step_end", record)
            bar.update()
            if self._interrupted:
                tally["seconds"] += time.perf_counter() - started
                self._save(rng_shuffle=shuffle_state, batch=b + 1, partial=tally)
                raise interrupt.Interrupted(self._interrupted)
        train_seconds = tally["seconds"] + time.perf_counter() - started
        if self.distributed and tally["correct"] is not None:
            tally["correct"] = dist.all_reduce_sum(torch.as_tensor(tally["correct"], device=self.device).clone())
        wanted = self.eval_data is not None and self.writer
        metrics = self.evaluate(self.eval_data) if wanted else {"loss": None, "accuracy": None}
        n_steps = self.steps_per_epoch
        record = {
            "epoch": epoch, "step": self.step,
            "train_loss": tally["loss_sum"] / tally["seen"],
            "train_accuracy": None if tally["correct"] is None else int(tally["correct"]) / tally["seen"],
            "eval_loss": metrics["loss"], "eval_accuracy": metrics["accuracy"],
            "seconds": tally["seconds"] + time.perf_counter() - started,
            "seconds_per_update": train_seconds / n_steps,
            "lr": _lr(self.optimizer), "grad_norm": tally["grad_norm_sum"] / n_steps,
        }
        self.epoch = epoch
        self.history.append(record)
        self._flush_steps()
        self._write_lines("metrics.jsonl", [record])
        if self._board is not None:
            self._board.scalars({name: record[key] for key, name in TENSORBOARD_EPOCH.items()}, self.step)
            self._board.flush()
        self._call("on_epoch_end", record)
        # a signal during the evaluation (or this checkpoint's write) stops here, at the epoch's end; under
        # torchrun the ranks agree on it at the next update instead, so all of them stop at the same one
        stop = bool(self._interrupted) and not self.distributed
        if epoch % self.checkpoint_every == 0 or epoch == self.epochs or self.stop_training or stop:
            self._save(rng_shuffle=self._generator.get_state(), batch=0, partial=None, record=record)
        self._figures = _postfix(record)
        bar.set_postfix({**self._figures, **self._postfix}, refresh=False)
        if self._interrupted and not self.distributed:
            if self._good != (self.epoch, self.step, 0):  # the signal came while the checkpoint was written
                self._save(rng_shuffle=self._generator.get_state(), batch=0, partial=None, record=record)
            raise interrupt.Interrupted(self._interrupted)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, tally: dict[str, Any]) -> dict[str, Any]:
        out = self.model(x)
        loss = self.loss_fn(out, y)
        value, count = loss.item(), len(y)
        if self.distributed:  # one small all-reduce: the global loss, and whether any rank was interrupted
            shared = dist.all_reduce_sum(torch.tensor([value * count, count, float(self._interrupted > 0)],
                                                      dtype=torch.float64, device=self.device))
            value, count = float(shared[0] / shared[1]), int(shared[1])
            if shared[2] > 0 and not self._interrupted:  # another rank was: stop with it, as on Ctrl-C
                self._interrupted = signal.SIGINT
        self._check_divergence(value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = _grad_norm(self._params)
        lr = _lr(self.optimizer)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        tally["loss_sum"] += value * count
        tally["seen"] += count
        tally["grad_norm_sum"] += grad_norm
        tally["correct"] = _add_correct(tally["correct"], out, y)
        return {"step": self.step, "epoch": epoch, "loss": value, "grad_norm": grad_norm, "lr": lr}

    def _check_divergence(self, loss: float) -> None:
        if self._first_loss is None:
            self._first_loss = loss
        exploded = self._first_loss > 0 and loss > DIVERGENCE_FACTOR * self._first_loss
        if math.isfinite(loss) and not exploded:
            return
        what = f"loss became {loss}" if not math.isfinite(loss) else (
            f"loss {loss:.4g} exceeded {DIVERGENCE_FACTOR:g} × the first loss {self._first_loss:.4g}")
        raise DivergenceError(
            f"training diverged at step {self.step + 1} (epoch {self.epoch + 1}): {what}; "
            f"try a lower learning rate (now {_lr(self.optimizer):g}) or a warm-up schedule; {self._kept()}",
            step=self.step + 1, loss=loss, checkpoint=str(self.checkpoint_path) if self._good else None)

    # ------------------------------------------------------------------ run directory
    def _locked(self) -> contextlib.AbstractContextManager[Any]:
        if self.out is None or not self.writer:
            return contextlib.nullcontext()
        return rundir.locked(self.out)

    def _checkpoint_to_resume(self) -> Path:
        path = self.checkpoint_path
        if path is None:
            raise ConfigError("resume=True needs an output directory (out=...) holding checkpoint.pt")
        rundir.check_directory(self.out)
        rundir.check_run_files(self.out, TRAINER_FILES)  # each a regular file before any is read
        if not path.exists():
            raise ConfigError(f"cannot resume: no checkpoint.pt in {str(self.out)!r}")
        return path

    def _check_state(self, state: dict[str, Any], path: Path) -> None:
        """Everything :meth:`_restore` will load, checked before any of it is."""
        where = repr(str(path))
        checkpoint.check_module_state(state["model"], self.module, path)
        checkpoint.check_optimizer_state(state["optimizer"], self.optimizer, path)
        bad = checkpoint.non_finite({"model": state["model"], "optimizer": state["optimizer"]})
        if bad is not None:
            raise DataError(f"checkpoint {where} holds non-finite values in {_tensor_name(bad)}; it is not a good"
                            " checkpoint to resume from")
        counts = [state[k] for k in ("epoch", "step", "batch")]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in counts):
            raise DataError(f"checkpoint {where} is damaged: epoch, step and batch must be integers >= 0, not {counts}")
        first = state["first_loss"]
        if first is not None and (not isinstance(first, float) or not math.isfinite(first)):
            raise DataError(f"checkpoint {where} is damaged: first_loss = {first!r} is not a finite number")
        tally = {"loss_sum", "correct", "seen", "seconds", "grad_norm_sum"}
        if state["batch"] > 0 and not (isinstance(state["partial"], dict) and tally <= set(state["partial"])):
            raise DataError(f"checkpoint {where} is damaged: it stops inside an epoch but lacks the epoch's tally")
        if state["scheduler"] is not None and not isinstance(state["scheduler"], dict):
            raise DataError(f"checkpoint {where} is damaged: its scheduler state is not a dict")
        if not isinstance(state.get("callbacks", []), (list, type(None))):
            raise DataError(f"checkpoint {where} is damaged: its callback states are not a list")
        rng = state["rng"]
        sizes = {"torch": torch.get_rng_state().numel(), "shuffle": self._generator.get_state().numel()}
        if not isinstance(rng, dict) or not all(isinstance(rng.get(k), torch.Tensor) and rng[k].dtype == torch.uint8
                                                and rng[k].numel() == n for k, n in sizes.items()):
            raise DataError(f"checkpoint {where} is damaged: its random states (rng.torch, rng.shuffle) are missing"
                            " or of the wrong size")

    def _start(self) -> tuple[None, int, None]:
        if self.out is not None and self.writer:
            rundir.check_fresh(self.out, TRAINER_FILES, self.overwrite)  # again, now that we hold the lock
            if self.overwrite:
                for name in TRAINER_FILES:
                    (self.out / name).unlink(missing_ok=True)
        return None, 0, None

    def _restore(self, prepared: dict[str, Any]) -> tuple[torch.Tensor | None, int, dict[str, Any] | None]:
        """Load what :meth:`prepare` checked; drop log records of work that is about to be redone."""
        state = prepared["state"]
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self._first_loss = state["epoch"], state["step"], state["first_loss"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        if rng.get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        self._generator.set_state(rng["shuffle"].cpu())
        self._good = (self.epoch, self.step, state["batch"])
        if self.writer:  # records written after the checkpoint belong to work that is about to be redone
            metrics, torn = prepared["metrics"]
            kept = [r for r in metrics if (r["step"] <= self.step if "event" in r else r["epoch"] <= self.epoch)]
            self.history = [r for r in kept if "event" not in r]
            self.events = [r for r in kept if "event" in r]
            if torn or len(kept) < len(metrics):
                self._rewrite_lines("metrics.jsonl", kept)
            for name in ("steps.jsonl", "instruments.jsonl"):
                records, torn = prepared[name.removesuffix(".jsonl")]
                kept = [r for r in records if r["step"] <= self.step]
                if torn or len(kept) < len(records):
                    self._rewrite_lines(name, kept)
        if state["batch"] == 0:
            return None, 0, None
        return rng["shuffle"].cpu(), state["batch"], state["partial"]

    def _save(self, rng_shuffle: torch.Tensor, batch: int, partial: dict[str, Any] | None,
              record: dict[str, Any] | None = None) -> None:
        """Write the checkpoint, or raise :class:`DivergenceError` and keep the previous one
        when this state is not a good one (a non-finite tensor or loss). Every rank checks
        (their states are equal), so all of them stop together; rank 0 writes."""
        if self.out is None:
            return
        state = {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            # plain types only, checked here: a state torch.load(weights_only=True) cannot read back would
            # make the checkpoint useless at resume, long after the run that wrote it
            "callbacks": [plain(cb.state_dict(), f"the {type(cb).__name__} callback's state")
                          if hasattr(cb, "state_dict") else None for cb in self.callbacks],
            "callback_names": [type(cb).__name__ for cb in self.callbacks],
            "epoch": self.epoch, "step": self.step, "batch": batch, "partial": partial,
            "first_loss": self._first_loss,
            "rng": {"shuffle": rng_shuffle, "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None},
        }
        self._check_good(state, record)
        if self.writer:
            checkpoint.save(state, self.checkpoint_path)
        self._good = (self.epoch, self.step, batch)

    def _check_good(self, state: dict[str, Any], record: dict[str, Any] | None) -> None:
        losses = {k: record[k] for k in ("train_loss", "eval_loss") if record is not None and record[k] is not None}
        if state["partial"] is not None:
            losses["loss"] = state["partial"]["loss_sum"]
        bad_loss = next((k for k, v in losses.items() if not math.isfinite(v)), None)
        bad = checkpoint.non_finite({"model": state["model"], "optimizer": state["optimizer"]})
        if bad_loss is None and bad is None:
            return
        what = f"{bad_loss} became {losses[bad_loss]}" if bad_loss else f"{_tensor_name(bad)} holds non-finite values"
        raise DivergenceError(
            f"training diverged by step {self.step} (epoch {self.epoch + (record is None)}): {what}, so it was not"
            f" checkpointed; try a lower learning rate (now {_lr(self.optimizer):g}) or a warm-up schedule;"
            f" {self._kept()}",
            step=self.step, loss=losses.get(bad_loss, math.nan),
            checkpoint=str(self.checkpoint_path) if self._good else None)

    def _kept(self) -> str:
        """Which checkpoint survives a divergence, and what it holds."""
        if self.checkpoint_path is None or self._good is None:
            return "no checkpoint was written yet"
        epoch, step, batch = self._good
        when = f"epoch {epoch}, step {step}" if batch == 0 else f"step {step}, inside epoch {epoch + 1}"
        return f"the last good checkpoint is {self.checkpoint_path} (it holds {when})"

    def _finish(self, status: str) -> dict[str, Any]:
        self._flush_steps()  # an interrupted or diverged epoch's steps are the ones worth reading
        last = self.history[-1] if self.history else {}
        summary = {
            "status": status, **last,
            "epochs": self.epoch, "steps": self.step,
            "total_seconds": sum(r.get("seconds") or 0.0 for r in self.history),
            "best_eval_accuracy": max((r["eval_accuracy"] for r in self.history
                                       if r.get("eval_accuracy") is not None), default=None),
            "parameters": sum(p.numel() for p in self.module.parameters()),
            "device": str(self.device), "seed": self.seed, "batch_size": self.batch_size,
            "events": self.events,
        }
        summary.pop("epoch", None)
        summary.pop("step", None)
        if self.distributed:
            summary["world_size"] = self.world
        if self.out is not None and self.writer:
            checkpoint.write_json(summary, self.out / "summary.json")
        return summary

    def _flush_steps(self) -> None:
        self._write_lines("steps.jsonl", self._unwritten_steps)
        self._unwritten_steps = []

    def _write_lines(self, name: str, records: list[dict[str, Any]]) -> None:
        if self.out is not None and records and self.writer:
            rundir.append_lines(self.out / name,
                                (json.dumps(checkpoint.jsonable(r), allow_nan=False) + "\n" for r in records))

    def _rewrite_lines(self, name: str, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(checkpoint.jsonable(r), allow_nan=False) + "\n" for r in records)
        checkpoint.write_text(text, self.out / name)

    # ------------------------------------------------------------------ plumbing
    def _wrap(self, module: nn.Module) -> nn.Module:
        """Data parallelism on PyTorch's engine: ``DistributedDataParallel`` averages the
        gradients of all ranks during ``backward``."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[self.device] if self.device.type == "cuda" else None)

    def _my_share(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's part of the epoch's permutation: ``order[rank::world]``, the order padded
        with its own start to a multiple of the world size (as ``DistributedSampler``). With
        per-rank batch ``b``, update ``i`` of all ranks together covers exactly
        ``order[i·b·world:(i+1)·b·world]`` — the batch of one process with batch ``b·world``."""
        if not self.distributed:
            return order
        padded = torch.cat([order, order[:self._shard * self.world - len(order)]])
        return padded[self.rank::self.world]

    def _call(self, hook: str, *args: Any) -> None:
        """Every callback's ``hook``; after ``on_fit_start`` an exception becomes a ``callback_error``
        event, once per callback and message, and training goes on (:mod:`trainlab.train.callbacks`)."""
        for fn in self._hooks[hook]:
            if hook == "on_fit_start":
                fn(self, *args)
                continue
            try:
                fn(self, *args)
            except Exception as e:  # noqa: BLE001 - a reading or a diagnosis must not end the user's training
                event = self._callback_errors.add(f"callback {type(fn.__self__).__name__}.{hook}"
                                                  if hasattr(fn, "__self__") else f"callback {hook}", e)
                if event is not None:
                    self.log_event(event)

    @contextlib.contextmanager
    def _deferred_interrupt(self) -> Iterator[None]:
        """Ctrl-C (SIGINT) or SIGTERM sets a flag that the loop honours at its next safe point
        (after the current update, or after the epoch's evaluation), so the checkpoint it writes
        is a consistent state; a second signal stops at once. The handlers found before are
        restored after (:func:`trainlab.train.interrupt.handling`)."""
        self._interrupted = 0

        def handler(signum: int, frame: Any) -> None:
            if self._interrupted:
                raise interrupt.Interrupted(signum)
            self._interrupted = signum

        with interrupt.handling(handler):
            yield

    @contextlib.contextmanager
    def _tensorboard_open(self, resume: bool) -> Iterator[None]:
        """The TensorBoard file of this ``fit()`` (rank 0, with ``tensorboard=DIR``), flushed and
        closed however the run ends — a diverged or interrupted run's last updates included."""
        if self.tensorboard is None or not self.writer:
            yield
            return
        from trainlab.integrations.tensorboard import TensorBoardLogger

        # resumed at update S: what the interrupted run wrote after S is about to be redone, so hidden
        self._board = TensorBoardLogger(self.tensorboard, purge_step=self.step + 1 if resume else None)
        try:
            yield
        finally:
            self._board.close()
            self._board = None

    def _progress_bar(self) -> tqdm:
        return tqdm(total=self.epochs * self.steps_per_epoch, initial=self.step, unit="step",
                    disable=not self.progress, dynamic_ncols=True, leave=True)


def _tensor_name(dotted: str) -> str:
    """``model.1.weight`` → ``the model's '1.weight'``; ``optimizer.state.0.exp_avg`` likewise."""
    owner, _, name = dotted.partition(".")
    return f"the {owner}'s {name!r}" if name else repr(dotted)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA if available, else MPS, else CPU; otherwise the named device,
    refused with a :class:`ConfigError` when it does not exist here."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise ConfigError(f"device {str(device)!r} is not available on this machine; use auto or cpu")
    return device


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} is not allowed; it must be an integer >= 1")


def _check_optimizer(model: nn.Module, optimizer: Any) -> None:
    """The optimizer must train at least one of the model's parameters: one holding only another
    model's tensors, or only frozen ones (``requires_grad=False``), would train nothing for the
    whole run without a word. Holding only some of them (fine-tuning a head) is fine."""
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        shown = _short_repr(optimizer) if isinstance(optimizer, (str, int, float, type(None))) else \
            f"a {type(optimizer).__name__}"
        raise ConfigError(f"optimizer={shown} is not a torch optimizer (it has no param_groups); pass one built on"
                          " the model's parameters, e.g. torch.optim.SGD(model.parameters(), lr=0.1)")
    held = {id(p) for group in groups for p in group.get("params", ())}
    mine = [p for p in model.parameters() if id(p) in held]
    if not mine:
        raise ConfigError(f"the optimizer holds none of the model's parameters (its {len(held)} tensors belong to"
                          " another model or a copy); build it on this model's, e.g."
                          " torch.optim.SGD(model.parameters(), lr=0.1)")
    if not any(p.requires_grad for p in mine):
        raise ConfigError(f"the optimizer holds {len(mine)} of the model's parameters and every one has"
                          " requires_grad=False, so training would change nothing; unfreeze what should train")


def _short_repr(value: Any, limit: int = 80) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def updates_per_epoch(batch_size: int | str, samples: int, world: int = 1) -> int:
    """Updates in one epoch of ``samples`` shared by ``world`` ranks (each trains on
    ``⌈samples / world⌉`` of them)."""
    shard = math.ceil(samples / world)
    return math.ceil(shard / samples_per_update(batch_size, shard))


def samples_per_update(batch_size: int | str, n: int) -> int:
    """Samples per update out of ``n``: ``"full"`` (or any size ≥ ``n``) means all of them."""
    if batch_size == "full":
        return n
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is not allowed; use an integer >= 1 or \"full\"")
    return min(batch_size, n)


def _check_data(train_data: Dataset, eval_data: Dataset | None) -> None:
    """Refuse (``DataError``) what would train on nonsense or fail an epoch later: non-finite
    values in a ``TensorDataset``, and evaluation inputs of another shape than the training ones."""
    for name, data in (("train_data", train_data), ("eval_data", eval_data)):
        if not isinstance(data, TensorDataset):
            continue
        for t, tensor in enumerate(data.tensors):
            if tensor.is_floating_point() or tensor.is_complex():
                bad = ~torch.isfinite(tensor)
                if bad.any():
                    where = tuple(int(i) for i in bad.nonzero()[0])
                    raise DataError(f"{name} tensor {t} holds {tensor[where].item()} at index {where};"
                                    " every value must be finite")
    if isinstance(train_data, TensorDataset) and isinstance(eval_data, TensorDataset):
        shape, other = train_data.tensors[0].shape[1:], eval_data.tensors[0].shape[1:]
        if shape != other:
            raise DataError(f"eval_data's inputs have shape {tuple(other)} per sample, train_data's {tuple(shape)};"
                            " they must match")


def _check_batch_norm_batches(model: nn.Module, batch_size: int, samples: int) -> None:
    """BatchNorm1d cannot normalise a training batch of one sample (its variance is undefined):
    refuse a ``batch_size`` that makes one, every batch or the epoch's last."""
    if not any(isinstance(m, (nn.BatchNorm1d, tnn_batchnorm.BatchNorm1d)) for m in model.modules()):
        return
    def leaves_one(b: int) -> bool:
        return b == 1 or samples % b == 1

    if leaves_one(batch_size):
        what = "every batch holds" if batch_size == 1 else (
            f"the epoch's last batch holds ({samples} = {samples // batch_size}·{batch_size} + 1)")
        fits = next((b for b in range(batch_size + 1, samples + 1) if not leaves_one(b)), None)
        fix = (f"choose a batch_size that leaves at least two samples in every batch (e.g. {fits})" if fits
               else "BatchNorm1d needs at least two training samples")
        raise ConfigError(f"batch_size={batch_size} is not allowed with BatchNorm1d: {what} one sample, whose"
                          f" batch variance is undefined; {fix}")


def _on_device(data: Dataset, device: torch.device) -> Dataset:
    if isinstance(data, TensorDataset) and any(t.device != device for t in data.tensors):
        return TensorDataset(*(t.to(device) for t in data.tensors))
    return data


def _gather(data: Dataset, index: torch.Tensor | slice, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples ``data[i] for i in index`` (a tensor of indices, or a slice: a view of a
    ``TensorDataset``, no copy) as one batch ``(x, y)`` on ``device``."""
    if isinstance(data, TensorDataset):
        batch = tuple(t[index] for t in data.tensors)
    else:
        indices = range(len(data))[index] if isinstance(index, slice) else index.tolist()
        batch = tuple(t.to(device) for t in default_collate([data[i] for i in indices]))
    if len(batch) != 2:
        raise DataError(f"a training sample has {len(batch)} parts; expected (input, target)")
    return batch


def _add_correct(correct: torch.Tensor | int | None, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """Running count of ``argmax(out) == y``; ``None`` once targets are not class indices."""
    if correct is None or out.ndim != 2 or y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        return None
    return correct + (out.argmax(1) == y).sum()


def _grad_norm(params: list[torch.Tensor]) -> float:
    """``‖g‖₂`` over all parameters' gradients, as one vector."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if any(g.dtype != grads[0].dtype or g.device != grads[0].device or g.is_sparse for g in grads):
        return torch.nn.utils.get_total_norm(grads).item()
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()  # one kernel for all


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _postfix(record: dict[str, Any]) -> dict[str, str]:
    shown = {"loss": record["train_loss"], "acc": record["train_accuracy"],
             "eval_acc": record["eval_accuracy"]}
    return {k: f"{v:.4f}" for k, v in shown.items() if v is not None}
