"""Which parameters an analysis looks at: ``params=`` on every curvature function.

With ``θ = (θ_S, θ_O)`` split into the selected parameters ``S`` and the others ``O``, held
fixed, the analyses see the loss as a function of ``θ_S`` alone: its gradient is ``∇_S L``
and its Hessian the diagonal block ``H_SS = ∂²L/∂θ_S²`` of the full Hessian. Vectors are flat
over the selected parameters, in ``model.parameters()`` order.

The parameters analysed must be real floating point tensors of float32 or float64 with values
(:func:`analysable`): a complex parameter under a real loss has no complex Hessian (its real
and imaginary parts are separate real coordinates, and analysing the real parts alone answered
"no negative curvature" where the real Hessian had negative eigenvalues), a float16/bfloat16
one leaves second derivatives no digits, and one on the meta device has no values. Each is
refused with a :class:`~trainlab.errors.ConfigError` naming it; one that ``params`` leaves out
is held fixed like any other, and not refused.

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
        return analysable(named)
    if callable(params) and not isinstance(params, (nn.Module, torch.Tensor)):
        chosen = [(name, p) for name, p in named if params(name, p)]
        if not chosen:
            raise ConfigError("the params filter chose no parameter: it returned False for all"
                              f" {len(named):,} parameters that require gradients")
        return analysable(chosen)
    wanted = {id(p) for item in _items(params) for p in _resolve(model, item)}
    chosen = [(name, p) for name, p in named if id(p) in wanted]
    if not chosen:
        raise ConfigError("params selects no parameter that requires gradients: every parameter named is frozen"
                          " (requires_grad=False)")
    return analysable(chosen)


def analysable(chosen: list[tuple[str, nn.Parameter]]) -> list[tuple[str, nn.Parameter]]:
    """``chosen`` itself when every parameter is a real float32/float64 tensor with values, else a
    :class:`ConfigError` naming the first kind of misfit found and its parameters (module docstring)."""
    complex_ = [name for name, p in chosen if p.is_complex()]
    if complex_:
        raise ConfigError(f"parameter(s) {_listing(complex_)} are complex ({_dtype(chosen, complex_[0])}): under a"
                          " real loss their real and imaginary parts are separate real coordinates, not one complex"
                          " one, and trainlab analyses real parameters only; leave them out with params= (e.g."
                          " params=lambda name, p: not p.is_complex()), or hold the parts as two real parameters")
    meta = [name for name, p in chosen if p.is_meta]
    if meta:
        raise ConfigError(f"parameter(s) {_listing(meta)} are on the meta device, a shape without values: load the"
                          " weights first (model.to_empty(device=...) and load_state_dict) before analysing the"
                          " model")
    half = [name for name, p in chosen if p.dtype in (torch.float16, torch.bfloat16)]
    if half:
        raise ConfigError(f"parameter(s) {_listing(half)} are {_dtype(chosen, half[0])}, and second derivatives"
                          " in half precision keep no reliable digit (eps 1e-3 or worse), so curvature refuses it:"
                          " analyse a float32 copy, copy.deepcopy(model).float(), with float32 inputs")
    return chosen


def _listing(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    return shown + (f" and {len(names) - 3:,} more" if len(names) > 3 else "")


def _dtype(chosen: list[tuple[str, nn.Parameter]], name: str) -> str:
    return str(dict(chosen)[name].dtype).replace("torch.", "")


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
