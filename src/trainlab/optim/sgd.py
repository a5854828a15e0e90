"""Stochastic gradient descent with momentum, in the lecture's form.

With gradient ``g^{i-1}`` at ``θ^{i-1}``, learning rate ``η^i`` and momentum ``λ``::

    m^0 = 0
    m^i = λ m^{i-1} − η^i g^{i-1}          (the movement: a weighted sum of all past gradients)
    θ^i = θ^{i-1} + m^i

Nesterov momentum evaluates the look-ahead: ``θ^i = θ^{i-1} + λ m^i − η^i g^{i-1}``.
Weight decay adds ``wd · θ`` to the gradient (L2 regularisation).

Relation to ``torch.optim.SGD(momentum=λ, dampening=0)``, which keeps an unscaled buffer
``b^i = λ b^{i-1} + g^{i-1}`` and steps ``θ^i = θ^{i-1} − η^i b^i``: unrolled, PyTorch moves by
``−η^i Σ_k λ^{i-k} g^k`` — every past gradient scaled by the *current* learning rate — while
the lecture moves by ``−Σ_k λ^{i-k} η^k g^k``, each gradient with the rate of its own step.
With a constant learning rate the two are the same (``m^i = −η b^i``); under a schedule they
differ, and the lecture's form is the one computed here.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from trainlab.optim import _common as c


class SGD(torch.optim.Optimizer):
    """Stochastic gradient descent with momentum, in the lecture's form (the module docstring's update rule).

    ``m^i = λ m^{i-1} − η^i g^{i-1}``, ``θ^i = θ^{i-1} + m^i`` (Nesterov: ``θ^i = θ^{i-1} + λ m^i − η^i g^{i-1}``).
    It differs from ``torch.optim.SGD`` only under a learning-rate schedule: each gradient keeps the
    rate of its own step (see the module docstring).

    Parameters:
        params: an iterable of tensors or of parameter groups (dicts), e.g. ``model.parameters()``.
        lr: the learning rate ``η`` (required; a finite number > 0).
        momentum: ``λ`` in ``[0, 1)`` (0.0: plain gradient descent ``θ ← θ − η g``).
        nesterov: the look-ahead step (False; only with ``momentum > 0``).
        weight_decay: ``wd ≥ 0``, added to the gradient as ``wd · θ`` (0.0).
        foreach: ``True`` multi-tensor path, ``False`` single-tensor path, ``None`` (default) the
            multi-tensor path on GPUs and the single-tensor path on CPU.

    Invalid arguments raise :class:`~trainlab.errors.ConfigError`; sparse gradients a ``RuntimeError``.

    State:
        ``self.state[p]["movement"]`` — ``m``, created as zeros on a parameter's first update; only
        with ``momentum > 0``.

    Returns:
        ``step(closure=None)`` returns the closure's loss, or ``None`` without a closure.
    """
    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, *, foreach: bool | None = None):
        c.check_lr("SGD", lr)
        c.check_unit("SGD", "momentum", momentum)
        c.check_nonnegative("SGD", "weight_decay", weight_decay)
        c.check("SGD", "nesterov", nesterov, not nesterov or momentum > 0, "False unless momentum > 0")
        params = c.parameters("SGD", params)
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      foreach=foreach))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter with a gradient, by the rule in the module docstring; ``closure``
        (optional) re-evaluates and returns the loss, which ``step`` then returns (else ``None``)."""
        loss = c.closure_loss(closure)
        for group in self.param_groups:
            params, grads = c.with_grads("SGD", group)
            if not params:
                continue
            movements = c.state_list(self, params, "movement") if group["momentum"] else None  # m^0 = 0
            update = _foreach_sgd if c.use_foreach(group, params) else _single_tensor_sgd
            update(params, grads, movements, lr=float(group["lr"]), momentum=group["momentum"],
                   nesterov=group["nesterov"], weight_decay=group["weight_decay"])
        return loss


def _single_tensor_sgd(params, grads, movements, *, lr, momentum, nesterov, weight_decay):
    for i, (p, g) in enumerate(zip(params, grads)):
        if weight_decay:
            g = g.add(p, alpha=weight_decay)
        if movements is None:  # plain gradient descent: θ ← θ − η g
            p.add_(g, alpha=-lr)
            continue
        m = movements[i]
        m.mul_(momentum).add_(g, alpha=-lr)  # m ← λ m − η g
        if nesterov:
            p.add_(m, alpha=momentum).add_(g, alpha=-lr)  # θ ← θ + λ m − η g
        else:
            p.add_(m)  # θ ← θ + m


def _foreach_sgd(params, grads, movements, *, lr, momentum, nesterov, weight_decay):
    if weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if movements is None:
        torch._foreach_add_(params, grads, alpha=-lr)
        return
    torch._foreach_mul_(movements, momentum)
    torch._foreach_add_(movements, grads, alpha=-lr)
    if nesterov:
        torch._foreach_add_(params, movements, alpha=momentum)
        torch._foreach_add_(params, grads, alpha=-lr)
    else:
        torch._foreach_add_(params, movements)
