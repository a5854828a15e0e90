"""The stall doctor: notice a stalled run (or a damaging spike) while it trains, name its cause,
treat what can safely be treated, and never make the run worse.

The doctor reads best as three parts:

* :mod:`~trainlab.train.doctor.evidence` — what it reads at one look, one
  :class:`~trainlab.train.doctor.evidence.Evidence`: the diagnosis of :func:`trainlab.diagnose` on a
  bounded sample, the readings ``stability``, ``units``, ``noise_scale`` (a Monitor's fresh ones,
  else measured), and cheap readings of its own (per-layer gradient profile, the labels' marginal
  entropy, Adam's update ratio, the input columns' spread);
* :mod:`~trainlab.train.doctor.causes` — one rule per cause of :data:`CAUSES`, in priority order
  (:data:`~trainlab.train.doctor.causes.RULES`), each ``rule(evidence) -> Finding | None`` with its paper;
* :mod:`~trainlab.train.doctor.treatments` — reversible actions: lower or raise η, momentum, escape,
  perturb, roll back, clip, warm up.

**When it looks.** Cheap readings every update: the loss and the gradient norm (the Trainer's
record, else one reduction over ``.grad``); over the first 5 updates of an adaptive optimizer its
update ratio, and the state after update 1. Only a *failing* run is looked at for a stall: its
loss at or above the labels' marginal entropy (no better than predicting the label frequencies),
or above ``progress`` (½) of its loss after the first update. A run that has cut its loss by more
than that is training, and its slowing down is convergence: only a spike draws a look there.

* **Full-batch runs** (every update sees all samples, ``full_batch=True``; the Trainer sets it
  when an epoch is one update): the loss is exact — a stall is the last ``full_batch_window``
  (30) losses falling by less than ``min_rel_improvement`` of the first.
* **Mini-batch runs**: check-ups at update 1 and every ``window // 2`` updates measure the loss
  on the *trend sample* (the first ``4 × batch`` samples, 64 to 512, of the bounded sample — the
  same samples each time, so two check-ups differ by what training did). A stall: less than
  ``min_rel_improvement`` gained since the check-up a window ago (less than 5 % at or above the
  marginal entropy; above twice it, at once). Onset to event: one window.
* **A spike**: a loss that is not finite, or above ``high + max(2 (high − low), ½ |median|)`` of
  the last 20 losses. Five updates later the doctor compares the sample loss with that of the
  best good state kept (a copy of the parameters and the optimizer's state from update 1 and each
  check-up, three at most); when the damage lasted (worse by more than ``2 min_rel_improvement``)
  the look comes at once — an event within ten updates of the spike. A gradient norm ten times
  its median over the last 20 updates is a spike too; one a hundred times it (an explosion), or a
  non-finite loss, is judged at the same update.
* **A missing warm-up**: one early look at update ``5 + window // 2`` when an adaptive
  optimizer's first steps were too large and the loss sits at the labels' marginal entropy.

**Never harm.** A treatment is applied only with ``act=True`` and kept only when, ``trial``
updates later (``window // 2``; ``full_batch_window // 2`` full-batch; at once when the run blows
up under it — a non-finite loss, an exploded gradient), the loss on the bounded sample is no
worse than it was before the treatment (higher by less than ``min_rel_improvement`` of it, the
stall test's own resolution); otherwise the parameters, the optimizer's state, η, the schedule
and any hook the treatment installed are put back, and a ``"trial"`` event says so (``kept:
False``, with the two losses); a kept one only sets ``kept: True`` and ``trial`` on its own event
in ``events``. Harm that comes later is a spike like any other, rolled back to a good state. The
diagnosis and the readings leave the model as it was (parameters, buffers, flags, gradients,
random states); only a treatment changes anything.

**Cost.** A look reads the signs and sizes of λ_min and λ_max, not a converged spectrum: two
eigenpairs at each end (``k=2``) to a relative tolerance of 1 %, a two-step density probe, on
the first 256 samples of the bounded sample (mini-batch runs; the loss, the gradient norm and so
the verdict come from one gradient on all of it). Its budget: at most ``max_hvp`` products (100)
and ``max_seconds`` (``None``: a tenth of the run's time so far, at least 0.02 s), which bounds
the products at the measured cost of one — but never below 15, enough to leave an escape a
converged direction on the zoo's saddles. Each event records ``n_hvp``, ``seconds`` and its ``budget``.

Every event is a dict with the step, verdict, numbers and action, logged by the Trainer to
``metrics.jsonl`` (lines with an ``"event"`` key), to the progress bar and to the summary; its
``cause`` is one of :data:`CAUSES`, ``evidence`` the values that decided it and ``layers`` the
layers involved (the gradient profile, units per layer) where it is a layer story. After an event
the window starts afresh; after one that changed nothing the doctor waits eight windows before it
looks again (:data:`QUIET`), twice as long each time the same advice comes again. In a plain PyTorch loop call :meth:`StallDoctor.after_step` after each update.

Batches that are not ``(x, y)`` pairs — a language model's ``{"input_ids", "labels", ...}``
dicts — need ``batch_loss=(model, batch) -> mean loss`` (the hook of :mod:`trainlab.curvature`):
the sample loss, the bounded sample, the diagnosis, the escape and the readings all go through
it, and ``loss_fn`` may then be ``None``.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from trainlab import distributed as dist
from trainlab.curvature import analysis_mode, diagnose
from trainlab.curvature.critical import exact_products
from trainlab.curvature.critical import verdict as critical_verdict
from trainlab.curvature.operator import loss_of
from trainlab.data.batches import BatchLoss, batch_size_of
from trainlab.errors import ConfigError
from trainlab.instruments.spike import SPAN as SPIKE_SPAN
from trainlab.instruments.spike import jumped as loss_jumped
from trainlab.state import plain, preserved
from trainlab.train.callbacks import Callback
from trainlab.train.doctor import causes, evidence, treatments
from trainlab.train.doctor.causes import CAUSES, UNITS_REMEDY, Finding
from trainlab.train.doctor.evidence import ADAPTIVE, Evidence, bounded_sample
from trainlab.train.doctor.treatments import Snapshot

__all__ = ["ADAPTIVE", "CAUSES", "Evidence", "Finding", "StallDoctor", "UNITS_REMEDY", "bounded_sample"]

#: Updates after a spike before the doctor looks whether its damage lasted.
SPIKE_DELAY = 5
#: Good states kept in memory for a roll-back.
KEEP = 3
#: The early look for a missing warm-up: the losses since the first updates fell by less than this share.
EARLY_MOVE = 0.05
#: A gradient norm this many times its recent median is a spike whose damage is judged.
GRAD_SPIKE = 10.0
#: Windows without a look after advice (nothing changed): a human must act on it, and saying it again
#: sooner adds nothing; twice as long each time the same advice comes again.
QUIET = 8
#: The least time budget of a look (seconds), whatever the run's elapsed time.
MIN_SECONDS = 0.02
#: Products a look should afford within its time; where a gradient on the bounded sample is too dear
#: for them the look reads the sample's first part (at least LOOK_LEAST samples).
LOOK_PRODUCTS = 15
LOOK_LEAST = 64
#: The most samples a look's curvature reads (of the bounded sample's ``max_samples``).
CURVATURE_SAMPLES = 256
#: A gradient on the whole bounded sample this cheap (seconds) is always afforded.
WHOLE_SECONDS = 0.05
#: Lanczos steps of the look's one density probe: the doctor reads the extremes, not the density.
DENSITY_STEPS = 2
#: The look's Lanczos tolerance, relative to max|λ|: the doctor needs the signs and sizes of the
#: extreme eigenvalues, not a converged spectrum.
LOOK_TOL = 1e-2


class StallDoctor(Callback):
    """Notice a stalled or damaged run, name its cause and treat it safely — the method is the module docstring's.

    A Trainer callback (:meth:`on_step_end`); in a plain loop call :meth:`after_step` after each update.

    Parameters:
        window: updates per mini-batch stall test, an integer ≥ 10 (100): check-ups every
            ``window // 2`` updates compare the trend sample's loss with one a window earlier.
        min_rel_improvement: a stall is a relative loss decrease below this (0.01).
        grad_tol, k, eig_tol, eig_floor: passed to :func:`trainlab.diagnose` (1e-2, 2, 1e-3, 1e-4);
            the look needs the extreme eigenvalues, not a converged spectrum.
        act: apply the first finding's remedy (True); ``False`` only reports it.
        max_samples: the training samples analysed, from the start of the data (2,048).
        perturbation: σ of the random perturbation at a degenerate point (1e-2).
        seed: seed of the diagnosis, the readings and the perturbation (0).
        monitor: a :class:`~trainlab.instruments.Monitor` whose ``latest`` readings are used (``None``:
            one among the Trainer's callbacks, if any; else the doctor measures them).
        full_batch_window: losses per full-batch stall test, an integer ≥ 2 (30).
        crawl: stability below this is a crawl (0.1).
        dead_share: a ``units`` reading at or above this is a finding (0.5).
        batch_ratio: ``batch_over_noise`` below this suggests a larger batch (0.1).
        batch_loss: ``(model, batch) -> mean loss`` for batches that are not ``(x, y)`` pairs
            (``None``: ``loss_fn(model(x), y)``); every loss the doctor evaluates goes through it.
        max_hvp: Hessian-vector products per look, an integer ≥ 10 (100).
        max_seconds: seconds per look (``None``: a tenth of the run's time so far, at least 0.1).
        progress: a mini-batch or full-batch run whose loss fell below this share of its loss after
            the first update is converging: no stall look, only spikes (0.5).
        trial: updates before a treatment is kept or undone (``None``: ``window // 2``, full-batch
            ``full_batch_window // 2``).
        warmup: updates of an imposed warm-up (``None``: ``window``).
        clip_norm: the global gradient norm an exploding run is clipped to (``None``: twice the median
            gradient norm of the updates before the explosion).

    Invalid arguments raise :class:`~trainlab.errors.ConfigError`.

    Returns (each event, also kept in ``self.events``): a dict with ``event`` (``"stall"``, or
    ``"spike"`` for a look a spike triggered, ``"trial"`` for a treatment's verdict), ``verdict``,
    ``cause``, ``evidence``, ``layers``, ``loss``, ``grad_norm``, ``lambda_max``, ``lambda_min``,
    ``negative_curvature``, ``samples``, ``method``, ``n_hvp``, ``seconds``, ``budget``,
    ``full_batch``; ``readings`` (name → ``{"value", "source"}``); ``reading`` and ``remedy`` of the
    finding treated; ``findings`` (each ``{"reading", "value", "remedy", "cause"}``); ``action``,
    ``applied``, ``message``; with a learning-rate change ``lr_before``/``lr_after``, with an escape
    ``loss_after``, ``escape_step``, ``predicted_change``, ``directions``. A ``"trial"`` event has
    ``kept``, ``loss_before``, ``loss_after``. The Trainer adds ``epoch`` and ``step`` when it logs it.
    """
    def __init__(self, window: int = 100, min_rel_improvement: float = 0.01, grad_tol: float = 1e-2,
                 act: bool = True, k: int = 2, max_samples: int = 2048, eig_tol: float = 1e-3, eig_floor: float = 1e-4,
                 perturbation: float = 1e-2, seed: int = 0, *, monitor: Any = None, full_batch_window: int = 30,
                 crawl: float = 0.1, dead_share: float = 0.5, batch_ratio: float = 0.1,
                 batch_loss: BatchLoss | None = None, max_hvp: int = 100, max_seconds: float | None = None,
                 trial: int | None = None, warmup: int | None = None, clip_norm: float | None = None,
                 progress: float = 0.5):
        for name, value, least in (("window", window, 10), ("k", k, 1), ("max_samples", max_samples, 1),
                                   ("full_batch_window", full_batch_window, 2), ("max_hvp", max_hvp, 10),
                                   ("trial", 1 if trial is None else trial, 1),
                                   ("warmup", 2 if warmup is None else warmup, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"StallDoctor: {name}={value!r} is not allowed; expected an integer >= {least}")
        for name, value in (("min_rel_improvement", min_rel_improvement), ("grad_tol", grad_tol),
                            ("eig_tol", eig_tol), ("eig_floor", eig_floor), ("perturbation", perturbation),
                            ("crawl", crawl), ("dead_share", dead_share), ("batch_ratio", batch_ratio),
                            ("progress", progress),
                            ("max_seconds", 1.0 if max_seconds is None else max_seconds),
                            ("clip_norm", 1.0 if clip_norm is None else clip_norm)):
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
        self.max_hvp, self.max_seconds, self.trial, self.clip_norm = max_hvp, max_seconds, trial, clip_norm
        self.warmup = window if warmup is None else warmup
        self.progress = progress
        self.events: list[dict[str, Any]] = []
        self._losses: collections.deque[float] = collections.deque(maxlen=max(window, full_batch_window + 1))
        self._recent: collections.deque[float] = collections.deque(maxlen=SPIKE_SPAN)
        self._steps = 0
        self._quiet_until = 0
        self._changed_at = -1  # the update of the doctor's last change: readings before it are stale
        self._start: float | None = None  # the trend sample's loss after the first update
        self._trend: collections.deque[tuple[int, float]] = collections.deque(maxlen=4)  # (update, trend loss)
        self._trend_limit: int | None = None  # the trend sample's size, and a forward pass's seconds per sample on it
        self._forward_cost: float | None = None
        self._last_cause: str | None = None  # the cause of the last event, and how often in a row it was advice
        self._repeats = 0
        self._marginal: float | None = None  # the trend sample's labels' marginal entropy (0.0: none)
        self._good: collections.deque[Snapshot] = collections.deque(maxlen=KEEP)  # states to roll back to
        self._spike: dict[str, Any] | None = None  # a spike whose damage is yet to be judged
        self._trial: dict[str, Any] | None = None  # a treatment on trial
        self._clip: treatments.Clip | None = None
        self._pending_clip: float | None = None  # a clip a resumed state holds, installed with the optimizer
        self._ramp: list[int] | None = None  # [k, n]: update k of an n-update warm-up
        self._started: float | None = None
        self._norms: collections.deque[float] = collections.deque(maxlen=SPIKE_SPAN)  # ‖g‖ of the last updates
        self._early_norms: list[float] = []  # ‖g‖ of the run's first EARLY updates
        self._early_ratios: list[float] = []  # Adam's update ratio after each of the first EARLY updates
        self._verify = False  # a loaded state's kept model states are checked against the model once
        self._first: Snapshot | None = None  # an adaptive run's state after its first update, for a warm-up

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
                                full_batch=trainer.steps_per_epoch == 1, batch_size=trainer.batch_size,
                                grad_norm=record.get("grad_norm"))
        if event is not None:
            trainer.log_event(event)

    def after_step(self, model: nn.Module, loss_value: float, loss_fn: Any, batch_source: Any,
                   optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, *,
                   full_batch: bool = False, batch_size: int | None = None,
                   grad_norm: float | None = None) -> dict[str, Any] | None:
        """Record one update's loss and gradient norm; on a stall or a damaging spike, diagnose and
        treat; conclude a treatment's trial. Returns the event, if any.

        ``batch_source`` is the training data: a Dataset, a DataLoader or one ``(x, y)``
        batch (with ``batch_loss``: batches of any form, ``loss_fn`` may be ``None``); the first
        ``max_samples`` samples are analysed. With ``optimizer`` (and its
        ``scheduler``) the doctor can also change the learning rate or momentum.
        ``full_batch``: every update saw all the data, so ``loss_value`` is exact and a stall
        needs no confirmation. ``batch_size``: samples per update, for the noise reading.
        ``grad_norm``: the update's gradient norm before clipping (``None``: read from the
        parameters' ``.grad``, which ``optimizer.step()`` leaves in place; no reading where they are gone).
        """
        if loss_fn is None and self.batch_loss is None:
            raise ConfigError("StallDoctor.after_step: loss_fn is None; pass the loss function (outputs, targets) ->"
                              " mean loss, or build the StallDoctor with batch_loss=(model, batch) -> mean loss")
        if self._started is None:
            self._started = time.perf_counter()
        if self._verify:
            self._check_model(model)
        if self._pending_clip is not None and optimizer is not None:
            self._clip, self._pending_clip = treatments.Clip(optimizer, self._pending_clip), None
        self._steps += 1
        loss = float(loss_value)
        g = self._grad_norm(model, grad_norm)
        self._early(optimizer, g)
        self._ramp_on(optimizer, scheduler)
        spiked = self._spiked(loss, g)
        self._losses.append(loss)
        self._recent.append(loss)
        if g is not None:
            self._norms.append(g)
        if self._steps == 1 and optimizer is not None and evidence.adaptive(optimizer):
            self._first = Snapshot(model, optimizer, scheduler, 1)  # before the early steps did their harm
        patient = (model, loss_fn, batch_source, optimizer, scheduler, full_batch, batch_size)
        if self._trial is not None:
            # a treatment on trial ends early when the run blows up under it (a non-finite loss, an
            # exploded gradient): judged now, it is undone if the sample loss is worse
            if self._steps >= self._trial["until"] or (spiked and spiked["judge_at"] <= self._steps):
                return self._record(self._conclude(model, loss_fn, batch_source, optimizer, scheduler))
            return None  # no other look while a treatment is on trial
        if spiked and self._spike is None:
            self._spike = spiked
        elif spiked:
            self._escalate(spiked)
        checkup = self._steps == 1 or self._steps % max(1, self.window // 2) == 0
        if checkup and self._spike is None and math.isfinite(loss):
            self._good.append(Snapshot(model, optimizer, scheduler, self._steps))
        if self._spike is not None and self._steps < self._quiet_until and self._spike["judge_at"] > self._spike["step"]:
            self._spike = None  # after advice, only a spike judged at once (non-finite, exploded) is looked at
        if self._spike is not None and self._steps >= self._spike["judge_at"]:
            return self._record(self._after_spike(*patient))
        if self._steps < self._quiet_until:
            return None
        if self._steps == evidence.EARLY + self.window // 2 and self._early_warmup_due(model, loss_fn, batch_source,
                                                                                        optimizer):
            return self._record(self._treat(*patient))
        if full_batch:
            if not self._full_batch_stalled():
                return None
        elif not (checkup and self._checkup(model, loss_fn, batch_source, batch_size)):
            return None
        return self._record(self._treat(*patient))

    def _record(self, event: dict[str, Any] | None) -> dict[str, Any] | None:
        """After an event: the window starts afresh; a change makes older readings stale; after
        one that changed nothing the doctor waits :data:`QUIET` windows (twice as long for the same advice again)."""
        if event is None:
            return None
        self._losses.clear()
        self._trend.clear()
        if event["applied"] or event["event"] == "trial":
            self._changed_at = self._steps
        if not event["applied"]:
            # advice said again only after twice as long each time the same cause is found unchanged
            self._repeats = self._repeats + 1 if event.get("cause") == self._last_cause else 0
            self._quiet_until = self._steps + QUIET * 2 ** min(self._repeats, 10) * (
                self.full_batch_window if event.get("full_batch") else self.window)
        self._last_cause = event.get("cause")
        self.events.append(event)
        return event

    def state_dict(self) -> dict[str, Any]:
        """The doctor's memory for a checkpoint, tensors and plain values only (the Trainer saves it
        with the model; ``torch.load(weights_only=True)`` reads it back): the window's losses and
        gradient norms, updates seen, the quiet period, the check-ups' trend losses, the run's start (its
        first gradient norms and update ratios, the state after its first update), the good states
        kept for a roll-back, a spike being judged, a treatment on trial (with the state it would
        put back), the clipping and warm-up in force."""
        trial = None
        if self._trial is not None:
            t = self._trial
            trial = {"until": t["until"], "updates": t["updates"], "before": t["before"], "limit": t.get("limit"),
                     "snapshot": t["snapshot"].state(), "event": _plain_event(t["event"])}
        return {"losses": list(self._losses), "steps": self._steps, "quiet_until": self._quiet_until,
                "changed_at": self._changed_at, "start": self._start, "trend": [list(t) for t in self._trend],
                "last_cause": self._last_cause, "repeats": self._repeats, "trend_limit": self._trend_limit,
                "forward_cost": self._forward_cost,
                "events": len(self.events), "recent": list(self._recent), "norms": list(self._norms),
                "early_norms": list(self._early_norms), "early_ratios": list(self._early_ratios),
                "good": [g.state() for g in self._good], "first": None if self._first is None else self._first.state(),
                "spike": None if self._spike is None else dict(self._spike), "trial": trial,
                "clip": self._clip.max_norm if self._clip is not None else self._pending_clip,
                "ramp": None if self._ramp is None else list(self._ramp)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` saved, so a resumed run watches as an uninterrupted one
        (a clipping in force is put back on the optimizer at the next update; the kept states are
        checked against the model then, or at the Trainer's start).
        A state that is not one (losses that are not numbers, counts that are not integers, a kept
        state without tensors) is a ``TypeError``/``ValueError`` naming the entry, raised before
        anything is taken."""
        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def short(v: Any) -> str:
            text = repr(v)
            return text if len(text) <= 60 else text[:59] + "…"

        losses, trend, start = state["losses"], state.get("trend") or [], state.get("start")
        if not isinstance(losses, (list, tuple)) or not all(number(v) for v in losses):
            raise TypeError(f"losses {short(losses)} is not a list of numbers")
        for key in ("recent", "norms", "early_norms", "early_ratios"):
            values = state.get(key) or []
            if not isinstance(values, (list, tuple)) or not all(number(v) for v in values):
                raise TypeError(f"{key} {short(values)} is not a list of numbers")
        counts = {key: state[key] for key in ("steps", "quiet_until")}
        counts["changed_at"] = state.get("changed_at", -1)
        for key, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{key} {value!r} is not an update count")
        if not isinstance(trend, (list, tuple)) or not all(
                isinstance(t, (list, tuple)) and len(t) == 2 and isinstance(t[0], int) and not isinstance(t[0], bool)
                and number(t[1]) for t in trend):
            raise TypeError(f"trend {short(trend)} is not a list of pairs (update, loss)")
        if start is not None and not number(start):
            raise TypeError(f"start {short(start)} is not a loss")
        last_cause, repeats = state.get("last_cause"), state.get("repeats", 0)
        if last_cause is not None and not isinstance(last_cause, str):
            raise TypeError(f"last_cause {short(last_cause)} is not a cause")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 0:
            raise TypeError(f"repeats {short(repeats)} is not a count")
        trend_limit, forward_cost = state.get("trend_limit"), state.get("forward_cost")
        if trend_limit is not None and (isinstance(trend_limit, bool) or not isinstance(trend_limit, int)
                                        or trend_limit < 1):
            raise TypeError(f"trend_limit {short(trend_limit)} is not a sample count")
        if forward_cost is not None and not (number(forward_cost) and forward_cost >= 0):
            raise TypeError(f"forward_cost {short(forward_cost)} is not a number of seconds")
        good = [Snapshot.from_state(g, f"good[{i}]") for i, g in enumerate(state.get("good") or [])]
        first = None if state.get("first") is None else Snapshot.from_state(state["first"], "first")
        trial = state.get("trial")
        if trial is not None:
            if not (isinstance(trial, dict) and isinstance(trial.get("event"), dict) and number(trial.get("before"))):
                raise TypeError(f"trial {short(trial)} is not a treatment on trial")
            trial = {**trial, "snapshot": Snapshot.from_state(trial.get("snapshot"), "trial snapshot")}
            if trial.get("limit") is not None and (
                    isinstance(trial["limit"], bool) or not isinstance(trial["limit"], int) or trial["limit"] < 1):
                raise TypeError(f"trial limit {short(trial['limit'])} is not a sample count")
        spike, clip, ramp = state.get("spike"), state.get("clip"), state.get("ramp")
        if spike is not None and not (isinstance(spike, dict) and isinstance(spike.get("step"), int)):
            raise TypeError(f"spike {short(spike)} is not a spike being judged")
        if clip is not None and not (number(clip) and clip > 0):
            raise ValueError(f"clip {clip!r} is not a gradient norm > 0")
        if ramp is not None and not (isinstance(ramp, (list, tuple)) and len(ramp) == 2
                                     and all(isinstance(v, int) for v in ramp)):
            raise TypeError(f"ramp {short(ramp)} is not a pair (update, updates)")
        self._losses.clear()
        self._losses.extend(float(v) for v in losses)
        self._recent.clear()
        self._recent.extend(float(v) for v in state.get("recent") or [])
        self._norms.clear()
        self._norms.extend(float(v) for v in state.get("norms") or [])
        self._early_norms = [float(v) for v in state.get("early_norms") or []]
        self._early_ratios = [float(v) for v in state.get("early_ratios") or []]
        self._steps, self._quiet_until, self._changed_at = counts["steps"], counts["quiet_until"], counts["changed_at"]
        self._trend.clear()
        self._trend.extend((int(t[0]), float(t[1])) for t in trend)
        self._start = None if start is None else float(start)
        self._last_cause, self._repeats = last_cause, repeats
        self._trend_limit, self._forward_cost = trend_limit, forward_cost
        self._good.clear()
        self._good.extend(good)
        self._first, self._trial, self._spike = first, trial, None if spike is None else dict(spike)
        if self._clip is not None:
            self._clip.remove()
            self._clip = None
        self._pending_clip = None if clip is None else float(clip)
        self._ramp = None if ramp is None else list(ramp)
        self._verify = bool(good or first or trial)

    def on_fit_start(self, trainer: Any) -> None:
        """A resumed Trainer: the kept states must be of its model (checked before any update)."""
        if self._verify:
            self._check_model(trainer.module)

    def _check_model(self, model: nn.Module) -> None:
        """Refuse kept states (a roll-back's, a trial's) of another model, in one sentence."""
        kept = list(self._good) + [s for s in (self._first, (self._trial or {}).get("snapshot")) if s is not None]
        for snap in kept:
            wrong = snap.mismatch(model)
            if wrong is not None:
                raise ConfigError(f"StallDoctor: the loaded state keeps states of another model (it holds {wrong});"
                                  " load a state saved with this model, or build a fresh StallDoctor")
        self._verify = False

    # ---------------------------------------------------------------- noticing a stall
    def _full_batch_stalled(self) -> bool:
        """Exact losses: the last ``full_batch_window`` updates fell by less than ``min_rel_improvement``."""
        n = self.full_batch_window
        if len(self._losses) <= n:
            return False
        before, after = self._losses[-n - 1], self._losses[-1]
        if self._start is None or not math.isfinite(self._start):
            self._start = self._losses[0]
        failing = after >= self.progress * self._start  # a run that cut its loss by 1/progress is converging
        return failing and before - after < self.min_rel_improvement * abs(before)

    def _checkup(self, model: nn.Module, loss_fn: Any, batch_source: Any, batch_size: int | None) -> bool:
        """A mini-batch run's check-up (at update 1 and every ``window // 2``): the loss on the trend
        sample (the first ``4 × batch`` samples, 64 to 512, of the bounded sample: the same samples
        each time, so two check-ups differ by what training did, not by which samples were drawn).
        A look is due when the run is *failing* — its loss at or above the labels' marginal
        entropy (no better than predicting the label frequencies), or above ``progress`` times its
        loss after the first update — and it fell by less than ``min_rel_improvement`` since the
        check-up one window ago (by less than :data:`EARLY_MOVE` at or above the marginal; above
        twice the marginal, a model far worse than the label frequencies, the look is due at once). A run that has cut its loss by more than ``1/progress`` is training: its slowing down is
        convergence, and only a spike draws a look. Onset to event: at most one window."""
        limit = min(self.max_samples, max(64, min(512, 4 * (batch_size or 16))))
        tick = time.perf_counter()
        now = self._sample_loss(model, loss_fn, batch_source, limit)
        self._trend_limit, self._forward_cost = limit, (time.perf_counter() - tick) / limit
        if not math.isfinite(now):
            return False  # a non-finite loss is the spike detector's
        if self._start is None:
            self._start = now
        if self._marginal is None:
            with analysis_mode(model, "eval"):
                self._marginal = evidence.marginal_entropy(bounded_sample(batch_source, limit, self.batch_loss)) or 0.0
        self._trend.append((self._steps, now))
        earlier = [loss for step, loss in self._trend if step <= self._steps - self.window + 1]
        # at the marginal entropy or above it: no better than predicting the label frequencies
        unlearned = self._marginal > 0 and now >= (1 - evidence.MARGINAL_TOL) * self._marginal
        if not earlier or not (unlearned or now >= self.progress * self._start):
            return False
        then = earlier[-1]
        if now > 2 * self._marginal > 0:
            return True  # far worse than predicting the label frequencies (raw wine features: 185 against 1.09)
        # at the marginal, a fall below EARLY_MOVE is a stall too (shuffled labels memorised:
        # 2.30 → 2.26 in a window); a healthy LM leaves the marginal faster (the tiny post-LN LM
        # with warm-up: 3.40 → 3.17 in 60 updates)
        return then - now < (EARLY_MOVE if unlearned else self.min_rel_improvement) * abs(then)

    def _early_warmup_due(self, model: nn.Module, loss_fn: Any, batch_source: Any, optimizer: Any) -> bool:
        """Half a window after the run's first updates, one early look for a missing warm-up — its
        onset is the first few updates, and waiting for a stall (a window and its confirmation)
        would let it waste 150: an adaptive run whose first steps were too large
        (:data:`~evidence.UPDATE_RATIO`), whose losses since barely moved (by less than
        :data:`EARLY_MOVE`, with the stall test's noise allowance: a healthy run passes through the
        marginal entropy quickly — the post-LN LM with a warm-up, 3.64 → 3.01 over updates 50–100 —
        the failing one fell 1.8 % over updates 6–55), and whose sample loss sits at the labels'
        marginal entropy. Costs one loss on the bounded sample, once."""
        if (optimizer is None or not evidence.adaptive(optimizer) or not self._early_ratios
                or evidence.median(self._early_ratios) <= evidence.UPDATE_RATIO
                or not self._stalled(self.window // 2, EARLY_MOVE)):
            return False
        limit = self._trend_limit or self.max_samples  # the check-ups' sample: enough to tell 3.4 from 2
        with analysis_mode(model, "eval"):
            marginal = evidence.marginal_entropy(bounded_sample(batch_source, limit, self.batch_loss))
        if not marginal:
            return False
        return abs(self._sample_loss(model, loss_fn, batch_source, limit) - marginal) <= evidence.MARGINAL_TOL * marginal

    def _stalled(self, n: int | None = None, rel: float | None = None) -> bool:
        """Stalled when even the optimistic end of the improvement over the last ``n`` losses
        (``window``) — the difference of the halves' means plus two standard errors — is below
        ``rel`` (``min_rel_improvement``): mini-batch noise can hide a stall, but never fake one."""
        n, rel = n or self.window, rel or self.min_rel_improvement
        losses = list(self._losses)[-n:]
        half = n // 2
        (before, var_before), (after, var_after) = _mean_var(losses[:half]), _mean_var(losses[-half:])
        error = math.sqrt((var_before + var_after) / half)
        return (before - after) + 2 * error < rel * abs(before)

    @torch.no_grad()
    def _sample_loss(self, model: nn.Module, loss_fn: Any, batch_source: Any, limit: int | None = None) -> float:
        """The mean loss on the bounded sample; under ``torch.distributed`` the sample-weighted
        mean over every rank's sample, so all ranks confirm (and so diagnose, whose products are
        collective) at the same update — a rank that decided alone would wait for the others forever."""
        with analysis_mode(model, "eval"):  # also undoes the random draws of a shuffling DataLoader
            sample = bounded_sample(batch_source, limit or self.max_samples, self.batch_loss)
            with torch.no_grad():  # the user's errors named as the analyses name them (a tuple output, a bad label)
                loss = loss_of(model, loss_fn, sample, self.batch_loss)
            if not dist.active():
                return float(loss)
            n = float(batch_size_of(sample))
            both = dist.all_reduce_sum(torch.tensor([float(loss) * n, n], dtype=torch.float64,
                                                    device=dist.device()))
            return float(both[0] / both[1])

    # ---------------------------------------------------------------- a spike
    def _grad_norm(self, model: nn.Module, given: float | None) -> float | None:
        """The update's gradient norm before any clipping: ``given`` (the Trainer's record), the
        doctor's clip hook's reading, else one reduction over the parameters' ``.grad``."""
        if given is not None:
            return float(given)
        if self._clip is not None and self._clip.last_norm is not None:
            g, self._clip.last_norm = self._clip.last_norm, None
            return g
        return evidence.grad_norm_of(model)

    def _early(self, optimizer: Any, g: float | None) -> None:
        """The run's start: ``‖g‖`` and Adam's update ratio over its first :data:`~evidence.EARLY` updates."""
        if self._steps > evidence.EARLY:
            return
        if g is not None and math.isfinite(g):
            self._early_norms.append(g)
        if optimizer is not None and evidence.adaptive(optimizer):
            r = evidence.update_ratio(optimizer)
            if r is not None:
                self._early_ratios.append(r)

    def _spiked(self, loss: float, g: float | None = None) -> dict[str, Any] | None:
        """A loss that is not finite or far above the recent range, or a gradient norm not finite or
        :data:`GRAD_SPIKE` times its recent median (module docstring)."""
        recent = list(self._recent)
        finite = [v for v in recent if math.isfinite(v)]
        norms = [v for v in self._norms if math.isfinite(v)]
        m = evidence.median(norms) if len(norms) >= SPIKE_SPAN // 2 else None
        ratio = None if g is None or m is None or not m > 0 else (g / m if math.isfinite(g) else math.inf)
        if not finite or (len(recent) < SPIKE_SPAN // 2 and math.isfinite(loss) and ratio is None):
            return None
        high = max(finite)
        jumped = loss_jumped(recent, loss)  # the rule the Monitor shares (trainlab.instruments.spike)
        burst = ratio is not None and ratio >= GRAD_SPIKE
        if not (jumped or burst):
            return None
        # an exploded gradient or a non-finite loss has done its damage with this very update: judged at once
        now = not math.isfinite(loss) or (ratio is not None and ratio >= causes.EXPLODE)
        return {"step": self._steps, "loss": loss, "high": high, "grad_norm": g, "grad_median": m,
                "grad_ratio": ratio, "grad_first": burst and not jumped,
                "judge_at": self._steps + (0 if now else SPIKE_DELAY)}

    def _escalate(self, spiked: dict[str, Any]) -> None:
        """A second spike while one is being judged: the larger gradient burst is kept, and one
        that must be judged at once makes the judgement now (the first spike's origin stays)."""
        s = self._spike
        s["judge_at"] = min(s["judge_at"], spiked["judge_at"])
        if spiked["grad_ratio"] is not None and spiked["grad_ratio"] > (s["grad_ratio"] or 0.0):
            s["grad_norm"], s["grad_ratio"] = spiked["grad_norm"], spiked["grad_ratio"]

    def _after_spike(self, model: nn.Module, loss_fn: Any, batch_source: Any, optimizer: Any, scheduler: Any,
                     full_batch: bool, batch_size: int | None) -> dict[str, Any] | None:
        """Five updates after a spike: did its damage last? Then look now, with the good state at hand."""
        spike, self._spike = self._spike, None
        kept = [g for g in self._good if g.step < spike["step"]]
        if not kept or optimizer is None:
            return None
        now = self._sample_loss(model, loss_fn, batch_source)
        for g in kept:
            if g.loss is None:
                with preserved(model):
                    g.restore(model)
                    g.loss = self._sample_loss(model, loss_fn, batch_source)
        good = min(kept, key=lambda g: g.loss if math.isfinite(g.loss) else math.inf)  # the best state kept
        if math.isfinite(now) and now <= good.loss * (1 + 2 * self.min_rel_improvement):
            return None  # the run recovered by itself
        spike["loss_now"] = now
        return self._treat(model, loss_fn, batch_source, optimizer, scheduler, full_batch, batch_size, spike, good)

    # ---------------------------------------------------------------- treatments that need the doctor
    def perturb(self, model: nn.Module) -> dict[str, Any]:
        """The degenerate point's perturbation, seeded by the doctor's seed and the update."""
        return treatments.perturb(model, self.perturbation, self.seed + self._steps)

    def install_clip(self, optimizer: Any, max_norm: float, good: Snapshot | None = None,
                     scheduler: Any = None, model: nn.Module | None = None) -> dict[str, Any]:
        """Clip every later update's gradients to global norm ``max_norm`` (one step pre-hook,
        removed on undo); with ``good`` (an explosion that already damaged the net) first roll the
        model and the optimizer back to that state, η unchanged."""
        back = {}
        if good is not None and model is not None:
            back = treatments.roll_back(model, optimizer, scheduler, good, 1.0)
        if self._clip is not None:
            self._clip.remove()
        self._clip = treatments.Clip(optimizer, max_norm)
        undo = f"rolled back to update {good.step}, " if back else ""
        return {"action": f"{'roll back to update %d, ' % good.step if back else ''}clip gradients: global norm"
                          f" ≤ {max_norm:.3g}", "applied": True, "clip_norm": max_norm,
                **({"rolled_back_to": good.step} if back else {}),
                "message": f"exploding gradients: {undo}every update's gradient clipped to global norm"
                           f" {max_norm:.3g} — applied"}

    def start_warmup(self, optimizer: Any, scheduler: Any, n: int, model: nn.Module | None = None) -> dict[str, Any]:
        """Back to the state after the run's first update (with ``model``, where the doctor kept it:
        the early steps wrecked what came after), reset the optimizer's moments, ``η ← η/n``, then
        ramp back to ``η`` over ``n`` updates.

        Why back: on the post-LN char LM (Adam η = 1e-2, stuck at the unigram entropy 3.36) a
        warm-up from the stuck state at update 160 leaves it there (3.36 after 440 more updates),
        while the same warm-up from the state after update 1 learns (2.10 after 300 updates)."""
        before = float(optimizer.param_groups[0]["lr"])
        back = model is not None and self._first is not None
        if back:
            now = [{k: g[k] for k in ("lr", "initial_lr") if k in g} for g in optimizer.param_groups]
            self._first.restore(model, optimizer)
            for g, kept in zip(optimizer.param_groups, now):  # η stays today's: the ramp starts from it
                g.update(kept)
        treatments.reset_state(optimizer)
        treatments.scale_lr(optimizer, scheduler, 1 / n)
        self._ramp = [1, n]
        undo = "back to the state after update 1, " if back else ""
        return {"action": f"warm-up: {undo}optimizer state reset, η {before:.3g} → {before / n:.3g}, ramped back"
                          f" over {n} updates", "applied": True, "lr_before": before, "lr_after": before / n,
                **({"rolled_back_to": 1} if back else {}),
                "message": f"a missing warm-up: {undo}the optimizer's moments reset and η ramped from"
                           f" {before / n:.3g} back to {before:.3g} over {n} updates — applied"}

    def _ramp_on(self, optimizer: Any, scheduler: Any) -> None:
        """One step of an imposed warm-up: ``η_k = k η / n``."""
        if self._ramp is None or optimizer is None:
            return
        k, n = self._ramp
        treatments.scale_lr(optimizer, scheduler, (k + 1) / k)
        self._ramp = None if k + 1 >= n else [k + 1, n]

    # ---------------------------------------------------------------- never harm
    def _start_trial(self, event: dict[str, Any], before: float, snapshot: Snapshot, full_batch: bool,
                     limit: int | None = None) -> None:
        n = self.trial or max(1, (self.full_batch_window if full_batch else self.window) // 2)
        self._trial = {"until": self._steps + n, "updates": n, "before": before, "snapshot": snapshot, "event": event,
                       "limit": limit}

    def _conclude(self, model: nn.Module, loss_fn: Any, batch_source: Any, optimizer: Any,
                  scheduler: Any) -> dict[str, Any]:
        """Keep the treatment if the sample loss is no worse than before it; else undo it all."""
        started = time.perf_counter()
        trial, self._trial = self._trial, None
        first, before = trial["event"], trial["before"]
        after = self._sample_loss(model, loss_fn, batch_source, trial.get("limit"))
        # no worse: within min_rel_improvement of before, the resolution of the stall test itself
        kept = math.isfinite(after) and after <= before + self.min_rel_improvement * abs(before)
        if not kept:
            trial["snapshot"].restore(model, optimizer, scheduler)
            if self._clip is not None:
                self._clip.remove()
                self._clip = None
            self._ramp = None
        why = (f"the sample loss {before:.4g} → {after:.4g} after {trial['updates']} updates"
               + (": kept" if kept else ", worse: undone (parameters, optimizer state, η and hooks put back)"))
        first.update(kept=kept, trial={"updates": trial["updates"], "loss_before": before, "loss_after": after})
        if kept:  # said in its own event (kept: True), not once more — after a resume too, as uninterrupted
            return None
        # the look's own numbers stay (what was treated), the trial's verdict on top
        return {**first, "event": "trial", "action": "kept" if kept else "undone", "applied": kept, "kept": kept,
                "loss_before": before, "loss_after": after, "trial_updates": trial["updates"], "n_hvp": 0,
                "seconds": time.perf_counter() - started,
                "message": f"{first['cause']} treatment ({first['action']}): {why}"}

    # ---------------------------------------------------------------- diagnosis and treatment
    def _seconds(self) -> float:
        """A look's time: ``max_seconds``, else a tenth of the run so far, at least :data:`MIN_SECONDS`."""
        elapsed = 0.0 if self._started is None else time.perf_counter() - self._started
        return self.max_seconds if self.max_seconds is not None else max(MIN_SECONDS, 0.1 * elapsed)

    def _look_limit(self, full_batch: bool) -> int:
        """The samples a look's loss, gradient and trial read: the bounded sample's ``max_samples``,
        fewer where one gradient on them (three forward passes, at the check-ups' measured cost)
        would take more than a quarter of the look's time and more than :data:`WHOLE_SECONDS` —
        never fewer than the check-ups' trend sample, on which the stall itself was seen. A
        full-batch or distributed run reads them all. (A cheap model keeps them all: whether a
        point is critical is read from the gradient, whose sampling noise fewer samples raise.)

        Why: 2,048 sequences are 64 of a language model's batches; one gradient on them cost the
        post-LN LM's look 0.6 s of a 16-s run."""
        if full_batch or dist.active() or not self._forward_cost or not self._trend_limit:
            return self.max_samples
        fits = int(max(self._seconds() / 4, WHOLE_SECONDS) / (3 * self._forward_cost))
        return min(self.max_samples, max(self._trend_limit, fits))

    def _budget(self, seconds_per_gradient: float) -> tuple[int, float]:
        """Products and seconds for one look: ``max_hvp`` and ``max_seconds`` (a tenth of the run so
        far, at least :data:`MIN_SECONDS`), the products also bounded by that time at two gradients
        each, but never below :data:`LOOK_PRODUCTS` (10 left λ_min's eigenvector of the zoo's
        full-batch saddle unconverged, and an escape needs it)."""
        seconds = self._seconds()
        affordable = int(seconds / max(2 * seconds_per_gradient, 1e-9))
        return max(min(LOOK_PRODUCTS, self.max_hvp), min(self.max_hvp, affordable)), seconds

    def _affordable(self, sample: Any, seconds_per_gradient: float, max_hvp: int,
                    max_seconds: float) -> tuple[Any, int]:
        """The look's curvature sample and its products: the first :data:`CURVATURE_SAMPLES` of the
        bounded sample, fewer where :data:`LOOK_PRODUCTS` products on them would not fit the
        look's time (a Transformer's sequences), never below :data:`LOOK_LEAST`; the products that
        fit then. Under ``torch.distributed`` the whole sample (every rank must read the same way);
        in a full-batch run too (each update sees all the data: so must η·λ_max, near its threshold 2).

        Why a part: a Hessian-vector product costs what two gradients on its samples cost, and
        the signs of λ_min and λ_max settle on a few hundred samples — 2,048 made one look on the
        digits MLP cost as much as 2,000 of its updates."""
        n = batch_size_of(sample)
        if dist.active() or n <= LOOK_LEAST:
            return sample, max_hvp
        per_sample = 2 * seconds_per_gradient / n  # one product, per sample
        m = min(n, CURVATURE_SAMPLES, max(LOOK_LEAST, int(max_seconds / (LOOK_PRODUCTS * max(per_sample, 1e-12)))))
        if m >= n:
            return sample, max_hvp
        affordable = int(max_seconds / max(per_sample * m, 1e-9))
        least = min(LOOK_PRODUCTS, self.max_hvp)
        return bounded_sample(sample, m, self.batch_loss), max(least, min(self.max_hvp, affordable))

    @staticmethod
    def _on_whole(d: Any, loss: float, grad_norm: float) -> Any:
        """The diagnosis with its loss, gradient norm and verdict those of the whole bounded sample
        (its curvature stays that of the look's part): whether the point is critical is the
        whole sample's question — a part's gradient carries its sampling noise (a zero
        initialisation's saddle reads ‖∇L‖ = 0.023 on 512 of its 1,438 samples, above grad_tol)."""
        positive = bool((d.eigenvalues > d.flat_threshold).any())
        return dataclasses.replace(d, loss=loss, grad_norm=grad_norm,
                                   verdict=critical_verdict(grad_norm, positive, d.negative_curvature, d.grad_tol))

    def _treat(self, model: nn.Module, loss_fn: Any, batch_source: Any, optimizer: Any, scheduler: Any,
               full_batch: bool = False, batch_size: int | None = None, spike: dict[str, Any] | None = None,
               good: Snapshot | None = None) -> dict[str, Any]:
        started = time.perf_counter()
        # The diagnosis and the readings leave no trace: diagnose() restores the model itself, and
        # preserved() also undoes the random draws of a shuffling DataLoader. Only a remedy may act.
        with preserved(model, parameters=False):
            limit = self._look_limit(full_batch)
            whole = bounded_sample(batch_source, limit, self.batch_loss)
            tick = time.perf_counter()
            whole_loss, whole_grad, layers = evidence.gradient_profile(model, loss_fn, whole, self.batch_loss)
            per_gradient = time.perf_counter() - tick
            max_hvp, max_seconds = self._budget(per_gradient)
            sample, max_hvp = (whole, max_hvp) if full_batch else self._affordable(whole, per_gradient, max_hvp,
                                                                                   max_seconds)
            n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            if n_params <= 2 * LOOK_PRODUCTS and exact_products(n_params) <= self.max_hvp:
                # a Hessian this small is read exactly, in n products (and a few to time them) — about
                # what a look spends anyway
                max_hvp = max(max_hvp, exact_products(n_params))
            d = self._decided_cheaply(whole, optimizer, spike, whole_loss, whole_grad)
            found = {}
            if d is None:
                d = self._diagnose(model, loss_fn, sample, max_hvp, max_seconds, spike)
                if sample is not whole and math.isfinite(whole_grad):
                    d = self._on_whole(d, whole_loss, whole_grad)
                found = self._readings(model, loss_fn, sample, optimizer, d, full_batch, batch_size)
        ev = Evidence(model, loss_fn, whole, optimizer, scheduler, d, found, self, full_batch, batch_size,
                      evidence.data_size(batch_source), layers, evidence.marginal_entropy(whole),
                      evidence.update_ratio(optimizer), evidence.feature_spread(whole), spike, good,
                      list(self._norms), evidence.median(self._early_norms) if self._early_norms else None,
                      evidence.median(self._early_ratios) if self._early_ratios else None,
                      evidence.saturation(model, loss_fn, whole, self.batch_loss), evidence.weight_norms(model))
        event = {"event": "spike" if spike else "stall", "verdict": d.verdict, "loss": d.loss,
                 "grad_norm": d.grad_norm, "lambda_max": ev.lam_max, "lambda_min": ev.lam_min,
                 "negative_curvature": d.negative_curvature, "samples": batch_size_of(sample), "method": d.method,
                 "n_hvp": d.n_hvp, "seconds": None, "budget": {"max_hvp": max_hvp, "max_seconds": max_seconds},
                 "full_batch": full_batch, "marginal_entropy": ev.marginal,
                 "readings": {name: {"value": r["value"], "source": r["source"]} for name, r in found.items()},
                 "applied": False}
        findings = causes.findings(ev)
        first = findings[0]
        event.update(reading=first.reading, remedy=first.remedy, cause=first.cause, evidence=first.evidence,
                     layers=first.layers,
                     findings=[{"reading": f.reading, "value": f.value, "remedy": f.remedy, "cause": f.cause}
                               for f in findings])
        if first.apply is None:
            event.update(action="none", message=first.remedy)
        elif not self.act:
            event.update(action=f"{first.reading}: {first.remedy} (not applied)",
                         message=f"{first.remedy} (act=False)")
        else:
            before = spike["loss_now"] if spike else float(d.loss)
            snapshot = Snapshot(model, optimizer, scheduler, self._steps)
            try:
                event.update(first.apply())
            except Exception as error:  # noqa: BLE001 — a treatment that fails is undone and said, never a crash
                snapshot.restore(model, optimizer, scheduler)
                event.update(action="none", applied=False,
                             message=f"{first.remedy} — not applied: {str(error).splitlines()[0] if str(error) else type(error).__name__}")
            if event["applied"]:  # judged on the sample the loss before was read on
                self._start_trial(event, before, snapshot, full_batch, None if spike else limit)
                event["kept"] = None  # decided by the trial
        also = [f"{f.reading}: {f.remedy}" for f in findings[1:]]
        if also:
            event["message"] += "; also " + "; ".join(also)
        event["seconds"] = time.perf_counter() - started
        return event

    def _decided_cheaply(self, sample: Any, optimizer: Any, spike: dict[str, Any] | None, now: float,
                         grad: float) -> Any:
        """Where the cheap readings already name the cause, no curvature is read: a gradient that
        burst :data:`~causes.EXPLODE`-fold, or an adaptive run whose
        first steps were too large and whose loss sits at the labels' marginal entropy. Returns a
        diagnosis without curvature (``method="none"``, ``n_hvp=0``), else ``None``. On the post-LN
        char LM this look costs a gradient and a loss instead of 67-128 s of products and readings."""
        loss = None
        if spike is not None and (spike.get("grad_ratio") or 0.0) >= causes.EXPLODE:
            loss = spike["loss_now"]
        elif (spike is None and optimizer is not None and evidence.adaptive(optimizer) and self._early_ratios
              and evidence.median(self._early_ratios) > evidence.UPDATE_RATIO):
            marginal = evidence.marginal_entropy(sample)
            if marginal and abs(now - marginal) <= evidence.MARGINAL_TOL * marginal:
                loss = now
        if loss is None:
            return None
        return SimpleNamespace(verdict="not_critical", loss=loss, grad_norm=grad, negative_curvature=False,
                               eigenvalues=torch.tensor([math.nan, math.nan]), method="none", n_hvp=0)

    def _diagnose(self, model: nn.Module, loss_fn: Any, sample: Any, max_hvp: int, max_seconds: float,
                  spike: dict[str, Any] | None) -> Any:
        """:func:`trainlab.diagnose` within the look's budget (the density gets few products: the
        doctor needs the extreme eigenvalues); a net a spike left non-finite gets no diagnosis."""
        if spike is not None and not math.isfinite(spike["loss_now"]):
            return SimpleNamespace(verdict="not_critical", loss=spike["loss_now"], grad_norm=math.nan,
                                   eigenvalues=torch.tensor([math.nan, math.nan]), negative_curvature=False,
                                   method="none", n_hvp=0)
        # progress=False: the Trainer's own bar is on screen, and a second one would tear it
        return diagnose(model, loss_fn, sample, grad_tol=self.grad_tol, eig_tol=self.eig_tol,
                        eig_floor=self.eig_floor, k=self.k, seed=self.seed, progress=False, probes=1, steps=DENSITY_STEPS,
                        tol=LOOK_TOL,
                        max_hvp=max_hvp, max_seconds=max_seconds, batch_loss=self.batch_loss)

    def _stale_before(self) -> int:
        """A Monitor's reading counts only when taken after this update: after the doctor's last
        change and within the last window (a units share read at update 1 says nothing of a net a
        spike killed at update 41)."""
        return max(self._changed_at, self._steps - self.window)

    def _readings(self, model: nn.Module, loss_fn: Any, sample: Any, optimizer: Any, d: Any, full_batch: bool,
                  batch_size: int | None) -> dict[str, dict[str, Any]]:
        """The readings of :func:`evidence.readings` with the doctor's monitor, last change and seed."""
        return evidence.readings(self.monitor, self._stale_before(), model, loss_fn, sample, self.batch_loss, optimizer,
                                 d, full_batch, batch_size, self._steps, self.seed)


def _plain_event(event: dict[str, Any]) -> dict[str, Any]:
    """An event with only what a checkpoint can hold (tensors, numbers, strings, lists, dicts)."""
    kept = {}
    for key, value in event.items():
        try:
            kept[key] = plain(value)
        except ConfigError:
            continue
    return kept


def _mean_var(values: list[float]) -> tuple[float, float]:
    """Mean and sample variance, in plain Python (``statistics`` is exact but slow)."""
    n = len(values)
    mean = sum(values) / n
    return mean, sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
