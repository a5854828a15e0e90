"""Classification losses: cross-entropy, and the lecture's MSE between the one-hot label
and the softmax output.

For ``K`` classes, logits ``y`` and target class ``t``:

* ``softmax(y)_i = exp(y_i) / Σ_j exp(y_j)``
* cross-entropy ``e = −ln softmax(y)_t``
* MSE on one-hot ``e = Σ_i (softmax(y)_i − [i = t])²`` (summed over classes, averaged
  over the batch: the lecture's ``e = Σ_i (ŷ_i − y'_i)²``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.softmax(logits, dim=dim)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(logits, target, reduction=reduction)


def mse_onehot(logits: torch.Tensor, target: torch.Tensor, num_classes: int | None = None,
               apply_softmax: bool = True) -> torch.Tensor:
    k = num_classes if num_classes is not None else logits.shape[-1]
    probs = softmax(logits) if apply_softmax else logits
    onehot = F.one_hot(target, k).to(probs.dtype)
    return (probs - onehot).pow(2).sum(-1).mean()
