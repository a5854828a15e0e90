"""Learning-rate schedules: ``η^t = η · f(t)``, ``t`` the number of updates made so far.

The lecture's update with a schedule is ``θ^{t+1} = θ^t − η^t/σ^t · m^t``: the optimizer
supplies ``σ`` and ``m``, the schedule ``η^t``. Every factory here returns a
:class:`torch.optim.lr_scheduler.LambdaLR` whose multiplier ``f`` is a plain function of
the step (as in optax), to be stepped once per update (the Trainer does). Because ``f`` is
a function, schedules compose: :func:`chain` multiplies them, :func:`sequential` runs them
one after another. ``η`` is each parameter group's learning rate when the first schedule
was attached (``initial_lr``).

Warm-up counts from the first update: ``f(t) = (t + 1)/w`` for ``t < w``, so no update is
made with a zero learning rate and update ``w − 1`` is the first at the full rate.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

from trainlab.errors import ConfigError

Factor = Callable[[int], float]


def constant(optimizer: torch.optim.Optimizer) -> LambdaLR:
    """``f(t) = 1``."""
    return _schedule(optimizer, lambda base_lr: lambda t: 1.0)


def step_decay(optimizer: torch.optim.Optimizer, step_size: int, gamma: float = 0.1) -> LambdaLR:
    """``f(t) = γ^⌊t / step_size⌋``: multiply by ``γ`` every ``step_size`` updates."""
    _check_int("step_decay", "step_size", step_size, 1)
    _check_gamma("step_decay", gamma)
    return _schedule(optimizer, lambda base_lr: lambda t: gamma ** (t // step_size))


def exponential_decay(optimizer: torch.optim.Optimizer, gamma: float, decay_steps: int = 1) -> LambdaLR:
    """``f(t) = γ^(t / decay_steps)``: a smooth decay by ``γ`` per ``decay_steps`` updates."""
    _check_gamma("exponential_decay", gamma)
    _check_int("exponential_decay", "decay_steps", decay_steps, 1)
    return _schedule(optimizer, lambda base_lr: lambda t: gamma ** (t / decay_steps))


def linear_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> LambdaLR:
    """``f(t) = min(1, (t + 1)/w)``: ramp up over ``w`` updates, then hold (Goyal et al. 2017)."""
    _check_int("linear_warmup", "warmup_steps", warmup_steps, 1)
    return _schedule(optimizer, lambda base_lr: lambda t: min(1.0, (t + 1) / warmup_steps))


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_lr: float = 0.0) -> LambdaLR:
    """Linear warm-up over ``w`` updates, then cosine decay to ``min_lr`` at ``T = total_steps``::

        f(t) = (t + 1)/w                                   for t < w
        η f(t) = min_lr + (η − min_lr) · ½ (1 + cos(π (t − w)/(T − w)))   for w ≤ t ≤ T
        η f(t) = min_lr                                    after T
    """
    _check_int("warmup_cosine", "warmup_steps", warmup_steps, 0)
    _check_int("warmup_cosine", "total_steps", total_steps, warmup_steps + 1)

    def make(base_lr: float) -> Factor:
        if not 0 <= min_lr <= base_lr:
            raise ConfigError(f"warmup_cosine: min_lr={min_lr!r} is not allowed; expected a number in [0, {base_lr:g}]"
                              " (the optimizer's learning rate)")
        floor = min_lr / base_lr

        def f(t: int) -> float:
            if t < warmup_steps:
                return (t + 1) / warmup_steps
            progress = min(1.0, (t - warmup_steps) / (total_steps - warmup_steps))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return f

    return _schedule(optimizer, make)


def warmup_inverse_sqrt(optimizer: torch.optim.Optimizer, warmup_steps: int, d_model: int | None = None
                        ) -> LambdaLR:
    """The Transformer schedule (Vaswani et al. 2017), with ``s = t + 1`` the update number::

        f(t) = d_model^-0.5 · min(s^-0.5, s · w^-1.5)

    With the optimizer's ``lr = 1`` this is the paper's learning rate exactly. With
    ``d_model=None`` the factor is normalised to peak at 1 (``f = √w · min(…)``), so the
    optimizer's ``lr`` is the peak learning rate, reached at update ``w``.
    """
    _check_int("warmup_inverse_sqrt", "warmup_steps", warmup_steps, 1)
    if d_model is not None:
        _check_int("warmup_inverse_sqrt", "d_model", d_model, 1)
    scale = math.sqrt(warmup_steps) if d_model is None else d_model ** -0.5
    return _schedule(optimizer, lambda base_lr: lambda t: scale * min((t + 1) ** -0.5,
                                                                    (t + 1) * warmup_steps ** -1.5))


def chain(*schedulers: LambdaLR) -> LambdaLR:
    """``f(t) = Π_k f_k(t)``: e.g. ``chain(linear_warmup(opt, 100), step_decay(opt, 1000, 0.5))``."""
    optimizer = _same_optimizer("chain", schedulers)
    return LambdaLR(optimizer, [_product([s.lr_lambdas[g] for s in schedulers])
                                for g in range(len(optimizer.param_groups))])


def sequential(schedulers: Sequence[LambdaLR], milestones: Sequence[int]) -> LambdaLR:
    """Schedule ``k`` runs from ``milestones[k-1]`` (its own step counter restarting at 0)
    until ``milestones[k]``: ``f(t) = f_k(t − milestones[k−1])``."""
    optimizer = _same_optimizer("sequential", schedulers)
    milestones = list(milestones)
    ok = (len(milestones) == len(schedulers) - 1 and all(isinstance(m, int) and m > 0 for m in milestones)
          and milestones == sorted(set(milestones)))
    if not ok:
        raise ConfigError(f"sequential: milestones={milestones!r} is not allowed; expected {len(schedulers) - 1}"
                          " increasing positive integers, one between each pair of schedules")
    return LambdaLR(optimizer, [_piecewise([s.lr_lambdas[g] for s in schedulers], milestones)
                                for g in range(len(optimizer.param_groups))])


#: The schedules a run configuration can name.
SCHEDULES: dict[str, Callable[..., LambdaLR]] = {
    f.__name__: f for f in (constant, step_decay, exponential_decay, linear_warmup, warmup_cosine,
                            warmup_inverse_sqrt)
}


def parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword parameters of schedule ``name`` (everything after the optimizer)."""
    return dict(list(inspect.signature(SCHEDULES[name]).parameters.items())[1:])


def create(name: str, optimizer: torch.optim.Optimizer, **kwargs: Any) -> LambdaLR:
    """Schedule ``name`` on ``optimizer``; unknown or missing parameters are a ConfigError."""
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; use one of: {', '.join(SCHEDULES)}")
    allowed = parameters(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"schedule {name} takes no {unknown[0]!r}; its parameters are:"
                          f" {', '.join(allowed) or 'none'}")
    missing = [k for k, p in allowed.items() if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise ConfigError(f"schedule {name} needs {missing[0]}; its parameters are: {', '.join(allowed)}")
    return SCHEDULES[name](optimizer, **kwargs)


def trace(name: str, steps: int, lr: float = 1.0, **kwargs: Any) -> list[float]:
    """The learning rates of the first ``steps`` updates under schedule ``name``."""
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = create(name, optimizer, **kwargs)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _schedule(optimizer: torch.optim.Optimizer, make: Callable[[float], Factor]) -> LambdaLR:
    """A LambdaLR with ``make(η_g)`` as the multiplier of each group ``g``."""
    return LambdaLR(optimizer, [make(float(g.get("initial_lr", g["lr"]))) for g in optimizer.param_groups])


def _product(factors: list[Factor]) -> Factor:
    return lambda t: math.prod(f(t) for f in factors)


def _piecewise(factors: list[Factor], milestones: list[int]) -> Factor:
    starts = [0, *milestones]

    def f(t: int) -> float:
        k = sum(t >= m for m in milestones)
        return factors[k](t - starts[k])

    return f


def _same_optimizer(what: str, schedulers: Sequence[Any]) -> torch.optim.Optimizer:
    if not schedulers:
        raise ConfigError(f"{what}() needs at least one schedule")
    for s in schedulers:
        if not isinstance(s, LambdaLR):
            raise ConfigError(f"{what}() composes LambdaLR schedules (trainlab.optim.schedules or"
                              f" torch LambdaLR); got {type(s).__name__}")
    if any(s.optimizer is not schedulers[0].optimizer for s in schedulers):
        raise ConfigError(f"{what}() needs schedules of one optimizer; they belong to different ones")
    return schedulers[0].optimizer


def _check_int(schedule: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{schedule}: {name}={value!r} is not allowed; expected an integer >= {minimum}")


def _check_gamma(schedule: str, gamma: Any) -> None:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma <= 1:
        raise ConfigError(f"{schedule}: gamma={gamma!r} is not allowed; expected a number in (0, 1]")
