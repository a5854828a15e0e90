"""Time per ``step()``: trainlab.optim vs the matching torch.optim class, side by side.

~1M parameters in 50 tensors (50 × 20,000), gradients fixed, both optimizers on the
foreach path (``foreach=True``), on the single-tensor path (``foreach=False``) and with
their defaults (``foreach=None``: multi-tensor on GPUs, single-tensor on CPU, for both). Rounds alternate ours and theirs so machine noise hits both; the
ratio compares median step times. Runs on CUDA unchanged when a GPU is present.

    python benchmarks/optim_step.py [--rounds 15] [--steps 20] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from trainlab import optim
from trainlab.train.trainer import resolve_device
from timing import seconds

PAIRS = {
    "SGD momentum 0.9": (lambda p, f: optim.SGD(p, lr=0.01, momentum=0.9, foreach=f),
                         lambda p, f: torch.optim.SGD(p, lr=0.01, momentum=0.9, foreach=f)),
    "SGD Nesterov": (lambda p, f: optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True, foreach=f),
                     lambda p, f: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True, foreach=f)),
    "Adagrad": (lambda p, f: optim.Adagrad(p, lr=0.01, foreach=f),
                lambda p, f: torch.optim.Adagrad(p, lr=0.01, foreach=f)),
    "RMSProp": (lambda p, f: optim.RMSProp(p, lr=0.01, alpha=0.9, init="zero", foreach=f),
                lambda p, f: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, foreach=f)),
    "Adam": (lambda p, f: optim.Adam(p, lr=1e-3, foreach=f),
             lambda p, f: torch.optim.Adam(p, lr=1e-3, foreach=f)),
    "AdamW": (lambda p, f: optim.Adam(p, lr=1e-3, weight_decay=0.01, decoupled=True, foreach=f),
              lambda p, f: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01, foreach=f)),
}


def parameters(device: torch.device, n_tensors: int = 50, size: int = 20_000) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for _ in range(n_tensors):
        p = torch.randn(size, generator=gen).to(device).requires_grad_()
        p.grad = torch.randn(size, generator=gen).to(device)
        params.append(p)
    return params


def time_steps(make, foreach: bool, device: torch.device, steps: int) -> float:
    """Median seconds per step over ``steps`` steps (after two warm-up steps)."""
    opt = make(parameters(device), foreach)
    for _ in range(2):
        opt.step()
    return statistics.median(seconds(opt.step, device) for _ in range(steps))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"1,000,000 parameters in 50 tensors, {args.rounds} rounds x {args.steps} steps\n")
    print("| optimizer | path | trainlab ms/step | torch.optim ms/step | ratio |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for name, (ours, theirs) in PAIRS.items():
        for foreach in (True, False, None):
            a, b = [], []
            for _ in range(args.rounds):
                a.append(time_steps(ours, foreach, device, args.steps))
                b.append(time_steps(theirs, foreach, device, args.steps))
            ratio = statistics.median(a) / statistics.median(b)
            if foreach:
                worst = max(worst, ratio)
            path = {True: "foreach", False: "single-tensor", None: "default"}[foreach]
            print(f"| {name} | {path} | {1e3 * statistics.median(a):.3f} |"
                  f" {1e3 * statistics.median(b):.3f} | {ratio:.3f} |")
    print(f"\nworst foreach ratio: {worst:.3f} (target <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
