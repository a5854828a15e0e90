"""The :class:`Monitor`: named instruments read every few updates on a fixed sample.

At the first update (a baseline) and then every ``every`` updates of an instrument the
Monitor builds a :class:`Context` — the model, the loss, a fixed bounded sample of the training
data (its first ``sample`` samples, drawn once), the optimizer, the update count — and calls the instrument's ``read(ctx)`` inside
:func:`trainlab.curvature.analysis_mode`, so a reading leaves no trace: parameters, buffers
(BatchNorm statistics), flags, ``.grad`` and the global random states are as before. Each
reading becomes a :class:`Reading` (step, instrument, value, seconds, extra fields).

An instrument is any object with ``name``, ``every`` and ``read(ctx) -> {"value": float, ...}``
(optionally ``needs_previous``, ``runs_model``, ``guarded``, ``state_dict``, ``load_state_dict`` and
``reset``); :class:`Instrument` is the base class with those defaults. The periods are fixed when the Monitor
is built: between readings an update costs the Monitor one modulo. A reading that raises does not stop training: it is
recorded with value NaN and an ``"error"`` field, and warned about once per instrument. So is a
reading JSON cannot hold (its line in ``instruments.jsonl`` must be strict JSON): its ``value`` must
be a real number (NaN and ±inf allowed, written as ``null``), its other fields numbers, strings,
booleans, ``None``, lists and dicts of them; tensors and NumPy arrays or scalars are converted (one
element to a number, more to a list), anything else (a complex, a set, bytes, an object, a key
that is not a string or number, an integer beyond a float's range) is named in the error.

A Monitor follows one model. Given another model object it starts afresh — update count,
``latest``, ``history``, the kept parameters and each instrument's state (``reset()``, e.g. a
warm-start vector) — with a one-line warning; the same model object whose parameters changed
(names, shapes, dtypes or which require a gradient) keeps its count and readings but drops the
kept parameters and the instruments' states, also with a warning. Update counts given to
:meth:`Monitor.after_step` are integers ``>= 1`` that grow from call to call (:meth:`Monitor.start`
sets the count, e.g. on resuming).

Under ``torch.distributed`` (a process group of several ranks is initialised) each rank's
sample is the first ``sample`` samples of its own share of the data, and every instrument sums
over the ranks (gradients, moments, stuck units, Hessian products): all ranks read the same
values, those of one process on the union of the ranks' samples (``tests/test_distributed.py``).

Use it as a :class:`~trainlab.train.Trainer` callback (``callbacks=[Monitor()]``, readings
written to ``RUN/instruments.jsonl``) or in a plain loop::

    monitor = Monitor(every=10, sample=256, instruments="economy")
    for x, y in loader:
        loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
        for reading in monitor.after_step(model, loss, loss_fn, train_data, opt):
            print(reading)
"""

from __future__ import annotations

import collections
import math
import operator
import os
import time
import weakref
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from trainlab.curvature import analysis_mode
from trainlab.data.batches import BatchLoss, batch_size_of, concat, first_samples, to_device
from trainlab.errors import ConfigError, DataError
from trainlab.instruments.spike import SPAN as SPIKE_SPAN
from trainlab.instruments.spike import jumped as loss_jumped
from trainlab.instruments.spike import within as loss_within
from trainlab.state import preserved

MODES = ("eval", "train")
#: A failed reading's error message is cut to this many characters (one line).
MESSAGE_CHARS = 300
#: Instruments shown on a progress bar, with their short label.
SHORT = {"sharpness": "λ", "stability": "η·λ", "grad_norm": "‖g‖", "noise_scale": "B", "units": "units"}


@dataclass
class Context:
    """What an instrument reads: built by the :class:`Monitor` for each reading.

    ``batch`` is the fixed bounded sample (an ``(x, y)`` pair, or any batch ``batch_loss``
    reads); ``step`` the updates done; ``lr`` the first parameter group's learning rate;
    ``batch_size`` the samples per training update (over all ranks under ``torch.distributed``);
    ``previous`` the parameters (by name) just before the last update, or ``None`` when unknown.
    """

    model: nn.Module
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    batch: Any
    batch_loss: BatchLoss | None = None
    optimizer: torch.optim.Optimizer | None = None
    step: int = 0
    lr: float | None = None
    batch_size: int | None = None
    mode: str = "eval"
    seed: int = 0
    previous: dict[str, torch.Tensor] | None = None

    def loss(self) -> torch.Tensor:
        """The mean loss on the sample, ``loss_fn(model(x), y)`` or ``batch_loss(model, batch)``."""
        if self.batch_loss is not None:
            return self.batch_loss(self.model, self.batch)
        x, y = self.batch
        return self.loss_fn(self.model(x), y)

    def parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` of every parameter that requires a gradient."""
        return [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]

    def before_update(self, who: str) -> tuple[list[tuple[str, nn.Parameter]], list[torch.Tensor]]:
        """The trainable ``(name, parameter)`` pairs and their values just before the last update (``previous``,
        on each parameter's device and dtype), for instrument ``who``; a ``ValueError`` when
        ``previous`` is unknown, a ``KeyError`` naming a parameter it lacks."""
        if self.previous is None:
            raise ValueError(f"{who} needs the parameters before the last update (ctx.previous)")
        named = self.parameters()
        missing = [name for name, _ in named if name not in self.previous]
        if missing:
            raise KeyError(f"no earlier value of parameter {missing[0]!r}")
        return named, [self.previous[name].to(p.device, p.dtype) for name, p in named]


@dataclass
class Reading:
    """One instrument's reading at update ``step``; ``extra`` holds its further fields."""

    step: int
    instrument: str
    value: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The line written to ``instruments.jsonl``."""
        return {"step": self.step, "instrument": self.instrument, "value": self.value, "seconds": self.seconds,
                **self.extra}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Reading":
        """A reading from its ``instruments.jsonl`` line (the inverse of :meth:`to_dict`)."""
        record = dict(record)
        value = record.pop("value")
        return cls(int(record.pop("step")), str(record.pop("instrument")), math.nan if value is None else float(value),
                   float(record.pop("seconds")), record)


class Instrument:
    """Base class: an instrument named ``name``, read every ``every`` updates (``None``: the
    Monitor's ``every``). ``needs_previous``: it reads ``ctx.previous``. ``runs_model = False``:
    it reads parameters only, and ``guarded = True``: it runs the model inside its own
    :func:`~trainlab.curvature.analysis_mode` — either way the Monitor adds no guard of its own."""

    name = "instrument"
    needs_previous = False
    runs_model = True
    guarded = False

    def __init__(self, every: int | None = None):
        if every is not None:
            _check_int(f"{type(self).__name__}: every", every)
        self.every = every

    def read(self, ctx: Context) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """What the instrument keeps between readings (e.g. a warm-start vector); none here."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` saved."""

    def reset(self) -> None:
        """Forget what was kept from earlier readings (the Monitor calls it when the model changes); none here."""


def _economy(every: int) -> list[Any]:
    """update_ratio every 10 × ``every`` updates, grad_norm every 50×, units every 100×, sharpness,
    stability and noise_scale every 400×."""
    from trainlab.instruments.gradients import GradNorm, UpdateRatio
    from trainlab.instruments.noise import NoiseScale
    from trainlab.instruments.sharpness import Sharpness, Stability
    from trainlab.instruments.units import Units

    return [GradNorm(every=50 * every), UpdateRatio(every=10 * every), Units(every=100 * every),
            Sharpness(every=400 * every), Stability(every=400 * every), NoiseScale(every=400 * every)]


def _full(every: int) -> list[Any]:
    """Every instrument: update_ratio every ``every`` updates, grad_norm every 5×, units every 10×,
    sharpness and stability every 30×, noise_scale and gsnr every 50×, the trace every 200×."""
    from trainlab.instruments.gradients import GradNorm, UpdateRatio
    from trainlab.instruments.noise import GSNR, NoiseScale
    from trainlab.instruments.sharpness import HessianTrace, Sharpness, Stability
    from trainlab.instruments.units import Units

    return [GradNorm(every=5 * every), UpdateRatio(every=every), Units(every=10 * every),
            Sharpness(every=30 * every), Stability(every=30 * every), NoiseScale(every=50 * every),
            GSNR(every=50 * every), HessianTrace(every=200 * every)]


#: Preset name → ``(every) -> instruments``, each read at the first update and then on its period.
#: With the default ``every=10`` and ``sample=256``:
#: economy reads update_ratio every 100 updates, grad_norm every 500, units every 1,000, sharpness,
#: stability and noise_scale every 4,000; full reads update_ratio every 10, grad_norm
#: every 50, units every 100, sharpness and stability every 300, noise_scale and gsnr every 500,
#: the trace every 2,000. Why so rarely: a reading works on the whole sample, 8× a batch of 32,
#: and costs (in training updates of the digits MLP and small CNN, benchmarks/monitor_overhead.py)
#: update_ratio 0.2–0.6 (about twice that with keeping the parameters, between cheap updates),
#: grad_norm 4–5, units 3, a warm sharpness 20–23 (a cold first one with its memory probe 52–80),
#: noise_scale 12–43, trace 69–126; these periods keep economy under 1.1× the training time and
#: full under 1.5× (measured over 4,000 updates, the first readings' one-time costs included).
PRESETS: dict[str, Callable[[int], list[Any]]] = {"economy": _economy, "full": _full}


def instrument_classes() -> dict[str, type]:
    """Every instrument of :mod:`trainlab.instruments` by its reading's name."""
    from trainlab.instruments.alpha import Alpha
    from trainlab.instruments.gradients import GradNorm, UpdateRatio
    from trainlab.instruments.noise import GSNR, NoiseScale
    from trainlab.instruments.sharpness import HessianTrace, Sharpness, Stability
    from trainlab.instruments.units import Units

    return {cls.name: cls for cls in (GradNorm, UpdateRatio, Units, Sharpness, Stability, NoiseScale, GSNR,
                                      HessianTrace, Alpha)}


def by_name(name: str) -> Any:
    """A fresh instrument named ``name`` (``"sharpness"``, ``"noise_scale"``, …) with its defaults:
    read every ``Monitor.every`` updates. An unknown name is a :class:`ConfigError` listing them."""
    classes = instrument_classes()
    if name not in classes:
        raise ConfigError(f"Monitor: {name!r} is not an instrument; the instruments are {', '.join(sorted(classes))}"
                          " (or pass instrument objects, e.g. Sharpness(every=100))")
    return classes[name](every=None)


def preset(name: str, every: int = 10) -> list[Any]:
    """The instruments of preset ``name`` (a key of :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ConfigError(f"instruments={name!r} is not a preset; use one of {', '.join(PRESETS)} or a list of"
                          " instruments")
    return PRESETS[name](every)


class Monitor:
    """Read ``instruments`` every few updates on the first ``sample`` samples of the training data.

    When: every instrument is read at update 1 — a baseline, so that even a short run, or a
    spike early on, has a reading to compare with — and then at every multiple of its period
    (update counts ``1, p, 2p, 3p, …``; a resumed run keeps the count, so it reads where an
    uninterrupted one would). Sharpness and stability (``on_spike``) are also read at once when
    the loss jumps far above its last 20 values (:mod:`trainlab.instruments.spike`): the curvature
    behind a spike is read at the spike, not thousands of updates later. The presets' periods in updates, with the default ``every=10``
    (they scale with ``every``):

    =========  ============  =========  =====  =====================  ===========  ====  =====
    preset     update_ratio  grad_norm  units  sharpness, stability   noise_scale  gsnr  trace
    =========  ============  =========  =====  =====================  ===========  ====  =====
    economy    100           500        1,000  4,000                  4,000        –     –
    full       10            50         100    300                    500          500   2,000
    =========  ============  =========  =====  =====================  ===========  ====  =====

    So ``Monitor()`` on a 600-update run reads sharpness and stability once, at update 1;
    ``Monitor(instruments="full")`` at updates 1, 300 and 600.

    Parameters:
        every: the base period in updates: an instrument with ``every=None`` is read every
            ``every`` updates, and the presets scale with it (:data:`PRESETS`).
        sample: samples in the fixed bounded sample (the first ones of the training data).
        instruments: ``"economy"``, ``"full"`` or a list of instruments (distinct names) — objects
            such as ``Sharpness(every=100)``, or names such as ``"sharpness"`` (read every
            ``every`` updates; :func:`instrument_classes` lists them).
        seed: passed to instruments that draw random vectors (``ctx.seed``).
        mode: ``"eval"`` (default: BatchNorm running statistics, no dropout) or ``"train"``.
        batch_loss: ``(model, batch) -> mean loss`` for batches that are not ``(x, y)`` pairs.
        progress: show short readings on the Trainer's progress bar.
        tensorboard: a directory for TensorBoard event files (extra ``trainlab[tensorboard]``):
            each reading also becomes a scalar ``trainlab/<instrument>`` at its update
            (:class:`trainlab.integrations.tensorboard.TensorBoardLogger`, opened at the first
            update; a Monitor resumed from a state at update ``S`` hides what an interrupted
            run wrote after ``S``). For plain loops; a Trainer mirrors its readings itself
            with ``Trainer(tensorboard=DIR)``. :meth:`close` (or the Trainer's end) flushes it.

    ``latest`` holds the last reading of each instrument, ``history`` every reading of this
    process. ``state_dict()`` (the update count, the parameters kept for ``update_ratio``,
    each instrument's state, ``latest``) goes into the Trainer's checkpoints, so a resumed run
    reads exactly what an uninterrupted one would.
    """

    def __init__(self, every: int = 10, sample: int = 256, instruments: str | list[Any] = "economy",
                 seed: int = 0, mode: str = "eval", batch_loss: BatchLoss | None = None, progress: bool = True,
                 tensorboard: str | os.PathLike[str] | None = None):
        _check_int("Monitor: every", every)
        _check_int("Monitor: sample", sample)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"Monitor: seed={seed!r} is not allowed; it must be an integer")
        if mode not in MODES:
            raise ConfigError(f"Monitor: mode={mode!r} is not allowed; use 'eval' or 'train'")
        if batch_loss is not None and not callable(batch_loss):
            raise ConfigError(f"Monitor: batch_loss={batch_loss!r} is not callable; pass (model, batch) -> mean loss")
        if tensorboard is not None:
            from trainlab.integrations import tensorboard_dir

            tensorboard = tensorboard_dir(tensorboard, "Monitor")
        if isinstance(instruments, str):
            instruments = preset(instruments, every)
        elif not isinstance(instruments, (list, tuple)) or not instruments:
            raise ConfigError(f"Monitor: instruments={instruments!r} is not allowed; use 'economy', 'full' or a"
                              " non-empty list of instruments")
        else:
            instruments = [by_name(inst) if isinstance(inst, str) else inst for inst in instruments]
        for inst in instruments:
            if not (isinstance(getattr(inst, "name", None), str) and callable(getattr(inst, "read", None))):
                raise ConfigError(f"Monitor: {inst!r} is not an instrument; it needs a name and read(ctx)")
            if getattr(inst, "every", None) is not None:
                _check_int(f"Monitor: instrument {inst.name!r} every", inst.every)
        names = [inst.name for inst in instruments]
        if len(set(names)) < len(names):
            raise ConfigError(f"Monitor: instruments {names} repeat a name; each instrument may appear once")
        self.every, self.sample, self.seed, self.mode = every, sample, seed, mode
        self.batch_loss, self.progress = batch_loss, bool(progress)
        self.instruments = list(instruments)
        self.step = 0  # updates seen
        self.latest: dict[str, Reading] = {}
        self.history: list[Reading] = []
        self._previous: dict[str, torch.Tensor] | None = None  # parameters before the coming update
        self._source: Any = None  # the data the cached sample was drawn from
        self._sample: Any = None
        self._failed: set[str] = set()  # instruments already warned about
        self._recent: collections.deque[float] = collections.deque(maxlen=SPIKE_SPAN)  # the last losses
        self._model: weakref.ref | None = None  # the model followed (see _follow)
        self._shapes: tuple | None = None  # and its parameters' names, shapes, dtypes and requires_grad
        self.tensorboard, self._board = tensorboard, None  # the directory; its TensorBoardLogger once opened
        # every period divides a multiple of these: updates that are not multiples need no look
        self._base = math.gcd(*(self.period(inst) for inst in self.instruments))
        # instruments read at once when the loss jumps: only then is the loss of every update kept
        self._spiky = any(getattr(inst, "on_spike", False) for inst in self.instruments)
        self._base_previous = math.gcd(*(self.period(inst) for inst in self.instruments
                                         if getattr(inst, "needs_previous", False)))  # 0: none

    def period(self, instrument: Any) -> int:
        """Updates between readings of ``instrument``."""
        return instrument.every if getattr(instrument, "every", None) is not None else self.every

    def _due(self, instrument: Any, step: int) -> bool:
        """Read at the first update (a baseline) and then every ``period`` updates."""
        return step == 1 or step % self.period(instrument) == 0

    # ---------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: Any) -> None:
        """The Trainer's hook before the first step: :meth:`start` with the trainer's model and
        update count. Parameters: ``trainer`` the :class:`~trainlab.train.Trainer` (``step`` and
        ``module`` are read). Returns ``None``."""
        self.start(trainer.module, trainer.step)

    def start(self, model: nn.Module, step: int) -> None:
        """Before training (re)starts at update ``step``: take that count (so a resumed run reads
        at the same updates) and keep the parameters if an instrument due after the coming
        update reads ``previous``. For frameworks' own start hooks (Lightning's ``on_train_start``).
        Returns ``None``. Cost: none (at most a copy of the parameters).
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError(f"Monitor.start: step={step!r} is not allowed; expected an update count >= 0")
        self._follow(model)
        self.step = step
        if self._previous is None:
            self._remember_if_due(model)

    def on_step_end(self, trainer: Any, record: dict[str, Any]) -> None:
        """The Trainer's hook after each update: :meth:`after_step` on the trainer's model, loss,
        training data, optimizer, batch size and update count.

        Parameters: ``trainer`` the :class:`~trainlab.train.Trainer`; ``record`` its step record
        (``record["loss"]`` is used). Returns ``None``; the readings taken (if any) go to
        ``trainer.log_readings`` as :meth:`Reading.to_dict` lines, with :meth:`postfix` when ``progress``.
        Cost: that of the instruments due at this update (see each; curvature instruments take
        Hessian-vector products), nothing otherwise.
        """
        readings = self.after_step(trainer.module, record["loss"], trainer.loss_fn, trainer.train_data,
                                   trainer.optimizer, batch_size=trainer.batch_size, step=trainer.step)
        if readings and hasattr(trainer, "log_readings"):
            trainer.log_readings([r.to_dict() for r in readings], self.postfix() if self.progress else None)

    def after_step(self, model: nn.Module, loss: Any, loss_fn: Any, data: Any,
                   optimizer: torch.optim.Optimizer | None = None, *, batch_size: int | None = None,
                   step: int | None = None) -> list[Reading]:
        """Call after each update; returns the readings taken now (often none).

        ``data`` is the training data (a Dataset, a DataLoader, an ``(x, y)`` pair, or any
        batches with ``batch_loss``); ``step`` the updates done (default: one more than at the
        last call); ``batch_size`` the samples per update, for the noise readings.
        """
        if loss_fn is None and self.batch_loss is None:
            raise ConfigError("Monitor.after_step: loss_fn is None; pass the loss function (outputs, targets) -> mean"
                              " loss, or build the Monitor with batch_loss=(model, batch) -> mean loss")
        if self.counted(model, loss, step):
            return []  # nothing due now, nothing to keep for the next update: the common case
        other = self._model is not None and self._model() is not model
        last = 0 if other else self.step
        count = last + 1 if step is None else _update_count(step, last)
        if self.tensorboard is not None and self._board is None:
            self._open_board()
        if other or self._model is None:
            self._follow(model)
        self.step = count
        jump = self._spiky and self._jumped(loss)
        if not jump and not self._scheduled(self.step):
            return []  # nothing due now, nothing to keep for the next update: the common case
        due = [inst for inst in self.instruments if (self._due(inst, self.step) or (jump and getattr(
               inst, "on_spike", False))) and not (getattr(inst, "needs_previous", False) and self._previous is None)]
        if self._reshaped(model):
            due = [inst for inst in due if not getattr(inst, "needs_previous", False)]  # the kept ones are gone
        readings = []
        if due:
            ctx = Context(model, loss_fn, self._sample_of(model, data), self.batch_loss, optimizer, self.step,
                          float(optimizer.param_groups[0]["lr"]) if optimizer is not None else None,
                          batch_size, self.mode, self.seed, self._previous)
            readings = [self._read(inst, ctx) for inst in due]
        self._previous = None
        self._remember_if_due(model)
        for reading in readings:
            self.latest[reading.instrument] = reading
        self.history.extend(readings)
        if readings and self._board is not None:
            self._board.readings(readings, self.step)
        return readings

    def on_fit_end(self, trainer: Any, summary: dict[str, Any]) -> None:
        """The Trainer's hook after the last update: flush the TensorBoard file, if any."""
        if self._board is not None:
            self._board.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard file, if any (a later reading opens a new one)."""
        if self._board is not None:
            self._board.close()
            self._board = None

    def postfix(self) -> dict[str, str]:
        """Short latest readings for a progress bar, e.g. ``{"λ": "12.3", "η·λ": "0.41"}``."""
        return {SHORT[name]: f"{r.value:.3g}" for name, r in self.latest.items()
                if name in SHORT and math.isfinite(r.value)}

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """For the Trainer's checkpoints: the update count, the parameters kept for ``update_ratio``,
        each instrument's state and ``latest``."""
        return {"step": self.step, "recent": list(self._recent),
                "previous": None if self._previous is None else {k: v.cpu() for k, v in self._previous.items()},
                "instruments": {inst.name: inst.state_dict() for inst in self.instruments
                                if hasattr(inst, "state_dict")},
                "latest": {name: r.to_dict() for name, r in self.latest.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` saved (refusing a state that is not one)."""
        step, previous = state["step"], state["previous"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step {step!r} is not an update count")
        if previous is not None and not all(isinstance(v, torch.Tensor) for v in previous.values()):
            raise TypeError("the kept parameters are not tensors")
        recent = state.get("recent") or []
        if not isinstance(recent, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in recent):
            raise TypeError(f"recent {str(recent)[:60]} is not a list of losses")
        saved = state["instruments"]
        for inst in self.instruments:
            if inst.name in saved and hasattr(inst, "load_state_dict"):
                inst.load_state_dict(saved[inst.name])
        self.step, self._previous = step, None if previous is None else dict(previous)
        self._recent.clear()
        self._recent.extend(float(v) for v in recent)
        self.latest = {name: Reading.from_dict(r) for name, r in state["latest"].items()}

    # ---------------------------------------------------------------- internals
    def _follow(self, model: nn.Module) -> None:
        """Follow ``model`` from now on. Another model object than the one followed so far: start
        afresh (update count, readings, kept parameters and sample, instruments' states), warning once."""
        if self._model is not None and self._model() is not model:
            warnings.warn(f"Monitor: now reading another model ({type(model).__name__}) than before; it starts afresh:"
                          " update count, readings and what its instruments kept of the other model are reset",
                          RuntimeWarning, stacklevel=3)
            self.step, self.latest, self.history = 0, {}, []
            self._failed = set()
            self._recent.clear()
            self._forget()
        self._model, self._shapes = weakref.ref(model), _shapes(model)

    def looks_at(self, count: int) -> bool:
        """Whether update ``count`` — the next one, one above :attr:`step` — may need the parameters it
        leaves: an instrument due, the parameters to keep for the update after, the count not the
        expected one, or no model followed yet. ``False`` means the update is only counted (a loss spike aside,
        which needs its loss). For :func:`trainlab.watch`, which reads a loss-less update before the
        next step only when this is ``True``. Cost: a few operations."""
        return count != self.step + 1 or self._model is None or self._scheduled(count)

    def _scheduled(self, count: int) -> bool:
        """Whether the schedule looks at update ``count``: the baseline (1), a multiple of the periods'
        common divisor, parameters kept from the update before, or parameters to keep for the next."""
        return (count % self._base == 0 or count == 1 or self._previous is not None
                or bool(self._base_previous and (count + 1) % self._base_previous == 0))

    def counted(self, model: nn.Module, loss: Any, step: Any = None) -> bool:
        """Take the update as one that is only counted, if it is — told in a few operations (between
        fast updates each one is measurable): the next count of the model followed (``step`` ``None``
        or that count), no reading due, no parameters to keep for the next one, no TensorBoard file
        to open, and a loss (a float) within the range of the recent ones, so no spike
        (:mod:`trainlab.instruments.spike`). Then the count and the loss are taken and ``True``
        returned; otherwise nothing is touched, and :meth:`after_step` takes the update its general
        way. :meth:`after_step` asks this first; :func:`trainlab.watch` asks it directly, to spare
        the call to :meth:`after_step` at every update."""
        count = self.step + 1
        if self._scheduled(count):
            return False
        if (step is not None and (type(step) is not int or step != count)) or (
                self.tensorboard is not None and self._board is None):
            return False
        followed = self._model
        if followed is None or followed() is not model:
            return False
        if self._spiky:
            if type(loss) is not float or not loss_within(self._recent, loss):  # the general way judges it
                return False
            self._recent.append(loss)
        self.step = count
        return True

    def _jumped(self, loss: Any) -> bool:
        """Keep this update's loss among the last :data:`SPIKE_SPAN`; whether it jumped above them."""
        value = loss if type(loss) is float else float(loss.detach()) if isinstance(loss, torch.Tensor) else (
            float(loss) if isinstance(loss, (int, float)) else math.nan)
        jump = math.isfinite(value) and loss_jumped(self._recent, value)
        self._recent.append(value)
        return jump

    def _reshaped(self, model: nn.Module) -> bool:
        """Whether the followed model's parameters changed since the last look (then what was kept
        of the old ones is dropped, with a warning); checked only when a reading or a copy is due."""
        shapes = _shapes(model)
        if shapes == self._shapes:
            return False
        warnings.warn("Monitor: the model's parameters changed (names, shapes, dtypes or which require a gradient);"
                      " the parameters kept for update_ratio and the instruments' states (warm starts) are dropped",
                      RuntimeWarning, stacklevel=3)
        self._shapes = shapes
        self._forget()
        return True

    def _forget(self) -> None:
        """Drop what belongs to the model: the kept parameters, the sample on its device, instrument states."""
        self._previous, self._source, self._sample = None, None, None
        for inst in self.instruments:
            if callable(getattr(inst, "reset", None)):
                inst.reset()

    def _read(self, inst: Any, ctx: Context) -> Reading:
        started = time.perf_counter()
        try:
            # an instrument that never runs the model (runs_model = False) or guards itself (guarded) needs no
            # guard here, which would cost another snapshot of buffers, gradients and random states
            own = getattr(inst, "runs_model", True) and not getattr(inst, "guarded", False)
            guard = analysis_mode(ctx.model, self.mode) if own else nullcontext()
            with guard:
                result = inst.read(ctx)
            value, extra = _checked(result)
        except Exception as e:  # a reading must never stop training
            message = " ".join(f"{type(e).__name__}: {e}".split())
            message = message if len(message) <= MESSAGE_CHARS else message[:MESSAGE_CHARS - 1] + "…"
            if inst.name not in self._failed:
                self._failed.add(inst.name)
                warnings.warn(f"instrument {inst.name!r} failed at step {ctx.step} ({message}); its failed readings"
                              " are recorded with value NaN and the error", RuntimeWarning, stacklevel=3)
            value, extra = math.nan, {"error": message}
        return Reading(ctx.step, inst.name, value, time.perf_counter() - started, extra)

    def _open_board(self) -> None:
        from trainlab.integrations.tensorboard import TensorBoardLogger

        # resumed at update S: what an interrupted run wrote after S is hidden (TensorBoard's purge)
        self._board = TensorBoardLogger(self.tensorboard, purge_step=self.step + 1 if self.step else None)

    def _remember_if_due(self, model: nn.Module) -> None:
        """Keep the parameters when an instrument due after the coming update reads ``previous``."""
        upcoming = self.step + 1
        if any(getattr(inst, "needs_previous", False) and self._due(inst, upcoming) for inst in self.instruments):
            self._previous = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def _sample_of(self, model: nn.Module, data: Any) -> Any:
        """The first ``sample`` samples of ``data`` as one batch on the model's device, drawn
        once per data source; drawn under :func:`~trainlab.state.preserved`, so a shuffling
        DataLoader does not move the global random state."""
        if self._source is not data:
            with preserved(model, parameters=False):
                batches = list(first_samples(data, self.sample, self.batch_loss))
            if sum(batch_size_of(batch) for batch in batches) == 0:
                raise DataError("the training data holds no samples for the Monitor's readings")
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            self._sample = to_device(batches[0] if len(batches) == 1 else concat(batches), device)
            self._source = data
        return self._sample


#: Keys JSON writes as strings; a reading's dict with other keys (a tuple, an object) is refused.
KEYS = (str, int, float, bool, type(None))


def _checked(result: Any) -> tuple[float, dict[str, Any]]:
    """An instrument's reading as ``(value, other fields)``, plain JSON (module docstring); a
    reading that is not is a :class:`ConfigError` naming the field and its type."""
    if not isinstance(result, dict):
        raise ConfigError(f"the reading is {_what(result)}, not a dict with a 'value'")
    if "value" not in result:
        raise ConfigError(f"the reading has no 'value' (its keys: {', '.join(map(str, list(result)[:8]))})")
    value = _plain(result["value"], "value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"the reading's 'value' is {_what(result['value'])}, not a number (return math.nan for no"
                          " value)")
    extra = _plain({k: v for k, v in result.items() if k != "value"}, "")
    return float(value), extra


def _plain(obj: Any, where: str) -> Any:
    """``obj`` as plain JSON: tensors and NumPy arrays or scalars as numbers (one element) or
    lists; ``where`` names the field in the error for anything JSON cannot hold."""
    if isinstance(obj, torch.Tensor) or type(obj).__module__ == "numpy" and callable(getattr(obj, "tolist", None)):
        obj = obj.detach().cpu() if isinstance(obj, torch.Tensor) else obj
        obj = obj.reshape(-1)[0].item() if obj.ndim > 0 and _size(obj) == 1 else obj.tolist()
    if isinstance(obj, dict):
        bad = next((k for k in obj if not isinstance(k, KEYS)), None)
        if bad is not None:
            raise ConfigError(f"the reading's field {where or 'reading'!r} has a key {_what(bad)}; JSON keys are"
                              " strings or numbers")
        return {str(k): _plain(v, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, int) and not isinstance(obj, bool) and obj.bit_length() > 1024:
        raise ConfigError(f"the reading's field {where!r} is an int of {obj.bit_length():,} bits, beyond any float"
                          " JSON readers take")
    if obj is None or isinstance(obj, (str, int, float)):  # bool is an int
        return obj
    raise ConfigError(f"the reading's field {where!r} is {_what(obj)}, which JSON cannot hold; use numbers, strings,"
                      " lists or dicts")


def _size(array: Any) -> int:
    return array.numel() if isinstance(array, torch.Tensor) else int(array.size)


def _what(value: Any) -> str:
    """``a complex ((1+2j))``: the type and a short repr, for one-line messages."""
    return f"a {type(value).__name__} ({_short(value)})"


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` on one line, cut at ``limit`` characters."""
    try:
        text = " ".join(repr(value).split())
    except ValueError:  # an int of more digits than Python will print
        return f"an {type(value).__name__} too long to show"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _shapes(model: nn.Module) -> tuple:
    """Names, shapes, dtypes and requires_grad of the model's parameters: what kept state depends on."""
    return tuple((name, tuple(p.shape), p.dtype, p.requires_grad) for name, p in model.named_parameters())


def _update_count(step: Any, last: int) -> int:
    """``step`` given to ``after_step``: an integer (``int``, NumPy or integer tensor; not a bool) ``>= 1``
    and above the ``last`` count, else a :class:`ConfigError`."""
    try:
        count = None if isinstance(step, bool) else operator.index(step)
    except TypeError:
        count = None
    if count is None or count < 1:
        raise ConfigError(f"Monitor.after_step: step={_short(step)} is not allowed;"
                          " expected the updates done, an integer >= 1")
    if count <= last:
        raise ConfigError(f"Monitor.after_step: step={count} is not allowed after step {last}; update counts grow"
                          " (call start(model, step) to set the count anew)")
    return count


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} is not allowed; it must be an integer >= 1")
