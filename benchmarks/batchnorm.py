"""BatchNorm forward+backward: trainlab.nn.BatchNorm1d/2d vs torch.nn.BatchNorm1d/2d.

The calls alternate, ours then PyTorch's, so machine noise hits both; each ratio compares
median times from the same run. Runs on CUDA unchanged when a GPU is present.

Where the difference comes from: the work is memory-bound, and PyTorch's CPU kernel is
fused — it reads the input twice for the statistics and once to write the output, then
once more (input and output gradient together) for each of the backward's two passes.
trainlab's closed-form version is composed of separate PyTorch operations, each its own
pass over a batch-sized tensor: five in the forward (sum, centre, square, sum, scale-and-
shift) and five in the backward (two sums, a product, two multiply-adds), moving about
18 batch-sized tensors through memory against PyTorch's 9, plus ~25 small per-channel
operations (about 40 µs of fixed cost) that PyTorch does inside its kernel. A stable
one-pass variance needs ``torch.var_mean``, which on CPU is several times slower than the
two passes it would save.

    python benchmarks/batchnorm.py [--calls 1000] [--device auto] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import trainlab as tl
from trainlab.train.trainer import resolve_device

CASES = [
    ("BatchNorm1d, 256 x 1024", tl.nn.BatchNorm1d, torch.nn.BatchNorm1d, (256, 1024)),
    ("BatchNorm1d, 64 x 1024", tl.nn.BatchNorm1d, torch.nn.BatchNorm1d, (64, 1024)),
    ("BatchNorm2d, 64 x 32 x 16 x 16", tl.nn.BatchNorm2d, torch.nn.BatchNorm2d, (64, 32, 16, 16)),
]


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"{args.calls} alternating calls per row\n")
    print("| case | mode | trainlab µs | torch µs | ratio |")
    print("|---|---|---|---|---|")
    for name, ours_cls, torch_cls, shape in CASES:
        channels = shape[1]
        ours, theirs = ours_cls(channels).to(device), torch_cls(channels).to(device)
        x = torch.randn(shape, device=device, requires_grad=True)
        dy = torch.randn(shape, device=device)
        for mode in ("train", "eval"):
            ours.train(mode == "train"), theirs.train(mode == "train")
            # gradients for the input, γ and β, as inside a network (nothing accumulated into .grad)
            calls = {"ours": lambda: torch.autograd.grad(ours(x), (x, *ours.parameters()), dy),
                     "torch": lambda: torch.autograd.grad(theirs(x), (x, *theirs.parameters()), dy)}
            times = {k: [] for k in calls}
            for i in range(args.calls + 20):
                for k, fn in calls.items():
                    t = timed(fn, device)
                    if i >= 20:  # warm-up
                        times[k].append(t)
            a, b = statistics.median(times["ours"]), statistics.median(times["torch"])
            print(f"| {name} | {mode}, forward+backward | {1e6 * a:.0f} | {1e6 * b:.0f} | {a / b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
