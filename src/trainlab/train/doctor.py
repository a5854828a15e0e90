"""The stall doctor: notice a stalled run while it trains, read its instruments, say why, and
get it moving.

A *stall*: the loss fell by less than ``min_rel_improvement`` of its value over a window.

* **Full-batch runs** (every update sees all samples, ``full_batch=True``; the Trainer sets it
  when an epoch is one update): the loss is exact, so no second confirmation is needed — a
  stall is the last ``full_batch_window`` (30) losses falling by less than
  ``min_rel_improvement`` of the first, checked at every update. Onset to event: about
  ``full_batch_window`` updates.
* **Mini-batch runs**: the mini-batch losses raise the suspicion — over ``window`` updates, the
  mean of the first half against the second, with two standard errors of slack, so noise can
  hide a stall but never fake one — and the loss on the bounded sample (``eval()`` mode, exact)
  confirms it: measured when the suspicion arises and again ``window // 2`` updates later, where
  it must have fallen by less than half of ``min_rel_improvement``. Onset to event: about 1.5
  windows, within two.

The doctor then runs :func:`trainlab.diagnose` on a bounded sample of the training data
(``max_samples``) and takes the readings its decision needs. With a
:class:`~trainlab.instruments.Monitor` (``monitor=``, or one among the Trainer's callbacks) it
reads ``monitor.latest`` — ``stability``, ``units``, ``noise_scale`` — when a reading was taken
after the doctor's own last change (stability as the current ``η`` times the reading's
``lambda_max``, since a schedule may have moved ``η``); otherwise it measures them itself on the same sample:
stability as ``η·λ_max`` from the diagnosis for SGD-type optimizers (the preconditioned
``η·λ_max(P⁻¹H)`` of :class:`~trainlab.instruments.Stability` for Adam, RMSProp, Adagrad),
units and noise scale with the instruments of the same names. Then, in this order:

1. **step too large** — ``stability > threshold``: 2 for plain gradient descent (Cohen et al.
   2021, "Gradient descent on neural networks typically occurs at the edge of stability"),
   ``2(1+β)`` with heavy-ball momentum β (``2(1+β)/(1+2β)`` Nesterov), ``2(1+β₁)/(1−β₁)`` for Adam's
   preconditioned sharpness (Cohen et al. 2022, "Adaptive gradient methods at the edge of
   stability"), or the reading's own ``"threshold"``: ``η ← η / stability``, the ``1/λ_max``
   equivalent (stability 1);
2. **degenerate** — gradient and Hessian both vanish (e.g. two hidden linear layers at zero):
   second order shows no way out; a small random perturbation;
3. **units dead or saturated** — the ``units`` reading above ``dead_share`` (0.5): said with the
   lecture's remedies (a better initialisation, normalisation); nothing is changed — a step
   among the few units still alive would not cure it;
4. **negative curvature worth taking** — an eigenvalue below ``−max(eig_tol·λ_max, eig_floor)``
   in a saddle or a saddle's neighbourhood: :func:`trainlab.escape` along the negative
   eigenspace. During a crawl (below) it is worth taking only at a critical point (a plain step
   gains nothing there) or when it gains more than a plain step of the same length ``r``: along
   ``u`` the quadratic model gains ``½|λ_min| r²``, a gradient step with ``η = 1/λ_max`` gains at
   least ``½ λ_max r²`` (``r = ‖g‖/λ_max``), so the escape wins only if ``|λ_min| ≥ λ_max``;
5. **a crawl** — ``stability < crawl`` (0.1): the step is far below what the sharpest
   direction allows; ``η ← η / stability`` (stability 1, within the threshold) in a full-batch
   run; with gradient noise the step that gains most is smaller, ``ε_max / (1 + B_simple/B)``
   (McCandlish et al. 2018, eq. 2.7) with ``ε_max = 1/λ_max``, so a mini-batch run with a
   ``noise_scale`` reading gets ``η ← η / (stability · (1 + B_simple/B))``;
6. **batch ≪ B_simple** — the ``noise_scale`` reading's ``batch_over_noise`` below
   ``batch_ratio`` (0.1) in a mini-batch run: the gradient noise dominates each step
   (McCandlish et al. 2018, "An empirical model of large-batch training"); a larger batch is
   suggested, nothing is changed;
7. **a plateau** — not critical, neither crawling nor too fast: plain SGD gets momentum 0.9,
   otherwise ``η`` grows up to ×10 (keeping stability ≤ 1);
8. **local minimum / maximum** — says so with the remedies that fit (re-initialise, a larger
   model, more batch noise) and changes nothing.

Every event names its ``reading`` (``"stability"``, ``"curvature"``, ``"units"``,
``"noise_scale"``, ``"grad_norm"``) and its ``remedy``; ``findings`` lists every finding that
held (the first is the one treated, the others are advice), ``readings`` the values used and
where they came from. Changes are applied only with ``act=True``.

The diagnosis and the readings leave the model exactly as it was (parameters, buffers such as
BatchNorm statistics, flags, gradients and the global random states); only a treatment changes
anything. An escape is taken in a saddle's neighbourhood too, where the gradient is small but
not below ``grad_tol`` (``escape(..., force=True)``), since its line search accepts a step only
when the loss measurably drops.

Every finding is an event: a dict with the step, verdict, numbers and action, logged by the
Trainer to ``metrics.jsonl`` (lines with an ``"event"`` key), to the progress bar and to the
summary. After an event the window starts afresh; after one that changed nothing the doctor
waits four windows (of the kind the run uses) before it looks again. In a plain PyTorch loop call
:meth:`StallDoctor.after_step` after each update (``full_batch=True`` when every update sees
all the data; ``batch_size=`` for the noise reading).

Batches that are not ``(x, y)`` pairs — a language model's ``{"input_ids", "labels", ...}``
dicts — need ``batch_loss=(model, batch) -> mean loss`` (the hook of :mod:`trainlab.curvature`):
the sample loss, the bounded sample, the diagnosis, the escape and the readings all go through
it, and ``loss_fn`` may then be ``None``.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.data import Dataset

from trainlab import distributed as dist
from trainlab.curvature import analysis_mode, diagnose, escape
from trainlab.curvature.operator import loss_of
from trainlab.data.batches import BatchLoss, batch_size_of, concat, first_samples
from trainlab.errors import ConfigError
from trainlab.instruments import Context, Stability, Units
from trainlab.instruments.noise import NoiseScale
from trainlab.state import preserved
from trainlab.train.callbacks import Callback

#: Optimizers whose step is scaled by a diagonal preconditioner read from their state.
ADAPTIVE = ("adam", "adamw", "nadam", "radam", "adamax", "rmsprop", "adagrad")
#: The lecture's remedies for dead or saturated units.
UNITS_REMEDY = ("a better initialisation (He/Kaiming for ReLU, Glorot/Xavier for tanh and sigmoid), normalisation"
                " (BatchNorm, standardised inputs), or a lower learning rate")


@dataclass
class Finding:
    """One thing the doctor found: the ``reading`` behind it, its ``value``, the ``remedy`` in
    words, and ``apply`` (``None``: advice only) that carries the remedy out."""

    reading: str
    value: float | None
    remedy: str
    apply: Callable[[], dict[str, Any]] | None = None


class StallDoctor(Callback):
    """Notice a stalled run, diagnose it and treat the first finding — the method is the module docstring's.

    A Trainer callback (:meth:`on_step_end`); in a plain loop call :meth:`after_step` after each update.

    Parameters:
        window: updates per mini-batch stall test, an integer ≥ 10 (100); the confirmation
            comes ``window // 2`` updates later.
        min_rel_improvement: a stall is a relative loss decrease below this (0.01).
        grad_tol, k, eig_tol, eig_floor: passed to :func:`trainlab.diagnose` (1e-2, 5, 1e-3, 1e-4).
        act: apply the first finding's remedy (True); ``False`` only reports it.
        max_samples: the training samples analysed, from the start of the data (2,048).
        perturbation: σ of the random perturbation at a degenerate point (1e-2).
        seed: seed of the diagnosis, the readings and the perturbation (0).
        monitor: a :class:`~trainlab.instruments.Monitor` whose ``latest`` readings are used (``None``:
            one among the Trainer's callbacks, if any; else the doctor measures them).
        full_batch_window: losses per full-batch stall test, an integer ≥ 2 (30).
        crawl: stability below this is a crawl (0.1).
        dead_share: a ``units`` reading above this is a finding (0.5).
        batch_ratio: ``batch_over_noise`` below this suggests a larger batch (0.1).
        batch_loss: ``(model, batch) -> mean loss`` for batches that are not ``(x, y)`` pairs
            (``None``: ``loss_fn(model(x), y)``); every loss the doctor evaluates goes through it.

    Invalid arguments raise :class:`~trainlab.errors.ConfigError`.

    Cost: per event one :func:`trainlab.diagnose` on at most ``max_samples`` samples (its
    Hessian-vector products; see its Cost), plus the readings no fresh Monitor reading supplies
    (the preconditioned stability of adaptive optimizers costs products too); a mini-batch run
    also evaluates the sample loss twice per suspected stall. No products otherwise.

    Returns (each event, also kept in ``self.events``): a dict with ``event`` (``"stall"``),
    ``verdict``, ``loss``, ``grad_norm``, ``lambda_max``, ``lambda_min``, ``negative_curvature``,
    ``samples``, ``method``, ``n_hvp``, ``seconds``, ``full_batch``; ``readings`` (name →
    ``{"value", "source"}``, source ``"monitor"``, ``"diagnosis"`` or ``"doctor"``); ``reading`` and
    ``remedy`` of the finding treated; ``findings`` (each ``{"reading", "value", "remedy"}``);
    ``action``, ``applied``, ``message``; with a learning-rate change ``lr_before``/``lr_after``,
    with an escape ``loss_after``, ``escape_step``, ``predicted_change``, ``directions``. The
    Trainer adds ``epoch`` and ``step`` when it logs it.
    """
    def __init__(self, window: int = 100, min_rel_improvement: float = 0.01, grad_tol: float = 1e-2,
                 act: bool = True, k: int = 5, max_samples: int = 2048, eig_tol: float = 1e-3, eig_floor: float = 1e-4,
                 perturbation: float = 1e-2, seed: int = 0, *, monitor: Any = None, full_batch_window: int = 30,
                 crawl: float = 0.1, dead_share: float = 0.5, batch_ratio: float = 0.1,
                 batch_loss: BatchLoss | None = None):
        for name, value, least in (("window", window, 10), ("k", k, 1), ("max_samples", max_samples, 1),
                                   ("full_batch_window", full_batch_window, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"StallDoctor: {name}={value!r} is not allowed; expected an integer >= {least}")
        for name, value in (("min_rel_improvement", min_rel_improvement), ("grad_tol", grad_tol),
                            ("eig_tol", eig_tol), ("eig_floor", eig_floor), ("perturbation", perturbation),
                            ("crawl", crawl), ("dead_share", dead_share), ("batch_ratio", batch_ratio)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"StallDoctor: {name}={value!r} is not allowed; expected a number > 0")
        if batch_loss is not None and not callable(batch_loss):
            raise ConfigError(f"StallDoctor: batch_loss={batch_loss!r} is not allowed; expected a function"
                              " (model, batch) -> mean loss, or None")
        if monitor is not None and not isinstance(getattr(monitor, "latest", None), dict):
            raise ConfigError(f"StallDoctor: monitor={monitor!r} is not allowed; expected a"
                              " trainlab.instruments.Monitor"
                              " (an object with a `latest` dict of readings) or None")
        self.window, self.min_rel_improvement, self.grad_tol = window, min_rel_improvement, grad_tol
        self.act, self.k, self.max_samples, self.perturbation, self.seed = act, k, max_samples, perturbation, seed
        self.eig_tol, self.eig_floor = eig_tol, eig_floor
        self.monitor, self.full_batch_window = monitor, full_batch_window
        self.crawl, self.dead_share, self.batch_ratio = crawl, dead_share, batch_ratio
        self.batch_loss = batch_loss
        self.events: list[dict[str, Any]] = []
        self._losses: collections.deque[float] = collections.deque(maxlen=max(window, full_batch_window + 1))
        self._check_every = max(1, window // 10)  # the stall test costs more than an update's bookkeeping
        self._steps = 0
        self._quiet_until = 0
        self._changed_at = -1  # the update of the doctor's last change: readings before it are stale
        self._candidate: tuple[int, float] | None = None  # (step, exact sample loss) of a suspected stall

    # ---------------------------------------------------------------- hooks
    def on_step_end(self, trainer: Any, record: dict[str, Any]) -> None:
        """The Trainer's hook: :meth:`after_step` with the trainer's model, loss, data, optimizer and schedule.

        Parameters: ``trainer`` the :class:`~trainlab.train.Trainer`; ``record`` its step record
        (``record["loss"]`` is used). ``full_batch`` is set when an epoch is one update.
        While no monitor is set, one among the trainer's callbacks is taken.
        Returns ``None``; an event is passed to ``trainer.log_event``.
        """
        if self.monitor is None:  # a Monitor among the Trainer's callbacks is read, not duplicated
            self.monitor = next((cb for cb in trainer.callbacks
                                 if cb is not self and isinstance(getattr(cb, "latest", None), dict)), None)
        # trainer.module, not a DistributedDataParallel wrapper: under torch.distributed every rank
        # sees the same (all-reduced) loss, so all ranks diagnose and treat at the same step
        event = self.after_step(trainer.module, record["loss"], trainer.loss_fn, trainer.train_data,
                                optimizer=trainer.optimizer, scheduler=trainer.scheduler,
                                full_batch=trainer.steps_per_epoch == 1, batch_size=trainer.batch_size)
        if event is not None:
            trainer.log_event(event)

    def after_step(self, model: nn.Module, loss_value: float, loss_fn: Any, batch_source: Any,
                   optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, *,
                   full_batch: bool = False, batch_size: int | None = None) -> dict[str, Any] | None:
        """Record one update's loss; on a stall, diagnose and treat. Returns the event, if any.

        ``batch_source`` is the training data: a Dataset, a DataLoader or one ``(x, y)``
        batch (with ``batch_loss``: batches of any form, ``loss_fn`` may be ``None``); the first
        ``max_samples`` samples are analysed. With ``optimizer`` (and its
        ``scheduler``) the doctor can also change the learning rate or momentum.
        ``full_batch``: every update saw all the data, so ``loss_value`` is exact and a stall
        needs no confirmation. ``batch_size``: samples per update, for the noise reading.
        """
        if loss_fn is None and self.batch_loss is None:
            raise ConfigError("StallDoctor.after_step: loss_fn is None; pass the loss function (outputs, targets) ->"
                              " mean loss, or build the StallDoctor with batch_loss=(model, batch) -> mean loss")
        self._steps += 1
        self._losses.append(float(loss_value))
        if self._steps < self._quiet_until:
            return None
        if full_batch:
            if not self._full_batch_stalled():
                return None
        elif not self._confirmed(model, loss_fn, batch_source):
            return None
        event = self._treat(model, loss_fn, batch_source, optimizer, scheduler, full_batch, batch_size)
        self._losses.clear()
        self._candidate = None
        if event["applied"]:
            self._changed_at = self._steps
        else:
            self._quiet_until = self._steps + 4 * (self.full_batch_window if full_batch else self.window)
        self.events.append(event)
        return event

    def state_dict(self) -> dict[str, Any]:
        """The doctor's memory for a checkpoint: the window's losses, updates seen, the quiet period
        and a suspected stall's start."""
        return {"losses": list(self._losses), "steps": self._steps, "quiet_until": self._quiet_until,
                "changed_at": self._changed_at, "candidate": list(self._candidate) if self._candidate else None,
                "events": len(self.events)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` saved, so a resumed run watches as an uninterrupted one.
        A state that is not one (losses that are not numbers, counts that are not integers) is a
        ``TypeError``/``ValueError`` naming the entry, raised before anything is taken."""
        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def short(v: Any) -> str:
            text = repr(v)
            return text if len(text) <= 60 else text[:59] + "…"

        losses, candidate = state["losses"], state.get("candidate")
        if not isinstance(losses, (list, tuple)) or not all(number(v) for v in losses):
            raise TypeError(f"losses {short(losses)} is not a list of numbers")
        counts = {key: state[key] for key in ("steps", "quiet_until")}
        counts["changed_at"] = state.get("changed_at", -1)
        for key, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{key} {value!r} is not an update count")
        if candidate and not (isinstance(candidate, (list, tuple)) and len(candidate) == 2
                              and number(candidate[1]) and isinstance(candidate[0], int)):
            raise TypeError(f"candidate {short(candidate)} is not a pair (update, loss)")
        self._losses.clear()
        self._losses.extend(float(v) for v in losses)
        self._steps, self._quiet_until, self._changed_at = counts["steps"], counts["quiet_until"], counts["changed_at"]
        self._candidate = (candidate[0], float(candidate[1])) if candidate else None

    # ---------------------------------------------------------------- noticing a stall
    def _full_batch_stalled(self) -> bool:
        """Exact losses: the last ``full_batch_window`` updates fell by less than ``min_rel_improvement``."""
        n = self.full_batch_window
        if len(self._losses) <= n:
            return False
        before, after = self._losses[-n - 1], self._losses[-1]
        return before - after < self.min_rel_improvement * abs(before)

    def _confirmed(self, model: nn.Module, loss_fn: Any, batch_source: Any) -> bool:
        """Mini-batch losses suspect a stall; the exact sample loss, half a window later, confirms it."""
        if self._candidate is None:
            if len(self._losses) >= self.window and self._steps % self._check_every == 0 and self._stalled():
                self._candidate = (self._steps, self._sample_loss(model, loss_fn, batch_source))
            return False
        start, before = self._candidate
        if self._steps - start < self.window // 2:
            return False
        self._candidate = None
        after = self._sample_loss(model, loss_fn, batch_source)
        return before - after < 0.5 * self.min_rel_improvement * abs(before)  # else it was moving after all

    def _stalled(self) -> bool:
        """Stalled when even the optimistic end of the improvement — the difference of the
        halves' means plus two standard errors — is below ``min_rel_improvement``: mini-batch
        noise can hide a stall, but never fake one."""
        losses = list(self._losses)[-self.window:]
        half = self.window // 2
        (before, var_before), (after, var_after) = _mean_var(losses[:half]), _mean_var(losses[-half:])
        error = math.sqrt((var_before + var_after) / half)
        return (before - after) + 2 * error < self.min_rel_improvement * abs(before)

    @torch.no_grad()
    def _sample_loss(self, model: nn.Module, loss_fn: Any, batch_source: Any) -> float:
        """The mean loss on the bounded sample; under ``torch.distributed`` the sample-weighted
        mean over every rank's sample, so all ranks confirm (and so diagnose, whose products are
        collective) at the same update — a rank that decided alone would wait for the others forever."""
        with analysis_mode(model, "eval"):  # also undoes the random draws of a shuffling DataLoader
            sample = bounded_sample(batch_source, self.max_samples, self.batch_loss)
            with torch.no_grad():  # the user's errors named as the analyses name them (a tuple output, a bad label)
                loss = loss_of(model, loss_fn, sample, self.batch_loss)
            if not dist.active():
                return float(loss)
            n = float(batch_size_of(sample))
            both = dist.all_reduce_sum(torch.tensor([float(loss) * n, n], dtype=torch.float64,
                                                    device=dist.device()))
            return float(both[0] / both[1])

    # ---------------------------------------------------------------- diagnosis and treatment
    def _treat(self, model: nn.Module, loss_fn: Any, batch_source: Any, optimizer: Any, scheduler: Any,
               full_batch: bool = False, batch_size: int | None = None) -> dict[str, Any]:
        # The diagnosis and the readings leave no trace: diagnose() restores the model itself, and
        # preserved() also undoes the random draws of a shuffling DataLoader. Only a remedy may act.
        with preserved(model, parameters=False):
            sample = bounded_sample(batch_source, self.max_samples, self.batch_loss)
            # progress=False: the Trainer's own bar is on screen, and a second one would tear it
            d = diagnose(model, loss_fn, sample, grad_tol=self.grad_tol, eig_tol=self.eig_tol,
                         eig_floor=self.eig_floor, k=self.k, seed=self.seed, progress=False,
                         batch_loss=self.batch_loss)
            readings = self._readings(model, loss_fn, sample, optimizer, d, full_batch, batch_size)
        event = {"event": "stall", "verdict": d.verdict, "loss": d.loss, "grad_norm": d.grad_norm,
                 "lambda_max": float(d.eigenvalues[0]), "lambda_min": float(d.eigenvalues[-1]),
                 "negative_curvature": d.negative_curvature, "samples": batch_size_of(sample), "method": d.method,
                 "n_hvp": d.n_hvp, "seconds": d.seconds, "full_batch": full_batch,
                 "readings": {name: {"value": r["value"], "source": r["source"]} for name, r in readings.items()},
                 "applied": False}
        findings = self._findings(model, loss_fn, sample, d, readings, optimizer, scheduler, full_batch, batch_size)
        first = findings[0]
        event.update(reading=first.reading, remedy=first.remedy,
                     findings=[{"reading": f.reading, "value": f.value, "remedy": f.remedy} for f in findings])
        if first.apply is None:
            event.update(action="none", message=first.remedy)
        elif not self.act:
            event.update(action=f"{first.reading}: {first.remedy} (not applied)",
                         message=f"{first.remedy} (act=False)")
        else:
            event.update(first.apply())
        also = [f"{f.reading}: {f.remedy}" for f in findings[1:]]
        if also:
            event["message"] += "; also " + "; ".join(also)
        return event

    def _findings(self, model: nn.Module, loss_fn: Any, sample: Any, d: Any, readings: dict[str, dict[str, Any]],
                  optimizer: Any, scheduler: Any, full_batch: bool, batch_size: int | None) -> list[Finding]:
        """Everything that holds, in the module docstring's order; the first is treated."""
        lam_max, lam_min = float(d.eigenvalues[0]), float(d.eigenvalues[-1])
        stability = readings.get("stability")
        found: list[Finding] = []
        s = t = None
        if stability is not None:
            s, t = stability["value"], stability["threshold"]
        crawling = s is not None and s < self.crawl
        if s is not None and s > t:
            found.append(Finding("stability", s, f"η·λ_max = {s:.3g} > {t:.3g}, too large a step for the sharpest"
                                 f" direction: η ← η/{s:.3g} (η·λ_max = 1)",
                                 _on(optimizer, lambda: self._scale(optimizer, scheduler, 1 / s, "lower η"))))
        if d.verdict == "degenerate":
            found.append(Finding("curvature", 0.0, "degenerate point: gradient and Hessian both vanish, so second"
                                 f" order shows no way out; a small random perturbation (σ = {self.perturbation:g})",
                                 lambda: self._perturb(model)))
        units = readings.get("units")
        if units is not None and units["value"] > self.dead_share:
            found.append(Finding("units", units["value"], f"{100 * units['value']:.0f} % of the units are dead or"
                                 f" saturated (they pass no gradient); remedy: {UNITS_REMEDY}"))
        critical = d.grad_norm <= self.grad_tol
        if d.negative_curvature and (not crawling or critical or abs(lam_min) >= lam_max):
            where = "saddle" if d.verdict == "saddle" else f"saddle's neighbourhood ({d.verdict.replace('_', ' ')})"
            found.append(Finding("curvature", lam_min, f"{where}: negative curvature λ_min = {lam_min:.3g};"
                                 " step along it (trainlab.escape)", lambda: self._escape(model, loss_fn, sample, d)))
        noise = readings.get("noise_scale")
        ratio = None
        if noise is not None and not full_batch:
            ratio = noise.get("batch_over_noise")
            if ratio is None and batch_size and noise["value"] > 0:
                ratio = batch_size / noise["value"]
        if crawling:
            # the step that gains most with gradient noise: ε_max / (1 + B_simple/B), McCandlish et al. 2018
            # (eq. 2.7), with ε_max = 1/λ_max — the sharpest direction's bound
            factor = (1 / s if s > 0 else 10.0) / (1 + (1 / ratio if ratio and math.isfinite(ratio) else 0.0))
            if factor > 1:
                bound = ("η·λ_max = 1" if ratio is None
                         else f"1/λ_max ÷ (1 + B_simple/B), B_simple/B = {1 / ratio:.3g}")
                found.append(Finding("stability", s, f"a crawl: η·λ_max = {s:.2g} ≪ 1 (‖∇L‖ = {d.grad_norm:.2g}),"
                                     " the step is far below what the sharpest direction allows:"
                                     f" η ×{factor:.3g} ({bound})",
                                     _on(optimizer, lambda: self._scale(optimizer, scheduler, factor, "raise η"))))
        if not full_batch and ratio is not None and math.isfinite(ratio) and ratio < self.batch_ratio:
            found.append(Finding("noise_scale", noise["value"], f"batch {noise.get('batch_size', batch_size)} ≪"
                                 " B_simple ="
                                 f" {noise['value']:.3g} (ratio {ratio:.2g}): gradient noise dominates each step;"
                                 f" a larger batch (toward {noise['value']:.0f})"))
        if d.verdict == "not_critical" and not d.negative_curvature and not crawling and not (s is not None and s > t):
            found.append(self._plateau(d, s, optimizer, scheduler))
        if d.verdict in ("local_minimum", "local_maximum"):
            found.append(Finding("curvature", lam_min, f"a {d.verdict.replace('_', ' ')} at loss {d.loss:.4g} (no"
                                 f" negative curvature, ‖∇L‖ = {d.grad_norm:.2g}): nothing local lowers the loss;"
                                 " if it is too high, re-initialise, use a larger model, or add batch noise (smaller"
                                 " batches)"))
        if not found:  # e.g. not critical with negative curvature not worth taking, and no optimizer to act on
            found.append(Finding("grad_norm", d.grad_norm, f"not a critical point (‖∇L‖ = {d.grad_norm:.2g}): a"
                                 " plateau or a narrow valley; pass the optimizer to act"))
        return found

    def _plateau(self, d: Any, s: float | None, optimizer: Any, scheduler: Any) -> Finding:
        if optimizer is None:
            return Finding("grad_norm", d.grad_norm, f"not a critical point (‖∇L‖ = {d.grad_norm:.2g}) and no"
                           " negative curvature: a plateau or a narrow valley; pass the optimizer to act")
        group = optimizer.param_groups[0]
        if group.get("momentum") == 0 and not _adaptive(optimizer):
            def momentum() -> dict[str, Any]:
                for g in optimizer.param_groups:
                    g["momentum"] = 0.9
                return {"action": "grad_norm: momentum 0.9", "applied": True,
                        "message": "plain gradient descent on a plateau: momentum 0.9 — applied"}
            return Finding("grad_norm", d.grad_norm, "plain gradient descent on a plateau"
                           f" (‖∇L‖ = {d.grad_norm:.2g}): momentum 0.9", momentum)
        factor = 10.0 if s is None or s <= 0 else min(10.0, max(1.0, 1 / s))
        return Finding("grad_norm", d.grad_norm, f"a plateau (‖∇L‖ = {d.grad_norm:.2g}, no negative curvature):"
                       f" η ×{factor:.3g}", lambda: self._scale(optimizer, scheduler, factor, "raise η"))

    # ---------------------------------------------------------------- readings
    def _readings(self, model: nn.Module, loss_fn: Any, sample: Any, optimizer: Any, d: Any, full_batch: bool,
                  batch_size: int | None) -> dict[str, dict[str, Any]]:
        """``stability`` (value, threshold), ``units`` and ``noise_scale``: the Monitor's latest
        readings taken after the doctor's last change, else measured here."""
        latest = getattr(self.monitor, "latest", None) or {}
        readings: dict[str, dict[str, Any]] = {}
        for name in ("stability", "units", "noise_scale"):
            r = latest.get(name)
            value = getattr(r, "value", None)
            fresh = getattr(r, "step", -1) > self._changed_at
            if r is not None and value is not None and math.isfinite(value) and fresh:
                readings[name] = {**dict(getattr(r, "extra", None) or {}), "value": float(value), "source": "monitor"}
        lr = None if optimizer is None else float(optimizer.param_groups[0]["lr"])
        if "stability" in readings:
            readings["stability"].setdefault("threshold", _threshold(optimizer))
            lam = readings["stability"].get("lambda_max")
            if lr is not None and isinstance(lam, (int, float)) and math.isfinite(lam):
                readings["stability"]["value"] = lr * lam  # η now: a schedule may have moved it since the reading
        elif optimizer is not None and not _adaptive(optimizer):
            readings["stability"] = {"value": lr * float(d.eigenvalues[0]), "threshold": _threshold(optimizer),
                                     "source": "diagnosis"}
        ctx = None
        for name in ("stability", "units", "noise_scale"):
            if name in readings or (name == "stability" and optimizer is None) or (name == "noise_scale" and (
                    full_batch or batch_size is None)):
                continue
            instrument = _instrument(name)
            if ctx is None:
                ctx = Context(model, loss_fn, sample, self.batch_loss, optimizer, self._steps, lr, batch_size, "eval",
                              self.seed)
            try:
                with analysis_mode(model, "eval"):
                    result = dict(instrument.read(ctx))
            except ConfigError:  # e.g. no activation module whose units could be watched
                continue
            value = float(result.pop("value"))
            if math.isfinite(value):
                readings[name] = {**result, "value": value, "source": "doctor"}
        if "stability" in readings:
            readings["stability"].setdefault("threshold", _threshold(optimizer))
        return readings

    # ---------------------------------------------------------------- remedies
    def _scale(self, optimizer: Any, scheduler: Any, factor: float, what: str) -> dict[str, Any]:
        before = float(optimizer.param_groups[0]["lr"])
        _scale_lr(optimizer, scheduler, factor)
        after = float(optimizer.param_groups[0]["lr"])
        return {"action": f"{what}: η {before:.3g} → {after:.3g}", "applied": True, "lr_before": before,
                "lr_after": after, "message": f"{what}: η {before:.3g} → {after:.3g} — applied"}

    def _escape(self, model: nn.Module, loss_fn: Any, sample: Any, d: Any) -> dict[str, Any]:
        # force=True: the doctor steps in a saddle's *neighbourhood* too, where the gradient is small
        # but above grad_tol (that is what a stall looks like), and plain escape() refuses there.
        # The step stays safe: each negative eigenvector is taken with the sign that goes against
        # the gradient, and a step is accepted only when the measured loss drops by a fraction of
        # the predicted change (Armijo); otherwise the parameters are put back.
        where = "saddle" if d.verdict == "saddle" else f"saddle's neighbourhood ({d.verdict.replace('_', ' ')})"
        e = escape(model, loss_fn, sample, d, force=True, batch_loss=self.batch_loss)
        return {"action": "escape", "applied": e.accepted, "loss_after": e.loss_after, "escape_step": e.step,
                "predicted_change": e.predicted_change, "directions": e.n_directions,
                "message": f"{where}: λ_min = {float(d.eigenvalues[-1]):.3g}; " + str(e).splitlines()[0]}

    def _perturb(self, model: nn.Module) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(self.seed + self._steps)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device), alpha=self.perturbation)
        return {"action": "perturb", "applied": True,
                "message": "degenerate point: gradient and Hessian both vanish, so second order shows no way out;"
                           f" a small random perturbation (σ = {self.perturbation:g}) — applied"}


def _on(optimizer: Any, apply: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]] | None:
    """A learning-rate remedy can be applied only with the optimizer at hand."""
    return None if optimizer is None else apply


def _adaptive(optimizer: Any) -> bool:
    """Whether the optimizer scales its step by a diagonal preconditioner (Adam, RMSProp, Adagrad…)."""
    return type(optimizer).__name__.lower() in ADAPTIVE


def _threshold(optimizer: Any) -> float:
    """The stability threshold on ``η·λ_max`` (preconditioned for adaptive optimizers): 2 for
    plain steps, ``2(1+β)`` with heavy-ball momentum β (``2(1+β)/(1+2β)`` Nesterov, divided by
    ``1−τ`` with PyTorch's dampening τ), ``2(1+β₁)/(1−β₁)`` for Adam (its first moment is an average)."""
    group = {} if optimizer is None else optimizer.param_groups[0]
    if "betas" in group:
        b1 = float(group["betas"][0])
        return 2 * (1 + b1) / (1 - b1)
    beta = float(group.get("momentum") or 0.0)
    if group.get("nesterov"):
        return 2 * (1 + beta) / (1 + 2 * beta)
    return 2 * (1 + beta) / (1 - float(group.get("dampening") or 0.0))


def _instrument(name: str) -> Any:
    """A fresh instrument of :mod:`trainlab.instruments` for the reading ``name``."""
    return {"units": Units, "stability": Stability, "noise_scale": NoiseScale}[name]()


def _mean_var(values: list[float]) -> tuple[float, float]:
    """Mean and sample variance, in plain Python (``statistics`` is exact but slow)."""
    n = len(values)
    mean = sum(values) / n
    return mean, sum((v - mean) ** 2 for v in values) / max(n - 1, 1)


def _scale_lr(optimizer: torch.optim.Optimizer, scheduler: Any, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    if scheduler is not None and hasattr(scheduler, "base_lrs"):  # a schedule keeps its shape, rescaled
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        if isinstance(getattr(scheduler, "_last_lr", None), list):  # get_last_lr() (what HF logs) says η now
            scheduler._last_lr = [lr * factor for lr in scheduler._last_lr]


def bounded_sample(source: Dataset | Iterable[Any] | tuple[torch.Tensor, torch.Tensor], limit: int,
                   batch_loss: BatchLoss | None = None) -> Any:
    """The first ``limit`` samples of a dataset, a DataLoader or an ``(x, y)`` batch, as one
    batch (with ``batch_loss``: of batches in any form, e.g. dicts, joined key by key)."""
    batches = list(first_samples(source, limit, batch_loss))
    return batches[0] if len(batches) == 1 else concat(batches)
