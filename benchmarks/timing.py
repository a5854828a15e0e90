"""Wall-clock timing shared by the benchmarks (a script's own folder is first on ``sys.path``,
so each imports this as ``timing``). On CUDA the device is synchronised before and after the
call, so the time covers the kernels and not only their launch."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def seconds(fn: Callable[[], object], device: torch.device | None = None) -> float:
    """Seconds one call of ``fn`` takes."""
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def median_time(fn: Callable[[], object], reps: int, device: torch.device | None = None) -> float:
    """Median of ``reps`` calls, after one untimed warm-up call."""
    fn()
    return statistics.median(seconds(fn, device) for _ in range(reps))
