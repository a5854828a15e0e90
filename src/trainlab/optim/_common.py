"""What every trainlab optimizer shares: argument checks, the parameters that have a
gradient (sparse ones refused), lazily created state, and the choice of code path."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from trainlab.errors import ConfigError


def check(optimizer: str, name: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise ``ConfigError`` (a ``ValueError``) naming the optimizer, argument and value."""
    if not ok:
        raise ConfigError(f"{optimizer}: {name}={value!r} is not allowed; expected {allowed}")


def parameters(optimizer: str, params: Any) -> list[Any]:
    """``params`` as a list (torch.optim's own ``ValueError`` for none would name no optimizer);
    refused when empty — often a ``model.parameters()`` generator already used up."""
    if isinstance(params, torch.Tensor):
        raise ConfigError(f"{optimizer}: params is one tensor; expected an iterable of tensors or of parameter"
                          " groups (dicts), e.g. model.parameters()")
    params = list(params)
    if not params:
        raise ConfigError(f"{optimizer}: got no parameters to optimise; pass model.parameters() (a generator"
                          " passed twice is empty the second time)")
    return params


def check_lr(optimizer: str, lr: Any) -> None:
    """Refuse a learning rate that is not a finite number > 0 (an int, float or tensor; not a bool).

    Parameters: ``optimizer`` the name used in the message; ``lr`` the value checked.
    Returns ``None``; raises :class:`~trainlab.errors.ConfigError` (a ``ValueError``) otherwise.
    """
    ok = isinstance(lr, (int, float, torch.Tensor)) and not isinstance(lr, bool) and 0 < float(lr) < math.inf
    check(optimizer, "lr", lr, ok, "a finite number > 0")


def check_unit(optimizer: str, name: str, value: Any) -> None:
    """Refuse a value outside ``[0, 1)`` (a momentum or decay rate; an int or float, not a bool).

    Parameters: ``optimizer`` and ``name`` for the message; ``value`` the value checked.
    Returns ``None``; raises :class:`~trainlab.errors.ConfigError` (a ``ValueError``) otherwise.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
    check(optimizer, name, value, ok, "a number in [0, 1)")


def check_nonnegative(optimizer: str, name: str, value: Any, strict: bool = False) -> None:
    """Refuse a value that is not a finite number ``>= 0`` (``> 0`` when ``strict``; an int or float, not a bool).

    Parameters: ``optimizer`` and ``name`` for the message; ``value`` the value checked;
    ``strict`` require ``> 0`` (False).
    Returns ``None``; raises :class:`~trainlab.errors.ConfigError` (a ``ValueError``) otherwise.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value > 0 if strict else value >= 0) \
        and value < math.inf
    check(optimizer, name, value, ok, "a finite number > 0" if strict else "a finite number >= 0")


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """The loss from ``closure`` (evaluated with gradients on), or ``None``."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def with_grads(optimizer: str, group: dict[str, Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The group's parameters that have a gradient, and those gradients."""
    params, grads = [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(f"{optimizer} does not support sparse gradients (parameter of shape"
                               f" {tuple(p.shape)}); use torch.optim.SparseAdam or dense gradients")
        params.append(p)
        grads.append(p.grad)
    return params, grads


def state_list(opt: torch.optim.Optimizer, params: list[torch.Tensor], key: str) -> list[torch.Tensor]:
    """``opt.state[p][key]`` for each parameter, created as zeros on first use."""
    out = []
    for p in params:
        state = opt.state[p]
        if key not in state:
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        out.append(state[key])
    return out


def next_steps(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[int]:
    """Advance and return each parameter's update count ``t`` (1 on its first update)."""
    steps = []
    for p in params:
        state = opt.state[p]
        state["step"] = int(state.get("step", 0)) + 1
        steps.append(state["step"])
    return steps


def real(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Complex tensors viewed as real pairs, so squares act per component (as in PyTorch)."""
    return [torch.view_as_real(t) if t.is_complex() else t for t in tensors]


#: Devices where the multi-tensor path is the default, as in torch.optim.
FOREACH_DEVICES = ("cuda", "xpu")


def use_foreach(group: dict[str, Any], params: list[torch.Tensor]) -> bool:
    """``foreach`` as given; by default (``None``) the multi-tensor path on GPUs and the
    single-tensor path on CPU, where benchmarks/optim_step.py measures it faster (the
    multi-tensor path allocates every intermediate for all tensors at once)."""
    if group["foreach"] is not None:
        return bool(group["foreach"])
    return all(p.device.type in FOREACH_DEVICES for p in params)
