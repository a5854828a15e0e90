"""Classification losses, written from the formulas with the log-sum-exp shift.

For logits ``y ∈ R^K`` (one row per sample) and ``m = max_i y_i``::

    softmax(y)_i = exp(y_i − m) / Σ_j exp(y_j − m)              (= exp(y_i) / Σ_j exp(y_j))
    log_softmax(y)_i = (y_i − m) − log Σ_j exp(y_j − m)
    cross-entropy  e = −Σ_i ŷ_i log softmax(y)_i                 (ŷ one-hot: e = −log softmax(y)_t)
    MSE on one-hot e = Σ_i (softmax(y)_i − ŷ_i)²                  (the lecture's MSE, summed over classes)

Subtracting ``m`` changes nothing mathematically but keeps every ``exp`` ≤ 1, so logits of
±1e4 give finite losses and gradients. ``m`` is treated as a constant in the backward pass,
which is exact: the shifted expression does not depend on ``m``. Minimising cross-entropy
is maximising the likelihood of the labels.

Why cross-entropy trains where MSE stalls (``p = softmax(y)``): ``∂e_CE/∂y_j = p_j − ŷ_j``, of
size about 1 while the prediction is confidently wrong, whereas
``∂e_MSE/∂y_j = 2 Σ_i (p_i − ŷ_i) p_i (δ_ij − p_j)`` carries the softmax's own derivative
``p_i (δ_ij − p_j)``, which vanishes whenever ``p`` is nearly one-hot — right *or wrong* —
leaving a flat plateau on the error surface (see ``trainlab.nn.surface``).
"""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")


def _shifted(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """``y − m``, ``m = max y`` along ``dim`` (a constant for autograd: exact, see above)."""
    return logits - logits.amax(dim, keepdim=True).detach()


def softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``exp(y − m) / Σ exp(y − m)`` along ``dim``."""
    e = _shifted(logits, dim).exp()
    return e / e.sum(dim, keepdim=True)


def log_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``(y − m) − log Σ exp(y − m)`` along ``dim``."""
    shifted = _shifted(logits, dim)
    return shifted - shifted.exp().sum(dim, keepdim=True).log()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``logits`` ``(N, K)`` against class indices ``(N,)`` (integers in
    ``[0, K)``) or class probabilities ``(N, K)``; ``reduction`` is mean, sum or none."""
    _check_logits("cross_entropy", logits)
    _check_reduction(reduction)
    if target.is_floating_point():
        _check_probabilities(logits, target)
        return _reduce(-(target * log_softmax(logits, dim=1)).sum(1), reduction)
    _check_classes("cross_entropy", target, logits.shape)
    # −log softmax(y)_t = log Σ exp(y − m) − (y_t − m): only the target's column is needed
    shifted = _shifted(logits, 1)
    losses = shifted.exp().sum(1).log() - shifted.gather(1, target.unsqueeze(1)).squeeze(1)
    return _reduce(losses, reduction)


def mse_onehot(logits: torch.Tensor, target: torch.Tensor, num_classes: int | None = None,
               apply_softmax: bool = True) -> torch.Tensor:
    """The lecture's MSE: ``mean_n Σ_i (softmax(y_n)_i − onehot(t_n)_i)²``.

    ``num_classes`` defaults to the logits' width; ``apply_softmax=False`` compares the
    outputs themselves with the one-hot label (plain regression onto the label vector).
    """
    _check_logits("mse_onehot", logits)
    k = logits.shape[1] if num_classes is None else num_classes
    if k != logits.shape[1]:
        raise ValueError(f"mse_onehot: num_classes={num_classes} but the logits have {logits.shape[1]} columns")
    _check_classes("mse_onehot", target, logits.shape)
    outputs = softmax(logits, dim=1) if apply_softmax else logits
    onehot = torch.zeros_like(outputs).scatter_(1, target.unsqueeze(1), 1.0)
    return (outputs - onehot).pow(2).sum(1).mean()


def _check_logits(fn: str, logits: torch.Tensor) -> None:
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"{fn}: logits must be a float tensor of shape (N, classes);"
                         f" got {logits.dtype} of shape {tuple(logits.shape)}")


def _check_classes(fn: str, target: torch.Tensor, shape: torch.Size) -> None:
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"{fn}: targets must be integer class indices (int64); got {target.dtype}")
    if target.shape != shape[:1]:
        raise ValueError(f"{fn}: targets of shape {tuple(target.shape)} do not match logits of shape"
                         f" {tuple(shape)}; expected ({shape[0]},)")
    low, high = torch.aminmax(target) if target.numel() else (target.new_zeros(()), target.new_zeros(()))
    try:
        out_of_range = bool(low < 0 or high >= shape[1])
    except RuntimeError:
        # under torch.func.vmap (per-sample gradients) a value cannot steer Python control flow;
        # the same targets pass this check as a whole batch before they are split into samples
        return
    if out_of_range:
        i = int(((target < 0) | (target >= shape[1])).nonzero()[0, 0])
        raise ValueError(f"{fn}: target {int(target[i])} at position {i} is not a class index in [0, {shape[1]})")


def _check_probabilities(logits: torch.Tensor, target: torch.Tensor) -> None:
    if target.shape != logits.shape:
        raise ValueError(f"cross_entropy: probability targets of shape {tuple(target.shape)} must match the"
                         f" logits' shape {tuple(logits.shape)}")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not allowed; use one of: {', '.join(REDUCTIONS)}")


def _reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    return losses.mean() if reduction == "mean" else losses.sum() if reduction == "sum" else losses
