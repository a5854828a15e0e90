"""Peak memory of one Hessian-vector product and of a short ``eigs`` on a CNN, as the sample
count grows, with the kept autograd graph bounded by ``max_graph_bytes`` — and, side by side,
the whole graph kept (what every analysis did before the bound).

Model: ``trainlab.nn.small_cnn(3, 32, 10, channels=(8, 16))``, 11,642 parameters, on random
3×32×32 inputs, float32. Each case runs in its own process with one thread. The peak is the
process's maximum resident set (``resource.getrusage(...).ru_maxrss``); "added" subtracts the
baseline taken after the data are built and a 4-sample product has loaded the kernels, so it
is what the analysis itself costs. "graph measured" and "its peak" are the operator's own
measurements (``HessianOperator.graph_bytes`` / ``peak_bytes``) that ``max_graph_bytes`` is
compared with; the process's peak adds the allocator's slack and the kernels' workspaces
(im2col buffers of the convolutions), invisible to that measurement. On a CUDA device the peak is
``torch.cuda.max_memory_allocated`` instead.

    python benchmarks/analysis_memory.py [--samples 1000 8000] [--budgets 2048 256] [--max-hvp 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MIB = 2**20


def worker(analysis: str, samples: int, budget_mib: float | None, max_hvp: int, device_name: str) -> dict:
    import torch

    import trainlab as tl
    from trainlab.curvature import HessianOperator, analysis_mode
    from trainlab.train.trainer import resolve_device

    torch.set_num_threads(1)
    device = resolve_device(device_name)
    model = tl.nn.small_cnn(in_channels=3, image_size=32, num_classes=10, channels=(8, 16), seed=0).to(device)
    n = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (samples,), generator=gen).to(device)
    v = torch.randn(n, generator=gen).to(device)
    tl.curvature.hvp(model, tl.nn.cross_entropy, (x[:4], y[:4]), v)  # kernels loaded before the baseline
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.max_memory_allocated(device) / MIB
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    budget = {} if budget_mib is None else {"max_graph_bytes": budget_mib * MIB}
    start = time.perf_counter()
    info = {}
    if analysis == "hvp":
        with analysis_mode(model, "eval"):
            op = HessianOperator(model, tl.nn.cross_entropy, (x, y), keep_graph=True if budget_mib is None else None,
                                 **budget)
            op.matvec(v)
        info = {"graph_mib": None if op.graph_bytes is None else op.graph_bytes / MIB,
                "peak_mib": None if op.peak_bytes is None else op.peak_bytes / MIB, "kept": op.keep_graph,
                "pieces": len(op.pieces)}
    else:
        found = tl.curvature.eigs(model, tl.nn.cross_entropy, (x, y), k=1, max_hvp=max_hvp, progress=False,
                                  **({"max_graph_bytes": 2**50} if budget_mib is None else budget))
        info = {"n_hvp": found.n_hvp}
    seconds = time.perf_counter() - start
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / MIB
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"params": n, "peak": peak, "added": peak - base, "seconds": seconds, **info}


def run_case(analysis: str, samples: int, budget_mib: float | None, max_hvp: int, device: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", analysis, str(samples), str(budget_mib), str(max_hvp), device]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise SystemExit(f"case {analysis} {samples} {budget_mib} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, nargs="+", default=[1000, 8000])
    p.add_argument("--budgets", type=float, nargs="+", default=[2048, 256], help="max_graph_bytes in MiB")
    p.add_argument("--max-hvp", type=int, default=4, help="products in the short eigs(k=1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        analysis, samples, budget, max_hvp, device = args.worker
        print(json.dumps(worker(analysis, int(samples), None if budget == "None" else float(budget), int(max_hvp),
                                device)))
        return 0

    import torch

    what = "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "peak RSS (ru_maxrss)"
    print(f"torch {torch.__version__}, device {args.device}, 1 thread, one process per case; {what}, MiB;"
          f" CNN 3×32×32 → 8 → 16 → 10, float32\n")
    print("| analysis | samples | max_graph_bytes | graph measured (all data) | its peak, measured | path | peak |"
          " added | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for analysis in ("hvp", "eigs"):
        label = "hvp" if analysis == "hvp" else f"eigs(k=1, max_hvp={args.max_hvp})"
        for samples in args.samples:
            for budget in [None, *args.budgets]:
                r = run_case(analysis, samples, budget, args.max_hvp, args.device)
                if analysis == "hvp":
                    graph = "— | —" if r["graph_mib"] is None else f"{r['graph_mib']:,.0f} | {r['peak_mib']:,.0f}"
                    path = "kept" if r["kept"] else f"streamed, {r['pieces']} pieces"
                else:
                    graph, path = " | ", f"{r['n_hvp']} products"
                shown = "unbounded (kept whole, as before)" if budget is None else f"{budget:,.0f} MiB"
                print(f"| {label} | {samples:,} | {shown} | {graph} | {path} | {r['peak']:,.0f} | {r['added']:,.0f}"
                      f" | {r['seconds']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
