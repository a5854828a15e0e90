"""Train a zoo case as its users would, without or with the stall doctor, and record what happened.

``(x, y)`` models, the character LM and the Hugging Face models train in a plain PyTorch loop that
calls :meth:`Monitor.after_step` and :meth:`StallDoctor.after_step` after each update (the HF models
through ``batch_loss``, their own ``model(**batch).loss``); a Lightning case trains under Lightning's
``Trainer`` with :class:`trainlab.integrations.lightning.TrainlabCallback`.

A doctor or Monitor that raises never ends a zoo run silently: the run goes on without it and the
result records the crash (``crash``: one line, where and what).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from trainlab.zoo.case import Case, Setup

#: Held-out samples the final loss is measured on.
EVAL_SAMPLES = 512


@dataclass
class RunResult:
    """What one run of a case gave.

    ``losses``: the training loss of every update (a run stops at the first non-finite one, or
    with a doctor at the second in a row: the doctor gets the first to roll back);
    ``grad_norms``: the gradient norm before each update; ``final_loss``: the loss on the first
    :data:`EVAL_SAMPLES` held-out samples after training (``inf`` when the run diverged);
    ``events``: the doctor's events, each reduced to :func:`event_summary`; ``crash``: the first
    exception a doctor or Monitor raised (``None``: none); ``seconds``: the run's wall time;
    ``doctor_seconds``/``monitor_seconds``: the time spent in their hooks; ``setup``: the setup as trained.
    """

    case: str
    doctor: bool
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    final_loss: float = math.nan
    events: list[dict[str, Any]] = field(default_factory=list)
    crash: str | None = None
    seconds: float = 0.0
    doctor_seconds: float = 0.0
    monitor_seconds: float = 0.0
    setup: Setup | None = field(default=None, repr=False)  # the trained setup, for a closer look

    @property
    def diverged(self) -> bool:
        """The training loss became non-finite."""
        return bool(self.losses) and not math.isfinite(self.losses[-1])

    @property
    def n_hvp(self) -> int:
        """Hessian-vector products of all events together."""
        return sum(int(e.get("n_hvp") or 0) for e in self.events)

    @property
    def event_seconds(self) -> float:
        """Seconds of all events together."""
        return sum(float(e.get("seconds") or 0.0) for e in self.events)


def event_summary(event: dict[str, Any], step: int | None = None) -> dict[str, Any]:
    """The parts of a doctor event the zoo reports: its update, the ``cause`` it names (``None``
    while the doctor names none: ``reading``/``verdict`` say what it saw), action, applied, cost."""
    return {"step": event.get("step", step), "cause": event.get("cause"), "reading": event.get("reading"),
            "verdict": event.get("verdict"), "action": event.get("action"), "applied": event.get("applied"),
            "n_hvp": event.get("n_hvp"), "seconds": event.get("seconds"), "message": event.get("message"),
            "evidence": event.get("evidence"), "readings": event.get("readings"), "loss": event.get("loss"),
            "grad_norm": event.get("grad_norm"), "lambda_max": event.get("lambda_max"), "lambda_min": event.get("lambda_min")}


def run_case(case: Case, size: str = "full", *, doctor: Any = False, monitor: Any = False, seed: int = 0,
             updates: int | None = None) -> RunResult:
    """Build ``case`` at ``size`` from ``seed`` and train it.

    ``doctor``/``monitor``: ``True`` for a default :class:`~trainlab.train.StallDoctor` /
    :class:`~trainlab.instruments.Monitor` (the doctor reads the Monitor), or one's own instance;
    ``updates`` shortens the run (``None``: the case's own). The process's random state is the same
    afterwards: the run draws inside :func:`torch.random.fork_rng`.
    """
    from trainlab.instruments import Monitor
    from trainlab.train import StallDoctor

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        setup = case.build(size, seed)
        if updates is not None:
            setup.updates = updates
        mon = Monitor(batch_loss=setup.batch_loss, progress=False) if monitor is True else (monitor or None)
        doc = StallDoctor(batch_loss=setup.batch_loss, monitor=mon) if doctor is True else (doctor or None)
        result = RunResult(case.name, doc is not None, setup=setup)
        start = time.perf_counter()
        if setup.framework == "lightning":
            _lightning(setup, mon, doc, result, seed)
        else:
            _loop(setup, mon, doc, result, seed)
        result.seconds = time.perf_counter() - start
        result.final_loss = final_loss(setup) if not result.diverged else math.inf
    return result


def final_loss(setup: Setup) -> float:
    """The mean loss on the first :data:`EVAL_SAMPLES` samples of ``setup.eval``, in ``eval()`` mode."""
    data = Subset(setup.eval, range(min(EVAL_SAMPLES, len(setup.eval))))
    model = setup.model
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=256):
            n = _batch_size(batch)
            total += float(setup.loss(model, batch)) * n
            count += n
    model.train(was_training)
    value = total / count
    return value if math.isfinite(value) else math.inf


def _loop(setup: Setup, mon: Any, doc: Any, result: RunResult, seed: int) -> None:
    """A plain PyTorch loop over shuffled batches; the Monitor and the doctor after each update."""
    model, opt, sched = setup.model, setup.optimizer, setup.scheduler
    loader = DataLoader(setup.train, batch_size=setup.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    model.train()
    while len(result.losses) < setup.updates:
        for batch in loader:
            loss = setup.loss(model, batch)
            opt.zero_grad()
            loss.backward()
            result.grad_norms.append(_grad_norm(model))
            value = loss.item()
            result.losses.append(value)
            # a user's loop steps on whatever the loss was; without a doctor nothing can recover a
            # non-finite run, with one it gets the update to roll back (two in a row end the run)
            if not math.isfinite(value) and (doc is None or not all(map(math.isfinite, result.losses[-2:-1]))):
                return
            opt.step()
            if sched is not None:
                sched.step()
            step = len(result.losses)
            if mon is not None and not _guarded(result, "monitor", step, lambda: mon.after_step(
                    model, value, setup.loss_fn, setup.train, opt, batch_size=setup.batch_size)):
                mon = None
            if doc is not None and not _guarded(result, "doctor", step, lambda: _doctor_step(
                    doc, setup, value, result, step)):
                doc = None
            model.train()
            if step >= setup.updates:
                return


def _doctor_step(doc: Any, setup: Setup, value: float, result: RunResult, step: int) -> None:
    event = doc.after_step(setup.model, value, setup.loss_fn, setup.train, setup.optimizer, setup.scheduler,
                           batch_size=setup.batch_size)
    if event is not None:
        result.events.append(event_summary(event, step))


def _guarded(result: RunResult, who: str, step: int, call: Any) -> bool:
    """Run one hook and add its time to ``result``; on an exception record the crash and return ``False``."""
    start = time.perf_counter()
    try:
        call()
        ok = True
    except Exception as e:  # noqa: BLE001 - a zoo run records any failure of the part under test
        if result.crash is None:
            first = str(e).splitlines()[0] if str(e) else ""
            result.crash = f"{who} at update {step}: {type(e).__name__}: {first}"
        ok = False
    setattr(result, f"{who}_seconds", getattr(result, f"{who}_seconds") + time.perf_counter() - start)
    return ok


def _grad_norm(model: torch.nn.Module) -> float:
    """‖g‖ over every parameter with a gradient."""
    squares = [p.grad.detach().double().pow(2).sum() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


def _batch_size(batch: Any) -> int:
    if isinstance(batch, dict):
        return len(next(iter(batch.values())))
    return len(batch[0])


def _lightning(setup: Setup, mon: Any, doc: Any, result: RunResult, seed: int) -> None:
    """Lightning's ``Trainer`` for ``max_steps=updates`` with trainlab's callback; the module records
    its training losses and gradient norms in ``zoo_losses``/``zoo_grad_norms``."""
    import lightning as L

    from trainlab.integrations.lightning import TrainlabCallback

    module = setup.model
    module.zoo_losses, module.zoo_grad_norms = result.losses, result.grad_norms
    callbacks = []
    if mon is not None or doc is not None:
        callbacks.append(TrainlabCallback(mon, doc, loss_fn=setup.loss_fn, batch_loss=setup.batch_loss))
    trainer = L.Trainer(max_steps=setup.updates, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks)
    loader = DataLoader(setup.train, batch_size=setup.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    try:
        trainer.fit(module, loader)
    except Exception as e:  # noqa: BLE001 - recorded, as in the plain loop
        first = str(e).splitlines()[0] if str(e) else ""
        result.crash = f"lightning fit at update {len(result.losses)}: {type(e).__name__}: {first}"
    if doc is not None:
        result.doctor_seconds = sum(float(ev.get("seconds") or 0.0) for ev in doc.events)
        result.events = [event_summary(ev) for ev in doc.events]
    result.monitor_seconds = math.nan  # inside Lightning's loop, not timed apart
