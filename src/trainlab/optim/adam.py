"""Adam: RMSProp plus momentum, with bias correction.

Per parameter, with ``β₁, β₂`` and step ``t = 1, 2, …``::

    m^t = β₁ m^{t-1} + (1 − β₁) g^t          (momentum: moving mean of gradients)
    v^t = β₂ v^{t-1} + (1 − β₂) (g^t)²       (RMSProp: moving mean of squared gradients)
    m̂ = m^t / (1 − β₁^t),   v̂ = v^t / (1 − β₂^t)   (both start at 0, so early means are too small)
    θ^t = θ^{t-1} − η · m̂ / (sqrt(v̂) + eps)

Defaults are Kingma & Ba's and PyTorch's (``η = 1e-3, β = (0.9, 0.999), eps = 1e-8``), and the
update is ``torch.optim.Adam``'s. Weight decay ``wd``: added to the gradient (``g + wd θ``, L2
regularisation, as ``torch.optim.Adam``) or, with ``decoupled=True``, applied to the
parameters directly, ``θ ← θ (1 − η wd)`` before the step — that is AdamW
(``torch.optim.AdamW``; Loshchilov & Hutter 2019).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from trainlab.optim import _common as c


class Adam(torch.optim.Optimizer):
    """Adam (or AdamW with ``decoupled=True``): RMSProp plus momentum, with bias correction (the module
    docstring's update rule).

    ``θ^t = θ^{t-1} − η · m̂ / (sqrt(v̂) + eps)`` with ``m̂ = m^t/(1 − β₁^t)``, ``v̂ = v^t/(1 − β₂^t)``;
    the update is ``torch.optim.Adam``'s (``torch.optim.AdamW``'s when decoupled), as the module
    docstring says.

    Parameters:
        params: an iterable of tensors or of parameter groups (dicts), e.g. ``model.parameters()``.
        lr: the learning rate ``η`` (1e-3; a finite number > 0).
        betas: ``(β₁, β₂)``, each in ``[0, 1)`` ((0.9, 0.999)).
        eps: added to ``sqrt(v̂)`` (1e-8; a finite number > 0).
        weight_decay: ``wd ≥ 0`` (0.0): added to the gradient as ``wd · θ``, or with ``decoupled``
            applied as ``θ ← θ (1 − η wd)`` before the step.
        decoupled: AdamW's decoupled weight decay (False).
        foreach: ``True`` multi-tensor path, ``False`` single-tensor path, ``None`` (default) the
            multi-tensor path on GPUs and the single-tensor path on CPU.

    Invalid arguments raise :class:`~trainlab.errors.ConfigError`; sparse gradients a ``RuntimeError``.
    Complex parameters are treated as real pairs.

    State:
        ``self.state[p]``: ``"exp_avg"`` (``m``) and ``"exp_avg_sq"`` (``v``), created as zeros, and
        ``"step"`` (``t``, an int: 1 after the parameter's first update).

    Returns:
        ``step(closure=None)`` returns the closure's loss, or ``None`` without a closure.
    """
    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False, *,
                 foreach: bool | None = None):
        c.check_lr("Adam", lr)
        c.check("Adam", "betas", betas, isinstance(betas, (tuple, list)) and len(betas) == 2, "a pair (β₁, β₂)")
        c.check_unit("Adam", "betas[0]", betas[0])
        c.check_unit("Adam", "betas[1]", betas[1])
        c.check_nonnegative("Adam", "eps", eps, strict=True)
        c.check_nonnegative("Adam", "weight_decay", weight_decay)
        params = c.parameters("Adam", params)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      decoupled=decoupled, foreach=foreach))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter with a gradient, by the rule in the module docstring; ``closure``
        (optional) re-evaluates and returns the loss, which ``step`` then returns (else ``None``)."""
        loss = c.closure_loss(closure)
        for group in self.param_groups:
            params, grads = c.with_grads("Adam", group)
            if not params:
                continue
            exp_avgs = c.state_list(self, params, "exp_avg")
            exp_avg_sqs = c.state_list(self, params, "exp_avg_sq")
            steps = c.next_steps(self, params)
            update = _foreach_adam if c.use_foreach(group, params) else _single_tensor_adam
            beta1, beta2 = group["betas"]
            update(c.real(params), c.real(grads), c.real(exp_avgs), c.real(exp_avg_sqs), steps,
                   lr=float(group["lr"]), beta1=beta1, beta2=beta2, eps=group["eps"],
                   weight_decay=group["weight_decay"], decoupled=group["decoupled"])
        return loss


def _single_tensor_adam(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps, weight_decay,
                        decoupled):
    for p, g, m, v, t in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        if weight_decay and decoupled:
            p.mul_(1 - lr * weight_decay)  # AdamW: θ ← θ (1 − η wd)
        elif weight_decay:
            g = g.add(p, alpha=weight_decay)  # L2: g ← g + wd θ
        m.lerp_(g, 1 - beta1)  # m ← β₁ m + (1 − β₁) g
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # v ← β₂ v + (1 − β₂) g²
        # θ ← θ − η/(1 − β₁^t) · m / (sqrt(v)/sqrt(1 − β₂^t) + eps)
        denom = v.sqrt().div_(math.sqrt(1 - beta2 ** t)).add_(eps)
        p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** t))


def _foreach_adam(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps, weight_decay, decoupled):
    if weight_decay and decoupled:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    elif weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, [math.sqrt(1 - beta2 ** t) for t in steps])
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, [-lr / (1 - beta1 ** t) for t in steps])
