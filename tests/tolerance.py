"""Numeric tolerances the tests derive from the dtype and the size of what they compare.

A test that compares two floating-point computations of the same quantity (ours against an independent
reference) must allow the rounding either side may carry, and nothing more: a tolerance picked by hand
on one CPU fails on another whose BLAS or vector kernels (``ATEN_CPU_CAPABILITY`` default/avx2/avx512,
MKL's code path, the number of threads) add the same terms in another order, and a loose one hides bugs.

The model. Each rounded operation is off by at most ε (``torch.finfo(dtype).eps``, twice the unit
roundoff) relative to its result. A sum or dot product of ``n`` terms of magnitude ``scale`` therefore
carries an error of at most ``n·ε·scale`` (the worst case, every rounding in the same direction) and
typically ``sqrt(n)·ε·scale`` (the random-walk model: independent roundings of either sign, whose sum
grows like a standard deviation). Two implementations that add in different orders differ by about
that much; it is what any x86 CPU, order or thread count may legitimately change.

``tol`` returns ``factor·sqrt(n)·ε·scale``. The default factor, 8, covers (a) both sides being rounded
(√2 on the difference), (b) the largest of the many elements a tensor comparison checks sitting in the
tail of the random walk (about 4-5 standard deviations over 10⁴-10⁶ elements), and (c) the few extra
roundings around a reduction (a division by n, a square root): √2·5 ≈ 7 < 8. It stays far below
anything a real bug produces: a wrong formula, a missing factor or an off-by-one moves a result by a
relative amount of order 1/n or more, not ε.

``n`` is the length of the reductions involved (parameters, samples, the matrix size) and, where one
result feeds the next (training steps, iterations), their count times that length; ``scale`` is the
magnitude of the terms added (a norm, a max |value|), not of their possibly cancelling sum.
"""

from __future__ import annotations

import math

import torch

FACTOR = 8.0


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of ``dtype``: the gap between 1 and the next representable number."""
    return torch.finfo(dtype).eps


def tol(dtype: torch.dtype, n: int = 1, scale: float = 1.0, factor: float = FACTOR) -> float:
    """Tolerance for a quantity built from reductions of ``n`` terms of magnitude ``scale`` in ``dtype``:
    ``factor·sqrt(n)·ε·scale`` (see the module docstring for the model and the factor)."""
    if n < 1:
        raise ValueError(f"n must be a positive number of terms, not {n}")
    return factor * math.sqrt(n) * eps(dtype) * abs(scale)


def close(dtype: torch.dtype, n: int = 1, scale: float = 1.0, factor: float = FACTOR) -> dict[str, float]:
    """``rtol``/``atol`` for ``torch.testing.assert_close``: relative ``tol(dtype, n)`` and absolute
    ``tol(dtype, n, scale)``, for elements near zero whose terms were of magnitude ``scale``."""
    return dict(rtol=tol(dtype, n, factor=factor), atol=tol(dtype, n, scale, factor=factor))
