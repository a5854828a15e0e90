"""Small analytic problems shared by the curvature tests."""

import torch
from torch import nn


class Product(nn.Module):
    """ŷ = w_k ⋯ w₂ w₁ x: the lecture's toy network (k = 2) and its degenerate cousin (k = 3)."""

    def __init__(self, k: int = 2):
        super().__init__()
        self.w = nn.ParameterList([nn.Parameter(torch.zeros((), dtype=torch.float64)) for _ in range(k)])

    def forward(self, x):
        out = x
        for w in self.w:
            out = w * out
        return out


def squared_error(out, target):
    return ((out - target) ** 2).mean()
