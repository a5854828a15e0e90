"""Adagrad: each parameter's step divided by the root mean square of its past gradients.

The lecture's form, per parameter, with gradients ``g^0 … g^t``::

    σ^t = sqrt( 1/(t+1) · Σ_{i=0}^{t} (g^i)² )       (root mean square of all past gradients)
    η^t = η / sqrt(t+1)                              (the lecture's decay)
    θ^{t+1} = θ^t − (η^t / σ^t) · g^t

Since ``η^t / σ^t = η/sqrt(t+1) · sqrt(t+1)/sqrt(Σ (g^i)²) = η / sqrt(Σ_{i≤t} (g^i)²)``, the
same update is the cumulative-sum form that is computed here::

    s^t = s^{t-1} + (g^t)²,   θ^{t+1} = θ^t − η · g^t / (sqrt(s^t) + eps)

``eps`` sits outside the root, as in ``torch.optim.Adagrad`` (``lr_decay=0``,
``initial_accumulator_value=0``), so the two agree to rounding. Weight decay adds
``wd · θ`` to the gradient.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from trainlab.optim import _common as c


class Adagrad(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Any], lr: float = 1e-2, eps: float = 1e-10, weight_decay: float = 0.0, *,
                 foreach: bool | None = None):
        c.check_lr("Adagrad", lr)
        c.check_nonnegative("Adagrad", "eps", eps, strict=True)
        c.check_nonnegative("Adagrad", "weight_decay", weight_decay)
        params = c.parameters("Adagrad", params)
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, foreach=foreach))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = c.closure_loss(closure)
        for group in self.param_groups:
            params, grads = c.with_grads("Adagrad", group)
            if not params:
                continue
            sums = c.state_list(self, params, "sum")
            update = _foreach_adagrad if c.use_foreach(group, params) else _single_tensor_adagrad
            update(c.real(params), c.real(grads), c.real(sums), lr=float(group["lr"]), eps=group["eps"],
                   weight_decay=group["weight_decay"])
        return loss


def _single_tensor_adagrad(params, grads, sums, *, lr, eps, weight_decay):
    for p, g, s in zip(params, grads, sums):
        if weight_decay:
            g = g.add(p, alpha=weight_decay)
        s.addcmul_(g, g)  # s ← s + g²
        p.addcdiv_(g, s.sqrt().add_(eps), value=-lr)  # θ ← θ − η g / (√s + eps)


def _foreach_adagrad(params, grads, sums, *, lr, eps, weight_decay):
    if weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_addcmul_(sums, grads, grads)
    std = torch._foreach_sqrt(sums)
    torch._foreach_add_(std, eps)
    torch._foreach_addcdiv_(params, grads, std, value=-lr)
