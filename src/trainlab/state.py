"""A model's full state, put back exactly as it was: :func:`preserved`.

Analyses (gradients, Hessian products, loss surfaces, the stall doctor's diagnosis) run
the user's own model, and running it can change it: a forward pass in training mode moves
BatchNorm's running statistics and ``num_batches_tracked``, dropout draws from the global
random generator, and code may flip ``training`` or ``requires_grad`` flags or touch
``.grad``. :func:`preserved` records all of that on entry and restores it on exit, whether
the block finished or raised, so an analysis leaves no trace.

:func:`plain` is the other half of a state: what a ``state_dict()`` may hold so that
``torch.load(weights_only=True)`` reads it back without running code.

This module sits beside :mod:`trainlab.errors`, below every other layer: anything may use it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from trainlab.errors import ConfigError

__all__ = ["PLAIN", "plain", "preserved"]


@contextlib.contextmanager
def preserved(model: nn.Module, parameters: bool = True) -> Iterator[None]:
    """Restore ``model`` and the global random states on leaving the block, on success and on
    an exception alike.

    Restored: every buffer's value (BatchNorm ``running_mean``/``running_var``/
    ``num_batches_tracked``, non-persistent buffers too) and the buffer object itself if it
    was replaced; every submodule's ``training`` flag; every parameter's ``requires_grad``
    and ``.grad`` (the same tensor object with its old value, or ``None``); every parameter's
    value when ``parameters=True`` (``False`` lets the block keep parameter changes, as
    ``escape`` does); and the random states of torch on the CPU, CUDA on every initialised
    device, NumPy's global generator and Python's :mod:`random`.

    Costs one copy of the buffers and gradients (and of the parameters when
    ``parameters=True``).
    """
    saved = _Snapshot.of(model, parameters)
    try:
        yield
    finally:
        saved.restore()


@dataclass
class _Snapshot:
    buffers: list[tuple[nn.Module, str, torch.Tensor | None, torch.Tensor | None]] = field(default_factory=list)
    params: list[tuple[nn.Module, str, nn.Parameter]] = field(default_factory=list)
    unique: list[nn.Parameter] = field(default_factory=list)  # each parameter of ``params`` once
    values: list[torch.Tensor] | None = None
    flags: list[tuple[nn.Module, bool]] = field(default_factory=list)
    requires_grad: list[bool] = field(default_factory=list)
    grads: list[tuple[torch.Tensor | None, torch.Tensor | None]] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: nn.Module, parameters: bool) -> "_Snapshot":
        s = cls()
        for module in model.modules():
            s.flags.append((module, module.training))
            for name, buf in module._buffers.items():
                s.buffers.append((module, name, buf, None if buf is None else buf.detach().clone()))
            for name, p in module._parameters.items():
                if p is not None:
                    s.params.append((module, name, p))
        s.unique = _unique([p for _, _, p in s.params])
        s.requires_grad = [p.requires_grad for p in s.unique]
        s.grads = [(p.grad, None if p.grad is None else p.grad.detach().clone()) for p in s.unique]
        if parameters:
            s.values = [p.detach().clone() for p in s.unique]
        s.rng = _rng_states()
        return s

    @torch.no_grad()
    def restore(self) -> None:
        for module, name, p in self.params:  # the parameter objects first: values go into them
            if module._parameters.get(name) is not p:
                module._parameters[name] = p
        for p, flag in zip(self.unique, self.requires_grad):
            p.requires_grad_(flag)
        if self.values is not None:
            for p, value in zip(self.unique, self.values):
                p.copy_(value)
        for p, (grad, value) in zip(self.unique, self.grads):
            if grad is not None:
                grad.copy_(value)
            p.grad = grad
        for module, name, buf, value in self.buffers:
            module._buffers[name] = buf
            if buf is not None:
                buf.copy_(value)
        for module, training in self.flags:
            module.training = training
        _set_rng_states(self.rng)


def _unique(params: list[nn.Parameter]) -> list[nn.Parameter]:
    """Each parameter once (a shared parameter is registered in several modules)."""
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "random": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    numpy = _numpy()
    if numpy is not None:
        states["numpy"] = numpy.random.get_state()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["random"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states:
        _numpy().random.set_state(states["numpy"])


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # NumPy is optional for torch: then there is no NumPy state to keep
        return None
    return numpy


#: The types a saved state may hold besides tensors, dicts, lists and tuples.
PLAIN = (str, int, float, bool, type(None))


def plain(value: Any, where: str = "the state") -> Any:
    """``value`` with tensors, dicts, lists, tuples and ``str``/``int``/``float``/``bool``/``None``
    only — what ``torch.load(weights_only=True)`` reads back without running code. A user's
    instrument may keep NumPy scalars (made Python numbers, the same value), NumPy arrays (made
    tensors), deques (lists), sets (lists) and paths (strings); anything else is a
    :class:`~trainlab.errors.ConfigError` naming ``where`` in it, raised when the state is saved
    rather than when a resume cannot read it."""
    if isinstance(value, torch.Tensor) or type(value) in PLAIN or isinstance(value, (torch.dtype, torch.device)):
        return value
    if isinstance(value, Mapping):
        return {plain(k, f"{where} key {k!r}"): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if type(value) is tuple:
        return tuple(plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, (list, collections.deque)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(sorted(value, key=repr))]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if type(value).__module__ == "numpy":
        import numpy as np

        if isinstance(value, np.generic) and value.dtype.kind in "biuf":
            return value.item()
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            return torch.from_numpy(value.copy())
    raise ConfigError(f"{where} holds a {type(value).__module__}.{type(value).__qualname__}, which"
                      " torch.load(weights_only=True) cannot read back; a state_dict() may hold tensors, dicts,"
                      " lists, tuples, str, int, float, bool and None")
