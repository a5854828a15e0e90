"""BatchNorm forward+backward: trainlab.nn.BatchNorm1d/2d vs torch.nn.BatchNorm1d/2d.

The calls alternate, ours then PyTorch's, so machine noise hits both; each ratio compares
median times from the same run. Runs on CUDA unchanged when a GPU is present.

Where the difference comes from. At 256 × 1024 the work is memory traffic: each pass over a
batch-sized tensor moves 1 MB per tensor read or written, and the time follows the number of
those passes. PyTorch's CPU kernel is fused: its forward reads the input twice (mean, then
variance) and writes the output once; its backward reads the input and the output gradient
once for both sums and once more to write the input gradient, about 9 MB in all. trainlab is
composed of PyTorch operations written from the formulas, and every operation is its own
pass: forward mean (read z), squared deviations (read z, write), their mean (read), scale
and shift (read z, write y); backward Σg (read), g·z (read two, write), its sum (read), then
the input gradient in two multiply-adds (read z, write; read it and g, write), about 16 MB.
No PyTorch operation reduces a square or a product along the batch dimension without
writing it out first: ``torch.var_mean``, ``linalg.vector_norm`` and ``einsum`` would, but
on CPU they are 10–50× slower over dim 0 than the two passes they save. So the composed
version stays near 16 MB unless it gets a fused kernel of its own; measured without
autograd, its operations take about twice as long as PyTorch's two kernels, while the
autograd and module overhead is about the same for both (about 40 µs).

The allocator matters as much as the kernels. glibc returns a freed block of 1 MB to the
operating system when enough of them pile up, and the next call page-faults it back in
(hundreds of faults, each zeroing 4 KB): both implementations then slow down by the same
hundreds of µs and the ratio shrinks. Whether that happens depends on the heap's history, so
one process can see either. ``--allocator steady`` pins glibc to keep freed memory
(``mallopt``), the steady state that jemalloc, tcmalloc or PyTorch's CUDA caching allocator
give; ``--allocator glibc`` leaves it as it is. By default both run, each in its own
process, and each row shows the page faults per call.

    python benchmarks/batchnorm.py [--calls 1000] [--device auto] [--allocator both|steady|glibc]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import resource
import statistics
import subprocess
import sys

import torch

import trainlab as tl
from trainlab.train.trainer import resolve_device
from timing import seconds

CASES = [
    ("BatchNorm1d, 256 x 1024", tl.nn.BatchNorm1d, torch.nn.BatchNorm1d, (256, 1024)),
    ("BatchNorm1d, 64 x 1024", tl.nn.BatchNorm1d, torch.nn.BatchNorm1d, (64, 1024)),
    ("BatchNorm2d, 64 x 32 x 16 x 16", tl.nn.BatchNorm2d, torch.nn.BatchNorm2d, (64, 32, 16, 16)),
]
TARGET = 1.5  # issue 4: BatchNorm1d 256 x 1024, forward+backward, on CPU


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory (no trimming, no per-block ``mmap``); False if not glibc."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name)
    if not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_trim_threshold, 2**30)) and bool(libc.mallopt(m_mmap_threshold, 2**25))


def page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn, device: torch.device) -> tuple[float, int]:
    """Seconds and minor page faults of one call."""
    faults = page_faults()
    return seconds(fn, device), page_faults() - faults


def run(calls: int, device: torch.device, allocator: str) -> None:
    """Print the table for one allocator regime, then the ratio the issue's target is about."""
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"allocator {allocator}, {calls} alternating calls per row\n")
    print("| case | mode | trainlab µs | torch µs | ratio | page faults per call (trainlab / torch) |")
    print("|---|---|---|---|---|---|")
    target = float("nan")
    for name, ours_cls, torch_cls, shape in CASES:
        channels = shape[1]
        ours, theirs = ours_cls(channels).to(device), torch_cls(channels).to(device)
        x = torch.randn(shape, device=device, requires_grad=True)
        dy = torch.randn(shape, device=device)
        for mode in ("train", "eval"):
            ours.train(mode == "train"), theirs.train(mode == "train")
            # gradients for the input, γ and β, as inside a network (nothing accumulated into .grad)
            fns = {"ours": lambda: torch.autograd.grad(ours(x), (x, *ours.parameters()), dy),
                   "torch": lambda: torch.autograd.grad(theirs(x), (x, *theirs.parameters()), dy)}
            times = {k: [] for k in fns}
            faults = dict.fromkeys(fns, 0)
            for i in range(calls + 20):
                for k, fn in fns.items():
                    t, f = timed(fn, device)
                    if i >= 20:  # warm-up
                        times[k].append(t)
                        faults[k] += f
            a, b = statistics.median(times["ours"]), statistics.median(times["torch"])
            print(f"| {name} | {mode}, forward+backward | {1e6 * a:.0f} | {1e6 * b:.0f} | {a / b:.2f} "
                  f"| {faults['ours'] / calls:.0f} / {faults['torch'] / calls:.0f} |")
            if shape == (256, 1024) and mode == "train":
                target = a / b
    print(f"\nBatchNorm1d 256 x 1024, train: ratio {target:.2f} (target <= {TARGET} on CPU), "
          f"allocator {allocator}\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--allocator", choices=("both", "steady", "glibc"), default="both",
                   help="steady: glibc keeps freed memory; glibc: as it is; both: one process each (CPU)")
    args = p.parse_args()
    device = resolve_device(args.device)
    if args.allocator == "both" and device.type == "cpu":
        for allocator in ("steady", "glibc"):
            cmd = [sys.executable, __file__, "--calls", str(args.calls), "--device", "cpu", "--allocator", allocator]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if subprocess.run(cmd).returncode:
                return 1
        return 0
    allocator = args.allocator
    if device.type == "cuda":
        allocator = "PyTorch's CUDA caching allocator"
    elif allocator == "steady" and not keep_freed_memory():
        allocator = "glibc (mallopt unavailable; steady regime not applied)"
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args.calls, device, allocator)
    return 0


if __name__ == "__main__":
    sys.exit(main())
