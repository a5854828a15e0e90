"""RMSProp: divide each step by a moving root mean square of the gradient.

The lecture's form, per parameter::

    σ^0 = |g^0|
    σ^t = sqrt( α (σ^{t-1})² + (1 − α) (g^t)² )
    θ^{t+1} = θ^t − η / (σ^t + eps) · g^t

so the first step is ``η · g^0/|g^0| = η · sign(g^0)`` (up to ``eps``). What is stored is
``v^t = (σ^t)²``. ``init="zero"`` starts from ``v = 0`` instead (``v^t = α v^{t-1} + (1−α)(g^t)²``
from the first step), which is ``torch.optim.RMSprop(alpha=α)`` exactly: PyTorch's default
``α = 0.99``, the lecture's ``α = 0.9``. Weight decay adds ``wd · θ`` to the gradient.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from trainlab.optim import _common as c

INITS = ("first_grad", "zero")


class RMSProp(torch.optim.Optimizer):
    """RMSProp: each step divided by a moving root mean square of the gradient (the module docstring's rule).

    ``σ^t = sqrt(α (σ^{t-1})² + (1 − α) (g^t)²)``, ``θ^{t+1} = θ^t − η g^t / (σ^t + eps)``, starting
    from ``σ^0 = |g^0|`` (the lecture's form) or, with ``init="zero"``, from 0 — which is
    ``torch.optim.RMSprop(alpha=α)`` exactly (see the module docstring).

    Parameters:
        params: an iterable of tensors or of parameter groups (dicts), e.g. ``model.parameters()``.
        lr: the learning rate ``η`` (1e-3; a finite number > 0).
        alpha: the moving average's decay ``α`` in ``[0, 1)`` (0.9, the lecture's; PyTorch's is 0.99).
        eps: added to ``σ`` (1e-8; a finite number > 0).
        init: ``"first_grad"`` (default: ``v = (g^0)²`` on the first update) or ``"zero"``.
        weight_decay: ``wd ≥ 0``, added to the gradient as ``wd · θ`` (0.0).
        foreach: ``True`` multi-tensor path, ``False`` single-tensor path, ``None`` (default) the
            multi-tensor path on GPUs and the single-tensor path on CPU.

    Invalid arguments raise :class:`~trainlab.errors.ConfigError`; sparse gradients a ``RuntimeError``.
    Complex parameters are treated as real pairs.

    State:
        ``self.state[p]["square_avg"]`` — ``v = σ²``, created on a parameter's first update.

    Returns:
        ``step(closure=None)`` returns the closure's loss, or ``None`` without a closure.
    """
    def __init__(self, params: Iterable[Any], lr: float = 1e-3, alpha: float = 0.9, eps: float = 1e-8,
                 init: str = "first_grad", weight_decay: float = 0.0, *, foreach: bool | None = None):
        c.check_lr("RMSProp", lr)
        c.check_unit("RMSProp", "alpha", alpha)
        c.check_nonnegative("RMSProp", "eps", eps, strict=True)
        c.check("RMSProp", "init", init, init in INITS, " or ".join(map(repr, INITS)))
        c.check_nonnegative("RMSProp", "weight_decay", weight_decay)
        params = c.parameters("RMSProp", params)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, init=init, weight_decay=weight_decay,
                                      foreach=foreach))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter with a gradient, by the rule in the module docstring; ``closure``
        (optional) re-evaluates and returns the loss, which ``step`` then returns (else ``None``)."""
        loss = c.closure_loss(closure)
        for group in self.param_groups:
            params, grads = c.with_grads("RMSProp", group)
            if not params:
                continue
            # With init="first_grad" a parameter's first update sets v = g² (σ^0 = |g^0|);
            # every other update averages into v.
            first = [group["init"] == "first_grad" and "square_avg" not in self.state[p] for p in params]
            square_avgs = c.state_list(self, params, "square_avg")
            update = _foreach_rmsprop if c.use_foreach(group, params) else _single_tensor_rmsprop
            update(c.real(params), c.real(grads), c.real(square_avgs), first, lr=float(group["lr"]),
                   alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"])
        return loss


def _single_tensor_rmsprop(params, grads, square_avgs, first, *, lr, alpha, eps, weight_decay):
    for p, g, v, is_first in zip(params, grads, square_avgs, first):
        if weight_decay:
            g = g.add(p, alpha=weight_decay)
        if is_first:
            v.addcmul_(g, g)  # v = 0 + g²: σ^0 = |g^0|
        else:
            v.mul_(alpha).addcmul_(g, g, value=1 - alpha)  # v ← α v + (1 − α) g²
        p.addcdiv_(g, v.sqrt().add_(eps), value=-lr)  # θ ← θ − η g / (σ + eps)


def _foreach_rmsprop(params, grads, square_avgs, first, *, lr, alpha, eps, weight_decay):
    if weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    old = [i for i, f in enumerate(first) if not f]
    new = [i for i, f in enumerate(first) if f]
    if old:
        v_old, g_old = [square_avgs[i] for i in old], [grads[i] for i in old]
        torch._foreach_mul_(v_old, alpha)
        torch._foreach_addcmul_(v_old, g_old, g_old, value=1 - alpha)
    if new:
        g_new = [grads[i] for i in new]
        torch._foreach_addcmul_([square_avgs[i] for i in new], g_new, g_new)
    sigma = torch._foreach_sqrt(square_avgs)
    torch._foreach_add_(sigma, eps)
    torch._foreach_addcdiv_(params, grads, sigma, value=-lr)
