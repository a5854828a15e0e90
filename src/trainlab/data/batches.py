"""One ``(x, y)`` batch or an iterable of batches (a DataLoader), seen the same way."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from trainlab.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]


def as_batches(data: Batch | Iterable[Batch]) -> Iterator[Batch]:
    """The ``(inputs, targets)`` batches of ``data``: a single pair of tensors is one batch.

    Functions that take ``data`` compute full-data quantities as sample-weighted means
    over these batches, so a short last batch counts for what it holds.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        yield data[0], data[1]
        return
    try:
        iterator = iter(data)
    except TypeError:
        raise DataError(f"data must be an (inputs, targets) pair of tensors or an iterable of them;"
                        f" got {type(data).__name__}") from None
    for batch in iterator:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise DataError(f"each batch must be an (inputs, targets) pair; got {_describe(batch)}")
        yield batch[0], batch[1]


def _describe(batch: Any) -> str:
    return f"{type(batch).__name__} of length {len(batch)}" if hasattr(batch, "__len__") else type(batch).__name__
