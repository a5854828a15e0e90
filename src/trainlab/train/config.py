"""The run configuration of ``trainlab train``: a TOML file whose every key is optional.

```toml
seed = 0
[data]
name = "digits"          # a bundled data set, or a path to .npz / .csv
test_fraction = 0.2      # [0, 1): 0 trains on everything, with no test split
num_classes = 0          # 0: infer from the labels (0…C−1, every class present)
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
``sgd``) must keep its default. Command-line overrides ``section.key=value`` are parsed as
TOML values (``train.epochs=5``, ``model.hidden=[64,64]``), falling back to a plain string
(``data.name=wine``). Every problem is a :class:`~trainlab.errors.ConfigError`, one
sentence naming the key, the value and what is allowed.

Every number has a finite range (:data:`BOUNDS`), so a typo fails here, in one sentence,
instead of deep inside PyTorch. The limits, and why:

- ``seed`` in ``[0, 2**63 − 1]``: TOML integers are int64, torch's generators take at most
  ``2**64 − 1`` and NumPy's ``default_rng`` any integer ``>= 0``; the intersection, which
  also survives ``config.toml`` being read back by any TOML parser.
- ``optimizer.lr`` in ``(0, 1000]``, ``optimizer.weight_decay`` and ``schedule.min_lr`` in
  ``[0, 1000]``: each update scales a parameter by ``1 − lr·λ`` or adds ``lr·g``; with both
  at most 1000 every such factor (``<= 10⁶``) is far inside float32 (``3.4·10³⁸``), where
  PyTorch holds them, while useful values are ``10⁻⁵…10`` and ``0…1``. ``1e300`` is a typo.
- ``momentum``, ``alpha``, each of ``betas`` in ``[0, 1)``: moving-average weights; at 1
  the average never takes in a new gradient (Adam's bias correction divides by ``1 − β^t = 0``).
  ``schedule.gamma`` in ``(0, 1]``: a decay factor.
- step counts (``warmup_steps``, ``total_steps``, ``step_size``, ``decay_steps``) at most
  ``10¹²``, a million updates a second for eleven days; ``train.epochs`` and
  ``train.checkpoint_every`` at most ``10⁶``; ``train.batch_size`` at most ``2**31 − 1``
  (larger than any data set; a batch beyond the data set is the whole set anyway).
- ``model.hidden``: 0 (a linear model) to 64 layers of width 1 to 65,536; one 65,536 × 65,536 layer is
  already 4.3·10⁹ parameters. ``schedule.d_model`` at most 65,536 likewise.
- ``data.num_classes``: 0 (infer) or 2 to 1,000,000 (:data:`trainlab.data.datasets.MAX_CLASSES`).
- ``train.device``: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``; whether that device
  exists is the Trainer's question.
- Strings must be UTF-8 text (no lone surrogates from undecodable command-line bytes), so
  the resolved ``config.toml`` can be written; ``data.name`` must not be empty.
"""

from __future__ import annotations

import codecs
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from trainlab import _toml
from trainlab.data.datasets import MAX_CLASSES
from trainlab.data.split import MAX_SEED
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
    num_classes: int = 0


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
        """The configuration as plain nested dicts (``dataclasses.asdict``).

        Parameters: none. Returns: ``{"seed": int, "data": {...}, "model": {...}, "optimizer": {...},
        "schedule": {...}, "train": {...}}``, each section with every key of its dataclass.
        """
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The configuration as TOML text (``seed`` first, then one table per section), as in ``config.toml``.

        Parameters: none. Returns: a ``str`` that :func:`trainlab._toml.loads` reads back to
        :meth:`to_dict`; a string that is not UTF-8 text raises ``ValueError``.
        """
        return _toml.dumps(self.to_dict())


@dataclass(frozen=True)
class Bound:
    """The allowed range of a number: ``low ≤ v ≤ high``, either end open when marked."""
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    also: str = ""  # a word allowed besides the numbers, as TOML

    def __contains__(self, value: Any) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return bool(above and below)  # False for NaN: every comparison with it is

    def describe(self, integer: bool, plural: bool = False) -> str:
        """``"an integer >= 1 and <= 10"``, ``"a number in [0, 1)"``; ``"integers …"`` when ``plural``."""
        low, high = _number(self.low), _number(self.high)
        noun = ("integers" if plural else "an integer") if integer else ("numbers" if plural else "a number")
        if integer:
            text = f"{noun} >= {low} and <= {high}"
        elif self.low_open:
            text = f"{noun} > {low} and {'<' if self.high_open else '<='} {high}"
        else:
            text = f"{noun} in [{low}, {high}{')' if self.high_open else ']'}"
        return f"{text} or {self.also}" if self.also else text


MAX_STEPS = 10**12
MAX_EPOCHS = 10**6
MAX_WIDTH = 2**16
MAX_DEPTH = 64
#: The range of every numeric key (of each element, for a list); see the module docstring.
BOUNDS: dict[str, Bound] = {
    "seed": Bound(0, MAX_SEED),
    "data.test_fraction": Bound(0, 1, high_open=True),
    "model.hidden": Bound(1, MAX_WIDTH),
    "optimizer.lr": Bound(0, 1000, low_open=True),
    "optimizer.weight_decay": Bound(0, 1000),
    "optimizer.momentum": Bound(0, 1, high_open=True),
    "optimizer.alpha": Bound(0, 1, high_open=True),
    "optimizer.betas": Bound(0, 1, high_open=True),
    "schedule.warmup_steps": Bound(0, MAX_STEPS),
    "schedule.total_steps": Bound(0, MAX_STEPS),
    "schedule.min_lr": Bound(0, 1000),
    "schedule.step_size": Bound(0, MAX_STEPS),
    "schedule.gamma": Bound(0, 1, low_open=True),
    "schedule.decay_steps": Bound(1, MAX_STEPS),
    "schedule.d_model": Bound(0, MAX_WIDTH),
    "train.batch_size": Bound(1, 2**31 - 1, also='"full"'),
    "train.epochs": Bound(1, MAX_EPOCHS),
    "train.checkpoint_every": Bound(1, MAX_EPOCHS),
}
DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,4})?")


def load(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """The configuration in ``path`` (defaults when ``None``), with ``overrides`` applied,
    checked by :func:`validate`."""
    raw = read_toml(path) if path is not None else {}
    for text in overrides:
        keys, value = parse_override(text)
        table = raw
        for depth, key in enumerate(keys[:-1]):
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                above = ".".join(keys[:depth + 1])
                raise ConfigError(f"--set {text!r}: {above} = {_show(table)} is a value, not a table")
        table[keys[-1]] = value
    config = from_dict(raw)
    validate(config)
    return config


def read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML file at ``path`` as nested dicts. A missing file, a directory, text that is
    not UTF-8 (a byte-order mark is ignored) or not TOML is a ConfigError; other OS errors
    (permission denied) are left to the caller as the environment's."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a directory; expected a TOML file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = bom + e.start
        line = data.count(b"\n", 0, at) + 1
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte 0x{data[at]:02x} on line {line},"
                          f" offset {at}), so it is not valid TOML") from None
    try:
        return _toml.loads(text)
    except _toml.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML for trainlab: its values nest too deeply")
    except ValueError:  # Python's limit on the digits of an integer (4300), which no setting comes near
        raise ConfigError(f"config file {str(path)!r} is not valid TOML for trainlab: it holds an integer of"
                          f" thousands of digits") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=5"`` → ``(["train", "epochs"], 5)``."""
    key, sep, value = text.partition("=")
    keys = [k.strip() for k in key.split(".")]
    if not sep or not all(keys):
        raise ConfigError(f"--set {text!r} is not of the form section.key=value (or key=value at the top level)")
    try:
        parsed = _toml.loads(f"v = {value.strip()}")["v"]
    except (_toml.TOMLDecodeError, RecursionError):
        parsed = value.strip()
    return keys, parsed


def from_dict(raw: dict[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from nested dicts; unknown keys and wrong types are refused."""
    return _build(RunConfig, raw, prefix="")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table, got {_show(raw)}")
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
            values[key] = _float(name, hint, value)
        else:
            raise ConfigError(f"{name} = {_show(value)} is not allowed; expected {_describe(hint)}")
    return cls(**values)


def _float(name: str, hint: Any, value: Any) -> Any:
    """Integers given where numbers are expected become floats (TOML ``1`` for ``1.0``)."""
    if hint is float:
        return _as_float(name, value, value)
    if typing.get_origin(hint) is list and typing.get_args(hint)[0] is float:
        return [_as_float(name, v, value) for v in value]
    return value


def _as_float(name: str, v: Any, value: Any) -> float:
    try:
        return float(v)
    except OverflowError:  # an integer of 309 digits or more
        allowed = BOUNDS[name].describe(integer=False, plural=isinstance(value, list)) if name in BOUNDS else "a number"
        raise ConfigError(f"{name} = {_show(value)} is not allowed; expected {'a list of ' * isinstance(value, list)}"
                          f"{allowed}") from None


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
    """Types (for a :class:`RunConfig` built in Python), names, ranges (:data:`BOUNDS`) and
    the keys that apply to the optimizer and schedule named."""
    _check_types(config, prefix="")
    _one_of("model.name", config.model.name, MODELS)
    _one_of("model.activation", config.model.activation, tuple(ACTIVATIONS))
    _one_of("optimizer.name", config.optimizer.name, OPTIMIZERS)
    _one_of("schedule.name", config.schedule.name, SCHEDULES)
    _one_of("train.loss", config.train.loss, LOSSES)
    for key, bound in BOUNDS.items():
        _check_bound(key, _get(config, key), bound)
    _check("data.name", config.data.name, config.data.name.strip() != "", "a bundled data set's name or a file path")
    _check("data.num_classes", config.data.num_classes,
           config.data.num_classes == 0 or 2 <= config.data.num_classes <= MAX_CLASSES,
           f"0 (infer from the labels) or an integer >= 2 and <= {MAX_CLASSES}")
    _check("model.hidden", config.model.hidden, len(config.model.hidden) <= MAX_DEPTH,
           f"a list of at most {MAX_DEPTH} layer widths")
    _check("optimizer.betas", config.optimizer.betas, len(config.optimizer.betas) == 2, "a pair [beta1, beta2]")
    batch_size = config.train.batch_size
    _check("train.batch_size", batch_size, not isinstance(batch_size, str) or batch_size == "full",
           BOUNDS["train.batch_size"].describe(integer=True))
    _check("train.device", config.train.device, DEVICE.fullmatch(config.train.device) is not None,
           "auto, cpu, mps, cuda or cuda:N")
    opt = config.optimizer
    _only_where_it_applies("optimizer", opt, ("name", "lr", *OPTIMIZER_KEYS[opt.name]))
    _only_where_it_applies("schedule", config.schedule, ("name", *schedules.parameters(config.schedule.name)))


def _check_types(table: Any, prefix: str) -> None:
    """The same type rules as reading a file, and strings that UTF-8 can encode (a lone
    surrogate from undecodable command-line bytes could not be written to config.toml)."""
    hints = typing.get_type_hints(type(table))
    for f in dataclasses.fields(table):
        name, value, hint = f"{prefix}{f.name}", getattr(table, f.name), hints[f.name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise ConfigError(f"{name} must be a table, got {_show(value)}")
            _check_types(value, prefix=f"{name}.")
            continue
        if not _accepts(hint, value):
            raise ConfigError(f"{name} = {_show(value)} is not allowed; expected {_describe(hint)}")
        if isinstance(value, str) and not _toml._is_utf8(value):
            raise ConfigError(f"{name} = {_show(value)} is not allowed; expected UTF-8 text")


def _get(config: RunConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _check_bound(key: str, value: Any, bound: Bound) -> None:
    """Every element of a list, or the value itself; a string (``batch_size = "full"``) is checked elsewhere."""
    if isinstance(value, str):
        return
    integer = all(isinstance(v, int) for v in (value if isinstance(value, list) else [value]))
    if isinstance(value, list):
        _check(key, value, all(v in bound for v in value), f"a list of {bound.describe(integer, plural=True)}")
    else:
        _check(key, value, value in bound, bound.describe(integer))


def _only_where_it_applies(section: str, table: Any, applies: tuple[str, ...]) -> None:
    """Refuse a non-default value for a key that the named optimizer/schedule does not take."""
    default = type(table)()
    for f in dataclasses.fields(table):
        value = getattr(table, f.name)
        if f.name not in applies and value != getattr(default, f.name):
            raise ConfigError(f"{section}.{f.name} = {_show(value)} does not apply to {section}.name = {table.name!r},"
                              f" which takes: {', '.join(k for k in applies if k != 'name')}")


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key} = {_show(value)} is not allowed; use one of: {', '.join(allowed)}")


def _check(key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {_show(value)} is not allowed; expected {allowed}")


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters so that a message stays one line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _number(v: float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"
