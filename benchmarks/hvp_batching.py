"""Blocks of Hessian-vector products: one batched backward pass vs a loop, side by side.

``HessianOperator.matmat`` pushes ``m`` vectors through the kept gradient graph either all
at once (``batched=True``: ``is_grads_batched``, vmap over the backward pass) or one pass per
vector (``batched=False``). The default picks batched on GPUs and the loop on CPU; this
prints the time per product of both, as a multiple of one gradient's time, and their largest
difference, so that choice can be checked on any machine. Calls alternate between the two.

    python benchmarks/hvp_batching.py [--device auto] [--reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F

import trainlab as tl
from trainlab.curvature import HessianOperator, analysis_mode
from trainlab.train.trainer import resolve_device
from timing import seconds

MODELS = {
    "MLP 64-128-128-10, float64": (lambda: tl.nn.mlp(64, [128, 128], 10, seed=0), torch.float64),
    "MLP 64-1024-1024-10, float32": (lambda: tl.nn.mlp(64, [1024, 1024], 10, seed=0), torch.float32),
    "CNN 16-32, float32": (lambda: tl.nn.small_cnn(seed=0), torch.float32),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()
    device = resolve_device(args.device)
    train, _ = tl.data.load_digits()
    x, y = train.tensors
    print(f"torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, digits training split"
          f" ({len(y)} samples), medians of {args.reps} alternating calls\n")
    print("| model | vectors | gradient ms | loop: HVP ÷ gradient | batched: HVP ÷ gradient "
          "| loop ÷ batched | largest relative difference |")
    print("|---|---|---|---|---|---|---|")
    for name, (make, dtype) in MODELS.items():
        model = make().to(device=device, dtype=dtype)
        data = (x.to(device=device, dtype=dtype), y.to(device))
        with analysis_mode(model, "eval"):
            ops = {b: HessianOperator(model, F.cross_entropy, data, batched=b) for b in (False, True)}
            grad_time = statistics.median(
                seconds(lambda: torch.autograd.grad(F.cross_entropy(model(data[0]), data[1]), ops[False].params),
                        device) for _ in range(args.reps))
            for m in (8, 32):
                vectors = torch.randn(m, ops[False].n, device=device, dtype=dtype,
                                      generator=torch.Generator(device).manual_seed(0))
                results = {b: op.matmat(vectors) for b, op in ops.items()}  # warm-up, and the comparison
                times = {False: [], True: []}
                for _ in range(args.reps):
                    for b, op in ops.items():
                        times[b].append(seconds(lambda: op.matmat(vectors), device) / m)
                loop, batched = statistics.median(times[False]), statistics.median(times[True])
                gap = (results[True] - results[False]).abs().max().item() / results[False].abs().max().item()
                print(f"| {name} | {m} | {1e3 * grad_time:.2f} | {loop / grad_time:.2f} | {batched / grad_time:.2f} "
                      f"| {loop / batched:.2f} | {gap:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
