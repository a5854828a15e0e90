"""The Monitor and the stall doctor as a Hugging Face ``transformers.TrainerCallback`` (extra ``trainlab[hf]``).

:class:`TrainlabCallback` works on what the HF ``Trainer`` holds — its model, optimizer and
learning-rate schedule — with the dict batches it trains on (``input_ids``, ``labels``, …):

* **The loss of an analysis** is the loss the model returns, ``batch_loss(model, batch) =
  model(**batch).loss`` (:func:`model_loss`), the hook every :mod:`trainlab.curvature` analysis
  takes, given to the Monitor and the doctor unless they have their own. It runs under PyTorch's
  math attention kernel: the fused CPU/GPU kernels of ``scaled_dot_product_attention`` have no
  second derivative, which Hessian-vector products need; the value is the same up to rounding.
  For a causal LM that loss is the mean over the batch's target tokens, so a per-sample reading
  (noise scale) treats it as the mean of the samples' losses — exact when every sample has as many
  target tokens (fixed-length sequences, no padding), approximate otherwise.
* **The fixed sample** of the readings and the diagnosis: the first samples of the training
  set (``max(monitor.sample, doctor.max_samples)``), collated once with the Trainer's own
  collator — the dataloader the Trainer iterates is never touched. Under ``torch.distributed``
  rank ``r`` takes samples ``r, r + W, r + 2W, …`` (its own shard, as a ``DistributedSampler``
  without shuffling would give it), so the readings of all ranks together cover ``W`` shards.
* **The per-update loss for the doctor** comes from the real training step: a forward hook on
  the model captures ``outputs.loss`` of every training forward between ``on_step_begin`` and
  ``on_step_end`` (never the callback's own evaluations, which run in ``eval()`` mode outside
  that span). Over gradient-accumulation micro-steps it is combined as the Trainer combines
  them: summed when the Trainer passed ``num_items_in_batch`` (each micro-loss is then its
  tokens' loss sum over the update's token count), averaged otherwise — so it is the loss the
  Trainer itself logs for the update. Under ``torch.distributed`` it is averaged over ranks, so
  every rank's doctor decides alike. A model that returns no loss (a custom ``compute_loss``)
  cannot be doctored: one sentence says so.
* **The doctor acts** on the Trainer's optimizer (``param_groups[i]["lr"]``, momentum) and
  rescales its schedule's ``base_lrs`` (``LambdaLR`` and every ``torch.optim.lr_scheduler``), so
  the schedule keeps its shape; accelerate's wrappers are looked through.
* **Logged** at the update they belong to, one record per update: each reading as
  ``trainlab/<instrument>``, each doctor event's numbers as ``trainlab/doctor/<field>``
  (:mod:`trainlab.integrations`) — through ``trainer.log`` when the callback knows the Trainer
  (``trainer=``; then every ``report_to`` integration — TensorBoard, W&B — receives them too),
  else appended to ``state.log_history`` in the record form ``trainer.log`` writes. A doctor
  event's line of text goes to the ``transformers`` logger (a warning).
* **Errors**: an exception from the Monitor or the doctor at an update never ends the training:
  it becomes an event ``callback_error`` with its sentence and the step
  (:func:`trainlab.train.callbacks.error_event`, the traceback in the ``trainlab`` debug log), kept
  in ``errors`` and logged as a warning once per message. Doctor events carry ``step`` (``state.global_step``) and ``epoch``, also in ``doctor.events``.
* **Checkpoints**: the Monitor's and the doctor's states are saved beside each HF checkpoint
  (``checkpoint-N/trainlab_callback.pt``) and loaded back when ``trainer.train(resume_from_checkpoint=...)``
  resumes from ``args.output_dir/checkpoint-N`` — with ``torch.load(weights_only=True)``: the file
  holds tensors and plain types only, so a crafted one cannot run code (:func:`read_state`), and a
  state saved for another model is refused, in one sentence each.

Usage::

    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
    trainer.add_callback(TrainlabCallback(Monitor(every=10, instruments=[Sharpness(), NoiseScale()]),
                                          StallDoctor(), trainer=trainer))
    trainer.train()
"""

from __future__ import annotations

import errno
import itertools
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn

from trainlab import distributed as dist
from trainlab.data.batches import BatchLoss, to_device
from trainlab.errors import ConfigError
from trainlab.integrations import check_model, event_scalars, event_text, load_states, require, scalars, states
from trainlab.train.callbacks import ErrorLog

_transformers = require("transformers", "hf", "transformers")

#: The file beside each HF checkpoint that holds the callback's state.
STATE_FILE = "trainlab_callback.pt"
_logger = _transformers.utils.logging.get_logger(__name__)


def model_loss(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """``model(**batch).loss``, the mean loss a Hugging Face model computes from ``labels``,
    under the math attention kernel (twice differentiable; see the module docstring)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        outputs = model(**batch)
    loss = _loss_of(outputs)
    if loss is None:
        raise ConfigError(f"{type(model).__name__} returned no loss for a batch with keys {sorted(batch)}; the batches"
                          " need labels (or pass batch_loss=(model, batch) -> mean loss)")
    return loss


class TrainlabCallback(_transformers.TrainerCallback):
    """A Hugging Face ``TrainerCallback`` running a :class:`~trainlab.instruments.Monitor` and a
    :class:`~trainlab.train.StallDoctor` on the Trainer's model, data, optimizer and schedule
    (the module docstring says how).

    Parameters:
        monitor: a Monitor (or ``None``); its readings are logged at their update.
        doctor: a StallDoctor (or ``None``); it acts on the Trainer's optimizer and schedule.
        trainer: the HF ``Trainer`` itself (optional): readings and events then go through
            ``trainer.log``, so the ``report_to`` integrations see them; without it they are
            appended to ``state.log_history``.
        batch_loss: ``(model, batch) -> mean loss`` for the Monitor and the doctor when they have
            none of their own (default :func:`model_loss`, the model's ``outputs.loss``).

    At least one of ``monitor`` and ``doctor``; anything else is a :class:`~trainlab.errors.ConfigError`.
    Cost: that of the Monitor's readings and the doctor's diagnoses; per update, the hook
    keeps one detached loss tensor and the callback reads it once (``.item()``) when a doctor is set.
    """

    def __init__(self, monitor: Any = None, doctor: Any = None, *, trainer: Any = None,
                 batch_loss: BatchLoss | None = None):
        if monitor is None and doctor is None:
            raise ConfigError("TrainlabCallback: monitor=None and doctor=None leave nothing to do; pass a"
                              " trainlab.instruments.Monitor, a trainlab.train.StallDoctor or both")
        if monitor is not None and not callable(getattr(monitor, "after_step", None)):
            raise ConfigError(f"TrainlabCallback: monitor={monitor!r} is not allowed; expected a"
                              " trainlab.instruments.Monitor or None")
        if doctor is not None and not callable(getattr(doctor, "after_step", None)):
            raise ConfigError(f"TrainlabCallback: doctor={doctor!r} is not allowed; expected a"
                              " trainlab.train.StallDoctor or None")
        if trainer is not None and not callable(getattr(trainer, "log", None)):
            raise ConfigError(f"TrainlabCallback: trainer={trainer!r} is not allowed; expected the"
                              " transformers.Trainer (with its log method) or None")
        if batch_loss is not None and not callable(batch_loss):
            raise ConfigError(f"TrainlabCallback: batch_loss={batch_loss!r} is not allowed; expected a function"
                              " (model, batch) -> mean loss, or None (the model's outputs.loss)")
        self.monitor, self.doctor, self.trainer = monitor, doctor, trainer
        self.batch_loss = batch_loss or model_loss
        for part in (monitor, doctor):
            if part is not None and getattr(part, "batch_loss", None) is None:
                part.batch_loss = self.batch_loss
        if doctor is not None and monitor is not None and getattr(doctor, "monitor", None) is None:
            doctor.monitor = monitor  # the doctor reads the Monitor's fresh readings instead of measuring again
        self._sample: Any = None  # the fixed sample: one collated batch on the model's device
        self._hook: Any = None
        self._armed = False  # inside an update: training forwards are captured
        self._micro: list[torch.Tensor] = []  # this update's captured micro-step losses
        self._summed = False  # the Trainer passed num_items_in_batch: micro-losses add up
        self._errors = ErrorLog()  # the Monitor's and the doctor's errors, each message logged once
        self.errors: list[dict[str, Any]] = self._errors.events  # those errors, as events

    # ---------------------------------------------------------------- HF hooks
    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any
                       ) -> None:
        """Hook the model's forward (the doctor's per-update loss); when resuming from
        ``output_dir/checkpoint-N``, take the Monitor's and the doctor's states back; start the
        Monitor at the Trainer's update count."""
        if state.global_step > 0:  # first: a state that is refused leaves the model unhooked
            self._load(os.path.join(args.output_dir, f"{_transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-"
                                    f"{state.global_step}", STATE_FILE), model)
        if self.doctor is not None and model is not None and self._hook is None:
            self._hook = model.register_forward_hook(self._capture, with_kwargs=True)
        if self.monitor is not None and model is not None and callable(getattr(self.monitor, "start", None)):
            self.monitor.start(model, state.global_step)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """An update begins: capture its training forwards."""
        self._armed, self._micro = True, []

    def on_step_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                    optimizer: Any = None, lr_scheduler: Any = None, train_dataloader: Any = None,
                    **kwargs: Any) -> None:
        """After the optimizer step: the Monitor's readings due now, then the doctor; what they
        produced is logged at ``state.global_step``."""
        self._armed = False
        step = state.global_step
        optimizer, scheduler = _unwrap(optimizer, "optimizer"), _unwrap(lr_scheduler, "scheduler")
        batch_size = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        sample = self._sample_of(model, train_dataloader)
        logs: dict[str, float] = {}
        if self.monitor is not None:
            try:
                readings = self.monitor.after_step(model, None, None, sample, optimizer, batch_size=batch_size,
                                                   step=step)
                logs.update(scalars(readings))
            except Exception as e:  # noqa: BLE001 - a reading must not end the user's training
                self._failed("the Monitor", e, step)
        if self.doctor is not None:
            try:
                event = self.doctor.after_step(model, self._update_loss(model), None, sample, optimizer, scheduler,
                                               batch_size=batch_size)
            except Exception as e:  # noqa: BLE001 - a diagnosis must not end the user's training
                event = self._failed("the stall doctor", e, step)
            if event is not None:
                event.update(step=step, epoch=state.epoch)  # in place: the doctor's own list carries the step too
                logs.update(event_scalars(event))
                _logger.warning(f"trainlab stall doctor, step {step}: {event_text(event)}")
        if logs:
            self._log(logs, state, control)

    def _failed(self, source: str, error: Exception, step: int) -> None:
        """An error of the Monitor or the doctor as an event (once per message; module docstring)."""
        event = self._errors.add(source, error, step)
        if event is not None:
            _logger.warning(f"trainlab, step {step}: {event['message']}")

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Beside the checkpoint the Trainer just wrote: the Monitor's and the doctor's states."""
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"{_transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-"
                                  f"{state.global_step}")
            os.makedirs(folder, exist_ok=True)
            torch.save(self.state_dict(), os.path.join(folder, STATE_FILE))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Unhook the model; flush a Monitor's TensorBoard file, if any."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if callable(getattr(self.monitor, "close", None)):
            self.monitor.close()

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The Monitor's and the doctor's states (``None`` for an absent one)."""
        return states(self.monitor, self.doctor)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back what :meth:`state_dict` saved."""
        load_states(self.monitor, self.doctor, state)

    # ---------------------------------------------------------------- internals
    def _capture(self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if self._armed and module.training:
            loss = _loss_of(output)
            if loss is not None:
                self._micro.append(loss.detach())
                self._summed = kwargs.get("num_items_in_batch") is not None

    def _update_loss(self, model: nn.Module) -> float:
        """The update's loss from its captured micro-step losses (module docstring)."""
        if not self._micro:
            raise ConfigError(f"TrainlabCallback: {type(model).__name__} returned no outputs.loss during the update,"
                              " so the stall doctor has no loss to watch; give the batches labels so the model"
                              " computes its loss (a custom compute_loss outside the model is not seen)")
        total = torch.stack([m.double().reshape(()) for m in self._micro]).sum()
        loss = total if self._summed else total / len(self._micro)
        if dist.active() and dist.world_size() > 1:
            loss = dist.all_reduce_sum(loss.clone()) / dist.world_size()
        return float(loss)

    def _sample_of(self, model: nn.Module, loader: Any) -> Any:
        """The first samples of this rank's shard of the training set, collated once (module docstring)."""
        if self._sample is None:
            if loader is None or not hasattr(loader, "dataset"):
                raise ConfigError("TrainlabCallback: the Trainer has no train_dataloader; train with train_dataset=")
            limit = max(getattr(self.monitor, "sample", 0) or 0, getattr(self.doctor, "max_samples", 0) or 0)
            rank, world = (dist.rank(), dist.world_size()) if dist.active() else (0, 1)
            samples = _first(loader.dataset, limit, rank, world)
            if not samples:
                raise ConfigError("TrainlabCallback: the training set holds no samples for the readings")
            collate: Callable[[list[Any]], Any] = getattr(loader, "collate_fn", None) or \
                _transformers.default_data_collator
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            self._sample = to_device(dict(collate(samples)), device)
        return self._sample

    def _log(self, logs: dict[str, float], state: Any, control: Any) -> None:
        if self.trainer is not None:
            # trainer.log's on_log clears control.should_log, which would drop the Trainer's own
            # loss record due at this update: it is put back
            should_log = control.should_log
            self.trainer.log(logs)
            control.should_log = should_log
        else:  # the record trainer.log appends
            state.log_history.append({**logs, **({"epoch": state.epoch} if state.epoch is not None else {}),
                                      "step": state.global_step})

    def _load(self, path: str, model: nn.Module | None) -> None:
        """Take the callback's state back from ``path`` (see :func:`read_state`), checked to be
        one saved for ``model``; a missing file is a warning and a fresh start."""
        if not os.path.lexists(path):
            _logger.warning(f"trainlab: {path} does not exist, so the Monitor and the stall doctor start afresh"
                            " (they resume with the Trainer only from args.output_dir/checkpoint-N)")
            return
        source = f"TrainlabCallback: {path}"
        before = self.state_dict()
        load_states(self.monitor, self.doctor, read_state(path), source)
        try:
            check_model(self.monitor, model, source)
        except ConfigError:
            load_states(self.monitor, self.doctor, before)  # refused: the parts as they were
            raise


def read_state(path: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain types only, so a crafted file
    can never run code while it is read. Every way the file is unusable — objects of other
    types (a pickled ``__reduce__`` payload among them), empty, cut short, not written by
    ``torch.save``, a directory — is a :class:`~trainlab.errors.ConfigError` naming ``path``."""
    if os.path.isdir(path):
        raise ConfigError(f"TrainlabCallback: {path} is a directory, not the callback's state file")
    if os.path.getsize(path) == 0:
        raise ConfigError(f"TrainlabCallback: {path} is empty (0 bytes), not the callback's state saved by torch.save")
    try:
        with warnings.catch_warnings():  # torch's own warnings would add lines to a one-line error
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))  # the class or function the pickle names
        if found:
            raise ConfigError(f"TrainlabCallback: {path} holds objects other than tensors and plain types (here"
                              f" {found.group(1).rstrip('.,')}),"
                              " which are never unpickled since unpickling them could run any code; it is not a"
                              " state trainlab saved") from None
        raise _unreadable(path, e) from None
    except OSError as e:
        if e.errno == errno.EIO:  # the disk's fault, not the file's
            raise
        raise _unreadable(path, e) from None
    except Exception as e:  # foreign or truncated bytes fail in many ways inside torch.load
        raise _unreadable(path, e) from None


def _unreadable(path: str, e: BaseException) -> ConfigError:
    """The one sentence for a file torch.load cannot read: torch's own reason, without its advice
    to retry with ``weights_only=False``."""
    text = str(e)
    reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, re.S)
    text = " ".join((reason.group(1) if reason else text).split()) or "no message"
    text = text[:text.index(". ") + 1] if ". " in text else text  # its first sentence
    text = text if len(text) <= 160 else text[:159] + "…"
    return ConfigError(f"TrainlabCallback: {path} cannot be read by torch.load: it is cut short or was not written by"
                       f" torch.save ({type(e).__name__}: {text})")


def _loss_of(outputs: Any) -> torch.Tensor | None:
    """``outputs.loss`` of a ``ModelOutput`` or a dict; ``None`` when there is none."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def _unwrap(obj: Any, inner: str) -> Any:
    """accelerate's ``AcceleratedOptimizer``/``AcceleratedScheduler`` → the torch object inside
    (its class tells the doctor an Adam from an SGD; its ``base_lrs`` keep a rescaled schedule)."""
    while obj is not None and getattr(obj, inner, None) is not None and not hasattr(obj, "base_lrs"):
        obj = getattr(obj, inner)
    return obj


def _first(dataset: Any, limit: int, rank: int, world: int) -> list[Any]:
    """Samples ``rank, rank + world, …`` of ``dataset``, at most ``limit`` of them."""
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        return [dataset[i] for i in range(rank, len(dataset), world)[:limit]]
    return list(itertools.islice(iter(dataset), rank, rank + world * limit, world))


__all__ = ["STATE_FILE", "TrainlabCallback", "model_loss", "read_state"]
