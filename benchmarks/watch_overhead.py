"""What ``trainlab.watch`` costs a plain loop: its training time ÷ the bare loop's.

The loop trains the digits MLP (64-32-32-10, SGD η = 0.05, batches of 32 in one fixed order) for
``--updates`` updates (2,000) and logs each update's loss (``loss.item()``, which every loop does
for its own log; the watched loops hand it to ``w.log``). Three configurations alternate in each
repeat — bare, ``watch(monitor=None)`` (counting and the run directory: ``steps.jsonl`` and the
rest, written into a fresh temporary directory), ``watch(monitor="economy")`` (the default: its
readings too, the baseline at update 1 included) — ``--repeats`` times (≥ 5). Each repeat gives a
ratio against the bare run of the same repeat (seconds apart, so a slower spell of the machine
cancels); the table shows the median ratio and its range. One thread.

Targets (issue 23): ``monitor=None`` ≤ 1.02, economy ≤ 1.10.

    python benchmarks/watch_overhead.py [--updates 2000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import trainlab as tl

BATCH, LR = 32, 0.05
TARGETS = {"bare": None, "watch(monitor=None)": 1.02, "watch(monitor='economy')": 1.10}


def train(updates: int, config: str, data: tuple[torch.Tensor, torch.Tensor], dataset: object) -> float:
    """Seconds for ``updates`` updates of the loop under ``config`` (a key of :data:`TARGETS`)."""
    x, y = data
    model = tl.nn.mlp(64, [32, 32], 10, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(0)
    order = torch.cat([torch.randperm(len(y), generator=gen) for _ in range(updates * BATCH // len(y) + 1)])
    batches = [order[i * BATCH:(i + 1) * BATCH] for i in range(updates)]
    with tempfile.TemporaryDirectory() as tmp:
        logged: list[float] = []
        w = None
        start = time.perf_counter()
        if config != "bare":
            monitor = None if config == "watch(monitor=None)" else "economy"
            w = tl.watch(model, opt, F.cross_entropy, dataset, out=Path(tmp) / "run", monitor=monitor,
                         batch_size=BATCH)
        for idx in batches:
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            value = loss.item()
            if w is None:
                logged.append(value)
            else:
                w.log(loss=value)
        if w is not None:
            w.close()
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train_set, _ = tl.data.load_digits(test_fraction=0.2, seed=0)
    data = train_set.tensors
    for config in TARGETS:  # warm-up: first-call costs of torch and of the instruments, not part of any run
        train(50, config, data, train_set)
    seconds: dict[str, list[float]] = {c: [] for c in TARGETS}
    for _ in range(args.repeats):
        for config in TARGETS:
            seconds[config].append(train(args.updates, config, data, train_set))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, digits MLP 64-32-32-10, {args.updates}"
          f" updates of batch {BATCH}, {args.repeats} alternating repeats\n")
    print("| loop | seconds (median) | ÷ bare (median of repeats) | range | target | met |")
    print("|---|---|---|---|---|---|")
    for config, target in TARGETS.items():
        ratios = [s / b for s, b in zip(seconds[config], seconds["bare"])]
        ratio = statistics.median(ratios)
        met = "" if target is None else ("yes" if ratio <= target else "no")
        print(f"| {config} | {statistics.median(seconds[config]):.3f} | {ratio:.3f} | {min(ratios):.3f}–"
              f"{max(ratios):.3f} | {'' if target is None else f'≤ {target:g}'} | {met} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
