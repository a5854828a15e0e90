import pytest
import torch
from torch import nn

from toys import Product


@pytest.fixture
def toy():
    return Product(2), (torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))


@pytest.fixture
def small_mlp_problem():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    return model, x, y
