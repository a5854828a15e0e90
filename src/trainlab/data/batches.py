"""The data forms every analysis accepts, seen as one sequence of batches.

``data`` may be

- one ``(x, y)`` pair of tensors — a single batch;
- a list or tuple of batches, or any iterable of them (a ``DataLoader``);
- a map-style ``Dataset`` / ``TensorDataset`` (``__len__`` and ``__getitem__``), collated
  in chunks of :data:`DATASET_CHUNK` samples with ``default_collate``;
- with a ``batch_loss=(model, batch) -> mean loss`` hook, batches of any form (dicts,
  ``(x, y, extra)``), which only the hook reads.

Functions that take ``data`` compute full-data quantities as sample-weighted means over
these batches, ``L = Σ_b (n_b / N) L_b`` with ``n_b =`` :func:`batch_size_of` ``(batch)``,
so a short last batch counts for what it holds.

Data without a length may never end, and an analysis holds every batch it reads, so without
``max_samples`` :func:`first_samples` refuses an ``IterableDataset`` (or a ``DataLoader`` over
one) up front — a stream, often of images, often endless — and reads a generator or other
iterator (a finite one is a common way to pass batches) only up to :data:`UNSIZED_LIMIT`
samples: one still going then is refused. Both refusals are a :class:`~trainlab.errors.DataError`
saying to pass ``max_samples``.
"""

from __future__ import annotations

from collections.abc import Iterable as IterableABC, Mapping
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from trainlab.errors import DataError

Batch = tuple[torch.Tensor, torch.Tensor]
#: ``batch_loss(model, batch)`` → the batch's mean loss, a 0-d tensor.
BatchLoss = Callable[[torch.nn.Module, Any], torch.Tensor]
#: Samples per batch when a map-style Dataset is collated.
DATASET_CHUNK = 1024
#: Samples read at most from a generator or iterator given without ``max_samples`` (module docstring).
UNSIZED_LIMIT = 100_000


def as_batches(data: Any, batch_loss: BatchLoss | None = None) -> Iterator[Any]:
    """The batches of ``data`` (see the module docstring for the forms accepted).

    Without ``batch_loss`` every batch is an ``(inputs, targets)`` pair, yielded as a tuple;
    with it, batches are yielded as they come.
    """
    if _is_pair(data) or (batch_loss is not None and isinstance(data, Mapping)):
        yield _checked(data, batch_loss)
        return
    if _is_map_style(data):
        yield from (_checked(b, batch_loss) for b in _dataset_chunks(data))
        return
    try:
        iterator = iter(data)
    except TypeError:
        raise DataError(f"data must be an (inputs, targets) pair of tensors, a list or DataLoader of batches, or a"
                        f" Dataset; got {type(data).__name__}") from None
    for batch in iterator:
        yield _checked(batch, batch_loss)


def first_samples(data: Any, max_samples: int | None, batch_loss: BatchLoss | None = None) -> Iterator[Any]:
    """The batches of ``data`` (:func:`as_batches`) up to its first ``max_samples`` samples, the
    last one cut to fit (:func:`take`); ``None``: every batch, where data without a length is
    refused or bounded (module docstring). Stops drawing once it has them."""
    endless = max_samples is None and not sized(data)
    stream = data if isinstance(data, IterableDataset) else getattr(data, "dataset", None)
    if endless and isinstance(stream, IterableDataset):
        what = type(data).__name__ + ("" if stream is data else f" over a {type(stream).__name__}")
        raise DataError(f"data is a {what}, an IterableDataset without a length, a stream that may never end: pass"
                        " max_samples=N to analyse its first N samples")
    count = 0
    for batch in as_batches(data, batch_loss):
        if endless:
            count += batch_size_of(batch)
            if count > UNSIZED_LIMIT:
                raise DataError(f"data is a {type(data).__name__} without a length that yielded more than"
                                f" {UNSIZED_LIMIT:,} samples without ending (an endless generator?): pass"
                                " max_samples=N to analyse its first N samples")
        if max_samples is not None:
            n = batch_size_of(batch)
            if count + n > max_samples:
                batch = take(batch, 0, max_samples - count)
            count += min(n, max_samples - count)
        yield batch
        if max_samples is not None and count >= max_samples:
            break


def sized(data: Any) -> bool:
    """Whether ``data`` ends: a batch, or anything ``len()`` accepts (a list, a Dataset, a DataLoader
    over one); not an ``IterableDataset`` without ``__len__``, a DataLoader over one, or an iterator."""
    if _is_pair(data) or isinstance(data, (Mapping, torch.Tensor)) or not isinstance(data, IterableABC):
        return True  # (not data at all: as_batches says what is allowed)
    try:
        len(data)
    except TypeError:
        return False
    return True


def concat(batches: list[Any]) -> Any:
    """Batches joined along the sample dimension (tensors concatenated; dicts, tuples and
    lists walked; anything else taken from the first batch)."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches) if first.dim() > 0 else first
    if isinstance(first, dict):
        return {k: concat([b[k] for b in batches]) for k in first}
    if isinstance(first, tuple):
        return tuple(concat(list(parts)) for parts in zip(*batches))
    if isinstance(first, list):
        if any(isinstance(v, torch.Tensor) for v in first):
            return [concat(list(parts)) for parts in zip(*batches)]
        return [v for b in batches for v in b]
    return first


def batch_size_of(batch: Any) -> int:
    """The number of samples in ``batch``: ``len(y)`` of an ``(x, y)`` pair; for a dict, tuple
    or list the leading dimension its tensors share (a :class:`DataError` if they disagree)."""
    if _is_pair(batch) and batch[1].dim() > 0:
        x, y = batch  # (shape[0], not len(): this runs once per training update in the integrations)
        if x.dim() > 0 and x.shape[0] != y.shape[0]:
            raise DataError(f"a batch's inputs hold {len(x)} samples and its targets {len(y)}; they must hold one row"
                            " per sample each (for another layout pass batch_loss=(model, batch) -> mean loss)")
        return y.shape[0]
    tensors = [t for t in _tensors(batch) if t.dim() > 0]
    if not tensors:
        raise DataError(f"cannot tell how many samples a batch holds: its {_describe(batch)} has no tensor with a"
                        " leading (sample) dimension")
    sizes = {len(t) for t in tensors}
    if len(sizes) > 1:
        raise DataError(f"the tensors of a batch disagree on the number of samples (leading dimensions"
                        f" {sorted(sizes)}); every tensor in a batch must hold one row per sample")
    return sizes.pop()


def take(batch: Any, start: int, stop: int) -> Any:
    """Samples ``start:stop`` of ``batch``: every tensor (and list) with a leading sample
    dimension is sliced — views, no copy — and anything else kept as it is."""
    n = batch_size_of(batch)

    def cut(item: Any) -> Any:
        if isinstance(item, torch.Tensor):
            return item[start:stop] if item.dim() > 0 and len(item) == n else item
        if isinstance(item, Mapping):
            return {k: cut(v) for k, v in item.items()}
        if isinstance(item, tuple) and not hasattr(item, "_fields"):
            return tuple(cut(v) for v in item)
        if isinstance(item, list):
            return item[start:stop] if len(item) == n and not any(isinstance(v, torch.Tensor) for v in item) \
                else [cut(v) for v in item]
        return item

    return cut(batch)


def map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``batch`` with ``fn`` applied to every tensor in it (dicts, tuples and lists walked)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        return {k: map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, tuple) and not hasattr(batch, "_fields"):
        return tuple(map_tensors(v, fn) for v in batch)
    if isinstance(batch, list):
        return [map_tensors(v, fn) for v in batch]
    return batch


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor on ``device``."""
    return map_tensors(batch, lambda t: t.to(device))


def named_tensors(batch: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of ``batch`` with a name for messages: ``x``/``y`` of a pair, ``batch['key']``
    of a dict, ``batch[i]`` of a tuple."""
    if _is_pair(batch):
        yield "x", batch[0]
        yield "y", batch[1]
        return
    yield from _named("batch", batch)


def _named(prefix: str, item: Any) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(item, torch.Tensor):
        yield prefix, item
    elif isinstance(item, Mapping):
        for k, v in item.items():
            yield from _named(f"{prefix}[{k!r}]", v)
    elif isinstance(item, (tuple, list)):
        for i, v in enumerate(item):
            yield from _named(f"{prefix}[{i}]", v)


def first_non_finite(t: torch.Tensor) -> tuple[int, float]:
    """The first sample (leading index) of ``t`` holding a non-finite value, and that value (of a
    complex one, its non-finite part), for messages naming it."""
    if t.dim() == 0:
        return 0, float(t.real if t.is_complex() else t)
    rows = t.reshape(len(t), -1)
    sample = int((~torch.isfinite(rows)).any(1).nonzero()[0])
    value = rows[sample][~torch.isfinite(rows[sample])][0]
    if value.is_complex():
        value = value.real if not torch.isfinite(value.real) else value.imag
    return sample, float(value)


def _tensors(batch: Any) -> list[torch.Tensor]:
    return [t for _, t in _named("", batch)]


def _is_pair(data: Any) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor)
            and isinstance(data[1], torch.Tensor))


def _is_map_style(data: Any) -> bool:
    """A Dataset indexed by sample — not itself a list of batches."""
    if isinstance(data, (tuple, list, Mapping, torch.Tensor, str, bytes)) or isinstance(data, IterableDataset):
        return False
    if isinstance(data, Dataset):
        return True
    return hasattr(data, "__len__") and hasattr(data, "__getitem__") and not hasattr(data, "__iter__")


def _dataset_chunks(data: Any) -> Iterator[Any]:
    if isinstance(data, TensorDataset):  # slices of its tensors: no per-sample copies
        n = len(data)
        for start in range(0, n, DATASET_CHUNK):
            yield tuple(t[start:start + DATASET_CHUNK] for t in data.tensors)
        return
    from torch.utils.data import default_collate

    n = len(data)
    for start in range(0, n, DATASET_CHUNK):
        yield default_collate([data[i] for i in range(start, min(start + DATASET_CHUNK, n))])


def _checked(batch: Any, batch_loss: BatchLoss | None) -> Any:
    if batch_loss is not None:
        return batch
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise DataError(f"each batch must be an (inputs, targets) pair; got {_describe(batch)} — for other batches"
                        " (dicts, extra fields) pass batch_loss=(model, batch) -> mean loss")
    return batch[0], batch[1]


def _describe(batch: Any) -> str:
    return f"{type(batch).__name__} of length {len(batch)}" if hasattr(batch, "__len__") else type(batch).__name__
