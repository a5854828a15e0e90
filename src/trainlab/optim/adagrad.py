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
    """Adagrad: each step divided by the root of the sum of past squared gradients (the module docstring's rule).

    ``s^t = s^{t-1} + (g^t)²``, ``θ^{t+1} = θ^t − η · g^t / (sqrt(s^t) + eps)`` — the lecture's
    ``η/sqrt(t+1)`` over the root mean square, rewritten. Agrees with ``torch.optim.Adagrad``
    (``lr_decay=0``, ``initial_accumulator_value=0``) to rounding (see the module docstring).

    Parameters:
        params: an iterable of tensors or of parameter groups (dicts), e.g. ``model.parameters()``.
        lr: the learning rate ``η`` (1e-2; a finite number > 0).
        eps: added to ``sqrt(s)`` (1e-10; a finite number > 0).
        weight_decay: ``wd ≥ 0``, added to the gradient as ``wd · θ`` (0.0).
        foreach: ``True`` multi-tensor path, ``False`` single-tensor path, ``None`` (default) the
            multi-tensor path on GPUs and the single-tensor path on CPU.

    Invalid arguments raise :class:`~trainlab.errors.ConfigError`; sparse gradients a ``RuntimeError``.
    Complex parameters are treated as real pairs.

    State:
        ``self.state[p]["sum"]`` — ``s``, created as zeros on a parameter's first update.

    Returns:
        ``step(closure=None)`` returns the closure's loss, or ``None`` without a closure.
    """
    def __init__(self, params: Iterable[Any], lr: float = 1e-2, eps: float = 1e-10, weight_decay: float = 0.0, *,
                 foreach: bool | None = None):
        c.check_lr("Adagrad", lr)
        c.check_nonnegative("Adagrad", "eps", eps, strict=True)
        c.check_nonnegative("Adagrad", "weight_decay", weight_decay)
        params = c.parameters("Adagrad", params)
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, foreach=foreach))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter with a gradient, by the rule in the module docstring; ``closure``
        (optional) re-evaluates and returns the loss, which ``step`` then returns (else ``None``)."""
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
