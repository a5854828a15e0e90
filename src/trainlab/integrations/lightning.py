"""PyTorch Lightning: trainlab's instruments and stall doctor as one ``lightning.pytorch.Callback``.

::

    import lightning as L
    from trainlab.instruments import Monitor
    from trainlab.train import StallDoctor
    from trainlab.integrations.lightning import TrainlabCallback

    callback = TrainlabCallback(Monitor(every=10), StallDoctor(), loss_fn=torch.nn.functional.cross_entropy)
    L.Trainer(callbacks=[callback], logger=L.pytorch.loggers.CSVLogger("logs")).fit(module, train_loader)

After every optimizer update (``on_train_batch_end`` once ``trainer.global_step`` has moved; the
micro-batches of an accumulated update are waited for) the callback

* takes the :class:`~trainlab.instruments.Monitor`'s readings due at update ``global_step`` and
  logs one scalar per instrument, ``trainlab/<instrument>``
  (:func:`trainlab.integrations.scalars`);
* gives the :class:`~trainlab.train.StallDoctor` the update's loss; an event is logged as
  ``trainlab/doctor/...`` scalars (:func:`trainlab.integrations.event_scalars`), its one line
  (:func:`trainlab.integrations.event_text`) goes to Lightning's console log and, with a
  ``TensorBoardLogger``, to TensorBoard's text tab (tag ``trainlab/doctor``); the doctor acts
  on Lightning's own optimizer (``trainer.optimizers[0]``) and that optimizer's scheduler from
  ``trainer.lr_scheduler_configs`` (``η`` and the schedule's ``base_lrs`` rescaled together).

**Manual optimization.** With ``automatic_optimization = False`` and several optimizers,
``global_step`` counts every optimizer's steps; the callback counts updates instead — one per
training batch after which ``global_step`` moved, however many optimizers stepped in it — so
the Monitor's periods, and the parameters it keeps for ``update_ratio`` (all trainable ones,
whichever optimizer holds them), are those of updates. The doctor acts on the first optimizer.

**Where values go.** Each value is logged twice, for two readers: ``pl_module.log_dict(...,
logger=False)`` puts it in ``trainer.callback_metrics``, where other callbacks (checkpointing,
early stopping) see it; and every logger in ``trainer.loggers`` gets it through its
``log_metrics`` at the step Lightning logs this update's ``training_step`` values at
(``global_step − 1``). Lightning's own path to the loggers would write step values only every
``log_every_n_steps`` updates and drop readings taken in between.

**The loss.** Readings and diagnoses evaluate the model on a fixed sample, so they need the loss
as a function, never ``training_step`` (which logs and may do more): ``loss_fn(pl_module(x), y)``
for ``(x, y)`` batches, or ``batch_loss(pl_module, batch)`` for any other batch (a dict of
``input_ids`` and ``labels``, say; given to the Monitor and the doctor too). The doctor's
per-update loss is the one ``training_step`` returned (a tensor, or a dict's ``"loss"``): the
mean over the update's micro-batches (undoing Lightning's division by
``accumulate_grad_batches``), averaged over the ranks with ``trainer.strategy.reduce`` so that
every rank decides alike.

**The data.** By default the sample is drawn from the dataset of ``trainer.train_dataloader`` in
dataset order through the loader's ``collate_fn`` (not in the epoch's shuffled order, so it is
the same every epoch and after a resume); under a ``DistributedSampler`` each rank reads the
shard one that does not shuffle deals it (samples ``rank, rank + world, …``), and the
distributed-aware readings are those of the union. ``data=`` (a Dataset, a DataLoader or an ``(x, y)`` pair) replaces it.

**Errors.** An exception from the Monitor or the doctor at an update never ends the fit: it
becomes an event ``callback_error`` with its sentence and the step
(:func:`trainlab.train.callbacks.error_event`, the traceback in the ``trainlab`` debug log), kept
in ``errors`` and logged once per message.
A ``training_step`` that returns no loss is the user's code, and stays an error. Doctor events
carry ``step`` (``trainer.global_step``) and ``epoch``.

**Checkpoints.** :meth:`TrainlabCallback.state_dict` holds the Monitor's and the doctor's state,
so a run resumed with ``trainer.fit(..., ckpt_path=...)`` reads and diagnoses as an
uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, Subset

from trainlab.data.batches import BatchLoss, batch_size_of
from trainlab.errors import ConfigError, DataError
from trainlab.integrations import PREFIX, check_model, event_scalars, event_text, load_states, require, scalars, states
from trainlab.train.callbacks import ErrorLog

pl = require("lightning.pytorch", "lightning", "lightning")
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402  (after require's message)
from lightning.pytorch.utilities.rank_zero import rank_zero_info  # noqa: E402

#: How a refused checkpoint state is named.
SOURCE = "TrainlabCallback: the checkpoint's callback state"


class TrainlabCallback(pl.Callback):
    """Readings of ``monitor`` and the care of ``doctor`` in a Lightning run (the module docstring says how).

    Parameters:
        monitor: a :class:`~trainlab.instruments.Monitor`, or ``None``.
        doctor: a :class:`~trainlab.train.StallDoctor`, or ``None``; it reads ``monitor``'s
            latest readings unless it was given a Monitor of its own.
        loss_fn: ``(pl_module(x), y) -> mean loss`` for ``(x, y)`` batches.
        batch_loss: ``(pl_module, batch) -> mean loss`` for any other batch; exactly one of
            ``loss_fn`` and ``batch_loss`` (one given to the Monitor or the doctor counts; the
            parts without one get it).
        data: the training data the readings sample (default: the trainer's training set).

    Invalid arguments raise :class:`~trainlab.errors.ConfigError`.
    """

    def __init__(self, monitor: Any = None, doctor: Any = None, *,
                 loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
                 batch_loss: BatchLoss | None = None, data: Any = None):
        if monitor is None and doctor is None:
            raise ConfigError("TrainlabCallback: monitor and doctor are both None; pass a trainlab.instruments.Monitor,"
                              " a trainlab.train.StallDoctor, or both")
        if monitor is not None and not (callable(getattr(monitor, "after_step", None))
                                        and isinstance(getattr(monitor, "latest", None), dict)):
            raise ConfigError(f"TrainlabCallback: monitor={monitor!r} is not allowed; expected a"
                              " trainlab.instruments.Monitor or None")
        if doctor is not None and not (callable(getattr(doctor, "after_step", None))
                                       and isinstance(getattr(doctor, "events", None), list)):
            raise ConfigError(f"TrainlabCallback: doctor={doctor!r} is not allowed; expected a"
                              " trainlab.train.StallDoctor or None")
        for name, fn in (("loss_fn", loss_fn), ("batch_loss", batch_loss)):
            if fn is not None and not callable(fn):
                raise ConfigError(f"TrainlabCallback: {name}={fn!r} is not callable; pass a function (see its"
                                  " docstring) or None")
        given = {id(f): f for f in (batch_loss, getattr(monitor, "batch_loss", None),
                                    getattr(doctor, "batch_loss", None)) if f is not None}
        if len(given) > 1:
            raise ConfigError("TrainlabCallback: the batch_loss given here, to the Monitor and to the StallDoctor are"
                              " not one function; pass it once (here is enough)")
        batch_loss = next(iter(given.values()), None)
        if (loss_fn is None) == (batch_loss is None):
            raise ConfigError("TrainlabCallback: pass exactly one of loss_fn=(outputs, targets) -> mean loss and"
                              " batch_loss=(module, batch) -> mean loss (got "
                              + ("both" if loss_fn is not None else "neither") + "); training_step is never called"
                              " for a reading, since it logs")
        for part in (monitor, doctor):  # both evaluate the loss the same way
            if part is not None and part.batch_loss is None:
                part.batch_loss = batch_loss
        if doctor is not None and getattr(doctor, "monitor", None) is None:
            doctor.monitor = monitor
        self.monitor, self.doctor, self.loss_fn, self.batch_loss, self.data = monitor, doctor, loss_fn, batch_loss, data
        self._data: Any = None  # the data sampled, resolved when training starts
        self._step = 0  # trainer.global_step at the last update seen
        self._updates = 0  # updates seen: batches after which global_step moved (the Monitor's count)
        self._restored: int | None = None  # the update count a checkpoint gave back, until training starts
        self._loaded = False  # a checkpoint's state was taken: check it fits the model when training starts
        self._losses: list[float] = []  # training_step's losses since then (micro-batches)
        self._samples = 0  # and their samples
        self._fixed: tuple[Any, Any, bool] | None = None  # (optimizer, its scheduler, full batch) of this fit
        self._errors = ErrorLog()  # the Monitor's and the doctor's errors, each message logged once
        self.errors: list[dict[str, Any]] = self._errors.events  # those errors, as events

    # ---------------------------------------------------------------- Lightning hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """After Lightning restored a checkpoint: take the update count, resolve the data, and keep
        the parameters when an instrument due after the coming update reads them (``update_ratio``).
        A Monitor state restored for another model is refused first (one sentence)."""
        if self._loaded:
            check_model(self.monitor, pl_module, SOURCE)
        self._updates = trainer.global_step if self._restored is None else self._restored
        self._restored, self._loaded = None, False
        self._step, self._losses, self._samples = trainer.global_step, [], 0
        self._data = self.data if self.data is not None else _training_data(trainer)
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self._fixed = optimizer, _scheduler_of(trainer, optimizer), _full_batch(trainer)
        if self.monitor is not None:
            self.monitor.start(pl_module, self._updates)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Collect the micro-batch's loss; after an update, read the instruments and consult the doctor."""
        if self.doctor is not None and outputs is not None:  # None: training_step skipped the batch
            self._losses.append(_loss_of(outputs, pl_module, trainer))
        try:
            self._samples = None if self._samples is None else self._samples + batch_size_of(batch)
        except DataError:  # a batch whose size cannot be told: the noise readings go without it
            self._samples = None
        step = trainer.global_step
        if step == self._step:
            return  # accumulating: the update has not happened yet
        losses, samples = self._losses, self._samples
        self._step, self._losses, self._samples = step, [], 0
        self._updates += 1  # one update, however many optimizers stepped in it (manual optimization)
        optimizer, scheduler, full_batch = self._fixed  # set once per fit: looked up per update they cost ~1 %
        batch_size = samples * trainer.world_size if samples else None  # samples per update, all ranks
        if self.monitor is not None:
            try:
                readings = self.monitor.after_step(pl_module, None, self.loss_fn, self._data, optimizer,
                                                   batch_size=batch_size, step=self._updates)
                self._log(trainer, pl_module, scalars(readings), step)
            except Exception as e:  # noqa: BLE001 - a reading must not end the user's training
                self._failed("the Monitor", e, step)
        if self.doctor is not None:
            if not losses:
                raise ConfigError("TrainlabCallback: training_step returned None before an optimizer update; the stall"
                                  " doctor needs the loss: return the loss tensor or a dict with a 'loss' tensor")
            loss = sum(losses) / len(losses)
            if trainer.world_size > 1:  # every rank decides on the same number
                loss = float(trainer.strategy.reduce(torch.tensor(loss, dtype=torch.float64, device=pl_module.device),
                                                     reduce_op="mean"))
            try:
                event = self.doctor.after_step(pl_module, loss, self.loss_fn, self._data, optimizer, scheduler,
                                               full_batch=full_batch, batch_size=batch_size)
            except Exception as e:  # noqa: BLE001 - a diagnosis must not end the user's training
                event = self._failed("the stall doctor", e, step)
            if event is not None:
                event.update(step=step, epoch=trainer.current_epoch)
                self._log(trainer, pl_module, event_scalars(event), step)
                text = event_text(event)
                rank_zero_info(f"trainlab: update {step}: {text}")
                for logger in trainer.loggers:
                    if isinstance(logger, TensorBoardLogger):
                        logger.experiment.add_text(f"{PREFIX}/doctor", text, step - 1)

    def state_dict(self) -> dict[str, Any]:
        """For Lightning's checkpoints: the Monitor's and the doctor's state and the update count,
        as tensors and plain types, so the checkpoint loads with ``weights_only=True``."""
        return {**states(self.monitor, self.doctor), "updates": self._updates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` saved (a part this callback has no taker for is left out);
        anything else is one sentence (:func:`trainlab.integrations.load_states`). Whether the
        Monitor's state fits the model is checked when training starts, where the model is known."""
        updates = state_dict.get("updates", 0) if isinstance(state_dict, Mapping) else 0
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
            raise ConfigError(f"{SOURCE} holds updates={updates!r}, not an update count")
        load_states(self.monitor, self.doctor, state_dict, SOURCE)
        self._restored, self._loaded = (updates if "updates" in state_dict else None), True

    # ---------------------------------------------------------------- internals
    def _failed(self, source: str, error: Exception, step: int) -> None:
        """An error of the Monitor or the doctor as an event, once per message (module docstring)."""
        event = self._errors.add(source, error, step)
        if event is not None:
            rank_zero_info(f"trainlab: update {step}: {event['message']}")

    @staticmethod
    def _log(trainer: Any, pl_module: Any, values: dict[str, float], step: int) -> None:
        if not values:
            return
        pl_module.log_dict(values, on_step=True, on_epoch=False, logger=False)
        for logger in trainer.loggers:  # rank zero only: Lightning's loggers write on rank 0
            logger.log_metrics(values, step=step - 1)


def _loss_of(outputs: Any, pl_module: Any, trainer: Any) -> float:
    """The loss ``training_step`` returned for this micro-batch, undivided by ``accumulate_grad_batches``,
    as a number: the doctor decides on numbers, and one read per micro-batch is cheaper than
    stacking tensors (between 1 ms updates, a handful of tiny tensor operations is measurable)."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ConfigError(f"TrainlabCallback: training_step returned {type(outputs).__name__}, not the loss; the stall"
                          " doctor needs it: return the loss tensor or a dict with a 'loss' tensor")
    value = float(loss.detach())
    # automatic optimization hands callbacks the loss it backpropagated: divided by accumulate_grad_batches
    return value * trainer.accumulate_grad_batches if pl_module.automatic_optimization else value


def _scheduler_of(trainer: Any, optimizer: Any) -> Any:
    """The learning-rate scheduler Lightning steps for ``optimizer``, if any."""
    return next((config.scheduler for config in trainer.lr_scheduler_configs
                 if getattr(config.scheduler, "optimizer", None) is optimizer), None)


def _full_batch(trainer: Any) -> bool:
    """Whether each update sees all of this rank's data: one update per epoch."""
    return trainer.num_training_batches <= trainer.accumulate_grad_batches


def _training_data(trainer: Any) -> Any:
    """This rank's training set in dataset order, batched as ``trainer.train_dataloader`` batches it
    (the loader itself for an iterable dataset)."""
    loader = trainer.train_dataloader
    if not isinstance(loader, DataLoader):
        raise ConfigError(f"TrainlabCallback: the trainer trains on a {type(loader).__name__}, not one DataLoader; pass"
                          " data= (a Dataset, a DataLoader or an (x, y) pair) for the readings' sample")
    dataset, sampler = loader.dataset, loader.sampler
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return loader
    if isinstance(sampler, DistributedSampler):  # this rank's shard, as the sampler deals it without shuffling
        dataset = Subset(dataset, range(sampler.rank, len(dataset), sampler.num_replicas))
    return DataLoader(dataset, batch_size=loader.batch_size or 1, collate_fn=loader.collate_fn)


__all__ = ["TrainlabCallback"]
