"""Which reading tells a post-LN Transformer LM stuck by Adam without warm-up from a healthy one?

The case of issue 22 (item 6): a character-level language model — a 4-layer post-LN
``nn.TransformerEncoder`` (d = 64, 4 heads, feed-forward 256, no dropout, causal mask, context 64)
on text made of the Python standard library's long docstrings — trained with Adam and batch 32,

- **failing**: ``lr = 1e-2`` from the first update (no warm-up): the loss sits at the unigram
  entropy of the text (the model predicts character frequencies);
- **healthy**: ``lr = 1e-3`` with a linear warm-up over the first 100 updates.

For each run and seed it records, on the same updates:

- ``alpha``: Cockpit's α (:class:`trainlab.instruments.Alpha`, Schneider et al. 2021), where the
  update landed on a quadratic fitted along its direction, on the Monitor's sample;
- ``stability``: the preconditioned ``η·λ_max(P⁻¹H)`` (:class:`trainlab.instruments.Stability`,
  threshold 38 for Adam with β₁ = 0.9), on the same sample, under the math attention kernel;
- ``update ratio``: the median over parameter tensors of ``‖Δθᵢ‖/‖θᵢ‖`` of each update;
- ``grad first/last``: ``‖∇ layer 0‖ / ‖∇ layer 3‖`` of the encoder on the training batch;
- ``loss − H₁``: the training batch's loss minus the unigram entropy ``H₁`` of the text.

Each reading is summarised per run by its median over the updates of the window
(``--start``..``--window``), the loss gap also over the last 50 updates, and a reading
*separates* the two runs when the ranges over the seeds do not overlap. Printed: a markdown
table, one row per reading. The numbers in docs/alpha.md come from this script.

    OMP_NUM_THREADS=1 python benchmarks/alpha_separation.py [--updates 200] [--seeds 0,1,2]
        [--start 5] [--window 100] [--sample 64] [--alpha-every 5] [--stability-every 25]
        [--runs failing,healthy]   (add ``control``: Adam 1e-3 without warm-up)
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import statistics
import sysconfig
import time

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from trainlab.instruments import Alpha, Monitor, Stability
from trainlab.zoo.language import CharLM, lm_loss  # the zoo's post-LN char LM, at repro/charlm.py's sizes

CONTEXT = 64
LAYERS = 4
WIDTH = 64  # d_model; the feed-forward width is 4 × it (256), heads 4, as in repro/charlm.py
#: The two runs compared, and a control (``--runs control``): the healthy rate without its warm-up, which
#: tells what in a reading comes from the warm-up's small early steps rather than from the failure.
RUNS = {"failing": {"lr": 1e-2, "warmup": 0}, "healthy": {"lr": 1e-3, "warmup": 100},
        "control": {"lr": 1e-3, "warmup": 0}}


def corpus(chars: int = 300_000) -> str:
    """ASCII text: the standard library's licence, then every docstring longer than 200 characters of
    its top-level modules (sorted by file name) until ``chars`` characters are gathered."""
    import ast

    lib = sysconfig.get_paths()["stdlib"]
    with open(os.path.join(lib, "LICENSE.txt"), encoding="utf-8", errors="replace") as f:
        parts = [f.read()]
    size = len(parts[0])
    for path in sorted(glob.glob(os.path.join(lib, "*.py"))):
        if size > chars:
            break
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    parts.append(doc)
                    size += len(doc)
    return "".join(c for c in "\n\n".join(parts) if c.isascii())


def sequences(text: str) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Inputs and next-character targets of ``CONTEXT`` characters (90 % of the sequences, shuffled
    with seed 0; the rest held out), the vocabulary size and the unigram entropy of the targets (nats)."""
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text])
    n = (len(ids) - 1) // CONTEXT
    x, y = ids[:n * CONTEXT].view(n, CONTEXT), ids[1:n * CONTEXT + 1].view(n, CONTEXT)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    x, y = x[order][n // 10:], y[order][n // 10:]
    p = torch.bincount(y.reshape(-1), minlength=len(chars)).double()
    p = p[p > 0] / p.sum()
    return x, y, len(chars), float(-(p * p.log()).sum())


def math_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The loss under the math attention kernel, which has the double backward curvature needs."""
    with sdpa_kernel([SDPBackend.MATH]):
        return lm_loss(model(batch[0]), batch[1])


def layer_norm(model: CharLM, layer: int) -> float:
    """‖∇‖ of encoder layer ``layer``'s parameters, from their ``.grad``."""
    prefix = f"enc.layers.{layer}."
    return math.sqrt(sum(float(p.grad.pow(2).sum()) for n, p in model.named_parameters()
                         if n.startswith(prefix) and p.grad is not None))


def train(name: str, seed: int, data: tuple, args: argparse.Namespace) -> dict[str, list[tuple[int, float]]]:
    """One run: ``(update, value)`` series of every reading."""
    x, y, vocab, entropy = data
    lr, warmup = RUNS[name]["lr"], RUNS[name]["warmup"]
    torch.manual_seed(seed)
    model = CharLM(vocab, WIDTH, LAYERS, CONTEXT)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / warmup) if warmup else 1.0)
    monitor = Monitor(sample=args.sample, batch_loss=math_loss, seed=seed,
                      instruments=[Alpha(every=args.alpha_every),
                                   Stability(every=args.stability_every, tol=1e-2, max_hvp=60)])
    draw = torch.Generator().manual_seed(seed)
    series: dict[str, list[tuple[int, float]]] = {k: [] for k in ("alpha", "stability", "update_ratio",
                                                                  "grad_first_last", "loss_gap")}
    monitor.start(model, 0)
    for step in range(1, args.updates + 1):
        rows = torch.randint(0, len(x), (args.batch,), generator=draw)
        loss = lm_loss(model(x[rows]), y[rows])
        opt.zero_grad()
        loss.backward()
        before = [p.detach().clone() for p in model.parameters()]
        series["grad_first_last"].append((step, layer_norm(model, 0) / max(layer_norm(model, LAYERS - 1), 1e-30)))
        opt.step()
        sched.step()
        ratios = [float((p.detach() - b).norm() / b.norm()) for p, b in zip(model.parameters(), before) if b.norm() > 0]
        series["update_ratio"].append((step, statistics.median(ratios)))
        series["loss_gap"].append((step, loss.item() - entropy))
        for r in monitor.after_step(model, loss.item(), None, (x, y), opt, batch_size=args.batch, step=step):
            if math.isfinite(r.value):
                series[r.instrument].append((step, r.value))
    return series


def window(series: list[tuple[int, float]], first: int, last: int) -> float:
    values = [v for s, v in series if first <= s <= last]
    return statistics.median(values) if values else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--start", type=int, default=5, help="first update of the window")
    ap.add_argument("--window", type=int, default=100, help="last update of the window")
    ap.add_argument("--sample", type=int, default=64, help="sequences in the Monitor's sample")
    ap.add_argument("--alpha-every", type=int, default=5)
    ap.add_argument("--stability-every", type=int, default=25)
    ap.add_argument("--runs", default="failing,healthy", help="runs to train, of: " + ", ".join(RUNS))
    args = ap.parse_args()
    names = args.runs.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    data = sequences(corpus())
    print(f"{len(data[0])} sequences of {CONTEXT}, vocabulary {data[2]}, unigram entropy {data[3]:.3f} nats")
    summary: dict[str, dict[str, list[float]]] = {}
    for name in names:
        for seed in seeds:
            started = time.perf_counter()
            series = train(name, seed, data, args)
            cells = {f"{k} (median, updates {args.start}-{args.window})": window(v, args.start, args.window)
                     for k, v in series.items()}
            cells["update_ratio (update 5)"] = window(series["update_ratio"], 5, 5)
            cells[f"loss_gap (median, last 50 updates)"] = window(series["loss_gap"], args.updates - 49, args.updates)
            for k, v in cells.items():
                summary.setdefault(k, {}).setdefault(name, []).append(v)
            print(f"{name} seed {seed}: {time.perf_counter() - started:.0f} s, final loss gap "
                  f"{series['loss_gap'][-1][1]:+.3f}", flush=True)
    compare = "failing" in names and "healthy" in names
    print("\n| reading | " + " | ".join(f"{name} ({len(seeds)} seeds)" for name in names)
          + (" | separates failing from healthy |" if compare else " |"))
    print("|---" * (len(names) + 1 + compare) + "|")
    show = lambda v: ", ".join(f"{u:.3g}" for u in v)  # noqa: E731
    for reading, runs in summary.items():
        row = f"| {reading} | " + " | ".join(show(runs[name]) for name in names) + " |"
        if compare:
            bad, good = runs["failing"], runs["healthy"]
            row += f" {'yes' if max(bad) < min(good) or max(good) < min(bad) else 'no'} |"
        print(row)


if __name__ == "__main__":
    main()
