"""How the cost of ``eigs`` splits between computation and communication, per process count.

Run it under torchrun with 1, 2, … processes (one thread each, so the processes do not fight
over cores), e.g.::

    OMP_NUM_THREADS=1 torchrun --nproc-per-node 1 benchmarks/distributed_eigs.py
    OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 benchmarks/distributed_eigs.py

Each Lanczos step costs one local Hessian-vector product on this rank's shard, one all-reduce
of an n-vector, and the reorthogonalisation against the basis (identical on every rank).
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

import trainlab as tl
from trainlab.curvature import HessianOperator, analysis_mode
from timing import median_time


def main() -> int:
    tl.distributed.init()
    rank, world = tl.distributed.rank(), tl.distributed.world_size()
    train, _ = tl.data.load_digits()
    x, y = train.tensors[0][rank::world], train.tensors[1][rank::world]
    model = tl.nn.mlp(64, [128, 128], 10, seed=0)
    with analysis_mode(model, "eval"):
        local = HessianOperator(model, F.cross_entropy, (x, y), distributed=False)  # this rank's work alone
        local.gradient()
        v = torch.randn(local.n)
        t_local = median_time(lambda: local.matvec(v), 30)
        t_comm = median_time(lambda: tl.distributed.all_reduce_sum(v.clone()), 30) if world > 1 else 0.0
    t0 = time.perf_counter()
    found = tl.curvature.eigs(model, F.cross_entropy, (x, y), k=10, which="largest")
    seconds = time.perf_counter() - t0
    if rank == 0:
        per_step = seconds / found.n_hvp
        print(f"| {world} | {len(y):,} | {found.n_hvp} | {seconds:.3f} | {1e3 * per_step:.2f} | {1e3 * t_local:.2f} |"
              f" {1e3 * t_comm:.3f} | {1e3 * max(per_step - t_local - t_comm, 0):.2f} |")
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
