"""The run configuration of ``trainlab train``: a TOML file whose every key is optional.

```toml
seed = 0
[data]
name = "digits"          # a bundled data set, or a path to .npz / .csv
test_fraction = 0.2
[model]
name = "mlp"             # mlp | small_cnn
hidden = [32]
activation = "relu"      # relu | tanh | sigmoid | identity
batch_norm = false
[optimizer]
name = "adam"            # sgd | adagrad | rmsprop | adam  (trainlab.optim)
lr = 0.001
weight_decay = 0.0
momentum = 0.0           # sgd only, as nesterov
nesterov = false
alpha = 0.9              # rmsprop only, as init
init = "first_grad"      # or "zero"
betas = [0.9, 0.999]     # adam only, as decoupled (true: AdamW)
decoupled = false
[schedule]
name = "constant"        # constant | step_decay | exponential_decay | linear_warmup
                         # | warmup_cosine | warmup_inverse_sqrt  (trainlab.optim.schedules)
warmup_steps = 0         # the keys each schedule takes; steps count updates
total_steps = 0          # 0: the run's number of updates
min_lr = 0.0
step_size = 0
gamma = 0.1
decay_steps = 1
d_model = 0              # 0: normalised to peak at optimizer.lr
[train]
batch_size = 32          # or "full"
epochs = 30
loss = "cross_entropy"   # or "mse"
checkpoint_every = 1     # epochs
device = "auto"          # auto | cpu | cuda | cuda:N | mps
```

A key that does not apply to the optimizer or schedule named (``optimizer.betas`` with
``sgd``) must keep its default. Command-line overrides ``section.key=value`` are parsed as TOML values (``train.epochs=5``,
``model.hidden=[64,64]``), falling back to a plain string (``data.name=wine``). Every
problem is a :class:`~trainlab.errors.ConfigError` naming the key, the value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from trainlab import _toml
from trainlab.errors import ConfigError
from trainlab.nn.models import ACTIVATIONS
from trainlab.optim import schedules

MODELS = ("mlp", "small_cnn")
#: Each optimizer's keys besides name and lr.
OPTIMIZER_KEYS = {
    "sgd": ("weight_decay", "momentum", "nesterov"),
    "adagrad": ("weight_decay",),
    "rmsprop": ("weight_decay", "alpha", "init"),
    "adam": ("weight_decay", "betas", "decoupled"),
}
OPTIMIZERS = tuple(OPTIMIZER_KEYS)
SCHEDULES = tuple(schedules.SCHEDULES)
LOSSES = ("cross_entropy", "mse")


@dataclass
class DataConfig:
    name: str = "digits"
    test_fraction: float = 0.2


@dataclass
class ModelConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [32])
    activation: str = "relu"
    batch_norm: bool = False


@dataclass
class OptimizerConfig:
    name: str = "adam"
    lr: float = 0.001
    weight_decay: float = 0.0
    momentum: float = 0.0
    nesterov: bool = False
    alpha: float = 0.9
    init: str = "first_grad"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    decoupled: bool = False


@dataclass
class ScheduleConfig:
    name: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 0
    min_lr: float = 0.0
    step_size: int = 0
    gamma: float = 0.1
    decay_steps: int = 1
    d_model: int = 0


@dataclass
class TrainConfig:
    batch_size: int | str = 32
    epochs: int = 30
    loss: str = "cross_entropy"
    checkpoint_every: int = 1
    device: str = "auto"


@dataclass
class RunConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return _toml.dumps(self.to_dict())


def load(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """The configuration in ``path`` (defaults when ``None``), with ``overrides`` applied,
    checked by :func:`validate`."""
    raw = read_toml(path) if path is not None else {}
    for text in overrides:
        keys, value = parse_override(text)
        table = raw
        for key in keys[:-1]:
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {text!r}: {key!r} is a value, not a table")
        table[keys[-1]] = value
    config = from_dict(raw)
    validate(config)
    return config


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({e})") from None
    try:
        return _toml.loads(text)
    except _toml.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=5"`` → ``(["train", "epochs"], 5)``."""
    key, sep, value = text.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(k.strip() for k in keys):
        raise ConfigError(f"--set {text!r} is not of the form section.key=value (or key=value at the top level)")
    try:
        parsed = _toml.loads(f"v = {value.strip()}")["v"]
    except _toml.TOMLDecodeError:
        parsed = value.strip()
    return [k.strip() for k in keys], parsed


def from_dict(raw: dict[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from nested dicts; unknown keys and wrong types are refused."""
    return _build(RunConfig, raw, prefix="")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown key {name!r}; allowed keys in {where}: {', '.join(fields)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, prefix=f"{name}.")
        elif _accepts(hint, value):
            values[key] = _float(hint, value)
        else:
            raise ConfigError(f"{name} = {value!r} is not allowed; expected {_describe(hint)}")
    return cls(**values)


def _float(hint: Any, value: Any) -> Any:
    """Integers given where numbers are expected become floats (TOML ``1`` for ``1.0``)."""
    if hint is float:
        return float(value)
    if typing.get_origin(hint) is list and typing.get_args(hint)[0] is float:
        return [float(v) for v in value]
    return value


def _accepts(hint: Any, value: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if origin is list:
        return isinstance(value, list) and all(_accepts(typing.get_args(hint)[0], v) for v in value)
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('an ').removeprefix('a ')}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[hint]


def validate(config: RunConfig) -> None:
    """Range and name checks that types alone do not express."""
    _one_of("model.name", config.model.name, MODELS)
    _one_of("model.activation", config.model.activation, tuple(ACTIVATIONS))
    _one_of("optimizer.name", config.optimizer.name, OPTIMIZERS)
    _one_of("schedule.name", config.schedule.name, SCHEDULES)
    _one_of("train.loss", config.train.loss, LOSSES)
    _check("seed", config.seed, config.seed >= 0, "an integer >= 0")
    _check("data.test_fraction", config.data.test_fraction, 0 <= config.data.test_fraction < 1, "a number in [0, 1)")
    _check("model.hidden", config.model.hidden, all(h >= 1 for h in config.model.hidden),
           "a list of positive integers")
    opt = config.optimizer
    _check("optimizer.lr", opt.lr, math.isfinite(opt.lr) and opt.lr > 0, "a number > 0")
    _check("optimizer.momentum", opt.momentum, 0 <= opt.momentum < 1, "a number in [0, 1)")
    _check("optimizer.weight_decay", opt.weight_decay, math.isfinite(opt.weight_decay) and opt.weight_decay >= 0,
           "a number >= 0")
    _check("optimizer.betas", opt.betas, len(opt.betas) == 2, "a pair [beta1, beta2]")
    _only_where_it_applies("optimizer", opt, ("name", "lr", *OPTIMIZER_KEYS[opt.name]))
    _only_where_it_applies("schedule", config.schedule, ("name", *schedules.parameters(config.schedule.name)))
    train = config.train
    _check("train.batch_size", train.batch_size,
           train.batch_size == "full" if isinstance(train.batch_size, str) else train.batch_size >= 1,
           'an integer >= 1 or "full"')
    _check("train.epochs", train.epochs, train.epochs >= 1, "an integer >= 1")
    _check("train.checkpoint_every", train.checkpoint_every, train.checkpoint_every >= 1, "an integer >= 1")


def _only_where_it_applies(section: str, table: Any, applies: tuple[str, ...]) -> None:
    """Refuse a non-default value for a key that the named optimizer/schedule does not take."""
    default = type(table)()
    for f in dataclasses.fields(table):
        value = getattr(table, f.name)
        if f.name not in applies and value != getattr(default, f.name):
            raise ConfigError(f"{section}.{f.name} = {value!r} does not apply to {section}.name = {table.name!r},"
                              f" which takes: {', '.join(k for k in applies if k != 'name')}")


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} = {value!r} is not allowed; use one of: {', '.join(allowed)}")


def _check(key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed; expected {allowed}")
