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


def linear_saddle(n: int = 64, seed: int = 0):
    """A two-layer linear network 3 → 4 → 2 at zero weights, fitting ``n`` samples of a random
    linear map: gradient 0, one negative-curvature direction per hidden unit. (model, x, y)"""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(3, 2, generator=gen, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)).double()
    for p in model.parameters():
        nn.init.zeros_(p)
    return model, x, y
