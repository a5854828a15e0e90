"""What the stall doctor costs on a run that never stalls: training time with and without it,
side by side (rounds alternate; medians of the per-epoch times).

    python benchmarks/doctor_overhead.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch.nn.functional as F

import trainlab as tl


def epoch_times(doctor: bool, seed: int) -> tuple[list[float], int]:
    train, _ = tl.data.load_digits()
    model = tl.nn.mlp(64, [32], 10, seed=seed)
    callbacks = [tl.train.StallDoctor()] if doctor else []
    trainer = tl.train.Trainer(model, tl.optim.Adam(model.parameters(), lr=1e-3), F.cross_entropy, train, 32, 30,
                               callbacks=callbacks, seed=seed, progress=False, device="cpu")
    trainer.fit()
    return [r["seconds"] for r in trainer.history[1:]], len(trainer.events)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    plain, doctor, events = [], [], 0
    for r in range(args.rounds):
        plain += epoch_times(False, r)[0]
        times, n = epoch_times(True, r)
        doctor += times
        events += n
    a, b = statistics.median(plain), statistics.median(doctor)
    print("| run (digits, MLP 64-32-10, Adam, batch 32, 30 epochs) | ms per epoch (median) | ratio |")
    print("|---|---|---|")
    print(f"| without the doctor | {1e3 * a:.2f} | 1.000 |")
    print(f"| with the doctor | {1e3 * b:.2f} | {b / a:.3f} |")
    print(f"\nevents raised over {args.rounds} healthy runs: {events} (target 0); overhead target ≤ 1.05")
    return 0


if __name__ == "__main__":
    sys.exit(main())
