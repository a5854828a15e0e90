"""The stall doctor: notice a stalled run while it trains, say why, and get it moving.

A *stall*: over ``window`` updates the loss fell by less than ``min_rel_improvement`` of its
value. The mini-batch losses raise the suspicion — the mean of the window's first half against
its second half, with two standard errors of slack — and the loss on the bounded sample
(``eval()`` mode, exact) confirms it: measured when the suspicion arises and again ``window``
updates later. Mini-batch noise can therefore never fake a stall. The doctor then runs :func:`trainlab.diagnose` on a
bounded sample of the training data (``max_samples``) and treats what it finds:

* **negative curvature** — a saddle, or a saddle's neighbourhood (the gradient need not be
  exactly zero; an eigenvalue counts as negative below ``−max(eig_tol·λ_max, eig_floor)``, so
  that negligible curvature does not trigger a step): :func:`trainlab.escape` along the whole negative eigenspace, then training
  continues;
* **degenerate** — gradient and Hessian both vanish (e.g. two hidden linear layers at zero):
  second order cannot show a way out; the remedy is a small random perturbation, applied
  with ``act=True``;
* **not critical, no negative curvature** — a plateau or a narrow valley: if ``η·λ_max > 2``
  the step is too large for the sharpest direction (set ``η = 1/λ_max``); else plain SGD gets
  momentum 0.9; else ``η`` grows ×10 (keeping ``η·λ_max ≤ 1``). Applied with ``act=True``;
* **local minimum** — says so, with the remedies that fit (re-initialise, a larger model,
  more batch noise), and changes nothing.

The diagnosis itself leaves the model exactly as it was (parameters, buffers such as BatchNorm
statistics, flags, gradients and the global random states); only a treatment applied with
``act=True`` changes anything. An escape is taken in a saddle's neighbourhood too, where the
gradient is small but not below ``grad_tol`` (``escape(..., force=True)``), since its line search
accepts a step only when the loss measurably drops.

Every finding is an event: a dict with the step, verdict, numbers and action, logged by the
Trainer to ``metrics.jsonl`` (lines with an ``"event"`` key), to the progress bar and to the
summary. After an event the window starts afresh; after one that changed nothing the doctor
waits four windows before it looks again. In a plain PyTorch loop call
:meth:`StallDoctor.after_step` after each update.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Iterable

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from trainlab.curvature import analysis_mode, diagnose, escape
from trainlab.data.batches import as_batches
from trainlab.errors import ConfigError
from trainlab.state import preserved
from trainlab.train.callbacks import Callback


class StallDoctor(Callback):
    def __init__(self, window: int = 100, min_rel_improvement: float = 0.01, grad_tol: float = 1e-2,
                 act: bool = True, k: int = 5, max_samples: int = 2048, eig_tol: float = 1e-3, eig_floor: float = 1e-4,
                 perturbation: float = 1e-2, seed: int = 0):
        for name, value in (("window", window), ("k", k), ("max_samples", max_samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (10 if name == "window" else 1):
                raise ConfigError(f"StallDoctor: {name}={value!r} is not allowed; expected an integer >= "
                                  f"{10 if name == 'window' else 1}")
        for name, value in (("min_rel_improvement", min_rel_improvement), ("grad_tol", grad_tol),
                            ("eig_tol", eig_tol), ("eig_floor", eig_floor), ("perturbation", perturbation)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"StallDoctor: {name}={value!r} is not allowed; expected a number > 0")
        self.window, self.min_rel_improvement, self.grad_tol = window, min_rel_improvement, grad_tol
        self.act, self.k, self.max_samples, self.perturbation, self.seed = act, k, max_samples, perturbation, seed
        self.eig_tol, self.eig_floor = eig_tol, eig_floor
        self.events: list[dict[str, Any]] = []
        self._losses: collections.deque[float] = collections.deque(maxlen=window)
        self._check_every = max(1, window // 10)  # the stall test costs more than an update's bookkeeping
        self._steps = 0
        self._quiet_until = 0
        self._candidate: tuple[int, float] | None = None  # (step, exact sample loss) of a suspected stall

    # ---------------------------------------------------------------- hooks
    def on_step_end(self, trainer: Any, record: dict[str, Any]) -> None:
        # trainer.module, not a DistributedDataParallel wrapper: under torch.distributed every rank
        # sees the same (all-reduced) loss, so all ranks diagnose and treat at the same step
        event = self.after_step(trainer.module, record["loss"], trainer.loss_fn, trainer.train_data,
                                optimizer=trainer.optimizer, scheduler=trainer.scheduler)
        if event is not None:
            trainer.log_event(event)

    def after_step(self, model: nn.Module, loss_value: float, loss_fn: Any, batch_source: Any,
                   optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None) -> dict[str, Any] | None:
        """Record one update's loss; on a stall, diagnose and treat. Returns the event, if any.

        ``batch_source`` is the training data: a Dataset, a DataLoader or one ``(x, y)``
        batch; the first ``max_samples`` samples are analysed. With ``optimizer`` (and its
        ``scheduler``) the doctor can also change the learning rate or momentum.
        """
        self._steps += 1
        self._losses.append(float(loss_value))
        if len(self._losses) < self.window or self._steps < self._quiet_until or self._steps % self._check_every:
            return None
        if self._candidate is None:
            if self._stalled():  # the mini-batch losses suggest a stall: measure the loss exactly, now and later
                self._candidate = (self._steps, self._sample_loss(model, loss_fn, batch_source))
            return None
        start, before = self._candidate
        if self._steps - start < self.window:
            return None
        self._candidate = None
        after = self._sample_loss(model, loss_fn, batch_source)
        if before - after >= self.min_rel_improvement * abs(before):
            return None  # it was moving after all
        event = self._treat(model, loss_fn, batch_source, optimizer, scheduler)
        self._losses.clear()
        if not event["applied"]:
            self._quiet_until = self._steps + 4 * self.window
        self.events.append(event)
        return event

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self._losses), "steps": self._steps, "quiet_until": self._quiet_until,
                "candidate": list(self._candidate) if self._candidate else None, "events": len(self.events)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._losses.clear()
        self._losses.extend(state["losses"])
        self._steps, self._quiet_until = state["steps"], state["quiet_until"]
        self._candidate = tuple(state["candidate"]) if state.get("candidate") else None

    # ---------------------------------------------------------------- diagnosis and treatment
    def _stalled(self) -> bool:
        """Stalled when even the optimistic end of the improvement — the difference of the
        halves' means plus two standard errors — is below ``min_rel_improvement``: mini-batch
        noise can hide a stall, but never fake one."""
        losses = list(self._losses)
        half = self.window // 2
        (before, var_before), (after, var_after) = _mean_var(losses[:half]), _mean_var(losses[-half:])
        error = math.sqrt((var_before + var_after) / half)
        return (before - after) + 2 * error < self.min_rel_improvement * abs(before)

    @torch.no_grad()
    def _sample_loss(self, model: nn.Module, loss_fn: Any, batch_source: Any) -> float:
        with analysis_mode(model, "eval"):  # also undoes the random draws of a shuffling DataLoader
            x, y = bounded_sample(batch_source, self.max_samples)
            return float(loss_fn(model(x), y))

    def _treat(self, model: nn.Module, loss_fn: Any, batch_source: Any, optimizer: Any, scheduler: Any
               ) -> dict[str, Any]:
        # The diagnosis leaves no trace: diagnose() restores the model itself, and preserved() also
        # undoes the random draws of a shuffling DataLoader. Only the treatment below may act.
        with preserved(model, parameters=False):
            sample = bounded_sample(batch_source, self.max_samples)
            # progress=False: the Trainer's own bar is on screen, and a second one would tear it
            d = diagnose(model, loss_fn, sample, grad_tol=self.grad_tol, eig_tol=self.eig_tol,
                         eig_floor=self.eig_floor, k=self.k, seed=self.seed, progress=False)
        event = {"event": "stall", "verdict": d.verdict, "loss": d.loss, "grad_norm": d.grad_norm,
                 "lambda_max": float(d.eigenvalues[0]), "lambda_min": float(d.eigenvalues[-1]),
                 "negative_curvature": d.negative_curvature, "samples": len(sample[1]), "method": d.method,
                 "n_hvp": d.n_hvp, "seconds": d.seconds, "applied": False}
        if d.negative_curvature:
            event.update(self._escape(model, loss_fn, sample, d))
        elif d.verdict == "degenerate":
            event.update(self._perturb(model))
        elif d.verdict == "not_critical":
            event.update(self._plateau(d, optimizer, scheduler))
        else:
            event.update(action="none", message=(
                f"a {d.verdict.replace('_', ' ')} at loss {d.loss:.4g} (no negative curvature, ‖∇L‖ = {d.grad_norm:.2g}):"
                " nothing local lowers the loss; if it is too high, re-initialise, use a larger model, or add batch"
                " noise (smaller batches)"))
        return event

    def _escape(self, model: nn.Module, loss_fn: Any, sample: Any, d: Any) -> dict[str, Any]:
        where = "saddle" if d.verdict == "saddle" else f"saddle's neighbourhood ({d.verdict.replace('_', ' ')})"
        if not self.act:
            return {"action": "escape (not applied)",
                    "message": f"{where}: negative curvature λ_min = {float(d.eigenvalues[-1]):.3g}; trainlab.escape"
                               " would step along it (act=False)"}
        # force=True: the doctor steps in a saddle's *neighbourhood* too, where the gradient is small
        # but above grad_tol (that is what a stall looks like), and plain escape() refuses there.
        # The step stays safe: each negative eigenvector is taken with the sign that goes against
        # the gradient, and a step is accepted only when the measured loss drops by a fraction of
        # the predicted change (Armijo); otherwise the parameters are put back.
        e = escape(model, loss_fn, sample, d, force=True)
        return {"action": "escape", "applied": e.accepted, "loss_after": e.loss_after, "escape_step": e.step,
                "predicted_change": e.predicted_change, "directions": e.n_directions,
                "message": f"{where}: λ_min = {float(d.eigenvalues[-1]):.3g}; " + str(e).splitlines()[0]}

    def _perturb(self, model: nn.Module) -> dict[str, Any]:
        message = ("degenerate point: gradient and Hessian both vanish, so second order shows no way out; remedy:"
                   f" a small random perturbation (σ = {self.perturbation:g})")
        if not self.act:
            return {"action": "perturb (not applied)", "message": message + " (act=False)"}
        gen = torch.Generator().manual_seed(self.seed + self._steps)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device), alpha=self.perturbation)
        return {"action": "perturb", "applied": True, "message": message + " — applied"}

    def _plateau(self, d: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        if optimizer is None:
            return {"action": "none", "message": f"not a critical point (‖∇L‖ = {d.grad_norm:.2g}) and no negative"
                                                 " curvature: a plateau or a narrow valley; pass the optimizer to act"}
        lr, lam = float(optimizer.param_groups[0]["lr"]), float(d.eigenvalues[0])
        factor, momentum = None, None
        if lam > 0 and lr * lam > 2:
            factor = 1 / (lr * lam)
            remedy = f"η·λ_max = {lr * lam:.3g} > 2, too large a step for the sharpest direction: η ← 1/λ_max = {1 / lam:.3g}"
        elif optimizer.param_groups[0].get("momentum") == 0:
            momentum = 0.9
            remedy = "plain gradient descent on a plateau: momentum 0.9"
        else:
            factor = 10.0 if lam <= 0 else min(10.0, max(1.0, 1 / (lr * lam)))
            remedy = f"a plateau (‖∇L‖ = {d.grad_norm:.2g}, no negative curvature): η ×{factor:.3g}"
        if not self.act:
            return {"action": f"remedy {remedy} (not applied)", "message": f"not a critical point; remedy: {remedy}"
                                                                           " (act=False)"}
        if factor is not None:
            _scale_lr(optimizer, scheduler, factor)
        if momentum is not None:
            for group in optimizer.param_groups:
                group["momentum"] = momentum
        return {"action": f"remedy {remedy}", "applied": True,
                "message": f"not a critical point; remedy: {remedy} — applied"}


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


def bounded_sample(source: Dataset | Iterable[Any] | tuple[torch.Tensor, torch.Tensor], limit: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` samples of a dataset, a DataLoader or an ``(x, y)`` batch, as one batch."""
    if isinstance(source, TensorDataset):
        x, y = source.tensors[:2]
        return x[:limit], y[:limit]
    if isinstance(source, Dataset) and not isinstance(source, (tuple, list)):
        items = [source[i] for i in range(min(limit, len(source)))]
        return torch.stack([torch.as_tensor(a) for a, _ in items]), torch.stack([torch.as_tensor(b) for _, b in items])
    xs, ys, count = [], [], 0
    for x, y in as_batches(source):
        xs.append(x[:limit - count])
        ys.append(y[:limit - count])
        count += len(ys[-1])
        if count >= limit:
            break
    return torch.cat(xs), torch.cat(ys)
