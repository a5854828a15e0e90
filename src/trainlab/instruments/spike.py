"""A loss spike: the one rule the Monitor (to read curvature at once) and the stall doctor (to
judge the damage) share.

Over the last :data:`SPAN` losses with ``high``, ``low`` and ``median`` their largest, smallest and
middle finite values, a loss is a spike when it is not finite, or when

    ``loss > high + max(2 (high − low), ½ |median|)``

— far outside the recent range, by twice its width or half the loss's level, whichever is larger,
so that mini-batch noise within the range never counts. A finite loss needs at least ``SPAN // 2``
recent ones to be judged; a non-finite one is a spike after any finite loss.
"""

from __future__ import annotations

import math
from typing import Sequence

#: Losses a new one is compared with.
SPAN = 20


def within(recent: Sequence[float], loss: float) -> bool:
    """Whether ``loss`` is certainly no spike against the ``recent`` losses (at most :data:`SPAN`
    of them), told without the rule's median: ``False`` means "not told", never "a spike".

    Told in three steps, each cheaper than the next (between fast updates each is measurable):

    * ``loss`` finite and at most the last recent loss, itself finite — so at most ``high``;
    * else ``top = max(recent)``: finite only when no NaN stopped ``max`` and no infinity is there,
      and then it is ``high``; ``loss ≤ high`` is no spike;
    * else ``loss ≤ high + 2 (high − low)`` (``low = min(recent)``, finite), below the rule's
      threshold ``high + max(2 (high − low), ½ |median|)``.
    """
    if not recent or len(recent) > SPAN:
        return False
    last = recent[-1]
    # x − x is 0 only for a finite x (inf − inf and NaN − NaN are NaN), and a NaN compares False
    if loss - loss != 0:
        return False
    if loss <= last and last - last == 0:
        return True
    top = max(recent)
    if top - top != 0:
        return False
    if loss <= top:
        return True
    low = min(recent)
    return low - low == 0 and loss <= top + 2 * (top - low)


def jumped(recent: Sequence[float], loss: float) -> bool:
    """Whether ``loss`` is a spike against the ``recent`` losses (oldest first; module docstring).
    Cost: none (:func:`within` for the common loss)."""
    if within(recent, loss):
        return False
    finite = sorted(v for v in list(recent)[-SPAN:] if math.isfinite(v))
    if not finite:
        return False
    if not math.isfinite(loss):
        return True
    if len(recent) < SPAN // 2:
        return False
    high, low, middle = finite[-1], finite[0], finite[len(finite) // 2]
    return loss > high + max(2 * (high - low), 0.5 * abs(middle))


__all__ = ["SPAN", "jumped", "within"]
