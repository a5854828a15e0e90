"""From a :class:`~trainlab.train.config.RunConfig` to a trained run directory.

``train(config, out)`` loads the data, builds the model, optimizer and loss the config
names, writes ``out/config.toml`` (the configuration as resolved) and runs the
:class:`~trainlab.train.Trainer`. Resuming reads ``out/config.toml`` back and allows only
the keys in :data:`RESUMABLE` to change.

Nothing is written until everything is known to be right: the configuration, the data, and
— under the run directory's lock — a fresh directory (no file of
:data:`~trainlab.train.rundir.RUN_FILES` unless ``overwrite``) or, on resume, the saved
configuration, checkpoint and logs.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.data import TensorDataset

import trainlab.nn as tnn
from trainlab import data, optim
from trainlab import distributed as dist
from trainlab.optim import schedules
from trainlab.errors import ConfigError
from trainlab.train import checkpoint, rundir
from trainlab.train import config as config_mod
from trainlab.train.config import RunConfig
from trainlab.train.trainer import Trainer, updates_per_epoch

#: Keys that may differ between a run and its resumption.
RESUMABLE = ("train.epochs", "train.checkpoint_every", "train.device")

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": optim.SGD, "adagrad": optim.Adagrad, "rmsprop": optim.RMSProp, "adam": optim.Adam,
}
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cross_entropy": tnn.cross_entropy,
    "mse": tnn.mse_onehot,
}


@dataclass
class Parts:
    """Everything a run needs, built from its configuration."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    train_data: TensorDataset
    test_data: TensorDataset


def build(config: RunConfig) -> Parts:
    """Data (raw features), and a model whose first module standardises them with the
    training split's statistics, so the checkpointed model takes raw inputs."""
    train_data, test_data = data.load(config.data.name, test_fraction=config.data.test_fraction, seed=config.seed,
                                      standardize=False, num_classes=config.data.num_classes or None)
    network = build_model(config.model, train_data.tensors[0].shape[1:], data.num_classes(train_data, test_data),
                          seed=config.seed)
    model = nn.Sequential(tnn.Standardizer().fit(train_data.tensors[0]), *network)
    optimizer = build_optimizer(config.optimizer, model.parameters())
    # the Trainer's own count, so a schedule spanning "the whole run" fits it, under torchrun too
    updates = config.train.epochs * updates_per_epoch(config.train.batch_size, len(train_data), dist.world_size())
    scheduler = build_schedule(config.schedule, optimizer, updates)
    return Parts(model, optimizer, scheduler, LOSSES[config.train.loss], train_data, test_data)


def build_optimizer(cfg: config_mod.OptimizerConfig, params: Any) -> torch.optim.Optimizer:
    """The :mod:`trainlab.optim` optimizer ``cfg.name`` names, with ``cfg.lr`` and that optimizer's own keys.

    Parameters: ``cfg`` the ``[optimizer]`` section (a validated ``OptimizerConfig``; only the keys
    of :data:`~trainlab.train.config.OPTIMIZER_KEYS` for its name are passed, ``betas`` as a tuple);
    ``params`` what the optimizer takes, e.g. ``model.parameters()``.
    Returns: an :class:`~trainlab.optim.SGD`, ``Adagrad``, ``RMSProp`` or ``Adam``.
    """
    kwargs = {k: getattr(cfg, k) for k in config_mod.OPTIMIZER_KEYS[cfg.name]}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return OPTIMIZERS[cfg.name](params, lr=cfg.lr, **kwargs)


def build_schedule(cfg: config_mod.ScheduleConfig, optimizer: torch.optim.Optimizer, updates: int) -> Any:
    """The named schedule; ``total_steps = 0`` means the run's ``updates``, ``d_model = 0`` none."""
    kwargs = {k: getattr(cfg, k) for k in schedules.parameters(cfg.name)}
    if kwargs.get("total_steps") == 0:
        kwargs["total_steps"] = updates
    if kwargs.get("d_model") == 0:
        kwargs["d_model"] = None
    return schedules.create(cfg.name, optimizer, **kwargs)


def build_model(cfg: config_mod.ModelConfig, input_shape: torch.Size, num_classes: int, seed: int) -> nn.Module:
    """The network ``cfg.name`` names: :func:`trainlab.nn.mlp` or :func:`trainlab.nn.small_cnn`.

    Parameters: ``cfg`` the ``[model]`` section (``hidden`` is used by ``mlp`` only; ``activation``
    and ``batch_norm`` by both); ``input_shape`` one sample's shape (``small_cnn``: ``(C, H, H)`` or
    ``H·H`` features, ``H`` divisible by 4, else :class:`~trainlab.errors.ConfigError`);
    ``num_classes`` the outputs; ``seed`` the initialisation's seed.
    Returns: an ``nn.Sequential``, without the :class:`~trainlab.data.Standardizer` that :func:`build` puts first.
    """
    if cfg.name == "mlp":
        return tnn.mlp(math.prod(input_shape), cfg.hidden, num_classes, activation=cfg.activation,
                       batch_norm=cfg.batch_norm, seed=seed)
    channels, side = _image_shape(input_shape)
    if side % 4:  # small_cnn's two pooling blocks each halve the side
        raise ConfigError(f"model.name = 'small_cnn' needs images whose side is divisible by 4; the data's inputs"
                          f" have shape {tuple(input_shape)} (side {side}); use model.name = 'mlp' for this data")
    return tnn.small_cnn(channels, side, num_classes, activation=cfg.activation, batch_norm=cfg.batch_norm,
                         seed=seed)


def _image_shape(shape: torch.Size) -> tuple[int, int]:
    """``(channels, side)`` of square images given as ``(C, H, W)`` or flattened ``(H·W,)``."""
    if len(shape) == 3 and shape[1] == shape[2]:
        return shape[0], shape[1]
    if len(shape) == 1 and math.isqrt(shape[0]) ** 2 == shape[0]:
        return 1, math.isqrt(shape[0])
    raise ConfigError(f"model.name = 'small_cnn' needs square images, (C, H, H) or H·H features;"
                      f" the data's inputs have shape {tuple(shape)}")


def train(config: RunConfig, out: str | Path, resume: bool = False, progress: bool = True,
          callbacks: Iterable[Any] = (), overwrite: bool = False,
          tensorboard: str | Path | None = None) -> dict[str, Any]:
    """Train as ``config`` says into run directory ``out`` and return the summary; with
    ``tensorboard`` a directory, the Trainer mirrors its logs there (``Trainer(tensorboard=)``).

    A fresh run refuses an ``out`` holding any of the files it writes unless
    ``overwrite=True``; ``resume=True`` continues the run there. Either way the directory
    is locked against other processes for the whole run, and every check comes before the
    first write.
    """
    out = Path(out)
    if resume and overwrite:
        raise ConfigError("overwrite starts a new run and resume continues one; choose one of them")
    _check_out(config, out, resume, overwrite)  # every rank, before any rank can write
    parts = build(config)
    trainer = Trainer(parts.model, parts.optimizer, parts.loss_fn, parts.train_data,
                      batch_size=config.train.batch_size, epochs=config.train.epochs, scheduler=parts.scheduler,
                      eval_data=parts.test_data, callbacks=callbacks, seed=config.seed,
                      device=config.train.device, out=out, checkpoint_every=config.train.checkpoint_every,
                      resume=resume, progress=progress, overwrite=overwrite, tensorboard=tensorboard)
    with rundir.locked(out) if trainer.writer else contextlib.nullcontext():
        if trainer.writer:
            _check_out(config, out, resume, overwrite)  # again: another run may have finished meanwhile
        trainer.prepare(resume)
        if trainer.writer:
            checkpoint.write_text(config.to_toml(), out / "config.toml")
        return trainer.fit()


def _check_out(config: RunConfig, out: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        rundir.check_directory(out)
        if out.is_dir():
            rundir.check_run_files(out)  # each a regular file before any is read (a named pipe would block)
        _resumable(config, out)
    else:
        rundir.check_fresh(out, rundir.RUN_FILES, overwrite)


def saved_config(out: str | Path) -> RunConfig:
    """The resolved configuration a run directory was trained with."""
    rundir.check_directory(out)
    path = Path(out) / "config.toml"
    if not path.exists():
        raise ConfigError(f"cannot resume: {str(out)!r} holds no config.toml (is it a trainlab run directory?)")
    return config_mod.load(path)


def _resumable(config: RunConfig, out: Path) -> None:
    before, now = _flat(saved_config(out).to_dict()), _flat(config.to_dict())
    for key in before:
        if key not in RESUMABLE and before[key] != now[key]:
            raise ConfigError(f"cannot resume {str(out)!r} with {key} = {now[key]!r}: the run was trained with"
                              f" {before[key]!r}, and only {', '.join(RESUMABLE)} may change on resume")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in d.items():
        flat.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return flat
