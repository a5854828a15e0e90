"""``torch.distributed`` helpers used by the Trainer and the curvature tools.

trainlab scales on PyTorch's own engine: processes are started by ``torchrun``, which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init`
turns that environment into a process group (``gloo`` on CPU, ``nccl`` on CUDA, one device
per rank) and is a no-op in a single process. Everything else here is a thin, named wrapper
so the calling code reads as what it does.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import torch.distributed as dist

from trainlab.errors import ConfigError

BACKENDS = ("gloo", "nccl")


def init(backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` describes; ``False`` (and nothing done) when this is
    a single process. ``backend`` defaults as :func:`choose_backend` says."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    if dist.is_initialized():
        return True
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = choose_backend(backend, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return True


def choose_backend(backend: str | None, local_rank: int, local_world: int) -> str:
    """``nccl`` gives every process on a node a GPU of its own (``LOCAL_RANK`` picks it), so by
    default it is chosen when the node has a GPU for each of its ``local_world`` processes, and
    ``gloo`` on the CPU otherwise (with a warning if there are GPUs, but too few)."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if backend is None:
        if gpus >= local_world:
            return "nccl"
        if gpus:
            warnings.warn(f"{local_world} processes on this node but {gpus} GPU(s): using gloo on the CPU"
                          " (start at most one process per GPU to train on the GPUs)", stacklevel=3)
        return "gloo"
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not allowed; use one of: {', '.join(BACKENDS)}")
    if backend == "nccl" and not gpus:
        raise ConfigError("backend 'nccl' needs CUDA, and no GPU is visible to this process; use 'gloo' on CPU")
    if backend == "nccl" and local_rank >= gpus:
        raise ConfigError(f"backend 'nccl' gives each process its own GPU, but LOCAL_RANK={local_rank} and only"
                          f" {gpus} GPU(s) are visible; start at most {gpus} process(es) per node, or use 'gloo'")
    return backend


def active(distributed: bool | None = None, group: Any = None) -> bool:
    """Whether to act as one of several processes: ``distributed=None`` means "if a process
    group with more than one member is initialised", ``False`` turns it off."""
    if distributed is False or not dist.is_available() or not dist.is_initialized():
        if distributed:
            raise ConfigError("distributed=True needs an initialised process group; call trainlab.distributed.init()"
                              " under torchrun")
        return False
    return dist.get_world_size(group) > 1


def rank(group: Any = None) -> int:
    """This process's rank in ``group`` (``None``: the default group); 0 without an initialised process group.

    Parameters: ``group`` a ``torch.distributed`` process group (None). Returns: an int.
    """
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def world_size(group: Any = None) -> int:
    """The number of processes in ``group`` (``None``: the default group); 1 without an initialised process group.

    Parameters: ``group`` a ``torch.distributed`` process group (None). Returns: an int.
    """
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def device() -> torch.device:
    """This rank's device: its GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place; returned for chaining."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def all_reduce_min(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """The element-wise minimum of ``tensor`` over the ranks, in place; returned for chaining."""
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=group)
    return tensor


def all_gather(tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same shape on all ranks), in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(world_size(group))]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return parts


def broadcast(tensor: torch.Tensor, group: Any = None, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``tensor`` on every rank, in place."""
    dist.broadcast(tensor, src=dist.get_global_rank(group, src) if group is not None else src, group=group)
    return tensor


def check_same_parameters(params: list[torch.Tensor], group: Any = None) -> None:
    """Every rank must hold a model of the same shape; a mismatch is one clear error, not a hang."""
    shapes = [tuple(p.shape) for p in params]
    gathered: list[Any] = [None] * world_size(group)
    dist.all_gather_object(gathered, shapes, group=group)
    for r, other in enumerate(gathered):
        if other != shapes:
            raise ConfigError(f"ranks hold different models: rank {rank(group)} has {len(shapes)} parameter tensors"
                              f" {shapes[:3]}…, rank {r} has {len(other)} {other[:3]}…; every rank must build the same"
                              " model")


def check_enough_samples(samples: int, group: Any = None) -> None:
    """Refuse more processes than samples, since every rank needs at least one sample of its share.

    Parameters: ``samples`` the number of samples to share out; ``group`` the process group (None:
    the default one). Returns ``None``; raises :class:`~trainlab.errors.ConfigError` when
    :func:`world_size` exceeds ``samples``.
    """
    if world_size(group) > samples:
        raise ConfigError(f"world size {world_size(group)} is larger than the {samples} samples to share; use at most"
                          f" {samples} processes")
