"""The stall doctor's treatments: reversible actions on the model, the optimizer and its schedule.

Each treatment returns the event's fields (``action``, ``applied``, ``message``, …). Before any
treatment the doctor takes a :class:`Snapshot` (parameters, buffers, the optimizer's state and
hyperparameters, the schedule's base rates); after a short trial it keeps the treatment only when
the loss on the bounded sample is no worse than before, and otherwise restores the snapshot and
removes what the treatment installed (a clipping hook, a warm-up ramp): *never harm*.

* **lower / raise η** — every parameter group's ``lr`` (and ``initial_lr``) and the schedule's
  ``base_lrs`` scaled by one factor, so a schedule keeps its shape;
* **momentum** — heavy-ball momentum 0.9 for plain gradient descent on a plateau (Polyak 1964);
* **escape** — :func:`trainlab.escape` along negative curvature, accepted only when the loss drops;
* **perturb** — a small random step at a degenerate point;
* **roll back** — a damaging spike: the last good state (kept in memory) back, then a lower η
  (Chowdhery et al. 2022, PaLM §5.1: restart from a checkpoint before the spike);
* **clip** — an optimizer step pre-hook scaling the gradients to a global norm of at most ``c``
  (Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural networks");
* **warm up** — η back down to ``η/n``, then ramped linearly to ``η`` over ``n`` updates, with the
  adaptive optimizer's moments reset (Goyal et al. 2017; Liu et al. 2020, RAdam: the early second
  moment is too noisy to precondition a large step).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from trainlab.curvature import escape


class Snapshot:
    """A copy of the model's parameters and buffers, the optimizer's state and hyperparameters and
    the schedule's base rates, to put back on :meth:`restore` (a treatment undone, a roll-back)."""

    def __init__(self, model: nn.Module, optimizer: Any = None, scheduler: Any = None, step: int = 0):
        self.step = step
        self.model = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
        self.optimizer = None if optimizer is None else copy.deepcopy(optimizer.state_dict())
        self.schedule = None if scheduler is None else {
            key: list(getattr(scheduler, key)) for key in ("base_lrs", "_last_lr")
            if isinstance(getattr(scheduler, key, None), list)}
        self.loss: float | None = None  # its loss on the bounded sample, when measured

    def state(self) -> dict[str, Any]:
        """Tensors and plain values only (``torch.load(weights_only=True)`` reads them back)."""
        return {"step": self.step, "model": dict(self.model), "optimizer": self.optimizer,
                "schedule": self.schedule, "loss": self.loss}

    @classmethod
    def from_state(cls, state: dict[str, Any], where: str = "snapshot") -> "Snapshot":
        """The snapshot :meth:`state` described; a ``TypeError`` naming ``where`` if it is not one."""
        model = state.get("model") if isinstance(state, dict) else None
        if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
            raise TypeError(f"{where} holds no model state (a dict of tensors)")
        if isinstance(state["step"], bool) or not isinstance(state["step"], int):
            raise TypeError(f"{where} step {state['step']!r} is not an update count")
        snap = cls.__new__(cls)
        snap.step, snap.model, snap.optimizer = state["step"], dict(model), state.get("optimizer")
        snap.schedule, snap.loss = state.get("schedule"), state.get("loss")
        return snap

    def mismatch(self, model: nn.Module) -> str | None:
        """The first entry where ``model`` differs from this snapshot's (name or shape), else ``None``."""
        now = model.state_dict(keep_vars=True)
        for key, value in self.model.items():
            if key not in now:
                return f"{key!r}, which the model does not have"
            if tuple(now[key].shape) != tuple(value.shape):
                return f"{key!r} of shape {tuple(value.shape)}, the model's is {tuple(now[key].shape)}"
        missing = [key for key in now if key not in self.model]
        return f"no {missing[0]!r}, which the model has" if missing else None

    def restore(self, model: nn.Module, optimizer: Any = None, scheduler: Any = None) -> None:
        with torch.no_grad():
            for key, value in model.state_dict(keep_vars=True).items():
                if key in self.model:
                    value.copy_(self.model[key])
        if optimizer is not None and self.optimizer is not None:
            optimizer.load_state_dict(copy.deepcopy(self.optimizer))
        if scheduler is not None and self.schedule:
            for key, value in self.schedule.items():
                setattr(scheduler, key, list(value))


def scale_lr(optimizer: torch.optim.Optimizer, scheduler: Any, factor: float) -> None:
    """``η ← factor · η`` in every group, and a schedule's base rates with it (it keeps its shape)."""
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    if scheduler is not None and hasattr(scheduler, "base_lrs"):  # a schedule keeps its shape, rescaled
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        if isinstance(getattr(scheduler, "_last_lr", None), list):  # get_last_lr() (what HF logs) says η now
            scheduler._last_lr = [lr * factor for lr in scheduler._last_lr]


def change_lr(optimizer: Any, scheduler: Any, factor: float, what: str) -> dict[str, Any]:
    """Lower or raise η by ``factor``; the event's fields."""
    before = float(optimizer.param_groups[0]["lr"])
    scale_lr(optimizer, scheduler, factor)
    after = float(optimizer.param_groups[0]["lr"])
    return {"action": f"{what}: η {before:.3g} → {after:.3g}", "applied": True, "lr_before": before,
            "lr_after": after, "message": f"{what}: η {before:.3g} → {after:.3g} — applied"}


def add_momentum(optimizer: Any, beta: float = 0.9) -> dict[str, Any]:
    """Heavy-ball momentum ``β`` in every group of plain gradient descent."""
    for g in optimizer.param_groups:
        g["momentum"] = beta
    return {"action": f"grad_norm: momentum {beta:g}", "applied": True,
            "message": f"plain gradient descent on a plateau: momentum {beta:g} — applied"}


def take_escape(model: nn.Module, loss_fn: Any, sample: Any, d: Any, batch_loss: Any) -> dict[str, Any]:
    """:func:`trainlab.escape` with ``force=True``: the doctor steps in a saddle's *neighbourhood*
    too, where the gradient is small but above ``grad_tol`` (what a stall looks like). The step
    stays safe: each negative eigenvector is taken against the gradient, and a step is accepted
    only when the measured loss drops by a fraction of the predicted change (Armijo)."""
    where = "saddle" if d.verdict == "saddle" else f"saddle's neighbourhood ({d.verdict.replace('_', ' ')})"
    e = escape(model, loss_fn, sample, d, force=True, batch_loss=batch_loss)
    return {"action": "escape", "applied": e.accepted, "loss_after": e.loss_after, "escape_step": e.step,
            "predicted_change": e.predicted_change, "directions": e.n_directions,
            "message": f"{where}: λ_min = {float(d.eigenvalues[-1]):.3g}; " + str(e).splitlines()[0]}


def perturb(model: nn.Module, sigma: float, seed: int) -> dict[str, Any]:
    """``θ ← θ + σ ξ``, ``ξ ~ N(0, I)`` drawn from a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device), alpha=sigma)
    return {"action": "perturb", "applied": True,
            "message": "degenerate point: gradient and Hessian both vanish, so second order shows no way out;"
                       f" a small random perturbation (σ = {sigma:g}) — applied"}


def roll_back(model: nn.Module, optimizer: Any, scheduler: Any, good: Snapshot, factor: float) -> dict[str, Any]:
    """The last good state back (parameters, buffers, optimizer state), then ``η ← factor · η``."""
    before = float(optimizer.param_groups[0]["lr"])
    now = [{k: g[k] for k in ("lr", "initial_lr", "momentum") if k in g} for g in optimizer.param_groups]
    good.restore(model, optimizer)
    for g, kept in zip(optimizer.param_groups, now):  # the state_dict brought the old η back: today's η is lowered
        g.update(kept)
    scale_lr(optimizer, scheduler, factor)
    after = float(optimizer.param_groups[0]["lr"])
    return {"action": f"roll back to update {good.step}, lower η: η {before:.3g} → {after:.3g}", "applied": True,
            "rolled_back_to": good.step, "lr_before": before, "lr_after": after,
            "message": f"rolled back to the state of update {good.step} (before the spike) and lowered η"
                       f" {before:.3g} → {after:.3g} — applied"}


class Clip:
    """An optimizer step pre-hook scaling the gradients so their global norm is at most ``max_norm``."""

    def __init__(self, optimizer: Any, max_norm: float):
        self.max_norm = max_norm
        self.last_norm: float | None = None  # the last update's norm before clipping: what the doctor watches
        self.handle = optimizer.register_step_pre_hook(self)

    def __call__(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if params:
            self.last_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_norm))

    def remove(self) -> None:
        self.handle.remove()


def reset_state(optimizer: Any) -> None:
    """Forget the optimizer's per-parameter state (Adam's moments and step count): rebuilt at the next step."""
    optimizer.state.clear()
