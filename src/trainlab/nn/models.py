"""Model builders: a multi-layer perceptron and a small CNN for 8×8 images.

Both take ``seed``: when given, the initial weights are drawn from a generator seeded with
it inside :func:`torch.random.fork_rng`, so the same seed gives the same network and the
caller's global random state is left untouched.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from trainlab.errors import ConfigError
from trainlab.nn.batchnorm import BatchNorm1d, BatchNorm2d

ACTIVATIONS: dict[str, type[nn.Module] | None] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": None,  # no non-linearity: a deep linear network
}


def mlp(in_features: int, hidden: int | Sequence[int], out_features: int, activation: str = "relu",
        batch_norm: bool = False, seed: int | None = None) -> nn.Sequential:
    """``Flatten → [Linear → (BatchNorm1d) → activation] × len(hidden) → Linear``.

    ``hidden`` is one width or a list of widths (``[]`` gives a linear model). With
    ``activation="identity"`` the hidden layers have no non-linearity, so the network
    computes ``W_L ⋯ W_1 x + b``: a deep linear network.
    """
    hidden = [hidden] if isinstance(hidden, int) else list(hidden)
    _check_sizes(in_features=in_features, out_features=out_features, hidden=hidden)
    act = _activation(activation)
    with _seeded(seed):
        layers: list[nn.Module] = [nn.Flatten()]
        widths = [in_features, *hidden]
        for fan_in, fan_out in zip(widths, widths[1:]):
            layers.append(nn.Linear(fan_in, fan_out))
            if batch_norm:
                layers.append(BatchNorm1d(fan_out))
            if act is not None:
                layers.append(act())
        layers.append(nn.Linear(widths[-1], out_features))
    return nn.Sequential(*layers)


class Reshape(nn.Module):
    """``x ↦ x.reshape(len(x), *shape)``: lets image models take flattened rows."""

    def __init__(self, *shape: int):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), *self.shape)

    def extra_repr(self) -> str:
        return ", ".join(map(str, self.shape))


def small_cnn(in_channels: int = 1, image_size: int = 8, num_classes: int = 10,
              channels: Sequence[int] = (16, 32), activation: str = "relu", batch_norm: bool = False,
              seed: int | None = None) -> nn.Sequential:
    """``Reshape(C, H, W) → [Conv3×3 → (BatchNorm2d) → activation → MaxPool2] × len(channels)
    → Flatten → Linear``.

    Takes images ``(n, C, H, W)`` or the same rows flattened, ``(n, C·H·W)`` (digits as
    loaded). Each block halves the side, so ``image_size`` must be divisible by
    ``2 ** len(channels)``.
    """
    channels = list(channels)
    _check_sizes(in_channels=in_channels, image_size=image_size, num_classes=num_classes, channels=channels)
    if not channels:
        raise ConfigError("channels=[] is not allowed; give at least one convolution width")
    if image_size % 2 ** len(channels):
        raise ConfigError(f"image_size={image_size} is not divisible by 2**{len(channels)};"
                          f" each of the {len(channels)} blocks in channels={channels} halves the side")
    act = _activation(activation)
    with _seeded(seed):
        layers: list[nn.Module] = [Reshape(in_channels, image_size, image_size)]
        for c_in, c_out in zip([in_channels, *channels], channels):
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(BatchNorm2d(c_out))
            if act is not None:
                layers.append(act())
            layers.append(nn.MaxPool2d(2))
        side = image_size // 2 ** len(channels)
        layers += [nn.Flatten(), nn.Linear(channels[-1] * side * side, num_classes)]
    return nn.Sequential(*layers)


def _activation(name: str) -> type[nn.Module] | None:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; allowed: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _check_sizes(**sizes: int | list[int]) -> None:
    for name, value in sizes.items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ConfigError(f"{name}={value!r} is not allowed; sizes must be positive integers")


@contextlib.contextmanager
def _seeded(seed: int | None):
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
