"""Which parameters an analysis looks at: ``params=`` on every curvature function.

With ``θ = (θ_S, θ_O)`` split into the selected parameters ``S`` and the others ``O``, held
fixed, the analyses see the loss as a function of ``θ_S`` alone: its gradient is ``∇_S L``
and its Hessian the diagonal block ``H_SS = ∂²L/∂θ_S²`` of the full Hessian. Vectors are flat
over the selected parameters, in ``model.parameters()`` order.

``params`` may be:

* ``None`` — every parameter that requires gradients (the default);
* a filter ``(name, parameter) -> bool``, called for each such parameter;
* one or an iterable of: a parameter tensor of the model, a submodule of the model (all its
  parameters), or a name — a parameter's (``"2.weight"``) or a submodule's (``"layer1.0"``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Union

import torch
from torch import nn

from trainlab.errors import ConfigError

ParamSpec = Union[None, Callable[[str, torch.Tensor], bool], torch.Tensor, nn.Module, str,
                  Iterable[Union[torch.Tensor, nn.Module, str]]]


def select(model: nn.Module, params: ParamSpec = None) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs chosen by ``params`` (module docstring), in model order, each
    once, only those that require gradients. Raises :class:`~trainlab.errors.ConfigError` for an
    item that is not part of ``model``, a name that matches nothing, or an empty selection."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if params is None:
        if not named:
            raise ConfigError("the model has no parameters that require gradients")
        return named
    if callable(params) and not isinstance(params, (nn.Module, torch.Tensor)):
        chosen = [(name, p) for name, p in named if params(name, p)]
        if not chosen:
            raise ConfigError("the params filter chose no parameter: it returned False for all"
                              f" {len(named):,} parameters that require gradients")
        return chosen
    wanted = {id(p) for item in _items(params) for p in _resolve(model, item)}
    chosen = [(name, p) for name, p in named if id(p) in wanted]
    if not chosen:
        raise ConfigError("params selects no parameter that requires gradients: every parameter named is frozen"
                          " (requires_grad=False)")
    return chosen


def names(model: nn.Module, params: ParamSpec = None) -> list[str]:
    """The names :func:`select` chooses: a selection that can be applied to a copy of ``model``."""
    return [name for name, _ in select(model, params)]


def _items(params: Any) -> list[Any]:
    if isinstance(params, (torch.Tensor, nn.Module, str)):
        return [params]
    try:
        items = list(params)
    except TypeError:
        raise ConfigError(f"params={params!r} is not allowed; expected parameters, modules or names of the model, a"
                          " filter (name, parameter) -> bool, or None (all)") from None
    if not items:
        raise ConfigError("params is empty; give parameters, modules or names of the model, or None (all)")
    return items


def _resolve(model: nn.Module, item: Any) -> list[torch.Tensor]:
    """The parameters one item of ``params`` stands for."""
    if isinstance(item, nn.Module):
        if not any(m is item for m in model.modules()):
            raise ConfigError(f"params holds a module ({type(item).__name__}) that is not part of the model")
        return list(item.parameters())
    if isinstance(item, torch.Tensor):
        if not any(p is item for p in model.parameters()):
            raise ConfigError(f"params holds a tensor of shape {tuple(item.shape)} that is not a parameter of the model"
                              " (a copy, or another model's?)")
        return [item]
    if isinstance(item, str):
        parameters, modules = dict(model.named_parameters()), dict(model.named_modules())
        if item in parameters:
            return [parameters[item]]
        if item in modules and item:
            found = list(modules[item].parameters())
            if not found:
                raise ConfigError(f"params names the submodule {item!r} ({type(modules[item]).__name__}), which holds"
                                  " no parameters")
            return found
        close = [n for n in [*parameters, *(m for m in modules if m)] if n.startswith(item)][:3]
        hint = f" (names starting so: {', '.join(close)})" if close else ""
        raise ConfigError(f"params names {item!r}, which is neither a parameter nor a submodule of the model{hint};"
                          " see model.named_parameters() / named_modules()")
    raise ConfigError(f"params holds {item!r} ({type(item).__name__}); allowed: parameter tensors, modules or names"
                      " of the model")
