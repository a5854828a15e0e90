"""What ``trainlab.watch`` costs a plain loop: its training time ÷ the bare loop's.

The loop trains the digits MLP (64-32-32-10, SGD η = 0.05, batches of 32 in one fixed order) for
``--updates`` updates (2,000) and logs each update's loss (``loss.item()``, which every loop does
for its own log; the watched loops hand it to ``w.log``). Its batches come one of two ways
(``--loop``; both by default, one table each):

* ``loader`` — the plain loop, as in the README and PyTorch's tutorials: a shuffling
  ``DataLoader`` over the dataset (0.45–0.6 ms an update; the collation of 32 samples is part of
  every loop);
* ``indexed`` — the leanest loop: the data as two tensors, each batch ``x[idx], y[idx]`` (about
  0.3 ms an update), so the watch's own cost is the largest share it can be (the worst case).

Three loops run — bare,
``watch(monitor=None)`` (counting and the run directory: ``steps.jsonl`` and the rest, written into
a fresh temporary directory) and ``watch(monitor="economy")`` (the default: its readings too, the
baseline of every instrument at update 1 included) — each on its own model and optimizer.

They alternate in segments of :data:`SEGMENT` (50) updates: segment ``k`` of each loop in turn,
in an order that rotates (each loop first, second and third alike), each segment timed, summed per
loop. Why: this machine (a virtual machine) shows ±10 % between two runs of the same loop seconds
apart, more than the 2 % to be measured; segments seconds shorter than a run meet the same slow
spells, while within a segment each loop runs alone, as it would, so what its own work costs the
caches (the training step after a reading or a hook meets colder ones) stays in its time. A repeat
gives each loop's total time and its ratio to the bare loop's; the table shows the median ratio over
``--repeats`` repeats (≥ 5) and its range. One thread.

Targets (issue 23), judged in the ``loader`` loop: ``monitor=None`` ≤ 1.02, economy ≤ 1.10; the
``indexed`` table is held to the same lines, to show how near the worst case comes to them.

    python benchmarks/watch_overhead.py [--updates 2000] [--repeats 7] [--loop indexed|loader|both]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import trainlab as tl

BATCH, LR = 32, 0.05
#: Updates each loop makes before the next loop takes its turn.
SEGMENT = 50
TARGETS = {"bare": None, "watch(monitor=None)": 1.02, "watch(monitor='economy')": 1.10}


def stream(data: Any, loop: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of one loop, endless: the same ones, in the same order, for every loop."""
    gen = torch.Generator().manual_seed(0)
    if loop == "loader":
        loader = DataLoader(data, batch_size=BATCH, shuffle=True, generator=gen)
        while True:
            yield from loader
    x, y = data.tensors
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - BATCH + 1, BATCH):
            idx = order[i:i + BATCH]
            yield x[idx], y[idx]


def loops(updates: int, data: Any, out: Path, loop: str = "indexed") -> dict[str, float]:
    """Seconds of each loop of :data:`TARGETS` over ``updates`` updates, run in lockstep."""
    parts = {}
    for config in TARGETS:
        model = tl.nn.mlp(64, [32, 32], 10, seed=0)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        watch = None
        if config != "bare":
            monitor = None if config == "watch(monitor=None)" else "economy"
            watch = tl.watch(model, opt, F.cross_entropy, data, out=out / str(len(parts)), monitor=monitor,
                             batch_size=BATCH)
        parts[config] = (model, opt, watch, [], stream(data, loop))
    seconds = dict.fromkeys(TARGETS, 0.0)
    names = list(parts)
    for k, first in enumerate(range(0, updates, SEGMENT)):
        for config in names[k % 3:] + names[:k % 3]:  # each loop first, second and third in turn
            model, opt, watch, logged, batches = parts[config]
            start = time.perf_counter()
            for _ in range(first, min(first + SEGMENT, updates)):
                xb, yb = next(batches)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                value = loss.item()
                if watch is None:
                    logged.append(value)
                else:
                    watch.log(loss=value)
            seconds[config] += time.perf_counter() - start
    for config, (_, _, watch, _, _) in parts.items():
        if watch is not None:
            start = time.perf_counter()
            watch.close()
            seconds[config] += time.perf_counter() - start
            if watch.monitor is not None:  # what the readings themselves took: the baseline, the rest
                history = watch.monitor.history
                seconds["baseline readings"] = sum(r.seconds for r in history if r.step == 1)
                seconds["later readings"] = sum(r.seconds for r in history if r.step > 1)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--loop", choices=["indexed", "loader", "both"], default="both",
                        help="where the batches come from (module docstring); default: both, a table each")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train_set, _ = tl.data.load_digits(test_fraction=0.2, seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread, digits MLP 64-32-32-10, {args.updates}"
          f" updates of batch {BATCH}, {args.repeats} repeats, the loops alternating in segments of {SEGMENT} updates")
    for loop in (["loader", "indexed"] if args.loop == "both" else [args.loop]):
        with tempfile.TemporaryDirectory() as tmp:
            loops(50, train_set, Path(tmp) / "warm-up", loop)  # first-call costs of torch and of the instruments
            runs = [loops(args.updates, train_set, Path(tmp) / str(r), loop) for r in range(args.repeats)]
        table(loop, runs)
    return 0


def table(loop: str, runs: list[dict[str, float]]) -> None:
    """The Markdown table of one kind of loop, and what the economy loop's readings took."""
    source = ("batches x[idx], y[idx] of two tensors (the worst case)" if loop == "indexed" else
              "a shuffling DataLoader (the plain loop: issue 23's targets)")
    print(f"\n### {loop}: {source}\n")
    print("| loop | seconds (median) | ÷ bare (median of repeats) | range | target | met |")
    print("|---|---|---|---|---|---|")
    for config, target in TARGETS.items():
        ratios = [run[config] / run["bare"] for run in runs]
        ratio = statistics.median(ratios)
        met = "" if target is None else ("yes" if ratio <= target else "no")
        print(f"| {config} | {statistics.median(run[config] for run in runs):.3f} | {ratio:.3f} | {min(ratios):.3f}–"
              f"{max(ratios):.3f} | {'' if target is None else f'≤ {target:g}'} | {met} |")
    print("\nOf the economy loop's time, its readings (median seconds, and as a share of the bare loop's time):")
    for part in ("baseline readings", "later readings"):
        share = statistics.median(run[part] / run["bare"] for run in runs)
        print(f"- {part} ({'every instrument at update 1' if part.startswith('baseline') else 'on their periods'}):"
              f" {statistics.median(run[part] for run in runs):.4f} s, {100 * share:.1f} %")


if __name__ == "__main__":
    sys.exit(main())
