"""Feature normalisation: ``x̃ = (x − m) / σ`` per feature, fitted on training data only.

The lecture's remedy for an elongated error surface: features on very different scales
make the loss steep along some weights and flat along others; standardising every feature
to mean 0 and standard deviation 1 makes the surface rounder, so one learning rate suits
all directions. ``m`` and ``σ`` (biased) come from :meth:`Standardizer.fit` on the training
split; applying the same ``m, σ`` to test data keeps its statistics out of training. A
constant feature (``σ = 0``) is centred and left unscaled.

A :class:`Standardizer` is an ``nn.Module`` whose ``m, σ`` are buffers: put it first in a
model and its statistics travel in ``state_dict()`` and checkpoints, so the saved model
takes raw features. It lives in the data layer because the data loaders use it;
``trainlab.nn.Standardizer`` is the same class.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainlab.errors import DataError


class Standardizer(nn.Module):
    """Per-feature standardisation ``x̃ = (x − m) / σ``, fitted on training data (see the module docstring).

    ``m`` is the mean and ``σ`` the biased standard deviation of each feature over the samples
    (dimension 0); a constant feature gets ``σ = 1``, so it is only centred.

    Parameters: none; the statistics come from :meth:`fit`.

    Fields:
        ``mean``, ``std`` — buffers of the feature shape (``None`` until fitted), saved in
        ``state_dict()``; an unfitted Standardizer takes their shapes when it loads one.
        ``fitted`` — whether :meth:`fit` (or a loaded state) has set them.

    Methods: :meth:`fit`, :meth:`forward` (also ``transform``), :meth:`fit_transform`,
    :meth:`inverse_transform`; transforming before fitting raises ``RuntimeError``, inputs of
    another feature shape :class:`~trainlab.errors.DataError`.
    """
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", None)
        self.register_buffer("std", None)

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has set the statistics."""
        return self.mean is not None

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> "Standardizer":
        """Per-feature mean and standard deviation of ``x`` ``(n_samples, ...)``, computed in
        float64 and stored in ``x``'s floating dtype. Bad inputs (no samples, complex, NaN or
        Inf) raise :class:`~trainlab.errors.DataError`, a ``ValueError``."""
        if x.dim() < 1 or len(x) == 0:
            raise DataError(f"Standardizer.fit needs at least one sample; got shape {tuple(x.shape)}")
        if x.is_complex():
            raise DataError(f"Standardizer.fit got complex inputs ({x.dtype}); expected real numbers")
        if not torch.isfinite(x).all():
            raise DataError("Standardizer.fit got NaN or Inf; inputs must be finite")
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        x64 = x.double()
        mean = x64.mean(0)
        std = (x64 - mean).pow(2).mean(0).sqrt()
        std[std == 0] = 1.0
        self.mean, self.std = mean.to(dtype), std.to(dtype)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − m) / σ``."""
        self._check(x)
        return (x - self.mean) / self.std

    transform = forward

    def fit_transform(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`fit` on ``x``, then ``(x − m) / σ``.

        Parameters: ``x`` ``(n_samples, ...)``, finite real numbers (bad inputs raise
        :class:`~trainlab.errors.DataError`, as :meth:`fit` says).
        Returns: the standardised ``x``, same shape; the statistics stay stored in ``self``.
        """
        return self.fit(x).transform(x)

    def inverse_transform(self, x: torch.Tensor) -> torch.Tensor:
        """``x̃ · σ + m``."""
        self._check(x)
        return x * self.std + self.mean

    def _check(self, x: torch.Tensor) -> None:
        if not self.fitted:
            raise RuntimeError("Standardizer is not fitted; call fit(training_inputs) first")
        if x.shape[1:] != self.mean.shape:
            raise DataError(f"Standardizer was fitted on features of shape {tuple(self.mean.shape)};"
                             f" got inputs of shape {tuple(x.shape)}")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # An unfitted Standardizer takes the shapes of the statistics it loads.
        for name in ("mean", "std"):
            if getattr(self, name) is None and prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"features={tuple(self.mean.shape)}" if self.fitted else "not fitted"
